"""What a study holds, as text: `sweep --summary` (its trials sorted by the metric and the
command that reproduces the best one) and the studies part of `python main.py runs`."""
import collections
import math
import types
from pathlib import Path

import optuna
from optuna.trial import TrialState

from configs.loader import changed_options, load_config, read_yaml
from configs.values import flag
from configs.output import _shown
from configs.schema import FIELDS
from utils.core.errors import UsageError, UserError
from utils.core.records import Damaged
from utils.core.shell import main_command
from utils.cv import is_group
from utils.engine import runtime
from utils.engine import status as run_status
from utils.sweep import coordination, postgres
from utils.sweep.options import OPTIONS
from utils.sweep.study import (JOURNAL, RECORD, SHARED, check_storage, check_study_dir, read_record, recorded_url,
                               storage_of, trial_dir, usable_url)
from utils.tables import columns


STALE_AFTER = OPTIONS["stale_after"][1]  # `runs` takes a lease this old as its worker's end, as a worker does by default


def find_studies(checkpoint_dir):
    """The study folders under `checkpoint_dir` (they hold a sweep.yaml)."""
    root = Path(checkpoint_dir)
    return sorted(p for p in root.iterdir() if (p / RECORD).is_file()) if root.is_dir() else []


def load(study_dir, storage=""):
    """(optuna Study, its sweep.yaml record) of the study in `study_dir`."""
    check_study_dir(study_dir)
    record = read_record(study_dir)
    if record is None and storage and postgres.is_postgres(storage):
        return _from_database(study_dir, storage)  # a machine that ran none of its trials
    if record is None:
        raise UserError(f"no study in {study_dir} (no {RECORD}); start one with `{main_command()} sweep "
                        f"--study={Path(study_dir).name} --trials=N --search-space=FILE`, or list them with "
                        f"`{main_command()} runs`")
    url = url_of(record, storage)
    if url:
        check_storage(url, create=False)  # reading a study creates no database
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=record.get("study", Path(study_dir).name),
                                  storage=storage_of(study_dir, url))
    except KeyError:
        where = url or Path(study_dir) / JOURNAL
        raise UserError(f"study {Path(study_dir).name} is not in its storage {where} yet") from None
    return study, record


def _from_database(study_dir, url):
    """(Study, record) of a PostgreSQL study read from the database alone: what every worker
    must bring is kept there (joining.check_shared), so any machine can show the study."""
    check_storage(url, create=False)
    name = Path(study_dir).name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=storage_of(study_dir, url))
    except KeyError:
        raise UserError(f"no study {name} in {postgres.shown(url)}; start one with `{main_command()} sweep "
                        f"--study={name} --trials=N --search-space=FILE --storage=...`") from None
    shared = study._storage.get_study_system_attrs(study._study_id).get(SHARED) or {}
    return study, {"study": name, "storage": recorded_url(url), "search_space": shared.get("search_space") or {},
                   "options": shared.get("options") or {}}


def url_of(record, storage=""):
    """The database URL of a study (its sweep.yaml `record`, or `storage` given), "" for the journal."""
    return storage or (usable_url(record["storage"]) if record.get("storage") not in (JOURNAL, None) else "")


def _value(trial):
    return trial.value if trial.values else None


def _epochs(study_dir, number):
    if is_group(trial_dir(study_dir, number)):  # a --folds trial: its finished folds
        folds = sorted(trial_dir(study_dir, number).glob("fold-*"))
        done = sum(_finished(fold) for fold in folds)
        try:
            total = read_yaml(trial_dir(study_dir, number) / "group.yaml").get("folds") or "?"
        except UsageError:
            total = "?"
        return f"folds {done}/{total}"
    try:
        status = run_status.read(trial_dir(study_dir, number))
    except Damaged:
        return "? (damaged status.json)"
    return f"{status.get('epoch', '?')}/{status.get('max_epoch', '?')}" if status else "-"


def _finished(run_dir):
    try:
        return (run_status.read(run_dir) or {}).get("status") == "finished"
    except Damaged:
        return False


def state_of(trial, holder=None):
    """The trial's state as shown: complete, pruned, failed, waiting, running (or
    'stale (resumable)' when `holder`, coordination.py's Holder of a running trial, says its
    worker is gone: its lease was released, not renewed for --stale-after, or names a process
    of this machine that no longer runs; the next worker resumes it)."""
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.WAITING: "waiting", TrialState.RUNNING: "running"}[trial.state]
    if state == "running" and holder is not None and holder.stale:
        return "stale (resumable)"
    return state


def states_of(study_dir, study, trials, stale_after, url=""):
    """{number: state_of's text} of `trials`, and the study's coordination (coordination.py)."""
    coordinated = coordination.of(Path(study_dir), url, stale_after, study._storage)
    holders = coordinated.holders([trial for trial in trials if trial.state == TrialState.RUNNING])
    return {trial.number: state_of(trial, holders.get(trial.number)) for trial in trials}, coordinated


def counts_text(states):
    """'3 complete, 1 stale (resumable)': how many trials show each state (`states`: state_of's)."""
    counts = collections.Counter(states)
    order = ("complete", "pruned", "running", "stale (resumable)", "waiting", "failed")
    return ", ".join(f"{counts[state]} {state}" for state in order if counts[state]) or "no trials yet"


def best_trial(study):
    """The best complete trial, or None (a pruned trial's value is of an unfinished run)."""
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not finished:
        return None
    return (min if minimize else max)(finished, key=lambda t: t.value)


def shown(value):
    """A parameter's value in a table: floats to 6 significant digits (the exact value is in
    the trial's config.yaml and its reproduce command)."""
    return f"{value:.6g}" if isinstance(value, float) else _shown(value)


def params_text(params):
    return " ".join(f"{flag(name)}={shown(value)}" for name, value in params.items())


def reproduce_command(study_dir, number):
    """The train command of a new run that computes what trial `number` did: its experiment
    (always named, as the default may change) and options (from its config.yaml) as flags, in
    a run dir of its own."""
    config = trial_dir(study_dir, number) / "config.yaml"
    if is_group(trial_dir(study_dir, number)):  # a --folds trial: its group's options
        config = trial_dir(study_dir, number) / "group.yaml"
    if not config.is_file():
        return None
    cfg = load_config({"config": str(config)})
    options = {"experiment": cfg.experiment, **{name: value for name, value in changed_options(cfg).items()
                                               if name not in ("env", "checkpoint_dir")}}
    parent = str(Path(study_dir).parent)
    where = "" if parent == FIELDS["checkpoint_dir"].default else f" --checkpoint-dir={parent}"
    flags = " ".join(f"{flag(name)}={_shown(value)}" for name, value in options.items())
    return f"{runtime.main_command()} train {flags} --env={Path(study_dir).name}-trial-{number}{where}"


def _parent_of(study_dir):
    """What runtime.checkpoint_dir_flag needs: the --checkpoint-dir that holds the study."""
    return types.SimpleNamespace(checkpoint_dir=str(Path(study_dir).parent))


def render_summary(study_dir, storage="", stale_after=STALE_AFTER):
    """`sweep --study=NAME --summary`: every trial, best first, then the best's command."""
    study, record = load(study_dir, storage)
    space = record.get("search_space") or {}
    metric, names = space.get("metric", "value"), list((space.get("params") or {}))
    trials = study.get_trials(deepcopy=False)
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE

    def order(trial):
        value = _value(trial)
        rank = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3}
        known = value is not None and math.isfinite(value)
        return rank.get(trial.state, 4), not known, (value if minimize else -value) if known else 0, trial.number

    states, coordinated = states_of(study_dir, study, trials, stale_after, url_of(record, storage))
    # a database study's trials run on several machines: where each one's run dir is
    where = {trial.number: coordinated.where(trial) for trial in trials} if coordinated.database else {}
    header = ["trial", "state", metric, "epochs", *names, *(["where"] if where else []), "note"]
    rows = []
    for trial in sorted(trials, key=order):
        value = _value(trial)
        if value is None and trial.state == TrialState.PRUNED and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        note = trial.user_attrs.get("error") or (f"retry of trial {trial.user_attrs['retry_of']}"
                                                  if "retry_of" in trial.user_attrs else "")
        params = [shown(trial.params[name]) if name in trial.params else "-" for name in names]
        elsewhere = where.get(trial.number)
        rows.append([str(trial.number), states[trial.number], f"{value:.4f}" if value is not None else "-",
                     "-" if elsewhere else _epochs(study_dir, trial.number), *params,
                     *([elsewhere or "here"] if where else []), note])
    direction = "lower is better" if minimize else "higher is better"
    lines = [f"study {study.study_name} in {study_dir}: {counts_text(states.values())}; {metric}, {direction}"]
    if rows:
        lines += ["", *columns(header, rows)]
    best = best_trial(study)
    if best is not None:
        lines += ["", f"best: trial {best.number}, {metric} {best.value:.4f} ({params_text(best.params)})"]
        if where.get(best.number):
            lines.append(f"its run: {where[best.number]} (another machine): test, reproduce or train it anew there, "
                         f"with `{runtime.main_command()} sweep --study={study.study_name} --summary` on that machine")
            return "\n".join(lines)
        command = reproduce_command(study_dir, best.number)
        member = f"--env={Path(study_dir).name}/trial-{best.number}{runtime.checkpoint_dir_flag(_parent_of(study_dir))}"
        lines.append(f"its run: {trial_dir(study_dir, best.number)}; test it: {runtime.main_command()} test {member}")
        if is_group(trial_dir(study_dir, best.number)):  # the ensemble of its folds; reproduce takes one fold
            member = f"--env=trial-{best.number}/fold-1 --checkpoint-dir={study_dir}"
        lines.append(f"check that it trains again bit for bit: {runtime.main_command()} reproduce {member}")
        if command:
            lines.append(f"train it anew, in a run of its own: {command}")
    return "\n".join(lines)


def render_studies(checkpoint_dir):
    """The studies part of `runs`: one line per study (trials by state, best value and
    parameters), or [] when there is none."""
    rows = []
    for study_dir in find_studies(checkpoint_dir):
        try:
            study, record = load(study_dir)
        except Exception as error:  # noqa: BLE001 - an unreadable study is a row, not a crash
            why = str(error).splitlines()[0] if str(error) else repr(error)
            rows.append([study_dir.name, "?", f"unreadable: {why}", "-", ""])
            continue
        trials = study.get_trials(deepcopy=False)
        best = best_trial(study)
        metric = (record.get("search_space") or {}).get("metric", "value")
        states, coordinated = states_of(study_dir, study, trials, STALE_AFTER, url_of(record))
        elsewhere = sum(bool(coordinated.where(trial)) for trial in trials)
        counts = counts_text(states.values()) + (f" ({elsewhere} on other machines)" if elsewhere else "")
        rows.append([study_dir.name, metric, counts, f"{best.value:.4f} (trial {best.number})" if best
                     else "-", params_text(best.params) if best else ""])
    if not rows:
        return []
    return columns(["study", "metric", "trials", "best", "params"], rows)
