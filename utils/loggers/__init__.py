"""Loggers: where a run reports, chosen with --loggers from the LOGGERS registry.

    tensorboard  event files in the run dir (the default; no server)
    visdom       the book's live plots (a visdom server)
    mlflow       an MLflow run: a local SQLite store by default, or a tracking server
    wandb        a Weights & Biases run, offline unless an API key is configured

Every logger receives what the engine already reports (utils/engine/outputs.py), so every
experiment gets every logger without a line of its own. Adding one is one file here with
`@LOGGERS.register("name")` on a subclass of base.Logger (docs/extending.md). Only the
process that writes (rank 0 under torchrun) builds loggers; mlflow and wandb are imported
only by a run that names them.
"""
import logging

from configs.values import logger_list
from utils.core.registry import LOGGERS
from utils.loggers import record
from utils.loggers.base import Start, one_line

log = logging.getLogger(__name__)


def chosen(cfg):
    """The names of the run's loggers: --loggers, with its tensorboard entry replaced as the
    book's --visualizer says (visdom, or none)."""
    swap = {"tensorboard": None if cfg.visualizer == "none" else cfg.visualizer}
    return [name for name in (swap.get(name, name) for name in logger_list(cfg.loggers)) if name]


def files_only(cfg):
    """--loggers without the trackers (what `reproduce` trains its scratch copy with: a
    check, not a run to show in MLflow or W&B)."""
    return ",".join(name for name in logger_list(cfg.loggers) if not LOGGERS.get(name).tracker) or "none"


def connect(cfg):
    """{name: connection} of the run's loggers, each checked before the run dir exists: a
    tracker that cannot be reached (or whose package is missing) is a one-line UserError."""
    return {name: LOGGERS.get(name).connect(cfg) for name in chosen(cfg)}


def open_all(run_dir, cfg, purge_step=None, sweep=None, connections=None):
    """The run's loggers, started in `run_dir` (after its config.yaml is written)."""
    connections = connections or {}
    opened = []
    try:
        for name in chosen(cfg):
            start = Start(purge_step=purge_step, sweep=sweep, connection=connections.get(name))
            opened.append(LOGGERS.get(name)(run_dir, cfg, start))
    except BaseException:
        for logger in opened:
            logger.end(None)
        raise
    return opened


def attach_output(cfg, path, folder=""):
    """After a command wrote `path` from a run's checkpoint (test's csv, export's model): add
    it to that run's trackers, when it has any (the run of --load-model-path, else of --env)."""
    from pathlib import Path

    run_dir = Path(cfg.load_model_path).parent if cfg.load_model_path else cfg.run_dir if cfg.env else None
    if run_dir is not None and (run_dir / record.FILE).is_file():
        attach(run_dir, Path(path), folder)


def attach(run_dir, path, folder=""):
    """Add file `path` (test's csv, export's model) to the tracker runs `run_dir` reports to,
    as recorded in its trackers.json; a failure is a warning, never the command's."""
    from utils.loggers import mlflow_tracker, wandb_tracker

    senders = {"mlflow": mlflow_tracker.attach, "wandb": wandb_tracker.attach}
    for name, ids in record.read(run_dir).items():
        send = senders.get(name)
        if send is None or not isinstance(ids, dict):
            continue
        try:
            if send(ids, path, folder) is not False:
                log.info("%s: %s added to the run's files", name, path.name)
        except Exception as error:  # noqa: BLE001 - the file is written; its copy in a tracker is extra
            log.warning("could not add %s to the %s run of %s: %s", path.name, name, run_dir.name, one_line(error))
