"""manifest.json: what a run was trained with, written into its run dir before its first step.

{"format": 1, "run", "experiment", "environments": [block, ...]}: the first block is the
start of the run, and each resume appends its own, so a run resumed on another machine, with
another torch or on changed data shows it. A block holds the command line (passwords in
URLs hidden), where in the run it began (epoch, step), the code (utils/engine/provenance.py:
git commit, branch, dirty files and the sha256 of the uncommitted diff, saved beside as
source.diff; outside git a sha256 of every source file), Python and every installed
distribution's version, the OS, CPU model, cores, GPUs, CUDA and cuDNN, the intra-op thread
count, world size, device, precision, seed, the determinism switches in force, the values
of the environment variables the runner reads (no other variable: a manifest holds no
secrets), and the data: per root its file count, bytes and content sha256, the train / val
split's identity hash, and a sha256 of a weights file it starts from. The data is hashed
in a thread (utils/engine/data_fingerprint.py) and lands in the file once hashed; each
file's short digest goes to data-files.json.gz, so a difference names the changed files.

`differences` (utils/engine/manifest_diff.py) turns two blocks into the lines `reproduce`
and `runs --diff` print. Every file here is written atomically; only the writing process
(rank 0) keeps a Manifest.
"""
import dataclasses
import gzip
import json
import logging
import os
import platform
import re
import socket
import sys
import time
from pathlib import Path

from configs.schema import with_role
from utils.core.io import atomic_open
from utils.core.records import Damaged, Required, read_json
from utils.core.shell import hide_passwords
from data import image_cache
from utils.engine import data_fingerprint, provenance

log = logging.getLogger(__name__)
NAME, FILES, FORMAT = "manifest.json", "data-files.json.gz", 1
# The environment variables the runner (or torch for it) reads; no other value is recorded.
READ_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CUDA_VISIBLE_DEVICES",
            "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NCCL_ALGO",
            "NCCL_PROTO", "TORCH_CUDNN_V8_API_DISABLED", "RUNNER_CACHE_DIR")


def command_line():
    return [hide_passwords(part) for part in [Path(sys.executable).name, *sys.argv]]


def packages():
    """{distribution name: version} of every installed distribution (importlib.metadata)."""
    import importlib.metadata

    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        if name:
            found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
    return dict(sorted(found.items()))


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device):
    import torch

    cuda = torch.cuda.is_available() and device.type == "cuda"
    return {"os": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "gpus": [torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())] if cuda else [],
            "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None}


def settings(cfg, device, precision, world_size):
    import torch

    return {"threads": torch.get_num_threads(), "world_size": world_size, "device": str(device),
            "precision": str(precision.dtype).replace("torch.", "") if precision.dtype is not None else "float32",
            "channels_last": cfg.channels_last, "compile": cfg.compile, "seed": cfg.seed, "max_epoch": cfg.max_epoch,
            "determinism": {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                            "cudnn_deterministic": torch.backends.cudnn.deterministic,
                            "cudnn_benchmark": torch.backends.cudnn.benchmark,
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                            "float32_matmul_precision": torch.get_float32_matmul_precision()},
            "environment": {name: os.environ[name] for name in READ_ENV if name in os.environ}}


def computed_options(cfg):
    """{option: value} of the options that decide what the run computes (not the execution
    or invocation ones): what `reproduce` and `runs --diff` name when config.yaml was edited."""
    kept = set(with_role("run", "model", "split", experiment=cfg.experiment))
    return {name: value for name, value in dataclasses.asdict(cfg).items() if name in kept}


def data_roots(cfg):
    """{name: path} of what the run reads: its training data and a weights file it starts from."""
    roots = {"train": os.path.abspath(cfg.train_data_root)}
    for option in ("load_model_path", "pretrained"):
        value = getattr(cfg, option, None)
        if value and value != "hub" and Path(value).is_file() and not cfg.resume:
            roots[option] = os.path.abspath(value)
    return roots


# What a manifest must look like where it is read (utils/core/records.py); other keys pass.
ROOT = {"files": int, "bytes": int, "sha256": str, "path": str, "missing": bool}
BLOCK = {"started": str, "kind": str, "at": {"epoch": int, "step_in_epoch": int, "global_step": int}, "host": str,
         "command": [str], "cwd": str, "python": str, "packages": {"*": str},
         "code": {"git": {"commit": (str, None), "branch": (str, None), "dirty": bool, "changed": [str],
                          "diff_sha256": (str, None), "diff_file": str},
                  "sources": {"files": int, "sha256": str, "digests": {"*": str}}},
         "hardware": {"os": str, "machine": str, "cpu": str, "cores": (int, None), "gpus": [str], "cuda": (str, None),
                      "cudnn": (int, None)},
         "threads": int, "world_size": int, "device": str, "precision": str, "channels_last": bool, "compile": bool,
         "seed": int, "max_epoch": int, "determinism": {"*": (bool, str)}, "environment": {"*": str},
         "config": {"*": object},
         "data": {"split": {"*": str}, "sizes": {"*": int}, "roots": (None, {"*": ROOT})}}
SHAPE = {"format": int, "run": str, "experiment": str, "environments": Required([BLOCK])}
FILES_SHAPE = {"*": {"*": {"*": str}}}  # {block index: {root: {file: digest}}}


def read(run_dir, fix=""):
    """A run's manifest dict, None when it has none; records.Damaged when it is there but
    cannot be used (`fix`: '; what the caller's user can do')."""
    path = Path(run_dir) / NAME
    manifest = read_json(path, SHAPE, fix=fix)
    if manifest is not None and not manifest["environments"]:
        raise Damaged(path, "environments is empty: no block says what the run was trained with", fix)
    return manifest


def read_files(run_dir, fix=""):
    """{block index: {root: {file: digest}}} from data-files.json.gz ({} when missing);
    records.Damaged when it is there but cannot be used."""
    path = Path(run_dir) / FILES
    found = read_json(path, FILES_SHAPE, packed=True, fix=fix) or {}
    wrong = next((key for key in found if not key.isdigit()), None)
    if wrong is not None:
        raise Damaged(path, f"{wrong!r} is not the number of a manifest block", fix)
    return {int(key): value for key, value in found.items()}


class Manifest:
    """The manifest of the run in `run_dir`, begun (a fresh run) or extended (a resume) by
    `start`; `update()` writes the data's fingerprint once its thread is done, `finish()`
    waits for it. `guard()` is called before each write (a sweep's trial taken over)."""

    def __init__(self, run_dir, guard=None):
        self.run_dir, self.guard = Path(run_dir), guard or (lambda: None)
        self.document, self.files, self.hasher, self.index, self.roots = None, {}, None, None, {}

    def start(self, cfg, device, precision, world_size, datasets, state):
        existing = read(self.run_dir) if cfg.resume else None
        self.document = existing or {"format": FORMAT, "run": cfg.env, "experiment": cfg.experiment, "environments": []}
        self.files = read_files(self.run_dir) if existing else {}
        block = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "kind": "resume" if existing else "start",
                 "at": {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step},
                 "host": socket.gethostname(), "command": command_line(), "cwd": os.getcwd(),
                 "code": provenance.code_state(), "python": platform.python_version(),
                 "packages": packages(), "hardware": hardware(device),
                 **settings(cfg, device, precision, world_size), "config": computed_options(cfg),
                 "image_cache": image_cache.record(datasets["train"]),
                 "data": {"split": {name: data_fingerprint.split_digest(ds) for name, ds in datasets.items() if ds is not None},
                          "sizes": {name: len(ds) for name, ds in datasets.items() if ds is not None}, "roots": None}}
        self.document["environments"].append(block)
        self.index = len(self.document["environments"]) - 1
        self._save_diff(block["code"])
        self.roots = data_roots(cfg)
        self.hasher = data_fingerprint.Hasher(self.roots)
        self._write()

    def _save_diff(self, code):
        git = code.get("git") or {}
        diff = git.pop("diff", None)
        if not diff:
            return
        earlier = [block["code"]["git"] for block in self.document["environments"][:self.index]
                   if isinstance((block.get("code") or {}).get("git"), dict)]
        same = next((git_of.get("diff_file") for git_of in earlier if git_of.get("diff_sha256") == git["diff_sha256"]), None)
        if same:  # a resume on the same uncommitted changes: one file for both
            git["diff_file"] = same
            return
        name = "source.diff" if self.index == 0 else f"source.{self.index}.diff"
        self.guard()
        with atomic_open(self.run_dir / name, "w", encoding="utf-8") as handle:
            handle.write(diff)
        git["diff_file"] = name

    def update(self, wait=False):
        """Write the data's fingerprint into the manifest once it is hashed (with `wait`: now)."""
        if self.hasher is None or self.document is None:
            return
        done = self.hasher.result(wait=wait)
        if done is None:
            return
        prints, files = done
        self.hasher = None
        self.document["environments"][self.index]["data"]["roots"] = {
            name: dict(entry, path=str(self.roots[name])) for name, entry in prints.items()}
        self.files[self.index] = files
        self.guard()
        with atomic_open(self.run_dir / FILES, "wb") as handle:
            with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as packed:
                packed.write(json.dumps({str(k): v for k, v in self.files.items()}, sort_keys=True).encode())
        self._write()

    def finish(self):
        self.update(wait=True)

    def _write(self):
        self.guard()
        with atomic_open(self.run_dir / NAME, "w", encoding="utf-8") as handle:
            json.dump(self.document, handle, indent=1, sort_keys=False)
