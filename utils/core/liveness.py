"""Is the process that holds a lock still there? A holder is named by `identity()`: host,
boot, PID namespace and pid. A process of this machine, boot and PID namespace can be
judged at once (no such process, or a zombie: gone); one on another machine or in another
container cannot, and only the age of its last sign of life tells (the callers decide how
long to wait). Used by the sweep's journal lock and trial leases and by the run lock."""
import errno
import logging
import os
import socket
import uuid

log = logging.getLogger(__name__)


def identity(pid=None):
    """host|boot id|pid namespace|pid of this process: unique while it lives."""
    return "|".join((socket.gethostname(), read_text("/proc/sys/kernel/random/boot_id"), pid_namespace(),
                     str(os.getpid() if pid is None else pid)))


def is_gone(holder):
    """Whether the identity text `holder` names a process of this machine, boot and pid
    namespace that no longer runs. False whenever that cannot be told (another machine, an
    identity without a boot id or namespace)."""
    host, boot, namespace, pid = (holder.split("|") + ["", "", "", ""])[:4]
    here = identity().split("|")
    if not boot or not namespace or [host, boot, namespace] != here[:3] or not pid.isdigit():
        return False
    return not is_running(int(pid))


def is_running(pid, started=None):
    """Whether process `pid` of this machine runs: it exists, is no zombie (killed, not yet
    reaped) and, when `started` (its start_ticks) is given, is the process that started then
    and not a later one that was given the same pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except (OSError, OverflowError):
        return False
    fields = read_text(f"/proc/{pid}/stat").rpartition(")")[2].split()
    if fields[:1] == ["Z"]:
        return False
    return started is None or len(fields) < 20 or fields[19] == str(started)


def start_ticks(pid=None):
    """When process `pid` (default this one) started, in clock ticks since boot (field 22
    of /proc/<pid>/stat), or None where there is no /proc: with the pid, it names one process."""
    fields = read_text(f"/proc/{os.getpid() if pid is None else pid}/stat").rpartition(")")[2].split()
    return int(fields[19]) if len(fields) >= 20 and fields[19].isdigit() else None


def pid_namespace():
    """This process's PID namespace ('pid:[4026531836]'), or '' where there is no /proc:
    two containers may share a host name but not a PID namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def read_text(path):
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def take_away(path, text, read):
    """Move away the lock at `path` that was judged to hold `text` (its holder is gone);
    True when the moved lock was that one. `read(path)` gives a lock's text. Checked twice:
    the lock must still hold `text` just before it is moved, and the moved lock must be the
    one judged; a live lock moved by mistake (another waiter broke the dead one and took the
    lock in between) is linked back."""
    moved = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.broken"
    try:
        if read(path) != text:
            return False
        os.rename(path, moved)
    except OSError:
        return False
    try:
        if read(moved) == text:
            return True
        os.link(moved, path, follow_symlinks=False)  # a live lock taken meanwhile: put it back
        return False
    except OSError as error:
        if error.errno != errno.EEXIST:
            log.warning("could not put back the lock %s: %s", path, error)
        return False
    finally:
        try:
            os.unlink(moved)
        except OSError:
            pass
