"""Models (MODELS registry). One file per model; each class takes `num_classes`.

`build_model(cfg)` is what experiments call: it builds by name and applies --pretrained.
"""
import logging

log = logging.getLogger(__name__)


def build_model(cfg):
    """The model named by cfg.model with cfg.num_classes outputs, weights per --pretrained."""
    from utils.registry import MODELS

    model = MODELS.build(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained)
    params = sum(p.numel() for p in model.parameters())
    log.info("model %s, %.2fM params", cfg.model, params / 1e6)
    return model
