"""Precision, memory format and compilation, decided once per run and handed to the
experiment's step.

--amp: autocast in bfloat16 where the device computes it natively (CUDA GPUs of compute
capability 8.0 and up, CPUs with AVX512-BF16 or AMX), else in float16 with a GradScaler on
CUDA; a CPU without native bfloat16 (emulated, slower than float32) keeps float32 and says
so. --amp-dtype forces one. --channels-last (default on) keeps 4-D image batches and conv
weights NHWC, which oneDNN on CPUs and tensor cores on GPUs prefer. --compile runs the
modules through torch.compile, and without it when it cannot compile them.
"""
import logging

import torch

from utils.core.errors import UsageError

log = logging.getLogger(__name__)
_told = set()  # warnings already logged by this process (Precision is built per command part)


def tell_once(message):
    if message not in _told:
        _told.add(message)
        log.warning("%s", message)


def native_bfloat16(device):
    """Whether `device` computes bfloat16 natively (autocast to it is then a speed-up)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast_dtype(cfg, device):
    """The dtype --amp autocasts to on `device` (see the module docstring), or None: float32."""
    if not cfg.amp:
        return None
    wanted = getattr(cfg, "amp_dtype", "auto")
    if device.type not in ("cuda", "cpu"):
        tell_once(f"--amp: no mixed precision on {device.type}; training in float32")
        return None
    if wanted == "float16" and device.type == "cpu":
        tell_once("--amp-dtype=float16 on a CPU is slower than float32 (no float16 arithmetic); training in float32")
        return None
    if wanted == "bfloat16" and device.type == "cuda" and not native_bfloat16(device):
        raise UsageError("--amp-dtype=bfloat16 but this GPU has no bfloat16 arithmetic (compute capability 8.0+); "
                         "use --amp-dtype=float16 or auto")
    if wanted == "auto" and not native_bfloat16(device):
        if device.type == "cuda":
            return torch.float16
        tell_once("--amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where autocast is slower than "
                  "float32; training in float32 (--amp-dtype=bfloat16 forces it)")
        return None
    return torch.float16 if wanted == "float16" else torch.bfloat16


class Precision:
    """`autocast()`, `scaler`, `memory_format` and `to_device(batch)` for one run."""

    def __init__(self, cfg, device, data=None):
        self.device = device
        self.dtype = autocast_dtype(cfg, device)
        self.amp = self.dtype is not None
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # float16's narrow range needs the loss scaled; bfloat16 has float32's exponent.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        # The data set declares which parts of a batch are images (data/base.py: moved in the
        # run's memory format) and which of them are uint8 to normalise here, with which
        # per-channel mean and std: (x / 255 - mean) / std = (x - 255 mean) * 1 / (255 std),
        # one pass over the batch. Without a data set: part 0 is images, none normalised.
        self.image_parts = tuple(getattr(data, "image_parts", (0,)))
        declared = data.normalisation() if hasattr(data, "normalisation") else {}
        self.scales = {part: (torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255,
                              1 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255))
                       for part, (mean, std) in declared.items()}
        self._row_patterns = {}

    def autocast(self):
        """The forward-pass context: autocast to `dtype` under --amp, else a no-op."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.amp)

    def normalise(self, images, part=0):
        """A uint8 image batch (batch part `part`) on the device as normalised float32, in
        its memory format."""
        offset, factor = self.scales[part]
        if not images.is_contiguous(memory_format=torch.channels_last) or images.shape[1] == 1:
            return images.float().sub_(offset).mul_(factor)
        # Channels innermost: a per-channel broadcast over a dimension of 3 does not
        # vectorise, so the (N, H, W, C) storage is taken as rows of W x C values and each
        # row gets the (mean, std) pattern repeated W times: 3.5x faster on a CPU.
        count, channels, height, width = images.shape
        patterns = self._row_patterns.get(part)
        if patterns is None or patterns[0].numel() != width * channels:
            patterns = self._row_patterns[part] = (offset.view(channels).repeat(width), factor.view(channels).repeat(width))
        rows = images.permute(0, 2, 3, 1).reshape(count * height, width * channels)
        return rows.float().sub_(patterns[0]).mul_(patterns[1]).view(count, height, width, channels).permute(0, 3, 1, 2)

    def to_device(self, batch):
        """A batch (tensor, or tuple/list of them) on the run's device: the data set's image
        parts in the run's memory format, those it declares uint8-to-normalise normalised to
        float32 there; every other part (labels, ids, tokens) as it is."""
        if isinstance(batch, (tuple, list)):
            return type(batch)(self._part_to_device(part, value) for part, value in enumerate(batch))
        return self._part_to_device(0, batch)

    def _part_to_device(self, part, value):
        if not torch.is_tensor(value):
            return value
        if part not in self.image_parts or value.dim() != 4:
            return value.to(self.device, non_blocking=True)
        if value.dtype == torch.uint8:
            if part not in self.scales:
                raise ValueError("a uint8 image batch from a data set that names no mean and std to normalise it with")
            return self.normalise(value.to(self.device, non_blocking=True, memory_format=self.memory_format), part)
        return value.to(self.device, non_blocking=True, memory_format=self.memory_format)


def for_inference(model, memory_format=torch.contiguous_format):
    """A copy of `model` for evaluation: eval mode, each BatchNorm that follows a
    convolution folded into that convolution's weights (one oneDNN kernel instead of a
    convolution and a normalisation pass: 1.1x on ResNet34 on a CPU), in `memory_format`.
    The model itself is not changed. A model torch.fx cannot trace (Python control flow on
    its input) is returned as it is, in eval mode; so is anything that is not a module (an
    ONNX Runtime session's wrapper)."""
    if not isinstance(model, torch.nn.Module):
        return model
    folded, _ = fold_batchnorm(model)
    return folded.to(memory_format=memory_format) if folded is not model else model


_FOLDS_INTO = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
               torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def fold_batchnorm(model):
    """(a copy of `model` in eval mode with every BatchNorm that directly follows a
    convolution or transposed convolution, and is that layer's only reader, folded into its
    weights; the number folded). In eval mode BatchNorm is an affine map per channel, so the
    folded network computes the same function up to float rounding. `model` itself is not
    changed; a model torch.fx cannot trace comes back as it is, in eval mode, with 0."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as error:  # noqa: BLE001 - tracing fails in many ways; folding is only an optimisation
        log.debug("%s left unfolded: torch.fx cannot trace it (%s)", type(model).__name__, error)
        return model, 0
    modules = dict(traced.named_modules())
    count = 0
    for node in list(traced.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) or norm.running_mean is None:
            continue
        source = node.args[0]
        layer = modules.get(source.target) if getattr(source, "op", None) == "call_module" else None
        transposed = isinstance(layer, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d))
        # a grouped transposed convolution keeps out-channels / groups on its weight's axis 1,
        # where the fold would scale the wrong weights: left as it is
        if not isinstance(layer, _FOLDS_INTO) or len(source.users) != 1 or (transposed and layer.groups != 1):
            continue
        fused = fuse_conv_bn_eval(layer, norm, transpose=transposed)
        parent, _, name = source.target.rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, fused)
        modules[source.target] = fused
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        count += 1
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    return traced.eval(), count


def compiled(module):
    """`module` under torch.compile (--compile), falling back to the module itself, with one
    warning, when its first call fails to compile (no C++ compiler, an unsupported op).
    checkpoint.unwrap finds the module inside, so checkpoints keep plain state dicts."""
    optimised = torch.compile(module)
    compiled_forward = optimised.forward

    def forward(*args, **kwargs):
        try:
            result = compiled_forward(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compile failure; the eager module still works
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            tell_once(f"--compile: torch.compile could not compile {type(module).__name__} ({type(error).__name__}: "
                      f"{first_line[:200]}); running it uncompiled")
            optimised.forward = module.__call__
            return module(*args, **kwargs)
        optimised.forward = compiled_forward  # compiled once: later calls skip this check
        return result

    optimised.forward = forward
    return optimised
