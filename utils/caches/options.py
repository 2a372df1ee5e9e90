"""The options of `python main.py cache` itself. Every other flag is a train option that says
which data and size to cache (--dataset, --train-data-root, --test-data-root, --image-size,
--experiment, --skip-bad-images) and where (--checkpoint-dir, --cache=<folder>); `help` reads
this table without importing torch."""
import dataclasses

from configs.commands import register_command
from configs.values import split_command_flags
from utils.core.errors import UsageError

# {name: (type, default, doc)}
OPTIONS = {
    "list": (bool, False, "list the caches (data folder, images, side, size, state) instead of building one"),
    "clear": (bool, False, "remove the caches (all of them; one being built is left alone and named) instead of "
                           "building one"),
}

register_command(
    "cache",
    "decode the images of --train-data-root (and --test-data-root when given) once into the decoded-image cache "
    "that train, val and test read (docs/image-cache.md), with a progress bar; --list shows the caches and their "
    "sizes, --clear removes them",
    OPTIONS, "options of cache (and the train options that pick the data and --image-size)",
    notes=("  the cache is the one `train` with the same options would build and read: the same --dataset,",
           "  --train-data-root, --image-size (and --experiment=gan for its faces). Examples:",
           "    python main.py cache --train-data-root=data/train --image-size=224",
           "    python main.py cache --list                 # in <checkpoint-dir>/image-cache",
           "    python main.py cache --clear --cache=/scratch/caches"),
    examples=("python main.py cache --train-data-root=<data> --image-size=224   # decode once, ahead of time",))


@dataclasses.dataclass(frozen=True)
class CacheOptions:
    list: bool
    clear: bool


def split_options(flags):
    """(CacheOptions, the train flags) of the cache command's flags {name: text}."""
    values, rest = split_command_flags(flags, OPTIONS)
    if values["list"] and values["clear"]:
        raise UsageError("give --list or --clear, not both")
    return CacheOptions(**values), rest
