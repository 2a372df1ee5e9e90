"""Stop a training run without losing it.

SIGINT (Ctrl+C) / SIGTERM: the current step finishes, last.pth is saved with the step within
the epoch, writers close, the resume command is printed, exit 130 / 143. A second Ctrl+C
stops at once; checkpoint writes are atomic, so even that leaves the previous last.pth whole.
`q` in the live debugger stops the same way. An unexpected exception saves the last
consistent state to emergency.pth (never over last.pth) and re-raises with its traceback.
A non-finite loss stops the run and keeps the last good checkpoint untouched. Fault
injection for tests lives in utils/core/faults.py.

--requeue-signal=USR1 adds a signal that stops the same way (exit 128 + its number), for a
cluster scheduler's warning before a time limit (SLURM's --signal).

Under torchrun every stop is collective: a signal only marks this rank's stop as pending,
and the engine's one all-reduce after each step (utils/distributed.agree_step) turns the
pending stops of all ranks into one decision that every rank acts on at the same step; the
snapshot then gathers every rank's RNG state and rank 0 writes the one last.pth. After an
unexpected exception under torchrun no emergency.pth is written: the other ranks are gone or
stuck in a collective, so no consistent state exists beyond last.pth; torchrun ends the
job and --resume continues from last.pth.
"""
import bdb
import contextlib
import logging
import math
import signal
import sys
import time

from utils.core.errors import UserError
from utils.engine import debug, distributed, runtime
from utils.engine.checkpoint import LAST

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""
    agreed = True  # seen by every rank in the agreed means of the step

    def __init__(self, name, epoch, step, value):
        super().__init__(
            f"{name} is {value} at epoch {epoch + 1}, step {step + 1}; stopped without saving it. "
            f"The last good checkpoint is kept: try a lower learning rate, or resume from it"
        )


class Stopped(UserError):
    """The run was stopped on request and can be resumed."""
    prefix = ""  # not an error: the user asked for it

    def __init__(self, message, exit_code, agreed=True):
        super().__init__(message)
        self.exit_code = exit_code
        self.agreed = agreed  # every rank stops alike (rank 0 alone says so), or this rank alone


class SafeStop:
    """Context manager around the training loop and the one place that decides to stop:
    a signal, `q` in the live debugger or a non-finite loss. A signal sets `pending`; the
    loop turns it into `requested` after each step (agreed by every rank under torchrun)
    and stops when that is set."""

    def __init__(self, cfg, checkpoints, snapshot, close_outputs, resume=None, asked=None):
        self.cfg, self.checkpoints, self.snapshot, self.close_outputs = cfg, checkpoints, snapshot, close_outputs
        # a stop asked for by the caller after a step (a sweep trial's database gone): its reason, or None
        self.asked = asked or (lambda: None)
        # the command a stop prints to go on: the run's resume, or what the caller gives (a sweep's own command)
        self.resume = resume or runtime.resume_command(cfg)
        self.pending = None  # a stop this process was asked for: a signal number or "requeue"
        self.requested = None  # the stop decided: a signal number, "requeue" or "debugger quit"
        self._previous = {}
        self._requeue = getattr(signal, f"SIG{cfg.requeue_signal}") if cfg.requeue_signal else None

    def _handle(self, signum, frame):
        if (self.pending is not None or self.requested is not None) and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: stop now (atomic writes keep files whole)
        self.pending = "requeue" if signum == self._requeue else signum
        print(f"\n{distributed.rank_prefix()}{signal.Signals(signum).name}: finishing this step, then saving last.pth "
              f"(Ctrl+C again to stop at once)", file=sys.stderr, flush=True)

    def _latest(self):
        """Which checkpoint a stop leaves as the newest on disk, once the epoch end's write
        still in flight (a background thread) has landed: the run waits for it anyway before
        it exits, so saying "no checkpoint yet" before then would be false a moment later."""

        with contextlib.suppress(Exception):  # a failed write leaves last.pth as it was: we say what is there
            self.checkpoints.wait()
        last = self.checkpoints.run_dir / LAST
        if not last.is_file():
            return f"no checkpoint on disk yet in {self.checkpoints.run_dir}"
        written = time.strftime("%H:%M:%S", time.localtime(last.stat().st_mtime))
        return f"the latest checkpoint is {last} (written {written}); resume it: {self.resume}"

    def check_finite(self, scalars, epoch, step_in_epoch, names):
        """Raise NonFiniteLoss if a returned loss (a key in `names`) is NaN or infinite."""
        for name in names:
            if name in scalars and not math.isfinite(scalars[name]):
                raise NonFiniteLoss(name, epoch, step_in_epoch, scalars[name])

    def debug_check(self, scope, before_prompt=None):
        """The live-debugger check (rank 0's, the others wait); `q` at its prompt asks for a
        stop like a signal does."""
        if not distributed.decide_debug(distributed.is_main() and debug.wanted(self.cfg)):
            return
        quit_ = None
        if distributed.is_main():
            try:
                debug.prompt(self.cfg, scope, before_prompt)
                quit_ = False
            except bdb.BdbQuit:
                quit_ = True
        if distributed.wait_for_debugger(quit_):
            self.requested = "debugger quit"

    def __enter__(self):
        signals = [signal.SIGINT, signal.SIGTERM] + ([self._requeue] if self._requeue else [])
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, error, traceback):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if kind is None:
            # The loop ended (all epochs, or an agreed stop): one more agreement takes in a
            # signal that came after the last step, the same on every rank.
            self.requested = distributed.agree_stop(self.requested or self.pending)
        if kind is None and self.requested is None:
            return False
        if kind is None:
            path = self.checkpoints.save_last(self.snapshot())
            self.close_outputs()
            signum = self._requeue if self.requested == "requeue" else self.requested
            code = 130 if isinstance(signum, str) else 128 + int(signum)
            reason = signum if isinstance(signum, str) else signal.Signals(signum).name
            raise Stopped(f"stopped ({reason}); saved {path}. Resume: {self.resume}", code) from None
        if issubclass(kind, KeyboardInterrupt) and (self.requested or self.pending) is not None:
            self.close_outputs()
            raise Stopped(f"interrupted again: stopped at once, and this stop wrote nothing; {self._latest()}", 130,
                          agreed=False) from None
        if issubclass(kind, (KeyboardInterrupt, UserError)):
            # A user's mistake (a non-finite loss, an unreadable image, a full disk): the
            # checkpoints on disk are the last good state; an emergency save adds nothing.
            self.close_outputs()
            return False
        too_large = runtime.out_of_memory(error)
        if too_large is not None:
            # a batch or model the machine cannot hold is the options' fault, like a full disk
            self.close_outputs()
            raise too_large from None
        if self.cfg.pdb_on_error:
            debug.post_mortem(error)
        if distributed.active():
            self.close_outputs()
            return False
        try:
            path = self.checkpoints.save_emergency(self.snapshot())
            log.error("unexpected %s; state before it saved to %s (resume: %s train --resume=%s)",
                      kind.__name__, path, runtime.main_command(), path)
        except Exception as save_error:  # the original error matters more; report and go on
            log.error("could not save an emergency checkpoint: %s", save_error)
        self.close_outputs()
        return False
