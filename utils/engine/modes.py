"""Train / eval modes of a run's modules around the engine's evaluation."""
import contextlib

import torch


@contextlib.contextmanager
def evaluating(objects):
    """Every module of the run in eval mode (dropout off, BatchNorm on its running
    statistics) while the experiment evaluates, and back in the mode it was in after."""
    modules = [obj for obj in objects.values() if isinstance(obj, torch.nn.Module)]
    modes = [[(module, module.training) for module in top.modules()] for top in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in (pair for pairs in modes for pair in pairs):
            module.training = training
