"""Unreadable images (zero bytes, truncated, text named .jpg): a one-line error naming the file,
or, with --skip-bad-images, found up front and left out.

Real data sets hold such files (Microsoft's PetImages cats and dogs ships zero-byte JPEGs). The
check decodes every image once, in threads, when the file list is built: before the split, in
the main process, so the list (and with it the split, the data order, resume and any
--num-workers) is a function of the files on disk alone. JPEGs are decoded at 1/8 scale
(Pillow's draft mode), which still reads every byte, so a truncated file is caught at a
fraction of the cost of a full decode.
"""
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from utils.core.errors import UserError, plural
from utils.core.io import atomic_open

log = logging.getLogger(__name__)
SKIP_HINT = "fix or delete it, or add --skip-bad-images to leave unreadable files out"
LIST_NAME = "skipped_images.txt"


def load_rgb(path):
    """Open any image (grayscale, RGBA, CMYK, palette) as RGB; one-line UserError if it cannot be read."""
    with open_image(path) as image:
        return image.convert("RGB")


@contextlib.contextmanager
def open_image(path):
    """The opened (not yet decoded) image at `path`. Pillow decodes lazily, so whatever the
    body does with the pixels is covered too: a file that cannot be read is a one-line
    UserError naming it."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read image {str(path)!r}: {_reason(path, error)}; {SKIP_HINT}") from None


def problem(path):
    """Why `path` cannot be read as an image, or None when it can."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8 or 1, image.height // 8 or 1))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return _reason(path, error)
    return None


def _reason(path, error):
    """What is wrong with the image file, in words (Pillow's own text repeats the path)."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError as stat_error:
        return (stat_error.strerror or str(stat_error)).lower()
    if isinstance(error, UnidentifiedImageError):
        return "not an image format Pillow reads"
    return str(error) or type(error).__name__


def split_readable(items, workers=2):
    """(readable items, [(path, reason)]) of `items`, [(path, anything)] in their order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(problem, [path for path, _ in items]))
    kept = [item for item, reason in zip(items, reasons) if reason is None]
    bad = [(item[0], reason) for item, reason in zip(items, reasons) if reason is not None]
    return kept, bad


def report(skipped, run_dir=None):
    """Log the skipped files once and, for a run, list them in <run dir>/skipped_images.txt."""
    if not skipped:
        return
    shown = ", ".join(f"{Path(path).name} ({reason})" for path, reason in skipped[:5])
    more = f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else ""
    where = f"; all listed in {Path(run_dir) / LIST_NAME}" if run_dir is not None else ""
    log.warning("--skip-bad-images: skipped %s: %s%s%s", plural(len(skipped), "unreadable image"), shown, more, where)
    if run_dir is not None:
        with atomic_open(Path(run_dir) / LIST_NAME, "w", encoding="utf-8") as handle:
            handle.writelines(f"{path}\t{reason}\n" for path, reason in skipped)
