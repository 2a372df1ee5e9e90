"""What `python main.py lr-find` does: build the run's experiment, data and objects as train
would (the model, --pretrained / --load-model-path, --param-groups, --freeze as in epoch 1),
step through the training data while the lr grows, and report. It trains a throw-away copy:
no checkpoint is read into a run or written, and no run dir is made unless --env names one
(which then gets lr-find.png and lr-find.csv, under the run's lock)."""
import dataclasses
import logging
import math
from pathlib import Path

import torch

from utils.core import seeding
from utils.core.errors import UsageError, plural
from utils.core.registry import EXPERIMENTS
from utils.engine import distributed, run_lock, runtime
from utils.engine.experiment import Context
from utils.engine.freezing import Freezing
from utils.engine.outputs import Outputs
from utils.engine.param_groups import Grouping
from utils.engine.precision import Precision
from utils.engine.state import TrainState, load_weights
from utils.lr_find.plot import write_plot, write_points
from utils.lr_find.search import RangeTest, lr_at

log = logging.getLogger(__name__)
MAX_PASSES = 5  # the steps may go over the training data this many times (reshuffled each time)


def main(options, cfg):
    if distributed.world_size() > 1:
        raise UsageError("lr-find runs in one process; start it without torchrun")
    # one optimizer step per batch at the lr being tested: no warm-up ramp, no accumulation, no average
    cfg = dataclasses.replace(cfg, warmup_epochs=0.0, accumulate=1, ema=0.0, profile=0, resume="")
    plot = Path(options.plot) if options.plot else (cfg.run_dir if cfg.env else Path(".")) / "lr-find.png"
    if plot.suffix.lower() != ".png":
        raise UsageError(f"lr-find --plot={options.plot}: give a .png file")
    if plot.is_dir():
        raise UsageError(f"lr-find --plot={options.plot} is a folder; give a .png file")
    experiment = EXPERIMENTS.get(cfg.experiment)(cfg)
    device = distributed.pick_device(cfg)
    train_set, _ = experiment.datasets()
    cfg = experiment.cfg
    batches = math.ceil(len(train_set) / cfg.batch_size)
    if batches * MAX_PASSES < options.steps:
        fewer = (f"--steps={batches * MAX_PASSES}" if batches * MAX_PASSES >= 10 else
                 f"--batch-size={max(1, len(train_set) * MAX_PASSES // options.steps)}")
        raise UsageError(f"lr-find --steps={options.steps} would pass over the train split's "
                         f"{plural(len(train_set), 'image')} ({plural(batches, 'batch', 'batches')} of --batch-size={cfg.batch_size}) "
                         f"more than {MAX_PASSES} times, and then measures how fast it memorises them; give {fewer}, "
                         f"or more data")
    seeding.seed_everything(cfg.seed)
    ctx = Context(cfg, device, Precision(cfg, device, train_set), TrainState(), Outputs(plot.parent, cfg, writes=False))
    ctx.grouping = Grouping(cfg)
    objects = experiment.build(ctx)
    ctx.objects = objects
    objects["scaler"] = ctx.precision.scaler
    ctx.grouping.check_matched()
    ctx.freezing = Freezing(cfg, ctx.grouping)
    ctx.freezing.check(objects)
    if cfg.load_model_path:
        load_weights(objects, cfg.load_model_path)
    ctx.freezing.apply(objects, 0)  # what the run's first epoch freezes
    lock = run_lock.acquire(cfg.run_dir) if cfg.env and not options.plot else None  # one writer per run dir
    try:
        test = sweep(experiment, objects, ctx, train_set, options)
        suggested, how = test.suggestion()
        title = (f"lr-find: {cfg.model}, {cfg.optimizer}, batch {cfg.batch_size}, {plural(len(test.lrs), 'step')} "
                 f"of {options.steps}")
        write_plot(plot, test, suggested, how, title)
        write_points(plot.with_suffix(".csv"), test)
    finally:
        if lock is not None:
            lock.release()
    ended = f"; it stopped early: {test.stopped}" if test.stopped else ""
    print(f"suggested lr: {suggested:.2e} ({how}; the loss was lowest at lr {test.lrs[test.minimum()]:.2e}{ended})\n"
          f"plot: {plot} (points: {plot.with_suffix('.csv')})\n"
          f"next: python main.py train --lr={suggested:.1e} ...")


def sweep(experiment, objects, ctx, train_set, options):
    """The RangeTest of `options.steps` steps over `train_set`, every optimizer's groups at
    the tested lr times their share of the first optimizer's base lr (an lr_mult, a GAN's
    two learning rates keep their ratios)."""
    optimizers = [obj for obj in objects.values() if isinstance(obj, torch.optim.Optimizer)]
    if not optimizers:
        raise UsageError(f"experiment {ctx.cfg.experiment} builds no optimizer; lr-find has nothing to test")
    first = optimizers[0].param_groups[0]
    reference = first["lr"] / first.get("lr_mult", 1.0)
    scales = [[group["lr"] / reference for group in optimizer.param_groups] for optimizer in optimizers]
    for obj in objects.values():
        if isinstance(obj, torch.nn.Module):
            obj.train()
    ctx.freezing.hold_norms(objects)
    loader = runtime.make_loader(train_set, ctx.cfg, ctx.device, shuffle=True, epoch=0)
    test = RangeTest(options.steps)
    log.info("lr-find: %s from lr %.1e to %.1e", plural(options.steps, "step"), options.start_lr, options.end_lr)
    step = 0
    for epoch in range(MAX_PASSES):
        loader.sampler.set_epoch(epoch, start=0)
        for batch in loader:
            lr = lr_at(step, options.steps, options.start_lr, options.end_lr)
            for optimizer, shares in zip(optimizers, scales):
                for group, share in zip(optimizer.param_groups, shares):
                    group["lr"] = lr * share
            scalars = experiment.step(ctx.precision.to_device(batch), objects, ctx)
            if ctx.stepped:
                ctx.precision.scaler.update()
                ctx.stepped = False
            step = ctx.state.global_step = step + 1
            if not test.add(lr, float(scalars[experiment.losses[0]])) or step == options.steps:
                break
        else:
            continue
        break
    if len(test.lrs) < 3:
        raise UsageError(f"lr-find: {test.stopped} within the first steps; give a smaller --start-lr")
    return test
