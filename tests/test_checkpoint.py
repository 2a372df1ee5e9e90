"""utils.checkpoint and utils.io: atomic writes and explained load failures."""
import collections
import os

import pytest
import torch

from models.lenet import LeNet
from utils.engine import checkpoint
from utils.core.errors import UserError
from utils.core.io import atomic_open
from utils.writers import write_submission


def test_a_crash_while_writing_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    checkpoint.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_halfway(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp file left behind


def test_checkpoint_loads_with_weights_only_and_carries_format_version(tmp_path):
    path = checkpoint.save_checkpoint({"model": collections.OrderedDict(w=torch.zeros(2)), "epoch": 3}, tmp_path / "c.pth")
    state = torch.load(path, weights_only=True, map_location="cpu")
    assert state["format_version"] == checkpoint.FORMAT_VERSION and state["epoch"] == 3


def test_truncated_file_is_explained(tmp_path):
    path = checkpoint.save_checkpoint({"w": torch.ones(100)}, tmp_path / "c.pth")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"is unreadable \(truncated or not a torch file\)"):
        checkpoint.load_checkpoint(path)


class Arbitrary:
    """Any class: unpickling it would need weights_only=False."""


def test_file_needing_unsafe_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Arbitrary()}, path)
    with pytest.raises(UserError, match=r"holds Python objects that need unsafe unpickling; refused"):
        checkpoint.load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "new.pth"
    torch.save({"format_version": checkpoint.FORMAT_VERSION + 1}, path)
    with pytest.raises(UserError, match=rf"has format version {checkpoint.FORMAT_VERSION + 1}; this runner reads up to"):
        checkpoint.load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint '.*nope.pth' not found"):
        checkpoint.load_checkpoint(tmp_path / "nope.pth")


def test_another_architecture_names_keys_and_shapes():
    model = LeNet(num_classes=2)
    weights = LeNet(num_classes=5).state_dict()
    weights["extra.weight"] = torch.zeros(1)
    del weights["features.0.bias"]
    with pytest.raises(UserError, match=r"does not fit model LeNet: missing features\.0\.bias; unexpected extra\.weight; "
                                        r"shape mismatch classifier\.5\.weight \(5, 84\) vs model \(2, 84\)"):
        checkpoint.load_weights(model, weights, "x.pth")


def test_book_style_save_and_load_roundtrip(tmp_path):
    model = LeNet()
    path = model.save(tmp_path / "lenet.pth")
    other = LeNet().load(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_pretrained_with_another_head_keeps_the_body(tmp_path):
    source = LeNet(num_classes=10)
    path = source.save(tmp_path / "ten.pth")
    model = LeNet(num_classes=2, pretrained=str(path))
    assert torch.equal(model.features[0].weight, source.features[0].weight)
    assert model.classifier[-1].out_features == 2


def test_csv_is_atomic_sorted_and_clipped(tmp_path):
    path = tmp_path / "result.csv"
    assert write_submission(path, [10, 2, 1], [0.0, 0.5, 1.0], clip=0.01) == 3
    assert path.read_text() == "id,label\n1,0.990000\n2,0.500000\n10,0.010000\n"
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as handle:
            handle.write("id,label\n1,")
            raise RuntimeError("interrupted")
    assert path.read_text().startswith("id,label\n1,0.990000")


def test_an_epoch_end_written_in_the_background_holds_the_state_of_that_moment(tmp_path, monkeypatch):
    import threading

    manager = checkpoint.CheckpointManager(tmp_path)
    weights = torch.zeros(4)
    started, release, writers = threading.Event(), threading.Event(), []
    real_save = checkpoint.save_checkpoint

    def slow_save(state, path):  # the write waits until training has moved the live tensors on
        writers.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return real_save(state, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    manager.save_epoch_end({"model": {"w": weights}, "epoch": 1}, 1, improved=True, weights=lambda: {"model": {"w": weights}})
    assert started.wait(10)
    weights += 5  # the next epoch trains on
    assert not (tmp_path / "last.pth").exists()
    release.set()
    manager.wait()
    assert writers == ["checkpoint-writer", "checkpoint-writer"]  # best.pth, then last.pth, off the main thread
    for name in ("best.pth", "last.pth"):
        assert torch.equal(torch.load(tmp_path / name, weights_only=True)["model"]["w"], torch.zeros(4))


def test_a_background_write_that_failed_is_raised_by_the_next_save(tmp_path):
    manager = checkpoint.CheckpointManager(tmp_path / "run")
    (tmp_path / "run").write_text("a file where the run folder should be")
    manager.save_epoch_end({"epoch": 1}, 1, improved=False)  # returns at once; the thread fails
    with pytest.raises(UserError, match=r"cannot write .*last.pth"):
        manager.wait()  # what the next save, a stop or the end of the run calls first
    manager.wait()  # reported once
