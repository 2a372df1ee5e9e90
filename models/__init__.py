"""Models (MODELS registry). One file per model; each class takes `num_classes`.

`build_model(cfg)` is what experiments call: it builds by name and applies --pretrained.
"""
import logging

log = logging.getLogger(__name__)


def check_takes(option, name, arguments, kind):
    """UsageError unless the model registered as `name` accepts `arguments` (a classifier
    takes num_classes, a generator nz, ...), so --model=NetG for classify fails in one line."""
    import inspect

    from configs.loader import flag
    from utils.errors import UsageError
    from utils.registry import MODELS

    parameters = inspect.signature(MODELS.get(name)).parameters
    missing = [argument for argument in arguments if argument not in parameters]
    if missing:
        raise UsageError(f"{flag(option)}={name} is not a {kind} (it takes no {', '.join(missing)}); pick another {flag(option)}")


def build_model(cfg):
    """The model named by cfg.model with cfg.num_classes outputs, weights per --pretrained."""
    from utils.registry import MODELS

    model = MODELS.build(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained)
    params = sum(p.numel() for p in model.parameters())
    log.info("model %s, %.2fM params", cfg.model, params / 1e6)
    return model
