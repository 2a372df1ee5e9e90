"""Checkpoints: one dict of plain data, written atomically, loaded with weights_only=True,
and the one place that names checkpoint files and orders their writes.

Layout (FORMAT_VERSION 2): one entry per named object of the experiment, holding its
state_dict (classify: model, optimizer, lr_policy, scaler or None; gan: netg, netd, ...),
plus the engine's train state (epoch = epochs finished, step_in_epoch = steps of the next
epoch already done, global_step, best = {metric, value, epoch}, epoch_meters, window), rng,
config (plain dict), experiment and format_version. Format 1 (before the engine) kept an lr
policy state of its own; its weights still load everywhere, but it cannot be resumed.
A reader refuses files from a newer format instead of misreading them.
"""
import logging
import pickle
import zipfile
from pathlib import Path

from utils import faults
from utils.errors import UserError
from utils.io import atomic_open, remove_temp_files

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
LAST, BEST, EMERGENCY = "last.pth", "best.pth", "emergency.pth"


def save_checkpoint(state, path):
    """Write `state` to `path` so that a crash at any instant leaves the old file intact."""
    import torch

    state = dict(state, format_version=FORMAT_VERSION)
    with atomic_open(path, "wb", before_replace=lambda: faults.at_save("written")) as handle:
        torch.save(state, handle)
    faults.at_save("renamed")
    return Path(path)


class CheckpointManager:
    """Names and orders a run's checkpoint files: last.pth (every epoch and on a stop),
    best.pth (when the monitored metric improves), epoch_<n>.pth (--keep-checkpoints),
    emergency.pth (after a crash, never over last.pth). Only the writing process (rank 0
    under DDP) touches files."""

    def __init__(self, run_dir, keep_epochs=0, writes=True):
        self.run_dir, self.keep_epochs, self.writes = Path(run_dir), keep_epochs, writes

    def remove_leftovers(self):
        """Delete temp files of writes that a kill interrupted (a run starts or resumes)."""
        if not self.writes:
            return
        count, size = remove_temp_files(self.run_dir)
        if count:
            log.info("removed %d unfinished checkpoint temp file(s) (%.1f MB) left by a killed run in %s",
                     count, size / 1e6, self.run_dir)

    def save_epoch_end(self, state, epoch, improved):
        """The checkpoints of a finished epoch. best.pth is written *before* last.pth: a kill
        between the two leaves last.pth one epoch behind, and resuming redoes that epoch
        deterministically; the other order could leave a stale best.pth behind a newer last.pth."""
        if not self.writes:
            return
        if improved:
            save_checkpoint(state, self.run_dir / BEST)
        save_checkpoint(state, self.run_dir / LAST)
        if self.keep_epochs > 0:
            save_checkpoint(state, self.run_dir / f"epoch_{epoch}.pth")
            numbered = sorted(self.run_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            for old in numbered[: -self.keep_epochs]:
                old.unlink()

    def save_last(self, state):
        if self.writes:
            save_checkpoint(state, self.run_dir / LAST)
        return self.run_dir / LAST

    def save_emergency(self, state):
        if self.writes:
            save_checkpoint(state, self.run_dir / EMERGENCY)
        return self.run_dir / EMERGENCY


def find_for_inference(run_dir):
    """best.pth, else last.pth of a run dir; UserError naming where it looked."""
    for name in (BEST, LAST):
        if (Path(run_dir) / name).exists():
            return Path(run_dir) / name
    raise UserError(f"no checkpoint in {run_dir} (looked for {BEST}, {LAST}); check --env and --checkpoint-dir")


def unwrap(module):
    """The plain module inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers, so
    saved state dicts have no `module.` / `_orig_mod.` prefixes and load in any process."""
    while True:
        inner = getattr(module, "_orig_mod", None) or (getattr(module, "module", None) if hasattr(module, "no_sync") else None)
        if inner is None:
            return module
        module = inner


def load_checkpoint(path):
    """Load a checkpoint (or a bare state_dict) safely onto the CPU, explaining failures."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses arbitrary objects; we never retry with weights_only=False on a
        # file we did not write, because unpickling can run any code.
        first = str(error).strip().splitlines()
        raise UserError(
            f"checkpoint {str(path)!r} holds Python objects that need unsafe unpickling; refused "
            f"({first[-1] if first else 'weights_only load failed'}). Re-save only tensors/plain data."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise UserError(f"checkpoint {str(path)!r} is unreadable (truncated or not a torch file): {error}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {str(path)!r} is a {type(state).__name__}, not a dict of tensors")
    version = state.get("format_version")
    if version is not None and version > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {str(path)!r} has format version {version}; this runner reads up to "
            f"{FORMAT_VERSION}. Update the runner to load it."
        )
    return state


def model_state(state):
    """The model weights in a checkpoint dict or in a bare state_dict (book's model.save)."""
    return state["model"] if "model" in state and isinstance(state["model"], dict) else state


def load_weights(model, weights, source, strict=True):
    """load_state_dict with an error that names missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    mismatched_keys = [
        key for key, value in weights.items() if key in own and hasattr(value, "shape") and value.shape != own[key].shape
    ]
    mismatched = [f"{key} {tuple(weights[key].shape)} vs model {tuple(own[key].shape)}" for key in mismatched_keys]
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    if strict and (mismatched or missing or unexpected):
        details = []
        if missing:
            details.append(f"missing {_few(missing)}")
        if unexpected:
            details.append(f"unexpected {_few(unexpected)}")
        if mismatched:
            details.append(f"shape mismatch {_few(mismatched)}")
        raise UserError(
            f"{source} does not fit model {type(model).__name__}: {'; '.join(details)}. "
            f"Was it trained with another --model or --num-classes?"
        )
    model.load_state_dict({k: v for k, v in weights.items() if k in own and k not in mismatched_keys}, strict=False)
    return missing, unexpected, mismatched


def _few(items, limit=3):
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
