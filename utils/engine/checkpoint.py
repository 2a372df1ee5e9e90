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
import re
import threading
import warnings
import zipfile
from pathlib import Path

from utils.core import faults
from utils.core.errors import UserError, close_matches, plural
from utils.core.io import atomic_open, remove_temp_files
from utils.core.shell import main_command
from utils.engine import fingerprints

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
LAST, BEST, EMERGENCY = "last.pth", "best.pth", "emergency.pth"
WEIGHTS_KIND = "weights"  # the "kind" of best.pth: weights, config and metrics, no run state
STATUS = "status.json"  # where a run says how it stands (Outputs.write_status; `runs` reads it)


def is_run(folder):
    """Whether `folder` is a run dir: it holds a config.yaml or a checkpoint."""
    return folder.is_dir() and ((folder / "config.yaml").is_file() or any(folder.glob("*.pth")))


def save_checkpoint(state, path):
    """Write `state` to `path` so that a crash at any instant leaves the old file intact."""
    import torch

    state = dict(state, format_version=FORMAT_VERSION)
    with atomic_open(path, "wb", before_replace=lambda: faults.at_save("written")) as handle:
        stream = _RecordingWriter(handle)
        try:
            torch.save(state, stream)
        except RuntimeError:
            # torch reports a failed write as "[enforce fail at inline_container.cc] unexpected
            # pos"; the OS error it swallowed (no space left, ...) is the one to tell.
            if stream.error is not None:
                raise stream.error from None
            raise
    faults.at_save("renamed")
    return Path(path)


def remove_leftovers(run_dir):
    """Delete the temp files of writes that a kill interrupted in `run_dir` (the caller holds
    its run lock, so no live writer owns them): a run that starts, resumes, or finds itself
    finished when resumed (a kill at its last write can leave a manifest's temp file)."""
    count, size = remove_temp_files(run_dir)
    count += remove_temp_files(Path(run_dir) / fingerprints.FOLDER)[0]
    if count:
        log.info("removed %d unfinished checkpoint temp file(s) (%.1f MB) left by a killed run in %s",
                 count, size / 1e6, run_dir)


class _RecordingWriter:
    """A file object for torch.save that keeps the OSError of a failed write."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data):
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self):
        try:
            self.handle.flush()
        except OSError as error:
            self.error = error
            raise


class CheckpointManager:
    """Names and orders a run's checkpoint files: last.pth (every epoch and on a stop),
    best.pth (when the monitored metric improves), epoch_<n>.pth (--keep-checkpoints),
    emergency.pth (after a crash, never over last.pth). Only the writing process (rank 0
    under DDP) touches files, and only while `guard()` does not raise (a sweep's trial
    taken over by another worker is theirs to write)."""

    def __init__(self, run_dir, keep_epochs=0, writes=True, guard=None):
        self.run_dir, self.keep_epochs, self.writes = Path(run_dir), keep_epochs, writes
        self.guard = guard or (lambda: None)
        self._writer = None  # the thread writing the last epoch end's files, if any
        self._error = None  # what stopped it
        self.fingerprints = None  # {object: fingerprints.of_object} of the last epoch end written (after wait())

    def wait(self):
        """Return once the epoch end's files are on disk; raise the error that stopped their
        write (a full disk, say) if one did. Every other save, and the end of a run, calls it."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def remove_leftovers(self):
        """Delete temp files of writes that a kill interrupted (a run starts or resumes)."""
        if self.writes:
            remove_leftovers(self.run_dir)

    def save_epoch_end(self, state, epoch, improved, weights=None, background=True, metrics=None):
        """The checkpoints of a finished epoch. best.pth is written *before* last.pth: a kill
        between the two leaves last.pth one epoch behind, and resuming redoes that epoch
        deterministically; the other order could leave a stale best.pth behind a newer last.pth.
        best.pth holds `weights()` when given (weights, config, metrics: for inference only);
        the epoch's fingerprint record keeps its `metrics` (what `reproduce` compares).

        With `background`, the files are written by a thread while the next epoch trains:
        the tensors are copied first (the live ones keep changing), which costs a memory
        copy instead of a write and an fsync of the whole state (benchmarks/checkpoint_cost.py).
        The thread is not a daemon: the process does not end before the files are whole."""
        if not self.writes:
            return
        self.wait()
        self.guard()
        best = (weights() if weights is not None else state) if improved else None
        metrics = fingerprints.plain_metrics(metrics)
        if not background:
            self._write_epoch_end(state, best, epoch, metrics)
            return
        state, best = detached_copy(state), detached_copy(best)
        self._writer = threading.Thread(target=self._write_in_background, args=(state, best, epoch, metrics),
                                        name="checkpoint-writer")
        self._writer.start()

    def _write_in_background(self, state, best, epoch, metrics):
        try:
            self._write_epoch_end(state, best, epoch, metrics)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread by wait()
            self._error = error

    def _write_epoch_end(self, state, best, epoch, metrics=None):
        # The fingerprints of the epoch's state: in its own file first (a kill before last.pth
        # has the epoch redone, which writes the same file again), then in each checkpoint.
        prints = safe_fingerprints(state)
        if prints:
            fingerprints.write(self.run_dir, prints, epoch, state.get("global_step"), metrics)
            state = dict(state, fingerprints=fingerprints.summary(prints))
        self.fingerprints = prints
        if best is not None:
            save_checkpoint(best, self.run_dir / BEST)
        save_checkpoint(state, self.run_dir / LAST)
        if self.keep_epochs > 0:
            save_checkpoint(state, self.run_dir / f"epoch_{epoch}.pth")
            numbered = sorted(self.run_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            for old in numbered[: -self.keep_epochs]:
                old.unlink()

    def save_last(self, state, background=False):
        """last.pth of a stop (at once) or of --save-every inside an epoch (`background`: by a
        thread while training goes on, after a copy of the tensors, as at an epoch end)."""
        if self.writes:
            self.wait()  # an earlier last.pth still being written must not land after this one
            self.guard()
            if background:
                self._writer = threading.Thread(target=self._write_last_in_background, args=(detached_copy(state),),
                                                name="checkpoint-writer")
                self._writer.start()
            else:
                save_checkpoint(with_fingerprints(state), self.run_dir / LAST)
        return self.run_dir / LAST

    def _write_last_in_background(self, state):
        try:
            save_checkpoint(with_fingerprints(state), self.run_dir / LAST)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread by wait()
            self._error = error

    def save_emergency(self, state):
        if self.writes:
            self.wait()
            self.guard()
            save_checkpoint(with_fingerprints(state), self.run_dir / EMERGENCY)
        return self.run_dir / EMERGENCY


def with_fingerprints(state):
    """`state` with {object: sha256} of its objects under "fingerprints" (a stop's or a
    crash's checkpoint: `reproduce --from` checks what it loads against them)."""
    prints = safe_fingerprints(state)
    return dict(state, fingerprints=fingerprints.summary(prints)) if prints else state


def safe_fingerprints(state):
    """fingerprints.of_checkpoint(state), or {} (with a warning) when an object's state
    cannot be hashed: a record is never a reason to lose the checkpoint it describes."""
    try:
        return fingerprints.of_checkpoint(state)
    except Exception as error:  # noqa: BLE001 - see above
        log.warning("could not fingerprint the state (%s: %s); the checkpoint is written without", type(error).__name__, error)
        return {}


def detached_copy(value):
    """`value` (dicts, lists, tuples of tensors and plain data) with every tensor copied to
    the CPU, so the copy no longer changes with the training that goes on."""
    import torch

    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: detached_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detached_copy(item) for item in value)
    return value


def find_for_inference(run_dir):
    """best.pth, else last.pth of a run dir; UserError naming where it looked."""
    run_dir = Path(run_dir)
    for name in (BEST, LAST):
        if (run_dir / name).exists():
            return run_dir / name
    if (run_dir / EMERGENCY).exists():
        raise UserError(f"no checkpoint in {run_dir} but {EMERGENCY}, the state saved when the run crashed; "
                        f"use it with --load-model-path={run_dir / EMERGENCY}, or resume it with "
                        f"train --resume={run_dir / EMERGENCY}")
    raise UserError(f"no checkpoint in {run_dir} (looked for {BEST}, {LAST}){run_hint(run_dir) or '; check --env and --checkpoint-dir'}")


def run_hint(run_dir, group=""):
    """'; did you mean --env=X?' (the closest run names) when `run_dir` is no run, else ''.
    `group`: the study (or other group of runs) `run_dir` would be a member of: the names
    are given as --env=<group>/<member>."""
    run_dir = Path(run_dir)
    if (run_dir / "folds.json").is_file():  # a cross-validation group (utils/cv): its members are runs
        folds = sorted(p.name for p in run_dir.glob("fold-*") if is_run(p))
        return (f"; {run_dir.name} is a cross-validation group: val / test take it whole (the folds' ensemble), other "
                f"commands one fold: --env={run_dir.name}/{folds[0] if folds else 'fold-1'}")
    if run_dir.is_dir():
        return ""

    parent = run_dir.parent
    runs = sorted(p.name for p in parent.iterdir() if is_run(p)) if parent.is_dir() else []
    if not runs:
        return f"; there are no runs in {parent}"
    near = close_matches(run_dir.name, runs)
    if near and group:
        return "; did you mean " + " or ".join(f"--env={group}/{name}" for name in near) + "?"
    if near:
        return "; did you mean " + " or ".join(f"--env={name}" for name in near) + f"? (`{main_command()} runs` lists them)"
    if group:
        return f"; {group} holds {plural(len(runs), 'other run')}: {', '.join(f'--env={group}/{name}' for name in runs[:3])}" \
               f"{' ...' if len(runs) > 3 else ''}"
    return f"; {parent} holds {plural(len(runs), 'other run')}: `{main_command()} runs{'' if str(parent) == 'checkpoints' else ' --checkpoint-dir=' + str(parent)}` lists them"


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
    if path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is a folder; give a .pth file in it (best.pth, last.pth)")
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} not found")
    kind = _file_kind(path)
    if kind != "torch":
        raise UserError(f"{str(path)!r} is not a checkpoint ({kind}); give a .pth file written by torch.save, "
                        f"e.g. <run dir>/best.pth")
    try:
        with warnings.catch_warnings():  # torch warns about weights_only on legacy files; we say it once, below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses arbitrary objects; we never retry with weights_only=False on a
        # file we did not write, because unpickling can run any code.
        raise UserError(
            f"checkpoint {str(path)!r} holds Python objects that need unsafe unpickling; refused, since that "
            f"could run any code ({_unsafe_name(error)}). Re-save only tensors/plain data"
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


def _unsafe_name(error):
    """What torch's weights_only loader refused, in its own words (e.g. 'Unsupported global:
    GLOBAL builtins.OSError'), without its paragraph of advice."""
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(error))
    return f"torch's safe loader: {found.group(1).strip()}" if found else "torch's safe loader refused it"


def _file_kind(path):
    """"torch" for a file torch.save may have written (a zip archive, or a legacy or plain
    pickle), else what it is instead."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip format; pickle protocol 2+
        return "torch"
    return f"it starts with bytes {head.hex()}, not a torch file or a pickle"


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
