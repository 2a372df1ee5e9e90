"""Models (MODELS registry). One file per model; each class takes `num_classes`.

`build_model(cfg)` is what experiments call: it builds by name and applies --pretrained.
"""
import dataclasses
import inspect
import logging

from configs.values import flag
from utils.core.errors import UsageError
from utils.core.registry import DATASETS, MODELS

log = logging.getLogger(__name__)


def check_takes(option, name, arguments, kind):
    """UsageError unless the model registered as `name` accepts `arguments` (a classifier
    takes num_classes, a generator nz, ...), so --model=NetG for classify fails in one line."""

    parameters = inspect.signature(MODELS.get(name)).parameters
    missing = [argument for argument in arguments if argument not in parameters]
    if missing:
        raise UsageError(f"{flag(option)}={name} is not a {kind} (it takes no {', '.join(missing)}); pick another {flag(option)}")


def data_channels(dataset):
    """Channels of the images of the data set registered as `dataset` (1 for MNIST, else 3)."""
    return getattr(DATASETS.get(dataset), "channels", 3)


def build_model(cfg):
    """The model named by cfg.model with cfg.num_classes outputs, taking the data's channels
    at cfg.image_size, weights per --pretrained. A model that cannot take that input fails
    here in one line (a forward pass of one blank image), not in the first training step."""
    import torch

    channels, size = data_channels(cfg.dataset), cfg.image_size
    parameters = inspect.signature(MODELS.get(cfg.model)).parameters
    extra = {"image_size": size} if "image_size" in parameters else {}
    if "in_channels" in parameters:
        extra["in_channels"] = channels
    elif channels != 3:
        raise UsageError(f"--model={cfg.model} takes RGB images only (it has no in_channels argument) and "
                         f"{cfg.dataset} is grey; pick a model that takes in_channels, e.g. LeNet or torchvision.resnet18")
    model = MODELS.build(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained, **extra)
    params = sum(p.numel() for p in model.parameters())
    log.info("model %s, %.2fM params, input %d x %d x %d", cfg.model, params / 1e6, channels, size, size)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size))
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise UsageError(f"{flag('model')}={cfg.model} cannot take {channels} x {size} x {size} images ({reason}); "
                         f"use a larger --image-size or another --model") from None
    return model.train(was_training)


def build_for_weights(cfg, device):
    """build_model's model, on `device`, for weights that are loaded into it next (val, test,
    generate). It is built on the meta device, so no time goes into a random initialisation
    the checkpoint overwrites (0.3 s for ResNet34), then given uninitialised memory; a model
    with non-persistent buffers, which no checkpoint holds, is built as usual."""
    import torch

    with torch.device("meta"):
        model = build_model(dataclasses.replace(cfg, pretrained=""))
    saved = set(model.state_dict())
    if any(name not in saved for name, _ in model.named_buffers()):
        return build_model(cfg).to(device)
    return model.to_empty(device=device)
