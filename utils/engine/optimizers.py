"""The optimizer of a run, built by the engine from the shared options (--optimizer, --lr,
--momentum, --weight-decay), so that every experiment's optimizers follow them and none
copies another's builder. An experiment with settings of its own passes them (the gan: its
two learning rates and Adam's beta1)."""
import inspect

import torch

KINDS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}  # --optimizer's choices


def build_optimizer(cfg, parameters, grouping=None, **settings):
    """--optimizer over `parameters`: a module (its parameters that train, in the parameter
    groups `grouping` (utils/engine/param_groups.py) makes of them), or parameters or
    param-group dicts; with --lr, --weight-decay and (sgd) --momentum, which `settings`
    replace or add to (lr=cfg.lr1, betas=(0.5, 0.999)). A setting the chosen optimizer does
    not take (betas for sgd) is left out: the experiment states its Adam settings once and
    --optimizer still decides."""
    chosen = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum, **settings}
    if isinstance(parameters, torch.nn.Module):
        parameters = (grouping.groups(parameters, chosen["lr"], chosen["weight_decay"]) if grouping is not None
                      else [p for p in parameters.parameters() if p.requires_grad])
    elif grouping is not None and grouping.active:
        raise ValueError("parameter groups by name need the module: pass ctx.optimizer(module)")
    kind = KINDS[cfg.optimizer]
    takes = inspect.signature(kind).parameters
    return kind(parameters, **{name: value for name, value in chosen.items() if name in takes})
