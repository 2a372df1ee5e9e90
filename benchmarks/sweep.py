"""A sweep on Kaggle-size JPEGs, measured side by side in one run:

1. one worker trains --trials trials (`python main.py sweep`, every trial in its process);
2. the same trials as separate `python main.py train --config=<trial>/config.yaml` runs,
   one process each, as a user would start them by hand: the ratio 1 / 2 is what the sweep
   costs (lock, ask, lease, tell, TensorBoard HParams) or saves (no interpreter start, no
   torch import per trial);
3. the worker's resident memory after each trial (the engine logs it each epoch): a leak
   across in-process trials would show as a climb;
4. two workers of one study on the same machine, each with half the threads: wall time
   against 1, and the study holding exactly --trials trials.

    .venv/bin/python benchmarks/sweep.py                  # 600 images, 8 trials of 1 epoch
    .venv/bin/python benchmarks/sweep.py --images=2000 --trials=12
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import kaggle_images  # noqa: E402

SPACE = "pruner: none\nparams:\n  lr: {low: 1.0e-4, high: 3.0e-3, log: true}\n"  # one batch size: comparable RSS


def run(args):
    """`python main.py ARGS`; returns (wall seconds, stderr)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        kaggle_images.make(folder / "data", args.images)
        (folder / "space.yaml").write_text(SPACE)
        base = [f"--train-data-root={folder / 'data' / 'train'}", "--image-size=112", f"--max-epoch={args.epochs}",
                "--num-workers=2", "--progress=false", "--debug-file=", f"--trials={args.trials}",
                f"--search-space={folder / 'space.yaml'}"]

        one, log = run(["sweep", "--study=one", f"--checkpoint-dir={folder / 'runs'}", *base])
        rss = [float(value) for value in re.findall(r"rss (\d+) MB", log)]
        per_trial = rss[args.epochs - 1::args.epochs]

        separate = 0.0
        for number in range(args.trials):
            config = folder / "runs" / "one" / f"trial-{number}" / "config.yaml"
            seconds, _ = run(["train", f"--config={config}", f"--checkpoint-dir={folder / 'apart'}",
                              f"--env=trial-{number}"])
            separate += seconds

        started = time.perf_counter()
        workers = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), "sweep", "--study=two",
                                     f"--checkpoint-dir={folder / 'runs'}", "--threads=1", *base], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for worker in workers:
            _, err = worker.communicate()
            if worker.returncode != 0:
                sys.exit(f"a worker failed:\n{err[-2000:]}")
        two = time.perf_counter() - started
        storage = JournalStorage(JournalFileBackend(str(folder / "runs" / "two" / "optuna.journal")))
        states = [t.state.name for t in optuna.load_study(study_name="two", storage=storage).trials]

    print(f"{args.trials} trials of {args.epochs} epoch(s), {args.images} Kaggle-size JPEGs, SqueezeNet at 112 px")
    print(f"  one sweep worker:            {one:7.1f} s")
    print(f"  separate train processes:    {separate:7.1f} s   sweep / separate = {one / separate:.2f}x")
    print(f"  two workers of one study:    {two:7.1f} s   two / one = {two / one:.2f}x; "
          f"study holds {states.count('COMPLETE')} complete of {len(states)} trials")
    print(f"  worker RSS after each trial: {' '.join(f'{value:.0f}' for value in per_trial)} MB "
          f"(last - first: {per_trial[-1] - per_trial[0]:+.0f} MB)")


if __name__ == "__main__":
    main()
