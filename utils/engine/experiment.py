"""The experiment contract: what an experiment (experiments/<name>.py, a subclass of
`Experiment`, registered in EXPERIMENTS) provides, and `Context`, the engine's services to its
hooks. docs/extending.md is the reference, with an example of each.

An experiment says what a task means, and nothing else:
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
"""
import contextlib
import dataclasses

import torch

from utils.core import seeding
from utils.core.errors import UserError
from utils.engine import checkpoint, distributed, runtime
from utils.engine.averages import update_average
from utils.engine.outputs import Outputs
from utils.engine.precision import Precision
from utils.engine.optimizers import build_optimizer
from utils.engine.state import TrainState


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
    unprinted = ()  # metrics the epoch's log line leaves out (a near-copy of another); TensorBoard keeps them
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
class Context:
    """What the experiment's hooks receive besides their objects, and the engine's services
    to them: `optimize` (the optimisation step), `unwrap` (a module without its DDP /
    compile wrappers), `generator` (a named random stream), `optimizer` (the run's optimizer
    over some parameters), and `reduce_sums` / `gather` / `eval_loader` (evaluation over
    every rank's share of a split)."""
    cfg: object
    device: torch.device
    precision: Precision
    state: TrainState
    outputs: Outputs
    objects: dict = dataclasses.field(default_factory=dict)  # the experiment's named objects, once built
    stepped: bool = False  # an optimizer stepped in this training step: the scaler updates after it
    # This batch's place in its accumulation group (--accumulate; run_epoch sets it): whether
    # it is the group's first (gradients are zeroed) and last (the optimizer steps), and the
    # weight of its mean loss (its share of the group's images).
    accumulation: tuple = (True, True, 1.0)
    progress: float = 1.0  # epochs of training done once this batch is, counted in images (the --warmup-epochs clock)
    averages: dict = dataclasses.field(default_factory=dict)  # module name -> its AveragedModel (--ema)
    averaged_by: dict = dataclasses.field(default_factory=dict)  # optimizer name -> the module names it averages
    freezing: object = None  # what is frozen by epoch (utils/engine/freezing.py Freezing), set by the engine
    grouping: object = None  # the run's parameter groups (utils/engine/param_groups.py Grouping), set by the engine
    profiler: object = None  # --profile's recorder while it records (utils/engine/profiling.py), else None

    def optimizer(self, parameters, **settings):
        """The run's optimizer over `parameters` (a module, or parameters or param groups):
        --optimizer with --lr, --weight-decay, --momentum, or `settings` in their place
        (utils/engine/optimizers.py), in the parameter groups of --param-groups, --no-decay-norm-bias and
        --layer-decay when `parameters` is a module. For `build`."""
        return build_optimizer(self.cfg, parameters, self.grouping, **settings)

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
        with self.phase("backward"):
            scaler.scale(loss if weight == 1 else loss * weight).backward()
        if not last:
            return  # the group's next batch adds its gradients (run_epoch skips the all-reduce)
        with self.phase("optimizer"):
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

    def phase(self, name):
        """A span of the training step that --profile times and names in its trace
        (backward, optimizer); nothing while it does not record."""
        return self.profiler.phase(name) if self.profiler is not None else contextlib.nullcontext()

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
