"""One writer per run dir: a lock that a live process holds and a killed one does not.

The lock of run dir `<folder>/<run>` is `<folder>/.<run>.lock`, beside the run dir (so a run
dir copied, moved or removed carries no lock with it): a small file whose text names its
holder as JSON (host, boot, PID namespace, pid and the process's start time, when it took
the lock, its command). It is written whole under another name and hard-linked into place;
link() fails when the lock exists, also over NFS, so two processes starting together cannot
both take it and nobody reads half a record. Every command that writes into a run dir holds it: train
(new runs, resumes, --resume=auto restarts, a sweep's trials, reproduce's scratch runs) for
the whole run; test, generate and export while they write their file there.

Whether a holder is still there follows the rules of the sweep's locks (utils/core/liveness.py):
- a holder on this machine, boot and PID namespace is judged at once: when its pid no
  longer runs (or is a zombie, or was given to a later process) its lock is taken over;
  while it runs, the lock is its own, even stopped (Ctrl+Z): the message names its pid;
- a holder that cannot be judged from here (another machine sharing the folder, another
  container) touches the lock's time every STALE / 5 seconds (a daemon thread); a lock not
  touched for STALE seconds belongs to a process that is gone (a lost node) and is taken
  over. A sweep's trial passes its --stale-after instead, which also covers a worker of
  this machine frozen that long, as the trial's lease does (utils/sweep/lease.py).
Taking over moves the lock away, checks that the moved lock is the one judged and puts it
back otherwise (another process was first): the journal lock's way (utils/sweep/lock.py).
A holder whose lock was taken over (it was frozen past the limit) finds out at its next
heartbeat and writes nothing more (`check` raises WriterLost before every write).

Within one process the lock is re-entrant (reproduce holds its scratch run's lock and the
engine takes it again), and `release_all` (main.py, at the end of every command) lets go of
whatever a command still holds. Machines sharing a run folder keep their clocks in step.
"""
import json
import logging
import os
import shlex
import socket
import stat
import sys
import threading
import time
from pathlib import Path

from utils.core.errors import UserError, shorten
from utils.core.liveness import is_running, pid_namespace, read_text, start_ticks, take_away

log = logging.getLogger(__name__)
STALE = 120.0  # seconds a holder this process cannot judge may be silent before it counts as gone
_HELD = {}  # lock path -> RunLock of this process


class RunBusy(UserError):
    """Another live process writes the run dir."""


class WriterLost(UserError):
    """This process's lock was taken over (it was not heard from for too long): the run dir
    is another process's now, so nothing more may be written to it."""
    fenced = True  # the engine writes nothing more to the run dir (no status, no clean-up)


def lock_path(run_dir):
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.parent / f".{run_dir.name}.lock"


def _machine():
    return {"host": socket.gethostname(), "boot": read_text("/proc/sys/kernel/random/boot_id"), "ns": pid_namespace()}


def _record():
    command = f"{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}".strip()
    return {**_machine(), "pid": os.getpid(), "started": start_ticks(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shorten(command, 120)}


def _parse(text):
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def judge(holder, age, stale_after=None):
    """Why the lock's `holder` (its record; {} for a file this runner did not write) no
    longer holds it, silent for `age` seconds, or None while it does."""
    limit = stale_after or STALE
    local = bool(holder) and all(holder.get(key) == value for key, value in _machine().items()) and \
        isinstance(holder.get("pid"), int) and holder["boot"] and holder["ns"]
    if local:
        if not is_running(holder["pid"], holder.get("started")):
            return f"its process (pid {holder['pid']}) is gone"
        if stale_after is None:
            return None
    return f"it was not heard from for {age:.0f} s" if age > limit else None


def describe(holder, age=None):
    """'pid 123 on host gpu1, since 2026-12-07 10:00:01 (main.py train --env=x)'."""
    if not holder:
        return "a process this runner cannot name (the lock is not one it wrote)"
    silent = f", last heard from {age:.0f} s ago" if age is not None and holder.get("host") != socket.gethostname() else ""
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')} "
            f"({holder.get('command')}){silent}")


class RunLock:
    """This process's hold on one run dir (see the module); made by `acquire`."""

    def __init__(self, run_dir, stale_after=None):
        self.run_dir, self.path, self.stale_after = Path(os.path.abspath(run_dir)), lock_path(run_dir), stale_after
        self.text = json.dumps(_record())
        self.count, self.lost = 0, None  # lost: the new holder's record, once taken over
        self._stop = threading.Event()
        self._thread = None

    @property
    def interval(self):
        return max((self.stale_after or STALE) / 5, 0.05)

    def _take(self, patient, hint):
        deadline, said, failed = time.monotonic() + (self.stale_after or STALE) + self.interval, False, 0
        while True:
            try:
                if self._place():
                    return
            except OSError as error:
                raise UserError(f"cannot lock run {self.run_dir.name}: cannot write in {self.path.parent}: "
                                f"{(error.strerror or str(error)).lower()}") from None
            try:
                seen, age = _read(self.path)
            except FileNotFoundError:
                continue  # released in between: try again at once
            except OSError:
                raise UserError(f"{self.path} is in the way of run {self.run_dir.name}'s lock (it is not a file the "
                                f"runner made); remove it, then run this again") from None
            holder = _parse(seen)
            why = judge(holder, age, self.stale_after)
            if why is not None:
                if self._break(seen):
                    log.warning("took over run %s from %s: %s", self.run_dir.name, describe(holder), why)
                    continue
                failed += 1  # another process took it meanwhile (judged again next), or it cannot be moved
                if failed > 100:
                    raise UserError(f"cannot take over {self.path} from a process that is gone ({why}): it cannot be "
                                    f"moved; remove it by hand, then run this again")
                time.sleep(0.01)
                continue
            # --resume=auto (a restart by torchrun, SLURM, Kubernetes) waits out a holder that
            # has gone silent and cannot be judged from here: its machine may be the one lost.
            silent = age > 2 * self.interval and judge(holder, float("inf"), self.stale_after) is not None
            if not (patient and silent and time.monotonic() < deadline):
                raise RunBusy(busy_message(self.run_dir, holder, age, hint))
            if not said:
                log.info("waiting for run %s: its lock is held by %s; taken over once it has been silent for %.0f s",
                         self.run_dir.name, describe(holder, age), self.stale_after or STALE)
                said = True
            time.sleep(min(self.interval, 1.0))

    def _place(self):
        """Put this process's lock in place: True, or False when a lock is there already."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = self.path.with_name(f"{self.path.name}.{os.getpid()}.{time.monotonic_ns()}.new")
        try:
            written.write_text(self.text, encoding="utf-8")
            os.link(written, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            try:
                os.unlink(written)
            except OSError:
                pass

    def _break(self, text):
        """Move the lock `text` away; True when it was that lock (liveness.take_away)."""
        return take_away(self.path, text, lambda path: _read(path)[0])

    def _beat(self):
        while not self._stop.wait(self.interval):
            self.renew()
            if self.lost is not None:
                return

    def renew(self):
        """Touch the lock while it is ours; note the new holder when it is not. A lock removed
        by hand is made again: the run is still this process's."""
        try:
            seen = _read(self.path)[0]
        except FileNotFoundError:
            try:
                self._place()
            except OSError:
                pass
            return
        except OSError:
            return  # a file server's hiccup proves nothing: the next beat tries again
        if seen != self.text:
            self.lost = _parse(seen) or {"pid": "?", "host": "?"}
            return
        try:
            os.utime(self.path)
        except OSError as error:
            log.warning("could not renew the lock %s: %s", self.path, error)

    def check(self):
        """Raise WriterLost when another process holds the run now (before every write)."""
        if self.lost is None:
            self.renew()
        if self.lost is not None:
            raise WriterLost(f"run {self.run_dir.name} was taken over by {describe(self.lost)} after this process was "
                             f"not heard from for {self.stale_after or STALE:g} s; it writes nothing more there")

    def release(self):
        """Let go (the last of this process's holds): the lock is removed while it is ours."""
        self.count -= 1
        if self.count > 0:
            return
        _HELD.pop(str(self.path), None)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            if _read(self.path)[0] == self.text:
                os.unlink(self.path)
        except OSError:
            pass


def acquire(run_dir, stale_after=None, patient=False, hint=""):
    """This process's RunLock of `run_dir`, taken (RunBusy naming the holder when another
    live process has it, with `hint`: '; or ...') or, when this process holds it already,
    held once more. `patient` (--resume=auto) waits for a silent holder that cannot be
    judged from here."""
    path = str(lock_path(run_dir))
    lock = _HELD.get(path)
    if lock is None:
        lock = RunLock(run_dir, stale_after)
        lock._take(patient, hint)
        _HELD[path] = lock
        lock._thread = threading.Thread(target=lock._beat, name="run-lock", daemon=True)
        lock._thread.start()
    lock.count += 1
    return lock


def release_all():
    """Let go of every lock this process holds (the end of a command)."""
    for lock in list(_HELD.values()):
        lock.count = 1
        lock.release()


def holder(run_dir):
    """The record of the process holding `run_dir` now, or None (no lock, or its holder gone)."""
    try:
        seen, age = _read(lock_path(run_dir))
    except OSError:
        return None
    record = _parse(seen)
    return None if judge(record, age) is not None else record


def _read(path):
    """(text, seconds since it was last touched) of the lock file at `path`; OSError when it
    is no regular file (a folder or a FIFO in its place: never opened, a FIFO would block)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise IsADirectoryError(21, "not a regular file", str(path))
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read(4096), time.time() - os.fstat(handle.fileno()).st_mtime


def busy_message(run_dir, holder_record, age=None, elsewhere=""):
    """The one line that says run_dir is another live process's."""
    stop = f"kill -INT {holder_record['pid']}: it saves and exits" if holder_record.get("pid") and \
        holder_record.get("host") == socket.gethostname() else "stop it where it runs"
    remote = (f"; if {holder_record.get('host')} is down, its lock is taken over once it has been silent for "
              f"{STALE:.0f} s" if holder_record and holder_record.get("host") != socket.gethostname() else "")
    return (f"run {Path(run_dir).name} is being written by another process: {describe(holder_record, age)}; wait for it "
            f"to end or stop it ({stop}){elsewhere}, then run this again{remote}")
