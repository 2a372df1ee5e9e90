"""data: Kaggle folder parsing, the split, image modes, deterministic order and augmentation."""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from data import dogcat, sample
from data.image_files import ImageFiles
from data.sampling import EpochSampler
from utils.core.errors import UserError


def touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / name, format="PNG" if name.lower().endswith("png") else "JPEG")


def test_labels_come_from_the_file_name_not_the_path(tmp_path):
    folder = tmp_path / "dogs" / "train"  # a path containing "dog" must not make cats dogs
    touch_images(folder, ["cat.1.jpg", "dog.2.jpg", "CAT.3.JPG", "dog.10.png", "Dog.4.jpeg"])
    items = dogcat.list_train(folder)
    assert [(p.name, label) for p, label in items] == [
        ("cat.1.jpg", 0), ("CAT.3.JPG", 0), ("dog.2.jpg", 1), ("Dog.4.jpeg", 1), ("dog.10.png", 1)]


def test_other_entries_are_skipped_with_one_warning(tmp_path, caplog):
    folder = tmp_path / "odd"
    touch_images(folder, ["cat.1.jpg", "dog.1.jpg"])
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "Thumbs.db").write_bytes(b"x")
    (folder / "train").mkdir()
    (folder / "cat.x.jpg").write_bytes(b"x")
    (folder / "cat.1.jpg.txt").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        items = dogcat.list_train(folder)
    assert len(items) == 2
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 5 entries" in warnings[0]


def test_no_images_names_folder_layout_and_nested_folder(tmp_path):
    touch_images(tmp_path / "outer" / "train", ["cat.1.jpg"])
    with pytest.raises(UserError, match=r"no images in '.*outer': expected cat.<n>.jpg / dog.<n>.jpg .*; did you mean .*outer/train\?"):
        dogcat.list_train(tmp_path / "outer")
    with pytest.raises(UserError, match=r"data folder '.*absent' does not exist"):
        dogcat.list_train(tmp_path / "absent")


def test_test_ids_sorted_numerically(tmp_path):
    touch_images(tmp_path / "test", ["10.jpg", "2.jpg", "1.jpg", "notes.txt"])
    assert [i for _, i in dogcat.list_test(tmp_path / "test")] == [1, 2, 10]


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    items = [(f"cat.{i}", 0) for i in range(30)] + [(f"dog.{i}", 1) for i in range(10)]
    train, val = dogcat.split(items, 0.3, seed=5)
    assert sorted(train + val) == sorted(items)
    assert sum(1 for _, label in val if label == 0) == 9 and sum(1 for _, label in val if label == 1) == 3
    assert dogcat.split(items, 0.3, seed=5) == (train, val)
    assert dogcat.split(items, 0.3, seed=6) != (train, val)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_any_image_mode_loads_as_rgb(tmp_path, mode):
    path = tmp_path / "cat.1.png"
    image = Image.new("RGB", (12, 10), (10, 200, 30)).convert(mode)
    image.save(path if mode != "CMYK" else path.with_suffix(".jpg"))
    loaded = dogcat.load_rgb(path if mode != "CMYK" else path.with_suffix(".jpg"))
    assert loaded.mode == "RGB" and loaded.size == (12, 10)


def test_unreadable_image_is_a_user_error(tmp_path):
    (tmp_path / "cat.1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"cannot read image"):
        dogcat.load_rgb(tmp_path / "cat.1.jpg")


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = list(EpochSampler(20, seed=1, shuffle=True, epoch=3))
    b = list(EpochSampler(20, seed=1, shuffle=True, epoch=3))
    assert a == b and [i for _, i in a] != list(range(20))
    assert list(EpochSampler(20, seed=1, shuffle=True, epoch=4)) != a
    assert list(EpochSampler(20, seed=1, shuffle=True, epoch=3, start=8)) == a[8:]


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    touch_images(tmp_path, ["cat.0.jpg"])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "cat.0.jpg")
    data = ImageFiles([(tmp_path / "cat.0.jpg", 0)], image_size=16, augment=True, seed=3)
    torch.manual_seed(123)
    first = data[(2, 0)][0]
    torch.manual_seed(999)  # global state must not matter
    assert torch.equal(first, data[(2, 0)][0])
    assert not torch.equal(first, data[(3, 0)][0])
    assert first.shape == (3, 16, 16)


def test_bundled_sample_is_deterministic_kaggle_layout(tmp_path):
    sample.generate(tmp_path / "a")
    sample.generate(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a" / "train").iterdir())
    assert "cat.0.jpg" in names and "dog.149.jpg" in names
    assert ".DS_Store" not in names and "Thumbs.db" not in names  # the demo warns about nothing of its own
    for name in ("train/cat.7.jpg", "test/5.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    cfg = SimpleNamespace(train_data_root=str(tmp_path / "a" / "train"), val_ratio=0.3, seed=0, image_size=32,
                          test_data_root=str(tmp_path / "a" / "test"), skip_bad_images=False, num_workers=0)
    assert len(dogcat.dogcat(cfg, "train")) == 210 and len(dogcat.dogcat(cfg, "val")) == 90
    assert len(dogcat.dogcat(cfg, "test")) == sample.TEST_IMAGES


def photo(path, width, height, seed=0):
    """A smooth, photo-like JPEG (colour gradients): decoders agree on it closely."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    coarse.save(path, quality=95)


@pytest.mark.parametrize("augment", [False, True])
def test_jpeg_decoded_at_a_smaller_dct_scale_shows_the_same_crop(tmp_path, augment):
    from torchvision.transforms import functional as F

    from data import transforms
    from data.sampling import augmentation_rng

    photo(tmp_path / "cat.0.jpg", 1600, 1200)
    size = 64  # every box of this image spans >= 2 x 64 pixels: decoded at 1/2 to 1/8 scale
    with Image.open(tmp_path / "cat.0.jpg") as image:
        full = image.convert("RGB")
    if augment:
        rng = augmentation_rng(3, (0, 0))
        top, left, h, w = transforms.crop_box(*full.size, rng)
        reference = full.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            reference = reference.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        fast = transforms.train_image(tmp_path / "cat.0.jpg", size, augmentation_rng(3, (0, 0)))
    else:  # the centre crop of the image resized to a short side of size / 0.875 = 73: 1052 of 1200 px
        side = 1200 * size / 73
        left, top = (1600 - side) / 2, (1200 - side) / 2
        reference = full.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
        fast = transforms.eval_image(tmp_path / "cat.0.jpg", size)
    assert fast.dtype == torch.uint8 and fast.shape == (3, size, size)
    difference = (fast.float() - F.pil_to_tensor(reference).float()).abs()
    assert difference.mean() < 2.0, difference.mean()  # of 255: a box off by the scale would differ by tens


def test_uint8_batches_are_normalised_on_the_device_as_the_book_normalises_images(tmp_path):
    from torchvision.transforms import functional as F

    from data import transforms
    from utils.engine.precision import Precision

    photo(tmp_path / "cat.0.jpg", 300, 200)
    data = ImageFiles([(tmp_path / "cat.0.jpg", 0)], image_size=32, augment=False, seed=0)
    image, _ = data[0]
    cfg = SimpleNamespace(amp=False, channels_last=True)
    batch = Precision(cfg, torch.device("cpu"), data).to_device(image[None])
    book = F.normalize(F.to_tensor(F.to_pil_image(image)), transforms.MEAN, transforms.STD)
    assert batch.dtype == torch.float32 and batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(batch[0], book, atol=1e-5)
    assert torch.allclose(data.denormalize(batch), image.float() / 255, atol=1e-5)
    with pytest.raises(ValueError, match="names no mean and std"):
        Precision(cfg, torch.device("cpu")).to_device(image[None])


# -- what the engine offers every experiment: a regression split, fitted statistics --------
def test_a_continuous_target_is_split_by_quantiles_not_by_class():
    from data.sampling import quantile_split, split_part

    rng = np.random.default_rng(0)
    items = [(f"row{k}", float(value)) for k, value in enumerate(rng.lognormal(size=200))]
    with pytest.raises(UserError, match=r"--val-ratio=0.3 leaves no validation images of the 200 in rows"):
        split_part(items, "val", 0.3, 0, "rows")  # by class: each value a class of one
    train, val = quantile_split(items, 0.3, seed=0)
    assert len(val) == 60 and len(train) == 140 and not set(train) & set(val)
    assert [item for item in items if item in val] == val  # the items' order is kept
    targets = sorted(value for _, value in items)
    deciles = [targets[k * 20] for k in range(10)] + [targets[-1] + 1]
    per_decile = [sum(low <= value < high for _, value in val) for low, high in zip(deciles, deciles[1:])]
    assert per_decile == [6] * 10  # the validation part spans the range as the training part does
    assert split_part(items, "val", 0.3, 0, "rows", by="quantiles") == val
    assert quantile_split(items, 0.3, seed=1)[1] != val and quantile_split(items, 0.3, seed=0)[1] == val


def test_a_split_gets_what_the_training_split_fitted_when_its_builder_takes_it():
    from data.base import Dataset, build_split
    from utils.core.registry import DATASETS

    calls = []

    class Rows(Dataset):
        def __init__(self, values, fitted=None):
            self.values = values
            self.mean = (fitted or {}).get("mean", sum(values) / len(values))

        def __len__(self):
            return len(self.values)

        def fitted(self):
            return {"mean": self.mean}

    @DATASETS.register("fitted_rows")
    def fitted_rows(cfg, split, fitted=None):
        calls.append((split, fitted))
        return Rows([1.0, 2.0, 3.0] if split == "train" else [10.0], fitted)

    @DATASETS.register("plain_rows")
    def plain_rows(cfg, split):
        return Rows([5.0])

    cfg = SimpleNamespace(dataset="fitted_rows")
    train = build_split(cfg, "train")
    test = build_split(cfg, "test", fitted=train.fitted())
    assert calls == [("train", None), ("test", {"mean": 2.0})] and test.mean == 2.0  # the train split's, not its own
    assert build_split(SimpleNamespace(dataset="plain_rows"), "test", fitted={"mean": 2.0}).mean == 5.0
    assert Dataset().fitted() == {}


def test_the_run_keeps_what_its_training_split_fitted_in_every_checkpoint(tmp_path, monkeypatch):
    """A data set whose training split fitted statistics: the engine keeps them in last.pth
    and best.pth under info["fitted"], for `test` to hand to its test split."""
    import main
    from conftest import load, make_dogcat, tiny_flags
    from utils.core.registry import DATASETS

    class Fitted(ImageFiles):
        def fitted(self):
            return {"images": len(self)}

    @DATASETS.register("fitted_dogcat")
    def fitted_dogcat(cfg, split, fitted=None):
        made = dogcat.dogcat(cfg, split)
        made.__class__ = Fitted if split == "train" else made.__class__
        return made

    make_dogcat(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main.main(["train", *tiny_flags(tmp_path / "data", tmp_path, dataset="fitted_dogcat")]) == 0
    for name in ("last.pth", "best.pth"):
        info = load(tmp_path / "runs" / "tiny" / name)["info"]
        assert info["fitted"] == {"images": 16} and info["classes"] == ["cat", "dog"]  # 24 images, 8 held out
