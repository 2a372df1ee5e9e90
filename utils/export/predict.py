"""Class probabilities from Python, without the CLI:

    from utils.export.predict import Predictor, predict

    predict("checkpoints/dogcat/model.onnx", "cat.1.jpg")   # {'cat': 0.03, 'dog': 0.97}
    predictor = Predictor("checkpoints/dogcat/model.onnx")  # load once, call many times
    predictor(["a.jpg", PIL.Image.open("b.png")])           # [{...}, {...}]
    predictor.probabilities(images)                         # numpy N x K, columns = predictor.classes

The source is what `python main.py export` wrote (.onnx: ONNX Runtime; .pt2: torch.export)
or a checkpoint .pth / run dir (PyTorch). The metadata of the file (or the checkpoint's
config) says how an image becomes the model's input, exactly as `test` does it: image files
are resized to a short side of size / 0.875 and centre-cropped (dogcat, imagefolder), array
data sets' images are scaled whole to their size (cifar10, mnist); then scaled to [0, 1],
normalised with the data set's mean and std.
"""
import functools
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from configs.loader import load_config
from configs.values import Text
from data.readable import open_image
from data.transforms import fit_image
from utils.core.errors import UserError, excerpt
from utils.core.registry import EXPERIMENTS
from utils.core.shell import main_command
from utils.engine.precision import for_inference
from utils.export import METADATA_KEY
from utils.export.onnx_runtime import OnnxModel, parse_metadata


class PredictError(UserError, ValueError):
    """What predict() and Predictor raise for a source or an image they cannot use (a missing
    or foreign file, broken metadata, an unreadable image): one line that names the fix, the
    same line the CLI prints. A ValueError, so callers may catch either."""


def _one_line_errors(method):
    """`method`, raising PredictError for every mistake of its caller (the runner's UserError)."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except PredictError:
            raise
        except UserError as error:
            raise PredictError(str(error)) from None
    return wrapped


def predict(source, image):
    """Class probabilities {class name: probability} of one image (a file or a PIL image) by
    the model in `source` (see the module docstring); a list of images gives a list. Raises
    PredictError."""
    return Predictor(source)(image)


class Predictor:
    """A classifier loaded once from `source` (.onnx, .pt2, a checkpoint .pth or a run dir),
    called on images. `classes` names the columns of `probabilities`; `spec` is how an image
    becomes its input."""

    @_one_line_errors
    def __init__(self, source, threads=0):
        path = Path(source)
        if not path.exists():
            raise UserError(f"{source}: no such file or folder; give an exported .onnx / .pt2, a checkpoint .pth "
                            f"or a run dir")
        if path.suffix == ".onnx":
            self.model = OnnxModel(path, threads)
            self.spec = self.model.metadata
        elif path.suffix == ".pt2":
            self.model, self.spec = _load_pt2(path)
        else:
            self.model, self.spec = _load_checkpoint(path)
        if self.spec.get("experiment", "classify") != "classify" or "classes" not in self.spec:
            raise UserError(f"{source} is not a classifier exported by the runner (a gan's generator, or a file "
                            f"without the runner's metadata); predict() takes a classify run's model")
        _check_spec(self.spec, source)
        if isinstance(self.model, OnnxModel):
            self.model.require_logits()
        self.classes = list(self.spec["classes"])
        # the engine's normalisation, in its arithmetic (utils/engine/precision.py): the same bits as `test`
        mean, std = (torch.tensor(self.spec[key], dtype=torch.float32).view(1, -1, 1, 1) for key in ("mean", "std"))
        self._offset, self._factor = mean * 255, 1 / (std * 255)

    def __call__(self, images):
        """{class name: probability} of an image (a path or a PIL image); a list of them
        gives a list of such dicts."""
        many = isinstance(images, (list, tuple))
        rows = self.probabilities(images if many else [images])
        answers = [dict(zip(self.classes, map(float, row))) for row in rows]
        return answers if many else answers[0]

    @_one_line_errors
    def probabilities(self, images, batch_size=32):
        """N x K numpy float32 array of class probabilities of `images` (paths or PIL images)."""
        parts = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self._pixels(image) for image in images[start:start + batch_size]])
            with torch.inference_mode():
                logits = self.model(batch.float().sub_(self._offset).mul_(self._factor))
            parts.append(logits.float().softmax(1).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)

    def _pixels(self, image):
        """uint8 C x size x size of a path or a PIL image."""
        if isinstance(image, (str, Path)):
            with open_image(image) as opened:
                return fit_image(opened, self.spec)
        return fit_image(image, self.spec)


MAX_IMAGE_SIZE = 8192  # pixels a side: what an exported file may ask an image to be resized to


def _check_spec(spec, source):
    """UserError unless the metadata `spec` says, in values this code can use, how an image
    becomes the model's input (a hand-edited or foreign entry must not reach the resize)."""
    channels = spec.get("channels")
    checks = {
        "classes": isinstance(spec.get("classes"), list) and all(isinstance(name, str) for name in spec["classes"]),
        "channels": channels in (1, 3),
        "image_size": type(spec.get("image_size")) is int and 1 <= spec["image_size"] <= MAX_IMAGE_SIZE,
        "resize": spec.get("resize") in ("centre-crop", "whole"),
        **{key: isinstance(spec.get(key), list) and len(spec[key]) == channels
           and all(type(value) in (int, float) and math.isfinite(value) and (key == "mean" or value > 0)
                   for value in spec[key]) for key in ("mean", "std")},
    }
    bad = [key for key, good in checks.items() if not good]
    if bad:
        raise UserError(f"{source}: the runner's metadata holds no usable {bad[0]} ({excerpt(spec.get(bad[0]))}); "
                        f"write the file again with `{main_command()} export --env=<run>`")


def _load_pt2(path):
    """(module, metadata) of a torch.export archive written by `export`."""
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except (RuntimeError, zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{path} is not a torch.export archive ({error}); write one with "
                        f"`{main_command()} export --format=pt2`") from None
    return program.module(), parse_metadata(extra[f"{METADATA_KEY}.json"], path)


def _load_checkpoint(path):
    """(module, metadata) of a checkpoint .pth or a run dir's best.pth / last.pth, through
    the experiment's exportable(): the same model and metadata `export` would write."""
    from utils.export.exporter import open_checkpoint

    flags = {"env": Text(path.name), "checkpoint_dir": Text(str(path.parent))} if path.is_dir() \
        else {"load_model_path": Text(str(path))}
    cfg, state, checkpoint_path = open_checkpoint(load_config(flags), flags)
    target = EXPERIMENTS.get(cfg.experiment)(cfg).exportable(state, checkpoint_path)
    return for_inference(target.module), target.metadata
