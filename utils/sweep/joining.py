"""A worker creates its study or joins it: everything is checked before anything is written.

The first worker of a study checks the folder (not a train run's), the `--storage` URL and the
trials' data, then creates the study and only then writes sweep.yaml, the record of what every
worker must bring (storage, search space, the options that define the trials): a command that
failed on any check works once corrected, instead of meeting a record of its mistake. A later
worker must bring the same record. A storage that knows fewer trials than the folder holds
runs of (an emptied or replaced journal) is refused before new trials take the old runs'
numbers.
"""
import contextlib
import logging
from pathlib import Path

import optuna
import yaml
from sqlalchemy.exc import SQLAlchemyError

from configs.loader import changed_options, defaults_for, load_config
from configs.values import flag, same_value
from configs.schema import fields_of
from utils.core.errors import UsageError, UserError, excerpt, plural, shorten
from utils.core.io import atomic_open
from utils.core.registry import EXPERIMENTS
from utils.engine import runtime
from utils.sweep import postgres
from utils.sweep.journal import BROKEN
from utils.sweep.study import (JOURNAL, RECORD, SHARED, check_storage, check_study_dir, read_record, recorded_url,
                               storage_of, study_lock)


def open_study(options, base, flags, space, pruner):
    """The optuna Study of the sweep `options` (SweepOptions) whose trials run `base` (the
    resolved Config of the train `flags`) over the SearchSpace `space`, created or joined."""
    study_dir = Path(base.checkpoint_dir) / options.study
    check_study_dir(study_dir)
    if options.storage:
        check_storage(options.storage)
    runtime.check_output_dir(study_dir, "--checkpoint-dir")
    record = {"study": options.study, "storage": recorded_url(options.storage) or JOURNAL,
              "search_space": space.as_dict(), "options": run_options(base)}
    saved = read_record(study_dir)
    check_name(options, study_dir, saved)
    if saved is not None:
        check_same(options.study, study_dir, saved, record, base.experiment)
    else:
        check_data(flags, space)
    created = [folder for folder in (study_dir, *study_dir.parents) if not folder.exists()]  # deepest first
    study_dir.mkdir(parents=True, exist_ok=True)
    try:
        with study_lock(study_dir):
            try:
                study = optuna.create_study(study_name=options.study, direction=space.direction,
                                            storage=storage_of(study_dir, options.storage, patience(options)),
                                            pruner=pruner, load_if_exists=True)
            except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as error:
                reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
                raise UserError(f"cannot open study {options.study} in its storage: {shorten(reason, 200)}") from None
            check_known_trials(study, study_dir)
            if postgres.is_postgres(options.storage):
                check_shared(study, options.study, record, base.experiment)
            current = read_record(study_dir)  # another first worker may have written it meanwhile
            if current is None:
                with atomic_open(study_dir / RECORD, "w", encoding="utf-8") as handle:
                    handle.write(f"# sweep {options.study}: what every worker of this study must bring (written by "
                                 f"its first worker)\n")
                    yaml.safe_dump(record, handle, sort_keys=False)
            elif saved is None:
                check_same(options.study, study_dir, current, record, base.experiment)
    except BaseException:
        for folder in created:  # nothing of this study was kept: leave no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return study


def patience(options):
    """How long a worker waits for its study's database to answer again before it saves its
    trial and stops: half of --stale-after, so that its lease is still live when it is back."""
    return options.stale_after / 2


def run_options(base):
    """The options of `base` that define what the trials compute (not how they execute)."""
    fields = fields_of(base.experiment)
    return {name: value for name, value in changed_options(base).items()
            if fields[name].metadata["role"] not in ("execution", "invocation")}


def check_shared(study, name, record, experiment):
    """A PostgreSQL study's workers run on machines that share no folder, so the study itself
    keeps what every worker must bring (the search space and the trials' options, less the
    paths: data may lie elsewhere on each machine): the first worker stores it, the others
    must match it (UsageError naming the first difference)."""
    fields = fields_of(experiment)
    shared = {"search_space": record["search_space"],
              "options": {option: value for option, value in record["options"].items()
                          if not fields[option].metadata["path"]}}
    with postgres.study_lock(study._storage, name):
        saved = study._storage.get_study_system_attrs(study._study_id).get(SHARED)
        if saved is None:
            study._storage.set_study_system_attr(study._study_id, SHARED, shared)
            return
    check_same(name, None, {**saved, "storage": record["storage"]}, {**shared, "storage": record["storage"]},
               experiment, where="the study's database")


def check_same(study, study_dir, saved, record, experiment, where=None):
    """UsageError unless this worker's `record` matches the study's sweep.yaml (`saved`)."""
    where = where or study_dir / RECORD
    kept = recorded_url(saved.get("storage"))  # an older sweep.yaml may hold a password: never shown
    if kept != record["storage"]:
        raise UsageError(f"study {study} keeps its trials in {kept} ({where}); give "
                         f"--storage={kept if kept != JOURNAL else 'none'} or another --study")
    if saved.get("search_space") != record["search_space"]:
        raise UsageError(f"study {study} was started with another search space (see {where}); give the same file, or "
                         f"start another --study")
    defaults = defaults_for(experiment)
    theirs, ours = saved.get("options") or {}, record["options"]
    differ = sorted(name for name in set(theirs) | set(ours)
                    if not same_value(name, theirs.get(name, defaults.get(name)), ours.get(name, defaults.get(name)),
                                      experiment))
    if differ:
        name = differ[0]
        raise UsageError(f"study {study}'s trials run with {flag(name)}={excerpt(theirs.get(name, defaults.get(name)))} "
                         f"and this worker gives {excerpt(ours.get(name, defaults.get(name)))} (see {where}); give the "
                         f"study's options, or start another --study")


def check_name(options, study_dir, saved):
    """UserError when the study's folder holds another study (a study folder copied or
    renamed: its sweep.yaml and journal name the study it was made for): a sweep would add a
    study of its own to the copy's journal and find the runs of the other's trials."""
    names = [saved["study"]] if saved is not None else []
    if not names and not options.storage and (study_dir / JOURNAL).is_file():
        names = [found.study_name for found in storage_of(study_dir).get_all_studies()]
    if names and options.study not in names:
        raise UserError(f"{study_dir} holds study {names[0]}, not {options.study} (a study folder copied or renamed?); "
                        f"go on with it as --study={names[0]} in a folder of that name, or start another --study; "
                        f"nothing was written")


def check_data(flags, space):
    """Read the trials' data once, with the first value of each searched option: a wrong
    --train-data-root is one line before the study exists. Its log is silenced: the first
    trial reads the data again and says what it found."""
    typical = {name: spec[1][0] if spec[0] == "choices" else spec[1] for name, spec in space.params.items()}
    cfg = load_config({**flags, **typical, "monitor": space.metric})
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        EXPERIMENTS.get(cfg.experiment)(cfg).datasets()
    finally:
        logging.disable(previous)


def check_known_trials(study, study_dir):
    """UserError when `study_dir` holds a trial's run its storage does not know (an emptied or
    replaced journal): new trials would take those numbers and collide with the runs."""
    known = len(study.get_trials(deepcopy=False))
    runs = [int(folder.name[len("trial-"):]) for folder in study_dir.glob("trial-*")
            if folder.name[len("trial-"):].isdigit() and (folder / "config.yaml").is_file()]
    if any(number >= known for number in runs):
        raise UserError(f"{study_dir} holds the run of trial {max(runs)}, but its storage knows "
                        f"{plural(known, 'trial')}: the study's records were lost; restore them (a copy of the journal, "
                        f"or the {JOURNAL}{BROKEN}* that --repair keeps), or start another --study")
