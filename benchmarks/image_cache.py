"""Decode once: training with the decoded-image cache against decoding every epoch and against
the bare ceiling of the model, side by side in one run.

    .venv/bin/python benchmarks/image_cache.py [--images 3000] [--resnet-images 320]
        [--workers 2] [--folds 5] [--only LeNet,SqueezeNet,ResNet34] [--skip-folds] [--skip-memory]

On Kaggle-size JPEGs (benchmarks/kaggle_images.py: 400-500 x 300-375 px, about 35 KB):
  ceiling   forward, cross-entropy, backward and Adam step of the model on normalised
            batches already in memory (the runner's objects, threads, OpenMP wait policy
            and memory format): the most any data pipeline can give
  decode    `train --cache=off --max-epoch=2`: img/s of epoch 1 and 2 (the run's own log)
  cached    `train --cache=<new folder> --max-epoch=2`: the build (its log line), epoch 1
            and epoch 2 img/s; epoch 2 / ceiling is the goal (>= 0.9)
for LeNet at 64 px, SqueezeNet at 112 px and ResNet-34 at 224 px (fewer images: about 10
img/s on 2 CPU cores), --workers loader workers. Then a --folds-fold x 2-epoch LeNet group
with and without the cache (wall time, the build included), and the memory of a cached run
with 1, 2 and 4 workers over 3 epochs: each process's private memory (RssAnon) and the sum
of proportional set sizes (Pss: the mapped cache's pages counted once, however many
processes read them), sampled every 0.2 s.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from utils.engine import runtime  # noqa: E402

runtime.prepare_threads()  # the ceiling waits for work as a run's threads do (before torch loads)
import torch  # noqa: E402

import kaggle_images  # noqa: E402
from configs import load_config  # noqa: E402
from experiments.classify import Classify  # noqa: E402
from utils.engine.experiment import Context  # noqa: E402
from utils.engine.outputs import Outputs  # noqa: E402
from utils.engine.precision import Precision  # noqa: E402
from utils.engine.state import TrainState  # noqa: E402

MODELS = {"LeNet": (64, 64), "SqueezeNet": (112, 32), "ResNet34": (224, 16)}  # image size, batch
EPOCH = re.compile(r"epoch (\d+)/\d+: ([\d.]+) img/s \((\d+)% waiting for data\)")


def ceiling(name, size, batch, seconds=6.0):
    """img/s of the bare training step of `name` on in-memory normalised batches."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config({"model": name, "image_size": size, "batch_size": batch, "num_classes": 2, "device": "cpu",
                           "num_workers": 0, "debug_file": "", "env": "bench", "checkpoint_dir": run_dir})
        device = torch.device("cpu")
        torch.manual_seed(0)
        ctx = Context(cfg, device, Precision(cfg, device, None), TrainState(), Outputs(Path(run_dir), cfg, writes=False))
        objects = Classify(cfg).build(ctx)
        model, optimizer = objects["model"], objects["optimizer"]
        images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 2, (batch,))
        done, started = 0, None
        for step in range(10 ** 6):
            if step == 2:
                done, started = 0, time.perf_counter()  # after two warm-up steps
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += batch
            if started and time.perf_counter() - started > seconds and step >= 5:
                return done / (time.perf_counter() - started)


def train(data, runs, env, *extra, watch=None):
    """Run `train`; ({epoch: (img/s, % waiting)}, build seconds or None, wall seconds)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", f"--train-data-root={data}",
                                f"--checkpoint-dir={runs}", f"--env={env}", "--progress=false", "--debug-file=",
                                "--loggers=none", "--val-ratio=0.1", "--print-freq=100000", *extra],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=watch, args=(process.pid,), daemon=True) if watch else None
    if sampler:
        sampler.start()
    out, err = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"train {env} failed ({process.returncode}):\n{err[-2000:]}")
    epochs = {int(m.group(1)): (float(m.group(2)), int(m.group(3))) for m in EPOCH.finditer(err)}
    built = re.search(r"image cache: built \S+ in ([\d.]+) s", err)
    return epochs, float(built.group(1)) if built else None, wall


def speeds(args, folder):
    print(f"{args.workers} loader workers, {torch.get_num_threads()} threads; each train: 2 epochs, --val-ratio=0.1")
    print(f"{'model':10s} {'size':>4s} {'images':>6s} {'ceiling':>8s} | {'decode e1':>9s} {'e2':>7s} | {'build s':>7s} "
          f"{'cached e1':>9s} {'e2':>7s} | e2/ceiling: decode  cached")
    for name in args.only.split(","):
        size, batch = MODELS[name]
        count = args.resnet_images if name == "ResNet34" else args.images
        data = folder / f"data-{count}" / "train"
        if not data.exists():
            kaggle_images.make(data.parent, count)
        common = (f"--model={name}", f"--image-size={size}", f"--batch-size={batch}", f"--num-workers={args.workers}",
                  "--max-epoch=2")
        top = ceiling(name, size, batch)
        decoded, _, _ = train(data, folder / "runs", f"{name}-decode", *common, "--cache=off")
        cached, build, _ = train(data, folder / "runs", f"{name}-cached", *common, f"--cache={folder / f'cache-{name}'}")
        print(f"{name:10s} {size:4d} {count:6d} {top:8.1f} | {decoded[1][0]:9.1f} {decoded[2][0]:7.1f} | {build:7.1f} "
              f"{cached[1][0]:9.1f} {cached[2][0]:7.1f} | {decoded[2][0] / top:16.2f} {cached[2][0] / top:7.2f}"
              f"   (waiting for data in e2: decode {decoded[2][1]} %, cached {cached[2][1]} %)", flush=True)


def folds(args, folder):
    data = folder / f"data-{args.images}" / "train"
    if not data.exists():
        kaggle_images.make(data.parent, args.images)
    common = ("--model=LeNet", "--image-size=64", "--batch-size=64", f"--num-workers={args.workers}", "--max-epoch=2",
              f"--folds={args.folds}")
    _, _, plain = train(data, folder / "runs", "cv-decode", *common, "--cache=off")
    _, build, cached = train(data, folder / "runs", "cv-cached", *common, f"--cache={folder / 'cache-cv'}")
    print(f"{args.folds}-fold x 2-epoch LeNet 64 px group, {args.images} images: decoding {plain:.1f} s, "
          f"with the cache {cached:.1f} s (its build {build:.1f} s included): {plain / cached:.2f}x", flush=True)


def memory_of(pid):
    """{pid: (RssAnon kB, Pss kB)} of `pid` and its children."""
    found, pending = {}, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        anon = int(re.search(r"RssAnon:\s+(\d+)", status).group(1))
        pss = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
        found[current] = (anon, pss)
        pending += [int(child) for child in children]
    return found


def memory(args, folder):
    data = folder / f"data-{args.images}" / "train"
    if not data.exists():
        kaggle_images.make(data.parent, args.images)
    print("memory of a cached LeNet 64 px run, 3 epochs (peaks over the run):")
    for workers in (1, 2, 4):
        peaks = {"main_anon": 0, "worker_anon": 0, "pss": 0}

        def watch(pid):
            while Path(f"/proc/{pid}").exists():
                sample = memory_of(pid)
                if pid in sample:
                    peaks["main_anon"] = max(peaks["main_anon"], sample[pid][0])
                    others = [anon for child, (anon, _) in sample.items() if child != pid]
                    peaks["worker_anon"] = max([peaks["worker_anon"], *others])
                    peaks["pss"] = max(peaks["pss"], sum(pss for _, pss in sample.values()))
                time.sleep(0.2)

        epochs, _, _ = train(data, folder / "runs", f"memory-{workers}", "--model=LeNet", "--image-size=64",
                             "--batch-size=64", f"--num-workers={workers}", "--max-epoch=3",
                             f"--cache={folder / 'cache-memory'}", watch=watch)
        print(f"  {workers} workers: main RssAnon {peaks['main_anon'] / 1024:.0f} MB, largest worker RssAnon "
              f"{peaks['worker_anon'] / 1024:.0f} MB, all processes' Pss {peaks['pss'] / 1024:.0f} MB; epoch img/s "
              + ", ".join(f"{value[0]:.0f}" for _, value in sorted(epochs.items())), flush=True)


def pixels(args, folder):
    """Mean |cached - decoded| (of 255) of what the model sees, eval and train transforms."""
    import numpy as np

    from data.readable import open_image
    from data.sampling import augmentation_rng
    from data.transforms import Augment, eval_image, eval_pixels, short_side_pixels, train_image, train_pixels

    data = folder / "data-pixels" / "train"
    kaggle_images.make(data.parent, 200, seed=3)
    paths = sorted(data.glob("*.jpg"))
    print("pixel difference, cached vs decoded from the file (mean |difference| of 255, 200 Kaggle-size JPEGs):")
    for size in (64, 112, 224):
        side = round(size / 0.875)
        evals, trains = [], []
        for index, path in enumerate(paths):
            with open_image(path) as image:
                cached = short_side_pixels(image, side)
            evals.append((eval_pixels(cached, size).float() - eval_image(path, size).float()).abs().mean().item())
            for epoch in range(3):
                a = train_pixels(cached, size, augmentation_rng(0, (epoch, index)), Augment())
                b = train_image(path, size, augmentation_rng(0, (epoch, index)), Augment())
                trains.append((a.float() - b.float()).abs().mean().item())
        print(f"  {size:3d} px (cached short side {side}): eval crop {np.mean(evals):.2f}, train crops {np.mean(trains):.2f}",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--resnet-images", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", default="LeNet,SqueezeNet,ResNet34")
    parser.add_argument("--skip-folds", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        pixels(args, folder)
        speeds(args, folder)
        if not args.skip_folds:
            folds(args, folder)
        if not args.skip_memory:
            memory(args, folder)


if __name__ == "__main__":
    main()
