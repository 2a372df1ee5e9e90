"""Cross-validation groups (train --folds=K): the split (split.py), the K fold runs and the
group's report (group.py, oof.py), and val / test of a group's fold ensemble (ensemble.py).
On top of the engine, as sweeps are: core <- engine <- cv. This file imports no torch: the
CLI asks it whether a folder is a group before anything heavy loads."""
from pathlib import Path

RECORD = "folds.json"  # what marks a group's folder: its split (split.py)


def is_group(folder):
    """Whether `folder` holds a cross-validation group (its folds.json)."""
    return (Path(folder) / RECORD).is_file()
