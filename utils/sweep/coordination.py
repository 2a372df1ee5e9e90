"""Who may start or take over which trial: the study lock and the trials' leases.

Two ways, one interface (`of`):

- Files (the journal, SQLite, MySQL): the lock is a file in the study's folder and each
  lease is `trial-<n>/lease.json` (lock.py, lease.py); every worker must see that folder.
- Database (PostgreSQL): the lock is an advisory lock and the leases are rows in the
  study's database (postgres.py); each machine keeps its trials' run dirs under its own
  --checkpoint-dir, and a trial taken over from a machine whose run dir is not reachable
  starts again from its first epoch (same parameters and seed, so the same weights).
"""
import socket
import typing

from utils.sweep import lease as leases
from utils.sweep import postgres
from utils.sweep.study import study_lock, trial_dir

LOCATION = "run_dir"  # the trial user attribute that says where a database study's trial runs: host:path


class Holder(typing.NamedTuple):
    """Who holds a running trial: `stale` (no live owner), the lease `record` (None when there
    is none) and `age` (seconds since its last heartbeat, None without a lease)."""
    stale: bool
    record: typing.Optional[dict]
    age: typing.Optional[float]


def of(study_dir, url, stale_after, storage=None):
    """The coordination of the study in `study_dir` kept in `url` ("" for the journal);
    `storage` is the study's storage (postgres.storage's) for a PostgreSQL study."""
    if postgres.is_postgres(url):
        return Database(study_dir, stale_after, storage)
    return Files(study_dir, stale_after)


class Files:
    """The lock and leases as files in the study's folder (a folder every worker sees)."""
    database = False

    def __init__(self, study_dir, stale_after):
        self.study_dir, self.stale_after = study_dir, stale_after

    def lock(self, study_name=None):
        return study_lock(self.study_dir)

    def holders(self, trials):
        """{number: Holder} of the running `trials` (FrozenTrials)."""
        found = {}
        for trial in trials:
            run_dir = trial_dir(self.study_dir, trial.number)
            path = run_dir / leases.LEASE
            found[trial.number] = Holder(leases.is_stale(run_dir, self.stale_after), leases.read(path), leases.age(path))
        return found

    def claim(self, trial_id, number, former=None):
        """This worker's lease on trial `number` (the caller holds the lock), or None when
        another worker got it first (never, with files: the lock decides)."""
        return leases.Lease(trial_dir(self.study_dir, number), self.stale_after).claim(takeover_of=former)

    def where(self, trial):
        """Where trial `trial` runs when not in this study folder ("host:path"), else None."""
        return None


class Database:
    """The lock and leases in the study's PostgreSQL database (postgres.py)."""
    database = True

    def __init__(self, study_dir, stale_after, storage):
        self.study_dir, self.stale_after, self.storage = study_dir, stale_after, storage
        self.study_name = study_dir.name

    def lock(self, study_name=None):
        return postgres.study_lock(self.storage, study_name or self.study_name)

    def holders(self, trials):
        records = postgres.holders(self.storage, [trial._trial_id for trial in trials])
        found = {}
        for trial in trials:
            record = records.get(trial._trial_id)
            found[trial.number] = Holder(postgres.is_stale(record, self.stale_after), record,
                                         record["age"] if record else None)
        return found

    def claim(self, trial_id, number, former=None):
        run_dir = trial_dir(self.study_dir, number).absolute()
        lease = postgres.DatabaseLease(self.storage, trial_id, run_dir, self.stale_after, former)
        if not lease.claim():
            return None
        self.storage.set_trial_user_attr(trial_id, LOCATION, f"{socket.gethostname()}:{run_dir}")
        return lease

    def where(self, trial):
        location = trial.user_attrs.get(LOCATION)
        here = f"{socket.gethostname()}:{trial_dir(self.study_dir, trial.number).absolute()}"
        return None if not location or location == here else location
