"""Trial leases: which worker owns a running trial, and when another may take it over.

A sweep's trials are run dirs on a file system every worker sees (the study folder under
--checkpoint-dir), so the lease lives there too: `<trial dir>/lease.json` names its owner
(host, pid and a random token) and its modification time is the owner's heartbeat. The owner
renews it on a timer thread (`Lease.start`), every --stale-after / 5 seconds, whatever the
training step or validation is doing; a trial whose lease has not been renewed for
--stale-after seconds belongs to a worker that is gone (kill -9, a lost node, a requeued job)
and may be taken over.

Atomicity: leases are only created or taken over while holding the study lock (worker.py),
so two workers never both decide to resume one trial. Renewal touches the file's time only
and never rewrites it, so a late renewal by a former owner cannot undo a takeover; the former
owner finds the new token at its next renewal or before its next write (`check`) and stops
without writing (LeaseLost). A worker frozen longer than --stale-after (SIGSTOP, a suspended
VM) is the one case where this matters: pick --stale-after well above any such pause.
The heartbeat is the owner's clock compared with the checker's: machines sharing a study
must keep their clocks in step (NTP), to well within --stale-after.
"""
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from utils.core.errors import UserError
from utils.core.io import atomic_open
from utils.core.liveness import pid_namespace

log = logging.getLogger(__name__)
LEASE = "lease.json"


class LeaseLost(UserError):
    """Another worker took this trial over (this one was not heard from for --stale-after);
    its run dir is theirs now, so nothing more may be written to it."""
    fenced = True  # the engine writes nothing more to the run dir (no status, no cleanup)


class Lease:
    """This worker's lease on one trial's run dir."""

    def __init__(self, run_dir, stale_after):
        self.path = run_dir / LEASE
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self.lost = None  # the new owner, once the lease was taken over
        self._stop = threading.Event()
        self._thread = None

    def claim(self, takeover_of=None):
        """Write the lease as this worker's (the caller holds the study lock)."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": pid_namespace(),
                  "token": self.token, "since": time.strftime("%Y-%m-%d %H:%M:%S"), "took_over": takeover_of}
        with atomic_open(self.path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        return self

    def start(self):
        """Renew the lease every --stale-after / 5 seconds on a daemon thread."""
        self._thread = threading.Thread(target=self._renew_forever, name="lease-renewal", daemon=True)
        self._thread.start()
        return self

    transient = OSError  # what a renewal may fail with and be tried again at the next tick

    def _renew_forever(self):
        interval = max(self.stale_after / 5, 0.05)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except self.transient as error:
                self.renew_failed(error)
            if self.lost:
                return

    def renew_failed(self, error):
        """A renewal failed (a file server hiccup): said; the next tick tries again."""
        log.warning("could not renew the lease %s: %s", self.path, error)

    def renew(self):
        """Touch the lease if it is still ours; else note who holds it now. A read that
        fails (a file server's hiccup) raises OSError: it proves nothing, so the caller
        tries again later instead of giving the trial up."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            holder = None  # the study's folder went away: nothing here is ours to write
        except ValueError:
            holder = {}  # not a lease this worker wrote
        if not holder or holder.get("token") != self.token:
            self.lost = holder or {"host": "?", "pid": "?"}
            return False
        now = time.time()
        os.utime(self.path, (now, now))
        return True

    def check(self):
        """Raise LeaseLost when another worker holds this trial now (before every write)."""
        if self.lost is None:
            with contextlib.suppress(OSError):
                self.renew()
        if self.lost is not None:
            raise self.lost_error()

    def lost_error(self):
        """The LeaseLost that says who holds the trial now."""
        holder = self.lost
        return LeaseLost(f"trial {self.path.parent.name} was taken over by {holder.get('host')} (pid "
                         f"{holder.get('pid')}) after this worker was not heard from for {self.stale_after:g} s "
                         f"(--stale-after); it writes nothing more there")

    def release(self):
        """Stop renewing and, when the lease is still ours, remove it, so that the next
        worker resumes the trial at once instead of waiting --stale-after (a stop that
        saved last.pth: SIGTERM from the scheduler, Ctrl+C)."""
        self.stop()
        holder = read(self.path)
        if holder is not None and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def stop(self):
        """Stop renewing (the trial is over, or its owner stops); the file stays."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def read(path):
    """The lease record at `path`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def age(path):
    """Seconds since the lease at `path` was last renewed, or None when there is none."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def is_stale(run_dir, stale_after):
    """Whether the trial in `run_dir` has no live owner: no lease (released, or its owner
    died before writing one: the caller holds the study lock, under which leases are
    written), one not renewed for `stale_after` seconds, or one whose owner ran on this
    machine, in this PID namespace, and is no longer running (a worker restarted after a
    crash takes its trials back at once instead of waiting --stale-after)."""
    seconds = age(run_dir / LEASE)
    return seconds is None or seconds > stale_after or owner_is_gone(read(run_dir / LEASE))


def owner_is_gone(record):
    """True when the lease `record` names a process of this machine and PID namespace that
    no longer exists; False when it is alive or cannot be told from here (another machine,
    another container: then only the lease's age tells). A reused PID reads as alive, which
    errs on the safe side."""
    if not record or record.get("host") != socket.gethostname() or record.get("pid_namespace") != pid_namespace():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return False
