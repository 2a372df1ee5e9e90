"""Resume: find the checkpoint, merge its config with the flags allowed to change, and put
every piece of state back (weights, optimizer, lr policy, scaler, counters, RNG, meters)."""
import logging
from pathlib import Path

import configs
from configs.loader import flag, validate
from configs.schema import FIELDS, Config
from utils import checkpoint, seeding
from utils.errors import UsageError

log = logging.getLogger(__name__)

# Flags that may differ when resuming: they change how the run is executed or reported,
# not what it computes. Everything else (model, data, seed, lr, batch size...) is fixed by
# the checkpoint's saved config, which is authoritative.
MAY_CHANGE = {
    "config", "env", "checkpoint_dir", "resume", "max_epoch", "num_workers", "print_freq", "debug_file",
    "device", "use_gpu", "progress", "visualizer", "pdb_on_error", "pin_memory", "keep_checkpoints",
    "result_file", "clip", "tta", "load_model_path",
}


def checkpoint_path(cfg):
    """The file --resume points at: <run dir>/last.pth for the bare flag, else the path."""
    if cfg.resume != "last":
        return Path(cfg.resume)
    if not cfg.env:
        raise UsageError("--resume needs --env=<run name> (a folder under --checkpoint-dir), or --resume=<path to last.pth>")
    return cfg.run_dir / "last.pth"


def load_resume_state(cfg):
    """None for a fresh run; else {"state": checkpoint dict, "config": merged Config}."""
    if not cfg.resume:
        return None
    path = checkpoint_path(cfg)
    if not path.is_file():
        raise UsageError(f"nothing to resume: {path} does not exist (is --env or --checkpoint-dir right?)")
    state = checkpoint.load_checkpoint(path)
    saved = state.get("config")
    if not isinstance(saved, dict) or "epoch" not in state:
        raise UsageError(f"{path} holds weights only (no run state); start a new run with --load-model-path={path}")
    changed = configs.changed_options(cfg)
    for key, value in changed.items():
        if key not in MAY_CHANGE and value != saved.get(key):
            raise UsageError(
                f"{flag(key)}={value!r} would change the resumed run (it has {saved.get(key)!r}); only "
                f"{', '.join(flag(k) for k in sorted(MAY_CHANGE - {'config', 'resume'}))} may change on --resume"
            )
    unknown = sorted(set(saved) - set(FIELDS))
    if unknown:
        log.warning("checkpoint config has options this runner no longer knows, ignored: %s", ", ".join(unknown))
    merged = {key: value for key, value in saved.items() if key in FIELDS}
    merged.update({key: value for key, value in changed.items() if key in MAY_CHANGE})
    # The run dir of a resumed run is the folder that holds the checkpoint.
    merged.update(resume=cfg.resume, env=path.parent.name, checkpoint_dir=str(path.parent.parent))
    merged_cfg = validate(Config(**merged))
    log.info("resuming %s: epoch %d, step %d of the next epoch", path, state["epoch"], state.get("step_in_epoch", 0))
    return {"state": state, "config": merged_cfg}


def restore(state, model, optimizer, policy, scaler, progress):
    """Put a checkpoint's state back into live objects (in place)."""
    checkpoint.load_weights(model, state["model"], source="resume checkpoint")
    optimizer.load_state_dict(state["optimizer"])
    policy.load_state_dict(state["lr_policy"])
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    for key in ("epoch", "step_in_epoch", "global_step", "best", "partial"):
        progress[key] = state.get(key)
    progress["loss_window"] = list(state.get("loss_window", []))
    seeding.set_rng_states(state["rng"])


def keep_epoch_file(cfg, run_dir, state, epoch):
    """--keep-checkpoints=k: also keep epoch_<n>.pth for the last k epochs."""
    if cfg.keep_checkpoints <= 0:
        return
    checkpoint.save_checkpoint(state, run_dir / f"epoch_{epoch}.pth")
    for old in sorted(run_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))[: -cfg.keep_checkpoints]:
        old.unlink()
