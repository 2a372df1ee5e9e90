"""Training recipes side by side: one model, one data set, one seed, with and without each
recipe piece (augmentation control, label smoothing, mixup, CutMix, EMA, warm-up,
accumulation), each an ordinary `main.py train` run; prints the validation accuracy and
log loss of the checkpoint `val` / `test` would use (best.pth: the best epoch by
val_logloss, or by val_logloss_ema with --ema), and each one's ratio to the first row.

    .venv/bin/python benchmarks/recipes.py                    # real handwritten digits (below)
    .venv/bin/python benchmarks/recipes.py --data=sample      # the embedded Dogs vs. Cats sample
    .venv/bin/python benchmarks/recipes.py --presets          # configs/dogcat.yaml vs dogcat_plain.yaml
    .venv/bin/python benchmarks/recipes.py --data=PATH        # any image-folder tree (<class>/<image>)

--data=digits is scikit-learn's copy of the UCI handwritten digits: 1,797 real 8 x 8 scans
of 10 digits. The script takes the file out of scikit-learn's wheel (`pip download
scikit-learn`, about 10 MB, once, into benchmarks/.cache/; nothing is installed) and writes
it as an image folder of 32 x 32 PNGs, so the runner reads it as a user's own images are
read (--dataset=imagefolder). It is the case the recipes issue started from: with the
image-folder defaults (random resized crops of 8-100 % of the area, mirroring) a digit
loses what makes it one.

Single runs on a shared machine; the seed fixes the data order and the weights, so the rows
differ by their recipe alone. --seeds=N repeats each row N times and prints the mean.
"""
import argparse
import csv
import gzip
import io
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # data.sample, for --data=sample
CACHE = ROOT / "benchmarks" / ".cache"

# Each row: (name, flags added to the base). "tuned" rows keep the tuned augmentation.
PIECES = [
    ("data set defaults", {}),
    ("--augment=false", {"augment": "false"}),
    ("tuned augmentation (T)", "tuned"),
    ("T + --label-smoothing=0.1", {"label-smoothing": 0.1}),
    ("T + --mixup=0.2", {"mixup": 0.2}),
    ("T + --cutmix=1.0", {"cutmix": 1.0}),
    ("T + --ema=0.99", {"ema": 0.99, "ema-warmup": 50}),
    ("T + --warmup-epochs=2", {"warmup-epochs": 2}),
    ("T + half batch, --accumulate=2", "accumulate"),
    ("T + all of the above but accumulation", {"label-smoothing": 0.1, "mixup": 0.2, "cutmix": 1.0, "ema": 0.99,
                                               "ema-warmup": 50, "warmup-epochs": 2}),
]
DATA = {
    # base flags, tuned augmentation
    "digits": ({"dataset": "imagefolder", "model": "LeNet", "image-size": 32, "batch-size": 32, "optimizer": "adam",
                "lr": 0.002, "lr-policy": "cosine", "max-epoch": 15}, {"hflip": 0, "crop-scale": 0.5}),
    "sample": ({"dataset": "dogcat", "model": "SqueezeNet", "image-size": 64, "batch-size": 32, "optimizer": "adam",
                "lr": 0.001, "lr-policy": "cosine", "max-epoch": 15}, {"crop-scale": 0.35}),
    "folder": ({"dataset": "imagefolder", "model": "SqueezeNet", "image-size": 64, "batch-size": 32, "optimizer": "adam",
                "lr": 0.001, "lr-policy": "cosine", "max-epoch": 15}, {"crop-scale": 0.35}),
}


def digits_folder():
    """benchmarks/.cache/digits/<digit>/<n>.png from scikit-learn's digits.csv.gz."""
    folder = CACHE / "digits"
    if (folder / ".complete").is_file():
        return folder
    wheel_dir = CACHE / "wheel"
    wheels = sorted(wheel_dir.glob("scikit_learn-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                        str(wheel_dir), "scikit-learn"], check=True)
        wheels = sorted(wheel_dir.glob("scikit_learn-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        raw = wheel.read(next(name for name in wheel.namelist() if name.endswith("datasets/data/digits.csv.gz")))
    rows = np.loadtxt(io.StringIO(gzip.decompress(raw).decode()), delimiter=",")
    shutil.rmtree(folder, ignore_errors=True)
    for index, row in enumerate(rows):
        pixels = (row[:64].reshape(8, 8) * (255 / 16)).astype(np.uint8)  # 17 grey levels, 0-16
        digit = folder / str(int(row[64]))
        digit.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).convert("RGB").save(digit / f"{index}.png")
    (folder / ".complete").write_text("")
    return folder


def train(flags, runs, env):
    """One run; returns (best.pth's metrics, wall seconds)."""
    args = [f"--{key}={value}" for key, value in {**flags, "env": env, "checkpoint-dir": runs, "progress": "false",
                                                   "debug-file": "", "num-workers": 0}.items()]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", *args], cwd=ROOT, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"{env} failed:\n{result.stderr[-2000:]}")
    best = torch.load(Path(runs) / env / "best.pth", map_location="cpu", weights_only=True)
    return best["metrics"], time.perf_counter() - started


def rows_of(base, tuned, presets):
    if presets:
        return [("configs/dogcat_plain.yaml (the old preset)", {"config": "configs/dogcat_plain.yaml"}),
                ("configs/dogcat.yaml (the modern preset)", {"config": "configs/dogcat.yaml"})]
    made = []
    for name, extra in PIECES:
        if extra == "tuned":
            extra = dict(tuned)
        elif extra == "accumulate":
            extra = {**tuned, "batch-size": base["batch-size"] // 2, "accumulate": 2}
        elif name.startswith("T + "):
            extra = {**tuned, **extra}
        made.append((name, extra))
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", help="digits | sample | a folder <class>/<image>")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: 15)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per row, seeds 0..N-1 (the mean is shown)")
    parser.add_argument("--presets", action="store_true", help="compare the Dogs vs. Cats presets instead")
    parser.add_argument("--csv", help="also write the table here")
    options = parser.parse_args()
    kind = options.data if options.data in ("digits", "sample") else "folder"
    base, tuned = DATA[kind]
    base = dict(base)
    if kind == "digits":
        base["train-data-root"] = digits_folder()
    elif kind == "sample":
        from data import sample  # the embedded sample, generated on first use

        sample.ensure()
        base["train-data-root"] = sample.ROOT / "train"
    else:
        base["train-data-root"] = Path(options.data)
    if options.epochs:
        base["max-epoch"] = options.epochs
    if options.presets:
        # the presets are for the full data on a GPU: here their recipe on this data's size,
        # batch 32 with their lr scaled linearly (0.1 at 128 -> 0.025), float32
        base = {key: base[key] for key in ("dataset", "train-data-root", "image-size", "max-epoch")}
        base.update({"batch-size": 32, "lr": 0.025, "amp": "false", "val-ratio": 0.3, "tta": "false"})
    print(f"data: {base['train-data-root']}; base: " + " ".join(f"--{k}={v}" for k, v in base.items()
                                                                 if k != "train-data-root"))
    table = []
    with tempfile.TemporaryDirectory() as runs:
        for number, (name, extra) in enumerate(rows_of(base, tuned, options.presets)):
            found = []
            for seed in range(options.seeds):
                metrics, seconds = train({**base, **extra, "seed": seed}, runs, f"row{number}-seed{seed}")
                suffix = "_ema" if "val_logloss_ema" in metrics else ""
                found.append((metrics[f"val_accuracy{suffix}"], metrics[f"val_logloss{suffix}"], seconds))
            accuracy, logloss, seconds = (float(np.mean(column)) for column in zip(*found))
            table.append((name, accuracy, logloss, seconds))
            first = table[0]
            print(f"{name:42s} accuracy {accuracy:.4f} ({accuracy / first[1]:.2f}x)  log loss {logloss:.4f} "
                  f"({logloss / first[2]:.2f}x)  {seconds:.0f} s", flush=True)
    if options.csv:
        with open(options.csv, "w", newline="") as handle:
            csv.writer(handle).writerows([("recipe", "val_accuracy", "val_logloss", "seconds"), *table])


if __name__ == "__main__":
    main()
