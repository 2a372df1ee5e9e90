"""Atomic file writes: a reader (or a crash) never sees a half-written checkpoint or csv."""
import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path, mode="wb", before_replace=None, **kwargs):
    """Open a temp file beside `path`; on clean exit flush, fsync and rename it over `path`.

    The temp file lives in the same directory so `os.replace` is a same-filesystem rename,
    which POSIX makes atomic. On an exception the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(path.parent)


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
