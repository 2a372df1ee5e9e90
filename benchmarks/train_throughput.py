"""The training loop's overhead: the runner's loop against the bare ceiling, side by side.

    .venv/bin/python benchmarks/train_throughput.py [--models SqueezeNet,ResNet34,LeNet]
        [--device cpu] [--threads 2] [--rounds 7] [--seconds 4] [--workers 0]

For each model, with the same batch, image size, threads, memory format and initial
weights, in one process:
  bare:   forward, cross-entropy, zero_grad, backward, Adam step on float batches already
          normalised, channels_last and on the device (the ceiling: nothing but compute)
  runner: utils.engine.run_epoch with the classify experiment's step, over a DataLoader of
          uint8 images held in memory: collate, normalisation on the device, the step
          (with its accuracy), the per-step agreement, meters, the --print-freq curve and
          debug-file check; everything the loop does except decoding JPEGs
          (benchmarks/pipeline.py measures that)
The two alternate for --rounds rounds of about --seconds (at least 3 steps) each; the
ratio runner img/s / bare img/s of each pair of rounds is taken, and their median printed
(goal >= 0.97).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import load_config  # noqa: E402
from data.base import Dataset  # noqa: E402
from data.transforms import MEAN, STD  # noqa: E402
from experiments.classify import Classify  # noqa: E402
from utils.engine import loop as engine  # noqa: E402
from utils.engine.precision import Precision  # noqa: E402
from utils.engine.safe_stop import SafeStop  # noqa: E402

SETTINGS = {"SqueezeNet": (224, 32), "ResNet34": (224, 32), "LeNet": (32, 64)}  # image size, batch


class Images(Dataset):
    """Random uint8 images with labels, in memory, as data/transforms.py makes them."""

    mean, std, classes = MEAN, STD, ["cat", "dog"]

    @classmethod
    def normalisation(cls):
        return {0: (cls.mean, cls.std)}

    def __init__(self, count, size):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, 2, (count,), generator=generator).tolist()
        self.length = count

    def __len__(self):
        return self.length

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        return self.images[index].permute(2, 0, 1), self.labels[index]


def setup(name, args, run_dir):
    size, batch = SETTINGS[name]
    cfg = load_config({"model": name, "image_size": size, "batch_size": batch, "num_classes": 2, "device": args.device,
                       "num_workers": args.workers, "debug_file": "", "progress": False, "visualizer": "none",
                       "print_freq": 20, "env": "bench", "checkpoint_dir": str(run_dir)})
    device = torch.device(args.device)
    torch.manual_seed(0)
    experiment = Classify(cfg)
    outputs = engine.Outputs(run_dir, cfg, writes=False)
    return cfg, device, experiment, outputs


def runner_round(cfg, device, experiment, outputs, data, seconds, epoch):
    ctx = engine.Context(cfg, device, Precision(cfg, device, data), engine.TrainState(), outputs)
    if cfg.model not in runner_round.objects:
        runner_round.objects[cfg.model] = experiment.build(ctx)
    objects = ctx.objects = runner_round.objects[cfg.model]
    steps = max(3, int(seconds * runner_round.speed.get(cfg.model, 1.0) / cfg.batch_size))
    data.length = min(len(data.images), steps * cfg.batch_size)  # this round's epoch
    with SafeStop(cfg, outputs.checkpoints, lambda: None, lambda: None) as stopper:
        loader = engine.runtime.make_loader(data, cfg, device, shuffle=True, epoch=epoch)
        _, images_per_second, _ = engine.run_epoch(experiment, objects, loader, ctx, stopper, epoch)
    return images_per_second


runner_round.objects, runner_round.speed = {}, {}


def bare_round(cfg, device, model, optimizer, batches, seconds):
    images_done, started = 0, time.perf_counter()
    steps = max(3, int(seconds * runner_round.speed.get(cfg.model, 1.0) / cfg.batch_size))
    for index in range(steps):
        images, labels = batches[index % len(batches)]
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_done += len(labels)
    return images_done / (time.perf_counter() - started)


def measure(name, args, run_dir):
    cfg, device, experiment, outputs = setup(name, args, run_dir)
    size, batch = SETTINGS[name]
    precision = Precision(cfg, device, Images)
    data = Images(batch * 400 if name == "LeNet" else batch * 40, size)
    # The bare loop: its own copy of the same initial weights, batches prepared beforehand.
    torch.manual_seed(0)
    bare = Classify(cfg).build(engine.Context(cfg, device, precision, engine.TrainState(), outputs))
    batches = [precision.to_device((torch.stack([data[i][0] for i in range(k * batch, (k + 1) * batch)]).contiguous(memory_format=torch.channels_last),
                                    torch.tensor(data.labels[k * batch:(k + 1) * batch]))) for k in range(4)]
    # Calibrate: img/s of one warm-up pass of each, so that a round lasts about --seconds.
    runner_round.speed[name] = 2 * batch
    bare_round(cfg, device, bare["model"], bare["optimizer"], batches, 0)
    runner_round(cfg, device, experiment, outputs, data, 0, epoch=0)
    runner_round.speed[name] = bare_round(cfg, device, bare["model"], bare["optimizer"], batches, 0)
    speeds = {"bare": [], "runner": []}
    for round_ in range(args.rounds):
        speeds["bare"].append(bare_round(cfg, device, bare["model"], bare["optimizer"], batches, args.seconds))
        speeds["runner"].append(runner_round(cfg, device, experiment, outputs, data, args.seconds, round_ + 1))
    return size, batch, speeds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="SqueezeNet,ResNet34,LeNet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(f"device {args.device}, {args.threads} threads, channels_last, {args.workers} loader workers, "
          f"{args.rounds} rounds of ~{args.seconds:.0f} s (at least 3 steps) each", flush=True)
    with tempfile.TemporaryDirectory() as run_dir:
        for name in args.models.split(","):
            size, batch, speeds = measure(name, args, Path(run_dir))
            # Each round's runner / bare pair ran back to back: their ratio cancels the drift
            # of a shared machine's speed, which moves both alike.
            ratios = sorted(runner / bare for runner, bare in zip(speeds["runner"], speeds["bare"]))
            print(f"  {name:11s} {size:3d} px, batch {batch:2d}: bare {statistics.median(speeds['bare']):8.1f} img/s, "
                  f"runner {statistics.median(speeds['runner']):8.1f} img/s (medians); runner / bare = "
                  f"{statistics.median(ratios):.3f} (median of {len(ratios)} paired rounds; range "
                  f"{ratios[0]:.3f}-{ratios[-1]:.3f})", flush=True)


if __name__ == "__main__":
    main()
