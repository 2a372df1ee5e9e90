"""Shared fixtures: the project root, a CLI runner and tiny generated Kaggle-layout data."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT, timeout=300, env=None, input=None, **popen):
    """Run `python main.py ARGS` in a subprocess; returns CompletedProcess (text). `popen`
    goes to subprocess.run (e.g. preexec_fn)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env, input=input,
        stdin=None if input is not None else subprocess.DEVNULL, **popen,
    )


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


class ForkedCli:
    """Like run_cli, but each command is a fork of one process that has imported torch
    already (tests/cli_server.py): a second or so per command instead of five."""

    def __init__(self):
        self.server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_server.py")], cwd=ROOT,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *args, cwd=ROOT, env=None):
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "out", Path(folder) / "err"
            request = {"args": list(map(str, args)), "cwd": str(cwd), "out": str(out), "err": str(err),
                       "env": dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))}
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            answer = self.server.stdout.readline()
            if not answer:
                raise RuntimeError("tests/cli_server.py died; run it by hand to see why")
            return subprocess.CompletedProcess(args, json.loads(answer)["code"], out.read_text(), err.read_text())

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture(scope="session")
def forked_cli():
    cli = ForkedCli()
    yield cli
    cli.close()
