"""`train --folds=K --env=<group>`: a cross-validation group of K ordinary runs
<checkpoint-dir>/<group>/fold-<k>/, each trained by the engine on the other folds and
validated on its own, then the out-of-fold report (utils/cv/oof.py).

The group folder holds what belongs to the group: group.yaml (the options every fold is
trained with: the config a later --resume=auto or --fold=k reads, so missing folds start as
the first ones did), folds.json (the split, utils/cv/split.py), and, once every fold has
finished, oof.csv and cv.json. Both records are written once, linked into place, and
checked by every later start. --fold=k trains one fold, so folds run in parallel on
machines sharing the folder; each fold run has its own lock (utils/engine/run_lock.py): two
processes cannot train one fold. --resume / --resume=auto on the group leaves finished
folds as they are, resumes an interrupted one bit for bit and starts missing ones.
"""
import dataclasses
import logging
import os
import shutil
from pathlib import Path

import configs
from configs.loader import load_config
from configs.schema import fields_of
from utils.core.errors import UsageError, UserError, plural
from utils.core.io import atomic_open
from utils.core.records import Damaged
from utils.core.registry import EXPERIMENTS
from utils.core.shell import main_command
from utils.cv import is_group, oof, split
from utils.engine import distributed, resume as resumes, runtime, status as run_status
from utils.loggers import sweeps

log = logging.getLogger(__name__)
GROUP_CONFIG = "group.yaml"
# options a fold may differ in from the group's without computing anything else
UNCOMPARED = {"env", "checkpoint_dir", "fold", "resume", "config"}
COMPARED_EXECUTION = {"max_epoch", "patience"}  # execution options that change what a fold computes


def fold_dir(group_dir, k):
    return Path(group_dir) / f"fold-{k}"


def compared(experiment):
    """Names of the options every fold of a group must share."""
    return [name for name, f in fields_of(experiment).items() if name not in UNCOMPARED and (
        f.metadata["role"] not in ("execution", "invocation") or name in COMPARED_EXECUTION)]


def differing(cfg, saved):
    """'--lr=0.01 (group: 0.001), ...' for the options of `cfg` whose value differs from the
    plain dict `saved` (the group's config); '' when none does. Options one of them leaves to
    the data (None: --num-classes, --image-size) are not compared."""
    found = []
    for name in compared(cfg.experiment):
        mine, theirs = getattr(cfg, name, None), saved.get(name)
        if mine is None or theirs is None or (name in ("train_data_root", "test_data_root") and mine and theirs
                            and os.path.abspath(str(mine)) == os.path.abspath(str(theirs))):
            continue
        if str(mine) != str(theirs):
            found.append(f"--{name.replace('_', '-')}={mine} (the group's: {theirs})")
    return ", ".join(found)


def resume_command(cfg, k=None):
    fold = f" --fold={k}" if k is not None else ""
    return f"{main_command()} train --env={cfg.env}{runtime.checkpoint_dir_flag(cfg)}{fold} --resume=auto"


def group_config(cfg, flags, group_dir):
    """The config the group's folds train with: for a group that exists, its group.yaml under
    the flags given now (refused, naming them, where they change what a fold computes)."""
    saved_path = Path(group_dir) / GROUP_CONFIG
    if not saved_path.is_file():
        return cfg
    given = {key: value for key, value in flags.items() if str(key).replace("-", "_") != "config"}
    merged = load_config({**given, "config": str(saved_path)})
    saved = configs.as_dict(load_config({"config": str(saved_path)}))
    problem = differing(merged, saved)
    if problem:
        raise UsageError(f"group {cfg.env} trains its folds with other options: {problem}; drop them, or train a new "
                         f"group under another --env")
    return dataclasses.replace(merged, env=cfg.env, checkpoint_dir=cfg.checkpoint_dir, resume=cfg.resume, fold=cfg.fold)


def write_once(path, text):
    """Write `path` unless it exists (linked into place: one of two racing writers wins)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.new")
    with atomic_open(temp, "w", encoding="utf-8") as handle:
        handle.write(text)
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)


def check_group_folder(cfg, group_dir):
    if not cfg.env:
        raise UsageError("--folds trains a group of runs <env>/fold-<k>: give --env=<group name>")
    if "/" in cfg.env:
        raise UsageError(f"--env={cfg.env} names a run of a group; --folds takes the group's name (--env=<group>), and "
                         f"--fold=k picks its fold")
    if any((Path(group_dir) / name).exists() for name in ("config.yaml", "last.pth", runtime.STUDY_RECORD)):
        raise UsageError(f"{group_dir} holds a run or a sweep, not a cross-validation group; give another --env")
    if cfg.resume not in ("", "last", resumes.AUTO):
        raise UsageError("--resume on a group is the bare flag or --resume=auto (each fold resumes from its own "
                         "last.pth)")


def prepare(cfg, flags):
    """(the group's config, its folder, the folds this command trains), with group.yaml and
    folds.json written or checked; nothing is trained and no fold touched. Under torchrun
    rank 0 looks and writes, and every rank takes its answer."""
    group_dir = Path(cfg.checkpoint_dir) / (cfg.env or "")
    cfg = distributed.broadcast_object(distributed.on_main(lambda: _prepare(cfg, flags, group_dir)))
    folds = [cfg.fold] if cfg.fold is not None else list(range(1, cfg.folds + 1))
    return cfg, group_dir, folds


def _prepare(cfg, flags, group_dir):
    check_group_folder(cfg, group_dir)
    exists = is_group(group_dir)
    if exists and not cfg.resume and cfg.fold is None:
        count = fold_count(group_dir, cfg)
        done = sum(finished(fold_dir(group_dir, k)) for k in range(1, count + 1))
        raise UsageError(f"{group_dir} already holds a cross-validation group ({done} of {count} folds finished); go "
                         f"on with `{resume_command(cfg)}`, or start a new group with another --env")
    if not exists and not cfg.folds:
        raise UsageError(f"{group_dir} holds no cross-validation group; start one with --folds=K")
    cfg = group_config(cfg, flags, group_dir)
    absolute = runtime.absolute_data(cfg)
    computed = split.compute(absolute)  # bad data or --folds: before any folder is made
    runtime.check_output_dir(group_dir, "--checkpoint-dir")
    group_dir.mkdir(parents=True, exist_ok=True)
    split.record(absolute, group_dir, computed)
    write_once(group_dir / GROUP_CONFIG, configs.dump_yaml(dataclasses.replace(absolute, env=cfg.env, fold=None,
                                                                                resume="")))
    cfg = group_config(cfg, flags, group_dir)  # a process that lost the race to write it: its options checked too
    for k in range(1, cfg.folds + 1):  # a fold trained by another command with other options
        problem = fold_problem(cfg, fold_dir(group_dir, k))
        if problem:
            raise UsageError(f"fold {k} of group {cfg.env} {problem}; train a new group under another --env")
    return cfg


def fold_problem(cfg, folder):
    """What sets the fold in `folder` apart from the group's options, or ''."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return ""
    try:
        fold = load_config({"config": str(path)})
    except UsageError as error:
        return f"has a config.yaml that does not load ({error})"
    problem = differing(fold, configs.as_dict(cfg))
    return f"was trained with other options: {problem}" if problem else ""


def fold_count(group_dir, cfg):
    """K of the group: its split's, else --folds."""
    try:
        record = split.read(group_dir)
    except Damaged:
        record = None
    return (record or {}).get("options", {}).get("folds") or cfg.folds


def agreed(look):
    """look() on rank 0, the same answer on every rank (which then run the same collectives)."""
    return distributed.broadcast_object(distributed.on_main(look))


def finished(folder):
    """Whether the run in `folder` has finished (its epochs, or stopped early)."""
    try:
        return (run_status.read(folder) or {}).get("status") == "finished"
    except Damaged:
        return False


class FoldHooks:
    """What the engine calls back during one fold (see engine.train's `trial`): the group's
    resume command for a stop, the trackers' nesting, and an outer sweep trial's hooks."""

    def __init__(self, cfg, outer=None, tracking=None):
        self.resume_command = getattr(outer, "resume_command", None) or resume_command(cfg, cfg.fold)
        self.tracking = tracking if tracking is not None else getattr(outer, "tracking", None)
        for name in ("check_owner", "stale_after", "config_source"):
            if hasattr(outer, name):
                setattr(self, name, getattr(outer, name))

    def epoch_end(self, epoch, metrics):
        return None  # a sweep prunes a group between folds (fold_end), not inside one


def trackers(cfg, group_dir, trial):
    """(options every fold gets, the trackers' nesting of fold k, the parent runs): MLflow
    keeps the folds under a parent run of the group, in the store of --checkpoint-dir (not the
    group's folder); W&B groups them by the group's name. A sweep's trial passes its own on."""
    if trial is not None:
        return {}, lambda k: getattr(trial, "tracking", None), {}
    if not {"mlflow", "wandb"} & set(str(cfg.loggers).split(",")):
        return {}, lambda k: None, {}
    options = sweeps.trial_options(cfg)
    parents = distributed.on_main(lambda: sweeps.open_study(group_dir, cfg, cfg.env)) or {}
    return options, lambda k: {"study": cfg.env, "number": k, "params": {"fold": k}, "parents": parents}, parents


def train(cfg, flags, given=(), trial=None):
    """Train the folds this command names and, once all have finished, the group's report.
    Returns {"group_dir", "summary" (cv.json's, or None while folds are missing), "pruned"}."""
    created = not is_group(Path(cfg.checkpoint_dir) / (cfg.env or ""))  # used on rank 0
    cfg, group_dir, folds = prepare(cfg, flags)
    try:
        return _train_folds(cfg, group_dir, folds, given, trial)
    except BaseException:
        # a new group none of whose folds got a run dir (bad input found by the first fold's
        # data checks, a stop before it): nothing is left behind, as for a run
        if created and distributed.is_main() and not any(group_dir.glob("fold-*")):
            shutil.rmtree(group_dir, ignore_errors=True)
        raise


def _train_folds(cfg, group_dir, folds, given, trial):
    from utils.engine import loop as engine  # torch

    options, nesting, parents = trackers(cfg, group_dir, trial)
    for k in folds:
        folder = fold_dir(group_dir, k)
        fold_cfg = dataclasses.replace(cfg, checkpoint_dir=str(group_dir), env=f"fold-{k}", fold=k,
                                       resume=resumes.AUTO if cfg.resume else "", **options)
        if cfg.resume and finished(folder) and distributed.is_main():
            print(f"fold {k}: finished, left as it is")
        engine.train(fold_cfg, trial=FoldHooks(cfg, trial, nesting(k)), given=given)
        if agreed(lambda: finished(folder)):  # rank 0 has written the fold's status by now
            write_fold_predictions(fold_cfg, folder, k)
        verdict = trial.fold_end(k, running_value(cfg, group_dir)) if hasattr(trial, "fold_end") else None
        if verdict:
            return {"group_dir": group_dir, "summary": None, "pruned": verdict}
    summary = conclude(cfg, group_dir)
    if summary is not None and trial is None and distributed.is_main():
        where, run = runtime.checkpoint_dir_flag(cfg), f"{main_command()}"
        print(f"next:\n  {run} test --env={cfg.env}{where}   # one submission: the mean of the folds' probabilities\n"
              f"  {run} val --env={cfg.env}{where} --tta=flip   # the cv report with test-time augmentation\n"
              f"  {run} test --env={cfg.env}/fold-1{where}   # one fold alone, as any run")
    if parents and distributed.is_main():
        sweeps.end_group(parents, cfg, summary)
    return {"group_dir": group_dir, "summary": summary, "pruned": None}


def running_value(cfg, group_dir):
    """The mean of the monitored metric over the folds finished so far (a sweep prunes on it),
    or None before the first."""
    values = []
    for k in range(1, fold_count(group_dir, cfg) + 1):
        try:
            best = (run_status.read(fold_dir(group_dir, k)) or {}).get("best") if finished(fold_dir(group_dir, k)) \
                else None
        except Damaged:
            best = None
        if best and isinstance(best.get("value"), (int, float)):
            values.append(best["value"])
    return sum(values) / len(values) if values else None


def objective(summary):
    """{"metric", "value"} a sweep ranks a group by: its OOF metric, else the folds' mean."""
    name = summary["metric"]
    oof = summary.get("oof") or {}
    return {"metric": name, "value": oof[name] if isinstance(oof.get(name), (int, float)) else summary["mean"]}


def write_fold_predictions(fold_cfg, folder, k, tta=None):
    """fold-<k>/oof[-views].csv, unless it is newer than the checkpoint it predicts with."""
    tta = getattr(fold_cfg, "tta", "") if tta is None else tta
    experiment = EXPERIMENTS.get(fold_cfg.experiment)
    if not hasattr(experiment, "held_out"):
        return
    path = oof.fold_file(folder, tta)
    weights = [folder / name for name in ("best.pth", "last.pth") if (folder / name).is_file()]
    if agreed(lambda: path.is_file() and weights and path.stat().st_mtime >= weights[0].stat().st_mtime):
        return
    fold_cfg = dataclasses.replace(fold_cfg, resume="", load_model_path=None, tta=tta)
    predicted = experiment(fold_cfg).held_out()
    if distributed.is_main():
        oof.write_fold(folder, k, predicted, tta)


def conclude(cfg, group_dir, tta=None, write=True):
    """The group's report when every fold has finished (printed, and written as oof.csv
    and cv.json), else a line saying which folds are missing; returns the report or None."""
    tta = getattr(cfg, "tta", "") if tta is None else tta
    folds = fold_count(group_dir, cfg)
    summary = oof.report(group_dir, folds, tta, cfg.monitor or "")
    if not distributed.is_main():
        return summary
    if summary is None:
        missing = [k for k in range(1, folds + 1) if not finished(fold_dir(group_dir, k))]
        if not missing:  # every fold finished, one's predictions file gone (removed by hand)
            lost = [k for k in range(1, folds + 1) if not oof.fold_file(fold_dir(group_dir, k), tta).is_file()]
            print(f"group {cfg.env}: every fold has finished but fold {', '.join(map(str, lost))} has no "
                  f"{oof.fold_file('', tta).name}; `{resume_command(cfg)}` writes it and the cv report")
            return None
        shown = ", ".join(map(str, missing))
        print(f"group {cfg.env}: {folds - len(missing)} of {folds} folds finished (waiting for fold {shown}); "
              f"the cv report is written when the last one finishes: {resume_command(cfg)}")
        return None
    if write:
        oof.write_group(group_dir, summary)
    print("\n".join(oof.lines(summary)))
    print(f"{'oof predictions and ' if summary['oof'] else ''}cv report in {group_dir}")
    return summary


def check_complete(cfg, group_dir, partial):
    """The folds val / test --env=<group> use: every one, finished; or with --partial the
    finished ones (said in the log). A fold missing or unfinished is one line otherwise."""
    folds = fold_count(group_dir, cfg)
    done = [k for k in range(1, folds + 1) if finished(fold_dir(group_dir, k))]
    missing = [k for k in range(1, folds + 1) if k not in done]
    if missing and not partial:
        deleted = [k for k in missing if not fold_dir(group_dir, k).exists()]
        what = (f"fold {', '.join(map(str, deleted))} {'is' if len(deleted) == 1 else 'are'} missing"
                if deleted else f"fold {', '.join(map(str, missing))} has not finished")
        raise UserError(f"group {cfg.env}: {what} ({len(done)} of {plural(folds, 'fold')} finished); train "
                        f"{'it' if len(missing) == 1 else 'them'} with `{resume_command(cfg)}`, or give --partial to "
                        f"use the finished folds")
    if not done:
        raise UserError(f"group {cfg.env}: no fold has finished yet; train them with `{resume_command(cfg)}`")
    if missing:
        log.warning("group %s: --partial: using fold %s (%d of %d); fold %s not finished", cfg.env,
                    ", ".join(map(str, done)), len(done), folds, ", ".join(map(str, missing)))
    for k in done:
        problem = fold_problem(_group_cfg(cfg, group_dir), fold_dir(group_dir, k))
        if problem:
            raise UserError(f"fold {k} of group {cfg.env} {problem}; its folds must share what they compute")
    return done


def _group_cfg(cfg, group_dir):
    path = Path(group_dir) / GROUP_CONFIG
    return load_config({"config": str(path)}) if path.is_file() else cfg
