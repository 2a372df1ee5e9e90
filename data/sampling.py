"""Deterministic data order and augmentation.

`EpochSampler` yields `(epoch, index)` keys. The order of an epoch is a permutation drawn
from (seed, epoch) alone, and a dataset seeds each sample's augmentation from (seed, epoch,
index), so the bits a model sees do not depend on worker count, on how many epochs this
process has run, or on whether the run was resumed. `start` skips the part of an epoch that
was already consumed without loading it (mid-epoch resume).

Under N processes (torchrun) the epoch's one global order is cut into global batches of
N x batch_size; rank r takes the r-th batch_size slice of each, and the last, partial
global batch is split as evenly as possible, so every rank runs the same number of steps.
`start` counts images of the global order, so a run resumed under another number of
processes continues the same order from the same image. When fewer images than processes
remain at the end of an epoch, they are left out of that epoch (no rank may step alone).
Evaluation (shuffle=False) gives each rank a contiguous share with no padding.
"""
import torch

from utils.core import seeding
from utils.core.errors import UserError


class EpochSampler(torch.utils.data.Sampler):
    """Keys of one epoch for one rank: shuffled by (seed, epoch) for training, in order
    otherwise (see the module docstring for the split between ranks)."""

    def __init__(self, size, seed, shuffle, epoch=0, start=0, rank=0, world=1, batch_size=1):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.start = epoch, start
        self.rank, self.world, self.batch_size = rank, world, batch_size

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def order(self):
        if not self.shuffle:
            return list(range(self.size))
        return seeding.rng(self.seed, seeding.ORDER, self.epoch).permutation(self.size).tolist()

    def indices(self):
        """This rank's positions of the epoch, from `start` on."""
        order = self.order()
        if self.world == 1:
            return order[self.start:]
        if not self.shuffle:
            share = order[self.start:]
            return share[self.rank * len(share) // self.world:(self.rank + 1) * len(share) // self.world]
        mine, step = [], self.batch_size * self.world
        for first in range(self.start, self.size, step):
            chunk = order[first:first + step]
            if len(chunk) < self.world:
                break  # too few left for every rank to take one
            mine += chunk[self.rank * len(chunk) // self.world:(self.rank + 1) * len(chunk) // self.world]
        return mine

    def __iter__(self):
        return iter([(self.epoch, index) for index in self.indices()])

    def __len__(self):
        return len(self.indices())


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


def quantile_split(items, val_ratio, seed, bins=10):
    """Seeded (train, val) split of (item, target) pairs whose target is a number on a scale
    (a regression): stratified over `bins` quantile bins of the target, so the validation
    part spans its range as the training part does (by class, each value would be a class of
    one and the validation part empty). Both parts keep the items' order."""
    order = sorted(range(len(items)), key=lambda index: (items[index][1], index))
    bins = max(1, min(bins, len(items)))
    strata = [(index, rank * bins // len(items)) for rank, index in enumerate(order)]
    train, val = stratified_split(strata, val_ratio, seed)
    return [items[index] for index, _ in sorted(train)], [items[index] for index, _ in sorted(val)]


SPLITS = {"class": stratified_split, "quantiles": quantile_split}  # split_part's `by`


def split_part(items, split_name, val_ratio, seed, source, by="class"):
    """The train or val part of `items`, split by class (stratified_split) or, `by`
    "quantiles", by quantiles of a continuous target (quantile_split); or a one-line error
    naming the fix when --val-ratio leaves it empty (`source` says where the items are)."""
    train, val = SPLITS[by](items, val_ratio, seed)
    chosen = train if split_name == "train" else val
    if not chosen:
        where, fix = ("training", "lower") if split_name == "train" else ("validation", "raise")
        raise UserError(f"--val-ratio={val_ratio} leaves no {where} images of the {len(items)} in {source}; {fix} --val-ratio")
    return chosen
