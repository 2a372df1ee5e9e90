"""Deterministic data order and augmentation.

`EpochSampler` yields `(epoch, index)` keys. The order of an epoch is a permutation drawn
from (seed, epoch) alone, and a dataset seeds each sample's augmentation from (seed, epoch,
index), so the bits a model sees do not depend on worker count, on how many epochs this
process has run, or on whether the run was resumed. `start` skips the part of an epoch that
was already consumed without loading it (mid-epoch resume).
"""
import torch

from utils import seeding
from utils.errors import UserError


class EpochSampler(torch.utils.data.Sampler):
    """Keys of one epoch: shuffled by (seed, epoch) for training, in order otherwise."""

    def __init__(self, size, seed, shuffle, epoch=0, start=0):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.start = epoch, start

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def order(self):
        if not self.shuffle:
            return list(range(self.size))
        return seeding.rng(self.seed, seeding.ORDER, self.epoch).permutation(self.size).tolist()

    def __iter__(self):
        return iter([(self.epoch, index) for index in self.order()[self.start:]])

    def __len__(self):
        return self.size - self.start


def augmentation_rng(seed, key):
    """The generator a sample's augmentation draws from; `key` is (epoch, index) or index."""
    epoch, index = key if isinstance(key, tuple) else (0, key)
    return seeding.rng(seed, seeding.AUGMENT, epoch, index)


def stratified_split(items, val_ratio, seed):
    """Stratified, seeded (train, val) split: round(val_ratio * n_class) images per class."""
    train, val = [], []
    for label in sorted({label for _, label in items}):
        members = [item for item in items if item[1] == label]
        order = seeding.rng(seed, seeding.SPLIT, label).permutation(len(members))
        n_val = int(round(val_ratio * len(members)))
        val += [members[i] for i in sorted(order[:n_val])]
        train += [members[i] for i in sorted(order[n_val:])]
    return train, val


def split_part(items, split_name, val_ratio, seed, source):
    """The train or val part of stratified_split(items), or a one-line error naming the
    fix when --val-ratio leaves it empty (`source` says where the images are)."""
    train, val = stratified_split(items, val_ratio, seed)
    chosen = train if split_name == "train" else val
    if not chosen:
        where, fix = ("training", "lower") if split_name == "train" else ("validation", "raise")
        raise UserError(f"--val-ratio={val_ratio} leaves no {where} images of the {len(items)} in {source}; {fix} --val-ratio")
    return chosen
