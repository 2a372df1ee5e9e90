"""Classify's data: the splits built by the --dataset entry, the options checked against the
data set (augmentation, --tta), and the class names and sizes read from the data."""
import dataclasses
import logging

from data.transforms import AUGMENT_OPTIONS
from utils.core.errors import UsageError, UserError, plural
from data.base import build_split

log = logging.getLogger(__name__)


def load_data(cfg, split):
    """The dataset of `split` (train | val | test) built by the --dataset registry entry."""
    dataset = build_split(cfg, split)
    log.info("%s split: %s", split, plural(len(dataset), "image"))
    return dataset


def check_augmentation(cfg, train_set):
    """A one-line error for an augmentation option the data set does not take, or that
    --augment=false turns off."""
    takes = train_set.augmentation
    given = [name for name in AUGMENT_OPTIONS if getattr(cfg, name) is not None]
    if given and not cfg.augment:
        raise UsageError(f"--augment=false trains without augmentation, so {_flags(given)} would do nothing; "
                         f"drop one of them")
    unknown = [name for name in given if name not in takes]
    if unknown:
        offered = f"it takes {_flags(takes)}" if takes else "it has no training augmentation"
        raise UsageError(f"--dataset={cfg.dataset} does not use {_flags(unknown)} ({offered}); drop {_flags(unknown)}")
    if cfg.crop_scale == 0:
        raise UsageError("--crop-scale=0 allows crops of no area at all; give the smallest share of the image to keep, "
                         "e.g. 0.08 (the default) or 0.25")


def _flags(names):
    return ", ".join(f"--{name.replace('_', '-')}" for name in names)


def balanced_sample(targets, count):
    """Up to `count` indices taking each class in turn (the first image of every class, then
    the second, ...), so a grid of a split sorted by class shows every class, not only cats."""
    by_class = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    queues = [by_class[target] for target in sorted(by_class)]
    chosen = []
    for rank in range(max(map(len, queues), default=0)):
        chosen += [queue[rank] for queue in queues if rank < len(queue)]
    return chosen[:count]


def class_names(dataset, cfg, info=None):
    """The names of the classes: the checkpoint's, else the data set's, else 0..K-1."""
    names = (info or {}).get("classes") or dataset.classes
    return list(names) if names and len(names) == cfg.num_classes else [str(k) for k in range(cfg.num_classes)]


def infer_classes(train_set, val_set, given, dataset):
    """Class names 0..K-1 for a data set that does not name its classes: K from its labels
    (or --num-classes when it has none to show)."""
    labels = {label for dataset in (train_set, val_set) if dataset is not None for label in dataset.targets or ()}
    count = max(labels) + 1 if labels else given
    if count is None:
        raise UsageError(f"--dataset={dataset} names no classes and shows no labels; give --num-classes")
    return [str(k) for k in range(count)]


def resolve_from_data(cfg, dataset, source):
    """(cfg, class names or None): cfg with --num-classes and --image-size resolved from the
    data where the checkpoint does not say them, as a bare weights file does not. The
    classes come from the labelled split (the train folder's for image files), as in train;
    the size is the data set's own default. When the data cannot tell the classes, one line
    says what to give."""
    if cfg.image_size is None:
        cfg = dataclasses.replace(cfg, image_size=dataset.image_size or 224)
    if cfg.num_classes is not None:
        return cfg, None
    try:
        labelled = dataset if dataset.classes or dataset.targets is not None else load_data(cfg, "val")
        classes = labelled.classes or infer_classes(labelled, None, None, cfg.dataset)
    except UserError as error:
        raise UserError(f"{source} holds weights only, not the number of classes they were trained for, and "
                        f"--train-data-root cannot tell it ({error}); give --num-classes=K, or a run's best.pth / last.pth") from None
    log.info("%s holds weights only: %d classes and %d px images, from the data", source, len(classes), cfg.image_size)
    return dataclasses.replace(cfg, num_classes=len(classes)), list(classes)


def check_tta(cfg, dataset):
    """--tta=flip averages over a horizontal flip, which is wrong where training never flips."""
    if "flip" not in str(cfg.tta or "").split(","):
        return
    default = dataset.augmentation.get("hflip", 0)
    if not cfg.augment or not (default if cfg.hflip is None else cfg.hflip):
        why = ("--augment=false" if not cfg.augment else "--hflip=0" if cfg.hflip is not None
               else f"{cfg.dataset}'s default --hflip=0: a mirror can show another class")
        raise UsageError(f"--tta={cfg.tta} averages each image with its mirror image, which this run never trained on "
                         f"({why}); use --tta=crops, or drop --tta")
