"""Cross-validation groups (train --folds=K): the split (split.py), the K fold runs and the
group's report (group.py, oof.py), and val / test of a group's fold ensemble (ensemble.py).
On top of the engine, as sweeps are: core <- engine <- cv. This file imports no torch: the
CLI asks it whether a folder is a group before anything heavy loads."""
from pathlib import Path

from utils.core.records import read_json

RECORD = "folds.json"  # what marks a group's folder: its split (split.py)


def is_group(folder):
    """Whether `folder` holds a cross-validation group (its folds.json)."""
    return (Path(folder) / RECORD).is_file()


def suffix(tta):
    """'' or '-flip', '-crops', '-flip+crops': the file-name part of a --tta (oof.py)."""
    return f"-{str(tta).replace(',', '+')}" if tta else ""


def read_summary(group_dir, tta=""):
    """cv[-views].json of a group (oof.py writes it), or None; Damaged when it is not one."""
    return read_json(Path(group_dir) / f"cv{suffix(tta)}.json", {"metric": str, "mean": float, "std": float})
