"""What the engine calls back during a sweep's trial (utils/engine/loop.py train(cfg,
trial=hooks)): each epoch's metric goes to the study's pruner, and every write first checks
that this worker still owns the trial. A write that failed in the study's storage hands the
trial back (HandedBack) instead of failing it."""
import logging
import math
import warnings

import optuna

from utils.core.errors import UserError
from utils.core.io import OutputError
from utils.engine import distributed
from utils.engine.distributed import STOP_DATABASE

log = logging.getLogger(__name__)
# A write that failed (a full disk, an I/O error, the database gone): the machine's problem,
# not the trial's parameters, so the trial is handed back instead of failed.
STORAGE_ERRORS = (OutputError, optuna.exceptions.StorageInternalError)


class HandedBack(UserError):
    """A trial given back to the study after a failed write (see STORAGE_ERRORS)."""
    agreed = True  # under torchrun every rank learns of it (TrialHooks.epoch_end shares it)


class TrialHooks:
    """What the engine calls back during a trial (see engine.train): the epoch's metric goes
    to the pruner (on rank 0, which shares the decision), and every write first checks that
    this worker still holds the lease."""

    def __init__(self, trial, metric, lease, pruner_name, resume_command, tracking=None):
        self.trial, self.metric, self.lease, self.pruner_name = trial, metric, lease, pruner_name
        self.resume_command = resume_command  # what a stop prints: the sweep's own command, which resumes the trial
        self.tracking = tracking  # {"study", "number", "params", "parents"}: the trackers nest the trial (utils/loggers)
        # the run lock of the trial's run dir goes stale as its lease does (utils/engine/run_lock.py)
        self.stale_after = lease.stale_after if lease is not None else None

    def epoch_end(self, epoch, metrics):
        # Optuna counts steps from 0: epoch 1 is step 0, so a pruner's n_warmup_steps=1 never
        # ends a trial in its first epoch
        return self._judge((metrics or {}).get(self.metric), epoch - 1,
                           lambda value: f"pruned at epoch {epoch}: {self.metric} {value:.4f}")

    def fold_end(self, folds_done, value):
        """A --folds trial after its fold `folds_done`: the mean metric of its finished folds
        goes to the pruner (step = folds done - 1); returns why it is pruned, or None."""
        return self._judge(value, folds_done - 1, lambda value: f"pruned after fold {folds_done}: mean {self.metric} "
                                                                f"{value:.4f} over its finished folds")

    def _judge(self, value, step, said):
        """Report `value` at `step` (rank 0) and return why the pruner ends the trial, or None,
        on every rank; a storage failure hands the trial back on every rank."""
        verdict = None
        if distributed.is_main():
            try:
                if value is not None and math.isfinite(value):
                    with warnings.catch_warnings():  # a resumed trial redoes steps it reported: the first value stands
                        warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
                        self.trial.report(value, step)
                    if self.trial.should_prune():
                        verdict = f"{said(value)} (the {self.pruner_name} pruner of the sweep)"
            except STORAGE_ERRORS as error:
                if hasattr(self.lease, "outage"):  # a database study's: this epoch is saved, then the run stops
                    self.lease.outage = self.lease.outage or first_line(error)
                    log.warning("sweep trial: epoch %d's %s was not reported (%s); saving the epoch and stopping",
                                step + 1, self.metric, first_line(error))
                else:
                    verdict = HandedBack(first_line(error))  # every rank stops with it
        verdict = distributed.broadcast_object(verdict)
        if isinstance(verdict, HandedBack):
            raise verdict
        return verdict

    def stop_reason(self):
        """Why the run should save last.pth and stop now (the engine asks after each step):
        the study's database has not answered for the worker's patience."""
        return STOP_DATABASE if getattr(self.lease, "outage", None) else None

    def check_owner(self):
        if self.lease is not None:
            self.lease.check()


def first_line(error):
    return str(error).splitlines()[0] if str(error) else type(error).__name__
