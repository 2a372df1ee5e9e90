"""Where a study lives: its folder under --checkpoint-dir (the trials' run dirs, sweep.yaml,
the lock) and its Optuna storage (the journal file there, or an RDB by URL)."""
import contextlib
from pathlib import Path

import yaml
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

JOURNAL, RECORD, LOCK = "optuna.journal", "sweep.yaml", "sweep"


def trial_dir(study_dir, number):
    return Path(study_dir) / f"trial-{number}"


def storage_of(study_dir, url=""):
    """The Optuna storage of a study: `url` (an RDB), or the journal file in its folder."""
    if url:
        return url
    return JournalStorage(JournalFileBackend(str(Path(study_dir) / JOURNAL)))


@contextlib.contextmanager
def study_lock(study_dir):
    """The study's lock: held for the milliseconds it takes to pick, ask and lease a trial."""
    lock = JournalFileOpenLock(str(Path(study_dir) / LOCK), grace_period=30)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def state_counts(trials):
    """{"complete", "pruned", "running", "waiting", "fail": how many of `trials`}."""
    counts = {"complete": 0, "pruned": 0, "running": 0, "waiting": 0, "fail": 0}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


def read_record(study_dir):
    """The study's sweep.yaml as a dict, or None when it has none yet."""
    path = Path(study_dir) / RECORD
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}
