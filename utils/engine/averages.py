"""Weight averages (--ema): torch's AveragedModel of the modules an experiment names, updated
after each optimizer step, and the averaged weights val / test / generate choose."""
import logging
import math

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from utils.core.errors import UsageError
from utils.engine import checkpoint
from utils.engine.state import ENGINE_KEYS

log = logging.getLogger(__name__)


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
