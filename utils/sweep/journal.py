"""The study journal (optuna.journal), made safe to append to on an unlucky cluster.

Optuna's JournalFileBackend appends one JSON line per operation under a file lock. A worker
killed in the middle of an append (or one whose disk fills up there) leaves a cut last line.
Optuna's reader skips a cut last line, but the next append lands right after it, and from then
on every reader fails on the merged line: the whole study, every finished trial's record, is
unreadable. `Journal` is that backend with three changes:

- Before each append, under the journal's lock, a cut last line (bytes after the last
  newline) is removed; its bytes go to `optuna.journal.cut` beside it, and one warning says so.
- An append that fails (ENOSPC, EIO, a quota) truncates the file back to where it began, so
  the journal stays readable, and raises JournalWriteError (one line, exit 1).
- A line that is not a record is an error that names the line and `sweep --repair`, instead
  of a JSONDecodeError traceback; the reader creates no file (read-only commands write nothing).

`repair` rewrites a journal broken in the middle (by an older runner, a hand edit, a disk):
every record that still decodes, in order (one that an old append merged into a cut line is
recovered from it), with the original backed up first.
"""
import contextlib
import errno
import json
import logging
import os
import time
from pathlib import Path

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._storage import JournalOperation, JournalStorageReplayResult

from configs.schema import FIELDS
from utils.core import faults
from utils.core.errors import UserError, plural
from utils.core.io import OutputError, atomic_open
from utils.engine import runtime
from utils.sweep.lock import OwnedLock

log = logging.getLogger(__name__)
CUT = ".cut"  # suffix of the side file that keeps removed cut lines
BROKEN = ".broken-"  # suffix (+ time) of the backup `repair` makes
_RECORD_START = b'{"op_code":'  # how Optuna writes every record (json.dumps, compact separators)
_OPERATIONS = {int(op) for op in JournalOperation}


class JournalWriteError(OutputError):
    """An append to the journal failed (full disk, I/O error); the journal is as it was."""


class JournalDamaged(UserError):
    """A complete line of the journal is not a record: `sweep --repair` mends it."""


class Journal(JournalFileBackend):
    """Optuna's journal file backend at `path`, with cut-line removal, rollback of a failed
    append and one-line errors (see the module's docstring)."""

    def __init__(self, path):
        # Not Optuna's __init__: it creates the file, and `sweep --summary` or `runs` must
        # create nothing. The first append creates it.
        self._file_path = str(path)
        self._lock = OwnedLock(self._file_path)  # a killed holder is seen at once (lock.py)
        self._log_number_offset = {0: 0}

    @property
    def path(self):
        return Path(self._file_path)

    # -- reading ------------------------------------------------------------------------------
    def read_logs(self, log_number_from):
        try:
            handle = open(self._file_path, "rb")
        except FileNotFoundError:
            return  # no journal yet: an empty study storage
        except IsADirectoryError:
            raise UserError(f"{self._file_path} is a folder; it must be the study's journal file: move the folder "
                            f"away") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size  # what was written before this read began
            start = log_number_from if log_number_from in self._log_number_offset else 0
            position = self._log_number_offset[start]
            handle.seek(position)
            for number, line in enumerate(handle, start=start):
                if position + len(line) > size or not line.endswith(b"\n"):
                    break  # being appended now, or cut by a killed writer (the next append removes it)
                record = decode(line)
                if record is None:
                    raise JournalDamaged(self.damage_message(number + 1))
                position += len(line)
                self._log_number_offset.setdefault(number + 1, position)
                if number >= log_number_from:
                    yield record

    def damage_message(self, line):
        command = f"{study_command(self.path.parent)} --repair"
        return (f"the study journal {self.path} is damaged: line {line} is not an Optuna record; `{command}` keeps "
                f"every readable record in order and backs the file up first")

    # -- appending ----------------------------------------------------------------------------
    def append_logs(self, logs):
        payload = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in logs).encode("utf-8")
        with held(self._lock, self._file_path):
            try:
                fd = os.open(self._file_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise JournalWriteError(f"cannot append to {self._file_path}: {_reason(error)}") from None
            try:
                end = self._drop_cut_line(fd)
                try:
                    os.lseek(fd, end, os.SEEK_SET)
                    half = len(payload) // 2
                    _write_all(fd, payload[:half])
                    faults.at_append(lambda: os.fsync(fd))  # the fault hook's moment: inside the append
                    _write_all(fd, payload[half:])
                    os.fsync(fd)
                except OSError as error:
                    rolled_back = _truncate(fd, end)
                    kept = ("the journal is kept as it was" if rolled_back else
                            "the cut record it left is removed by the next append")
                    raise JournalWriteError(f"cannot append to {self._file_path}: {_reason(error)}; {kept}") from None
            finally:
                os.close(fd)

    def _drop_cut_line(self, fd):
        """Remove bytes after the last newline (a record cut by a killed writer), keeping
        them in the side file; returns where the next record begins."""
        size = os.fstat(fd).st_size
        end = _after_last_newline(fd, size)
        if end == size:
            return end
        cut = os.pread(fd, size - end, end)
        side = self._file_path + CUT
        try:
            with open(side, "ab") as handle:
                handle.write(cut + b"\n")
            kept = f"its bytes are in {side}"
        except OSError as error:
            kept = f"its bytes could not be kept ({_reason(error)})"
        if not _truncate(fd, end):
            raise JournalWriteError(f"cannot remove the cut last record of {self._file_path}; nothing was appended")
        log.warning("the study journal %s ended in a cut record (%s, from a worker stopped while writing it): "
                    "removed before appending; %s", self._file_path, plural(len(cut), "byte"), kept)
        return end


def study_command(study_dir):
    """`python main.py sweep --study=S [--checkpoint-dir=D]` of the study in `study_dir`."""
    study_dir = Path(study_dir)
    where = "" if str(study_dir.parent) == FIELDS["checkpoint_dir"].default else f" --checkpoint-dir={study_dir.parent}"
    return f"{runtime.main_command()} sweep --study={study_dir.name}{where}"


def decode(line):
    """The record a journal line holds (a dict with a known op_code), or None."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return None
    if not isinstance(record, dict) or record.get("op_code") not in _OPERATIONS or "worker_id" not in record:
        return None
    return record


def salvage(line):
    """A record at the end of a line that is not one (an old append that landed after a cut
    line), or None."""
    start = line.find(_RECORD_START, 1)
    while start != -1:
        record = decode(line[start:])
        if record is not None:
            return record
        start = line.find(_RECORD_START, start + 1)
    return None


def repair(path):
    """Rewrite the journal at `path` with every record that still decodes and replays, in
    order, after backing the original up beside it; returns the line to print."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        raise UserError(f"no journal to repair at {path}" + (" (a folder is there)" if path.is_dir() else ""))
    with held(OwnedLock(str(path)), path):
        original = path.read_bytes()
        kept, salvaged, dropped = [], 0, []
        replay = JournalStorageReplayResult("repair-")
        for number, line in enumerate(original.splitlines(keepends=True), start=1):
            record = decode(line) if line.endswith(b"\n") else None
            if record is None and line.endswith(b"\n"):
                record = salvage(line)
                salvaged += record is not None
            try:
                if record is None:
                    raise ValueError
                replay.apply_logs([record])  # a record Optuna cannot replay is dropped too
            except Exception:  # noqa: BLE001 - any failure means "not a usable record"
                dropped.append(number)
                continue
            kept.append(json.dumps(record, separators=(",", ":")) + "\n")
        if not dropped and not salvaged:
            return f"{path} is intact: {plural(len(kept), 'record')}, nothing to repair"
        backup = path.with_name(path.name + BROKEN + time.strftime("%Y%m%d-%H%M%S"))
        with atomic_open(backup, "wb") as handle:
            handle.write(original)
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(kept))
    lines = ", ".join(map(str, dropped[:10])) + (", ..." if len(dropped) > 10 else "")
    return (f"repaired {path}: kept {len(kept)} of {len(kept) + len(dropped)} records"
            + (f" ({salvaged} recovered from behind a record cut by a killed writer, which is lost)" if salvaged else "")
            + (f", dropped {plural(len(dropped), 'line')} that {'holds' if len(dropped) == 1 else 'hold'} no record "
               f"(line {lines})" if dropped else "")
            + f"; the original is saved as {backup}")


@contextlib.contextmanager
def held(lock, path):
    """Optuna's file `lock` (of the file `path`) held inside: taking it fails as one line
    (a full disk or a read-only folder cannot take a new lock file), and a lock that another
    process broke meanwhile (after Optuna's 30 s grace period) is a warning, not a crash
    after the work is done."""
    try:
        lock.acquire()
    except OSError as error:
        raise OutputError(f"cannot create the lock file {path}.lock: {_reason(error)}; nothing was written") from None
    try:
        yield
    finally:
        try:
            lock.release()
        except RuntimeError:
            log.warning("the lock of %s was broken by another process while this one held it (it held it longer than "
                        "Optuna's 30 s grace period)", path)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _after_last_newline(fd, size, chunk=1 << 16):
    """The offset just past the last newline of the file (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found != -1:
            return start + found + 1
        end = start
    return 0


def _truncate(fd, size):
    """Cut the file back to `size` bytes and make it durable; False when that failed too."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
        return True
    except OSError:
        return False


def _reason(error):
    return (error.strerror or str(error) or errno.errorcode.get(error.errno, "")).lower()
