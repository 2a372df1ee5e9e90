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
from pathlib import Path

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
