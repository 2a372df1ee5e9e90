"""Any tree of images by class (registered as `imagefolder`): torchvision's ImageFolder rules.

    <root>/<class>/<image>      e.g. flowers/daisy/1.jpg, flowers/rose/summer/2.png

Classes are the sub-folders of the root, sorted by name (class k = the k-th name), and their
images are the files below them, at any depth, with an image extension (.jpg .jpeg .png .ppm
.bmp .pgm .tif .tiff .webp, any case); unlike torchvision, hidden folders and files
(.ipynb_checkpoints, .DS_Store) are skipped, not taken as a class. The class names are kept in
every checkpoint, so `test` names its predictions without the train folder.

`test` reads --test-data-root: a folder of images with any names, nested or not, or one image
file. Transforms are those of Dogs vs. Cats (data/transforms.py): random resized crop and flip
for training, resize and centre crop for evaluation, ImageNet normalisation.
"""
import functools
import logging
import os
from pathlib import Path

from data import image_cache, transforms
from data.dogcat import DEFAULT_SIZE
from data.image_files import ImageFiles
from data.readable import split_readable
from data.sampling import split_part
from utils.core.errors import UsageError, UserError, plural
from utils.core.registry import DATASETS

log = logging.getLogger(__name__)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "<root>/<class>/<image> (e.g. <root>/daisy/1.jpg)"


def images_under(folder):
    """Image files below `folder` at any depth, sorted by their path relative to it; hidden
    entries skipped. Returns (images, names of the other files, which are skipped)."""
    found, others = [], []
    for parent, folders, files in os.walk(folder, followlinks=True):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            if name.lower().endswith(EXTENSIONS):
                found.append(Path(parent) / name)
            else:
                others.append(name)
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix()), others


@functools.lru_cache(maxsize=8)
def _list_train(root, skip_bad_images, workers):
    """(class names, [(path, label)], [(path, why unreadable)]) of the tree at `root` (as
    given: errors and paths show it so); one listing per process for train and val."""
    if root.is_file():
        raise UserError(f"--train-data-root={root} is a file; --dataset=imagefolder takes a folder {LAYOUT}")
    if not root.is_dir():
        raise UserError(f"data folder {str(root)!r} does not exist; --dataset=imagefolder expects {LAYOUT}")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        loose = images_under(root)[0]
        hint = f"; it holds {plural(len(loose), 'image')} directly: move them into one folder per class" if loose else ""
        raise UserError(f"no class folders in {str(root)!r}: --dataset=imagefolder expects {LAYOUT}{hint}")
    items, others = [], []
    for label, name in enumerate(classes):
        images, skipped = images_under(root / name)
        if not images:
            raise UserError(f"class folder {str(root / name)!r} holds no images ({' '.join(EXTENSIONS)}); "
                            f"add some or remove the folder")
        items += [(path, label) for path in images]
        others += skipped
    others += sorted(entry.name for entry in root.iterdir() if entry.is_file() and not entry.name.startswith("."))
    if others:
        log.warning("skipped %s in %s: not an image, or not inside a class folder (e.g. %s)",
                    plural(len(others), "file"), root, ", ".join(others[:3]))
    bad = []
    if skip_bad_images:
        items, bad = split_readable(items, workers)
    return tuple(classes), tuple(items), tuple(bad)


@DATASETS.register("imagefolder")
def imagefolder(cfg, split_name):
    """The `split_name` (train | val | test) part of an ImageFolder tree (test: any images)."""
    size = cfg.image_size or DEFAULT_SIZE
    if split_name == "test":
        return _test_set(cfg, size)
    root = Path(cfg.train_data_root)
    classes, items, bad = _list_train(root, cfg.skip_bad_images, cfg.num_workers)
    chosen = split_part(list(items), split_name, cfg.val_ratio, cfg.seed, root)
    augment = split_name == "train" and transforms.augmentation_of(cfg, ImageFiles.augmentation)
    return ImageFiles(chosen, size, augment=augment, seed=cfg.seed, skipped=bad, classes=classes,
                      cache=image_cache.attach(cfg, items, size))


def _test_set(cfg, size):
    if not cfg.test_data_root:
        raise UsageError("--dataset=imagefolder: give --test-data-root=<a folder of images (any names, nested) or one image>")
    root = Path(cfg.test_data_root)
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths, others = images_under(root)
        if others:
            log.warning("skipped %s in %s that %s not images (e.g. %s)", plural(len(others), "file"), root,
                        "is" if len(others) == 1 else "are", ", ".join(others[:3]))
        if not paths:
            raise UserError(f"no images in {str(root)!r} or the folders below it ({' '.join(EXTENSIONS)})")
    else:
        raise UserError(f"--test-data-root={root} does not exist; give a folder of images or one image file")
    items, bad = [(path, position) for position, path in enumerate(paths)], []
    if cfg.skip_bad_images:
        items, bad = split_readable(items, cfg.num_workers)
    # Any images: no labels, no class names (they come from the checkpoint, or the train
    # folder); a batch's second part indexes `paths`.
    return ImageFiles(items, size, augment=False, seed=cfg.seed, skipped=bad, labelled=False, paths=paths,
                      cache=image_cache.attach(cfg, items, size))
