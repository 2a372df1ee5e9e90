"""Long-run health: resident memory across epochs, and what a mid-epoch resume costs at start.

    .venv/bin/python benchmarks/memory.py [--images 1200] [--epochs 10] [--model SqueezeNet]
                                          [--image-size 112] [--batch-size 16] [--workers 2]

On --images Kaggle-size JPEGs (benchmarks/kaggle_images.py):
  memory:  `python main.py train` for --epochs epochs; the RSS of the main process that
           each epoch's log line reports ("rss N MB"), and its growth from epoch 1 and from
           epoch 2 to the last (goal < 5 %; the first epoch includes one-time allocations).
  restart: the wall time of a command that starts, trains one step, saves last.pth and
           exits (SIGTERM after that step, via RUNNER_FAULT_AT_STEP), once as a fresh run
           and once resuming the same run from the middle of its second epoch; the
           difference is what a mid-epoch resume adds at start (goal <= 2 s): the sampler
           skips the images already seen without loading them.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kaggle_images  # noqa: E402


def run(flags, fault=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if fault:
        env["RUNNER_FAULT_AT_STEP"] = fault
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "main.py", "train", *flags], cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode not in (0, 143):
        sys.exit(f"train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", default="SqueezeNet")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = kaggle_images.make(Path(folder) / "data", args.images)
        common = [f"--train-data-root={data / 'train'}", f"--checkpoint-dir={Path(folder) / 'runs'}",
                  f"--model={args.model}", f"--image-size={args.image_size}", f"--batch-size={args.batch_size}",
                  f"--num-workers={args.workers}", "--progress=false", "--debug-file="]
        result, wall = run([*common, "--env=long", f"--max-epoch={args.epochs}"])
        rss = [float(value) for value in re.findall(r"INFO epoch \d+/\d+: .* rss (\d+) MB", result.stderr)]
        print(f"memory: {args.epochs} epochs of {args.model} at {args.image_size} px on {args.images} Kaggle-size JPEGs "
              f"({wall:.0f} s)")
        print("  rss per epoch (MB): " + " ".join(f"{value:.0f}" for value in rss))
        print(f"  growth epoch 1 -> {len(rss)}: {100 * (rss[-1] / rss[0] - 1):+.1f} %, "
              f"epoch 2 -> {len(rss)}: {100 * (rss[-1] / rss[1] - 1):+.1f} %")

        train_images = args.images - round(0.3 * args.images / 2) * 2
        steps = -(-train_images // args.batch_size)
        stop = steps + steps // 2  # the middle of the second epoch
        run([*common, "--env=resumed", "--max-epoch=3"], fault=f"{stop}:SIGTERM")
        fresh = resumed = float("inf")
        for attempt in range(3):  # alternate, keep the best of each
            _, seconds = run([*common, f"--env=fresh{attempt}", "--max-epoch=3"], fault="1:SIGTERM")
            fresh = min(fresh, seconds)
            subprocess.run(["cp", "-r", str(Path(folder) / "runs" / "resumed"), str(Path(folder) / "runs" / f"again{attempt}")])
            _, seconds = run([*common, f"--env=again{attempt}", "--resume"], fault=f"{stop + 1}:SIGTERM")
            resumed = min(resumed, seconds)
        print(f"restart: start + 1 step + save: fresh {fresh:.2f} s, resumed at step {stop - steps} of epoch 2 "
              f"({stop - steps} x {args.batch_size} images skipped) {resumed:.2f} s: {resumed - fresh:+.2f} s")


if __name__ == "__main__":
    main()
