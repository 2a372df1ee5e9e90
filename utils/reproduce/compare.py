"""The comparison `reproduce` makes as the scratch run trains: each epoch end's fingerprints
against the original run's record of that epoch, or, where the original recorded none (a run
from before fingerprints) or --atol asks for a tolerance, tensor by tensor against the
original's checkpoint of that epoch (epoch_<n>.pth, last.pth, or best.pth's weights)."""
import math
from pathlib import Path

import torch

from utils.core.errors import plural
from utils.engine import checkpoint, fingerprints

SHOWN = 3


def saved_epochs(run_dir):
    """{epoch: (checkpoint path, the fingerprints it carries or None)} of the original's
    epoch-end checkpoints (a stop's mid-epoch last.pth is no epoch end): epoch_<n>.pth first,
    then last.pth, then best.pth."""
    found = {}
    for path in [*sorted(Path(run_dir).glob("epoch_*.pth")), Path(run_dir) / checkpoint.LAST, Path(run_dir) / checkpoint.BEST]:
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - an unreadable file is one fewer to compare with
            continue
        if isinstance(state, dict) and isinstance(state.get("epoch"), int) and not state.get("step_in_epoch"):
            found.setdefault(state["epoch"], (path, state.get("fingerprints")))
    return dict(sorted(found.items()))


def altered_records(saved, prints):
    """{epoch: (checkpoint name, [objects])} of the fingerprint records that disagree with the
    fingerprints the run's checkpoint of that epoch carries (`saved`: saved_epochs'): a
    record changed after the run wrote it (both are written from the same copy of the state)."""
    altered = {}
    for epoch, (path, carried) in saved.items():
        record = (prints.get(epoch) or {}).get("objects")
        if not isinstance(carried, dict) or not carried or record is None:
            continue
        objects = [name for name in carried if (record.get(name) or {}).get("sha256") != carried[name]]
        if objects:
            altered[epoch] = (path.name, objects)
    return altered


def _tensors_of(state, objects):
    return {f"{name}/{path}": leaf for name in objects if isinstance(state.get(name), dict)
            for path, leaf in fingerprints.leaves(state[name])}


def tensor_differences(original_path, scratch_path):
    """[(tensor, max |difference| (inf: shapes or values not comparable))] of the tensors the
    two checkpoints share that are not bit-equal, largest first, and the count compared."""
    original = checkpoint.load_checkpoint(original_path)
    scratch = checkpoint.load_checkpoint(scratch_path)
    objects = [name for name in scratch.get("objects", ()) if isinstance(original.get(name), dict)]
    if original.get("kind") == checkpoint.WEIGHTS_KIND:  # best.pth: the modules' weights only
        objects = [name for name in objects if any(torch.is_tensor(v) for v in original[name].values())]
    old, new = _tensors_of(original, objects), _tensors_of(scratch, objects)
    found, compared = [], 0
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if not (torch.is_tensor(a) and torch.is_tensor(b)):
            continue
        compared += 1
        if a.shape != b.shape or a.dtype != b.dtype:
            found.append((key, math.inf))
        elif not torch.equal(a, b):
            if a.is_floating_point() or a.is_complex():
                found.append((key, float((a.double() - b.double()).abs().max())))
            else:
                found.append((key, math.inf))
    found.sort(key=lambda item: -item[1])
    return found, compared, objects


def describe_parted(parted):
    """One line per object from fingerprints.differences: 'model: 8 of 10 tensors (a, b, c
    (+5 more))', or 'lr_policy: a number in its state'."""
    lines = []
    for name, tensors, total in parted:
        shown = ", ".join(tensors[:SHOWN]) + (f" (+{len(tensors) - SHOWN} more)" if len(tensors) > SHOWN else "")
        lines.append(f"{name}: {len(tensors)} of {plural(total, 'tensor')} ({shown})" if tensors and total
                     else f"{name}: {shown}" if tensors else f"{name}: a number in its state (a step count, an lr)")
    return lines


def metric_differences(recorded, found, atol=0.0):
    """'val_accuracy 0.9583333333333334 -> 0.9166666666666666, ...' for the metrics both
    epochs measured that differ (exactly, or by more than `atol`), or '' when none does."""
    parted = []
    for name in sorted(set(recorded or {}) & set(found or {})):
        old, new = recorded[name], found[name]
        same = old == new or (math.isnan(old) and math.isnan(new)) or (atol and abs(old - new) <= atol)
        if not same:
            parted.append(f"{name} {old!r} -> {new!r}")
    return ", ".join(parted)


def object_names(names):
    return ", ".join(name.replace("_", " ") for name in names)
