"""Train state and checkpoint contents: where a run is (TrainState), what last.pth and
best.pth hold (checkpoint_state, inference_state), putting a checkpoint back into live
objects (restore, load_weights), and the checkpoint val / test / generate / export read."""
import dataclasses
import logging
from typing import Optional

import torch
from torch.optim.swa_utils import AveragedModel

import configs
from configs.loader import adopt_checkpoint_config
from utils.core import seeding
from utils.core.errors import UsageError, plural
from utils.core.registry import METERS
from utils.engine import checkpoint, distributed

log = logging.getLogger(__name__)

# Checkpoint keys the engine writes itself; an experiment's objects take any other name.
ENGINE_KEYS = {"epoch", "step_in_epoch", "samples_in_epoch", "global_step", "optimizer_steps", "best", "stopped_early",
               "pruned", "epoch_meters", "window", "rng",
               "rng_ranks", "world_size", "config", "experiment", "info", "format_version", "scaler", "threads",
               "objects", "fingerprints", "layout"}


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
    layout: Optional[dict] = None  # {"world", "batch_size", "accumulate"} of the launch (utils/engine/elastic.py)

    def as_checkpoint(self):
        mid_epoch = self.step_in_epoch > 0
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "samples_in_epoch": self.samples_in_epoch,
                "global_step": self.global_step, "optimizer_steps": dict(self.optimizer_steps),
                "best": self.best, "stopped_early": self.stopped_early, "pruned": self.pruned,
                "window": {k: list(v) for k, v in self.window.items()}, "layout": self.layout,
                "epoch_meters": {k: m.state_dict() for k, m in self.meters.items()} if mid_epoch else None}

    @classmethod
    def from_checkpoint(cls, state, batch_size):
        meters = {}
        for name, meter_state in (state.get("epoch_meters") or {}).items():
            meters[name] = METERS.build("loss")
            meters[name].load_state_dict(meter_state)
        # Checkpoints from before distributed training ran one process: steps x batch images.
        samples = state.get("samples_in_epoch", state["step_in_epoch"] * batch_size)
        step = state["step_in_epoch"]
        if (state.get("world_size", 1), state["config"]["batch_size"]) != (distributed.world_size(), batch_size):
            # Another world size: the epoch's steps done, counted in this layout's steps (a
            # whole number when the global batch was kept: saves fall on group ends).
            step = samples // (distributed.world_size() * batch_size)
        return cls(epoch=state["epoch"], step_in_epoch=step, samples_in_epoch=samples, layout=state.get("layout"),
                   global_step=state["global_step"], optimizer_steps=dict(state.get("optimizer_steps") or {}),
                   best=state["best"], pruned=state.get("pruned"), meters=meters,
                   window={k: list(v) for k, v in state["window"].items()})


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
    # "objects": the names of the experiment's objects, which the checkpoint's fingerprints cover
    return {**saved, "objects": list(saved), **state.as_checkpoint(), "rng": rng[0], **ranks, "config": configs.as_dict(cfg),
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
