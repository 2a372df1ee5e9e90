"""Any image files as a data set (`ImageFiles`): Dogs vs. Cats and image folders use it.

Items are (uint8 image tensor, label) for a labelled split and (uint8 image tensor, key) for
a test split, the key being an id (Kaggle's number) or a position in `paths`. Training
images are a random resized crop (--crop-scale, default 0.08 of the area at least) and a
flip (--hflip, default 0.5) drawn from (seed, epoch, index) (data/transforms.py);
--augment=false trains on the eval transform. With `cache` (--cache, data/image_cache.py) the
same transforms run on each image's decoded pixels instead of its file. Normalisation with ImageNet's mean and std
happens on the device.
"""
import logging
import os

from data import transforms
from data.base import Dataset
from data.sampling import augmentation_rng
from utils.writers import write_csv

log = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """Image files: `items` are [(path, label or key)]; `labelled` says which (a test split
    of image files is not). `paths` (for a test split of any images) are what the csv names:
    a batch's key indexes them. `augment`: a transforms.Augment for a train split (True: the
defaults below), or None / False for the eval transform."""

    mean, std = transforms.MEAN, transforms.STD
    augmentation = {"hflip": 0.5, "crop_scale": 0.08}  # random resized crop of 8-100 % of the area, flip half

    def __init__(self, items, image_size, augment, seed, skipped=(), classes=None, labelled=True, paths=None, cache=None):
        self.items, self.image_size, self.seed = items, image_size, seed
        self.cache = cache  # data/image_cache.py: the decoded images, or None (decode each file)
        self.augment = transforms.Augment(**self.augmentation) if augment is True else augment or None
        self.classes = list(classes) if classes else None
        self.targets = [target for _, target in items] if labelled else None
        self.skipped = list(skipped)  # [(path, reason)] left out by --skip-bad-images
        self.paths = paths

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        path, target = self.items[index]
        if self.cache is not None:
            pixels = self.cache.pixels(path)
            if self.augment:
                return transforms.train_pixels(pixels, self.image_size, augmentation_rng(self.seed, key), self.augment), target
            return transforms.eval_pixels(pixels, self.image_size), target
        if self.augment:
            return transforms.train_image(path, self.image_size, augmentation_rng(self.seed, key), self.augment), target
        return transforms.eval_image(path, self.image_size), target

    def identities(self):
        """(path relative to the split's common folder, label or key) of each item."""
        paths = [str(path) for path, _ in self.items]
        base = os.path.commonpath([os.path.dirname(path) for path in paths]) if paths else ""
        return [[os.path.relpath(path, base) if base else path, target] for path, (_, target) in zip(paths, self.items)]

    def normalisation(self):
        return {0: (self.mean, self.std)}

    def denormalize(self, batch):
        """Images back in [0, 1] for display."""
        return transforms.denormalize(batch, self.mean, self.std)

    def write_predictions(self, path, keys, log_probabilities, class_names, cfg):
        """path,label,probability: each image's most probable class (with `paths`: the path
        as given; else the item's key as its id)."""
        best = log_probabilities.exp().max(1)
        rows = [(str(self.paths[key]) if self.paths is not None else key, class_names[label], f"{probability:.6f}")
                for key, label, probability in zip(keys, best.indices.tolist(), best.values.tolist())]
        return write_csv(path, ["path" if self.paths is not None else "id", "label", "probability"], rows)
