"""A sweep in the trackers: MLflow gets a parent run per study with every trial nested under
it (its id kept in the study folder's trackers.json); W&B groups the trials by the study's
name. Trials are tagged with their number, parameters and state (utils/loggers/base.py
trial_state). Called by the sweep's worker (utils/sweep/worker.py) on rank 0; a tracker that
fails here is a warning, and the trials still log on their own."""
import logging

from utils.loggers import chosen
from utils.loggers.base import one_line

log = logging.getLogger(__name__)


def nests(cfg):
    """Whether a tracker of the run's loggers has a parent run for the sweep (MLflow)."""
    return "mlflow" in chosen(cfg)


def trial_options(cfg):
    """Options every trial of the sweep gets: the sweep's MLflow store, so trials (whose
    --checkpoint-dir is the study's folder) log beside their parent and the plain runs."""
    if not nests(cfg) or cfg.mlflow_uri:
        return {}
    from utils.loggers import mlflow_tracker

    return {"mlflow_uri": mlflow_tracker.store_of(cfg)[0]}


def open_study(study_dir, cfg, study):
    """{tracker name: parent run id} for the trials of `study` (the caller holds the study's
    lock, so two workers starting together make one parent)."""
    parents = {}
    if nests(cfg):
        from utils.loggers import mlflow_tracker

        parents["mlflow"] = mlflow_tracker.open_parent(study_dir, cfg, study)  # unreachable: one line, exit 1
    return parents


def end_study(parents, cfg, metric, best_value, best_trial):
    """This worker is done: the parent runs show the study's best value so far."""
    if parents.get("mlflow"):
        from utils.loggers import mlflow_tracker

        try:
            mlflow_tracker.end_parent(parents["mlflow"], cfg, metric, best_value, best_trial)
        except Exception as error:  # noqa: BLE001 - the trials are told; the parent's summary is extra
            log.warning("MLflow: could not update the sweep's parent run: %s", one_line(error))


def end_group(parents, cfg, summary):
    """A cross-validation group's command is done: its MLflow parent run shows the cv report
    (cv_<metric>_oof, _mean, _std) once there is one, and is FINISHED."""
    if not parents.get("mlflow"):
        return
    from utils.loggers import mlflow_tracker

    values = {}
    if summary:
        name, oof = summary["metric"], summary.get("oof") or {}
        values = {f"cv_{name}_mean": summary["mean"], f"cv_{name}_std": summary["std"],
                  **({f"cv_{name}_oof": oof[name]} if isinstance(oof.get(name), (int, float)) else {})}
    try:
        mlflow_tracker.end_group(parents["mlflow"], cfg, values)
    except Exception as error:  # noqa: BLE001 - the folds are told; the parent's summary is extra
        log.warning("MLflow: could not update the group's parent run: %s", one_line(error))
