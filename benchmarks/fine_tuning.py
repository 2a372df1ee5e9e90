"""Fine-tuning side by side, on real images: pretrained weights made here (nothing can be
downloaded), then the same target task trained three ways for the same epochs:
  scratch        random init
  plain          --pretrained=<source best.pth>, every layer at --lr
  recipe         --pretrained, the body at lr x 0.1 (--param-groups='fc=1,*=0.1') and frozen
                 for the first epoch (--freeze=<body> --unfreeze-epoch=2)
and then --profile's overhead: a run with --profile=20 against the same run without it, the
profiled steps' time against the unprofiled run's, and the epoch after against its twin.

    .venv/bin/python benchmarks/fine_tuning.py            # --seeds=2 by default

Data: scikit-learn's copy of the UCI handwritten digits (1,797 real 8 x 8 scans; fetched as
benchmarks/recipes.py does). Source task: digits 0-4, all of them. Target task: digits 5-9,
with only 15 % of them to train on (--val-ratio=0.85), the usual case for fine-tuning: little
labelled data of the task, a related task with more. Model: torchvision.resnet18 at 16 px
(the CIFAR stem), Adam, lr 1e-3, cosine. Reported: best.pth's validation log loss and
accuracy (the epoch val / test use), mean over the seeds.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from recipes import digits_folder  # noqa: E402  (benchmarks/ is not a package)

BASE = {"dataset": "imagefolder", "model": "torchvision.resnet18", "image-size": 16, "batch-size": 32,
        "optimizer": "adam", "lr": 0.001, "lr-policy": "cosine", "hflip": 0, "crop-scale": 0.5,
        "progress": "false", "debug-file": "", "num-workers": 0, "cache": "off"}
BODY = "conv1,bn1,layer1,layer2,layer3,layer4"


def run(flags, runs, env):
    """One `main.py train`; returns (best.pth's metrics, stderr, wall seconds)."""
    args = [f"--{key}={value}" for key, value in {**BASE, **flags, "env": env, "checkpoint-dir": runs}.items()]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", *args], cwd=ROOT, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"{env} failed:\n{result.stderr[-2000:]}")
    best = torch.load(Path(runs) / env / "best.pth", map_location="cpu", weights_only=True)
    return best["metrics"], result.stderr, time.perf_counter() - started


def split(digits, work):
    """(source folder: digits 0-4, target folder: digits 5-9), as links into the digits folder."""
    folders = []
    for name, wanted in (("source", "01234"), ("target", "56789")):
        folder = work / name
        for digit in wanted:
            (folder / digit).mkdir(parents=True)
            for image in (digits / digit).iterdir():
                (folder / digit / image.name).symlink_to(image)
        folders.append(folder)
    return folders


def fine_tuning(seeds, epochs, work):
    digits = digits_folder()
    source, target = split(digits, work)
    runs = work / "runs"
    print(f"pretraining torchvision.resnet18 on digits 0-4 ({sum(1 for _ in source.rglob('*.png'))} images, "
          f"val 10 %) for 6 epochs ...", flush=True)
    metrics, _, seconds = run({"train-data-root": source, "max-epoch": 6, "val-ratio": 0.1}, runs, "source")
    print(f"  source: val accuracy {metrics['val_accuracy']:.3f}, log loss {metrics['val_logloss']:.3f} ({seconds:.0f} s)")
    pretrained = runs / "source" / "best.pth"
    arms = {"scratch": {},
            "plain fine-tuning": {"pretrained": pretrained},
            "recipe: body lr x0.1 + 1 frozen epoch": {"pretrained": pretrained, "param-groups": "fc=1,*=0.1",
                                                      "freeze": BODY, "unfreeze-epoch": 2}}
    results = {name: [] for name in arms}
    for seed in range(seeds):
        for index, (name, extra) in enumerate(arms.items()):
            metrics, _, seconds = run({"train-data-root": target, "max-epoch": epochs, "val-ratio": 0.85, "seed": seed,
                                       **extra}, runs, f"target-{index}-{seed}")
            results[name].append((metrics["val_logloss"], metrics["val_accuracy"], seconds))
            print(f"  seed {seed} {name}: log loss {metrics['val_logloss']:.3f}, accuracy {metrics['val_accuracy']:.3f} "
                  f"({seconds:.0f} s)", flush=True)
    print(f"\ntarget: digits 5-9, {epochs} epochs, mean of {seeds} seeds (best.pth; ratio to scratch)")
    print(f"  {'':<40} {'val log loss':>12} {'ratio':>6} {'val accuracy':>13} {'ratio':>6}")
    scratch = [sum(values) / len(values) for values in zip(*results["scratch"])]
    for name, values in results.items():
        loss, accuracy, _ = (sum(column) / len(column) for column in zip(*values))
        print(f"  {name:<40} {loss:12.3f} {loss / scratch[0]:6.2f} {accuracy:13.3f} {accuracy / scratch[1]:6.2f}")
    return source


def profiler_overhead(source, work, steps=20):
    """ms per step: the profiled steps against the same steps unprofiled, and epoch 2 (after)."""
    runs = work / "runs"
    common = {"train-data-root": source, "max-epoch": 2, "val-ratio": 0.1, "seed": 0}
    _, plain, _ = run(common, runs, "plain")
    _, profiled, _ = run({**common, "profile": steps}, runs, "profiled")
    summary = json.loads((runs / "profiled" / "profile" / "summary.json").read_text())

    def images_per_second(stderr, epoch):
        return float(re.search(rf"epoch {epoch}/2: (\d+(?:\.\d+)?) img/s", stderr).group(1))

    batch = BASE["batch-size"]
    during = summary["seconds"] / summary["steps"] * 1000
    unprofiled = batch / images_per_second(plain, 1) * 1000
    print(f"\n--profile={steps} on torchvision.resnet18, 16 px, batch {batch} (digits 0-4):")
    print(f"  profiled steps {during:.1f} ms/step; the same run unprofiled, epoch 1: {unprofiled:.1f} ms/step "
          f"(ratio {during / unprofiled:.2f})")
    print(f"  epoch 1 with the profile: {images_per_second(profiled, 1):.0f} img/s vs {images_per_second(plain, 1):.0f} "
          f"(ratio {images_per_second(profiled, 1) / images_per_second(plain, 1):.2f})")
    print(f"  epoch 2, after it:        {images_per_second(profiled, 2):.0f} img/s vs {images_per_second(plain, 2):.0f} "
          f"(ratio {images_per_second(profiled, 2) / images_per_second(plain, 2):.2f})")
    print("  the profile's table:\n" + (runs / "profiled" / "profile" / "summary.txt").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fine-tuning-"))
    try:
        source = fine_tuning(args.seeds, args.epochs, work)
        profiler_overhead(source, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
