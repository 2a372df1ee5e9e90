"""Precision and memory format, decided once per run and handed to the experiment's step.

On CUDA with --amp: float16 autocast and a GradScaler (about 2x on tensor-core GPUs); on
CPU both are off whatever the flag says (CPU float16 autocast is slower, not faster).
--channels-last moves 4-D image batches to NHWC, which recent GPUs' convolutions prefer.
"""
import torch


class Precision:
    """`autocast()`, `scaler`, `memory_format` and `to_device(batch)` for one run."""

    def __init__(self, cfg, device):
        self.device = device
        self.amp = cfg.amp and device.type == "cuda"
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)

    def autocast(self):
        """The forward-pass context: float16 autocast under --amp on CUDA, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def backward_and_step(self, loss, optimizer):
        """Backward through the (scaled) loss and step `optimizer`; call `scaler.update()`
        once per training step after the last optimizer of the step."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    def to_device(self, batch):
        """A batch (tensor, or tuple/list of them) on the run's device; 4-D float tensors
        (images) in the run's memory format."""
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(part) for part in batch)
        if not torch.is_tensor(batch):
            return batch
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return batch.to(self.device, non_blocking=True)
