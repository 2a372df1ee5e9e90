"""`val` and `test` of a cross-validation group (--env=<group>).

val recomputes the group's cv report from each fold's best weights (with --tta: its views),
writing the fold files and oof[-views].csv / cv[-views].json again. test writes ONE
submission, in the data set's own csv format, whose class probabilities are the mean over
the folds of each fold model's probabilities (each averaged over its --tta views first).
Both refuse a group with a fold missing or unfinished, in one line, unless --partial is
given (then the log names the folds used, and val writes no group files: a report over
some folds is not the group's).
"""
import dataclasses
import logging
import math
from pathlib import Path

import torch

from utils.core.errors import UsageError, UserError
from utils.core.registry import EXPERIMENTS
from utils.cv import group, oof
from utils.engine import distributed, runtime
from utils.meters import KAGGLE_EPSILON

log = logging.getLogger(__name__)


def fold_config(cfg, group_dir, k):
    return dataclasses.replace(cfg, checkpoint_dir=str(group_dir), env=f"fold-{k}")


def _experiment(cfg, needs):
    experiment = EXPERIMENTS.get(cfg.experiment)
    if not hasattr(experiment, needs):
        raise UsageError(f"experiment {cfg.experiment} has no predictions to average over a group's folds; give "
                         f"--env=<group>/fold-<k> for one fold")
    return experiment


def val(cfg):
    """Print (and, for a complete group, write) the cv report of --env=<group>."""
    group_dir = Path(cfg.checkpoint_dir) / cfg.env
    done = group.agreed(lambda: group.check_complete(cfg, group_dir, cfg.partial))
    tta = getattr(cfg, "tta", "")
    _experiment(cfg, "held_out")
    for k in done:
        folder = group.fold_dir(group_dir, k)
        if distributed.is_main():
            oof.fold_file(folder, tta).unlink(missing_ok=True)  # recomputed, not read back
        group.write_fold_predictions(fold_config(cfg, group_dir, k), folder, k, tta)
    if distributed.is_main() and len(done) < group.fold_count(group_dir, cfg):
        summary = oof.report(group_dir, done, tta, cfg.monitor or "")
        print("\n".join(oof.lines(summary)))
        print(f"(--partial: {len(done)} folds; the group's cv report is written once every fold has finished)")
        return summary
    return group.conclude(cfg, group_dir, tta)


@torch.inference_mode()
def test(cfg):
    """Write the folds' ensemble prediction of the test split (see the module docstring)."""
    group_dir = Path(cfg.checkpoint_dir) / cfg.env
    result_file = cfg.result_file or str(group_dir / "result.csv")
    runtime.check_output_file(result_file, "--result-file")
    done = group.agreed(lambda: group.check_complete(cfg, group_dir, cfg.partial))
    experiment = _experiment(cfg, "predictions")
    total, first = None, None
    for k in done:
        predicted = experiment(fold_config(cfg, group_dir, k)).predictions("test")
        if first is None:
            first = predicted
        elif predicted["keys"] != first["keys"] or predicted["names"] != first["names"]:
            raise UserError(f"fold {k} of group {cfg.env} predicts other images or classes than fold {done[0]} "
                            f"(its test data or classes differ); its folds must share them")
        probabilities = predicted["log_probabilities"].double().exp()
        total = probabilities if total is None else total + probabilities
    if not distributed.is_main():
        return
    mean = total / len(done)
    log.info("test: the mean of %d fold models' probabilities (fold %s)%s", len(done), ", ".join(map(str, done)),
             f", each over its --tta={cfg.tta} views" if getattr(cfg, "tta", "") else "")
    # the group's config for the writer: its trackers (the MLflow parent run) get the csv
    named = dataclasses.replace(first["cfg"], env=cfg.env, checkpoint_dir=cfg.checkpoint_dir, load_model_path=None)
    ensemble = {**first, "cfg": named, "log_probabilities": mean.log().float(),
                "metrics": None if first["metrics"] is None else metrics(mean, first["keys"])}
    experiment(fold_config(cfg, group_dir, done[0])).write_test(ensemble, result_file)


def metrics(probabilities, labels):
    """Accuracy, Kaggle log loss and confusion counts of averaged probabilities."""
    labels = torch.as_tensor(labels)
    k = probabilities.shape[1]
    picked = probabilities[torch.arange(len(labels)), labels].clamp(KAGGLE_EPSILON, 1 - KAGGLE_EPSILON)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    confusion.index_put_((labels, probabilities.argmax(1)), torch.ones(len(labels), dtype=torch.int64), accumulate=True)
    seen = len(labels)
    return {"val_accuracy": float(confusion.trace()) / seen if seen else math.nan,
            "val_logloss": float(-picked.log().mean()) if seen else math.nan, "confusion": confusion.tolist()}
