"""A database study's storage rides out a lost connection (utils/sweep/patience.py): an
operation that failed on the connection is tried again until it succeeds or the patience runs
out; any other error is raised at once; a tell whose commit landed before its reply was lost
counts as done. No server: the storage underneath is a stand-in that fails on cue."""
import types

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from utils.sweep import patience
from utils.sweep.patience import Outage, Patient


def lost():
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


class Flaky:
    """A storage whose next `failures` calls raise what `error()` makes, then answer."""

    def __init__(self, failures, error=lost):
        self.failures, self.error, self.calls = failures, error, 0
        self.stored = types.SimpleNamespace(state=TrialState.COMPLETE, values=[0.25])

    def _call(self, answer):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise self.error()
        return answer

    def get_all_studies(self):
        return self._call(["study"])

    def get_trial(self, trial_id):
        return self.stored

    def set_trial_state_values(self, trial_id, state, values=None):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise lost()  # the commit landed, its reply did not
        raise optuna.exceptions.UpdateFinishedTrialError("finished already")


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    monkeypatch.setattr(patience, "FIRST_PAUSE", 0.0)
    monkeypatch.setattr(patience, "LONGEST_PAUSE", 0.0)


def test_a_lost_connection_is_tried_again_until_it_answers(caplog):
    inner = Flaky(failures=3)
    storage = Patient(inner, Outage("postgresql://runner:***@db/sweeps", patience=60))
    assert storage.get_all_studies() == ["study"] and inner.calls == 4
    assert storage.outage.since is None  # answered: the outage is over
    said = [record.getMessage() for record in caplog.records]
    assert any("does not answer (server closed the connection unexpectedly); trying again for up to 60 s" in line
               for line in said), said
    assert any("answers again after" in line for line in said), said


def test_other_errors_are_raised_at_once():
    inner = Flaky(failures=5, error=lambda: IntegrityError("INSERT", {}, Exception("duplicate key")))
    storage = Patient(inner, Outage("postgresql://db/sweeps", patience=60))
    with pytest.raises(IntegrityError):
        storage.get_all_studies()
    assert inner.calls == 1


def test_past_its_patience_the_error_says_how_long_it_waited():
    storage = Patient(Flaky(failures=10**9), Outage("postgresql://runner:***@db/sweeps", patience=0.05))
    with pytest.raises(optuna.exceptions.StorageInternalError,
                       match=r"^the study's database postgresql://runner:\*\*\*@db/sweeps has not answered for \d+ s "
                             r"\(server closed the connection unexpectedly\)$"):
        storage.get_all_studies()


def test_a_tell_whose_reply_was_lost_counts_as_done_when_the_trial_holds_it():
    storage = Patient(Flaky(failures=1), Outage("postgresql://db/sweeps", patience=60))
    assert storage.set_trial_state_values(0, TrialState.COMPLETE, [0.25]) is True
    other = Patient(Flaky(failures=1), Outage("postgresql://db/sweeps", patience=60))
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # finished with another value: not ours
        other.set_trial_state_values(0, TrialState.COMPLETE, [0.5])
    first_try = Patient(Flaky(failures=0), Outage("postgresql://db/sweeps", patience=60))
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # no lost reply before: a real double tell
        first_try.set_trial_state_values(0, TrialState.COMPLETE, [0.25])


def test_every_storage_operation_is_wrapped():
    wrapped = {name for name in dir(optuna.storages.BaseStorage) if not name.startswith("_")
               and callable(getattr(optuna.storages.BaseStorage, name))}
    assert wrapped and all(getattr(Patient, name).__qualname__ == name for name in wrapped)
    assert not Patient.__abstractmethods__
