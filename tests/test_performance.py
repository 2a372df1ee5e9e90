"""utils/engine/precision.py: what --amp autocasts to on which device, --compile and its fallback."""
import logging
from types import SimpleNamespace

import pytest
import torch

from utils.engine import checkpoint, precision
from utils.core.errors import UsageError


def amp(dtype="auto"):
    return SimpleNamespace(amp=True, amp_dtype=dtype, channels_last=True)


@pytest.mark.parametrize("device, native, wanted, expected", [
    ("cuda", True, "auto", torch.bfloat16),   # Ampere and newer
    ("cuda", False, "auto", torch.float16),   # older GPUs: float16 with loss scaling
    ("cuda", True, "float16", torch.float16),
    ("cpu", True, "auto", torch.bfloat16),    # AVX512-BF16 / AMX
    ("cpu", False, "auto", None),             # emulated bfloat16 is slower than float32
    ("cpu", False, "bfloat16", torch.bfloat16),  # asked for explicitly
    ("cpu", True, "float16", None),
])
def test_amp_autocasts_to_what_the_device_computes_natively(monkeypatch, device, native, wanted, expected):
    monkeypatch.setattr(precision, "native_bfloat16", lambda _: native)
    assert precision.autocast_dtype(amp(wanted), torch.device(device)) == expected


def test_amp_on_a_cpu_without_bfloat16_says_it_trains_in_float32(monkeypatch, caplog):
    monkeypatch.setattr(precision, "native_bfloat16", lambda _: False)
    monkeypatch.setattr(precision, "_told", set())
    with caplog.at_level(logging.WARNING):
        chosen = [precision.Precision(amp(), torch.device("cpu")) for _ in range(3)]
    assert all(not p.amp and not p.scaler.is_enabled() for p in chosen)
    told = [r.getMessage() for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(told) == 1 and "training in float32" in told[0]  # once per process, not per Precision


def test_bfloat16_asked_of_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda _: False)
    with pytest.raises(UsageError, match=r"--amp-dtype=bfloat16 but this GPU has no bfloat16 .*use --amp-dtype=float16 or auto"):
        precision.autocast_dtype(amp("bfloat16"), torch.device("cuda"))


def test_bfloat16_autocast_on_cpu_needs_no_loss_scaling(monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda _: True)
    chosen = precision.Precision(amp(), torch.device("cpu"))
    with chosen.autocast():
        out = torch.nn.Linear(4, 2)(torch.ones(3, 4))
    assert chosen.amp and out.dtype == torch.bfloat16 and not chosen.scaler.is_enabled()


def test_compile_that_fails_falls_back_to_the_module_with_one_warning(monkeypatch, caplog):
    """The real torch.compile on a machine whose C++ compiler is missing (inductor is pointed
    at one that does not exist): the first call fails to compile, the module runs eagerly."""
    import torch._dynamo
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(precision, "_told", set())
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    wrapped = precision.compiled(model)
    with caplog.at_level(logging.WARNING):
        first, second = wrapped(torch.ones(1, 4)), wrapped(torch.ones(1, 4))
    torch._dynamo.reset()
    assert torch.equal(first, model(torch.ones(1, 4))) and torch.equal(second, first)
    told = [r.getMessage() for r in caplog.records if r.name == "utils.engine.precision"]
    assert len(told) == 1 and told[0].startswith("--compile: torch.compile could not compile Sequential (InductorError: "), told
    assert told[0].endswith("); running it uncompiled")
    assert checkpoint.unwrap(wrapped) is model  # checkpoints keep the plain state dict
