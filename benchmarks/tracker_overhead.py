"""What a tracker costs a run: the training thread's time per point with each logger, the
time its thread needs to send them, and the demo trained side by side with each --loggers.

    .venv/bin/python benchmarks/tracker_overhead.py [--steps 2000] [--epochs 2] [--skip-train]

Part 1 builds each logger the way a run does (utils/loggers.open_all, in a temp run dir; MLflow
on its default SQLite store, W&B offline) and logs --steps steps of 6 scalars (a step's
train/ points): the seconds the caller spends (what a training step pays), then how long the
end of the run waits for the tracker's thread to send the rest. Part 2 trains the embedded
demo (`train --env=...`) for --epochs epochs with --loggers=tensorboard, then
tensorboard,mlflow and tensorboard,wandb, and prints the wall times and their ratios.
Needs the trackers extra (bash scripts/setup.sh --trackers).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from configs.loader import load_config  # noqa: E402
from utils import loggers  # noqa: E402

NAMES = ("loss", "accuracy", "lr", "images_per_second", "grad_norm", "data_wait")
SETS = ("tensorboard", "tensorboard,mlflow", "tensorboard,wandb")


def per_point(steps):
    for name in ("tensorboard", "mlflow", "wandb"):
        with tempfile.TemporaryDirectory() as folder:
            cfg = load_config({"checkpoint_dir": folder, "env": "bench", "loggers": name})
            run_dir = Path(folder) / "bench"
            run_dir.mkdir()
            (run_dir / "config.yaml").write_text("experiment: classify\n")
            opened = time.perf_counter()
            (logger,) = loggers.open_all(run_dir, cfg, connections=loggers.connect(cfg))
            opened = time.perf_counter() - opened
            caller = 0.0
            for step in range(1, steps + 1):
                started = time.perf_counter()
                for index, metric in enumerate(NAMES):
                    logger.scalar(f"train/{metric}", 1.0 / (step + index), step)
                caller += time.perf_counter() - started
            started = time.perf_counter()
            logger.end("finished")
            drained = time.perf_counter() - started
            points = steps * len(NAMES)
            print(f"{name:>12}: start {opened:5.2f} s; the training thread pays {1e6 * caller / points:6.1f} us per "
                  f"point ({1e3 * caller / steps:.3f} ms per step of {len(NAMES)}); the end waits {drained:5.2f} s "
                  f"for the rest ({points} points)")


def trained(epochs):
    times = {}
    with tempfile.TemporaryDirectory() as folder:
        for chosen in SETS:
            env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", f"--env={chosen.replace(',', '-')}",
                                   f"--checkpoint-dir={folder}", f"--max-epoch={epochs}", "--progress=false",
                                   f"--loggers={chosen}"], cwd=ROOT, env=env, capture_output=True, text=True)
            times[chosen] = time.perf_counter() - started
            if done.returncode:
                raise SystemExit(f"--loggers={chosen} failed: {done.stderr[-2000:]}")
            warned = [line for line in done.stderr.splitlines() if "WARNING" in line]
            print(f"--loggers={chosen:<20} {times[chosen]:6.1f} s{'  ' + warned[0] if warned else ''}")
    base = times[SETS[0]]
    for chosen in SETS[1:]:
        print(f"  {chosen} / tensorboard: {times[chosen] / base:.3f} ({times[chosen] - base:+.1f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    per_point(args.steps)
    if not args.skip_train:
        trained(args.epochs)


if __name__ == "__main__":
    main()
