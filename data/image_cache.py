"""The decoded-image cache (--cache=auto|off|<folder>): every image of a data set decoded
once, resized to what its transforms need, in one memory-mapped file that later epochs,
runs, folds, sweep trials and DDP ranks read instead of the JPEGs.

What is stored: each image decoded and resized (antialiased bilinear, aspect kept) so that
its short side is `side`, as uint8 (H, W, 3) rows in `pixels.u8`; `index.json` says where
each image starts and its size. For classification `side` is the short side the eval
transform resizes to (round(image_size / 0.875): 256 for 224), and a smaller image is kept
as it is; the random resized crop, the flip and the centre crop then run on the cached
pixels, every sample, as they do on a decoded file (data/transforms.py train_pixels /
eval_pixels). For the gan's faces `side` is --image-size itself. docs/image-cache.md says
what this changes in the pixels.

Where: <checkpoint-dir>/image-cache/<root name>-<side>px-<key>/ (or under --cache=<folder>),
outside every run dir, so runs, folds and trials on one machine share it. The key is a
sha256 over the format version, the decode parameters and every image's path (relative to
the data's folder) and content sha256 (utils/core/file_hashes.py: read once, then cached by
size and modification time), so a cache holds exactly one content of the data: a changed,
added or removed image makes another key, is named in one line, and the cache of the old
content is removed once the new one is built. A finished cache is never written again.

Built once (data/cache_build.py): under a lock, one process builds and the others wait;
`index.json` is written last and atomically, so a cache killed while building never looks
complete, and the next start goes on where it stopped.
"""
import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from data import cache_build
from data.cache_build import FORMAT, INDEX, PIXELS, Unavailable, caches, megabytes
from data.transforms import EVAL_RATIO
from utils.core.errors import UserError, plural
from utils.core.file_hashes import digests

log = logging.getLogger(__name__)
FOLDER = "image-cache"  # under --checkpoint-dir
AUTO, OFF = "auto", "off"
GROUP_MARKERS = ("folds.json", "sweep.yaml")  # a cross-validation group's and a sweep's folder (utils/cv, utils/sweep)
KINDS = {"crop": "short side round(image_size / 0.875), not enlarged", "gan": "short side image_size"}
_OPEN = {}  # cache folder -> Cache: one per process, shared by the splits and runs that read it
_training = []  # non-empty while `train` builds its data sets: the one command --cache=auto builds for
_said = set()  # data folders whose "one pass" this process logged


def side_of(kind, size):
    """The short side, in pixels, of the images a cache of `kind` holds for --image-size `size`."""
    return round(size / EVAL_RATIO) if kind == "crop" else size


def folder_of(cfg):
    """The folder that holds the caches of this run's --cache (auto: <checkpoint-dir>/image-cache,
    of the --checkpoint-dir the command was given: a fold's or a trial's is its group's folder)."""
    if cfg.cache != AUTO:
        return Path(cfg.cache)
    folder = Path(cfg.checkpoint_dir)
    while folder.parent != folder and any((folder / marker).is_file() for marker in GROUP_MARKERS):
        folder = folder.parent
    return folder / FOLDER


@contextlib.contextmanager
def for_training():
    """While `train` builds its data sets: --cache=auto may build a cache (other commands
    read one that exists, and build none for a single pass)."""
    _training.append(True)
    try:
        yield
    finally:
        _training.pop()


def attach(cfg, items, size, kind="crop"):
    """The Cache of the images of `items` ([(path, anything)]: every item of the data
    folder, not only a split's), or None: --cache=off, or auto found none and built none
    (not `train`, a single pass over the data, too little disk). An explicit
    --cache=<folder> builds the cache or fails (exit 1)."""
    choice = getattr(cfg, "cache", OFF)
    if choice == OFF or not items:
        return None
    explicit = choice != AUTO
    paths = [Path(os.path.abspath(path)) for path, _ in items]
    root = Path(os.path.commonpath([str(path.parent) for path in paths]))
    relatives = [path.relative_to(root).as_posix() for path in paths]
    params = {"kind": kind, "side": side_of(kind, size), "upscale": kind == "gan"}
    builds = explicit or (_training and cfg.max_epoch * max(1, getattr(cfg, "folds", 0) or 1) >= 2)
    if not builds and not any(index.get("root") == str(root) and index.get("params") == params
                              for _, index in caches(folder_of(cfg)) if index):
        return _one_pass(root)  # no cache of this data to read: its images are not even hashed
    try:
        contents = digests(root, relatives)
    except OSError as error:
        return _decline(explicit, f"cannot read {error.filename}: {error.strerror}")
    key = hashlib.sha256(json.dumps([FORMAT, params, sorted(zip(relatives, contents))]).encode()).hexdigest()[:16]
    directory = folder_of(cfg) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name) or 'data'}-{params['side']}px-{key}"
    cache = _OPEN.get(str(directory)) if (directory / INDEX).is_file() else None
    if cache is None and not (directory / INDEX).is_file():
        if not builds:
            return _one_pass(root)
        try:
            cache_build.build(directory, root, relatives, contents, params, key, explicit, cfg.num_workers)
        except Unavailable as why:
            return _decline(explicit, str(why))
    if cache is None:
        cache = _OPEN[str(directory)] = Cache(directory)
        log.info("image cache: reading %s (%s, short side %d px, %s)", directory, plural(len(cache.entries), "image"),
                 params["side"], megabytes(cache.bytes))
    missing = [relative for relative in relatives if relative not in cache.entries]
    if missing:  # not possible for a key that names these paths; a hand-edited index
        raise UserError(f"the image cache {directory} lacks {missing[0]}; remove it (python main.py cache --clear)")
    cache.add_paths([path for path, _ in items], paths, relatives)
    return cache


def record(dataset):
    """What a run records of how it read `dataset`'s images (checkpoint info, manifest): the
    cache's description, "off" (image files decoded every time), or None (not image files)."""
    if not hasattr(dataset, "cache"):
        return None
    return dataset.cache.description if dataset.cache is not None else OFF


def resume_choice(cfg, recorded, given):
    """--cache for a resumed run that recorded `recorded` (record()): a run that trained
    without the cache resumes without it unless --cache is `given`, so that it stays bit
    for bit the run it was; a change either way is said."""
    if recorded == OFF and "cache" not in given and cfg.get("cache") == AUTO:
        log.info("image cache: off, as the run trained so far (the cached pixels differ a little from decoded ones)")
        return OFF
    if recorded and ((recorded == OFF) != (cfg.get("cache") == OFF)):
        log.warning("image cache: the run trained %s the decoded-image cache and resumes %s it: the pixels differ a "
                    "little, so it is no longer bit-identical to a run that never stopped",
                    "without" if recorded == OFF else "with", "with" if recorded == OFF else "without")
    return cfg.get("cache", AUTO)


def _one_pass(root):
    """None, said once per data folder while `train` builds its data: auto builds no cache
    for a run that reads the data once (val / test, which build none, say nothing)."""
    if _training and str(root) not in _said:
        _said.add(str(root))
        log.info("image cache: off (one pass over the data: building a cache costs what it would save)")
    return None


def _decline(explicit, reason):
    if explicit:
        raise UserError(f"--cache: {reason}")
    log.warning("image cache: off (%s); the images are decoded every epoch", reason)
    return None


class Cache:
    """A finished cache, read-only: `pixels(path)` is an item's stored image as a uint8
    (H, W, 3) tensor over the memory-mapped file (each process maps it once: the pages are
    the page cache's, shared by every worker and run, not copied into each)."""

    def __init__(self, directory):
        self.directory = Path(directory)
        index = read_index(self.directory)
        self.params, self.key, self.bytes = index["params"], index["key"], index["bytes"]
        self.entries = {relative: (offset, height, width) for relative, _, offset, height, width in index["images"]}
        self.positions = {}
        # mapped now, in the process that builds the data sets: loader workers forked later
        # inherit the mapping, so a `cache --clear` meanwhile cannot pull the file away
        self._map = self._open()
        if any(not (isinstance(offset, int) and isinstance(height, int) and isinstance(width, int)) or offset < 0
               or height < 1 or width < 1 or offset + height * width * 3 > len(self._map)
               for offset, height, width in self.entries.values()):
            raise UserError(f"the image cache {self.directory} is damaged (its index points outside {PIXELS}); remove "
                            f"it with `python main.py cache --clear` and it is built again")

    def _open(self):
        try:
            # copy-on-write: a writable array for torch (which warns on read-only ones); no
            # page is ever written, so none is copied
            return np.memmap(self.directory / PIXELS, dtype=np.uint8, mode="c")
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read the image cache {self.directory / PIXELS} ({error}); remove it with "
                            f"`python main.py cache --clear` and it is built again") from None

    @property
    def description(self):
        """What the manifest records (reproduce names a difference in it)."""
        return f"{self.params['kind']} short side {self.params['side']} px, format {FORMAT}"

    def add_paths(self, given, absolute, relatives):
        """Let `pixels` find the images of these items by their paths, as given or absolute."""
        for path, full, relative in zip(given, absolute, relatives):
            self.positions[str(path)] = self.positions[str(full)] = self.entries[relative]

    def pixels(self, path):
        offset, height, width = self.positions[str(path)]
        if self._map is None:  # a worker started by spawn
            self._map = self._open()
        return torch.from_numpy(self._map[offset:offset + height * width * 3].reshape(height, width, 3))

    def __getstate__(self):  # a worker started by spawn maps the file itself
        return {**self.__dict__, "_map": None}


def read_index(directory):
    """The index of the finished cache in `directory` (a dict); UserError naming it when damaged."""
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT or not isinstance(index.get("images"), list):
            raise ValueError(f"format {index.get('format')!r}")
        if not {"params", "key", "bytes"} <= set(index) or not isinstance(index["params"], dict) or any(
                not isinstance(entry, list) or len(entry) != 5 or not isinstance(entry[0], str) for entry in index["images"]):
            raise ValueError("not a cache index")
        return index
    except (OSError, ValueError, AttributeError) as error:
        raise UserError(f"the image cache index {path} is damaged ({error}); remove the cache with "
                        f"`python main.py cache --clear` and it is built again") from None
