"""The wrappers of a run's modules for training: DDP under torchrun (utils/engine/distributed.py
wrap) and --compile. Built at the start, and again when an unfreeze changes which parameters
train: DDP all-reduces the parameters that trained when it was built, and compiled graphs
were traced for them."""
import torch
from torch.optim.swa_utils import AveragedModel

from utils.engine import checkpoint, distributed
from utils.engine.precision import compiled


def wrap_modules(objects, cfg, device, broadcast_buffers):
    """objects' modules (not an --ema average) wrapped anew around their plain modules."""
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module) and not isinstance(obj, AveragedModel):
            plain = checkpoint.unwrap(obj)
            objects[name] = distributed.wrap(plain, device, broadcast_buffers, cfg.sync_bn)
            if cfg.compile and any(p.requires_grad for p in plain.parameters()):
                objects[name] = compiled(objects[name])
