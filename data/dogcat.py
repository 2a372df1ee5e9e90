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

from data import image_cache, sample, transforms
from data.image_files import ImageFiles
from data.readable import load_rgb, split_readable  # noqa: F401 - dogcat.load_rgb, as before
from data.sampling import split_part
from data.sampling import stratified_split as split  # noqa: F401 - data.dogcat.split, as before
from utils.core.errors import UserError, plural
from utils.core.registry import DATASETS
from utils.writers import write_submission

log = logging.getLogger(__name__)
CLASSES = ("cat", "dog")
TRAIN_NAME = re.compile(r"(cat|dog)\.(\d+)\.(jpe?g|png)", re.IGNORECASE)
TEST_NAME = re.compile(r"(\d+)\.(jpe?g|png)", re.IGNORECASE)
TRAIN_LAYOUT = "cat.<n>.jpg / dog.<n>.jpg files (the Kaggle train.zip unpacked)"
TEST_LAYOUT = "<n>.jpg files (the Kaggle test.zip unpacked)"
DEFAULT_SIZE = 224  # the side ImageNet models are built for


def scan(folder, pattern, layout):
    """[(match, path)] for entries of `folder` whose name matches `pattern`, sorted by name."""
    folder = Path(folder)
    check_folder(folder, layout)
    found, skipped = [], []
    for entry in sorted(folder.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((match, entry))
        else:
            skipped.append(entry.name)
    if skipped:
        log.warning("skipped %s in %s that %s not %s (e.g. %s)", plural(len(skipped), "entry"), folder,
                    "is" if len(skipped) == 1 else "are", layout, ", ".join(skipped[:3]))
    if not found:
        nested = [d for d in skipped if (folder / d).is_dir()]
        hint = f"; did you mean {folder / nested[0]}?" if nested else ""
        raise UserError(f"no images in {str(folder)!r}: expected {layout}{hint}")
    return found


def check_folder(folder, layout):
    """UserError unless `folder` is an existing directory (a file is told apart from nothing)."""
    folder = Path(folder)
    if folder.is_file():
        raise UserError(f"data folder {str(folder)!r} is a file, not a folder; give the folder that holds {layout}")
    if not folder.is_dir():
        raise UserError(f"data folder {str(folder)!r} does not exist; it should hold {layout}")


@functools.lru_cache(maxsize=8)
def _list_train(folder, skip_bad_images, workers):
    items = [(path, CLASSES.index(m.group(1).lower()), int(m.group(2))) for m, path in scan(folder, TRAIN_NAME, TRAIN_LAYOUT)]
    items.sort(key=lambda item: (item[1], item[2], item[0].name))
    items = [(path, label) for path, label, _ in items]
    skipped = []
    if skip_bad_images:
        items, skipped = split_readable(items, workers)
    return tuple(items), tuple(skipped)


def list_train(folder):
    """[(path, label)] sorted by (label, number): the order the split is drawn from."""
    return train_listing(folder)[0]


def train_listing(folder, skip_bad_images=False, workers=2):
    """(list_train's items, [(path, why unreadable)] they leave out with --skip-bad-images).
    One listing per folder and process: `train` builds its train and val splits from it."""
    items, skipped = _list_train(Path(folder).resolve(), skip_bad_images, workers)
    return list(items), list(skipped)


def list_test(folder):
    """[(path, id)] sorted by numeric id."""
    return test_listing(folder)[0]


def test_listing(folder, skip_bad_images=False, workers=2):
    """(list_test's items, [(path, why unreadable)] they leave out with --skip-bad-images).
    `folder` may be one image: its id is the <n> of its name, or 1 for another name (said)."""
    if Path(folder).is_file():
        match = TEST_NAME.fullmatch(Path(folder).name)
        if match is None:
            log.info("%s is not named <n>.jpg, the Kaggle test id: its row of the csv has id 1", folder)
        items = [(Path(folder), int(match.group(1)) if match else 1)]
        return split_readable(items, workers) if skip_bad_images else (items, [])
    items = [(path, int(m.group(1))) for m, path in scan(folder, TEST_NAME, TEST_LAYOUT)]
    items.sort(key=lambda item: (item[1], item[0].name))
    if skip_bad_images:
        return split_readable(items, workers)
    return items, []


class KaggleTest(ImageFiles):
    """The test split: items (image, id); `test` writes Kaggle's submission from it."""

    def write_predictions(self, path, keys, log_probabilities, class_names, cfg):
        """Kaggle's id,label = P(dog) (class 1), clipped into [--clip, 1 - --clip], sorted
        by id; an unreadable image (--skip-bad-images) gets the uninformed 0.5, as Kaggle
        wants a row for every id."""
        if log_probabilities.shape[1] != 2:
            raise UserError(f"test writes P(class 1) for a 2-class model; this one has {log_probabilities.shape[1]} classes")
        ids, dog_probabilities = list(keys), log_probabilities[:, 1].exp().tolist()
        if self.skipped:
            log.warning("%s got P(dog)=0.5 in the csv (Kaggle wants a row for every id)",
                        plural(len(self.skipped), "unreadable test image"))
            ids += [int(TEST_NAME.fullmatch(Path(path).name).group(1)) for path, _ in self.skipped]
            dog_probabilities += [0.5] * len(self.skipped)
        return write_submission(path, ids, dog_probabilities, clip=cfg.clip)


@DATASETS.register("dogcat")
def dogcat(cfg, split_name):
    """The `split_name` (train | val | test) part of the Dogs vs. Cats data."""
    size = cfg.image_size or DEFAULT_SIZE
    if split_name == "test":
        # Kaggle's zips unpack train/ and test/ side by side.
        root = Path(cfg.test_data_root or Path(cfg.train_data_root).parent / "test")
        if _is_default_sample(root):
            sample.ensure(root.parent)
        if not root.is_dir() and (root.parent / "test1").is_dir():
            root = root.parent / "test1"  # Kaggle's first competition named it test1/
        items, skipped = test_listing(root, cfg.skip_bad_images, cfg.num_workers)
        return KaggleTest(items, size, augment=False, seed=cfg.seed, skipped=skipped, classes=CLASSES, labelled=False,
                          cache=image_cache.attach(cfg, items, size))
    root = Path(cfg.train_data_root)
    if _is_default_sample(root):
        sample.ensure(root.parent)
    items, skipped = train_listing(root, cfg.skip_bad_images, cfg.num_workers)
    chosen = split_part(items, split_name, cfg.val_ratio, cfg.seed, root)
    augment = split_name == "train" and transforms.augmentation_of(cfg, ImageFiles.augmentation)
    return ImageFiles(chosen, size, augment=augment, seed=cfg.seed, skipped=skipped, classes=CLASSES,
                      cache=image_cache.attach(cfg, items, size))


def _is_default_sample(root):
    return root.resolve().parent == sample.ROOT
