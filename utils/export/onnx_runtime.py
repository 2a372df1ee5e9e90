"""ONNX Runtime for the runner: the one-line error when the export extra is missing, sessions
that respect --threads, and the metadata entry an export writes into its file."""
import importlib
import json
import os
from pathlib import Path

import numpy as np

from utils.core.errors import UserError, excerpt
from utils.core.shell import main_command
from utils.export import METADATA_KEY

EXTRA = "bash scripts/setup.sh --export"
# What ONNX Runtime calls the element types the runner feeds and reads back.
FLOAT_INPUT = "tensor(float)"
FLOAT_OUTPUTS = ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require(*names, why="--format=onnx"):
    """The modules `names` (default: onnx, onnxscript and onnxruntime), imported; a missing one
    is a one-line UserError naming the set-up command that installs them."""
    modules = []
    for name in names or ONNX_PACKAGES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise UserError(f"{why} needs the {name} package, which is not installed; install the export extra "
                            f"(onnx, onnxscript, onnxruntime) with `{EXTRA}`") from None
    return modules[0] if len(modules) == 1 else modules


def session(model, threads=0):
    """An ONNX Runtime CPU session of `model` (a path or the file's bytes) using `threads`
    intra-op threads (0: torch's count in this process, which --threads sets). Threads wait
    passively when out of work: the data loader's workers share the cores."""
    ort = require("onnxruntime", why="ONNX Runtime")
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    source = str(model) if isinstance(model, (str, os.PathLike)) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... types
        name = f"{model}" if isinstance(model, (str, os.PathLike)) else "the exported model"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise UserError(f"ONNX Runtime cannot load {name}: {reason[:300]}; give an ONNX file, or write one again "
                        f"with `{main_command()} export --env=<run>`") from None


def metadata_of(session_or_path, name=None):
    """The runner's metadata entry of an ONNX file (a path or an open session): {} when the
    file has none (exported by something else); one that is not a JSON object is a
    UserError (`name`: how to call the file in it)."""
    open_session = session(session_or_path) if isinstance(session_or_path, (str, os.PathLike)) else session_or_path
    text = open_session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return parse_metadata(text, name or session_or_path)


def parse_metadata(text, name):
    """The runner's metadata entry `text` (JSON) of the exported file `name` as a dict ({} for
    none), or a UserError that names the fix."""
    if not text:
        return {}
    try:
        metadata = json.loads(text)
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise UserError(f"{name}: its {METADATA_KEY!r} metadata entry is not a JSON object ({excerpt(text)}); "
                        f"write the file again with `{main_command()} export --env=<run>`")
    return metadata


def check_file(path, option="--onnx"):
    """UserError unless `path` names an ONNX file that exists."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option}={path} is a folder; give the .onnx file `{main_command()} export` wrote, "
                        f"e.g. {option}={path / 'model.onnx'}")
    if not path.is_file():
        raise UserError(f"{option}={path}: no such file; write it with `{main_command()} export --env=<run>`")


def version():
    return require("onnxruntime", why="ONNX Runtime").__version__


class OnnxModel:
    """An exported classifier that val / test (and predict()) call as they call a PyTorch
    model: a float32 image batch (a torch tensor on the CPU, any memory format) in, logits
    out. A file exported with a fixed batch (--dynamic-batch=false) gets batches of exactly
    that size: a short one padded, a long one in parts."""

    def __init__(self, path, threads=0):
        self.session = session(path, threads)
        self.threads = self.session.get_session_options().intra_op_num_threads
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise UserError(f"{path} takes {len(inputs)} input(s) and gives {len(outputs)} output(s); the runner runs "
                            f"a classifier with one image batch (N x C x H x W) in and one of logits out, as "
                            f"`{main_command()} export` writes it")
        (given,), (answer,) = inputs, outputs
        if given.type != FLOAT_INPUT or answer.type not in FLOAT_OUTPUTS:
            raise UserError(f"{path} takes {given.type} and gives {answer.type}; the runner feeds float32 image batches "
                            f"(N x C x H x W) and reads float outputs, as `{main_command()} export --env=<run>` writes them")
        self.path, self.output_rank = path, len(answer.shape)
        self.input_name = given.name
        self.batch = given.shape[0] if isinstance(given.shape[0], int) else None
        self.item_shape = tuple(given.shape[1:])
        self.classes = answer.shape[-1] if isinstance(answer.shape[-1], int) else None
        self.metadata = metadata_of(self.session, path)

    def require_logits(self):
        """UserError unless the file gives N x classes logits (a classifier's output)."""
        if self.output_rank != 2:
            raise UserError(f"{self.path} gives an output of {self.output_rank} dimensions, not N x classes logits: it "
                            f"is not a classifier; export a classify run's model with `{main_command()} export --env=<run>`")

    def __call__(self, images):
        import torch

        batch = images.float().contiguous().numpy()
        if self.batch is None:
            return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])
        parts = []
        for start in range(0, len(batch), self.batch):
            part = batch[start:start + self.batch]
            padded = part if len(part) == self.batch else np.concatenate([part, np.repeat(part[-1:], self.batch - len(part), 0)])
            parts.append(self.session.run(None, {self.input_name: padded})[0][:len(part)])
        return torch.from_numpy(np.concatenate(parts))
