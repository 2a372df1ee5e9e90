"""Meters (METERS registry): running metrics built on torchnet.meter.

`loss`: batch-size-weighted mean (torchnet's AverageValueMeter), `confusion`: K x K counts
(rows = truth, columns = prediction), `logloss`: Kaggle's metric, mean -log p(true class).
"""
import math

import numpy as np
from torchnet import meter as tnt

from utils.core.registry import METERS

# Kaggle clips submissions into [1e-15, 1 - 1e-15] before scoring log loss.
KAGGLE_EPSILON = 1e-15


@METERS.register("loss")
class LossMeter(tnt.AverageValueMeter):
    """Mean of per-sample losses over an epoch, weighting each batch by its size."""

    def add_batch(self, mean_loss, batch_size):
        # torchnet's add(value, n) treats `value` as the sum of n samples (its mean update is
        # mean_old + (value - n * mean_old) / total), so pass the batch's summed loss.
        self.add(float(mean_loss) * batch_size, n=batch_size)

    def average(self):
        return self.value()[0] if self.n else math.nan

    def state_dict(self):
        # Every running field, so a mid-epoch resume continues the same float arithmetic.
        return {key: float(value) if key != "n" else int(value) for key, value in vars(self).items()}

    def load_state_dict(self, state):
        vars(self).update(state)


@METERS.register("confusion")
class ConfusionMeter(tnt.ConfusionMeter):
    """Confusion counts; rows are the true class, columns the predicted one."""

    def state_dict(self):
        return {"conf": self.conf.tolist()}

    def load_state_dict(self, state):
        self.conf[...] = np.asarray(state["conf"], dtype=self.conf.dtype)

    def accuracy(self):
        counts = self.value()
        total = counts.sum()
        return float(np.trace(counts) / total) if total else math.nan


@METERS.register("logloss")
class LogLossMeter(tnt.meter.Meter):
    """Multi-class log loss of predicted probabilities, as Kaggle scores it."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.total = 0.0
        self.n = 0

    def add(self, probabilities, targets):
        """`probabilities`: N x K tensor (rows sum to 1); `targets`: N class indices."""
        picked = probabilities.detach().double().cpu()[range(len(targets)), targets.cpu()]
        self.total += float(-picked.clamp(KAGGLE_EPSILON, 1 - KAGGLE_EPSILON).log().sum())
        self.n += len(targets)

    def value(self):
        return self.total / self.n if self.n else math.nan
