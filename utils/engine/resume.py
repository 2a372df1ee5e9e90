"""Resume: find the checkpoint and merge its config with the flags allowed to change.

The saved config is authoritative: only options whose schema role is `execution` or
`invocation` (configs/schema.py) may differ on --resume; they change how the run executes
or reports, not what it computes. Putting the state back is the engine's job.
"""
import logging
from pathlib import Path

import configs
from configs.loader import validate
from configs.values import flag
from configs.schema import all_fields, config_class, fields_of, with_role
from utils.core.errors import UsageError, UserError
from utils.engine import checkpoint

log = logging.getLogger(__name__)


def checkpoint_path(cfg):
    """The file --resume points at: <run dir>/last.pth for the bare flag, else the path."""
    if cfg.resume != "last":
        return Path(cfg.resume)
    if not cfg.env:
        raise UsageError("--resume needs --env=<run name> (a folder under --checkpoint-dir), or --resume=<path to last.pth>")
    return cfg.run_dir / checkpoint.LAST


def load_resume_state(cfg):
    """None for a fresh run; else {"state": checkpoint dict, or None to restart a run that
    stopped before its first last.pth, "config": merged Config}."""
    if not cfg.resume:
        return None
    path = checkpoint_path(cfg)
    saved_config = path.parent / "config.yaml"
    if not path.is_file() and cfg.resume == "last" and saved_config.is_file():
        # Killed during its first epoch (perhaps after best.pth, which is written before
        # last.pth): no state to continue, so run it again from the start with its own config.
        log.info("no %s in %s yet (the run stopped in its first epoch): restarting it from its config.yaml",
                 checkpoint.LAST, path.parent)
        state, saved = None, configs.as_dict(configs.load_config({"config": str(saved_config)}))
    elif not path.is_file():
        hint = checkpoint.run_hint(path.parent) if cfg.resume == "last" else ""
        # exit 1, as for every missing checkpoint (val / test of an unknown --env, --load-model-path)
        raise UserError(f"nothing to resume: {path} does not exist{hint or ' (is --env or --checkpoint-dir right?)'}")
    else:
        state = checkpoint.load_checkpoint(path)
        saved = state.get("config")
        if not isinstance(saved, dict) or "epoch" not in state or state.get("kind") == checkpoint.WEIGHTS_KIND:
            hint = f" (resume {path.parent / checkpoint.LAST})" if path.name == checkpoint.BEST else ""
            raise UsageError(f"{path} holds weights only (no run state){hint}; or start a new run from them with "
                             f"--load-model-path={path}")
        if state.get("format_version", 1) < checkpoint.FORMAT_VERSION:
            raise UsageError(f"{path} was written by an earlier runner (checkpoint format {state.get('format_version', 1)}) "
                             f"and cannot be resumed; start a new run from its weights with --load-model-path={path}")
    experiment = saved.get("experiment", cfg.experiment)
    may_change = set(with_role("execution", "invocation", experiment=experiment))
    changed = configs.changed_options(cfg)
    for key, value in changed.items():
        if key not in may_change and value != saved.get(key):
            allowed = ", ".join(flag(k) for k in with_role("execution", experiment=experiment))
            raise UsageError(f"{flag(key)}={value!r} would change the resumed run (it has {saved.get(key)!r}); "
                             f"only {allowed} may change on --resume")
    fields = fields_of(experiment)
    # Checkpoints from before experiments declared their own options hold every experiment's:
    # another experiment's option is dropped without a word.
    unknown = sorted(key for key in saved if key not in fields and key not in all_fields())
    if unknown:
        log.warning("checkpoint config has options this runner no longer knows, ignored: %s", ", ".join(unknown))
    merged = {key: value for key, value in saved.items() if key in fields}
    merged.update({key: value for key, value in changed.items() if key in may_change})
    # The run dir of a resumed run is the folder that holds the checkpoint.
    merged.update(resume=cfg.resume, env=path.parent.name, checkpoint_dir=str(path.parent.parent))
    merged_cfg = validate(config_class(experiment)(**merged))
    if state is not None and state["epoch"] < merged_cfg.max_epoch:
        step = state.get("step_in_epoch", 0)
        where = f", from its step {step + 1} ({step} done)" if step else ", from its start"
        log.info("resuming %s: epoch %d/%d%s", path, state["epoch"] + 1, merged_cfg.max_epoch, where)
    return {"state": state, "config": merged_cfg}
