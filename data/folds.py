"""K-fold cross-validation splits (--folds=K, --fold=k): which item of the training data is in
which fold, and the train / val part of one fold as an ordinary data set.

The assignment is a pure function of the data and (--seed, K): each class's items (or, for a
continuous target, each of 10 quantile bins'; for unlabelled data, all items) are ordered by
their identity (data/base.py `identities()`: a path relative to the data, a position in the
source files, a text), shuffled by a generator drawn from (seed, K, the class), and dealt to
the folds in turn. So every fold holds its share of each class (sizes differ by one at most),
every item is in exactly one fold, and two processes that read the same data compute the
same split whichever starts first, in whatever order the files are listed.

A fold's parts are the data set's own splits built with every item in them (--val-ratio 0
for train, 1 for val: the same items in the same order, augmented and not), cut by the
assignment: `FoldPart` is the protocol of data/base.py over chosen positions of such a
split. An item keeps its position in the whole split as the key of its augmentation, so a
fold's random crops do not depend on which fold it is in.
"""
import dataclasses
import json

import torch

from utils.core import seeding
from utils.core.errors import UserError

STREAM = seeding.stream("folds")
BINS = 10  # quantile bins of a continuous target


def identity_key(identity):
    """A text that orders and compares items the same way in every process."""
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)


def item_id(identity):
    """What names an item in a group's files: the path or position of an identity [it,
    target], else the identity itself (a poem's text)."""
    return identity[0] if isinstance(identity, (list, tuple)) and len(identity) == 2 else identity


def strata(targets, count):
    """A stratum (an int) per item: its class, its quantile bin for a float target, or 0."""
    if targets is None:
        return [0] * count
    values = list(targets)
    if all(isinstance(value, int) or (isinstance(value, float) and value.is_integer()) for value in values):
        return [int(value) for value in values]
    order = sorted(range(count), key=lambda index: (values[index], index))
    bins = [0] * count
    for rank, index in enumerate(order):
        bins[index] = rank * BINS // max(count, 1)
    return bins


def assign(identities, targets, folds, seed):
    """The fold (1..folds) of each item, in the items' order (see the module docstring)."""
    keys = [identity_key(identity) for identity in identities]
    groups = {}
    for index, stratum in enumerate(strata(targets, len(keys))):
        groups.setdefault(stratum, []).append(index)
    assignment = [0] * len(keys)
    for stratum, members in sorted(groups.items()):
        members.sort(key=lambda index: keys[index])
        order = seeding.rng(seed, STREAM, folds, stratum).permutation(len(members))
        # the first fold of each stratum turns too, so that small classes do not all start at fold 1
        offset = int(seeding.rng(seed, STREAM, folds, stratum, 1).integers(folds))
        for place, position in enumerate(order):
            assignment[members[position]] = (place + offset) % folds + 1
    return assignment


def check_folds(targets, folds, source):
    """UserError when some class has fewer items than folds (a fold would lack it)."""
    if targets is None:
        return
    counts = {}
    for stratum in strata(targets, len(targets)):
        counts[stratum] = counts.get(stratum, 0) + 1
    if not counts:
        return
    smallest, size = min(counts.items(), key=lambda pair: (pair[1], pair[0]))
    labelled = all(isinstance(value, int) or (isinstance(value, float) and value.is_integer()) for value in targets)
    if size < folds and labelled:
        raise UserError(f"--folds={folds} is more than the {size} image(s) of class {smallest} in {source}: every fold "
                        f"must hold each class; give --folds={max(2, size)} or fewer")
    if len(targets) < folds:
        raise UserError(f"--folds={folds} is more than the {len(targets)} items of {source}; give fewer folds")


class FoldPart(torch.utils.data.Dataset):
    """The items of `whole` (a data set's split holding all the training data) at
    `positions`, with the protocol of data/base.py (each attribute and method, from `whole`
    or cut to the positions); anything else is read from `whole`."""

    def __init__(self, whole, positions, identities):
        self.whole, self.positions = whole, list(positions)
        self._identities = [identities[position] for position in self.positions]
        targets = whole.targets
        self.targets = None if targets is None else [targets[position] for position in self.positions]
        for name in ("classes", "image_size", "channels", "augmentation", "resize", "skipped", "image_parts", "name"):
            setattr(self, name, getattr(whole, name))

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self.whole[(key[0], self.positions[key[1]])]
        return self.whole[self.positions[key]]

    def __getattr__(self, name):  # a data set's own attributes (a vocabulary, a transform)
        if name in ("whole", "positions", "_identities"):
            raise AttributeError(name)
        return getattr(self.whole, name)

    def normalisation(self):
        return self.whole.normalisation()

    def fitted(self):
        return self.whole.fitted()

    def identities(self):
        return list(self._identities)

    def denormalize(self, batch):
        return self.whole.denormalize(batch)

    def write_predictions(self, path, keys, log_probabilities, class_names, cfg):
        return self.whole.write_predictions(path, keys, log_probabilities, class_names, cfg)


def whole_split(builder, cfg, split):
    """`split` (train or val) of the data set built with every training item in it."""
    return builder(dataclasses.replace(cfg, val_ratio=0.0 if split == "train" else 1.0), split)


def fold_part(builder, cfg, split):
    """The train (the other folds) or val (fold --fold) part of fold cfg.fold of cfg.folds."""
    whole = whole_split(builder, cfg, split)
    identities = whole.identities()
    check_folds(whole.targets, cfg.folds, cfg.train_data_root)
    assignment = assign(identities, whole.targets, cfg.folds, cfg.seed)
    chosen = [position for position, fold in enumerate(assignment) if (fold == cfg.fold) == (split == "val")]
    return FoldPart(whole, chosen, identities)
