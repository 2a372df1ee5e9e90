"""Shared fixtures: the project root, a CLI runner and tiny generated Kaggle-layout data."""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# `help` wraps to the terminal's width; the tests read it as a 100-column terminal shows it
# (pytest-xdist's workers would otherwise say 80).
os.environ["COLUMNS"] = "100"


def run_cli(*args, cwd=ROOT, timeout=300, env=None, input=None, umask=None, **popen):
    """Run `python main.py ARGS`; returns CompletedProcess (text). It runs as a fork of one
    process that imported torch already (ForkedCli), which behaves as a fresh `python
    main.py` would (with `umask` set first when given), unless the test needs a process of
    its own: `input` text on stdin, or `popen` arguments for subprocess.run (preexec_fn: a
    resource limit on file size would also cut the fork's stdout and stderr files)."""
    if input is None and not popen:
        return _shared_cli()(*args, cwd=cwd, env=env, timeout=timeout, umask=umask)
    assert umask is None, "with a process of its own, set the umask in preexec_fn"
    return run_process(*args, cwd=cwd, timeout=timeout, env=env, input=input, **popen)


def run_process(*args, cwd=ROOT, timeout=300, env=None, input=None, **popen):
    """`python main.py ARGS` in a new interpreter (subprocess.run); returns CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env, input=input,
        stdin=None if input is not None else subprocess.DEVNULL, **popen,
    )


def typed(program="main", cwd=ROOT):
    """How the runner, started with this interpreter in `cwd`, prints a command that runs
    `program` ("main" for `python main.py`, or "tensorboard", ...): utils.runtime.program,
    so that it works as printed whether the venv is activated or not."""
    from utils.engine import runtime

    before = os.getcwd()
    os.chdir(cwd)
    try:
        return runtime.main_command() if program == "main" else runtime.program(program)
    finally:
        os.chdir(before)


def next_lines(stdout):
    """The commands train prints after its `next:` line, one per line."""
    lines = stdout.strip().splitlines()
    return [line.strip() for line in lines[lines.index("next:") + 1:]]


@pytest.fixture(autouse=True)
def restore_registries():
    """Every registry as it was before the test: a test that registers a model or a data set
    (the extending guide's examples do) leaves nothing behind for the next, in any order."""
    from utils.core.registry import ALL

    for table in ALL:
        table._import_package()  # the project's own entries, once: what every test starts from
    saved = [(table, dict(table._entries), table._imported) for table in ALL]
    yield
    for table, entries, imported in saved:
        table._entries, table._imported = entries, imported


def load(path):
    """A checkpoint as a user's code would load it: plain data, onto the CPU."""
    import torch

    return torch.load(path, weights_only=True, map_location="cpu")


def make_image(kind, rng, size=24):
    """A tiny image whose class is obvious: dogs bright, cats dark (pins the label direction)."""
    from PIL import Image

    level = 200 if kind == "dog" else 40
    pixels = np.clip(level + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_dogcat(root, per_class=12, test_images=7, seed=0, extras=True):
    """Kaggle layout under root: train/{cat,dog}.<n>.jpg, test/<n>.jpg (ids 1..n)."""
    rng = np.random.default_rng(seed)
    train, test = Path(root) / "train", Path(root) / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    for index in range(per_class):
        for kind in ("cat", "dog"):
            make_image(kind, rng).save(train / f"{kind}.{index}.jpg")
    kinds = {}
    for index in range(1, test_images + 1):
        kinds[index] = "dog" if index % 2 else "cat"
        make_image(kinds[index], rng).save(test / f"{index}.jpg")
    if extras:
        (train / ".DS_Store").write_bytes(b"junk")
    return kinds


@pytest.fixture
def dogcat(tmp_path):
    """(data root, {test id: true kind}) of a tiny generated Dogs-vs-Cats folder."""
    kinds = make_dogcat(tmp_path / "data")
    return tmp_path / "data", kinds


def tiny_flags(data_root, tmp_path, **extra):
    """Flags for a seconds-long CPU run on `dogcat` data."""
    flags = {
        "train-data-root": data_root / "train", "test-data-root": data_root / "test",
        "checkpoint-dir": tmp_path / "runs", "model": "LeNet", "image-size": 16, "batch-size": 4,
        "num-workers": 0, "max-epoch": 1, "print-freq": 2, "progress": "false", "debug-file": "",
        "lr": 0.01, "env": "tiny",
    }
    flags.update(extra)
    return [f"--{key}={value}" for key, value in flags.items()]


def with_flags(flags, *more):
    """`flags` ("--name=value" strings) with `more` in place of the ones of the same names
    (main.py refuses an option given twice), appended."""
    names = {flag.split("=", 1)[0].replace("_", "-") for flag in more}
    return [flag for flag in flags if flag.split("=", 1)[0].replace("_", "-") not in names] + list(more)


class ForkedCli:
    """Like run_cli, but each command is a fork of one process that has imported torch
    already (tests/cli_server.py): a second or so per command instead of five."""

    def __init__(self):
        self.server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_server.py")], cwd=ROOT,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *args, cwd=ROOT, env=None, timeout=300, umask=None):
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "out", Path(folder) / "err"
            request = {"args": list(map(str, args)), "cwd": str(cwd), "out": str(out), "err": str(err),
                       "env": dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), "timeout": timeout,
                       "umask": umask}
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            answer = self.server.stdout.readline()
            if not answer:
                raise RuntimeError("tests/cli_server.py died; run it by hand to see why")
            answer = json.loads(answer)
            if answer["timed_out"]:
                raise subprocess.TimeoutExpired(["main.py", *map(str, args)], timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess(args, answer["code"], out.read_text(), err.read_text())

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=60)


_SERVER = []  # the one ForkedCli of this pytest process, started on first use


def _shared_cli():
    if not _SERVER:
        _SERVER.append(ForkedCli())
    return _SERVER[0]


def pytest_sessionfinish(session, exitstatus):
    while _SERVER:
        _SERVER.pop().close()


@pytest.fixture(scope="session")
def forked_cli():
    return _shared_cli()


# -- the classic data sets in their real on-disk formats, tiny ------------------------------
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_image(label, rng, size, channels):
    """An image whose class shows: class k has its own brightness (and colour) level."""
    level = 20 + 23 * label
    pixels = np.clip(level + rng.normal(0, 8, (size, size, channels)), 0, 255)
    if channels == 3:
        pixels[..., label % 3] = np.clip(pixels[..., label % 3] + 30, 0, 255)
    return pixels.astype(np.uint8)


def make_cifar10(root, per_class=5, test_per_class=2, seed=0):
    """<root>/cifar-10-batches-py/ in CIFAR-10's python format (pickled dicts of an N x 3072
    uint8 array and labels; bytes keys, as python-3 pickles of the real files have): the train
    images split over data_batch_1 and data_batch_2. Returns the test labels, in order."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(labels):
        images = np.stack([class_image(label, rng, 32, 3) for label in labels])
        return {b"batch_label": b"tiny", b"labels": list(labels), b"data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1),
                b"filenames": [f"{k}.png".encode() for k in range(len(labels))]}

    train_labels = [label for _ in range(per_class) for label in range(10)]
    half = len(train_labels) // 2
    for name, labels in (("data_batch_1", train_labels[:half]), ("data_batch_2", train_labels[half:])):
        (folder / name).write_bytes(pickle.dumps(batch(labels), protocol=2))
    test_labels = [int(v) for v in rng.permutation([label for _ in range(test_per_class) for label in range(10)])]
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test_labels), protocol=2))
    meta = {"num_cases_per_batch": half, "label_names": CIFAR_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return test_labels


def idx_bytes(array):
    """An array of uint8 in the idx format: 0, 0, type 0x08, ndim, the dimensions (big endian), the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_mnist(root, per_class=5, test_per_class=2, seed=0):
    """<root>/MNIST/raw/ in MNIST's idx format; the test files gzipped (as distributed).
    Returns the test labels, in order."""
    import gzip

    rng = np.random.default_rng(seed)
    folder = Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True)
    train_labels = np.array([label for _ in range(per_class) for label in range(10)], dtype=np.uint8)
    test_labels = rng.permutation(np.array([label for _ in range(test_per_class) for label in range(10)], dtype=np.uint8))
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        images = np.stack([class_image(int(label), rng, 28, 1)[..., 0] for label in labels])
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            if prefix == "t10k":
                (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(data))
            else:
                (folder / f"{prefix}-{kind}-ubyte").write_bytes(data)
    return [int(v) for v in test_labels]


def make_imagefolder(root, classes=("daisy", "rose", "tulip"), per_class=6, seed=0):
    """<root>/train/<class>/... (one class nested a level deeper, a hidden folder and a
    non-image file that must be ignored) and <root>/photos/ (test images with any names,
    nested). Returns {test path relative to root: true class}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    train = Path(root) / "train"
    for label, name in enumerate(classes):
        folder = train / name / ("summer" if label == 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(class_image(3 * label, rng, 24, 3)).save(folder / f"{name}_{index}.{'png' if index % 2 else 'jpg'}")
    (train / ".ipynb_checkpoints").mkdir()
    (train / classes[0] / "notes.txt").write_text("not an image")
    photos = Path(root) / "photos"
    (photos / "trip").mkdir(parents=True)
    truth = {}
    for index, label in enumerate([0, 1, 2, 2, 1]):
        path = (photos / "trip" if index % 2 else photos) / f"IMG {index}.JPG"
        Image.fromarray(class_image(3 * label, rng, 24, 3)).save(path, format="JPEG")
        truth[path.relative_to(root).as_posix()] = classes[label]
    return truth


# -- a disk that really fills up ------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path, size):
    """A tmpfs of `size` bytes mounted at `path`: a disk that really fills up (root on Linux);
    skips the test where this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        why = mounted.stderr.decode().strip() if mounted.returncode else None
    except OSError as error:  # no mount command
        why = str(error)
    if why is not None:
        pytest.skip(f"cannot mount a tmpfs here ({why}); the fault hook tests cover the same code")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder):
    """Take every free byte of the file system of `folder`."""
    with open(folder / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
