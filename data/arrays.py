"""Data sets held in memory as uint8 arrays: the torchvision on-disk formats (CIFAR-10's python
pickle batches, MNIST's idx files) and any set like them.

Adding one is one file with one decorator: subclass `ArrayDataset`, set the class attributes
below and write `read(root, train)`; see data/mnist.py. The shared parts live here:

- where the files are: `--train-data-root` is the folder torchvision's own class takes as
  `root` (the one holding `cifar-10-batches-py/` or `MNIST/raw/`), and the official test
  split lives there too, so `--test-data-root` defaults to it;
- the validation split: stratified and seeded (data.sampling.stratified_split) over the
  official train split, the same rule as Dogs vs. Cats;
- augmentation as a function of (seed, epoch, index): pad-and-crop (--crop-padding) and a
  horizontal flip (--hflip), drawn from the sample's own generator, so resume and any
  --num-workers give the same bits; --augment=false turns both off;
- normalisation with the data set's per-channel mean and std.
"""
import functools
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from data import transforms
from data.base import Dataset
from data.sampling import augmentation_rng, split_part
from utils.core.errors import UserError, plural
from utils.core.io import network_timeout
from utils.writers import write_csv

log = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 30


class FormatError(Exception):
    """A data file that exists but is not in the expected format (the message says how)."""


class ArrayDataset(Dataset):
    """Items: (normalised float image C x H x W, label). Subclasses set:

    title     the name users know ("CIFAR-10")
    folder    where the files lie under the root ("cifar-10-batches-py")
    files     {"train": [...], "test": [...]}: file names in `folder`, for error messages
    size      native side in pixels; channels: 1 (grey) or 3 (RGB)
    mean, std per-channel normalisation (of the official train split)
    augmentation  {"hflip": probability, "crop_padding": pixels}: its training augmentation
              by default (zero padding, then a random crop back to `size`; 0 = no crop)
    fetch     what --download says it fetches ("cifar-10-python.tar.gz, 163 MB")

    and implement `read(root, train)` -> (images uint8 N x H x W x C, labels int N, class
    names), raising FormatError for a file in the wrong format; plus `download(root)`.
    """
    title, folder, files, fetch = "", "", {}, ""
    size, channels = 32, 3
    mean, std = (0.5,), (0.5,)
    augmentation = {"hflip": 0.0, "crop_padding": 0}
    resize = "whole"  # an image from elsewhere is scaled whole to the side of the set's own (data/base.py)

    def __init__(self, cfg, split):
        root = Path(cfg.train_data_root if split != "test" else cfg.test_data_root or cfg.train_data_root)
        train = split != "test"
        images, labels, self.classes = load(type(self), root, train, cfg.download)
        self.images, self.seed, self.name = images, cfg.seed, self.title
        self.image_size = cfg.image_size or self.size
        self.augment = transforms.augmentation_of(cfg, self.augmentation) if split == "train" else None
        self._mean, self._std = torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1)
        positions = list(range(len(labels)))
        if train:
            items = [(position, int(label)) for position, label in zip(positions, labels)]
            chosen = split_part(items, split, cfg.val_ratio, cfg.seed, f"the {self.title} train split")
            positions = [position for position, _ in chosen]
        self.positions = positions  # index in the split's files: the test csv's id is this + 1
        self.targets = [int(labels[position]) for position in positions]

    def __len__(self):
        return len(self.positions)

    def identities(self):
        """(position in the split's files, label) of each item."""
        return [[position, target] for position, target in zip(self.positions, self.targets)]

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        image = self.images[self.positions[index]]  # H x W x C uint8
        if self.augment:
            image = self.augmented(image, self.augment, augmentation_rng(self.seed, key))
        # np.array: a writable, contiguous copy (the arrays are read-only; a flip is a view).
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)
        if self.image_size != self.size:
            from torchvision.transforms import functional as F

            tensor = F.resize(tensor, [self.image_size, self.image_size], antialias=True)
        return (tensor - self._mean) / self._std, self.targets[index]

    @staticmethod
    def augmented(image, augment, rng):
        """Zero-pad by augment.crop_padding and crop back at a random offset, then flip with
        probability augment.hflip (CIFAR's 4 and 0.5: He et al. 2016, section 4.2)."""
        pad = augment.crop_padding
        if pad:
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            top, left = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
            image = padded[top:top + image.shape[0], left:left + image.shape[1]]
        if augment.hflip and rng.random() < augment.hflip:
            image = image[:, ::-1]
        return image

    def denormalize(self, batch):
        """Images back in [0, 1] for display."""
        return transforms.denormalize(batch, self.mean, self.std)

    def write_predictions(self, path, keys, log_probabilities, class_names, cfg):
        """id,label: id = the image's 1-based position in the split's files (Kaggle's
        CIFAR-10 and Digit Recognizer numbering), label = the most probable class's name."""
        predicted = log_probabilities.argmax(1).tolist()
        return write_csv(path, ["id", "label"], [(position + 1, class_names[label])
                                                  for position, label in zip(self.positions, predicted)])

    @classmethod
    def read(cls, root, train):
        raise NotImplementedError

    @classmethod
    def download(cls, root):
        raise NotImplementedError

    @classmethod
    def required(cls, train):
        """The files a split needs in `folder` (before any is read)."""
        return cls.files["train" if train else "test"] + cls.files.get("both", [])

    also = ""  # what a failed download's message adds after the file names

    @classmethod
    def layout(cls, root, train):
        """Where the files of a split go, for the 'not found' message."""
        return f"{Path(root) / cls.folder}/ with {', '.join(cls.required(train))}"


@functools.lru_cache(maxsize=4)
def _read_cached(cls, root, train):
    images, labels, classes = cls.read(root, train)
    log.info("%s %s split: %s in %s", cls.title, "train" if train else "test", plural(len(labels), "image"), root / cls.folder)
    return images, labels, classes


def load(cls, root, train, download=False):
    """(images, labels, class names) of the train or test split of `cls` under `root`;
    one read per process (train and val share it). Missing files are downloaded with
    --download, else a one-line error says which files go where."""
    root = Path(root)
    if root.is_file():
        raise UserError(f"--{'train' if train else 'test'}-data-root={root} is a file; give the folder that holds "
                        f"{cls.folder}/ ({cls.title})")
    missing = [name for name in cls.required(train) if not _exists(root / cls.folder / name)]
    if missing and download:
        _download(cls, root)
        missing = []
    if missing:
        hint = ""
        if root.name == Path(cls.folder).parts[-1] or (root / Path(cls.folder).name).exists():
            hint = f" (give the folder that holds {cls.folder}/, not the folder itself)"
        elif root.parent.name and (root.parent / cls.folder).is_dir():
            hint = f"; did you mean --{'train' if train else 'test'}-data-root={root.parent}?"
        raise UserError(f"{cls.title} not found: expected {cls.layout(root, train)} (missing {missing[0]}){hint}; "
                        f"add --download to fetch it ({cls.fetch}) or copy the files there")
    try:
        images, labels, classes = _read_cached(cls, root.resolve(), train)
    except FormatError as error:
        raise UserError(f"{cls.title}: {error}") from None
    return images, labels, classes


def _exists(path):
    # MNIST's files may stay gzipped (torchvision downloads the .gz and unpacks it beside).
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


def _download(cls, root):
    """cls.download into `root`; on failure one line with the reason, and everything the
    attempt created (folders, partial files) removed, so a failed download adds nothing."""
    before = _entries(root, cls)
    try:
        with network_timeout(DOWNLOAD_TIMEOUT_S):
            cls.download(root)
    except (OSError, RuntimeError) as error:  # URLError, timeouts; torchvision's md5 failures
        _remove_new(root, cls, before)
        # torchvision's message spans lines ("Error downloading x.gz:\n Tried <mirror>, got:\n
        # <reason>"): the reason is on the last one.
        reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        files = ", ".join(dict.fromkeys(cls.required(True) + cls.required(False)))
        raise UserError(f"could not download {cls.title} into {root} ({reason}); offline? fetch {cls.fetch} on a "
                        f"machine with internet so that {Path(root) / cls.folder}/ holds {files}{cls.also}") from None


def _entries(root, cls):
    """Every path that exists under the places a download writes: `root`'s own entries and
    the data set's folder below it, and the folders leading there."""
    root = Path(root)
    found = {path for path in [root, *root.parents] if path.exists()}
    if root.is_dir():
        found.update(root.iterdir())
    target = root / cls.folder
    found.update(path for path in [target, *target.parents] if path.exists())
    if target.is_dir():
        found.update(target.rglob("*"))
    return found


def _remove_new(root, cls, before):
    """Delete what appeared since `before` (= _entries then): new files first, then the new
    folders, deepest first, each only once it is empty of anything that was there before."""
    for path in sorted(_entries(root, cls) - before, key=lambda path: len(path.parts), reverse=True):
        if path.is_dir() and not any(inside in before for inside in path.rglob("*")):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
