"""CIFAR-10, MNIST and image folders: their on-disk formats read (and refused with a reason),
and each data set end to end through the CLI: train, a mid-epoch stop resumed bit for bit,
val with class names, test's csv as a grader reads it. Tiny data in the real formats."""
import csv
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import CIFAR_CLASSES, idx_bytes, load, make_cifar10, make_imagefolder, make_mnist, with_flags
from utils.core.errors import UserError

LENET = ["--model=LeNet", "--batch-size=8", "--num-workers=0", "--print-freq=2", "--progress=false", "--debug-file=",
         "--lr=0.01", "--optimizer=sgd", "--max-epoch=3"]


def cfg(root, **extra):
    """The options a data set builder reads."""
    values = dict(train_data_root=str(root), test_data_root=None, download=False, val_ratio=0.3, seed=0, image_size=None,
                  skip_bad_images=False, num_workers=0)
    return SimpleNamespace(**{**values, **extra})



# -- the formats ----------------------------------------------------------------------------
def test_cifar_batches_of_our_own_load_despite_torchvision_md5_and_split_stratified(tmp_path):
    from data.cifar10 import Cifar10

    make_cifar10(tmp_path, per_class=10)
    train, val = Cifar10(cfg(tmp_path), "train"), Cifar10(cfg(tmp_path), "val")
    assert train.classes == CIFAR_CLASSES and len(train) == 70 and len(val) == 30
    assert sorted(val.targets) == sorted(list(range(10)) * 3)  # 3 of each class: stratified
    assert not set(train.positions) & set(val.positions)
    image, label = val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == val.targets[0]
    again = Cifar10(cfg(tmp_path, seed=1), "val")
    assert again.positions != val.positions  # the split follows --seed


def test_cifar_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    from data.cifar10 import Cifar10

    make_cifar10(tmp_path)
    train = Cifar10(cfg(tmp_path), "train")
    first = [train[(0, index)][0] for index in range(8)]
    assert all(torch.equal(a, train[(0, index)][0]) for index, a in enumerate(first))
    assert any(not torch.equal(a, train[(1, index)][0]) for index, a in enumerate(first))
    assert train[(0, 0)][0].shape == (3, 32, 32)
    assert Cifar10(cfg(tmp_path, image_size=40), "train")[(0, 0)][0].shape == (3, 40, 40)


def test_mnist_idx_files_plain_or_gzipped(tmp_path):
    from data.mnist import Mnist

    labels = make_mnist(tmp_path)
    test = Mnist(cfg(tmp_path), "test")  # the t10k files are gzipped
    assert test.targets == labels and test.classes == [str(d) for d in range(10)]
    image, _ = test[0]
    assert image.shape == (1, 28, 28)
    assert abs(float(test.denormalize(image[None]).mean()) - (20 + 23 * labels[0]) / 255) < 0.02


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "data_batch_1").write_text("not a pickle"), r"data_batch_1 is not a python pickle of a CIFAR batch"),
    (lambda f: (f / "data_batch_1").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})),
     r"data_batch_1: 'data' must be an N x 3072 uint8 array .*shape \(2, 100\)"),
    (lambda f: (f / "data_batch_1").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]})),
     r"labels must be integers 0..9 \(batches.meta names 10 classes\); found 0..12"),
    (lambda f: (f / "data_batch_1").write_bytes(pickle.dumps({"labels": [0]})), r"data_batch_1 has no 'data' entry"),
    (lambda f: (f / "batches.meta").write_bytes(pickle.dumps(SimpleNamespace())),
     r"batches.meta: it asks to build types.SimpleNamespace; a CIFAR batch holds only lists, bytes and numpy arrays"),
])
def test_cifar_in_the_wrong_format_says_what_is_wrong(tmp_path, damage, message):
    from data.cifar10 import Cifar10

    make_cifar10(tmp_path)
    damage(tmp_path / "cifar-10-batches-py")
    with pytest.raises(UserError, match=rf"^CIFAR-10: .*{message}"):
        Cifar10(cfg(tmp_path), "train")


class RunsCode:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_a_cifar_batch_cannot_run_code(tmp_path, monkeypatch):
    from data.cifar10 import Cifar10

    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": RunsCode()}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"it asks to build posix.system"):
        Cifar10(cfg(tmp_path), "train")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content, message", [
    (b"\x00\x00\x08\x03" + np.array([2, 28, 28], ">u4").tobytes() + bytes(100), r"the header promises 2 x 28 x 28 values"),
    (b"PK\x03\x04", r"is not an idx file \(it must start with two zero bytes\)"),
    (idx_bytes(np.zeros(3, np.uint8)), r"expected unsigned bytes \(0x08\) in 3 dimension\(s\); its header says type 0x08 in 1"),
])
def test_mnist_in_the_wrong_format_says_what_is_wrong(tmp_path, content, message):
    from data.mnist import Mnist

    make_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(content)
    with pytest.raises(UserError, match=rf"^MNIST: .*train-images-idx3-ubyte.*{message}"):
        Mnist(cfg(tmp_path), "train")


def test_a_missing_set_says_which_files_go_where_and_download_fetches_them(tmp_path, monkeypatch):
    from data.cifar10 import Cifar10
    from data.mnist import Mnist

    with pytest.raises(UserError, match=rf"^CIFAR-10 not found: expected {tmp_path}/cifar-10-batches-py/ with data_batch_1 "
                                        r"... data_batch_5 and batches.meta \(cifar-10-python.tar.gz unpacked\) "
                                        r"\(missing data_batch_1\); add --download to fetch it"):
        Cifar10(cfg(tmp_path), "train")
    make_mnist(tmp_path / "m")
    with pytest.raises(UserError, match=r"MNIST not found: .* \(give the folder that holds MNIST/raw/, not the folder itself\)"):
        Mnist(cfg(tmp_path / "m" / "MNIST"), "train")

    def offline(root):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(Cifar10, "download", classmethod(lambda cls, root: offline(root)))
    with pytest.raises(UserError, match=r"could not download CIFAR-10 into .* \(<urlopen error .*\); offline\? fetch "
                                        r"cifar-10-python.tar.gz"):
        Cifar10(cfg(tmp_path, download=True), "train")
    monkeypatch.setattr(Cifar10, "download", classmethod(lambda cls, root: make_cifar10(root)))
    assert len(Cifar10(cfg(tmp_path, download=True), "train")) == 30


def test_a_failed_download_says_why_names_every_file_and_adds_nothing(tmp_path, monkeypatch):
    from data.mnist import Mnist

    def offline(cls, root):
        # what torchvision's MNIST does offline: folders and a partial file first, then a
        # message whose reason is on its last lines
        (Path(root) / "MNIST" / "raw").mkdir(parents=True)
        (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/mnist/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(Mnist, "download", classmethod(offline))
    (tmp_path / "mine.txt").write_text("the user's")
    with pytest.raises(UserError) as raised:
        Mnist(cfg(tmp_path, download=True), "train")
    assert str(raised.value) == (
        f"could not download MNIST into {tmp_path} (Error downloading train-images-idx3-ubyte.gz: Tried "
        f"https://mirror/mnist/, got: <urlopen error [Errno -2] Name or service not known>); offline? fetch the four "
        f"*-ubyte.gz files, 11 MB, from a torchvision MNIST mirror on a machine with internet so that "
        f"{tmp_path}/MNIST/raw/ holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte; each plain or .gz, both load")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["mine.txt"]  # the attempt's folders and file are gone


def test_the_faces_sample_read_as_an_image_folder_warns_about_nothing(tmp_path, caplog):
    from data import face_sample, sample
    from data.imagefolder import imagefolder

    (tmp_path / "faces" / "COMPLETE").parent.mkdir()
    (tmp_path / "faces" / "COMPLETE").write_text("an earlier version's marker")
    face_sample.generate(tmp_path / "faces", per_class=3)
    assert sorted(path.name for path in (tmp_path / "faces").iterdir() if path.is_file()) == [sample.MARKER]
    with caplog.at_level("WARNING"):
        train = imagefolder(cfg(tmp_path / "faces", image_size=16), "train")
    assert train.classes == ["black", "blonde", "blue", "pink"] and caplog.records == []


def test_imagefolder_follows_torchvision_rules_but_skips_hidden_entries(tmp_path):
    from data.imagefolder import imagefolder

    make_imagefolder(tmp_path)
    train = imagefolder(cfg(tmp_path / "train", image_size=16), "train")
    val = imagefolder(cfg(tmp_path / "train", image_size=16), "val")
    assert train.classes == ["daisy", "rose", "tulip"]  # not .ipynb_checkpoints
    assert len(train) + len(val) == 18 and sorted(val.targets) == [0, 0, 1, 1, 2, 2]
    assert any("summer" in str(path) for path, _ in train.items)  # images nested in a class folder count
    single = imagefolder(cfg(tmp_path / "train", image_size=16, test_data_root=str(tmp_path / "photos" / "IMG 0.JPG")), "test")
    assert [str(p) for p in single.paths] == [str(tmp_path / "photos" / "IMG 0.JPG")]
    make_imagefolder(tmp_path / "other")
    (tmp_path / "other" / "train" / "lily").mkdir()
    with pytest.raises(UserError, match=r"class folder '.*lily' holds no images"):
        imagefolder(cfg(tmp_path / "other" / "train"), "train")
    with pytest.raises(UserError, match=r"no class folders in '.*photos/trip': --dataset=imagefolder expects <root>/<class>/"
                                        r"<image> .*; it holds 2 images directly: move them into one folder per class"):
        imagefolder(cfg(tmp_path / "photos" / "trip"), "train")


def test_torchvision_resnet18_gets_the_cifar_stem_at_32_px_and_one_channel_for_mnist():
    from configs import load_config
    from models import build_model

    cifar = build_model(load_config({"model": "torchvision.resnet18", "dataset": "cifar10", "num_classes": 10, "image_size": 32}))
    assert cifar.net.conv1.kernel_size == (3, 3) and cifar.net.conv1.stride == (1, 1)
    assert isinstance(cifar.net.maxpool, torch.nn.Identity)
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    large = build_model(load_config({"model": "torchvision.resnet18", "num_classes": 2, "image_size": 224}))
    assert large.net.conv1.kernel_size == (7, 7)
    mnist = build_model(load_config({"model": "torchvision.resnet18", "dataset": "mnist", "num_classes": 10, "image_size": 28}))
    assert mnist.net.conv1.in_channels == 1 and mnist(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


# -- end to end -----------------------------------------------------------------------------
SETS = {
    # 30 train images, batches of 8: 4 steps an epoch; the stop comes at step 6 (epoch 2).
    "cifar10": dict(make=make_cifar10, root="", names=CIFAR_CLASSES, channels=3, size=32, flags=[], stop=6),
    "mnist": dict(make=make_mnist, root="", names=[str(d) for d in range(10)], channels=1, size=28, flags=[], stop=6),
    # 12 train images, batches of 4: 3 steps an epoch; the stop comes at step 5 (epoch 2).
    "imagefolder": dict(make=make_imagefolder, root="train", names=["daisy", "rose", "tulip"], channels=3, size=24,
                        flags=["--image-size=24", "--batch-size=4"], stop=5),
}


@pytest.fixture(scope="module", params=list(SETS))
def trained(request, tmp_path_factory, forked_cli):
    """Per data set: a reference run of 3 epochs, and the same run stopped by SIGINT in
    epoch 2 (with 2 workers) then resumed (with 1)."""
    name = request.param
    spec = SETS[name]
    tmp_path = tmp_path_factory.mktemp(name)
    truth = spec["make"](tmp_path / "data")
    common = with_flags([f"--dataset={name}", f"--train-data-root={tmp_path / 'data' / spec['root']}", "--checkpoint-dir=runs",
                         *LENET], *spec["flags"])
    reference = forked_cli("train", *common, "--env=reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    stopped = forked_cli("train", *with_flags(common, "--env=stopped", "--num-workers=2"), cwd=tmp_path,
                         env={"RUNNER_FAULT_AT_STEP": f"{spec['stop']}:SIGINT"})
    resumed = forked_cli("train", "--checkpoint-dir=runs", "--env=stopped", "--resume", "--num-workers=1", "--debug-file=",
                         cwd=tmp_path)
    return SimpleNamespace(name=name, spec=spec, tmp=tmp_path, truth=truth, reference=reference, stopped=stopped,
                           resumed=resumed, cli=forked_cli)


def test_train_takes_classes_channels_and_size_from_the_data(trained):
    state = load(trained.tmp / "runs" / "reference" / "last.pth")
    assert state["config"]["num_classes"] == len(trained.spec["names"])
    assert state["config"]["image_size"] == trained.spec["size"]
    assert state["model"]["features.0.weight"].shape == (6, trained.spec["channels"], 5, 5)
    assert state["info"]["classes"] == trained.spec["names"]
    assert load(trained.tmp / "runs" / "reference" / "best.pth")["info"]["classes"] == trained.spec["names"]
    assert f"model LeNet, 0.06M params, input {trained.spec['channels']} x {trained.spec['size']}" in trained.reference.stderr


def test_a_mid_epoch_stop_resumes_bit_for_bit_with_other_worker_counts(trained):
    assert trained.stopped.returncode == 130, trained.stopped.stderr
    assert trained.resumed.returncode == 0, trained.resumed.stderr
    assert re.search(r"resuming .*last.pth in epoch 2 of 3: steps 1-(\d+) were done, it goes on with step \d+",
                     trained.resumed.stderr)
    a, b = load(trained.tmp / "runs" / "stopped" / "last.pth"), load(trained.tmp / "runs" / "reference" / "last.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (a["epoch"], a["global_step"], a["best"]) == (b["epoch"], b["global_step"], b["best"])


def test_val_prints_accuracy_per_class_and_the_confusion_matrix_with_names(trained):
    result = trained.cli("val", "--checkpoint-dir=runs", "--env=reference", "--num-workers=0", cwd=trained.tmp)
    assert result.returncode == 0, result.stderr
    names = trained.spec["names"]
    top5 = r"  top-5 [01]\.\d{4}" if len(names) > 5 else ""
    assert re.match(rf"val: (\d+) images  accuracy [01]\.\d{{4}}{top5}  log loss \d+\.\d{{4}}\naccuracy per class:\n", result.stdout)
    for name in names:
        assert re.search(rf"^  {re.escape(name)} +(\d+\.\d|  -) %?.*\(\d+/\d+\)$", result.stdout, re.M), name
    header = result.stdout.split("confusion (rows = truth, columns = predicted):\n")[1].splitlines()[0]
    assert header.split() == names


def test_test_writes_the_csv_a_grader_reads(trained):
    result_file = trained.tmp / "submission.csv"
    test_root = ["--test-data-root=data/photos"] if trained.name == "imagefolder" else []
    result = trained.cli("test", "--checkpoint-dir=runs", "--env=reference", "--num-workers=0", "--batch-size=3",
                         f"--result-file={result_file}", *test_root, cwd=trained.tmp)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(open(result_file, newline="")))
    names = trained.spec["names"]
    assert result.stdout.startswith(f"wrote {len(rows) - 1} rows to {result_file}\n")
    if trained.name == "imagefolder":
        # Paths as given (relative to where the command ran), sorted; any names, nested too.
        assert rows[0] == ["path", "label", "probability"]
        assert [row[0] for row in rows[1:]] == sorted(f"data/{path}" for path in trained.truth)
        assert all(row[1] in names and 0 < float(row[2]) <= 1 for row in rows[1:])
        return
    assert rows[0] == ["id", "label"]
    assert [int(row[0]) for row in rows[1:]] == list(range(1, len(trained.truth) + 1))
    assert all(row[1] in names for row in rows[1:])
    # The printed accuracy is the csv's, scored against the official test labels.
    right = sum(row[1] == names[label] for row, label in zip(rows[1:], trained.truth))
    printed = re.search(r"test: (\d+) images  accuracy ([01]\.\d{4})", result.stdout)
    assert int(printed.group(1)) == len(trained.truth)
    assert float(printed.group(2)) == pytest.approx(right / len(trained.truth), abs=1e-4)
    assert "accuracy per class:" in result.stdout and "confusion (rows = truth" in result.stdout


def test_a_bare_weights_file_takes_classes_size_and_channels_from_the_data(trained):
    """val and test of weights without the run's config (the book's model.save() writes a bare
    state_dict): --num-classes, --image-size and the input channels come from the data, as in
    train, so the numbers equal those of the run's own best.pth."""
    torch.save(load(trained.tmp / "runs" / "reference" / "best.pth")["model"], trained.tmp / "bare.pth")
    root = f"--train-data-root={trained.tmp / 'data' / trained.spec['root']}"
    bare = ["--load-model-path=bare.pth", f"--dataset={trained.name}", root, "--model=LeNet", "--num-workers=0",
            *[flag for flag in trained.spec["flags"] if flag.startswith("--image-size")]]
    test_root = ["--test-data-root=data/photos"] if trained.name == "imagefolder" else []
    for command, extra in (("val", []), ("test", test_root)):
        mine = trained.cli(command, *bare, *extra, "--result-file=bare.csv", cwd=trained.tmp)
        assert mine.returncode == 0, mine.stderr
        size = trained.spec["size"]
        assert f"bare.pth holds weights only: {len(trained.spec['names'])} classes and {size} px images, from the data" in mine.stderr
        assert f"input {trained.spec['channels']} x {size} x {size}" in mine.stderr
        theirs = trained.cli(command, "--checkpoint-dir=runs", "--env=reference", "--num-workers=0", *extra,
                             "--result-file=run.csv", cwd=trained.tmp)
        assert theirs.returncode == 0, theirs.stderr
        if command == "val":
            assert mine.stdout == theirs.stdout
        else:
            assert (trained.tmp / "bare.csv").read_text() == (trained.tmp / "run.csv").read_text()


def test_bad_options_for_these_data_sets_fail_in_one_line_before_a_run_exists(trained):
    def fails(*args, code=2):
        result = trained.cli(*args, cwd=trained.tmp)
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr.strip().splitlines()[-1]

    count = len(trained.spec["names"])
    root = f"--train-data-root={trained.tmp / 'data' / trained.spec['root']}"
    line = fails("train", f"--dataset={trained.name}", root, "--checkpoint-dir=runs", "--env=wrong", *LENET, "--num-classes=12")
    assert line.startswith(f"error: --num-classes=12 but the data has {count} classes ({', '.join(trained.spec['names'])}); "
                           f"drop --num-classes (it comes from the data) or use --num-classes={count}")
    assert not (trained.tmp / "runs" / "wrong").exists()
    if trained.name == "mnist":
        line = fails("test", "--checkpoint-dir=runs", "--env=reference", "--tta")
        assert line == ("error: --tta=flip averages each image with its mirror image, which this run never trained on "
                        "(mnist's default --hflip=0: a mirror can show another class); use --tta=crops, or drop --tta")
    if trained.name == "imagefolder":
        line = fails("test", "--checkpoint-dir=runs", "--env=reference")  # a usage error: exit 2
        assert "model LeNet" not in trained.cli("test", "--checkpoint-dir=runs", "--env=reference", cwd=trained.tmp).stderr
        assert line == "error: --dataset=imagefolder: give --test-data-root=<a folder of images (any names, nested) or one image>"
    if trained.name == "cifar10":
        line = fails("train", "--dataset=cifar10", root, "--checkpoint-dir=runs", "--env=wrong", "--model=AlexNet")
        assert line.startswith("error: --model=AlexNet cannot take 3 x 32 x 32 images (")
        assert line.endswith("); use a larger --image-size or another --model")


def test_the_extending_guide_adds_a_data_set_in_one_file(tmp_path):
    """docs/extending.md's data/fashion_mnist.py, run as written: a new --dataset in one class."""
    from conftest import ROOT
    from utils.core.registry import DATASETS

    guide = (ROOT / "docs" / "extending.md").read_text()
    source = re.search(r"```python\n(# data/fashion_mnist.py\n.*?)```", guide, re.S).group(1)
    namespace = {}
    exec(compile(source, "data/fashion_mnist.py", "exec"), namespace)
    make_mnist(tmp_path)
    (tmp_path / "MNIST").rename(tmp_path / "FashionMNIST")
    train = DATASETS.build("fashion_mnist", cfg(tmp_path), "train")
    assert train.classes[9] == "Ankle boot" and train[(0, 0)][0].shape == (1, 28, 28)
    with pytest.raises(UserError, match=r"^Fashion-MNIST not found: expected .*/FashionMNIST/raw/ with"):
        DATASETS.build("fashion_mnist", cfg(tmp_path / "nothing"), "train")
