"""A cross-validation group's split, recorded once: <group>/folds.json says which item of the
training data is in which fold, with the options that decided it.

The first process to start a fold of the group computes the split from the data and the
seed (data/folds.py) and links folds.json into place (link() refuses a file that exists, so
two processes starting together cannot both write it); every later start computes it again
and compares: a group whose data or split options changed is refused in one line that
names what changed, before anything is trained.
"""
import json
import os
from pathlib import Path

from data.folds import assign, check_folds, identity_key, item_id, whole_split
from utils.core.errors import UserError, plural
from utils.core.io import atomic_open
from utils.core.records import Damaged, Required, read_json
from utils.core.registry import DATASETS
from utils.core.shell import main_command
from utils.cv import RECORD

FORMAT = 1
OPTIONS = ("dataset", "train_data_root", "folds", "seed", "skip_bad_images")  # what decides the split


def compute(cfg):
    """The split of cfg's training data into cfg.folds folds, as folds.json holds it."""
    whole = whole_split(DATASETS.get(cfg.dataset), cfg, "val")
    identities, targets = whole.identities(), whole.targets
    check_folds(targets, cfg.folds, cfg.train_data_root)
    folds = assign(identities, targets, cfg.folds, cfg.seed)
    labels = targets if targets is not None else [None] * len(identities)
    return {"format": FORMAT, "options": {name: getattr(cfg, name) for name in OPTIONS},
            "classes": list(whole.classes) if whole.classes else None,
            "sizes": [folds.count(k) for k in range(1, cfg.folds + 1)],
            "items": [[item_id(identity), label, fold] for identity, label, fold in zip(identities, labels, folds)]}


def read(group_dir):
    """The group's record, checked for shape: None when there is none, Damaged when it is
    not one this runner wrote."""
    path = Path(group_dir) / RECORD
    shape = {"format": Required(int), "options": Required(dict), "sizes": Required([int]), "items": Required([list])}
    record = read_json(path, shape, fix="; move it away to split the group's data again")
    if record is not None and (record["format"] != FORMAT or any(len(item) != 3 for item in record["items"])):
        raise Damaged(path, f"not a split of format {FORMAT}", "; move it away to split the group's data again")
    return record


def record(cfg, group_dir, computed=None):
    """Write the group's split (`computed`, or computed here), or check the data against the
    one written; returns it."""
    computed = computed or compute(cfg)
    path = Path(group_dir) / RECORD
    if not path.exists():
        temp = path.with_name(f".{RECORD}.{os.getpid()}.new")
        with atomic_open(temp, "w", encoding="utf-8") as handle:
            json.dump(computed, handle)
        try:
            os.link(temp, path)  # refuses when another process wrote it first: compared below
            return computed
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    saved = read(group_dir)
    problem = difference(saved, computed)
    if problem:
        raise UserError(f"group {Path(group_dir).name} was split {problem}; train a new group under another --env "
                        f"(or restore what the group was trained on): `{main_command()} runs "
                        f"--checkpoint-dir={group_dir}` lists its folds")
    return saved


def difference(saved, computed):
    """'' when the two records split the same items alike, else what changed, in words."""
    options = [f"--{name.replace('_', '-')}={saved['options'].get(name)} (now {computed['options'].get(name)})"
               for name in OPTIONS if str(saved["options"].get(name)) != str(computed["options"].get(name))]
    if options:
        return "with " + ", ".join(options)
    before = {identity_key(identity): (label, fold) for identity, label, fold in saved["items"]}
    now = {identity_key(identity): (label, fold) for identity, label, fold in computed["items"]}
    added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
    relabelled = sorted(key for key in set(now) & set(before) if now[key][0] != before[key][0])
    parts = [f"{plural(len(keys), 'item')} {what} (e.g. {json.loads(keys[0])})"
             for keys, what in ((added, "added"), (removed, "removed"), (relabelled, "relabelled")) if keys]
    if parts:
        return f"from other data: since then {', '.join(parts)} in {computed['options']['train_data_root']}"
    moved = [key for key in now if now[key][1] != before[key][1]]
    if moved:
        return f"otherwise: {plural(len(moved), 'item')} sit in another fold (e.g. {json.loads(moved[0])})"
    return ""
