"""Resume: find the checkpoint and merge its config with the flags allowed to change.

The saved config is authoritative: only options whose schema role is `execution` or
`invocation` (configs/schema.py) may differ on --resume; they change how the run executes
or reports, not what it computes. Putting the state back is the engine's job.

--resume=auto is the one command for every start and restart of a run (torchrun
--max-restarts, SLURM --requeue, a Kubernetes restart policy run the same command line
again): `decide` turns it into a fresh run when the run dir holds none, or the newest
complete checkpoint to resume; rank 0 looks, every rank takes its answer.
"""
import dataclasses
import logging
import math
import re
from pathlib import Path

import configs
from configs.loader import validate
from configs.values import flag, same_value
from configs.schema import all_fields, config_class, fields_of, with_role
from data import image_cache
from utils.core.errors import UsageError, UserError, plural
from utils.core.records import Damaged
from utils.engine import checkpoint, distributed, elastic, fingerprints, manifest, runtime, status

log = logging.getLogger(__name__)
AUTO = "auto"
LAYOUT_OPTIONS = ("batch_size", "accumulate")  # with the world size, the global batch


def checkpoint_path(cfg):
    """The file --resume points at: <run dir>/last.pth for the bare flag, else the path."""
    if cfg.resume not in ("last", AUTO):
        return Path(cfg.resume)
    if not cfg.env:
        raise UsageError(f"--resume{'=auto' if cfg.resume == AUTO else ''} needs --env=<run name> (a folder under "
                         f"--checkpoint-dir){'' if cfg.resume == AUTO else ', or --resume=<path to last.pth>'}")
    return cfg.run_dir / checkpoint.LAST


def run_dir_of(cfg):
    """The run dir `train` writes: the folder of the checkpoint it resumes, else --env's."""
    return checkpoint_path(cfg).parent if cfg.resume else cfg.run_dir


def decide(cfg):
    """cfg with --resume=auto resolved, the same on every rank (rank 0 looks at the run dir):
    "" for a fresh run (the run dir holds no run), "last" for its last.pth (or for its
    config.yaml alone: a run killed before its first checkpoint starts again), or the path of
    the newest readable epoch_<n>.pth when last.pth is unreadable. Other values pass."""
    if cfg.resume != AUTO:
        return cfg
    checkpoint_path(cfg)  # --env is required
    choice = distributed.broadcast_object(distributed.on_main(lambda: _choose(cfg.run_dir)))
    return dataclasses.replace(cfg, resume=choice)


def _choose(run_dir):
    last = run_dir / checkpoint.LAST
    if last.is_file():
        problem = _unreadable(last)
        if problem is None:
            return "last"
    else:  # missing (deleted?) or not a file: an epoch_<n>.pth the run kept goes on, else load_resume_state decides
        problem = "a folder" if last.exists() else "missing"
    numbered = sorted(run_dir.glob("epoch_*.pth"), key=_epoch_number, reverse=True)
    for path in numbered:
        if _unreadable(path) is None:
            log.warning("%s is %s (%s); resuming from %s, the newest complete checkpoint", last,
                        "unreadable" if last.is_file() else problem, problem, path.name)
            return str(path)
    if not last.is_file():
        return "last" if (run_dir / "config.yaml").is_file() else ""
    raise UserError(f"cannot resume {run_dir}: {last} is unreadable ({problem}) and no other checkpoint of the run is "
                    f"complete; train it anew under another --env, or move the run dir away")


def _epoch_number(path):
    found = re.fullmatch(r"epoch_(\d+)\.pth", path.name)
    return int(found.group(1)) if found else -1


def _unreadable(path):
    """None when `path` is a whole checkpoint, else why not. torch.load memory-maps it: the
    archive's index (at its end) is read and checked, its tensors are not."""
    state = _mapped(path)
    return state.get("unreadable") or (None if "epoch" in state else "not a run's checkpoint")


def _mapped(path):
    """The checkpoint at `path` memory-mapped (its tensors are not read), or {"unreadable":
    why} when it does not load as a dict."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any failure to load is the answer
        return {"unreadable": (str(error).strip().splitlines() or [type(error).__name__])[0][:200]}
    return state if isinstance(state, dict) else {"unreadable": "not a run's checkpoint"}


def load_resume_state(cfg):
    """None for a fresh run; else {"state": checkpoint dict, or None to restart a run that
    stopped before its first last.pth, "config": merged Config}."""
    if not cfg.resume:
        return None
    path = checkpoint_path(cfg)
    saved_config = path.parent / "config.yaml"
    if path.exists() and not path.is_file():
        raise UserError(f"cannot resume run {path.parent.name}: {path} is a folder, not a checkpoint; move it away, "
                        f"then run this again")
    if not path.is_file() and cfg.resume == "last":
        distributed.on_main(lambda: refuse_retrain(path.parent, cfg))
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
        distributed.on_main(lambda: check_files(path, state, cfg))
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
    # The per-process batch of a run that went on under another number of processes was
    # fitted to keep its global batch: the command that launched it names the launch's.
    layout = elastic.layout_of(state, saved) if state is not None else None
    launch = dict(saved, **{key: layout[key] for key in LAYOUT_OPTIONS}) if layout else saved
    world_changes = layout is not None and layout["world"] != distributed.world_size()
    if world_changes:
        may_change |= set(LAYOUT_OPTIONS)  # they choose another global batch
    conflicts = [(key, value) for key, value in changed.items()
                 if key not in may_change and not same_value(key, value, launch.get(key), experiment)]
    if conflicts:
        allowed = ", ".join(flag(k) for k in with_role("execution", experiment=experiment))
        if len(conflicts) == 1:
            key, value = conflicts[0]
            said = f"{flag(key)}={value!r} would change the resumed run (it has {saved.get(key)!r})"
        else:
            said = ", ".join(f"{flag(key)}={value!r} (it has {saved.get(key)!r})" for key, value in conflicts)
            said += " would change the resumed run"
        raise UsageError(f"{said}; only {allowed} may change on --resume")
    fields = fields_of(experiment)
    # Checkpoints from before experiments declared their own options hold every experiment's:
    # another experiment's option is dropped without a word.
    unknown = sorted(key for key in saved if key not in fields and key not in all_fields())
    if unknown:
        log.warning("checkpoint config has options this runner no longer knows, ignored: %s", ", ".join(unknown))
    merged = {key: value for key, value in saved.items() if key in fields}
    merged.update({key: value for key, value in changed.items() if key in may_change})
    merged["cache"] = image_cache.resume_choice(merged, ((state or {}).get("info") or {}).get("image_cache"), changed)
    # The run dir of a resumed run is the folder that holds the checkpoint.
    merged.update(resume=cfg.resume, env=path.parent.name, checkpoint_dir=str(path.parent.parent))
    if layout is not None:
        given = {key: changed[key] for key in LAYOUT_OPTIONS if key in changed and changed[key] != layout[key]}
        batch, steps, state["layout"], note = elastic.fit_global_batch(layout, distributed.world_size(), **given)
        merged.update(batch_size=batch, accumulate=steps)
        if note and distributed.is_main():
            log.warning("resuming a run launched with %s under %s: %s; the epoch's image order continues where it "
                        "stopped (image %d), and the run is no longer bit-identical to one that never changed (the "
                        "sums are split differently)", plural(layout["world"], "process", "processes"),
                        plural(distributed.world_size(), "process", "processes"), note, state.get("samples_in_epoch", 0))
    merged_cfg = validate(config_class(experiment)(**merged))
    if state is not None and state["epoch"] < merged_cfg.max_epoch:
        step = state.get("step_in_epoch", 0)
        epoch = f"epoch {state['epoch'] + 1} of {merged_cfg.max_epoch}"
        where = f"in {epoch}: steps 1-{step} were done, it goes on with step {step + 1}" if step else f"at the start of {epoch}"
        log.info("resuming %s %s", path, where)
    return {"state": state, "config": merged_cfg}


def trained_before(run_dir):
    """What says that the run in `run_dir` trained beyond what a restart from its config
    would redo (a kill in its first epoch, after best.pth and before last.pth, is redone), or
    None: an epoch_<n>.pth or emergency.pth kept, status.json saying the run finished or
    stopped (both written once last.pth is) or counting 2 epochs done (epoch 2's files are
    written after epoch 1's last.pth: status.json counts an epoch as soon as its files are
    being written), a best.pth of epoch 2 or later (or one that cannot be read)."""
    kept = sorted(run_dir.glob("epoch_*.pth"), key=_epoch_number)
    if kept:
        return f"it kept {kept[-1].name} (resume from it: --resume={kept[-1]})"
    if (run_dir / checkpoint.EMERGENCY).is_file():
        return f"it holds {checkpoint.EMERGENCY} (resume from it: --resume={run_dir / checkpoint.EMERGENCY})"
    try:
        record = status.read(run_dir) or {}
    except Damaged:
        record = {}
    done, ended = record.get("epoch") or 0, record.get("status")
    if ended in ("finished", "pruned", "stopped") and done:  # (a stop in epoch 1 without last.pth: nothing is lost)
        return f"its status.json says it {ended} after {plural(done, 'epoch')}"
    if done > 1:
        return f"its status.json counts {plural(done, 'epoch')} done"
    best = run_dir / checkpoint.BEST
    if best.exists():
        epoch = _mapped(best).get("epoch")
        if not isinstance(epoch, int) or epoch > 1:
            return f"its best.pth is of epoch {epoch}" if isinstance(epoch, int) else "it holds a best.pth"
    return None


def refuse_retrain(run_dir, cfg):
    """UserError when resuming the run in `run_dir`, which has no last.pth, would train it
    from scratch over what it trained (a finished run whose last.pth was deleted): its
    best.pth is never replaced by a retrain nobody asked for."""
    found = trained_before(run_dir)
    if found is None:
        return
    config, best = run_dir / "config.yaml", run_dir / checkpoint.BEST
    given = [f"--config={config}" if config.is_file() else "", f"--load-model-path={best}" if best.is_file() else ""]
    what = " and ".join(word for word, option in zip(("config", "weights"), given) if option) or "options"
    raise UserError(f"cannot resume run {run_dir.name}: its {checkpoint.LAST} is missing (deleted?), yet {found}; "
                    f"resuming would train it again from scratch over its files. Train a new run from its {what}: "
                    f"{runtime.main_command()} train {' '.join(option for option in given if option)} --env=<new name>")


def check_files(path, state, cfg):
    """Before a resume writes anything: the checkpoint's tensors still match the fingerprints
    written into it (else a refusal, or with --accept-altered-checkpoint a warning), and the
    run's manifest files, which the resume extends, are whole."""
    recorded = state.get("fingerprints")
    if isinstance(recorded, dict) and recorded:
        now = fingerprints.summary(fingerprints.of_checkpoint(state))
        changed = [name for name in recorded if now.get(name) != recorded[name]]
        if changed:
            said = (f"{path} does not match the fingerprints written into it: {', '.join(changed)} changed after the "
                    f"run saved it")
            if not cfg.accept_altered_checkpoint:
                raise UserError(f"{said}; restore the file, resume from another checkpoint (--resume=<epoch_<n>.pth>), "
                                f"or go on from it anyway with --accept-altered-checkpoint")
            log.warning("%s; resuming from it anyway (--accept-altered-checkpoint)", said)
    run_dir = path.parent
    for name, read in ((manifest.NAME, manifest.read), (manifest.FILES, manifest.read_files)):
        aside = f"; move it aside (mv {run_dir / name} {run_dir / name}.damaged) and the resume begins it anew"
        read(run_dir, fix=aside)


def finished(cfg, saved, auto=False):
    """The one line that says the resumed run `saved` (its checkpoint) has nothing left to
    train under cfg (its --max-epoch and --patience may have changed), or None. `auto`
    (--resume=auto) words it as the answer to a restart: `already finished ...`."""
    if saved.get("pruned"):
        reason, sep = f"its sweep's pruner ended it ({saved['pruned']})", "; "
        hint = (f"Train its weights on in a new run: {runtime.main_command()} train --config={cfg.run_dir / 'config.yaml'} "
                f"--load-model-path={cfg.run_dir / checkpoint.LAST} --env=<new name>")
    elif saved["epoch"] >= cfg.max_epoch:
        reason, sep = f"{saved['epoch']} of --max-epoch={cfg.max_epoch} epochs done", ", "
        hint = f"Train it further: {runtime.further_command(cfg, saved['epoch'])}"
    elif saved.get("stopped_early") and patience_over(cfg, saved["epoch"], saved["best"]):
        reason, sep = saved["stopped_early"], "; "
        larger = saved["epoch"] - saved["best"]["epoch"] + 1 if saved["best"] else 0
        hint = f"Train on with a larger --patience (0 = off): {runtime.resume_command(cfg)} --patience={larger}"
    else:
        return None
    if auto:
        return f"already finished: run {cfg.env}, {reason}; nothing trained. {hint}"
    return f"run {cfg.env} has finished: {reason}{sep}nothing to resume. {hint}"


def patience_over(cfg, epochs_done, best):
    """Whether --patience ends the run after `epochs_done` epochs, given the best so far."""
    return bool(cfg.patience) and epochs_done - (best["epoch"] if best else 0) >= cfg.patience


def describe_early_stop(cfg, epochs_done, best):
    where = f"stopped early at epoch {epochs_done}"
    if not best:
        return f"{where}: no finite {cfg.monitor} in {plural(cfg.patience, 'epoch')} (--patience)"
    return (f"{where}: {cfg.monitor} has not improved for {plural(epochs_done - best['epoch'], 'epoch')} "
            f"(--patience={cfg.patience}; best {best['value']:.4f} at epoch {best['epoch']})")


def is_improvement(monitors, monitor, metrics, best):
    if not monitors or metrics is None or math.isnan(metrics[monitor]):
        return False
    better = min if monitors[monitor] == "min" else max
    return best is None or better(metrics[monitor], best["value"]) != best["value"]
