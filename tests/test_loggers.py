"""--loggers: the LOGGERS registry, what every logger is handed, and the errors that need no
tracker installed (tests/test_trackers.py runs MLflow and W&B for real)."""
import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, make_dogcat, run_cli, run_process, tiny_flags

from configs.loader import load_config
from utils import loggers
from utils.core.registry import LOGGERS
from utils.loggers.base import Logger, Tracker


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loggers") / "data"
    make_dogcat(root, per_class=8, test_images=2, extras=False)
    return root


@pytest.mark.parametrize("flags, message", [
    (["--loggers=tensorbord"], "error: option --loggers: unknown logger 'tensorbord' in the loggers registry; closest: tensorboard"),
    (["--loggers=tensorboard,mlflow,tensorboard"], "error: option --loggers names tensorboard twice; give each logger once"),
    (["--loggers=mlflow", "--mlflow-uri=./mlruns"], "error: option --mlflow-uri: MLflow 3 keeps runs in a database or on a "
                                                    "server, not in a folder; give sqlite:///<path>.db"),
    (["--loggers=wandb", "--wandb-project=team/dogcat"], "error: option --wandb-project: a W&B project name has at most "
                                                         "128 characters and none of / \\ # ? % :; got 'team/dogcat'"),
])
def test_bad_logger_options_are_one_line_and_exit_2_before_the_run_dir(flags, message, tmp_path):
    result = run_cli("train", "--env=x", f"--checkpoint-dir={tmp_path}", *flags)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "x").exists()


def test_the_visualizer_option_of_the_book_picks_the_tensorboard_entry():
    chosen = lambda **given: loggers.chosen(load_config(given))  # noqa: E731
    assert chosen() == ["tensorboard"]
    assert chosen(loggers="tensorboard,mlflow", visualizer="none") == ["mlflow"]
    assert chosen(loggers="mlflow,tensorboard", visualizer="visdom") == ["mlflow", "visdom"]
    assert chosen(loggers="none") == [] and chosen(loggers="") == []
    assert loggers.files_only(load_config({"loggers": "tensorboard,mlflow,wandb"})) == "tensorboard"
    assert loggers.files_only(load_config({"loggers": "wandb"})) == "none"


@pytest.mark.slow
def test_a_tracker_without_its_package_is_one_line_naming_the_extra(data, tmp_path):
    shadow = tmp_path / "shadow"  # an environment without the trackers extra
    for name in ("mlflow", "wandb"):
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text("raise ImportError('not installed here')\n")
    for name in ("mlflow", "wandb"):
        result = run_process("train", *tiny_flags(data, tmp_path, loggers=f"tensorboard,{name}"),
                             env={"PYTHONPATH": str(shadow)})
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: --loggers={name} needs the {name} package, which is not installed; install the trackers extra "
            f"with `bash scripts/setup.sh --trackers`")
        assert not (tmp_path / "runs" / "tiny").exists()  # said before the run dir exists


@pytest.mark.slow
def test_neither_help_nor_a_default_run_imports_a_tracker(data, tmp_path):
    flags = tiny_flags(data, tmp_path)
    code = (
        "import sys, main, contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()): main.main(['help'])\n"
        "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))\n"
        f"with contextlib.redirect_stdout(io.StringIO()): code = main.main(['train', *{flags!r}])\n"
        "print(code, sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.split("\n")[:2] == ["[]", "0 []"], result.stdout + result.stderr


class Recorder(Logger):
    """A logger as docs/extending.md shows one: here it keeps every call."""

    calls = []

    def __init__(self, run_dir, cfg, start):
        super().__init__(run_dir, cfg, start)
        self.calls.append(("start", start.purge_step, start.sweep))

    def scalar(self, name, value, step):
        self.calls.append(("scalar", name, step))

    def images(self, name, images, step, path=None):
        self.calls.append(("images", name, step, path))

    def table(self, name, header, rows, step):
        self.calls.append(("table", name, step))

    def end(self, status, best=None):
        self.calls.append(("end", status, best))


def guide_logger():
    """The logger docs/extending.md shows, as written there."""
    guide = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    return re.search(r"```python\n# utils/loggers/ndjson.py\n(.*?)```", guide, re.S).group(1)


def test_the_guides_logger_is_the_toy_one_the_house_test_drops_in():
    toy = (ROOT / "tests" / "fixtures" / "toy" / "utils" / "loggers" / "ndjson.py").read_text(encoding="utf-8")
    assert toy.split("\n", 1)[1].lstrip("\n") == guide_logger()  # the same code, less the module docstring


def test_a_registered_logger_gets_what_tensorboard_gets_and_the_end(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from utils.engine import loop as engine

    LOGGERS.register("recorder")(Recorder)
    exec(compile(guide_logger(), "utils/loggers/ndjson.py", "exec"), {"__name__": "guide_ndjson"})  # registers ndjson
    Recorder.calls = []
    cfg = load_config({"train_data_root": str(data / "train"), "checkpoint_dir": str(tmp_path / "runs"), "env": "mine",
                       "model": "LeNet", "image_size": 16, "batch_size": 4, "num_workers": 0, "max_epoch": 2,
                       "print_freq": 2, "progress": False, "debug_file": "", "loggers": "tensorboard,recorder,ndjson"})
    engine.train(cfg)
    run_dir = tmp_path / "runs" / "mine"
    assert Recorder.calls[0] == ("start", None, None)  # a new run: nothing to purge
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    board = {(tag, event.step) for tag in events.Tags()["scalars"] for event in events.Scalars(tag)}
    assert {(name, step) for kind, name, step, *_ in Recorder.calls if kind == "scalar"} == board
    images = [call for call in Recorder.calls if call[0] == "images"]
    assert images and all(path is not None and path.is_file() and path.parent == run_dir / "images"
                          for *_, path in images)
    assert any(call[:2] == ("table", "val/confusion") for call in Recorder.calls)
    status = json.loads((run_dir / "status.json").read_text())
    assert Recorder.calls[-1] == ("end", "finished", status["best"])
    assert [call for call in Recorder.calls if call[0] == "end"] == [Recorder.calls[-1]]  # told once
    lines = (run_dir / "scalars.ndjson").read_text().splitlines()
    assert {(point["name"], point["step"]) for point in map(json.loads, lines)} == board  # the guide's logger works


class Failing(Tracker):
    name, title = "failing", "Failing"
    calls = []

    def _send_scalars(self, points):
        self.calls.append([step for _, _, step in points])
        if len(self.calls) == 2:
            raise ConnectionError("[Errno 111] Connection refused")

    def _text(self, name, text, step, path):
        self.calls.append(text)


def test_a_tracker_that_fails_warns_once_and_drops_the_rest(tmp_path, caplog):
    tracker = Failing(tmp_path, load_config({}), loggers.Start())
    tracker.scalar("train/loss", 1.0, 1)
    tracker.flush()  # step 1 sent
    for step in range(2, 5):
        tracker.scalar("train/loss", 1.0 / step, step)
    tracker.flush()  # steps 2-4 (merged, or one by one): the second call fails
    tracker.scalar("train/loss", 0.1, 5)
    tracker.text("sample", "a poem", 5)
    tracker.end("finished")
    assert Failing.calls[0] == [1] and len(Failing.calls) == 2 and Failing.calls[1][0] == 2  # nothing after the failure
    said = [record.getMessage() for record in caplog.records if "Failing" in record.getMessage()]
    assert said == ["Failing failed: [Errno 111] Connection refused; the run goes on without it (TensorBoard and the "
                    "run dir keep everything)"]


def test_a_resumed_tracker_skips_the_points_its_service_holds(tmp_path):
    class Held(Tracker):
        name, title = "held", "Held"
        got = []

        def _send_scalars(self, points):
            self.got.extend(points)

    tracker = Held(tmp_path, load_config({}), loggers.Start(purge_step=5))
    tracker.sent = {"train/loss": 6}  # the killed attempt logged up to step 6, past its checkpoint at 4
    for step in range(5, 9):
        tracker.scalar("train/loss", float(step), step)
        tracker.scalar("val/loss", float(step), step)
    tracker.end("finished")
    assert [(name, step) for name, _, step in Held.got] == [("val/loss", 5), ("val/loss", 6), ("train/loss", 7),
                                                             ("val/loss", 7), ("train/loss", 8), ("val/loss", 8)]


def test_a_slow_tracker_is_waited_for_once_and_said_once(tmp_path, caplog, monkeypatch):
    import threading
    import time

    from utils.loggers import base

    monkeypatch.setattr(base, "FLUSH_WAIT", 0.2)
    monkeypatch.setattr(base, "END_WAIT", 0.3)
    release = threading.Event()

    class Slow(Tracker):
        name, title = "slow", "Slow"

        def _send_scalars(self, points):
            release.wait(10)  # a server that does not answer

    tracker = Slow(tmp_path, load_config({}), loggers.Start())
    tracker.scalar("train/loss", 1.0, 1)
    tracker.flush()  # waits 0.2 s, then goes on
    started = time.monotonic()
    for step in range(2, 6):
        tracker.scalar("train/loss", 1.0, step)
        tracker.flush()  # still behind: no more waiting at epoch ends
    assert time.monotonic() - started < 0.15
    tracker.end("finished")  # the end waits once more, then gives up on the rest
    release.set()
    said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Slow")]
    assert said == ["Slow has not taken everything the run gave it within 0 s at an epoch's end; the run goes on, and "
                    "the rest is sent while it does",
                    "Slow has not taken what the run gave it last within 0 s at the run's end: that part is not sent"]
