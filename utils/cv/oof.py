"""Out-of-fold predictions and the cross-validation report of a group.

Each finished fold writes the predictions of its held-out fold into its run dir
(fold-<k>/oof.csv, from the weights `val` uses: best.pth, its EMA when trained with --ema);
once every fold has, the group gets <group>/oof.csv (one row per training item: id, label,
fold, one probability per class) and cv.json (each fold's metrics, the OOF metric over all
items, and the mean and standard deviation over folds). Every metric is computed from the
probabilities as written (9 significant digits: float32 exactly), so a user who recomputes
it from the file gets the same number. With --tta=<views> the files are oof-<views>.csv and
cv-<views>.json, beside the plain ones: OOFs of different views are never mixed.

An experiment without a `held_out` method (one that predicts no class probabilities) still
gets cv.json, from each fold's best validation metric, without OOF predictions.
"""
import csv
import json
import math
from pathlib import Path

from utils.core.errors import plural
from utils.core.records import Damaged
from utils.cv import suffix
from utils.engine import status as run_status
from utils.meters import KAGGLE_EPSILON
from utils.tables import columns
from utils.writers import write_csv, write_text

REPORT_METRICS = ("val_logloss", "val_accuracy")  # what an OOF file gives, in the cv report


def fold_file(fold_dir, tta):
    return Path(fold_dir) / f"oof{suffix(tta)}.csv"


def write_fold(fold_dir, fold, predicted, tta):
    """Write fold `fold`'s held-out predictions (an experiment's held_out()) as csv."""
    classes = list(predicted["classes"])
    probabilities = predicted["log_probabilities"].double().exp().tolist()
    rows = [[item, classes[label], fold, *(f"{p:.9g}" for p in row)]
            for item, label, row in zip(predicted["ids"], predicted["labels"], probabilities)]
    write_csv(fold_file(fold_dir, tta), ["id", "label", "fold", *(f"p_{name}" for name in classes)], rows)


def read_rows(path):
    """(class names, [(id, label, fold, [probabilities])]) of an oof csv."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        header, rows = table[0], table[1:]
        classes = [name[2:] for name in header[3:]]
        if header[:3] != ["id", "label", "fold"] or not classes or any(len(row) != len(header) for row in rows):
            raise ValueError("not an oof csv with id, label, fold and p_<class> columns")
        return classes, [(row[0], row[1], int(row[2]), [float(value) for value in row[3:]]) for row in rows]
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as error:
        raise Damaged(path, str(error).splitlines()[0] if str(error) else type(error).__name__,
                      "; run the group's train --resume=auto (or val --env=<group>) to write it again") from None


def metrics(classes, rows):
    """{"val_logloss": Kaggle's (clipped) log loss, "val_accuracy"} of oof rows."""
    if not rows:
        return {name: math.nan for name in REPORT_METRICS}
    index = {name: k for k, name in enumerate(classes)}
    loss = correct = 0.0
    for _, label, _, probabilities in rows:
        truth = index[label]
        loss -= math.log(min(max(probabilities[truth], KAGGLE_EPSILON), 1 - KAGGLE_EPSILON))
        correct += max(range(len(probabilities)), key=probabilities.__getitem__) == truth
    return {"val_logloss": loss / len(rows), "val_accuracy": correct / len(rows)}


def spread(values):
    """(mean, standard deviation over the folds: numpy's std, ddof 0)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))


def report(group_dir, folds, tta, metric):
    """The group's cv report as cv.json holds it, from the fold files of `folds` (a count:
    1..K; or a list); None while one of them has not written its own. `metric` names the
    line's metric (the runs' --monitor)."""
    group_dir = Path(group_dir)
    per_fold, all_rows, classes = [], [], None
    chosen = list(range(1, folds + 1)) if isinstance(folds, int) else list(folds)
    for k in chosen:
        fold_dir = group_dir / f"fold-{k}"
        path = fold_file(fold_dir, tta)
        record = _status(fold_dir)
        if path.is_file():
            classes, rows = read_rows(path)
            all_rows += rows
            per_fold.append({"fold": k, "images": len(rows), **metrics(classes, rows), **_epochs(record)})
        elif record.get("status") == "finished" and not _predicts(group_dir):
            best = record.get("best") or {}
            per_fold.append({"fold": k, **({best["metric"]: best["value"]} if best else {}), **_epochs(record)})
        else:
            return None
    # the monitored metric, or what the OOF files give of it (val_logloss_ema: val_logloss of
    # the EMA weights, which the files hold; val_loss, the unclipped log loss: val_logloss)
    name = metric if metric in per_fold[0] or not all_rows else \
        next((m for m in REPORT_METRICS if metric.startswith(m)), REPORT_METRICS[0])
    values = [fold[name] for fold in per_fold if isinstance(fold.get(name), (int, float))]
    if len(values) != len(chosen):
        return None
    mean, deviation = spread(values)
    oof = metrics(classes, all_rows) if all_rows else None
    return {"folds": len(chosen), "tta": tta or "", "metric": name, "oof": oof, "mean": mean, "std": deviation,
            "per_fold": per_fold, "classes": classes}


def _status(fold_dir):
    try:
        return run_status.read(fold_dir) or {}
    except Damaged:
        return {}


def _epochs(record):
    best = record.get("best") or {}
    return {"epochs": record.get("epoch"), "best_epoch": best.get("epoch")}


def _predicts(group_dir):
    """Whether the group's folds write OOF predictions (any fold file of any views)."""
    return any(Path(group_dir).glob("fold-*/oof*.csv"))


def write_group(group_dir, summary):
    """<group>/oof[-views].csv (every fold's rows, fold by fold) and cv[-views].json."""
    group_dir, tta = Path(group_dir), summary["tta"]
    if summary["oof"] is not None:
        rows, header = [], None
        for k in range(1, summary["folds"] + 1):
            classes, fold_rows = read_rows(fold_file(group_dir / f"fold-{k}", tta))
            header = ["id", "label", "fold", *(f"p_{name}" for name in classes)]
            rows += [[item, label, fold, *(f"{p:.9g}" for p in probabilities)]
                     for item, label, fold, probabilities in fold_rows]
        write_csv(group_dir / f"oof{suffix(tta)}.csv", header, rows)
    write_text(group_dir / f"cv{suffix(tta)}.json", json.dumps(summary, indent=1) + "\n")


def lines(summary):
    """The fold table and the cv line of a report."""
    name = summary["metric"]
    shown = [name] + [m for m in REPORT_METRICS if m != name and m in summary["per_fold"][0]]
    counted = summary["oof"] is not None  # images per fold: from its OOF rows
    header = ["fold", "epochs", "best epoch", *shown, *(["images"] if counted else [])]
    rows = [[fold["fold"], fold.get("epochs", "?"), fold.get("best_epoch", "?"),
             *(f"{fold[m]:.4f}" if isinstance(fold.get(m), (int, float)) else "-" for m in shown),
             *([fold.get("images", "-")] if counted else [])] for fold in summary["per_fold"]]
    views = f" (tta {summary['tta']})" if summary["tta"] else ""
    oof = summary["oof"]
    head = f"{oof[name]:.4f} (oof) = " if oof and isinstance(oof.get(name), (int, float)) else ""
    folds = plural(summary["folds"], "fold")
    line = f"cv: {name} {head}{summary['mean']:.4f} ± {summary['std']:.4f} over {folds}{views}"
    return columns(header, [[str(cell) for cell in row] for row in rows]) + [line]
