"""Kaggle "Dogs vs. Cats Redux" (registered as `dogcat`).

    train/cat.<n>.jpg, train/dog.<n>.jpg    labels: cat 0, dog 1
    test/<n>.jpg  (or test1/<n>.jpg)         id = n

Only the file name is parsed (never the path: `D:\\dogs\\train` must not make every image a
dog). Anything else in the folder (.DS_Store, Thumbs.db, a nested train/ from unzipping)
is skipped and counted in one warning. The validation split is stratified per class and a
function of --seed and --val-ratio alone, so `train` and `val` agree on it.
"""
import functools
import logging
import re
from pathlib import Path

import torch
from PIL import Image

from data import sample, transforms
from data.sampling import augmentation_rng
from utils import seeding
from utils.errors import UserError
from utils.registry import DATASETS

log = logging.getLogger(__name__)
CLASSES = ("cat", "dog")
TRAIN_NAME = re.compile(r"(cat|dog)\.(\d+)\.(jpe?g|png)", re.IGNORECASE)
TEST_NAME = re.compile(r"(\d+)\.(jpe?g|png)", re.IGNORECASE)
TRAIN_LAYOUT = "cat.<n>.jpg / dog.<n>.jpg files (the Kaggle train.zip unpacked)"
TEST_LAYOUT = "<n>.jpg files (the Kaggle test.zip unpacked)"


def scan(folder, pattern, layout):
    """[(match, path)] for entries of `folder` whose name matches `pattern`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder {str(folder)!r} does not exist; it should hold {layout}")
    found, skipped = [], []
    for entry in sorted(folder.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((match, entry))
        else:
            skipped.append(entry.name)
    if skipped:
        log.warning("skipped %d entries in %s that are not %s (e.g. %s)", len(skipped), folder, layout, ", ".join(skipped[:3]))
    if not found:
        nested = [d for d in skipped if (folder / d).is_dir()]
        hint = f"; did you mean {folder / nested[0]}?" if nested else ""
        raise UserError(f"no images in {str(folder)!r}: expected {layout}{hint}")
    return found


@functools.lru_cache(maxsize=8)
def _list_train(folder):
    items = [(path, CLASSES.index(m.group(1).lower()), int(m.group(2))) for m, path in scan(folder, TRAIN_NAME, TRAIN_LAYOUT)]
    items.sort(key=lambda item: (item[1], item[2], item[0].name))
    return tuple((path, label) for path, label, _ in items)


def list_train(folder):
    """[(path, label)] sorted by (label, number): the order the split is drawn from. One
    listing per folder and process: `train` builds its train and val splits from the same one."""
    return list(_list_train(Path(folder).resolve()))


def list_test(folder):
    """[(path, id)] sorted by numeric id."""
    items = [(path, int(m.group(1))) for m, path in scan(folder, TEST_NAME, TEST_LAYOUT)]
    items.sort(key=lambda item: (item[1], item[0].name))
    return items


def split(items, val_ratio, seed):
    """Stratified, seeded (train, val) split: round(val_ratio * n_class) images per class."""
    train, val = [], []
    for label in sorted({label for _, label in items}):
        members = [item for item in items if item[1] == label]
        order = seeding.rng(seed, seeding.SPLIT, label).permutation(len(members))
        n_val = int(round(val_ratio * len(members)))
        val += [members[i] for i in sorted(order[:n_val])]
        train += [members[i] for i in sorted(order[n_val:])]
    return train, val


def load_rgb(path):
    """Open any image (grayscale, RGBA, CMYK, palette) as RGB."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise UserError(f"cannot read image {str(path)!r}: {error}") from None


class DogCat(torch.utils.data.Dataset):
    """Items: (image tensor, label) for train/val, (image tensor, id) for test."""

    def __init__(self, items, image_size, augment, seed):
        self.items, self.image_size, self.augment, self.seed = items, image_size, augment, seed
        self.targets = [target for _, target in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        path, target = self.items[index]
        image = load_rgb(path)
        if self.augment:
            tensor = transforms.train_transform(image, self.image_size, augmentation_rng(self.seed, key))
        else:
            tensor = transforms.eval_transform(image, self.image_size)
        return tensor, target


@DATASETS.register("dogcat")
def dogcat(cfg, split_name):
    """The `split_name` (train | val | test) part of the Dogs vs. Cats data."""
    if split_name == "test":
        root = Path(cfg.test_data_root)
        if _is_default_sample(root):
            sample.ensure(root.parent)
        if not root.is_dir() and (root.parent / "test1").is_dir():
            root = root.parent / "test1"  # Kaggle's first competition named it test1/
        return DogCat(list_test(root), cfg.image_size, augment=False, seed=cfg.seed)
    root = Path(cfg.train_data_root)
    if _is_default_sample(root):
        sample.ensure(root.parent)
    train_items, val_items = split(list_train(root), cfg.val_ratio, cfg.seed)
    if split_name == "train":
        return DogCat(train_items, cfg.image_size, augment=True, seed=cfg.seed)
    if not val_items:
        raise UserError(f"--val-ratio={cfg.val_ratio} leaves no validation images in {root}")
    return DogCat(val_items, cfg.image_size, augment=False, seed=cfg.seed)


def _is_default_sample(root):
    return root.resolve().parent == sample.ROOT
