"""Distributed scaling: training images/s under 1 and N processes (torchrun), side by side.

    .venv/bin/python benchmarks/scaling.py [--nproc 1,2] [--images 1200] [--image-size 112]
                                           [--model SqueezeNet] [--batch-size 16] [--epochs 2]
                                           [--device auto] [--workers 2]

Writes --images Kaggle-size JPEGs (400-500 x 300-375 px, half cat.<n>.jpg, half dog.<n>.jpg)
into a temp folder, then trains the same model on them once per process count: one process
with `python main.py train`, N with `torchrun --standalone --nproc_per_node=N main.py train`,
each process with --batch-size images per step (weak scaling: the global batch grows with N).
Prints, per count, the last epoch's training images/s (all ranks together, as the run logs
it), the wall time of the command, and the speed-up and efficiency against one process.

On a CPU the processes share the cores: torchrun gives each OMP_NUM_THREADS=1, one process
alone uses every core, so N processes on C cores are at best as fast as one. On a GPU
machine (--device=cuda), N processes drive N GPUs.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "train").mkdir(parents=True)
    for index in range(count):
        kind = "dog" if index % 2 else "cat"
        width, height = int(rng.integers(400, 501)), int(rng.integers(300, 376))
        level = 170 if kind == "dog" else 80
        base = rng.integers(level - 60, level + 60, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
        pixels = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
        Image.fromarray(pixels).save(folder / "train" / f"{kind}.{index // 2}.jpg", quality=90)


def train(nproc, data, runs, args):
    flags = [f"--train-data-root={data / 'train'}", f"--checkpoint-dir={runs}", f"--env=n{nproc}",
             f"--model={args.model}", f"--image-size={args.image_size}", f"--batch-size={args.batch_size}",
             f"--max-epoch={args.epochs}", f"--num-workers={args.workers}", f"--device={args.device}",
             "--progress=false", "--debug-file=", "--val-ratio=0.1"]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    started = time.perf_counter()
    result = subprocess.run([*launcher, str(ROOT / "main.py"), "train", *flags], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{nproc} process(es) failed:\n{result.stderr[-3000:]}")
    speeds = re.findall(r"epoch \d+/\d+: (\d+) img/s", result.stderr)
    return float(speeds[-1]), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts; the first is the baseline")
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--model", default="SqueezeNet")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    counts = [int(n) for n in args.nproc.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        make(folder / "data", args.images)
        print(f"{args.images} Kaggle-size JPEGs, {args.model} at {args.image_size} px, --batch-size {args.batch_size} "
              f"per process, {args.epochs} epochs, {args.workers} loader workers per process, --device={args.device}")
        results = {n: train(n, folder / "data", folder / "runs", args) for n in counts}
    base = results[counts[0]][0]
    print(f"{'processes':>9} {'global batch':>12} {'img/s (last epoch)':>19} {'wall s':>7} {'speed-up':>8} {'efficiency':>10}")
    for n, (speed, wall) in results.items():
        print(f"{n:>9} {n * args.batch_size:>12} {speed:>19.1f} {wall:>7.1f} {speed / base:>7.2f}x "
              f"{speed / base / (n / counts[0]):>9.0%}")


if __name__ == "__main__":
    main()
