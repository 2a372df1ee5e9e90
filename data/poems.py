"""Poems as character sequences (registered as `poems`), for the poetry experiment.

`--train-data-root` is one of:
    tang.npz        the book's file (chapter 9): `data` (poems x 125 indices, padded at the
                    front with </s>, each poem <START> ... <EOP>), `word2ix`, `ix2word`
    <file>          UTF-8 text, one poem (or passage) per line; empty lines are skipped
    <folder>        every *.txt file below it (sorted by path), one poem per line

The vocabulary is the corpus's characters, sorted, after three marks: <pad> (0), <s> (1,
start) and </s> (2, end). It is a function of the corpus alone, and the experiment keeps it
in every checkpoint, so `generate` needs no data. A poem is <s> + its characters + </s>,
cut or padded (with <pad>) to --seq-len + 1 tokens: the model reads the first --seq-len and
predicts the last --seq-len. The validation split holds out --val-ratio of the poems, drawn
from --seed. The book's file is read without unpickling anything but plain data.
"""
import functools
import io
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from data import poetry_sample
from data.base import Dataset
from data.cifar10 import ALLOWED
from data.sampling import split_part
from utils.core.errors import UserError, plural
from utils.core.registry import DATASETS

log = logging.getLogger(__name__)
PAD, START, END = "<pad>", "<s>", "</s>"
MARKS = (PAD, START, END)
BOOK_MARKS = ("</s>", "<START>", "<EOP>")  # tang.npz's padding, start and end
LAYOUT = "the book's tang.npz, a UTF-8 text file with one poem per line, or a folder of .txt files"


class Poems(Dataset):
    """Items: (token indices, a LongTensor of --seq-len + 1, the item's index)."""

    image_parts = ()  # tokens: nothing to normalise or lay out as images
    name = "poems"

    def __init__(self, poems, vocabulary, seq_len):
        self.poems, self.vocabulary, self.seq_len = poems, list(vocabulary), seq_len
        self.index = {token: position for position, token in enumerate(self.vocabulary)}

    def __len__(self):
        return len(self.poems)

    def identities(self):
        """The text of each poem."""
        return list(self.poems)

    def __getitem__(self, key):
        position = key[1] if isinstance(key, tuple) else key  # (epoch, index) from EpochSampler
        tokens = encode(self.poems[position], self.index, self.seq_len + 1)
        return torch.tensor(tokens, dtype=torch.long), position


def encode(text, index, length):
    """<s> text </s> as indices, cut or padded to `length`."""
    tokens = [index[START]] + [index[char] for char in text] + [index[END]]
    return (tokens + [index[PAD]] * length)[:length]


def vocabulary_of(poems):
    """The marks, then every character of `poems`, sorted."""
    return list(MARKS) + sorted(set("".join(poems)))


@functools.lru_cache(maxsize=4)
def read_corpus(root):
    """The poems (a tuple of strings) under `root`, read once per process."""
    path = Path(root)
    if path.is_dir():
        files = sorted(file for file in path.rglob("*.txt") if file.is_file())  # not a folder named x.txt
        if not files:
            raise UserError(f"no .txt files in {str(path)!r}; --train-data-root takes {LAYOUT}")
        poems = [line for file in files for line in read_lines(file)]
    elif path.suffix == ".npz" and path.is_file():
        poems = read_npz(path)
    elif path.is_file():
        poems = read_lines(path)
    else:
        raise UserError(f"--train-data-root={path} does not exist; it takes {LAYOUT}")
    if not poems:
        raise UserError(f"no poems in {str(path)!r}: every line is empty")
    return tuple(poems)


def read_lines(path):
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {(error.strerror or str(error)).lower()}; --train-data-root takes "
                        f"{LAYOUT}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class _PlainData(pickle.Unpickler):
    """Builds numpy arrays and plain Python data only: a data file cannot run code."""

    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise UserError(f"it asks to build {module}.{name}; tang.npz holds only arrays and dicts")
        return super().find_class(module, name)


def read_npz(path):
    """The poems of the book's tang.npz, without its marks."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = header(handle)
                    rest = handle.read()
                if dtype.hasobject:  # word2ix, ix2word: pickled dicts
                    arrays[member[:-4]] = _PlainData(io.BytesIO(rest)).load()
                else:
                    arrays[member[:-4]] = np.frombuffer(rest, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    except (zipfile.BadZipFile, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise UserError(f"{path} is not a readable .npz ({type(error).__name__}: {error}); give the book's tang.npz") from None
    missing = [key for key in ("data", "ix2word") if key not in arrays]
    if missing:
        raise UserError(f"{path} has no {missing[0]!r} array; the book's tang.npz holds data, word2ix and ix2word")
    ix2word = arrays["ix2word"]
    ix2word = ix2word.item() if isinstance(ix2word, np.ndarray) else ix2word
    poems = []
    for row in np.asarray(arrays["data"]):
        words = [ix2word.get(int(index), "") for index in row]
        poems.append("".join(word for word in words if word not in BOOK_MARKS))
    return [poem for poem in poems if poem]


@DATASETS.register("poems")
def poems(cfg, split_name):
    """The train or val part of the poems at --train-data-root (the embedded sample by default)."""
    root = Path(cfg.train_data_root)
    if root.resolve().parent == poetry_sample.ROOT:
        poetry_sample.ensure(root.parent)
    if split_name == "test":
        raise UserError("dataset poems has train and val splits only; `generate` writes poems from a checkpoint")
    corpus = read_corpus(str(root))
    items = [(position, 0) for position in range(len(corpus))]
    chosen = split_part(items, split_name, cfg.val_ratio, cfg.seed, root)
    dataset = Poems([corpus[position] for position, _ in chosen], vocabulary_of(corpus), cfg.seq_len)
    if split_name == "train":
        longer = sum(len(poem) + 2 > cfg.seq_len + 1 for poem in dataset.poems)
        log.info("%s, %d characters in the vocabulary%s", plural(len(corpus), "poem"), len(dataset.vocabulary) - len(MARKS),
                 f"; {plural(longer, 'poem')} longer than --seq-len={cfg.seq_len} cut" if longer else "")
    return dataset
