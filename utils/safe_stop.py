"""Stop a training run without losing it.

SIGINT (Ctrl+C) / SIGTERM: the current step finishes, last.pth is saved with the step within
the epoch, writers close, the resume command is printed, exit 130 / 143. A second Ctrl+C
stops at once; checkpoint writes are atomic, so even that leaves the previous last.pth whole.
`q` in the live debugger stops the same way. An unexpected exception saves the last
consistent state to emergency.pth (never over last.pth) and re-raises with its traceback.
A non-finite loss stops the run and keeps the last good checkpoint untouched. Fault
injection for tests lives in utils/faults.py.
"""
import bdb
import logging
import math
import signal
import sys

from utils import debug, runtime
from utils.errors import UserError

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""

    def __init__(self, name, epoch, step, value):
        super().__init__(
            f"{name} is {value} at epoch {epoch + 1}, step {step + 1}; stopped without saving it. "
            f"The last good checkpoint is kept: try a lower learning rate, or resume from it"
        )


class Stopped(UserError):
    """The run was stopped on request and can be resumed."""

    prefix = ""  # not an error: the user asked for it

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class SafeStop:
    """Context manager around the training loop and the one place that decides to stop:
    a signal, `q` in the live debugger or a non-finite loss. The loop asks `requested`
    after each step (a distributed run can agree on it across ranks there)."""

    def __init__(self, cfg, checkpoints, snapshot, close_outputs):
        self.cfg, self.checkpoints, self.snapshot, self.close_outputs = cfg, checkpoints, snapshot, close_outputs
        self.requested = None  # why a stop was asked for: a signal number or "debugger quit"
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: stop now (atomic writes keep files whole)
        self.requested = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last.pth "
              f"(Ctrl+C again to stop at once)", file=sys.stderr, flush=True)

    def _latest(self):
        """Which checkpoint a stop leaves as the newest on disk."""
        import time

        from utils.checkpoint import LAST

        last = self.checkpoints.run_dir / LAST
        if not last.is_file():
            return f"no checkpoint on disk yet in {self.checkpoints.run_dir}"
        written = time.strftime("%H:%M:%S", time.localtime(last.stat().st_mtime))
        return f"the latest checkpoint is {last} (written {written}); resume it: {runtime.resume_command(self.cfg)}"

    def check_finite(self, scalars, epoch, step_in_epoch, names):
        """Raise NonFiniteLoss if a returned loss (a key in `names`) is NaN or infinite."""
        for name in names:
            if name in scalars and not math.isfinite(scalars[name]):
                raise NonFiniteLoss(name, epoch, step_in_epoch, scalars[name])

    def debug_check(self, scope, before_prompt=None):
        """The live-debugger check; `q` at its prompt asks for a stop like a signal does."""
        try:
            debug.check(self.cfg, scope, before_prompt)
        except bdb.BdbQuit:
            self.requested = "debugger quit"

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, error, traceback):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if kind is None and self.requested is None:
            return False
        if kind is None:
            path = self.checkpoints.save_last(self.snapshot())
            self.close_outputs()
            code = {signal.SIGTERM: 143}.get(self.requested, 130)
            reason = self.requested if isinstance(self.requested, str) else signal.Signals(self.requested).name
            raise Stopped(f"stopped ({reason}); saved {path}. Resume: {runtime.resume_command(self.cfg)}", code) from None
        if issubclass(kind, KeyboardInterrupt) and self.requested is not None:
            self.close_outputs()
            raise Stopped(f"interrupted again: stopped at once, and this stop wrote nothing; {self._latest()}", 130) from None
        if issubclass(kind, (KeyboardInterrupt, UserError)):
            # A user's mistake (a non-finite loss, an unreadable image, a full disk): the
            # checkpoints on disk are the last good state; an emergency save adds nothing.
            self.close_outputs()
            return False
        if self.cfg.pdb_on_error:
            debug.post_mortem(error)
        try:
            path = self.checkpoints.save_emergency(self.snapshot())
            log.error("unexpected %s; state before it saved to %s (resume: python main.py train --resume=%s)",
                      kind.__name__, path, path)
        except Exception as save_error:  # the original error matters more; report and go on
            log.error("could not save an emergency checkpoint: %s", save_error)
        self.close_outputs()
        return False
