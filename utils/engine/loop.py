"""The engine: the one training loop every experiment runs on, and its contract.

An experiment (experiments/<name>.py, a subclass of `Experiment`, registered in EXPERIMENTS)
says what a task means, and nothing else:
  - declares, as literals read without importing torch: its `commands` (train is the
    engine's, the others are its methods), `aliases`, `defaults` of shared options, its own
    `options` (configs/schema.py joins them to the config of its runs: YAML, flags,
    validation, help, whether they may change on resume), and the `monitors` --monitor is
    checked against;
  - gives its datasets (data/base.py is the protocol the engine reads: image parts and
    their normalisation on the device, skipped files, the test writer), a builder of named
    stateful objects (models, optimizers, lr policies, tensors such as a GAN's fixed noise),
    one training step `(batch, objects, ctx) -> {name: scalar}`, and optionally an
    evaluation returning metrics, image grids and texts to show.
It calls the engine through `ctx` (Context) for everything else: `ctx.optimize(loss, name)`
is the optimisation step (zero_grad, backward under the AMP scaler, unscale, --grad-clip,
step at the --warmup-epochs lr, the count, the --ema update of the modules it trains; with
--accumulate, k batches' gradients add up and DDP skips the all-reduce on all but the last;
the scaler updates once after the step); `ctx.averaged(name)` gives a module's moving
average for evaluation; `ctx.unwrap` gives modules without DDP / compile wrappers;
`ctx.generator(name)` a named random stream; `ctx.eval_loader`, `ctx.reduce_sums` and
`ctx.gather` evaluate a split sharded over ranks. No experiment touches the scaler, a
wrapper, a collective or a stream number.

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

Read top to bottom: Experiment, TrainState, Context (and the evaluation helpers), Outputs,
train, run_epoch, snapshot / restore, load_for_inference. docs/extending.md walks through
adding an experiment.
"""
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from typing import Optional

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import configs
from configs.loader import adopt_checkpoint_config, run_monitors
from configs.schema import FIELDS
from data import readable
from utils import runs
from utils.core import faults, seeding
from utils.core.errors import UsageError, UserError, plural
from utils.core.io import atomic_open
from utils.core.registry import EXPERIMENTS, METERS
from utils.engine import checkpoint, distributed, resume, runtime
from utils.engine.lr_policy import LrPolicy
from utils.engine.precision import Precision, compiled
from utils.engine.safe_stop import SafeStop, Stopped
from utils.visualize import Visualizer, save_grid

log = logging.getLogger(__name__)
# Checkpoint keys the engine writes itself; an experiment's objects take any other name.
ENGINE_KEYS = {"epoch", "step_in_epoch", "samples_in_epoch", "global_step", "optimizer_steps", "best", "stopped_early",
               "pruned", "epoch_meters", "window", "rng",
               "rng_ranks", "world_size", "config", "experiment", "info", "format_version", "scaler", "threads"}


class Experiment:
    """What an experiment provides. `commands`, `aliases`, `defaults`, `monitors` and
    `options` must be literals in the class body: `help`, the config and the CLI read them
    from the source without importing torch."""
    commands = {}  # {command: one-line doc}; "train" is the engine's, the others are methods
    aliases = {}  # {other name: command}, e.g. the card's `test` for the gan's `generate`
    defaults = {}  # option defaults of this experiment: schema < these < --config < flags
    batch_names = ("images", "labels")  # the batch's parts, by name, at the debugger prompt
    losses = ("loss",)  # returned scalars that must stay finite; the first feeds the lr policies
    monitors = {}  # {metric: "min" | "max"}: what evaluate() returns that --monitor may pick; the first is its default
    options = {}  # its own options: {name: {"default", "doc", "role", ...}} (configs/schema.py, experiment_fields)
    ema_modules = ()  # modules --ema may keep a moving average of (classify: the model; gan: the generator)
    cannot_accumulate = None  # why --accumulate does not apply to its step (None: it does)
    # Under torchrun: whether DDP copies rank 0's module buffers (BatchNorm statistics) to
    # every rank before each forward. The engine makes them equal at each epoch end anyway.
    broadcast_buffers = True

    def __init__(self, cfg):
        self.cfg = cfg

    def datasets(self):
        """(train dataset, validation dataset or None); runs before the run dir exists, so
        every check of data and options belongs here. It may replace self.cfg with options
        resolved from the data (e.g. --num-classes), which the run then uses and saves."""
        raise NotImplementedError

    def checkpoint_info(self):
        """Plain data about the run's data kept in every checkpoint under "info" (e.g. the
        class names, so `test` can name predictions without the train folder)."""
        return {}

    def build(self, ctx):
        """{name: object}: modules on ctx.device, optimizers, LrPolicy objects, tensors."""
        raise NotImplementedError

    def step(self, batch, objects, ctx):
        """One training step on a batch already on the device; returns {name: scalar}."""
        raise NotImplementedError

    def evaluate(self, objects, ctx):
        """Metrics after an epoch ({name: number}, including the monitored one), or None.
        Runs on every rank (runtime.make_loader gives each its share of the data); the
        metrics must be those of the whole split on every rank."""
        return None

    def images(self, objects, ctx):
        """{tag: images (N, C, H, W) in [0, 1]} to show at the --print-freq cadence and at
        each epoch end (TensorBoard and <run dir>/images/); called on rank 0 only, so no
        collective may run here (use checkpoint.unwrap(module) for a DDP-wrapped one)."""
        return {}

    def exportable(self, state, path):
        """What `export` writes for checkpoint dict `state` (read from `path`): a
        utils.export.Exportable. The default: nothing, said in one line."""
        raise UserError(f"experiment {self.cfg.experiment} has nothing to export (export takes classify's models and "
                        f"the gan's generator)")


@dataclasses.dataclass
class TrainState:
    """Where a run is: the counters, the best metric so far and this epoch's running means."""
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps of the next epoch already done
    samples_in_epoch: int = 0  # images of the next epoch's global order already consumed
    global_step: int = 0
    optimizer_steps: dict = dataclasses.field(default_factory=dict)  # optimizer name -> steps taken (ctx.optimize)
    best: Optional[dict] = None  # {"metric", "value", "epoch"}
    stopped_early: Optional[str] = None  # why --patience ended the run (saved; a resume that trains on drops it)
    pruned: Optional[str] = None  # why a sweep's pruner ended this trial (saved: the trial is over)
    meters: dict = dataclasses.field(default_factory=dict)  # name -> loss meter of this epoch
    window: dict = dataclasses.field(default_factory=dict)  # name -> values since the last curve point

    def as_checkpoint(self):
        mid_epoch = self.step_in_epoch > 0
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "samples_in_epoch": self.samples_in_epoch,
                "global_step": self.global_step, "optimizer_steps": dict(self.optimizer_steps),
                "best": self.best, "stopped_early": self.stopped_early, "pruned": self.pruned,
                "window": {k: list(v) for k, v in self.window.items()},
                "epoch_meters": {k: m.state_dict() for k, m in self.meters.items()} if mid_epoch else None}

    @classmethod
    def from_checkpoint(cls, state, batch_size):
        meters = {}
        for name, meter_state in (state.get("epoch_meters") or {}).items():
            meters[name] = METERS.build("loss")
            meters[name].load_state_dict(meter_state)
        # Checkpoints from before distributed training ran one process: steps x batch images.
        samples = state.get("samples_in_epoch", state["step_in_epoch"] * batch_size)
        return cls(epoch=state["epoch"], step_in_epoch=state["step_in_epoch"], samples_in_epoch=samples,
                   global_step=state["global_step"], optimizer_steps=dict(state.get("optimizer_steps") or {}),
                   best=state["best"], pruned=state.get("pruned"), meters=meters,
                   window={k: list(v) for k, v in state["window"].items()})


@dataclasses.dataclass
class Context:
    """What the experiment's hooks receive besides their objects, and the engine's services
    to them: `optimize` (the optimisation step), `unwrap` (a module without its DDP /
    compile wrappers), `generator` (a named random stream), and `reduce_sums` / `gather` /
    `eval_loader` (evaluation over every rank's share of a split)."""
    cfg: object
    device: torch.device
    precision: Precision
    state: TrainState
    outputs: "Outputs"
    objects: dict = dataclasses.field(default_factory=dict)  # the experiment's named objects, once built
    stepped: bool = False  # an optimizer stepped in this training step: the scaler updates after it
    # This batch's place in its accumulation group (--accumulate; run_epoch sets it): whether
    # it is the group's first (gradients are zeroed) and last (the optimizer steps), and the
    # weight of its mean loss (its share of the group's images).
    accumulation: tuple = (True, True, 1.0)
    progress: float = 1.0  # epochs of training done once this batch is, counted in images (the --warmup-epochs clock)
    averages: dict = dataclasses.field(default_factory=dict)  # module name -> its AveragedModel (--ema)
    averaged_by: dict = dataclasses.field(default_factory=dict)  # optimizer name -> the module names it averages

    def optimize(self, loss, optimizer="optimizer", clip=None):
        """The optimisation step of one optimizer (by object name, or the optimizer itself)
        on `loss`: zero its gradients, backward through the loss scaled by the AMP scaler,
        unscale and clip the gradient norm (--grad-clip, or `clip`; 0 = no clipping), step
        at the lr of the --warmup-epochs ramp, count the step in state.optimizer_steps and
        update the moving averages of the modules it trains (--ema). With --accumulate=k the
        gradients of k batches add up (each loss weighted by its share of the group's
        images) and only the group's last batch steps. The scaler updates once per training
        step, after the experiment's step returns (PyTorch's rule with several optimizers)."""
        name = optimizer if isinstance(optimizer, str) else next(
            (key for key, obj in self.objects.items() if obj is optimizer), "optimizer")
        optimizer = self.objects[optimizer] if isinstance(optimizer, str) else optimizer
        scaler = self.precision.scaler
        first, last, weight = self.accumulation
        if first:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss if weight == 1 else loss * weight).backward()
        if not last:
            return  # the group's next batch adds its gradients (run_epoch skips the all-reduce)
        max_norm = self.cfg.grad_clip if clip is None else clip
        if max_norm:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_norm)
        with warmed_up(optimizer, self.warmup_factor()):
            scaler.step(optimizer)
        self.stepped = True
        steps = self.state.optimizer_steps[name] = self.state.optimizer_steps.get(name, 0) + 1
        for module in self.averaged_by.get(name, ()):
            update_average(self.averages[module], self.objects[module], self.cfg, steps)

    def warmup_factor(self):
        """The lr factor of an optimizer step now: min(1, epochs done / --warmup-epochs)."""
        return min(1.0, self.progress / self.cfg.warmup_epochs) if self.cfg.warmup_epochs else 1.0

    def averaged(self, module):
        """The moving average (--ema) of module `module` (by name) as a plain module, or
        None when the run keeps none: what evaluate() measures beside the raw weights."""
        average = self.averages.get(module)
        return average.module if average is not None else None

    def unwrap(self, module):
        """The plain module (by object name, or the module) inside DDP and torch.compile:
        what to evaluate on one rank's share, draw images with, or inspect."""
        return checkpoint.unwrap(self.objects[module] if isinstance(module, str) else module)

    def generator(self, name, *keys, device="cpu"):
        """A torch.Generator for the random stream `name` (e.g. "fixed_noise"): a pure
        function of (--seed, name, keys), independent of every other stream and of the
        global RNG, so drawing from it shifts nothing else."""
        return torch.Generator(device=device).manual_seed(seeding.derive_seed(self.cfg.seed, seeding.stream(name), *keys))

    def reduce_sums(self, values):
        """reduce_sums(values): the sums over every rank."""
        return reduce_sums(values)

    def gather(self, value):
        """gather(value): every rank's value, in rank order."""
        return gather(value)

    def eval_loader(self, dataset):
        """eval_loader(dataset, cfg, device) with this run's cfg and device."""
        return eval_loader(dataset, self.cfg, self.device)


@contextlib.contextmanager
def warmed_up(optimizer, factor):
    """The optimizer's lr times `factor` for one step, then exactly the lr it had: the lr
    policies, and an lr typed at the debugger, never see the ramp."""
    if factor == 1:
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr


def make_average(module):
    """torch's AveragedModel of `module` (unwrapped), kept on the module's device; its
    n_averaged counter stays on the CPU, so an update never waits for the GPU."""
    return AveragedModel(checkpoint.unwrap(module), use_buffers=False)


def update_average(average, module, cfg, steps):
    """Fold the module's weights after optimizer step `steps` into its average: decay
    --ema x (1 - exp(-steps / --ema-warmup)) (the first update copies); AveragedModel
    copies the BatchNorm running statistics and other buffers as they are."""
    decay = cfg.ema * (1 - math.exp(-steps / cfg.ema_warmup)) if cfg.ema_warmup else cfg.ema
    average.multi_avg_fn = get_ema_multi_avg_fn(decay)
    average.update_parameters(checkpoint.unwrap(module))


def chosen_average(cfg, state, name, path):
    """For val / test / generate: the weights of module `name`'s moving average when the
    checkpoint holds one and --use-ema is not false (logged), else None (the raw weights);
    --use-ema on a checkpoint without one is a one-line error."""
    average = averaged_weights(state, name)
    if cfg.use_ema and average is None:
        raise UsageError(f"{path} holds no moving average of the weights (the run was trained without --ema); "
                         f"drop --use-ema")
    if average is None or cfg.use_ema is False:
        return None
    log.info("the EMA weights of %s (--use-ema=false for the raw ones)", path)
    return average


def averaged_weights(state, name):
    """The weights of module `name`'s moving average in a checkpoint dict (best.pth keeps
    the plain module's state dict, last.pth the AveragedModel's), or None."""
    saved = state.get(f"{name}_ema")
    if not isinstance(saved, dict):
        return None
    if "n_averaged" in saved:
        return {key[len("module."):]: value for key, value in saved.items() if key.startswith("module.")}
    return saved


# -- evaluation over ranks (for evaluate(), and for val / test, which have no Context) --------
def eval_loader(dataset, cfg, device):
    """A loader over this rank's contiguous share of `dataset`, in order (all of it in one
    process): evaluate each share, then reduce_sums / gather the results."""
    return runtime.make_loader(dataset, cfg, device, shuffle=False)


def reduce_sums(values):
    """{name: sum over every rank} of {name: this rank's sum or count} (a list of numbers
    gives a list): the whole split's totals on every rank; float64, so counts stay exact."""
    if isinstance(values, dict):
        return dict(zip(values, distributed.sum_values(list(values.values()))))
    return distributed.sum_values(list(values))


def gather(value):
    """[rank 0's value, rank 1's, ...] on every rank ([value] in one process); with
    eval_loader's contiguous shares, concatenating them gives the split's order."""
    return distributed.gather_objects(value)


class Outputs:
    """Everything a run writes (curves, image grids, checkpoints) goes through here, so one
    `writes` flag (rank 0 under DDP) guards it."""

    def __init__(self, run_dir, cfg, writes=True, guard=None):
        self.run_dir, self.cfg, self.writes = run_dir, cfg, writes
        # guard(): raises when this process may no longer write to the run dir (a sweep's
        # trial taken over by another worker); called before every checkpoint and status.
        self.guard = guard or (lambda: None)
        self.checkpoints = checkpoint.CheckpointManager(run_dir, cfg.keep_checkpoints, writes, self.guard)
        self.vis = None

    def open(self, purge_step):
        if self.writes:
            self.vis = Visualizer(self.run_dir, self.cfg.visualizer, env=self.cfg.env, purge_step=purge_step)

    def plot(self, name, value, step):
        if self.vis:
            self.vis.plot(name, value, step)

    def table(self, name, header, rows, step):
        if self.vis:
            self.vis.table(name, header, rows, step)

    def text(self, tag, text, step):
        """A text (a generated sample) in TensorBoard's text tab, and <run dir>/texts/."""
        if self.vis:
            self.vis.log(text, tag, step)
        if self.writes:
            path = self.run_dir / "texts" / f"{tag.replace('/', '_')}_step{step:07d}.txt"
            with atomic_open(path, "w", encoding="utf-8") as handle:  # creates texts/
                handle.write(text + "\n")

    def images(self, grids, step):
        for tag, images in grids.items():
            if self.vis:
                self.vis.img(tag, images, step)
            if self.writes:
                save_grid(images, self.run_dir / "images" / f"{tag.replace('/', '_')}_step{step:07d}.png")

    def flush(self):
        if self.vis:
            self.vis.flush()

    def write_status(self, state, status, error=None):
        """<run dir>/status.json: what `python main.py runs` shows without loading a checkpoint.
        status: running (pid on host), finished (`stopped_early` says why when --patience ended
        it), pruned (by a sweep's pruner: `pruned` says why), stopped (resumable), crashed (error)."""
        if not self.writes:
            return
        self.guard()
        record = {"status": status, "experiment": self.cfg.experiment, "model": self.cfg.model,
                  "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "max_epoch": self.cfg.max_epoch,
                  "global_step": state.global_step, "best": state.best, "error": error,
                  "stopped_early": state.stopped_early, "pruned": state.pruned,
                  "pid": os.getpid(), "host": socket.gethostname(), "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
        with atomic_open(self.run_dir / runs.STATUS, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)

    def close(self):
        if self.vis:
            self.vis.close()
            self.vis = None


def train(cfg, trial=None):
    """`python main.py train`: a new run, or --resume of one, of cfg.experiment. Returns its
    outcome: {"run_dir", "epoch" (epochs done), "best", "pruned"}.

    `trial` (a sweep's, utils/sweep/worker.py) is told each epoch's metrics on every rank
    (`trial.epoch_end(epoch, metrics)`), and a reason it returns ends the run, pruned, after
    that epoch's checkpoints; `trial.check_owner()` is called before every write and raises
    when the run dir now belongs to another worker; `trial.resume_command`, when it has one,
    is what a stop prints to go on."""
    if cfg.resume:
        distributed.check_shared(resume.checkpoint_path(cfg))  # every node must see the run it resumes
    resumed = resume.load_resume_state(cfg)  # None for a fresh run
    # Rank 0 names a new run (its clock, its look at the folder) for every rank.
    cfg = resumed["config"] if resumed else distributed.broadcast_object(runtime.name_run(cfg))
    saved = resumed["state"] if resumed else None
    if saved is not None:
        over = {"run_dir": cfg.run_dir, "epoch": saved["epoch"], "best": saved["best"], "pruned": saved.get("pruned")}
        if saved.get("pruned"):
            if distributed.is_main() and trial is None:
                print(f"run {cfg.env} has finished: its sweep's pruner ended it ({saved['pruned']}); nothing to "
                      f"resume. Train its weights on in a new run: {runtime.main_command()} train "
                      f"--config={cfg.run_dir / 'config.yaml'} --load-model-path={cfg.run_dir / checkpoint.LAST} "
                      f"--env=<new name>")
            return over
        if saved["epoch"] >= cfg.max_epoch:
            done = saved["epoch"]
            if distributed.is_main() and trial is None:
                print(f"run {cfg.env} has finished: {done} of --max-epoch={cfg.max_epoch} epochs done, nothing to "
                      f"resume. Train it further: {runtime.resume_command(cfg)} --max-epoch={done + max(1, done // 2)}")
            return over
        if saved.get("stopped_early") and early_stop(cfg, saved["epoch"], saved["best"]):
            if distributed.is_main() and trial is None:
                larger = saved["epoch"] - saved["best"]["epoch"] + 1 if saved["best"] else 0
                print(f"run {cfg.env} has finished: {saved['stopped_early']}; nothing to resume. Train on with a "
                      f"larger --patience (0 = off): {runtime.resume_command(cfg)} --patience={larger}")
            return over
    experiment = EXPERIMENTS.get(cfg.experiment)(cfg)  # --monitor was checked against its monitors with the config
    distributed.on_main(lambda: runtime.check_new_run(cfg))  # before any data is read or model built
    device = distributed.pick_device(cfg)
    # Everything that can fail on bad input runs before the run dir exists: the data, the
    # objects (an unknown torchvision model, --pretrained), the weights to resume or load.
    named = cfg
    train_set, val_set = experiment.datasets()
    cfg = experiment.cfg  # with the options resolved from the data
    if len(train_set) == 0:
        raise UserError(f"the train split of {cfg.train_data_root} has no images; check --train-data-root")
    distributed.on_main(lambda: runtime.check_output_dir(cfg.run_dir, "--checkpoint-dir"))
    seeding.seed_everything(cfg.seed)  # the same initial weights on every rank
    outputs = Outputs(cfg.run_dir, cfg, writes=distributed.is_main(),
                      guard=trial.check_owner if trial is not None else None)
    ctx = Context(cfg, device, Precision(cfg, device, train_set), TrainState(), outputs)
    objects = experiment.build(ctx)
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
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module) and not isinstance(obj, AveragedModel):
            objects[name] = distributed.wrap(obj, device, type(experiment).broadcast_buffers, cfg.sync_bn)
            if cfg.compile and any(p.requires_grad for p in obj.parameters()):
                objects[name] = compiled(objects[name])
    if distributed.world_size() > 1 and not restored:
        # Dropout masks, a GAN's noise: each rank draws its own, from (seed, rank).
        seeding.seed_everything(seeding.derive_seed(cfg.seed, seeding.RANK, distributed.rank()))
    run_dir, created = distributed.on_main(lambda: runtime.start_run(cfg, named)) or (cfg.run_dir, False)
    try:
        distributed.check_shared(cfg.run_dir / "config.yaml")  # across nodes: one line now, not a traceback later
    except distributed.NotShared:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    describe_world(cfg, resumed["state"] if restored else None)
    try:
        _train_in(run_dir, cfg, experiment, objects, ctx, train_set, val_set, resumed, restored, trial)
    except BaseException as error:
        with contextlib.suppress(Exception):  # the error that stopped the run matters more than a write's
            outputs.checkpoints.wait()
        outputs.close()
        if getattr(error, "fenced", False):
            pass  # the run dir is another worker's now: no status, no clean-up
        elif created and not any(run_dir.glob("*.pth")):
            # A new run that ended before writing any checkpoint holds nothing to resume or
            # evaluate: it leaves no folder behind, like a run that cannot start.
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # a full disk must not hide the error that stopped the run
                outputs.write_status(ctx.state, "stopped" if isinstance(error, (Stopped, KeyboardInterrupt)) else "crashed",
                                     error=str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise
    outcome = {"run_dir": run_dir, "epoch": ctx.state.epoch, "best": ctx.state.best, "pruned": ctx.state.pruned}
    if not distributed.is_main():
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
    outputs.write_status(ctx.state, "running")
    # Points at the saved step were logged before the checkpoint was written; later ones
    # belong to work the resumed run redoes (all of it when it restarts from scratch).
    outputs.open(purge_step=(ctx.state.global_step + 1 if restored else 0) if resumed else None)
    if ctx.state.global_step == 0 and outputs.writes:
        outputs.images(experiment.images(objects, ctx), 0)

    def snapshot():
        return checkpoint_state(objects, ctx.state, cfg, experiment.checkpoint_info())

    policies = {name: obj for name, obj in objects.items() if isinstance(obj, LrPolicy)}
    monitors = run_monitors(cfg.experiment, cfg.ema)  # read from the experiment's source: once, not per epoch
    resume_with = getattr(trial, "resume_command", None)  # a sweep goes on by its own command
    with SafeStop(cfg, outputs.checkpoints, snapshot, outputs.close, resume_with) as stopper:
        # One loader for the run: its workers stay up between epochs (persistent_workers), and
        # each epoch only tells the sampler, which runs in this process, which order to give.
        loader = runtime.make_loader(train_set, cfg, ctx.device, shuffle=True, epoch=ctx.state.epoch,
                                     start=ctx.state.samples_in_epoch)
        for epoch in range(ctx.state.epoch, cfg.max_epoch):
            loader.sampler.set_epoch(epoch, start=ctx.state.samples_in_epoch)
            means, images_per_second, data_wait = run_epoch(experiment, objects, loader, ctx, stopper, epoch)
            if stopper.requested:
                break  # SafeStop saves last.pth (mid-epoch) on the way out
            # (an average's module only: its n_averaged counter stays on the CPU, which nccl cannot send)
            distributed.sync_buffers(obj.module if isinstance(obj, AveragedModel) else obj
                                     for obj in objects.values() if isinstance(obj, torch.nn.Module))
            metrics = experiment.evaluate(objects, ctx)
            # "lr_policy" -> curve "lr", "lr_policy_g" -> "lr/g"
            lrs = {name.replace("lr_policy", "lr"): policy.step(means.get(experiment.losses[0], math.nan), metrics)
                   for name, policy in policies.items()}
            ctx.state.epoch, ctx.state.step_in_epoch, ctx.state.samples_in_epoch, ctx.state.meters = epoch + 1, 0, 0, {}
            improved = is_improvement(monitors, cfg.monitor, metrics, ctx.state.best)
            if improved:
                ctx.state.best = {"metric": cfg.monitor, "value": metrics[cfg.monitor], "epoch": epoch + 1}
            if epoch + 1 < cfg.max_epoch and early_stop(cfg, epoch + 1, ctx.state.best):
                ctx.state.stopped_early = describe_early_stop(cfg, epoch + 1, ctx.state.best)
            if trial is not None:  # a sweep's trial: report the epoch; its pruner may end the run here
                verdict = trial.epoch_end(epoch + 1, metrics)
                ctx.state.pruned = verdict if verdict and epoch + 1 < cfg.max_epoch else None
            report_epoch(experiment, objects, ctx, epoch, means, (images_per_second, data_wait), metrics, lrs, improved)
            outputs.checkpoints.save_epoch_end(snapshot(), epoch + 1, improved,
                                               weights=lambda: inference_state(objects, ctx.state, cfg, metrics,
                                                                               experiment.checkpoint_info()))
            outputs.write_status(ctx.state, "running")
            if ctx.state.stopped_early:
                log.info("%s", ctx.state.stopped_early)
            if ctx.state.stopped_early or ctx.state.pruned:  # a sweep's worker says why it pruned
                break
    outputs.checkpoints.wait()  # "finished" means every file is whole on disk
    outputs.close()
    outputs.write_status(ctx.state, "pruned" if ctx.state.pruned else "finished")


def early_stop(cfg, epochs_done, best):
    """Whether --patience ends the run after `epochs_done` epochs, given the best so far."""
    return bool(cfg.patience) and epochs_done - (best["epoch"] if best else 0) >= cfg.patience


def describe_early_stop(cfg, epochs_done, best):
    where = f"stopped early at epoch {epochs_done}"
    if not best:
        return f"{where}: no finite {cfg.monitor} in {plural(cfg.patience, 'epoch')} (--patience)"
    return (f"{where}: {cfg.monitor} has not improved for {plural(epochs_done - best['epoch'], 'epoch')} "
            f"(--patience={cfg.patience}; best {best['value']:.4f} at epoch {best['epoch']})")


def add_averages(names, objects, ctx):
    """--ema: an AveragedModel of each module in `names` as object `<name>_ema` (saved and
    restored like any object), updated by the optimizers that train it (ctx.optimize)."""
    for name in names:
        module = objects[name]
        if f"{name}_ema" in objects or f"{name}_ema" in ENGINE_KEYS:
            raise ValueError(f"object {name}_ema exists already: --ema keeps the average of {name} under that name")
        ctx.averages[name] = objects[f"{name}_ema"] = make_average(module)
        owned = {id(p) for p in module.parameters()}
        for key, obj in objects.items():
            trains = isinstance(obj, torch.optim.Optimizer) and any(id(p) in owned for g in obj.param_groups
                                                                     for p in g["params"])
            if trains:
                ctx.averaged_by.setdefault(key, []).append(name)


def describe_world(cfg, state):
    """Log the global batch under torchrun, and what changes when a run resumes under
    another number of processes than it was saved with."""
    world = distributed.world_size()
    if world > 1:
        log.info("global batch %d = %d processes x --batch-size %d", world * cfg.batch_size, world, cfg.batch_size)
    saved = (state or {}).get("world_size", 1)
    if state is not None and saved != world and distributed.is_main():
        log.warning("resuming a run saved by %s with %s: the global batch changes from %d to %d images; the epoch's "
                    "image order continues where it stopped (image %d), but the steps are not those of an "
                    "uninterrupted run", plural(saved, "process", "processes"), plural(world, "process", "processes"),
                    saved * cfg.batch_size, world * cfg.batch_size, state.get("samples_in_epoch", 0))


def next_commands(cfg, experiment):
    """The commands that use a finished run, with its real --env, one per line after train's
    `next:` (test first, as the README shows them, then the experiment's others, runs and
    TensorBoard), each typed as this shell can run it (runtime.program)."""
    chosen = "" if cfg.experiment == FIELDS["experiment"].default else f" --experiment={cfg.experiment}"
    main = runtime.main_command()
    names = sorted((name for name in type(experiment).commands if name != "train"), key=lambda name: name != "test")
    commands = [f"{main} {name}{chosen} --env={cfg.env}{runtime.checkpoint_dir_flag(cfg)}" for name in names]
    return commands + [f"{main} runs{runtime.checkpoint_dir_flag(cfg)}",
                       f"{runtime.program('tensorboard')} --logdir {cfg.checkpoint_dir}"]


def run_epoch(experiment, objects, loader, ctx, stopper, epoch):
    """One pass over `loader` (which may start mid-epoch); returns ({name: epoch mean},
    images/s of the steps run in this call, the share of their time spent waiting for data).
    Without a bar (no terminal, --progress=false) a plain progress line is logged at the
    --print-freq cadence, at most every --log-interval seconds."""
    cfg, state = ctx.cfg, ctx.state
    for obj in objects.values():
        if isinstance(obj, torch.nn.Module):
            obj.train()
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
    for batch in loader:
        data_wait += time.perf_counter() - tick
        fault = faults.at_step(state.global_step + 1)
        batch = ctx.precision.to_device(batch)
        size = len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
        # epochs done once this batch is, in images: the same clock for any batch size
        ctx.progress = epoch + (state.step_in_epoch * cfg.batch_size + size) / images_in_epoch
        ctx.accumulation = accumulation_place(state.step_in_epoch, cfg.accumulate, batches, images_in_epoch,
                                              cfg.batch_size, size)
        with contextlib.nullcontext() if ctx.accumulation[1] else gradients_kept_local(objects):
            scalars = experiment.step(batch, objects, ctx)
        if ctx.stepped:  # once per step, after every optimizer of the step (ctx.optimize)
            ctx.precision.scaler.update()
            ctx.stepped = False
        values = dict(scalars, **{experiment.losses[0]: math.nan} if fault == "nan" else {})
        # Means over every rank's images, the global batch size and the stop decision: the
        # same numbers on every rank (in one process: the step's own).
        values, size, stopper.requested = distributed.agree_step(values, size, stopper.pending)
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
        if stopper.requested and ctx.accumulation[1]:
            break  # at the end of an accumulation group: no gradients are half-summed at a stop
        tick = time.perf_counter()
    bar.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    return {name: meter.average() for name, meter in state.meters.items()}, images_done / elapsed, data_wait / elapsed


def accumulation_place(index, accumulate, batches, images, batch_size, size):
    """(first, last, weight) of the epoch's batch `index` (0-based) in its --accumulate group:
    groups of `accumulate` batches from the epoch's start, the last one cut at the epoch's
    end; the weight is the batch's share of its group's images (`size` of them), so the
    summed gradients are those of the group's mean loss, as one large batch's."""
    if accumulate == 1:
        return True, True, 1.0
    group = index // accumulate
    end = min((group + 1) * accumulate, batches)
    in_group = min((group + 1) * accumulate * batch_size, images) - group * accumulate * batch_size
    return index % accumulate == 0, index == end - 1, size / in_group


@contextlib.contextmanager
def gradients_kept_local(objects):
    """DDP's no_sync for every wrapped module: an accumulating batch's forward and backward
    add to the local gradients without an all-reduce (the group's last batch does it)."""
    with contextlib.ExitStack() as stack:
        for obj in objects.values():
            inner = getattr(obj, "_orig_mod", obj)
            if isinstance(inner, torch.nn.parallel.DistributedDataParallel):
                stack.enter_context(inner.no_sync())
        yield


def log_progress(epoch, epochs, done, total, meters, images_per_second):
    """The bar's content as one log line: 'epoch 2/10: 1,280/5,000 img (26%), loss 0.4132
    accuracy 0.8150, 41 img/s, 1m31s left in the epoch'."""
    left = (total - done) / max(images_per_second, 1e-9)
    means = " ".join(f"{name} {meter.average():.4f}" for name, meter in meters.items())
    log.info("epoch %d/%d: %s/%s img (%.0f%%), %s, %.0f img/s, %s left in the epoch", epoch + 1, epochs, f"{done:,}",
             f"{total:,}", 100 * done / max(total, 1), means, images_per_second, _duration(left))


def _duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def is_improvement(monitors, monitor, metrics, best):
    if not monitors or metrics is None or math.isnan(metrics[monitor]):
        return False
    better = min if monitors[monitor] == "min" else max
    return best is None or better(metrics[monitor], best["value"]) != best["value"]


def report_epoch(experiment, objects, ctx, epoch, means, speed, metrics, lrs, improved):
    """Epoch-end curves, image grids and log line; written before the epoch's checkpoints, so
    a run killed in between redoes and re-logs them (TensorBoard purges the first copy).
    `speed`: (images per second, share of the time spent waiting for data)."""
    step, outputs = ctx.state.global_step, ctx.outputs
    images_per_second, data_wait = speed
    for name, value in means.items():
        outputs.plot(f"train/epoch_{name}", value, step)
    for name, value in (metrics or {}).items():
        outputs.plot(name.replace("_", "/", 1), value, step)
    for name, lr in lrs.items():
        outputs.plot(name.replace("_", "/", 1), lr, step)
    outputs.plot("images_per_second", images_per_second, step)
    if outputs.writes:
        outputs.images(experiment.images(objects, ctx), step)
    outputs.flush()
    parts = [f"train {' '.join(f'{k} {v:.4f}' for k, v in means.items())}"]
    if metrics:
        parts.append(" ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    memory = runtime.resident_megabytes()
    outputs.plot("memory/resident_mb", memory, step)
    if ctx.cfg.accumulate > 1:
        parts.append(f"{plural(sum(ctx.state.optimizer_steps.values()), 'optimizer step')} so far")
    parts += [" ".join(f"{name} {lr:.2e}" for name, lr in lrs.items()),
              f"{images_per_second:.0f} img/s ({100 * data_wait:.0f}% waiting for data)", f"rss {memory:.0f} MB"]
    log.info("epoch %d: %s%s", epoch + 1, " | ".join(p for p in parts if p), " | best" if improved else "")


# -- snapshot and restore -------------------------------------------------------------------
def checkpoint_state(objects, state, cfg, info=None):
    """Everything a bit-exact resume needs, as plain data (see utils/engine/checkpoint.py), with the
    experiment's `info` about its data. Under torchrun every rank must call it (it gathers
    each rank's RNG state: "rng" is rank 0's, "rng_ranks" all of them)."""
    saved = {}
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module):
            saved[name] = checkpoint.unwrap(obj).state_dict()
        elif torch.is_tensor(obj):
            saved[name] = obj.detach().cpu().clone()
        elif isinstance(obj, torch.amp.GradScaler):
            saved[name] = obj.state_dict() if obj.is_enabled() else None
        else:
            saved[name] = obj.state_dict()
    rng = distributed.gather_objects(seeding.rng_states())  # a collective under torchrun
    ranks = {"rng_ranks": rng, "world_size": len(rng)} if len(rng) > 1 else {}
    return {**saved, **state.as_checkpoint(), "rng": rng[0], **ranks, "config": configs.as_dict(cfg),
            "experiment": cfg.experiment, "info": info or {}, "threads": torch.get_num_threads()}


def inference_state(objects, state, cfg, metrics, info=None):
    """best.pth: what inference needs and nothing more (the weights of every module, the
    config, the metrics of that epoch); last.pth stays complete for resume."""
    weights = {name: (obj.module if isinstance(obj, AveragedModel) else checkpoint.unwrap(obj)).state_dict()
               for name, obj in objects.items() if isinstance(obj, torch.nn.Module)}
    return {**weights, "kind": checkpoint.WEIGHTS_KIND, "epoch": state.epoch, "global_step": state.global_step,
            "best": state.best, "metrics": metrics, "config": configs.as_dict(cfg), "experiment": cfg.experiment,
            "info": info or {}}


def restore(state, objects, source, cfg):
    """Put a checkpoint's state back into live objects (in place); returns its TrainState.
    Each rank takes its own saved RNG state; a rank the saved run did not have (resumed
    under more processes) draws from (seed, rank, global step)."""
    for name, obj in objects.items():
        if name not in state:
            raise UsageError(f"{source} has no {name!r}: it was not written by this experiment's train")
        saved = state[name]
        if isinstance(obj, torch.nn.Module):
            checkpoint.load_weights(checkpoint.unwrap(obj), saved, source=source)
        elif torch.is_tensor(obj):
            obj.copy_(saved)
        elif isinstance(obj, torch.amp.GradScaler):
            if saved and obj.is_enabled():
                obj.load_state_dict(saved)
        else:
            obj.load_state_dict(saved)
    saved_threads = state.get("threads")
    if saved_threads and saved_threads != torch.get_num_threads() and distributed.is_main():
        log.warning("this run was saved with %s and resumes with %d: float sums are split differently, so from here "
                    "on the weights differ in the last bits from an uninterrupted run (give --threads=%d for bit-exact)",
                    plural(saved_threads, "intra-op thread"), torch.get_num_threads(), saved_threads)
    saved_rng = state.get("rng_ranks") or [state["rng"]]
    if distributed.rank() < len(saved_rng):
        seeding.set_rng_states(saved_rng[distributed.rank()])
    else:
        seeding.seed_everything(seeding.derive_seed(cfg.seed, seeding.RANK, distributed.rank(), state["global_step"]))
    return TrainState.from_checkpoint(state, cfg.batch_size)


def load_weights(objects, path):
    """--load-model-path for train: initial weights of the modules found in the checkpoint
    (a runner checkpoint by object name, or a bare state_dict for a single model)."""
    state = checkpoint.load_checkpoint(path)
    modules = {name: obj for name, obj in objects.items()
               if isinstance(obj, torch.nn.Module) and not isinstance(obj, AveragedModel)}  # an average starts at step 1
    found = {name: state[name] for name in modules if isinstance(state.get(name), dict)}
    if not found and len(modules) == 1:
        found = {next(iter(modules)): state}  # a bare state_dict, as the book's model.save() writes
    if not found:
        raise UsageError(f"{path} holds none of {', '.join(modules)}; give a checkpoint of this experiment")
    for name, weights in found.items():
        checkpoint.load_weights(checkpoint.unwrap(modules[name]), weights, source=str(path))
    log.info("initial weights of %s from %s", ", ".join(found), path)


def load_for_inference(cfg):
    """(cfg, device, checkpoint dict, path) for val/test/generate: the checkpoint from
    --load-model-path, else <run dir>/best.pth or last.pth; the options that define the model
    and the data split come from the checkpoint's saved config."""
    path = inference_checkpoint(cfg)
    state = checkpoint.load_checkpoint(path)
    if isinstance(state.get("config"), dict):
        cfg = adopt_checkpoint_config(cfg, state["config"], source=str(path))
    log.info("loaded %s", path)
    return cfg, distributed.pick_device(cfg), state, path


def inference_checkpoint(cfg):
    """The checkpoint val / test / generate / export read: --load-model-path, else <run
    dir>/best.pth or last.pth."""
    if cfg.load_model_path:
        return cfg.load_model_path
    if cfg.env:
        return checkpoint.find_for_inference(cfg.run_dir)
    raise UsageError("give --load-model-path=<checkpoint.pth> or --env=<run name> (a folder under --checkpoint-dir)")
