"""TensorBoard's event files on a disk that fills up: one line, never a traceback from
tensorboardX's writer thread or a run that hangs on its full queue."""
import threading

import pytest
from conftest import fill, make_dogcat, run_cli, small_disk, tiny_flags

from utils.core.io import OutputError
from utils.visualize import Visualizer, write_hparams


def test_a_full_disk_under_the_event_file_is_one_error_and_no_hang(tmp_path, monkeypatch):
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    with small_disk(tmp_path / "disk", "256k") as disk:
        visualizer = Visualizer(disk / "run", "tensorboard")
        visualizer.plot("train/loss", 1.0, 1)
        visualizer.flush()  # the file exists, with its first points
        fill(disk)
        with pytest.raises(OutputError, match=rf"cannot write {disk / 'run'}/events.out.tfevents.\S+: no space left on "
                                              rf"device; the curves written before are kept"):
            for step in range(2, 20_000):  # well past tensorboardX's queue of 10
                visualizer.plot("train/loss", float(step), step)
            visualizer.flush()
        visualizer.close()  # returns: the writer thread is alive and drained
        with pytest.raises(OutputError, match="cannot write"):
            write_hparams(disk / "run", {"lr": 0.1}, {"hparam/val_loss": 0.5})
    assert thread_errors == []


def test_a_run_killed_right_after_an_epoch_keeps_that_epochs_points_in_tensorboard(tmp_path):
    """kill -9 one step into epoch 2: epoch 1's points were added before its checkpoint, so
    they must be in the event file (the resume redoes only the steps after the checkpoint)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_dogcat(tmp_path / "data", per_class=12)
    flags = tiny_flags(tmp_path / "data", tmp_path, **{"max-epoch": 2})  # 4 steps an epoch
    killed = run_cli("train", *flags, env={"RUNNER_FAULT_AT_STEP": "6:SIGKILL"})
    assert killed.returncode == -9, killed.stderr
    resumed = run_cli("train", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    events = EventAccumulator(str(tmp_path / "runs" / "tiny"), size_guidance={"scalars": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("val/logloss")] == [4, 8]
    assert [event.step for event in events.Scalars("train/loss")] == [2, 4, 6, 8]  # each once: the purge dropped step 6's first
