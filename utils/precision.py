"""Precision and memory format, decided once per run and handed to the experiment's step.

On CUDA with --amp: float16 autocast and a GradScaler (about 2x on tensor-core GPUs); on
CPU both are off whatever the flag says (CPU float16 autocast is slower, not faster).
--channels-last moves 4-D image batches to NHWC, which recent GPUs' convolutions prefer.
"""
import logging

import torch

log = logging.getLogger(__name__)


class Precision:
    """`autocast()`, `scaler`, `memory_format` and `to_device(batch)` for one run."""

    def __init__(self, cfg, device, data=None):
        self.device = device
        self.amp = cfg.amp and device.type == "cuda"
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        # A data set of uint8 images (data/transforms.py) names its per-channel mean and std;
        # (x / 255 - mean) / std = (x - 255 mean) * 1 / (255 std), one pass over the batch.
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        self.offset = self.factor = None
        if mean is not None and std is not None:
            self.offset = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
            self.factor = 1 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)

    def autocast(self):
        """The forward-pass context: float16 autocast under --amp on CUDA, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def backward_and_step(self, loss, optimizer):
        """Backward through the (scaled) loss and step `optimizer`; call `scaler.update()`
        once per training step after the last optimizer of the step."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    def normalise(self, images):
        """A uint8 image batch on the device as normalised float32, in its memory format."""
        if not images.is_contiguous(memory_format=torch.channels_last) or images.shape[1] == 1:
            return images.float().sub_(self.offset).mul_(self.factor)
        # Channels innermost: a per-channel broadcast over a dimension of 3 does not
        # vectorise, so the (N, H, W, C) storage is taken as rows of W x C values and each
        # row gets the (mean, std) pattern repeated W times: 3.5x faster on a CPU.
        count, channels, height, width = images.shape
        rows = images.permute(0, 2, 3, 1).reshape(count * height, width * channels)
        rows = rows.float().sub_(self.offset.view(channels).repeat(width)).mul_(self.factor.view(channels).repeat(width))
        return rows.view(count, height, width, channels).permute(0, 3, 1, 2)

    def to_device(self, batch):
        """A batch (tensor, or tuple/list of them) on the run's device; 4-D tensors (images)
        in the run's memory format, uint8 ones normalised to float there."""
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(part) for part in batch)
        if not torch.is_tensor(batch):
            return batch
        if batch.dim() == 4 and batch.dtype == torch.uint8:
            if self.offset is None:
                raise ValueError("a uint8 image batch from a data set that names no mean and std to normalise it with")
            return self.normalise(batch.to(self.device, non_blocking=True, memory_format=self.memory_format))
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return batch.to(self.device, non_blocking=True)


def for_inference(model, memory_format=torch.contiguous_format):
    """A copy of `model` for evaluation: eval mode, each BatchNorm that follows a
    convolution folded into that convolution's weights (one oneDNN kernel instead of a
    convolution and a normalisation pass: 1.1x on ResNet34 on a CPU), in `memory_format`.
    The model itself is not changed. A model torch.fx cannot trace (Python control flow on
    its input) is returned as it is, in eval mode."""
    from torch.fx.experimental.optimization import fuse

    model.eval()
    try:
        folded = fuse(model)  # traces and copies; the live model keeps its BatchNorm layers
    except Exception as error:  # noqa: BLE001 - tracing fails in many ways; folding is only an optimisation
        log.debug("evaluating %s unfolded: torch.fx cannot trace it (%s)", type(model).__name__, error)
        return model
    return folded.to(memory_format=memory_format)
