"""End-to-end CLI runs of the classify experiment on tiny generated Dogs-vs-Cats data."""
import csv
import re

import pytest
import torch

from conftest import make_dogcat, run_cli, tiny_flags


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below: (tmp dir, data root, test kinds, result)."""
    tmp_path = tmp_path_factory.mktemp("classify")
    kinds = make_dogcat(tmp_path / "data", per_class=12, test_images=7)
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, **{"max-epoch": 4}))
    assert result.returncode == 0, result.stderr
    return tmp_path, tmp_path / "data", kinds, result


def test_train_writes_the_run_dir(trained):
    tmp_path, _, _, result = trained
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "last.pth").is_file() and (run_dir / "best.pth").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert re.search(r"trained tiny: best val_logloss [\d.]+ at epoch \d; checkpoints in .*tiny", result.stdout)
    assert "train split: 16 images" in result.stderr and "val split: 8 images" in result.stderr


def test_checkpoint_is_plain_data_with_full_state(trained):
    state = torch.load(trained[0] / "runs" / "tiny" / "last.pth", weights_only=True, map_location="cpu")
    for key in ("model", "optimizer", "lr_policy", "epoch", "step_in_epoch", "global_step", "rng", "best", "config", "format_version"):
        assert key in state, key
    assert state["epoch"] == 4 and state["step_in_epoch"] == 0 and state["global_step"] == 4 * 4
    assert state["config"]["model"] == "LeNet" and state["config"]["env"] == "tiny"


def test_tensorboard_reader_finds_the_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained[0] / "runs" / "tiny"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/accuracy", "val/logloss", "lr", "images_per_second"} <= tags
    assert len(events.Scalars("val/logloss")) == 4
    assert [e.step for e in events.Scalars("train/loss")] == list(range(2, 17, 2))
    assert "inputs" in events.Tags()["images"]


def test_test_writes_a_kaggle_csv_with_p_dog(trained, tmp_path):
    run_tmp, data_root, kinds, _ = trained
    result_file = tmp_path / "submission.csv"
    result = run_cli("test", f"--checkpoint-dir={run_tmp / 'runs'}", "--env=tiny", f"--test-data-root={data_root / 'test'}",
                     f"--result-file={result_file}", "--num-workers=0", "--batch-size=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote 7 rows to {result_file}"
    with open(result_file, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "label"]
    ids = [int(r[0]) for r in rows[1:]]
    assert ids == sorted(kinds) == list(range(1, 8))
    probabilities = {int(r[0]): float(r[1]) for r in rows[1:]}
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    # The label column is P(dog): bright (dog) images high, dark (cat) images low.
    for image_id, kind in kinds.items():
        assert (probabilities[image_id] > 0.5) == (kind == "dog"), (image_id, kind, probabilities[image_id])


def test_test_clip_and_tta(trained, tmp_path):
    run_tmp, data_root, _, _ = trained
    result_file = tmp_path / "clipped.csv"
    result = run_cli("test", f"--load-model-path={run_tmp / 'runs' / 'tiny' / 'best.pth'}", f"--test-data-root={data_root / 'test'}",
                     f"--result-file={result_file}", "--num-workers=0", "--clip=0.2", "--tta")
    assert result.returncode == 0, result.stderr
    values = [float(r["label"]) for r in csv.DictReader(open(result_file))]
    assert min(values) >= 0.2 and max(values) <= 0.8


def test_val_prints_metrics_with_a_batch_of_one(trained):
    run_tmp, data_root, _, _ = trained
    result = run_cli("val", f"--checkpoint-dir={run_tmp / 'runs'}", "--env=tiny", "--batch-size=1", "--num-workers=0")
    assert result.returncode == 0, result.stderr
    assert re.search(r"val: 8 images  accuracy [01]\.\d{4}  log loss \d+\.\d{4}", result.stdout)
    assert re.search(r"cat +\d+ +\d+\ndog +\d+ +\d+", result.stdout)


def test_val_batch_with_last_partial_batch_of_one(trained):
    run_tmp, _, _, _ = trained
    result = run_cli("val", f"--checkpoint-dir={run_tmp / 'runs'}", "--env=tiny", "--batch-size=7", "--num-workers=0")
    assert result.returncode == 0, result.stderr  # 8 images: batches of 7 and 1
    assert "val: 8 images" in result.stdout


def test_a_new_run_never_overwrites_an_existing_one(trained):
    run_tmp, data_root, _, _ = trained
    before = (run_tmp / "runs" / "tiny" / "last.pth").read_bytes()
    result = run_cli("train", *tiny_flags(data_root, run_tmp))
    assert result.returncode == 2
    assert "already holds a run; continue it with --env=tiny --resume" in result.stderr
    assert (run_tmp / "runs" / "tiny" / "last.pth").read_bytes() == before


def test_checkpoint_from_another_model_is_explained(trained, tmp_path):
    run_tmp, data_root, _, _ = trained
    result = run_cli("val", f"--load-model-path={run_tmp / 'runs' / 'tiny' / 'best.pth'}", "--model=AlexNet")
    assert result.returncode == 2
    assert "--model=AlexNet differs from the checkpoint's 'LeNet'; drop the flag" in result.stderr
