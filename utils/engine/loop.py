"""The engine: the one training loop every experiment runs on.

The engine owns everything a long run needs, once: resume and the run dir, early stopping
(--patience: the run ends finished, and says why in status.json and `runs`), the
deterministic loader of each epoch (starting mid-epoch on resume), progress bar and timing,
TensorBoard curves of whatever a step returns, the --print-freq cadence, the live-debug
trigger, safe stop and emergency save, the non-finite check, fault injection, and the
checkpoint: {name: state_dict} + train state + RNG + config, written through one
CheckpointManager.

Under torchrun (utils/engine/distributed.py) the same code runs in every process: modules are
wrapped in DistributedDataParallel, each rank loads its part of every global batch, one
all-reduce after each step agrees on the step's means, image count and stop decision, and
rank 0 alone writes (Outputs.writes); checkpoints keep the unwrapped modules' state dicts
and every rank's RNG state.

Beside it: experiment.py (the contract an experiment implements: Experiment, Context),
state.py (TrainState, checkpoint contents, restore), averages.py (--ema), outputs.py
(TensorBoard, images, status.json), reporting.py (progress and epoch lines, next commands).
Read top to bottom: train, run_epoch. docs/extending.md walks through adding an experiment.
"""
import contextlib
import logging
import math
import shutil
import sys
import time

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from configs.loader import run_monitors
from data import image_cache, readable
from utils import loggers
from utils.core import faults, seeding
from utils.core.errors import UserError, plural
from utils.core.registry import EXPERIMENTS, METERS
from utils.engine import checkpoint, distributed, profiling, resume, run_lock, runtime
from utils.engine.accumulation import accumulation_place, gradients_kept_local
from utils.engine.averages import add_averages
from utils.engine.elastic import MidEpochSaves, restarts_after
from utils.engine.experiment import Context
from utils.engine.freezing import Freezing
from utils.engine.lr_policy import LrPolicy
from utils.engine.manifest import Manifest
from utils.engine.modes import evaluating
from utils.engine.outputs import Outputs
from utils.engine.param_groups import Grouping
from utils.engine.precision import Precision
from utils.engine.reporting import describe_world, log_progress, next_commands, report_epoch
from utils.engine.safe_stop import SafeStop, Stopped
from utils.engine.state import ENGINE_KEYS, TrainState, checkpoint_state, inference_state, load_weights, restore
from utils.engine.wrapping import wrap_modules

log = logging.getLogger(__name__)


def train(cfg, trial=None, given=()):
    """`python main.py train`: a new run, or --resume of one, of cfg.experiment. Returns its
    outcome: {"run_dir", "epoch" (epochs done), "best", "pruned"}. `given`: the option names
    the user typed, which the start-of-run log lists even at their defaults.

    `trial` (a sweep's, utils/sweep/worker.py) is told each epoch's metrics on every rank
    (`trial.epoch_end(epoch, metrics)`), and a reason it returns ends the run, pruned, after
    that epoch's checkpoints; `trial.check_owner()` is called before every write and raises
    when the run dir now belongs to another worker; `trial.resume_command`, when it has one,
    is what a stop prints to go on. A trial with `compare` (utils/reproduce/rerun.py) is
    handed each epoch end's fingerprints once written, on rank 0, and a reason it returns ends
    the run there; one with `quiet` set prints nothing at the end. A trial's `stale_after`
    is how long its run's lock may go unrenewed before another worker takes it over."""
    if not cfg.resume:
        cfg = distributed.broadcast_object(runtime.name_run(cfg))  # rank 0 names a new run for every rank
    # One writer per run dir (utils/engine/run_lock.py): taken before anything looks at it,
    # in a --checkpoint-dir checked first (a file, a read-only folder: said as such).
    distributed.on_main(lambda: runtime.check_output_dir(resume.run_dir_of(cfg), "--checkpoint-dir"))
    lock = distributed.on_main(lambda: run_lock.acquire(resume.run_dir_of(cfg), getattr(trial, "stale_after", None),
                                                        patient=cfg.resume == resume.AUTO))
    try:
        return _train(cfg, trial, given, lock)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, trial, given, lock):
    auto = cfg.resume == resume.AUTO
    cfg = resume.decide(cfg)  # --resume=auto: a fresh run, or the newest checkpoint
    if cfg.resume:
        distributed.check_shared(resume.checkpoint_path(cfg))  # every node must see the run it resumes
    resumed = resume.load_resume_state(cfg)  # None for a fresh run
    cfg = resumed["config"] if resumed else cfg
    saved = resumed["state"] if resumed else None
    if saved is not None:
        done = resume.finished(cfg, saved, auto)
        if done is not None:  # nothing is trained; only a killed write's temp files go
            distributed.on_main(lambda: checkpoint.remove_leftovers(cfg.run_dir))
            if distributed.is_main() and trial is None:
                print(done)
            return {"run_dir": cfg.run_dir, "epoch": saved["epoch"], "best": saved["best"], "pruned": saved.get("pruned")}
    experiment = EXPERIMENTS.get(cfg.experiment)(cfg)  # --monitor was checked against its monitors with the config
    distributed.on_main(lambda: runtime.check_new_run(cfg))  # before any data is read or model built
    connections = distributed.on_main(lambda: loggers.connect(cfg))  # a tracker that cannot be reached: one line now
    device = distributed.pick_device(cfg)
    # Everything that can fail on bad input runs before the run dir exists: the data, the
    # objects (an unknown torchvision model, --pretrained), the weights to resume or load.
    named = cfg if resumed else runtime.absolute_data(cfg)  # what is typed, as it is saved
    with image_cache.for_training():  # --cache=auto builds a decoded-image cache for train only
        train_set, val_set = experiment.datasets()
    # with the options resolved from the data, and a new run's data folders absolute in what it saves
    cfg = experiment.cfg if resumed else runtime.absolute_data(experiment.cfg)
    if len(train_set) == 0:
        raise UserError(f"the train split of {cfg.train_data_root} has no images; check --train-data-root")
    seeding.seed_everything(cfg.seed)  # the same initial weights on every rank
    checks = [check for check in (getattr(lock, "check", None), getattr(trial, "check_owner", None)) if check]
    outputs = Outputs(cfg.run_dir, cfg, writes=distributed.is_main(), guard=lambda: [check() for check in checks],
                      connections=connections, sweep=getattr(trial, "tracking", None))
    ctx = Context(cfg, device, Precision(cfg, device, train_set), TrainState(), outputs)
    ctx.grouping = Grouping(cfg)  # --param-groups, --no-decay-norm-bias, --layer-decay: ctx.optimizer applies them
    objects = experiment.build(ctx)
    ctx.grouping.check_matched()
    ctx.freezing = Freezing(cfg, ctx.grouping)
    ctx.freezing.check(objects)
    profiling.check_fits(cfg, len(train_set), distributed.world_size())
    ctx.objects = objects  # the same dict: wrapped modules replace their entries below
    clashes = ENGINE_KEYS.intersection(objects)
    if clashes:
        raise ValueError(f"experiment {cfg.experiment} names objects {sorted(clashes)}: the engine's own checkpoint keys")
    objects["scaler"] = ctx.precision.scaler
    if cfg.ema:
        add_averages(type(experiment).ema_modules, objects, ctx)
    restored = resumed is not None and resumed["state"] is not None
    if restored:
        ctx.state = restore(resumed["state"], objects, source=str(resume.checkpoint_path(cfg)), cfg=cfg)
    elif cfg.load_model_path:
        load_weights(objects, cfg.load_model_path)
    ctx.state.layout = ctx.state.layout or {"world": distributed.world_size(), "batch_size": cfg.batch_size,
                                            "accumulate": cfg.accumulate}  # the launch's, kept on resume
    ctx.freezing.apply(objects, ctx.state.epoch)  # what this epoch freezes: a function of the epoch, resumed or not
    wrap_modules(objects, cfg, device, type(experiment).broadcast_buffers)
    if distributed.world_size() > 1 and not restored:
        # Dropout masks, a GAN's noise: each rank draws its own, from (seed, rank).
        seeding.seed_everything(seeding.derive_seed(cfg.seed, seeding.RANK, distributed.rank()))
    source = "the run's own (its checkpoint's)" if resumed else getattr(trial, "config_source", None)
    run_dir, created = distributed.on_main(lambda: runtime.start_run(cfg, named, given, source)) or (cfg.run_dir, False)
    try:
        distributed.check_shared(cfg.run_dir / "config.yaml")  # across nodes: one line now, not a traceback later
    except distributed.NotShared:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    describe_world(cfg)
    try:
        _train_in(run_dir, cfg, experiment, objects, ctx, train_set, val_set, resumed, restored, trial)
    except BaseException as failure:
        lost = distributed.lost_peer(failure)  # a peer process gone: one line, not a gloo traceback
        error = lost or failure
        with contextlib.suppress(Exception):  # the error that stopped the run matters more than a write's
            outputs.checkpoints.wait()
        outputs.close()
        fenced = getattr(error, "fenced", False)
        status = None if fenced else "stopped" if isinstance(error, (Stopped, KeyboardInterrupt)) else "crashed"
        # (kept when torchrun restarts the group: the restart goes on from its config.yaml and
        # records that it is one, whether or not this rank got here before it was killed)
        removed = not fenced and created and not any(run_dir.glob("*.pth")) and not distributed.restarts_left()
        if not fenced and not removed:  # fenced: the run dir is another worker's now, no status
            with contextlib.suppress(OSError):  # a full disk must not hide the error that stopped the run
                outputs.write_status(ctx.state, status,
                                     error=str(error).splitlines()[0] if str(error) else type(error).__name__)
        with contextlib.suppress(Exception):
            outputs.end(status, ctx.state.best)  # the trackers' runs: KILLED, FAILED (fenced: left as they are)
        if removed:
            # A new run that ended before writing any checkpoint holds nothing to resume or
            # evaluate: it leaves no folder behind, like a run that cannot start.
            shutil.rmtree(run_dir, ignore_errors=True)
        if lost is not None:
            raise lost from None
        raise
    outcome = {"run_dir": run_dir, "epoch": ctx.state.epoch, "best": ctx.state.best, "pruned": ctx.state.pruned}
    if not distributed.is_main() or getattr(trial, "quiet", False) or ctx.state.pruned:  # they say it themselves
        return outcome
    best = ctx.state.best
    summary = (f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}" if best
               else "no finite validation metric" if experiment.monitors else plural(ctx.state.epoch, "epoch"))
    if ctx.state.stopped_early:
        print(ctx.state.stopped_early)
    print(f"trained {cfg.env}: {summary}; checkpoints in {run_dir}")
    if trial is None:  # a sweep says what comes next itself
        print("next:\n" + "\n".join(f"  {command}" for command in next_commands(cfg, experiment)))
    return outcome


def _train_in(run_dir, cfg, experiment, objects, ctx, train_set, val_set, resumed, restored, trial=None):
    """The epochs of train(), once its run dir exists."""
    outputs = ctx.outputs
    outputs.checkpoints.remove_leftovers()
    skipped = {str(path): reason for dataset in (train_set, val_set) for path, reason in getattr(dataset, "skipped", ())}
    if outputs.writes:
        readable.report(sorted(skipped.items()), run_dir)
    if resumed:
        saved_world = (resumed["state"] or {}).get("world_size", distributed.world_size())  # no state: a restart from config
        outputs.restarts = restarts_after(run_dir, ctx.state, saved_world)
    outputs.write_status(ctx.state, "running")
    manifest = Manifest(run_dir, outputs.guard) if outputs.writes else None  # what the run is trained with
    if manifest is not None:
        manifest.start(cfg, ctx.device, ctx.precision, distributed.world_size(), {"train": train_set, "val": val_set},
                       ctx.state)
    # Points at the saved step were logged before the checkpoint was written; later ones
    # belong to work the resumed run redoes (all of it when it restarts from scratch).
    outputs.open(purge_step=(ctx.state.global_step + 1 if restored else 0) if resumed else None)
    if ctx.state.global_step == 0 and outputs.writes:
        outputs.images(experiment.images(objects, ctx), 0)

    # what every checkpoint keeps of the data: the experiment's, and what the training split
    # fitted that the other splits need (data/base.py `fitted`), which val/test hand back
    fitted = train_set.fitted() if hasattr(train_set, "fitted") else {}
    info = {**experiment.checkpoint_info(), **({"fitted": fitted} if fitted else {}), "image_cache": image_cache.record(train_set)}

    def snapshot():
        return checkpoint_state(objects, ctx.state, cfg, info)

    policies = {name: obj for name, obj in objects.items() if isinstance(obj, LrPolicy)}
    monitors = run_monitors(cfg.experiment, cfg.ema)  # read from the experiment's source: once, not per epoch
    resume_with = getattr(trial, "resume_command", None)  # a sweep goes on by its own command
    with SafeStop(cfg, outputs.checkpoints, snapshot, outputs.close, resume_with,
                  asked=getattr(trial, "stop_reason", None)) as stopper:
        # One loader for the run: its workers stay up between epochs (persistent_workers), and
        # each epoch only tells the sampler, which runs in this process, which order to give.
        saves = MidEpochSaves(cfg, outputs.checkpoints, snapshot)  # --save-every
        loader = runtime.make_loader(train_set, cfg, ctx.device, shuffle=True, epoch=ctx.state.epoch,
                                     start=ctx.state.samples_in_epoch)
        ctx.profiler = profiling.StepProfiler(cfg, run_dir, ctx.device) if cfg.profile and outputs.writes else None
        for epoch in range(ctx.state.epoch, cfg.max_epoch):
            if ctx.freezing.apply(objects, epoch) and (distributed.world_size() > 1 or cfg.compile):
                wrap_modules(objects, cfg, ctx.device, type(experiment).broadcast_buffers)  # DDP's set of parameters changed
            loader.sampler.set_epoch(epoch, start=ctx.state.samples_in_epoch)
            epoch_started = time.perf_counter()
            means, images_per_second, data_wait = run_epoch(experiment, objects, loader, ctx, stopper, epoch,
                                                                saves)
            if stopper.requested:
                break  # SafeStop saves last.pth (mid-epoch) on the way out
            # (an average's module only: its n_averaged counter stays on the CPU, which nccl cannot send)
            distributed.sync_buffers(obj.module if isinstance(obj, AveragedModel) else obj
                                     for obj in objects.values() if isinstance(obj, torch.nn.Module))
            with evaluating(objects):
                metrics = experiment.evaluate(objects, ctx)
            # "lr_policy" -> curve "train/lr", "lr_policy_g" -> "train/lr/g"
            lrs = {name.replace("lr_policy", "lr"): policy.step(means.get(experiment.losses[0], math.nan), metrics)
                   for name, policy in policies.items()}
            ctx.state.epoch, ctx.state.step_in_epoch, ctx.state.samples_in_epoch, ctx.state.meters = epoch + 1, 0, 0, {}
            improved = resume.is_improvement(monitors, cfg.monitor, metrics, ctx.state.best)
            if improved:
                ctx.state.best = {"metric": cfg.monitor, "value": metrics[cfg.monitor], "epoch": epoch + 1}
            if epoch + 1 < cfg.max_epoch and resume.patience_over(cfg, epoch + 1, ctx.state.best):
                ctx.state.stopped_early = resume.describe_early_stop(cfg, epoch + 1, ctx.state.best)
            if trial is not None:  # a sweep's trial: report the epoch; its pruner may end the run here
                verdict = trial.epoch_end(epoch + 1, metrics)
                ctx.state.pruned = verdict if verdict and epoch + 1 < cfg.max_epoch else None
            speed = (images_per_second, data_wait, time.perf_counter() - epoch_started)
            report_epoch(experiment, objects, ctx, epoch, means, speed, metrics, lrs, improved)
            saves.epoch_written()
            outputs.checkpoints.save_epoch_end(snapshot(), epoch + 1, improved,
                                               weights=lambda: inference_state(objects, ctx.state, cfg, metrics, info),
                                               metrics=metrics)
            outputs.write_status(ctx.state, "running")
            if manifest is not None:
                manifest.update()  # the data's fingerprint, once it is hashed
            compare = getattr(trial, "compare", None)
            if compare is not None:  # `reproduce`: each epoch's fingerprints against the original run's
                outputs.checkpoints.wait()
                verdict = compare(epoch + 1, outputs.checkpoints.fingerprints, metrics) if distributed.is_main() else None
                ctx.state.pruned = distributed.broadcast_object(verdict) or ctx.state.pruned
            if ctx.state.stopped_early:
                log.info("%s", ctx.state.stopped_early)
            if ctx.state.stopped_early or ctx.state.pruned:  # a sweep's worker says why it pruned
                break
    outputs.checkpoints.wait()  # "finished" means every file is whole on disk
    if manifest is not None:
        manifest.finish()
    outputs.close()
    outputs.write_status(ctx.state, "pruned" if ctx.state.pruned else "finished")
    outputs.end("pruned" if ctx.state.pruned else "finished", ctx.state.best)


def run_epoch(experiment, objects, loader, ctx, stopper, epoch, saves=None):
    """One pass over `loader` (which may start mid-epoch); returns ({name: epoch mean},
    images/s of the steps run in this call, the share of their time spent waiting for data).
    Without a bar (no terminal, --progress=false) a plain progress line is logged at the
    --print-freq cadence, at most every --log-interval seconds."""
    cfg, state = ctx.cfg, ctx.state
    for obj in objects.values():
        if isinstance(obj, torch.nn.Module):
            obj.train()
    if ctx.freezing is not None:
        ctx.freezing.hold_norms(objects)  # frozen BatchNorm keeps its statistics
    # --profile: in the first epoch with room for its warm-up and steps, on rank 0
    profiler = ctx.profiler if ctx.profiler is not None and len(loader) >= profiling.steps_needed(cfg) else None
    images_done, data_wait = 0, 0.0
    # A bar only on a terminal: redirected to a file its frames would fill it (report_epoch
    # logs a plain line per epoch either way).
    sampler = loader.sampler
    bar = tqdm(total=sampler.size - sampler.start, desc=f"epoch {epoch + 1}/{cfg.max_epoch}", unit="img",
               disable=not (cfg.progress and sys.stderr.isatty() and distributed.is_main()), leave=False,
               file=sys.stderr, mininterval=1.0)
    lines = bar.disable and distributed.is_main()  # plain progress lines instead of the bar
    # This rank's images and batches in the whole epoch (every batch before this call's first
    # was whole): the --warmup-epochs clock and the --accumulate groups.
    images_in_epoch = state.step_in_epoch * cfg.batch_size + len(sampler)
    batches = max(1, math.ceil(images_in_epoch / cfg.batch_size))
    started = tick = last_line = time.perf_counter()
    record, steps_before = faults.sample_log(sampler, cfg.batch_size), state.step_in_epoch  # a test hook
    for batch in loader:
        fetched = time.perf_counter()
        data_wait += fetched - tick
        if profiler is not None:
            profiler.begin(tick, fetched)
        fault = faults.at_step(state.global_step + 1, cfg.env)
        with ctx.phase("data"):
            batch = ctx.precision.to_device(batch)
        size = len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
        # epochs done once this batch is, in images: the same clock for any batch size
        ctx.progress = epoch + (state.step_in_epoch * cfg.batch_size + size) / images_in_epoch
        ctx.accumulation = accumulation_place(state.step_in_epoch, cfg.accumulate, batches, images_in_epoch,
                                              cfg.batch_size, size)
        with contextlib.nullcontext() if ctx.accumulation[1] else gradients_kept_local(objects), ctx.phase("step"):
            scalars = experiment.step(batch, objects, ctx)
        if ctx.stepped:  # once per step, after every optimizer of the step (ctx.optimize)
            ctx.precision.scaler.update()
            ctx.stepped = False
        if record is not None:
            record(state.step_in_epoch - steps_before, size)
        values = dict(scalars, **{experiment.losses[0]: math.nan} if fault == "nan" else {})
        # Means over every rank's images, the global batch size and the stop decision: the
        # same numbers on every rank (in one process: the step's own).
        values, size, stopper.requested, save = distributed.agree_step(
            values, size, stopper.pending or stopper.asked(), saves is not None and saves.wanted(state.global_step + 1))
        stopper.check_finite(values, epoch, state.step_in_epoch, experiment.losses)
        state.step_in_epoch += 1
        state.global_step += 1
        state.samples_in_epoch += size
        for name, value in values.items():
            state.meters.setdefault(name, METERS.build("loss")).add_batch(value, size)
            state.window.setdefault(name, []).append(value)
        images_done += size
        images_per_second = images_done / (time.perf_counter() - started)
        if not bar.disable:  # formatting the means costs a little every step; only a shown bar needs them
            bar.update(size)
            bar.set_postfix({name: f"{meter.average():.4f}" for name, meter in state.meters.items()}, refresh=False)
        if state.global_step % cfg.print_freq == 0:
            for name, window in state.window.items():
                if window:
                    ctx.outputs.plot(f"train/{name}", sum(window) / len(window), state.global_step)
            ctx.outputs.plot("train/images_per_second", images_per_second, state.global_step)
            if cfg.warmup_epochs and ctx.progress <= cfg.warmup_epochs + 1:  # the ramp, and where it ends
                for name, obj in objects.items():
                    if isinstance(obj, LrPolicy):  # "lr_policy" -> "train/lr", "lr_policy_g" -> "train/lr/g"
                        ctx.outputs.plot(f"train/{name.replace('lr_policy', 'lr').replace('_', '/')}",
                                         obj.lr * ctx.warmup_factor(), state.global_step)
            state.window = {}
            if ctx.outputs.writes:
                ctx.outputs.images(experiment.images(objects, ctx), state.global_step)
            if lines and time.perf_counter() - last_line >= cfg.log_interval:
                last_line = time.perf_counter()
                log_progress(epoch, cfg.max_epoch, images_done + sampler.start, sampler.size, state.meters,
                             images_per_second)
            parts = dict(zip(experiment.batch_names, batch)) if isinstance(batch, (tuple, list)) else {"batch": batch}
            # `epoch` as the bar and the log count it (1-based); state.epoch counts epochs finished.
            stopper.debug_check({**objects, **parts, **scalars, "cfg": cfg, "epoch": epoch + 1, "state": state, "ctx": ctx},
                                before_prompt=bar.clear)
        if saves is not None and not stopper.requested and saves.after_step(save, ctx.accumulation[1]):
            ctx.outputs.write_status(state, "running")  # --save-every: `runs` shows the saved position
        if profiler is not None and profiler.end():
            ctx.profiler = profiler = None  # done: the run goes on unprofiled
        if stopper.requested and ctx.accumulation[1]:
            break  # at the end of an accumulation group: no gradients are half-summed at a stop
        tick = time.perf_counter()
    bar.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    return {name: meter.average() for name, meter in state.meters.items()}, images_done / elapsed, data_wait / elapsed
