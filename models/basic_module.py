"""BasicModule: the book's nn.Module with save()/load(), kept for users porting book code.

The runner itself saves full checkpoints (utils/engine/checkpoint.py); these two helpers read and
write bare weights, safely (weights_only) and atomically.
"""
import logging
import time
from pathlib import Path

import torch

from utils.core.errors import UserError
from utils.engine import checkpoint

log = logging.getLogger(__name__)


class BasicModule(torch.nn.Module):
    """nn.Module + save(path) / load(path) + optional local pretrained weights."""

    def __init__(self):
        super().__init__()
        self.model_name = type(self).__name__

    def load(self, path):
        """Load weights from a bare state_dict or a runner checkpoint, onto any device."""
        weights = checkpoint.model_state(checkpoint.load_checkpoint(path))
        checkpoint.load_weights(self, weights, source=str(path))
        return self

    def save(self, path=None):
        """Save the weights; default name checkpoints/<model>_<MMDD_HH:MM:SS>.pth as in the book."""
        path = Path(path or time.strftime(f"checkpoints/{self.model_name}_%m%d_%H:%M:%S.pth"))
        checkpoint.save_checkpoint({"model": self.state_dict()}, path)
        return path

    def load_pretrained(self, path, weights=None):
        """Initialise from local weights; layers whose shape differs (the head) keep their init."""
        if weights is None:
            if str(path) == "hub":
                raise UserError(f"--pretrained=hub downloads torchvision weights: use --model=torchvision.<name>; {self.model_name} takes a local weights file")
            weights = pretrained_weights(path)
        missing, unexpected, mismatched = checkpoint.load_weights(self, weights, str(path), strict=False)
        if len(missing) == len(self.state_dict()):
            raise UserError(f"--pretrained={path}: no weight in it matches model {self.model_name}")
        if mismatched or missing:
            log.info("pretrained %s: kept fresh init for %d tensors (e.g. %s)", path, len(missing) + len(mismatched), (mismatched + missing)[0])
        return self


def pretrained_weights(path):
    """The model weights in the --pretrained file `path`, or a one-line error that names the option."""
    if not Path(path).is_file():
        state = "a folder" if Path(path).is_dir() else "no such file"
        raise UserError(f"--pretrained={path}: {state}; give a local weights file (.pth), "
                        f"or hub with a --model=torchvision.<name> (online)")
    return checkpoint.model_state(checkpoint.load_checkpoint(path))
