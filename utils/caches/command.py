"""What `python main.py cache` does: build, list or clear decoded-image caches."""
import dataclasses
import fcntl
import shutil
import time

from data import image_cache
from data.base import build_split
from data.cache_build import INDEX, LOCK, PROGRESS, caches, megabytes, read_progress
from utils.core.errors import UsageError, plural
from utils.core.registry import EXPERIMENTS
from utils.tables import columns


def main(options, cfg):
    folder = image_cache.folder_of(cfg) if cfg.cache != image_cache.OFF else None
    if folder is None:
        raise UsageError("cache --cache=off has no caches; give --cache=auto (<checkpoint-dir>/image-cache) or a folder")
    if options.list:
        print(listing(folder))
    elif options.clear:
        print(clear(folder))
    else:
        print(build(dataclasses.replace(cfg, cache=str(folder))))


def build(cfg):
    """Build (or find) the caches of the run `cfg` describes; what was done, in words."""
    started = time.perf_counter()
    experiment = EXPERIMENTS.get(cfg.experiment)(cfg)
    with image_cache.for_training():
        splits = [split for split in experiment.datasets() if split is not None]
    if cfg.test_data_root and "test" in (EXPERIMENTS.declared(cfg.experiment, "commands") or {}):
        splits.append(build_split(experiment.cfg, "test"))
    found = {}
    for split in splits:  # (data/base.py build_split refused a data set that is not image files)
        found[str(split.cache.directory)] = split.cache
    lines = [f"{directory}: {plural(len(cache.entries), 'image')}, short side {cache.params['side']} px, "
             f"{megabytes(cache.bytes)}" for directory, cache in found.items()]
    return "\n".join(lines + [f"ready in {time.perf_counter() - started:.1f} s; train, val and test with the same "
                              f"options read {'it' if len(found) == 1 else 'them'}"])


def _state(directory, index):
    if index is not None:
        return "ready"
    try:
        with open(directory / LOCK, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "being built"
    except OSError:
        return "unfinished (its lock cannot be opened here)"
    done = read_progress(directory)
    return f"unfinished ({done.get('done', 0)} images; the next start goes on)" if done else "unfinished"


def listing(folder):
    """A table of the caches in `folder`."""
    found = caches(folder)
    if not found:
        return f"no image caches in {folder}"
    rows, total = [], 0
    for directory, index in found:
        size = sum(path.stat().st_size for path in directory.iterdir() if path.is_file())
        total += size
        index = index or {}
        rows.append([directory.name, index.get("root", "?"), str(len(index.get("images", []))) if index else "-",
                     f"{index['params']['side']} px" if index else "-", megabytes(size), index.get("built", "-"),
                     _state(directory, index or None)])
    lines = columns(["cache", "data", "images", "side", "size", "built", "state"], rows)
    return "\n".join(lines + [f"{plural(len(found), 'cache')}, {megabytes(total)} in {folder}"])


def clear(folder):
    """Remove the caches in `folder` (not one being built); what was removed, in words."""
    removed, kept, freed = 0, [], 0
    for directory, _ in caches(folder):
        with open(directory / LOCK, "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                kept.append(directory.name)
                continue
            freed += sum(path.stat().st_size for path in directory.iterdir() if path.is_file())
            (directory / INDEX).unlink(missing_ok=True)  # first: a half-removed cache never looks complete
            (directory / PROGRESS).unlink(missing_ok=True)
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
    said = f"removed {plural(removed, 'cache')} ({megabytes(freed)}) from {folder}"
    if kept:
        said += f"; left {', '.join(kept)}: being built by a running process"
    return said
