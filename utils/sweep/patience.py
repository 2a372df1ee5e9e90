"""A study's database storage that rides out a database going away for a while.

Optuna's RDBStorage turns every SQLAlchemy error into StorageInternalError and gives up at
once. A server restarted (`pg_ctl restart`, a failover) cuts every connection of every
worker: without patience each worker would hand its trial back and exit. `Patient` wraps a
storage so that an operation that failed on a lost connection is tried again, with a growing
pause, until it succeeds or the database has not answered for `patience` seconds; then the
error is raised, saying how long it waited. SQLAlchemy's pool_pre_ping (set where the engine
is made, utils/sweep/postgres.py) replaces the dead connections on the next checkout.

Errors that are not about the connection (a value too long, a constraint) are raised at once.
Operations are retried whole: reads, reports (an intermediate value set twice is set once) and
parameter writes are idempotent; a tell whose commit landed before its reply was lost finds
its trial finished with the same state on the retry, which counts as done. Creating a trial
is retried by Optuna itself (it has no way to know whether a lost commit landed: the one
window where a trial may be created twice; such a RUNNING trial without a lease is taken
over and run by the next worker that looks, so --trials still counts it).
"""
import abc
import logging
import time

import optuna
from optuna.storages import BaseStorage

log = logging.getLogger(__name__)
FIRST_PAUSE, LONGEST_PAUSE = 0.2, 5.0


def is_lost_connection(error):
    """Whether `error` (or the error it wraps) is a connection that failed or could not be made:
    the database restarted, stopped, or out of reach for now."""
    from sqlalchemy import exc

    for candidate in (error, error.__cause__, error.__context__):
        if isinstance(candidate, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
                                  exc.TimeoutError)):
            return True
        if isinstance(candidate, exc.DBAPIError) and candidate.connection_invalidated:
            return True
    return False


def reason_of(error):
    """The first line of what the driver said (not SQLAlchemy's wrapping), for one-line messages."""
    inner = getattr(error, "orig", None) or getattr(error.__cause__, "orig", None) or error.__cause__ or error
    text = str(inner).strip()
    return text.splitlines()[0] if text else type(inner).__name__


class Outage:
    """How long the database has been failing, shared by every user of one storage (the
    worker's calls, the lease's heartbeat): `failed()` on an error, `answered()` on success."""

    def __init__(self, shown, patience):
        self.shown, self.patience = shown, patience
        self.since = None  # time.monotonic() of the first failure of the current outage
        self.reason = None

    def failed(self, error):
        if self.since is None:
            self.since = time.monotonic()
            log.warning("the study's database %s does not answer (%s); trying again for up to %.0f s", self.shown,
                        reason_of(error), self.patience)
        self.reason = reason_of(error)

    def answered(self):
        if self.since is not None:
            log.warning("the study's database %s answers again after %.1f s", self.shown, time.monotonic() - self.since)
        self.since, self.reason = None, None

    def seconds(self):
        return 0.0 if self.since is None else time.monotonic() - self.since

    def exceeded(self):
        return self.since is not None and self.seconds() >= self.patience

    def message(self):
        return (f"the study's database {self.shown} has not answered for {self.seconds():.0f} s "
                f"({self.reason})")


class Patient(BaseStorage):
    """A storage whose operations ride out a lost connection for `outage.patience` seconds
    (see the module); every public operation of BaseStorage is wrapped below."""

    def __init__(self, inner, outage):
        self.inner, self.outage = inner, outage

    def _landed(self, trial_id, state, values=None):
        """Whether the trial is already finished as a tell of (`state`, `values`) leaves it."""
        trial = self.inner.get_trial(trial_id)
        return trial.state == state and (values is None or list(trial.values or []) == list(values))


def retried(work, outage, landed=None):
    """`work()`, tried again across a lost connection, with a growing pause, until it
    succeeds or `outage.patience` runs out (StorageInternalError saying how long). `landed()`
    says whether a write whose reply was lost had committed (a retry then finds the trial
    finished: UpdateFinishedTrialError, which counts as done when `landed()` is true)."""
    pause, tried = FIRST_PAUSE, False
    while True:
        try:
            result = work()
        except optuna.exceptions.UpdateFinishedTrialError:
            if tried and landed is not None and landed():
                outage.answered()
                return True  # our write committed; only its reply was lost
            raise
        except Exception as error:
            if not is_lost_connection(error):
                raise
            outage.failed(error)
            if outage.exceeded():
                raise optuna.exceptions.StorageInternalError(outage.message()) from None
            time.sleep(pause)
            pause, tried = min(pause * 2, LONGEST_PAUSE), True
            continue
        outage.answered()
        return result


def _patient(name):
    def method(self, *args, **kwargs):
        landed = (lambda: self._landed(*args, **kwargs)) if name == "set_trial_state_values" else None
        return retried(lambda: getattr(self.inner, name)(*args, **kwargs), self.outage, landed)
    method.__name__ = method.__qualname__ = name
    return method


for _name in sorted(name for name in dir(BaseStorage) if not name.startswith("_")
                    and callable(getattr(BaseStorage, name))):
    setattr(Patient, _name, _patient(_name))
abc.update_abstractmethods(Patient)
