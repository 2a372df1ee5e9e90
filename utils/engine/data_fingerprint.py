"""The data's fingerprint: per data root, its file count, total bytes and a content sha256
(over the sorted relative paths and each file's sha256), and a short digest per file, so a
difference names the files that changed.

Hashing 25,000 images must not hold up the first step: a run hashes beside its training, in
a child process at the lowest CPU priority (`Hasher`), and every file's sha256 is
cached by (path, size, modification time) (utils/core/file_hashes.py), so a second run over
the same folder reads no file (benchmarks/data_hash.py).
"""
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from utils.core.file_hashes import cache_file as _cache_file, read_cache as _read_cache
from utils.core.file_hashes import file_sha256 as _file_sha256
from utils.core.io import atomic_open

log = logging.getLogger(__name__)
SHORT = 16  # hex digits of each file's digest kept in the run's file list


def listing(root):
    """[(relative path, size, mtime_ns, absolute path)] of the regular files under `root`
    (a file: itself), sorted by path; symbolic links to files are followed, to folders not."""
    root = Path(root)
    if root.is_file():
        stat = root.stat()
        return [(root.name, stat.st_size, stat.st_mtime_ns, str(root))]
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in files:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                stat = os.stat(path)
                if os.path.isfile(path):
                    found.append((os.path.relpath(path, root).replace(os.sep, "/"), stat.st_size, stat.st_mtime_ns, path))
    found.sort()
    return found


def fingerprint(root):
    """({"files", "bytes", "sha256"}, {relative path: short digest}) of data root `root`;
    ({"missing": true}, {}) when it does not exist."""
    root = Path(root)
    if not root.exists():
        return {"missing": True}, {}
    entries = listing(root)
    cache_path = _cache_file(root)
    cached = _read_cache(cache_path)
    fresh, whole, files, total = {}, hashlib.sha256(), {}, 0
    for relative, size, mtime, path in entries:
        hit = cached.get(relative)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == size and hit[1] == mtime:
            sha = hit[2]
        else:
            try:
                sha = _file_sha256(path)
            except OSError as error:  # unreadable: its own mark, so the content hash still differs from a readable file
                sha = f"unreadable: {error.strerror or error}"
        fresh[relative] = [size, mtime, sha]
        whole.update(f"{relative}\0{sha}\n".encode())
        files[relative] = sha[:SHORT]
        total += size
    if fresh != cached:
        with contextlib.suppress(OSError):
            with atomic_open(cache_path, "w", encoding="utf-8") as handle:
                json.dump({"root": str(root.resolve()), "files": fresh}, handle)
    return {"files": len(entries), "bytes": total, "sha256": whole.hexdigest()}, files


def split_digest(dataset):
    """sha256 of a split's item identities in split order (data/base.py, identities())."""
    try:
        identities = dataset.identities()
    except AttributeError:  # a torch Dataset outside the protocol: its size says what it can
        identities = list(range(len(dataset)))
    text = json.dumps(identities, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Hasher:
    """Fingerprints `roots` ({name: path}) beside training: `result()` is None until done,
    then ({name: fingerprint}, {name: {file: digest}}). The hashing runs in a child process
    at the lowest CPU priority (nice 19), so it takes the cycles training leaves and never
    the training process's GIL; a thread of this process only waits for it. Where that child
    cannot run, the thread hashes itself. A root that cannot be hashed gets {"error": text}
    and a warning: the run trains on either way."""

    def __init__(self, roots):
        self.roots, self._result = {name: str(root) for name, root in roots.items()}, None
        self._thread = threading.Thread(target=self._work, name="data-fingerprint", daemon=True)
        self._thread.start()

    def _work(self):
        try:
            self._result = _in_child(self.roots)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            log.info("hashing the data in this process (%s)", error)
            self._result = fingerprints(self.roots)

    def result(self, wait=False):
        if wait:
            self._thread.join()
        return self._result


def fingerprints(roots):
    """({name: fingerprint}, {name: {file: digest}}) of `roots`, a failure per root recorded."""
    prints, files = {}, {}
    for name, root in roots.items():
        try:
            prints[name], files[name] = fingerprint(root)
        except Exception as error:  # noqa: BLE001 - a fingerprint is a record, never a reason to stop training
            log.warning("could not fingerprint the data at %s: %s", root, error)
            prints[name], files[name] = {"error": str(error)}, {}
    return prints, files


def _lowest_priority():
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)


def _in_child(roots):
    project = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "utils.engine.data_fingerprint", json.dumps(roots)], cwd=project,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=24 * 3600,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(project),
                                                                                        os.environ.get("PYTHONPATH")]))))
    if done.returncode != 0:
        raise ValueError(f"the hashing process ended with {done.returncode}: {done.stderr.strip()[-300:]}")
    answer = json.loads(done.stdout)
    for name, entry in answer[0].items():
        if "error" in entry:
            log.warning("could not fingerprint the data at %s: %s", roots[name], entry["error"])
    return answer[0], answer[1]


if __name__ == "__main__":  # the Hasher's child: roots as JSON in, the fingerprints as JSON out
    _lowest_priority()  # itself, not in a preexec_fn, which is unsafe in a process with threads
    logging.disable(logging.WARNING)
    print(json.dumps(fingerprints(json.loads(sys.argv[1]))))
