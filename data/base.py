"""The data-set protocol: what the engine and the experiments may read from a data set.

Every data set registered in DATASETS returns an instance of a subclass of `Dataset` (or a
torch Dataset with the same attributes). The class attributes below are the whole contract;
nothing else is read by getattr anywhere. Items are looked up by `(epoch, index)` keys from
data.sampling.EpochSampler (or a bare index), so random augmentation can be a function of
(seed, epoch, index) and any --num-workers gives the same bits.

    classes       class names (index k = class k), or None: not labelled, or names unknown
    targets       the label of each item of a labelled split, or None
    image_size    side of the square images it gives, or None (not images)
    channels      image channels (1 grey, 3 RGB); a class attribute, read before any file is
                  (models are built for it)
    augmentation  {option: default} of the training augmentation it takes (data/transforms.py,
                  `Augment`): "hflip" (flip probability; 0: mirroring changes what an image
                  shows, and --tta refuses to average over a mirror) and "crop_scale" (random
                  resized crop) or "crop_padding" (pad and crop); the run's --hflip,
                  --crop-scale, --crop-padding and --augment override them
    resize        how an image from outside the data set (predict(), a caller of an
                  exported model) is fitted to image_size: "centre-crop" (short side to
                  image_size / 0.875, centre crop: the eval transform of image files) or
                  "whole" (scaled whole to image_size, as array sets hold theirs); with
                  `channels` and the class attributes `mean` and `std` (ImageNet's when a
                  registered entry has none), read by data.transforms.model_input
    skipped       [(path, why unreadable)] left out by --skip-bad-images
    image_parts   which parts of a batch are images: moved to the device in the run's memory
                  format (channels_last); other parts (labels, ids, tokens) just move
    normalisation()     {batch part: (mean, std)}: the uint8 image parts the engine turns into
                  normalised float32 on the device ((x / 255 - mean) / std per channel); {}
                  for a set whose items are already float
    fitted()      statistics this (training) split fitted that the other splits must use as
                  they are (a target's mean and std, a table's normalisation), as plain data;
                  {} by default. The engine keeps them in every checkpoint (info["fitted"]),
                  and `build_split(cfg, split, fitted)` hands them to a builder that takes a
                  `fitted` keyword: the val split in `datasets()`, the test split in `test`
    identities()  a JSON-able identity of each item in split order (a path relative to the
                  data, a position in the source files, a text): the run's manifest keeps a
                  hash of it, which says whether two runs split the data alike; default:
                  the position and the target of each item
    denormalize(batch)  images back in [0, 1] for display
    write_predictions(path, keys, log_probabilities, class_names, cfg)
                  `test`'s output: writes `path` atomically and returns the number of rows.
                  `keys` are the second part of each item in split order (an id, an index,
                  or the label of a labelled split), `log_probabilities` an N x K float tensor.
"""
import functools
import inspect

import torch

from data.folds import fold_part
from utils.core.errors import UserError
from utils.core.registry import DATASETS


class Dataset(torch.utils.data.Dataset):
    """Base class of the runner's data sets: the protocol above, with its defaults."""

    classes = None
    targets = None
    image_size = None
    channels = 3
    augmentation = {}
    resize = "centre-crop"
    skipped = ()
    image_parts = (0,)
    name = "this data set"  # how messages name it

    def normalisation(self):
        """{batch part: (per-channel mean, std)} of the uint8 image parts to normalise on the device."""
        return {}

    def fitted(self):
        """What this split fitted that the others need, as plain data (see the protocol)."""
        return {}

    def identities(self):
        """Each item's identity, in split order (see the protocol above)."""
        targets = self.targets if self.targets is not None else [None] * len(self)
        return [[position, target] for position, target in zip(range(len(self)), targets)]

    def denormalize(self, batch):
        """Images back in [0, 1] for display (uint8: / 255; float: as they are, clamped)."""
        return batch.float() / 255 if batch.dtype == torch.uint8 else batch.float().clamp(0, 1)

    def write_predictions(self, path, keys, log_probabilities, class_names, cfg):
        """Write `test`'s predictions of this split to `path`; returns the rows written."""
        raise UserError(f"{self.name} has no test output; `test` is not available for it")


def build_split(cfg, split, fitted=None):
    """The `split` (train | val | test) of --dataset, built by its DATASETS entry; `fitted`
    (the statistics the training split fitted: its `fitted()`, or a checkpoint's
    info["fitted"]) goes to a builder that takes a `fitted` keyword, so a validation or test
    split is transformed as the training split was. With --folds, train and val are the
    parts of fold --fold (data/folds.py)."""
    builder = DATASETS.get(cfg.dataset)
    if fitted and "fitted" in inspect.signature(builder).parameters:
        builder = functools.partial(builder, fitted=fitted)
    dataset = fold_part(builder, cfg, split) if getattr(cfg, "folds", 0) and split in ("train", "val") else builder(cfg, split)
    if getattr(cfg, "cache", "auto") not in ("auto", "off") and not hasattr(dataset, "cache"):
        raise UserError(f"--cache={cfg.cache}: --dataset={cfg.dataset} holds decoded arrays, not image files, so there "
                        f"is nothing to cache; drop --cache")
    return dataset
