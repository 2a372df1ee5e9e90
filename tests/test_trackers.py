"""--loggers=mlflow and --loggers=wandb against the real things, no mocks: MLflow's local
SQLite store read back with MlflowClient (params, every point once after a stop and a resume,
status, files, a sweep's nested trials), a real `mlflow server` over HTTP (and killed mid-run),
an unreachable server, and W&B in offline mode (its run files, one id across a resume).

Skipped when the trackers extra is not installed (`bash scripts/setup.sh --trackers`); CI
installs it with --dev.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import make_dogcat, run_cli, tiny_flags, typed

mlflow = pytest.importorskip("mlflow", reason="the trackers extra: bash scripts/setup.sh --trackers")
from mlflow import MlflowClient  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
TIMING = ("train/images_per_second", "train/epoch_images_per_second", "memory/resident_mb")


def local_client(runs):
    return MlflowClient(tracking_uri=f"sqlite:///{runs.resolve() / 'mlflow.db'}")


def runs_of(client, experiment="classify"):
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def artifacts(client, run_id, folder=None):
    return sorted(entry.path for entry in client.list_artifacts(run_id, folder))


def tensorboard_points(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory):
    """A run with TensorBoard, MLflow and W&B, stopped by SIGINT in its 2nd epoch, then resumed."""
    pytest.importorskip("wandb")
    tmp = tmp_path_factory.mktemp("trackers")
    make_dogcat(tmp / "data", per_class=12)
    flags = tiny_flags(tmp / "data", tmp, **{"max-epoch": 3, "loggers": "tensorboard,mlflow,wandb"})
    env = {"WANDB_MODE": "offline", "HOME": str(tmp)}  # offline, and no key from the user's ~/.netrc
    stopped = run_cli("train", *flags, env={**env, "RUNNER_FAULT_AT_STEP": "7:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    client = local_client(tmp / "runs")
    (run,) = runs_of(client)
    after_stop = {"status": run.info.status, "wandb": sorted((tmp / "runs" / "tiny" / "wandb").glob("offline-run-*"))}
    resumed = run_cli("train", *flags, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "wandb" not in resumed.stdout.lower() and "View run" not in resumed.stdout  # the command's output is ours
    tested = run_cli("test", f"--checkpoint-dir={tmp / 'runs'}", "--env=tiny", f"--test-data-root={tmp / 'data' / 'test'}",
                     "--num-workers=0", env=env)
    assert tested.returncode == 0, tested.stderr
    return tmp, client, after_stop, resumed


def test_mlflow_keeps_one_run_across_a_stop_and_resume_with_every_point_once(stopped_and_resumed):
    tmp, client, after_stop, resumed = stopped_and_resumed
    run_dir = tmp / "runs" / "tiny"
    assert after_stop["status"] == "KILLED"  # the stop, as MLflow shows it
    (run,) = runs_of(client)  # the resume continued the same run
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    board = tensorboard_points(run_dir)
    assert set(board) == {key for key in run.data.metrics if not key.startswith("best/")}
    for key, points in board.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        steps = [step for step, _ in history]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {steps}"
        assert steps == [step for step, _ in points], key  # TensorBoard's curve after its purge
        if key not in TIMING:  # the resume is bit-exact: the points it skipped had these values
            assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(history, points)), key
    assert [step for step, _ in board["val/logloss"]] == [4, 8, 12]  # 3 epochs of 4 steps
    status = json.loads((run_dir / "status.json").read_text())
    best = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "best/val/logloss"))
    assert len({step for step, _ in best}) == len(best)  # the stop's best, then the run's: each epoch once
    assert best[-1] == (status["best"]["epoch"], pytest.approx(status["best"]["value"]))


def test_mlflow_logs_the_config_tags_and_files(stopped_and_resumed):
    tmp, client, _, _ = stopped_and_resumed
    (run,) = runs_of(client)
    params = run.data.params
    assert params["lr"] == "0.01" and params["model"] == "LeNet" and params["batch_size"] == "4"
    assert "resume" not in params and "config" not in params  # how it was invoked is not the run's config
    manifest = json.loads((tmp / "runs" / "tiny" / "manifest.json").read_text())
    git = manifest["environments"][-1]["code"].get("git")
    if git:
        assert run.data.tags["mlflow.source.git.commit"] == git["commit"]
    assert run.data.tags["runner.run_dir"] == str(tmp / "runs" / "tiny")
    files = artifacts(client, run.info.run_id)
    assert {"config.yaml", "manifest.json", "status.json", "images", "tables", "predictions"} <= set(files)
    assert "best.pth" not in str(files)  # only with --log-checkpoints
    assert "predictions/result.csv" in artifacts(client, run.info.run_id, "predictions")  # `test` added its csv
    pytest.importorskip("onnxscript", reason="the export extra")
    exported = run_cli("export", f"--checkpoint-dir={tmp / 'runs'}", "--env=tiny")
    assert exported.returncode == 0, exported.stderr
    assert artifacts(client, run.info.run_id, "model") == ["model/model.onnx"]  # `export` added its model
    images = artifacts(client, run.info.run_id, "images")
    assert "images/inputs_step0000000.png" in images
    local = client.download_artifacts(run.info.run_id, "status.json", str(tmp / "download"))
    assert json.loads(open(local).read())["status"] == "finished"


def test_wandb_offline_writes_its_run_files_and_a_resume_keeps_the_id(stopped_and_resumed):
    tmp, _, after_stop, _ = stopped_and_resumed
    run_dir = tmp / "runs" / "tiny"
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(after_stop["wandb"]) == 1 and len(folders) == 2  # one per attempt, as `wandb sync` expects
    for folder in folders:
        assert folder.name.endswith(f"-{run_id}")
        assert (folder / f"run-{run_id}.wandb").stat().st_size > 0
        assert (folder / "files" / "config.yaml").is_file()
    assert (folders[-1] / "files" / "status.json").is_file()
    assert int((run_dir / "wandb" / f"runner-last-step-{run_id}").read_text()) >= 6  # where the stop's points ended


@pytest.fixture
def data(tmp_path):
    make_dogcat(tmp_path / "data", per_class=8, test_images=2, extras=False)
    return tmp_path / "data"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder, port):
    """A real `mlflow server` with a SQLite store on 127.0.0.1:port, in a process group of its
    own (killed whole); returns the Popen once /health answers."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner: fewer processes
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "served"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            assert server.poll() is None, "mlflow server exited"
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not answer in 120 s")


@pytest.mark.slow
def test_a_real_mlflow_server_over_http_and_killed_mid_run(data, tmp_path):
    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        flags = tiny_flags(data, tmp_path, **{"loggers": "mlflow", "mlflow-uri": uri, "mlflow-experiment": "served",
                                              "env": "served", "log-checkpoints": "true"})
        result = run_cli("train", *flags)
        assert result.returncode == 0, result.stderr
        assert "View run" not in result.stdout  # MLflow's own print is off: the log says where the run is
        client = MlflowClient(tracking_uri=uri)
        (run,) = runs_of(client, "served")
        assert run.info.status == "FINISHED" and "val/logloss" in run.data.metrics
        assert "config.yaml" in artifacts(client, run.info.run_id)  # uploaded through the server
        assert artifacts(client, run.info.run_id, "checkpoints") == ["checkpoints/best.pth"]  # --log-checkpoints
        copy = client.download_artifacts(run.info.run_id, "checkpoints/best.pth", str(tmp_path / "copy"))
        assert open(copy, "rb").read() == (tmp_path / "runs" / "served" / "best.pth").read_bytes()

        # The server dies while a run trains: one warning, the run finishes, TensorBoard is whole.
        flags = tiny_flags(data, tmp_path, **{"loggers": "tensorboard,mlflow", "mlflow-uri": uri,
                                              "mlflow-experiment": "served", "env": "orphan", "max-epoch": 4})
        slow_saves = "1:slow,2:slow,3:slow"  # epoch 1's checkpoint writes wait 2 s each: time to kill the server
        training = subprocess.Popen([sys.executable, "main.py", "train", *flags], cwd=str(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, RUNNER_FAULT_AT_SAVE=slow_saves))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(r.data.metrics for r in runs_of(client, "served")[1:]):
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        out, err = training.communicate(timeout=300)
        assert training.returncode == 0, err
        warnings = [line for line in err.splitlines() if "MLflow" in line and "WARNING" in line]
        assert len(warnings) == 1 and "MLflow failed" in warnings[0] and "the run goes on without it" in warnings[0], err
        assert "Traceback" not in err
        board = tensorboard_points(tmp_path / "runs" / "orphan")
        assert [step for step, _ in board["val/logloss"]] == [3, 6, 9, 12]  # every epoch, after the server died
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_an_unreachable_mlflow_server_is_one_line_and_exit_1_before_the_run_dir(data, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli("train", *tiny_flags(data, tmp_path, **{"loggers": "tensorboard,mlflow", "mlflow-uri": uri}))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot reach MLflow at {uri} (connection refused); start the server ({typed('mlflow')} server --port "
        f"5000), fix --mlflow-uri, or drop mlflow from --loggers")
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize("uri, code, message", [
    ("ftp://example.org/runs", 2, "option --mlflow-uri: MLflow keeps runs on a server (http://, https://) or in a "
                                  "database (sqlite:///<file>.db, postgresql://, mysql://, mssql://), not at ftp://; "
                                  "got 'ftp://example.org/runs'"),
    ("sqlite:///{tmp}/a-file/x.db", 2, "option --mlflow-uri: {tmp}/a-file is a file, not a folder"),
    ("sqlite:///{tmp}/missing/dir/x.db", 2, "option --mlflow-uri: the folder {tmp}/missing/dir does not exist; create "
                                            "it, or give another file"),
    ("sqlite:///{tmp}/junk.db", 2, "option --mlflow-uri: {tmp}/junk.db is not an SQLite database; give another file"),
    ("sqlite:///{tmp}/broken.db", 1, "MLflow cannot use its store {tmp}/broken.db ((sqlite3.DatabaseError) file is not a "
                                     "database): damaged? Move it away (a new one is made), give another --mlflow-uri, "
                                     "or drop mlflow from --loggers"),
], ids=["another scheme", "under a file", "folder missing", "not sqlite", "damaged sqlite"])
def test_an_mlflow_store_that_cannot_be_used_is_one_line_before_anything_is_written(data, tmp_path, uri, code, message):
    (tmp_path / "a-file").write_text("a file")
    (tmp_path / "junk.db").write_text("not a database")
    (tmp_path / "broken.db").write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 40)  # its pages are garbage
    result = run_cli("train", *tiny_flags(data, tmp_path, **{"loggers": "tensorboard,mlflow",
                                                               "mlflow-uri": uri.format(tmp=tmp_path)}))
    assert result.returncode == code, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {message.format(tmp=tmp_path)}"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "tiny").exists() and not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_its_trials_nested_and_tagged(data, tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study_dir = tmp_path / "runs" / "nest"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="nest", storage=JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal"))))
    study.enqueue_trial({"lr": 0.003})  # learns; then lr 0, which the median pruner ends after epoch 1
    study.enqueue_trial({"lr": 0.0})
    space = tmp_path / "space.yaml"
    space.write_text("pruner: {type: median, n_startup_trials: 1}\nparams:\n  lr: [0.003, 0.0]\n")
    result = run_cli("sweep", "--study=nest", "--trials=2", f"--search-space={space}", f"--train-data-root={data / 'train'}",
                     f"--checkpoint-dir={tmp_path / 'runs'}", "--model=LeNet", "--image-size=16", "--num-workers=0",
                     "--max-epoch=3", "--progress=false", "--debug-file=", "--threads=1", "--loggers=mlflow")
    assert result.returncode == 0, result.stderr
    client = local_client(tmp_path / "runs")  # the sweep logs into the store of --checkpoint-dir, as plain runs do
    parent, *trials = runs_of(client)
    assert parent.info.run_name == "nest" and parent.data.tags["runner.sweep"] == "nest"
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == "0"
    assert parent.data.metrics["best/val/logloss"] == pytest.approx(study.best_value)
    assert json.loads((study_dir / "trackers.json").read_text())["mlflow"]["run_id"] == parent.info.run_id
    assert [t.info.run_name for t in trials] == ["trial-0", "trial-1"]
    for number, (trial, state, lr) in enumerate(zip(trials, ("complete", "pruned"), ("0.003", "0.0"))):
        tags = trial.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["trial"] == str(number)
        assert tags["trial.lr"] == lr and trial.data.params["lr"] == lr
        assert tags["trial_state"] == state and trial.info.status == "FINISHED"


def test_a_cross_validation_group_is_a_parent_run_with_its_folds_nested(data, tmp_path):
    flags = [f"--train-data-root={data / 'train'}", f"--test-data-root={data / 'test'}",
             f"--checkpoint-dir={tmp_path / 'runs'}", "--model=LeNet", "--image-size=16", "--num-workers=0",
             "--max-epoch=1", "--progress=false", "--debug-file=", "--loggers=mlflow"]
    result = run_cli("train", "--folds=2", "--env=grp", *flags)
    assert result.returncode == 0, result.stderr
    client = local_client(tmp_path / "runs")  # the store of --checkpoint-dir, not of the group's folder
    parent, *folds = runs_of(client)
    assert parent.info.run_name == "grp" and parent.info.status == "FINISHED"
    report = json.loads((tmp_path / "runs" / "grp" / "cv.json").read_text())
    assert parent.data.metrics["cv_val_logloss_oof"] == pytest.approx(report["oof"]["val_logloss"])
    assert parent.data.metrics["cv_val_logloss_std"] == pytest.approx(report["std"])
    assert [fold.info.run_name for fold in folds] == ["fold-1", "fold-2"]
    assert all(fold.data.tags["mlflow.parentRunId"] == parent.info.run_id for fold in folds)
    tested = run_cli("test", "--env=grp", f"--checkpoint-dir={tmp_path / 'runs'}", "--num-workers=0")
    assert tested.returncode == 0, tested.stderr
    assert artifacts(client, parent.info.run_id, "predictions") == ["predictions/result.csv"]


def test_a_run_that_crashes_before_its_first_checkpoint_is_failed_in_mlflow_and_leaves_no_folder(data, tmp_path):
    pytest.importorskip("wandb")
    flags = tiny_flags(data, tmp_path, **{"loggers": "tensorboard,mlflow,wandb"})
    result = run_cli("train", *flags, env={"RUNNER_FAULT_AT_STEP": "1:nan", "WANDB_MODE": "offline",
                                           "HOME": str(tmp_path)})
    assert result.returncode == 1 and "error: loss is nan at epoch 1, step 1" in result.stderr, result.stderr
    assert "failed:" not in result.stderr  # no tracker warning on top of the crash
    assert not (tmp_path / "runs" / "tiny").exists()
    (run,) = runs_of(local_client(tmp_path / "runs"))
    assert run.info.status == "FAILED" and run.info.run_name == "tiny"


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_logs_one_mlflow_run(data, tmp_path):
    from test_distributed import torchrun

    result = torchrun("train", *tiny_flags(data, tmp_path, **{"loggers": "tensorboard,mlflow", "max-epoch": 2,
                                                              "batch-size": 2, "threads": 1}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("MLflow run ") == 1  # said by rank 0 alone
    (run,) = runs_of(local_client(tmp_path / "runs"))
    assert run.info.status == "FINISHED"
    board = tensorboard_points(tmp_path / "runs" / "tiny")
    for key in ("train/loss", "val/logloss"):
        assert sorted(m.step for m in local_client(tmp_path / "runs").get_metric_history(run.info.run_id, key)) == \
            [step for step, _ in board[key]]
