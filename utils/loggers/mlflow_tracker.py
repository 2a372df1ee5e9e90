"""--loggers=mlflow: a run is an MLflow run; a resume continues it; a sweep is a parent run
with each trial nested under it (docs/trackers.md).

Where: --mlflow-uri, by default a SQLite store beside the runs (<checkpoint-dir>/mlflow.db,
artifacts in <checkpoint-dir>/mlartifacts: `mlflow ui --backend-store-uri sqlite:///...`
shows them, no server needed); or a tracking server over HTTP. The run's id is kept in the
run dir (record.py), so --resume, torchrun's restarts and SLURM's requeue log into the same
run, and the points a resume redoes that MLflow already holds are not sent twice (MLflow
cannot delete points, so the first copy stands; a bit-exact resume computes the same values).

mlflow is imported here only, when a run asks for it (the trackers extra:
`bash scripts/setup.sh --trackers`).
"""
import contextlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

from utils.core.errors import UsageError, UserError, excerpt
from utils.core.io import sqlite_problem
from utils.core.shell import hide_passwords, program
from utils.core.registry import LOGGERS
from utils.loggers import record
from utils.loggers.base import Tracker, best_key, flat_config, one_line, trial_state

log = logging.getLogger(__name__)

EXTRA = "bash scripts/setup.sh --trackers"
STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "stopped": "KILLED", "crashed": "FAILED"}
# MLflow's HTTP client retries a failed call 7 times with a growing back-off (minutes in all)
# by default; a runner's tracker gives up sooner, since the run goes on without it anyway.
# A value the user exported wins.
# MLflow also prints a run's web address to stdout when it ends, inside a command's output:
# the runner logs it once at the start instead.
ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
PARAM_LIMIT = 6000  # characters of a parameter's value MLflow stores
BATCH = 1000  # metrics per log_batch call, MLflow's limit


def require():
    """The mlflow module; a one-line UserError naming the set-up command when it is missing."""
    try:
        import mlflow  # the trackers extra: imported only by a run that asks for MLflow
    except ImportError:
        raise UserError(f"--loggers=mlflow needs the mlflow package, which is not installed; install the trackers "
                        f"extra with `{EXTRA}`") from None
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # urllib3 logs each retry as a WARNING with the whole request; the runner says the outcome once
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    return mlflow


# The stores MLflow's tracking accepts (a server, or a database through SQLAlchemy)
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_uri(uri):
    """UsageError for a --mlflow-uri MLflow cannot use, before anything is written: its file
    store (./mlruns, file:...), a scheme it has no store for (ftp://), an SQLite file whose
    folder is missing (MLflow would create it: a typo would make a new store unseen) or that
    is no SQLite database."""
    if not uri:
        return
    if uri.startswith("file:") or "://" not in uri:
        raise UsageError(f"option --mlflow-uri: MLflow 3 keeps runs in a database or on a server, not in a folder; "
                         f"give sqlite:///<path>.db, http://<host>:<port>, or leave it out (sqlite:///<checkpoint-dir>/"
                         f"mlflow.db); got {excerpt(uri)}")
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in SCHEMES:
        raise UsageError(f"option --mlflow-uri: MLflow keeps runs on a server (http://, https://) or in a database "
                         f"(sqlite:///<file>.db, postgresql://, mysql://, mssql://), not at {scheme}://; got {excerpt(uri)}")
    if scheme == "sqlite":
        problem = sqlite_problem(sqlite_file(uri))
        if problem:
            raise UsageError(f"option --mlflow-uri: {problem}")


def sqlite_file(uri):
    """The file of an sqlite:/// URI (sqlite:////abs/x.db, sqlite:///relative.db)."""
    return Path(uri.split("://", 1)[1][1:] or ":memory:")


def store_of(cfg):
    """(tracking URI, artifact location for a new experiment or None: the server decides).
    A SQLite store keeps its experiments' files beside it, in mlartifacts/ (MLflow's own
    default would be ./mlruns in whatever folder the command runs in)."""
    uri = cfg.mlflow_uri or f"sqlite:///{Path(cfg.checkpoint_dir).resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        return uri, (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return uri, None


class Connection:
    """A client of the store, checked to answer, and the experiment the run goes into."""

    def __init__(self, cfg):
        check_uri(cfg.mlflow_uri)
        mlflow = require()
        self.uri, artifacts = store_of(cfg)
        if not self.uri.startswith(("http://", "https://", "databricks")):
            quiet_store_logs()
        if self.uri.startswith("sqlite:///"):  # the default store too: a damaged one is one line
            problem = sqlite_problem(sqlite_file(self.uri), folder_must_exist=False)  # made in --checkpoint-dir
            if problem:
                raise UserError(f"MLflow's store: {problem}")
        name = cfg.mlflow_experiment or cfg.experiment
        try:
            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
            with quick_answers():
                self.experiment_id = experiment_id(self.client, name, artifacts)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - anything that stops us reaching the store says so in one line
            raise unreachable(self.uri, error) from None


@contextlib.contextmanager
def quick_answers():
    """The start's check of the server: one retry and 10 s per request (a blackholed host
    is a line within half a minute, not the run's patient defaults), unless the user set them."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    ours = {name: value for name, value in quick.items() if os.environ.get(name) == ENV_DEFAULTS[name]}
    os.environ.update(ours)
    try:
        yield
    finally:
        for name in ours:
            os.environ[name] = ENV_DEFAULTS[name]


def unreachable(uri, error):
    """The one line of a store that does not answer, with the fixes."""
    if uri.startswith("sqlite:///"):
        return UserError(f"MLflow cannot use its store {sqlite_file(uri)} ({reason(error)}): damaged? Move it away (a "
                         f"new one is made), give another --mlflow-uri, or drop mlflow from --loggers")
    return UserError(f"cannot reach MLflow at {hide_passwords(uri)} ({reason(error)}); start the server ({program('mlflow')} "
                     f"server --port 5000), fix --mlflow-uri, or drop mlflow from --loggers")


def reason(error):
    """Why a call to MLflow failed, short: the OS's words for a connection that failed
    ("connection refused", "name or service not known"), else the error's first line."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    if found:
        return found.group(1).strip().lower()
    if "timed out" in str(error).lower():
        return "timed out"
    return one_line(error)


def experiment_id(client, name, artifacts):
    """The id of MLflow experiment `name`, created when missing (two workers of a sweep may
    race to create it: the loser finds the winner's)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise UserError(f"the MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                            f"or give --mlflow-experiment another name")
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def quiet_store_logs():
    """A new SQLite store logs its schema migrations at INFO: noise in a run's log."""
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


@LOGGERS.register("mlflow")
class MlflowLogger(Tracker):
    """A run's params (the resolved config), metrics with their steps, tags (git commit,
    run dir, sweep trial), status and files (config.yaml, manifest.json, best.pth with
    --log-checkpoints; result.csv and model.onnx when test / export write them)."""

    name = "mlflow"
    title = "MLflow"

    @classmethod
    def connect(cls, cfg):
        return Connection(cfg)

    def __init__(self, run_dir, cfg, start):
        connection = start.connection or Connection(cfg)
        self.client, self.uri = connection.client, connection.uri
        super().__init__(run_dir, cfg, start)
        try:
            self._start(run_dir, cfg, start, connection)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - the store went away since connect: one line, before training
            self.end(None)
            raise unreachable(self.uri, error) from None

    def _start(self, run_dir, cfg, start, connection):
        """Make the MLflow run, or continue the one the run dir names; its params and tags."""
        kept = record.read(run_dir).get(self.name) or {}
        self.run_id = kept.get("run_id") if kept.get("uri") == self.uri else None
        run = self._existing(self.run_id)
        params = flat_config(cfg)
        if run is None:
            tags = {"mlflow.runName": cfg.env, "mlflow.source.name": "main.py", "runner.run_dir": str(run_dir),
                    "runner.experiment": cfg.experiment, "runner.model": str(cfg.model), "runner.host": socket.gethostname()}
            tags.update(code_tags(run_dir))
            tags.update(sweep_tags(start.sweep))
            self.run_id = self.client.create_run(connection.experiment_id, run_name=cfg.env, tags=tags).info.run_id
            record.keep(run_dir, self.name, {"uri": self.uri, "experiment_id": connection.experiment_id,
                                             "run_id": self.run_id})
            held = {}
            log.info("MLflow run %s (%s) in %s", self.run_id, cfg.env, where_to_look(self.uri, connection.experiment_id,
                                                                                   self.run_id))
        else:
            log.info("MLflow run %s goes on (%s)", self.run_id, where_to_look(self.uri, connection.experiment_id, self.run_id))
            self.client.update_run(self.run_id, status="RUNNING")
            held = run.data.params
            self.sent = {key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)
                         for key in run.data.metrics}
        from mlflow.entities import Param, RunTag

        fresh = [Param(key, value[:PARAM_LIMIT]) for key, value in params.items() if key not in held]
        changed = {key: value for key, value in params.items() if key in held and held[key] != value[:PARAM_LIMIT]}
        tags = [RunTag("runner.resumed_with", ", ".join(f"{k}={v}" for k, v in changed.items())[:PARAM_LIMIT])] if changed else []
        for first in range(0, len(fresh), 100):  # MLflow takes 100 params per call
            self.client.log_batch(self.run_id, params=fresh[first:first + 100], tags=tags if first == 0 else ())
        if not fresh and tags:
            self.client.log_batch(self.run_id, tags=tags)
        self.file(run_dir / "config.yaml")

    def _existing(self, run_id):
        """The MLflow run `run_id` when the store still has it (a resume), else None."""
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage != "deleted" else None

    def _send_scalars(self, points):
        from mlflow.entities import Metric

        metrics = [Metric(name, value, _now_ms(), step) for name, value, step in points]
        for first in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first:first + BATCH])

    def _images(self, name, images, step, path):
        if path is not None:
            self.client.log_artifact(self.run_id, str(path), "images")

    def _text(self, name, text, step, path):
        self.client.log_text(self.run_id, text, f"texts/{name.replace('/', '_')}_step{step:07d}.txt")

    def _table(self, name, header, rows, step):
        columns = {str(column): [row[index] for row in rows] for index, column in enumerate(header)}
        self.client.log_dict(self.run_id, {"columns": list(columns), "data": rows},
                             f"tables/{name.replace('/', '_')}_step{step:07d}.json")

    def _file(self, path, folder):
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def _end(self, status, best):
        name = best_key(best["metric"]) if best else None
        if best and int(best["epoch"]) > self.sent.get(name, -1):  # a stop logged it already: once
            from mlflow.entities import Metric

            self.client.log_batch(self.run_id, metrics=[Metric(name, float(best["value"]), _now_ms(), int(best["epoch"]))])
        if self.start.sweep is not None and status is not None:
            self.client.set_tag(self.run_id, "trial_state", trial_state(status, best))
        if status is not None:
            for name in ("manifest.json", "status.json"):
                self._file(self.run_dir / name, "")
            if self.cfg.log_checkpoints:
                self._file(self.run_dir / "best.pth", "checkpoints")
            self.client.set_terminated(self.run_id, STATUS[status])


def sweep_tags(sweep):
    """A trial's tags: its parent run (nesting it under the sweep's), number and parameters."""
    if not sweep:
        return {}
    tags = {"runner.sweep": sweep["study"], "trial": str(sweep["number"])}
    parent = (sweep.get("parents") or {}).get("mlflow")
    if parent:
        tags["mlflow.parentRunId"] = parent
    tags.update({f"trial.{name}": str(value) for name, value in sweep["params"].items()})
    return tags


def where_to_look(uri, experiment, run_id):
    """The run's web page on a server, or the command that shows a local store."""
    if uri.startswith(("http://", "https://")):
        return f"{hide_passwords(uri).rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return f"{hide_passwords(uri)}; see it with `{program('mlflow')} ui --backend-store-uri {hide_passwords(uri)}`"


def code_tags(run_dir):
    """The git commit of the code (and whether it had uncommitted changes) from the run's
    manifest.json, as MLflow's tags; {} outside git or without a manifest."""
    try:
        blocks = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["environments"]
        git = blocks[-1]["code"]["git"] or {}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}
    tags = {"mlflow.source.git.commit": str(git["commit"])} if git.get("commit") else {}
    if git.get("branch"):
        tags["mlflow.source.git.branch"] = str(git["branch"])
    if "dirty" in git:
        tags["runner.uncommitted_changes"] = str(bool(git["dirty"])).lower()
    return tags


def attach(ids, path, folder):
    """Log file `path` to the MLflow run `ids` names (test's csv, export's model)."""
    require().MlflowClient(tracking_uri=ids["uri"]).log_artifact(ids["run_id"], str(path), folder or None)


def _now_ms():
    return int(time.time() * 1000)


def open_parent(study_dir, cfg, study):
    """The id of sweep `study`'s parent run, under which each trial is nested: made by the
    sweep's first worker and kept in the study folder (the caller holds the study's lock)."""
    connection = Connection(cfg)
    client = connection.client
    kept = record.read(study_dir).get("mlflow") or {}
    if kept.get("uri") == connection.uri and kept.get("run_id"):
        from mlflow.exceptions import MlflowException

        try:
            if client.get_run(kept["run_id"]).info.lifecycle_stage != "deleted":
                client.update_run(kept["run_id"], status="RUNNING")
                return kept["run_id"]
        except MlflowException:
            pass  # deleted from the store: a new parent
    tags = {"mlflow.runName": study, "runner.sweep": study, "runner.study_dir": str(study_dir),
            "runner.experiment": cfg.experiment}
    run_id = client.create_run(connection.experiment_id, run_name=study, tags=tags).info.run_id
    record.keep(study_dir, "mlflow", {"uri": connection.uri, "experiment_id": connection.experiment_id, "run_id": run_id})
    return run_id


def end_parent(run_id, cfg, metric, best_value, best_trial):
    """A worker is done: the parent run shows the study's best so far and FINISHED (the last
    worker to end has the last word; a worker that joins later sets it RUNNING again)."""
    from mlflow.entities import Metric

    client = Connection(cfg).client
    if best_value is not None:
        client.log_batch(run_id, metrics=[Metric(best_key(metric), float(best_value), _now_ms(), 0)])
        client.set_tag(run_id, "best_trial", str(best_trial))
    client.set_terminated(run_id, "FINISHED")


def end_group(run_id, cfg, values):
    """A cross-validation group is done (or this command's folds are): its parent run gets
    the cv report's numbers ({name: value}) and is FINISHED."""
    from mlflow.entities import Metric

    client = Connection(cfg).client
    client.log_batch(run_id, metrics=[Metric(name, float(value), _now_ms(), 0) for name, value in values.items()])
    client.set_terminated(run_id, "FINISHED")
