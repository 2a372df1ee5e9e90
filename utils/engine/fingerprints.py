"""State fingerprints: a sha256 of each stateful object of a run (model, optimizer, EMA, lr
policy, scaler), taken at every epoch end and carried by every checkpoint, so that a run
trained again (`reproduce`, `runs --diff`) is compared bit for bit without keeping a
checkpoint per epoch.

An object's state dict is walked in a canonical order (keys sorted by their text, list items
in order); each tensor contributes its dtype, shape and contiguous CPU bytes, any other value
its JSON text (repr for what JSON cannot say). A record also keeps a short digest of every
tensor (`tensors`: {"model/conv1.weight": 16 hex digits}), which says *which* tensors
parted when two records differ. Records: <run dir>/fingerprints/epoch-<n>.json, one file per
epoch end, each written atomically; the checkpoint keeps {object: sha256} under
"fingerprints". The hashing runs in the checkpoint writer's thread, on the copy it writes
(hashlib lets go of the GIL), so training does not wait for it (benchmarks/fingerprint_cost.py).
"""
import hashlib
import json
import re
from pathlib import Path

from utils.core.io import atomic_open
from utils.core.records import Required, read_json

FOLDER = "fingerprints"
SHORT = 16  # hex digits of a tensor's own digest: enough to tell which tensors differ
# A record's shape (utils/core/records.py): the objects' digests and the epoch's metrics.
RECORD = {"epoch": int, "global_step": (int, None), "metrics": {"*": (float, None)},
          "objects": Required({"*": {"sha256": Required(str), "tensors": {"*": str}}})}


def leaves(value, path=""):
    """(path, leaf) of a nested state in canonical order."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from leaves(value[key], f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}.{index}" if path else str(index))
    else:
        yield path, value


def _tensor_bytes(tensor):
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.is_quantized or flat.layout != torch.strided:
        return repr(flat).encode()
    return flat.view(torch.uint8).numpy() if flat.element_size() and flat.numel() else b""


def _plain(value):
    try:
        return json.dumps(value, sort_keys=True, default=repr).encode()
    except (TypeError, ValueError):
        return repr(value).encode()


def of_object(state):
    """{"sha256": hex digest of the whole state, "tensors": {path: short digest}} of one
    object's state (a state dict, or None for a disabled scaler)."""
    import torch

    whole, tensors = hashlib.sha256(), {}
    for path, leaf in leaves(state):
        whole.update(path.encode() + b"\0")
        if torch.is_tensor(leaf):
            head = f"{leaf.dtype}|{tuple(leaf.shape)}|".encode()
            data = _tensor_bytes(leaf)
            own = hashlib.sha256(head)
            own.update(data)
            whole.update(head)
            whole.update(data)
            tensors[path] = own.hexdigest()[:SHORT]
        else:
            whole.update(_plain(leaf))
        whole.update(b"\n")
    return {"sha256": whole.hexdigest(), "tensors": tensors}


def of_checkpoint(state):
    """{object name: of_object(...)} of the objects a checkpoint dict holds (its "objects"
    key names them: the engine's own keys are not fingerprinted)."""
    return {name: of_object(state[name]) for name in state.get("objects", ()) if name in state}


def summary(prints):
    """{object: sha256}: what a checkpoint carries under "fingerprints"."""
    return {name: entry["sha256"] for name, entry in prints.items()}


def record(prints, epoch, global_step, metrics=None):
    found = {"epoch": epoch, "global_step": global_step, "objects": prints}
    return {**found, "metrics": metrics} if metrics else found


def plain_metrics(metrics):
    """{name: float} of the numbers among an epoch's metrics (a 0-d tensor too; a table or
    a list is left out): what the epoch's record keeps, exactly (JSON writes floats so that
    they read back bit for bit, NaN and infinities included)."""
    plain = {}
    for name, value in (metrics or {}).items():
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            plain[str(name)] = float(value)
    return plain


def write(run_dir, prints, epoch, global_step, metrics=None):
    """<run dir>/fingerprints/epoch-<n>.json (atomically: a kill leaves the old file or none)."""
    path = Path(run_dir) / FOLDER / f"epoch-{epoch:04d}.json"
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(record(prints, epoch, global_step, metrics), handle)  # objects in the experiment's order
    return path


def read(run_dir, fix=""):
    """{epoch: record} of a run's fingerprint files ({} for a run that has none);
    records.Damaged naming the first file that does not parse or has another shape (`fix`:
    '; what the caller's user can do')."""
    folder = Path(run_dir) / FOLDER
    found = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("epoch-*.json")):
        match = re.fullmatch(r"epoch-(\d+)\.json", path.name)
        if match:
            found[int(match.group(1))] = read_json(path, RECORD, fix=fix)
    return dict(sorted(found.items()))


def tensor_count(prints):
    return sum(len(entry.get("tensors", {})) for entry in prints.values())


def differences(expected, found):
    """How record objects `found` differ from `expected`: [(object, [tensor paths that
    differ, in canonical order], tensors it has)] for each object whose sha256 differs (its
    tensors may all agree when a plain value, a step count or an lr, parted)."""
    parted = []
    for name in [*expected, *(name for name in found if name not in expected)]:
        want, got = expected.get(name), found.get(name)
        if want is None or got is None:
            parted.append((name, ["(kept by one run only)"], 0))
            continue
        if want["sha256"] == got["sha256"]:
            continue
        theirs, ours = want.get("tensors", {}), got.get("tensors", {})
        tensors = [path for path in theirs if theirs[path] != ours.get(path)] + [path for path in ours if path not in theirs]
        parted.append((name, tensors, len(set(theirs) | set(ours))))
    return parted
