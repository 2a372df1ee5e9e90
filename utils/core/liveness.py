"""Is the process that holds a lock still there? A holder is named by `identity()`: host,
boot, PID namespace and pid. A process of this machine, boot and PID namespace can be
judged at once (no such process, or a zombie: gone); one on another machine or in another
container cannot, and only the age of its last sign of life tells (the callers decide how
long to wait). Used by the sweep's journal lock and trial leases and by the run lock."""
import os
import socket


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
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return read_text(f"/proc/{pid}/stat").rpartition(")")[2].split()[:1] == ["Z"]  # killed, not yet reaped


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
