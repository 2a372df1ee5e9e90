"""Checkpoints: one dict of plain data, written atomically, loaded with weights_only=True.

Layout (FORMAT_VERSION 1): model, optimizer, lr_policy, scaler (or None), epoch (epochs
finished), step_in_epoch (steps of the next epoch already done), global_step, rng, best
(metric name, value, epoch), config (plain dict), format_version. Any key may be extended;
a reader refuses files from a newer format instead of misreading them.
"""
import pickle
import zipfile
from pathlib import Path

from utils.errors import UserError
from utils.io import atomic_open

FORMAT_VERSION = 1


def save_checkpoint(state, path):
    """Write `state` to `path` so that a crash at any instant leaves the old file intact."""
    import torch

    state = dict(state, format_version=FORMAT_VERSION)
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    return Path(path)


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
