"""Atomic file writes: a reader (or a crash) never sees a half-written checkpoint or csv, and a
write that fails (full disk, read-only folder, a path that is a folder) is one line naming
the file and the OS's reason, with the previous file untouched and no temp file left."""
import contextlib
import os
import socket
import tempfile
from pathlib import Path

from utils.core.errors import UserError


class OutputError(UserError, OSError):
    """A file could not be written; the message names it, the reason and what was kept.
    Still an OSError, for code that handles any failed write."""


@contextlib.contextmanager
def atomic_open(path, mode="wb", before_replace=None, **kwargs):
    """Open a temp file beside `path`; on clean exit flush, fsync and rename it over `path`.

    The temp file lives in the same directory so `os.replace` is a same-filesystem rename,
    which POSIX makes atomic. On an exception the temp file is removed and `path` is untouched;
    an OSError becomes an OutputError. The file gets the mode the umask gives a new file
    (mkstemp's own 0600 would hide results from the group that shares a machine).
    """
    path = Path(path)
    temp_name = None
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder, not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(temp_name, path)
    except BaseException as error:
        if temp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            kept = f"the previous {path.name} is kept" if path.is_file() else "nothing was written"
            reason = (error.strerror or str(error)).lower()
            if isinstance(error, (FileExistsError, NotADirectoryError)) or (error.filename and error.filename != str(path)
                                                                             and Path(error.filename) in path.parents):
                reason = f"{reason} ({error.filename})" if error.filename else reason
            raise OutputError(f"cannot write {path}: {reason}; {kept}") from None
        raise
    _fsync_directory(path.parent)


def current_umask():
    """The process umask, read without changing it where Linux allows (os.umask can only set)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sqlite_problem(path, folder_must_exist=True):
    """Why `path` cannot be an SQLite database file (a sweep's --storage, MLflow's store), or
    None: a folder, under a file, in a folder that does not exist (SQLAlchemy would fail, or
    MLflow make it unseen: a typo would start a new store), or a file that is no SQLite
    database. `folder_must_exist` false: a missing folder is made by the caller."""
    path = Path(path)
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    if path.is_dir():
        return f"{path} is a folder; give a file in it ({path / 'study.db'})"
    if path.is_file():
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header and header != b"SQLite format 3\x00":
            return f"{path} is not an SQLite database; give another file"
    elif folder_must_exist and not path.parent.is_dir():
        return f"the folder {path.parent} does not exist; create it, or give another file"
    return None


TEMP_PATTERN = ".*.tmp"  # what atomic_open leaves behind when the process is killed mid-write


def remove_temp_files(directory):
    """Delete the temp files that killed writers left in `directory`; returns (count, bytes)."""
    count = size = 0
    for leftover in Path(directory).glob(TEMP_PATTERN):
        with contextlib.suppress(OSError):
            size += leftover.stat().st_size
            leftover.unlink()
            count += 1
    return count, size


def _fsync_directory(directory):
    # Makes the rename itself durable across a power cut (the entry lives in the directory).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def network_timeout(seconds):
    """Downloads inside (torchvision's weights and data sets) give up after `seconds` without
    an answer, so offline is a clear error soon, not a hang; the previous default returns."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
