"""Each data file's sha256, cached by (path, size, modification time), so that a second
look at the same folder reads no file: the data fingerprint of every run
(utils/engine/data_fingerprint.py) and the decoded-image cache's key (data/image_cache.py)
share it. One JSON file per data root in <cache>/data-hashes/; the cache folder is
$RUNNER_CACHE_DIR, else $XDG_CACHE_HOME/the-runner, else ~/.cache/the-runner. A cache file
that cannot be read or written only costs time.
"""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from utils.core.io import atomic_open

CHUNK = 1 << 20


def cache_dir():
    if os.environ.get("RUNNER_CACHE_DIR"):
        return Path(os.environ["RUNNER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "the-runner"


def file_sha256(path):
    """The sha256 (hex) of the file at `path`, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def cache_file(root):
    """The hash cache of data root `root`: {relative path: [size, mtime_ns, sha256]} under "files"."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "data-hashes" / f"{key}.json"


def read_cache(path):
    """The "files" table of hash cache `path`, or {} when it is missing or damaged."""
    try:
        cached = json.loads(Path(path).read_text(encoding="utf-8"))
        return cached["files"] if isinstance(cached.get("files"), dict) else {}
    except (OSError, ValueError, AttributeError, KeyError):
        return {}


def digests(root, relatives, workers=4):
    """[sha256 of root/<relative> for each of `relatives`], from the cache where a file's
    size and modification time are those cached, else read (in `workers` threads: hashlib
    lets go of the GIL) and added to the cache, which keeps its other entries."""
    root = Path(root)
    path = cache_file(root)
    cached = read_cache(path)
    stats = [os.stat(root / relative) for relative in relatives]
    missing = [index for index, (relative, stat) in enumerate(zip(relatives, stats))
               if not (isinstance(cached.get(relative), list) and len(cached[relative]) == 3
                       and cached[relative][:2] == [stat.st_size, stat.st_mtime_ns])]
    if missing:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            read = list(pool.map(file_sha256, [root / relatives[index] for index in missing]))
        for index, sha in zip(missing, read):
            cached[relatives[index]] = [stats[index].st_size, stats[index].st_mtime_ns, sha]
        try:
            with atomic_open(path, "w", encoding="utf-8") as handle:
                json.dump({"root": str(root.resolve()), "files": cached}, handle)
        except OSError:
            pass  # only costs time next run
    return [cached[relative][2] for relative in relatives]
