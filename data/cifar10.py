"""CIFAR-10 in its python format (registered as `cifar10`): what torchvision's CIFAR10 reads.

    <root>/cifar-10-batches-py/data_batch_1 ... data_batch_5    the train split (50,000)
    <root>/cifar-10-batches-py/test_batch                       the test split (10,000)
    <root>/cifar-10-batches-py/batches.meta                     the class names

Each batch is a pickled dict: `data` (N x 3072 uint8, the red, green and blue 32 x 32 planes
of each image in turn) and `labels` (N ints). torchvision refuses any batch whose md5 is not
the official one; here the contract is the format, so a user's own batches load too (any
number of data_batch_<n> files), and a batch in the wrong format is named with what is wrong.
The pickles are read by an unpickler that builds only plain data and numpy arrays: a data
file cannot run code.

Normalisation: the per-channel mean and standard deviation of the official 50,000 training
images (0.4914, 0.4822, 0.4465) and (0.2470, 0.2435, 0.2616). Training augmentation by
default: pad 4 with zeros and crop a random 32 x 32 (--crop-padding=4), flip half the images
(--hflip=0.5) (He et al. 2016, section 4.2); --augment=false trains on the images as they are.
"""
import io
import pickle
import re

import numpy as np

from data.arrays import ArrayDataset, FormatError
from utils.core.registry import DATASETS

TRAIN_BATCH = re.compile(r"data_batch_(\d+)")
# What numpy arrays need to unpickle (numpy 1 and 2 spell the module differently), and the
# helper python-2 pickles use for byte strings; nothing else may be built from a data file.
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


@DATASETS.register("cifar10")
class Cifar10(ArrayDataset):
    """CIFAR-10: 32 x 32 colour images of 10 classes."""

    title, folder = "CIFAR-10", "cifar-10-batches-py"
    files = {"train": ["data_batch_1"], "test": ["test_batch"], "both": ["batches.meta"]}
    fetch = "cifar-10-python.tar.gz, 163 MB, from https://www.cs.toronto.edu/~kriz/cifar.html"
    size, channels = 32, 3
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    augmentation = {"hflip": 0.5, "crop_padding": 4}

    @classmethod
    def layout(cls, root, train):
        split = "data_batch_1 ... data_batch_5" if train else "test_batch"
        return f"{root / cls.folder}/ with {split} and batches.meta (cifar-10-python.tar.gz unpacked)"

    @classmethod
    def read(cls, root, train):
        folder = root / cls.folder
        if train:
            names = sorted((p.name for p in folder.iterdir() if TRAIN_BATCH.fullmatch(p.name)),
                           key=lambda name: int(TRAIN_BATCH.fullmatch(name).group(1)))
        else:
            names = ["test_batch"]
        meta = read_pickle(folder / "batches.meta")
        classes = [_text(name) for name in _field(meta, "label_names", folder / "batches.meta")]
        images, labels = [], []
        for name in names:
            batch_images, batch_labels = read_batch(folder / name, len(classes))
            images.append(batch_images)
            labels.append(batch_labels)
        return np.concatenate(images), np.concatenate(labels), classes

    @classmethod
    def download(cls, root):
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=True, download=True)


def read_batch(path, num_classes):
    """(images N x 32 x 32 x 3 uint8, labels N int64) of one batch file, checked."""
    batch = read_pickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, "labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise FormatError(f"{path}: 'data' must be an N x 3072 uint8 array (3 planes of 32 x 32); "
                          f"got {data.dtype} with shape {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data):
        raise FormatError(f"{path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes):
        raise FormatError(f"{path}: labels must be integers 0..{num_classes - 1} (batches.meta names {num_classes} "
                          f"classes); found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


class _DataOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise FormatError(f"it asks to build {module}.{name}; a CIFAR batch holds only lists, bytes and numpy arrays")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module  # no numpy 2 deprecation warning
        return super().find_class(module, name)


def read_pickle(path):
    """The dict pickled in `path` (python 2 pickles too, as torchvision reads them)."""
    try:
        with open(path, "rb") as handle:
            value = _DataOnly(io.BytesIO(handle.read()), encoding="latin1").load()
    except FormatError as error:
        raise FormatError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise FormatError(f"{path} is not a python pickle of a CIFAR batch ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path} holds a {type(value).__name__}, not the dict of a CIFAR batch")
    return {_text(key): item for key, item in value.items()}


def _field(batch, key, path):
    if key not in batch:
        raise FormatError(f"{path} has no {key!r} entry (it has {', '.join(map(repr, batch)) or 'none'})")
    return batch[key]


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else str(value)
