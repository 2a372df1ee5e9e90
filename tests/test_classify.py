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
    assert {"train/loss", "val/accuracy", "val/logloss", "train/lr", "train/images_per_second",
            "train/epoch_images_per_second"} <= tags
    assert not tags & {"lr", "images_per_second"}  # one tag per curve: no top-level twins of the train/ ones
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
    # a finished run: the words `train --resume` prints for it, the command to train it further
    assert re.search(r"already holds a run; it has finished \(4 of --max-epoch=4 epochs done\); train it further with "
                     r"`.*main.py train --env=tiny --checkpoint-dir=.* --resume --max-epoch=6`", result.stderr), result.stderr
    assert "train split" not in result.stderr and "model LeNet" not in result.stderr  # refused before any heavy work
    assert (run_tmp / "runs" / "tiny" / "last.pth").read_bytes() == before


def test_checkpoint_from_another_model_is_explained(trained, tmp_path):
    run_tmp, data_root, _, _ = trained
    result = run_cli("val", f"--load-model-path={run_tmp / 'runs' / 'tiny' / 'best.pth'}", "--model=AlexNet")
    assert result.returncode == 2
    assert "--model=AlexNet differs from the checkpoint's 'LeNet'; drop the flag" in result.stderr


def test_a_bare_weights_file_gets_the_data_info_from_the_data_or_one_line(trained, tmp_path):
    """A weights-only file (the book's model.save()) has no saved config: val/test resolve
    --num-classes and --image-size from the data, as train does; what the data cannot tell,
    or weights of another architecture, is one line and exit 1."""
    run_tmp, data_root, _, _ = trained
    bare = tmp_path / "lenet.pth"
    torch.save(torch.load(run_tmp / "runs" / "tiny" / "best.pth", weights_only=True)["model"], bare)
    data = [f"--train-data-root={data_root / 'train'}", "--num-workers=0"]
    mine = run_cli("val", f"--load-model-path={bare}", "--model=LeNet", "--image-size=16", *data)
    theirs = run_cli("val", f"--checkpoint-dir={run_tmp / 'runs'}", "--env=tiny", "--num-workers=0")
    assert mine.returncode == 0 and theirs.returncode == 0, mine.stderr + theirs.stderr
    assert f"{bare} holds weights only: 2 classes and 16 px images, from the data" in mine.stderr
    assert mine.stdout == theirs.stdout

    wrong = run_cli("val", f"--load-model-path={bare}", "--model=ResNet34", *data)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr
    assert re.match(rf"error: {re.escape(str(bare))} does not fit model ResNet34: missing .*"
                    r"Was it trained with another --model or --num-classes\?$", wrong.stderr.strip().splitlines()[-1])

    # Read as an image folder, a folder of cat.<n>.jpg files has no class folders to count.
    as_folder = ["test", f"--load-model-path={bare}", "--model=LeNet", "--dataset=imagefolder", "--image-size=16", *data,
                 f"--test-data-root={data_root / 'test'}", f"--result-file={tmp_path / 'r.csv'}"]
    unknown = run_cli(*as_folder)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr, unknown.stderr
    line = unknown.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {bare} holds weights only, not the number of classes they were trained for, and "
                           f"--train-data-root cannot tell it (no class folders in ")
    assert line.endswith("give --num-classes=K, or a run's best.pth / last.pth")
    assert not (tmp_path / "r.csv").exists()
    given = run_cli(*as_folder, "--num-classes=2")
    assert given.returncode == 0, given.stderr
    rows = list(csv.reader(open(tmp_path / "r.csv", newline="")))
    assert len(rows) == 8 and {row[1] for row in rows[1:]} <= {"0", "1"}


def test_the_input_grid_shows_every_class_though_the_split_is_sorted_by_class():
    from types import SimpleNamespace

    from experiments.classify import Classify, balanced_sample

    class Sorted(torch.utils.data.Dataset):  # 30 cats, then 30 dogs, as the Kaggle file list sorts
        targets = [0] * 30 + [1] * 30

        def __len__(self):
            return 60

        def __getitem__(self, index):
            return torch.full((3, 4, 4), float(self.targets[index])), self.targets[index]

        def denormalize(self, batch):
            return batch

    experiment = Classify.__new__(Classify)
    experiment.val_set = Sorted()
    grid = experiment.images({}, SimpleNamespace(state=SimpleNamespace(global_step=0)))["inputs"]
    assert grid.shape == (16, 3, 4, 4) and grid[:, 0, 0, 0].tolist() == [0.0, 1.0] * 8
    assert balanced_sample([2, 2, 0, 1, 1, 1], 5) == [2, 3, 0, 4, 1]  # classes in order, each in turn
