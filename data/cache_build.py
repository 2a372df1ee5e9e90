"""A decoded-image cache's files (data/image_cache.py): their format, listing them (`cache
--list`), and building a cache once, whoever asks for it first.

One process builds, under an exclusive lock (flock on <cache>/lock: the kernel lets go of it
when the holder dies, kill -9 included); the others wait for it, then read what it built.
The builder reads every image's header first, so the file's size is known: it is checked
against the free disk space and reserved (posix_fallocate) before anything is decoded, and
a full disk is one line at the start instead of a crash (SIGBUS, ENOSPC) in the middle. The
images are decoded in threads (Pillow and torch let go of the GIL) and written in order;
after every chunk `building.json` records how many are done, so a build killed half-way
goes on from there at the next start. `index.json` is written last, atomically, after an
fsync of the pixels: only a complete cache has one. A build that fails on the disk (full,
an I/O error) removes what it wrote.
"""
import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from data.readable import open_image
from data.transforms import short_side_pixels
from utils.core import faults
from utils.core.errors import plural
from utils.core.io import OutputError, atomic_open

log = logging.getLogger(__name__)
FORMAT = 1  # of pixels.u8 + index.json; a cache of another format is another key (rebuilt)
INDEX, PIXELS, PROGRESS, LOCK = "index.json", "pixels.u8", "building.json", "lock"
SHARE_OF_FREE = 0.5  # --cache=auto leaves at least half the free disk to checkpoints and the rest
CHUNK_SECONDS = 2.0  # building.json is written about this often (and after at most CHUNK images)
CHUNK = 256
DISK_ERRORS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def dims(width, height, side, upscale):
    """(height, width) of an image of `width` x `height` once stored with short side `side`
    (transforms.short_side_pixels)."""
    factor = side / min(width, height)
    if factor >= 1 and not upscale:
        return height, width
    return max(1, round(height * factor)), max(1, round(width * factor))


def _header(path, side, upscale):
    with open_image(path) as image:
        return dims(*image.size, side, upscale)


def _decode(path, side, upscale):
    with open_image(path) as image:
        return short_side_pixels(image, side, upscale).numpy()


@contextlib.contextmanager
def locked(directory, report_every=60.0):
    """Hold `directory`'s build lock; while another process holds it, wait, saying so at
    once and then every `report_every` seconds with the builder's progress (a builder that
    stands still, stopped or frozen, is visible as such: kill it, or give --cache=off)."""
    handle = open(directory / LOCK, "a+b")  # noqa: SIM115 - held across the yield
    try:
        said = None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if said is None or time.monotonic() - said >= report_every:
                    progress = read_progress(directory)
                    log.info("image cache: %s for pid %s, which is building %s (%s images done)",
                             "waiting" if said is None else "still waiting", progress.get("pid", "?"), directory,
                             progress.get("done", 0))
                    said = time.monotonic()
                time.sleep(0.2)
        yield
    finally:
        handle.close()


def build(directory, root, relatives, contents, params, key, explicit, workers):
    """Build the cache of the images `root`/<relatives> (with these content sha256s) into
    `directory`, unless another process did while this one waited. Raises Unavailable (too
    little disk, a folder that cannot be written); a bad image is the usual one-line error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with locked(directory):
            if (directory / INDEX).is_file():
                return  # built by the process this one waited for
            stale = stale_of(directory.parent, root, params, key)
            if stale:
                log.info("image cache: the data in %s changed since %s was built: %s; building a new cache", root,
                         stale[0][0].name, changes(stale[0][1], relatives, contents))
            try:
                _build(directory, root, relatives, contents, params, key, explicit, max(1, workers or os.cpu_count() or 1))
            except OSError:
                for name in (PIXELS, PROGRESS):  # nothing half-written is kept
                    with contextlib.suppress(OSError):
                        (directory / name).unlink()
                raise
    except OSError as error:
        if isinstance(error, OutputError):  # an atomic write's own one line
            raise Unavailable(f"{error.args[0].split('; ')[0]}; nothing of the cache is kept") from None
        if error.errno not in DISK_ERRORS:
            raise
        raise Unavailable(f"cannot write {error.filename or directory}: {(error.strerror or str(error)).lower()}; "
                          f"nothing of the cache is kept") from None
    for old, _ in stale:
        shutil.rmtree(old, ignore_errors=True)  # a reader that mapped it keeps its pages until it ends
        log.info("image cache: removed %s (the data's earlier content)", old)


def _build(directory, root, relatives, contents, params, key, explicit, workers):
    started = time.perf_counter()
    side, upscale, paths = params["side"], params["upscale"], [root / relative for relative in relatives]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shapes = list(pool.map(lambda path: _header(path, side, upscale), paths, chunksize=64))
    offsets, total = [], 0
    for height, width in shapes:
        offsets.append(total)
        total += height * width * 3
    progress = read_progress(directory)
    done = progress.get("done", 0) if progress.get("key") == key and progress.get("bytes") == total else 0
    pixels_path = directory / PIXELS
    with contextlib.suppress(OSError):
        if not done:
            pixels_path.unlink()
    held = pixels_path.stat().st_blocks * 512 if pixels_path.exists() else 0
    free = shutil.disk_usage(directory).free
    budget = free if explicit else free * SHARE_OF_FREE
    if total - held > budget:
        raise Unavailable(f"the cache of {plural(len(paths), 'image')} needs {megabytes(total)} and {directory.parent} has "
                          f"{megabytes(free)} free" + ("" if explicit else " (auto uses at most half)") +
                          "; free some space, or give --cache=<a folder on a larger disk>")
    log.info("image cache: %s %s: %s at short side %d px, %s (%s free)", "going on with" if done else "building",
             directory, plural(len(paths), "image"), side, megabytes(total), megabytes(free))
    handle = os.open(pixels_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if hasattr(os, "posix_fallocate"):  # Linux: the whole file's blocks now, so a full disk fails here
            os.posix_fallocate(handle, 0, total)
        bar = tqdm(total=len(paths), initial=done, desc="image cache", unit="img", disable=not sys.stderr.isatty(),
                   dynamic_ncols=True, leave=False)
        chunk = max(1, min(CHUNK, len(paths) // 8))  # a few records even for a small data set
        with ThreadPoolExecutor(max_workers=workers) as pool:
            while done < len(paths):
                chunk_started, end = time.perf_counter(), done
                while end < len(paths) and end - done < chunk and time.perf_counter() - chunk_started < CHUNK_SECONDS:
                    batch = range(end, min(len(paths), end + workers * 4, done + chunk))
                    for index, array in zip(batch, pool.map(lambda i: _decode(paths[i], side, upscale), batch)):
                        if array.shape[:2] != shapes[index]:
                            raise ValueError(f"{paths[index]} decoded to {array.shape[:2]}, its header said {shapes[index]}")
                        os.pwrite(handle, array.tobytes(), offsets[index])
                    end = batch.stop
                    bar.update(len(batch))
                done = end
                with atomic_open(directory / PROGRESS, "w", encoding="utf-8") as out:
                    json.dump({"key": key, "bytes": total, "done": done, "pid": os.getpid()}, out)
                faults.at_cache_progress(directory)
        bar.close()
        os.fsync(handle)
    finally:
        os.close(handle)
    index = {"format": FORMAT, "key": key, "root": str(root), "params": params, "bytes": total,
             "built": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.perf_counter() - started, 1),
             "images": [[relative, content[:16], offset, height, width]
                        for relative, content, offset, (height, width) in zip(relatives, contents, offsets, shapes)]}
    with atomic_open(directory / INDEX, "w", encoding="utf-8") as out:
        json.dump(index, out, separators=(",", ":"))
    with contextlib.suppress(OSError):
        (directory / PROGRESS).unlink()
    seconds = time.perf_counter() - started
    log.info("image cache: built %s in %.1f s (%.0f images/s)", directory.name, seconds, len(paths) / max(seconds, 1e-9))


class Unavailable(Exception):
    """Why a cache cannot be built here (too little disk, a folder that cannot be written)."""


def megabytes(count):
    return f"{count / 1e6:,.1f} MB" if count < 1e9 else f"{count / 1e9:,.2f} GB"


def read_progress(directory):
    """What an unfinished build in `directory` recorded ({"done", "pid", ...}), or {}."""
    try:
        found = json.loads((Path(directory) / PROGRESS).read_text(encoding="utf-8"))
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def caches(folder):
    """[(cache folder, index or None while unfinished)] under `folder`, by name."""
    found = []
    for directory in sorted(Path(folder).glob("*-*px-*")) if Path(folder).is_dir() else []:
        if directory.is_dir():
            try:
                index = json.loads((directory / INDEX).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                index = None
            found.append((directory, index if isinstance(index, dict) else None))
    return found


def stale_of(folder, root, params, key):
    """The finished caches in `folder` of the same data folder and decode parameters as key
    `key` but another content: what a new build replaces."""
    return [(directory, index) for directory, index in caches(folder)
            if index and index.get("root") == str(root) and index.get("params") == params and index.get("key") != key]


def changes(index, relatives, contents):
    """'1 changed (cat.3.jpg), 2 added (...)': how the data differs from a cache's `index`."""
    before = {relative: digest for relative, digest, *_ in index["images"]}
    now = {relative: content[:16] for relative, content in zip(relatives, contents)}
    parts = []
    for label, names in (("changed", [r for r in now if r in before and before[r] != now[r]]),
                         ("added", [r for r in now if r not in before]), ("removed", [r for r in before if r not in now])):
        if names:
            parts.append(f"{len(names)} {label} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return ", ".join(parts) or "the decode parameters or format changed"
