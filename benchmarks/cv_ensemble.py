"""One run vs the 5-fold ensemble vs the ensemble with test-time augmentation, on a labelled
held-out test set: log loss and accuracy of the submitted probabilities, and wall time.

    .venv/bin/python benchmarks/cv_ensemble.py                      # the defaults below
    .venv/bin/python benchmarks/cv_ensemble.py --per-class=500 --epochs=10 --model=SqueezeNet

The data is the embedded sample's kind (data/sample.py: drawn "cats" and "dogs", 96-160 px
JPEGs in the Kaggle layout, a few grey), drawn with other seeds: --per-class of each class to
train on, and --test images whose classes only this script knows (the test folder holds
<n>.jpg, as Kaggle's). Every number comes from ordinary commands, printed as they run:

    train --val-ratio=0.2 --env=single       one run on 80 % of the data, as each fold is
    train --folds=5 --env=cv                 5 runs, each on 80 %, and the cv report
    test  --env=single | --env=cv [--tta=flip]   the csv (id,label = P(dog), --clip=0)

The log loss is Kaggle's (probabilities clipped into [1e-15, 1 - 1e-15]); the single run's
row also gives its validation split's score, the ensemble's the OOF score, to compare what
each estimate promised with what the held-out images gave; `val --env=cv --tta=<views>` gives
the OOF score of each TTA row (what a user can see before submitting).
"""
import argparse
import csv
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data.sample import draw  # noqa: E402 - after the path is set


def make_data(folder, per_class, test, seed):
    """folder/train/{cat,dog}.<n>.jpg and folder/test/<n>.jpg; returns {test id: 1 for dog}."""
    rng = np.random.default_rng(seed)
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir(parents=True)
    for index in range(per_class):
        for kind in ("cat", "dog"):
            draw(kind, rng).save(folder / "train" / f"{kind}.{index}.jpg", quality=90)
    truth = {}
    for index in range(1, test + 1):
        kind = "dog" if rng.random() < 0.5 else "cat"
        draw(kind, rng).save(folder / "test" / f"{index}.jpg", quality=90)
        truth[str(index)] = int(kind == "dog")
    return truth


def run(*args):
    """`main.py ARGS`; returns (stdout, wall seconds)."""
    print("  python main.py " + " ".join(args), flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed:\n{result.stderr[-3000:]}")
    return result.stdout, time.perf_counter() - started


def score(path, truth):
    """(log loss, accuracy) of a dogcat submission against the true classes."""
    with open(path, newline="") as handle:
        predicted = {row["id"]: float(row["label"]) for row in csv.DictReader(handle)}
    losses, right = [], 0
    for key, dog in truth.items():
        p = min(max(predicted[key], 1e-15), 1 - 1e-15)
        losses.append(-math.log(p if dog else 1 - p))
        right += (p > 0.5) == bool(dog)
    return sum(losses) / len(losses), right / len(truth)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="SqueezeNet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        truth = make_data(scratch / "data", options.per_class, options.test, options.seed)
        common = [f"--train-data-root={scratch / 'data' / 'train'}", f"--test-data-root={scratch / 'data' / 'test'}",
                  f"--checkpoint-dir={scratch / 'runs'}", f"--model={options.model}",
                  f"--image-size={options.image_size}", f"--max-epoch={options.epochs}", "--batch-size=32",
                  "--lr-policy=cosine", "--num-workers=2", "--progress=false", "--debug-file="]
        tested = ["--num-workers=2", f"--checkpoint-dir={scratch / 'runs'}", "--clip=0"]
        print(f"data: {2 * options.per_class} training images, {options.test} held-out test images; "
              f"{options.model} at {options.image_size} px, {options.epochs} epochs")
        rows = []
        out, single_train = run("train", *common, "--val-ratio=0.2", "--env=single")
        promised = float(out.split("best val_logloss ")[1].split()[0])
        _, single_test = run("test", *tested, "--env=single", f"--result-file={scratch / 'single.csv'}")
        rows.append(("one run (80 % of the data)", scratch / "single.csv", single_train + single_test,
                     f"val {promised:.4f}"))
        _, single_tta = run("test", *tested, "--env=single", "--tta=flip", f"--result-file={scratch / 'single-tta.csv'}")
        rows.append(("one run + TTA flip", scratch / "single-tta.csv", single_train + single_tta, ""))
        out, group_train = run("train", *common, f"--folds={options.folds}", "--env=cv")
        oof = float(out.split("cv: val_logloss ")[1].split()[0])
        for name, tta in ((f"{options.folds}-fold ensemble", ""), (f"{options.folds}-fold ensemble + TTA flip", "flip"),
                          (f"{options.folds}-fold ensemble + TTA flip,crops", "flip,crops")):
            result = scratch / f"cv{tta}.csv"
            _, seconds = run("test", *tested, "--env=cv", f"--result-file={result}", *([f"--tta={tta}"] if tta else []))
            rows.append([name, result, group_train + seconds, f"oof {oof:.4f}" if not tta else ""])
        for tta in ("flip", "flip,crops"):  # what the OOF says of each TTA, before a submission uses it
            out, _ = run("val", *tested[:2], "--env=cv", f"--tta={tta}")
            rows[[name for name, *_ in rows].index(f"{options.folds}-fold ensemble + TTA {tta}")][3] = \
                f"oof {float(out.split('cv: val_logloss ')[1].split()[0]):.4f}"
        print(f"\n{'':42} {'test log loss':>13} {'accuracy':>9} {'vs one run':>10} {'wall s':>7}  estimate")
        base = score(rows[0][1], truth)[0]
        for name, path, seconds, estimate in rows:
            loss, accuracy = score(path, truth)
            print(f"{name:42} {loss:13.4f} {accuracy:9.4f} {loss / base:10.3f} {seconds:7.0f}  {estimate}")


if __name__ == "__main__":
    main()
