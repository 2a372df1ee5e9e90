"""Any image files as a data set (`ImageFiles`): Dogs vs. Cats and image folders use it."""
import torch

from data import transforms
from data.sampling import augmentation_rng


class ImageFiles(torch.utils.data.Dataset):
    """Items: (uint8 image tensor, label) for train/val, (uint8 image tensor, id) for test;
    any image files (data/imagefolder.py uses it too). Batches are normalised on the device
    with `mean` and `std` (utils/engine/precision.py)."""

    classes = ["cat", "dog"]
    mean, std = transforms.MEAN, transforms.STD

    def __init__(self, items, image_size, augment, seed, skipped=()):
        self.items, self.image_size, self.augment, self.seed = items, image_size, augment, seed
        self.targets = [target for _, target in items]
        self.skipped = list(skipped)  # [(path, reason)] left out by --skip-bad-images

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        path, target = self.items[index]
        if self.augment:
            return transforms.train_image(path, self.image_size, augmentation_rng(self.seed, key)), target
        return transforms.eval_image(path, self.image_size), target

    def denormalize(self, batch):
        """Images back in [0, 1] for display."""
        return transforms.denormalize(batch)
