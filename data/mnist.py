"""MNIST in its idx format (registered as `mnist`): what torchvision's MNIST reads.

    <root>/MNIST/raw/train-images-idx3-ubyte   train-labels-idx1-ubyte    (60,000)
    <root>/MNIST/raw/t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte     (10,000, the test split)

Each file may also stay gzipped (`<name>.gz`, as distributed). An idx file is a big-endian
header (two zero bytes, the element type 0x08 = unsigned byte, the number of dimensions,
then each dimension as a 4-byte integer) followed by the values; the header is checked
against the file size, and a wrong file is named with what is wrong.

Normalisation: mean 0.1307 and standard deviation 0.3081, those of the 60,000 training
images. No augmentation by default (--hflip=0 --crop-padding=0: a mirrored digit can be
another digit); a small shift (--crop-padding=2) is safe to add. Class names are the digits 0-9.
"""
import gzip

import numpy as np

from data.arrays import ArrayDataset, FormatError
from utils.core.registry import DATASETS

UNSIGNED_BYTE = 0x08


@DATASETS.register("mnist")
class Mnist(ArrayDataset):
    """MNIST: 28 x 28 grey images of the handwritten digits 0-9."""

    title, folder = "MNIST", "MNIST/raw"
    files = {"train": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
             "test": ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]}
    fetch = "the four *-ubyte.gz files, 11 MB, from a torchvision MNIST mirror"
    also = "; each plain or .gz, both load"
    size, channels = 28, 1
    mean, std = (0.1307,), (0.3081,)
    augmentation = {"hflip": 0.0, "crop_padding": 0}  # a mirrored or shifted digit can be another digit

    @classmethod
    def read(cls, root, train):
        prefix = "train" if train else "t10k"
        folder = root / cls.folder
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte", dimensions=3)
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte", dimensions=1)
        if len(images) != len(labels):
            raise FormatError(f"{folder}: {prefix}-images holds {len(images)} images but {prefix}-labels {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise FormatError(f"{folder / f'{prefix}-labels-idx1-ubyte'}: labels must be digits 0-9; found {labels.max()}")
        return images[..., None], labels.astype(np.int64), [str(digit) for digit in range(10)]

    @classmethod
    def download(cls, root):
        import torchvision

        torchvision.datasets.MNIST(str(root), train=True, download=True)


def read_idx(path, dimensions):
    """The uint8 array of an idx file (or of `<path>.gz`), with its header checked."""
    if not path.is_file():
        path = path.with_name(path.name + ".gz")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise FormatError(f"{path}: cannot read it ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise FormatError(f"{path} is not an idx file (it must start with two zero bytes)")
    kind, ndim = raw[2], raw[3]
    if kind != UNSIGNED_BYTE or ndim != dimensions:
        raise FormatError(f"{path}: expected unsigned bytes (0x08) in {dimensions} dimension(s); "
                          f"its header says type 0x{kind:02x} in {ndim}")
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4")) if len(raw) >= header else ()
    expected = header + int(np.prod(shape)) if shape else None
    if expected is None or len(raw) != expected:
        raise FormatError(f"{path}: the header promises {' x '.join(map(str, shape)) or '?'} values "
                          f"({expected or '?'} bytes) but the file has {len(raw)} bytes (truncated or another file?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
