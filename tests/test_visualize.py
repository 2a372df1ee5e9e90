"""TensorBoard's event files on a disk that fills up: one line, never a traceback from
tensorboardX's writer thread or a run that hangs on its full queue."""
import threading

import pytest
from conftest import fill, small_disk

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
