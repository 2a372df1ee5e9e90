"""Stop a training run without losing it.

SIGINT (Ctrl+C) / SIGTERM: the current step finishes, last.pth is saved with the step within
the epoch, writers close, the resume command is printed, exit 130 / 143. A second Ctrl+C
stops at once; checkpoint writes are atomic, so even that leaves the previous last.pth whole.
`q` in the live debugger stops the same way. An unexpected exception saves the last
consistent state to emergency.pth (never over last.pth) and re-raises with its traceback.
A non-finite loss stops the run and keeps the last good checkpoint untouched.
"""
import bdb
import logging
import os
import signal
import sys

from utils import checkpoint, debug
from utils.errors import UserError

log = logging.getLogger(__name__)
# Fault injection for the test suite and for chaos drills: "STEP:WHAT[,STEP:WHAT]" makes the run, during
# global step STEP (1-based, after the forward pass), send itself SIGINT or SIGTERM, raise
# an error, or see a NaN loss; the same code paths as a real signal, crash or divergence.
FAULT_VARIABLE = "RUNNER_FAULT_AT_STEP"


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch, step, value):
        super().__init__(
            f"loss is {value} at epoch {epoch + 1}, step {step + 1}; stopped without saving it. "
            f"The last good checkpoint is kept: try a lower --lr, or resume from it"
        )


class Stopped(UserError):
    """The run was stopped on request and can be resumed."""

    prefix = ""  # not an error: the user asked for it

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class SafeStop:
    """Context manager around the training loop; `requested` tells the loop to stop."""

    def __init__(self, cfg, run_dir, snapshot, vis):
        self.cfg, self.run_dir, self.snapshot, self.vis = cfg, run_dir, snapshot, vis
        self.requested = None  # the signal number once a stop was asked for
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: stop now (atomic writes keep files whole)
        self.requested = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last.pth "
              f"(Ctrl+C again to stop at once)", file=sys.stderr, flush=True)

    def during_step(self, global_step):
        """Called by the loop in each step; fires an injected fault when one is due."""
        fired = None
        for fault in filter(None, os.environ.get(FAULT_VARIABLE, "").split(",")):
            step, what = fault.split(":")
            if int(step) != global_step:
                continue
            fired = what
            if what in ("SIGINT", "SIGTERM"):
                os.kill(os.getpid(), getattr(signal, what))  # handled before os.kill returns
            elif what == "error":
                raise RuntimeError(f"injected fault at step {global_step} ({FAULT_VARIABLE})")
        return fired

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, error, traceback):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if kind is None and self.requested is None:
            return False
        if kind is None or issubclass(kind, bdb.BdbQuit):
            resume = f"python main.py train --env={self.cfg.env} --checkpoint-dir={self.cfg.checkpoint_dir} --resume"
            checkpoint.save_checkpoint(self.snapshot(), self.run_dir / "last.pth")
            self.vis.close()
            code = {signal.SIGTERM: 143}.get(self.requested, 130)
            reason = "debugger quit" if kind else signal.Signals(self.requested).name
            raise Stopped(f"stopped ({reason}); saved {self.run_dir / 'last.pth'}. Resume: {resume}", code) from None
        if issubclass(kind, (KeyboardInterrupt, NonFiniteLoss)):
            self.vis.close()
            return False
        if self.cfg.pdb_on_error:
            debug.post_mortem(error)
        try:
            path = checkpoint.save_checkpoint(self.snapshot(), self.run_dir / "emergency.pth")
            log.error("unexpected %s; state before it saved to %s (resume: python main.py train --resume=%s)",
                      kind.__name__, path, path)
        except Exception as save_error:  # the original error matters more; report and go on
            log.error("could not save an emergency checkpoint: %s", save_error)
        self.vis.close()
        return False
