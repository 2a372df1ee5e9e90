"""`python main.py export` (ONNX, torch.export) with its parity check, `test` and `val` with
--runtime=onnxruntime, and predict() from Python: on tiny trained runs."""
import csv
import json
import re

import numpy as np
import onnx
import pytest
import torch
from conftest import load, make_dogcat, run_cli, tiny_flags, typed, with_flags
from PIL import Image

import main
from data import face_sample
from utils.core.errors import UserError
from utils.engine.precision import fold_batchnorm
from utils.export import exporter
from utils.export.predict import Predictor, predict


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny dogcat run (LeNet, 16 px, 20 test images), its model exported to ONNX (the
    result is returned) and to .pt2, and the csv `test` writes with PyTorch."""
    tmp_path = tmp_path_factory.mktemp("export")
    make_dogcat(tmp_path / "data", per_class=8, test_images=20)
    trained = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path))
    assert trained.returncode == 0, trained.stderr
    exported = run_cli("export", "--env=tiny", f"--checkpoint-dir={tmp_path / 'runs'}")
    assert exported.returncode == 0, exported.stderr
    as_pt2 = run_cli("export", "--env=tiny", f"--checkpoint-dir={tmp_path / 'runs'}", "--format=pt2")
    assert as_pt2.returncode == 0, as_pt2.stderr
    assert as_pt2.stdout.splitlines()[1].startswith(f"wrote {tmp_path / 'runs' / 'tiny' / 'model.pt2'} (")
    tested = run_cli("test", "--env=tiny", f"--checkpoint-dir={tmp_path / 'runs'}", f"--result-file={tmp_path / 'torch.csv'}",
                     "--num-workers=0")
    assert tested.returncode == 0, tested.stderr
    return tmp_path, exported


def flags(tmp_path, *extra):
    return ["--env=tiny", f"--checkpoint-dir={tmp_path / 'runs'}", *extra]


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def assert_same_csv(mine, reference):
    """The same header, ids and order; probabilities equal to the csv's 6 decimals, give or
    take the last digit (ONNX Runtime's kernels round differently from oneDNN's)."""
    got, expected = rows(mine), rows(reference)
    assert got[0] == expected[0] and [row[0] for row in got] == [row[0] for row in expected]
    assert len(got) > 10
    np.testing.assert_allclose([float(row[1]) for row in got[1:]], [float(row[1]) for row in expected[1:]], atol=2e-6)


def metadata(path):
    model = onnx.load(str(path))
    return model, json.loads({entry.key: entry.value for entry in model.metadata_props}["runner"])


def test_export_writes_an_onnx_file_with_names_a_dynamic_batch_and_what_a_caller_needs(run):
    tmp_path, exported = run
    path = tmp_path / "runs" / "tiny" / "model.onnx"
    lines = exported.stdout.splitlines()
    assert lines[0].startswith("parity with PyTorch on random batches of 1 and 3: max abs diff ")
    assert lines[0].endswith("(--atol=0.001 --rtol=0.001): ok")
    assert lines[1] == (f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MB, onnx): input 'images' float32 "
                        f"batch x 3 x 16 x 16, output 'logits'; metadata entry 'runner'")
    model, meta = metadata(path)
    (given,), (answer,) = model.graph.input, model.graph.output
    assert given.name == "images" and answer.name == "logits"
    assert given.type.tensor_type.shape.dim[0].dim_param  # symbolic: any batch
    assert [d.dim_value for d in given.type.tensor_type.shape.dim[1:]] == [3, 16, 16]
    state = load(tmp_path / "runs" / "tiny" / "best.pth")
    assert meta["classes"] == ["cat", "dog"] and meta["input_shape"] == [3, 16, 16] and meta["image_size"] == 16
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert (meta["resize"], meta["crop_ratio"], meta["weights"]) == ("centre-crop", 0.875, "raw")
    assert (meta["model"], meta["global_step"], meta["exported_from"]) == ("LeNet", state["global_step"],
                                                                           str(tmp_path / "runs" / "tiny" / "best.pth"))


def test_test_with_onnxruntime_writes_the_same_csv_as_pytorch(run):
    tmp_path, _ = run
    result = run_cli("test", *flags(tmp_path, "--runtime=onnxruntime", f"--result-file={tmp_path / 'ort.csv'}"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 20 rows to {tmp_path / 'ort.csv'}\n"
    assert "ONNX Runtime" in result.stderr and "on the CPU" in result.stderr
    assert_same_csv(tmp_path / "ort.csv", tmp_path / "torch.csv")


def test_val_with_onnxruntime_reports_pytorchs_metrics(run):
    tmp_path, _ = run
    by_torch = run_cli("val", *flags(tmp_path))
    by_onnx = run_cli("val", *flags(tmp_path, "--runtime=onnxruntime"))
    assert by_torch.returncode == by_onnx.returncode == 0, by_onnx.stderr
    assert by_onnx.stdout == by_torch.stdout  # accuracy, log loss and the confusion matrix, to the digits shown


def test_a_fixed_batch_export_serves_every_batch_size(run):
    """--dynamic-batch=false: the file takes exactly --batch-size images; test pads the
    last short batch and splits long ones, and the csv is unchanged."""
    tmp_path, _ = run
    fixed = tmp_path / "fixed.onnx"
    result = run_cli("export", *flags(tmp_path, "--dynamic-batch=false", "--batch-size=6", f"--output={fixed}"))
    assert result.returncode == 0, result.stderr
    assert "random batches of 6:" in result.stdout and "float32 6 x 3 x 16 x 16" in result.stdout
    model, meta = metadata(fixed)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 6 and meta["batch"] == 6
    tested = run_cli("test", *flags(tmp_path, "--runtime=onnxruntime", f"--onnx={fixed}", "--batch-size=8",
                                    f"--result-file={tmp_path / 'fixed.csv'}"))
    assert tested.returncode == 0, tested.stderr
    assert_same_csv(tmp_path / "fixed.csv", tmp_path / "torch.csv")


def test_pt2_export_loads_with_torch_export_and_matches_the_checkpoint(run):
    tmp_path, _ = run
    path = tmp_path / "runs" / "tiny" / "model.pt2"  # the fixture's --format=pt2
    extra = {"runner.json": ""}
    module = torch.export.load(str(path), extra_files=extra).module()
    assert json.loads(extra["runner.json"])["classes"] == ["cat", "dog"]
    from configs.loader import load_config
    from models import build_model

    state = load(tmp_path / "runs" / "tiny" / "best.pth")
    reference = build_model(load_config({**state["config"], "pretrained": ""}))
    reference.load_state_dict(state["model"])
    batch = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(module(batch), reference.eval()(batch), atol=1e-5, rtol=1e-4)


def test_predict_gives_the_probabilities_of_the_test_csv_from_every_source(run):
    tmp_path, _ = run
    test_images = sorted((tmp_path / "data" / "test").iterdir(), key=lambda p: int(p.stem))
    by_id = {row[0]: float(row[1]) for row in rows(tmp_path / "torch.csv")[1:]}
    expected = [by_id[path.stem] for path in test_images]
    run_dir = tmp_path / "runs" / "tiny"
    for source in (run_dir / "model.onnx", run_dir / "model.pt2", run_dir, run_dir / "best.pth"):
        predictor = Predictor(source)
        assert predictor.classes == ["cat", "dog"]
        answers = predictor([str(path) for path in test_images])
        assert [set(answer) for answer in answers] == [{"cat", "dog"}] * len(test_images)
        assert sum(answers[0].values()) == pytest.approx(1)
        # the csv clips P(dog) into [0.005, 0.995] (--clip); these tiny images stay inside it
        np.testing.assert_allclose([answer["dog"] for answer in answers], expected, atol=2e-6, err_msg=str(source))
    one = predict(run_dir / "model.onnx", Image.open(test_images[0]))  # a PIL image, one call
    assert one["dog"] == pytest.approx(expected[0], abs=2e-6)


def test_predict_refuses_what_is_not_a_classifier(run, tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        Predictor(tmp_path / "missing.onnx")
    (tmp_path / "junk.pt2").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="is not a torch.export archive"):
        Predictor(tmp_path / "junk.pt2")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gan-export")
    face_sample.generate(tmp_path / "faces", per_class=4)
    trained = run_cli("train", "--experiment=gan", f"--train-data-root={tmp_path / 'faces'}", f"--checkpoint-dir={tmp_path}",
                      "--env=g", "--image-size=32", "--nz=16", "--ngf=8", "--ndf=8", "--batch-size=8", "--max-epoch=1",
                      "--num-workers=0", "--progress=false", "--debug-file=")
    assert trained.returncode == 0, trained.stderr
    exported = run_cli("export", "--env=g", f"--checkpoint-dir={tmp_path}")  # no --experiment: the checkpoint says gan
    assert exported.returncode == 0, exported.stderr
    return tmp_path, exported


def test_the_gan_exports_its_generator_with_batchnorm_folded(gan_run):
    gan_run, result = gan_run
    assert "input 'noise' float32 batch x 16 x 1 x 1, output 'images'" in result.stdout
    assert "NetG: 3 BatchNorm layer(s) folded into the convolution before" in result.stderr
    model, meta = metadata(gan_run / "g" / "model.onnx")
    assert {node.op_type for node in model.graph.node} >= {"ConvTranspose", "Tanh"}
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    assert (meta["experiment"], meta["nz"], meta["image_size"], meta["noise_std"]) == ("gan", 16, 32, 1.0)
    import onnxruntime

    images = onnxruntime.InferenceSession(str(gan_run / "g" / "model.onnx")).run(None, {"noise": np.zeros((2, 16, 1, 1), np.float32)})[0]
    assert images.shape == (2, 3, 32, 32) and np.abs(images).max() <= 1
    with pytest.raises(UserError, match="is not a classifier exported by the runner"):
        Predictor(gan_run / "g" / "model.onnx")


def test_fold_batchnorm_folds_convolutions_and_transposed_ones_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.ConvTranspose2d(4, 2, 4, 2, 1), torch.nn.BatchNorm2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(2 * 12 * 12, 3), torch.nn.BatchNorm1d(3))
    for norm in (model[1], model[4], model[7]):
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.data.uniform_(0.5, 1.5)
    folded, count = fold_batchnorm(model)
    assert count == 2  # the two convolutions' (a Linear's BatchNorm1d may normalise another axis: kept)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2  # the original keeps them
    batch = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(folded(batch), model(batch), atol=1e-5, rtol=1e-4)


def test_a_parity_failure_is_exit_1_and_writes_nothing(run, capsys, monkeypatch):
    tmp_path, _ = run
    target = tmp_path / "runs" / "tiny" / "model.onnx"
    before = target.read_bytes()
    original = exporter.onnx_runner

    def off_by_a_little(data, name):
        run_model = original(data, name)
        return lambda batch: run_model(batch) + 1e-2  # what a loosely translated op would do

    monkeypatch.setattr(exporter, "onnx_runner", off_by_a_little)
    code = main.main(["export", *flags(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "max abs diff 1.00e-02" in out and out.strip().endswith("(--atol=0.001 --rtol=0.001): FAILED")
    assert err.startswith("error: the exported model differs from PyTorch beyond --atol=0.001 / --rtol=0.001 (see above); "
                          "nothing was written.") and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == before  # the earlier export survives
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == []  # no temp file left
    code = main.main(["export", *flags(tmp_path, "--atol=0.05", f"--output={tmp_path / 'loose.onnx'}")])
    assert code == 0 and (tmp_path / "loose.onnx").is_file()  # a looser tolerance lets it through


@pytest.mark.parametrize("extra, code, message", [
    (["--format=tflite"], 2, "--format=tflite is not an export format; use --format=onnx or --format=pt2"),
    (["--output=model.pt2"], 2, "--output=model.pt2 does not end in .onnx, as a --format=onnx file must; add --format=pt2"),
    (["--opset=11"], 2, "--opset=11: torch.onnx writes opset 18 and newer; use --opset=18"),
    (["--opset=99"], 2, "--opset=99: the installed onnx "),
    (["--atol=-1"], 2, "option --atol must be >= 0; got -1.0"),
    (["--dynamic-batch=maybe"], 2, "option --dynamic-batch expects a boolean (true/false), got 'maybe'"),
    (["--test-data-root=x"], 2, "export reads a checkpoint and no data; drop --test-data-root"),
    (["--use-ema"], 2, "holds no moving average of the weights (the run was trained without --ema); drop --use-ema"),
    (["--env=missing"], 1, "no checkpoint in"),
])
def test_bad_export_options_are_one_line_and_write_nothing(run, extra, code, message, capsys):
    tmp_path, _ = run
    before = sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir())
    result = main.main(["export", *with_flags(flags(tmp_path), *extra)])
    err = capsys.readouterr().err
    assert result == code, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == before


def test_export_without_a_run_and_to_a_path_that_cannot_be_written(run, tmp_path, capsys):
    assert main.main(["export"]) == 2
    assert capsys.readouterr().err == ("error: export needs a run: give --env=<run name> (a folder under "
                                       "--checkpoint-dir) or --load-model-path=<checkpoint.pth>\n")
    (tmp_path / "file").write_text("")
    assert main.main(["export", *flags(run[0], f"--output={tmp_path / 'file' / 'model.onnx'}")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: --output: cannot create folder {str(tmp_path / 'file')!r}: {str(tmp_path / 'file')!r} is a file, not a folder\n"
    assert main.main(["export", *flags(run[0], f"--output={tmp_path}")]) == 1
    assert capsys.readouterr().err == f"error: --output={tmp_path} is a folder; give a file name, e.g. --output={tmp_path / 'model.onnx'}\n"


def test_missing_onnx_packages_are_one_line_naming_the_setup_command(run, capsys, monkeypatch):
    tmp_path, _ = run
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)  # as if not installed
    assert main.main(["export", *flags(tmp_path, f"--output={tmp_path / 'never.onnx'}")]) == 1
    assert capsys.readouterr().err == ("error: --format=onnx needs the onnxscript package, which is not installed; install "
                                       "the export extra (onnx, onnxscript, onnxruntime) with `bash scripts/setup.sh --export`\n")
    assert not (tmp_path / "never.onnx").exists()
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert main.main(["test", *flags(tmp_path, "--runtime=onnxruntime", f"--result-file={tmp_path / 'never.csv'}")]) == 1
    assert "--runtime=onnxruntime needs the onnxruntime package" in capsys.readouterr().err
    assert not (tmp_path / "never.csv").exists()


def test_bad_onnx_files_for_test_are_one_line_errors(run, gan_run, tmp_path, capsys):
    runs, gan_run = run[0], gan_run[0]
    cases = [
        (["--onnx=x.onnx"], 2, "--onnx is the file --runtime=onnxruntime runs; add --runtime=onnxruntime"),
        (["--runtime=onnxruntime", f"--onnx={tmp_path / 'none.onnx'}"], 1,
         f"--onnx={tmp_path / 'none.onnx'}: no such file; write it with `{typed()} export --env=<run>`"),
        (["--runtime=onnxruntime", f"--onnx={gan_run / 'g' / 'model.onnx'}"], 1,
         f"{gan_run / 'g' / 'model.onnx'} takes 16 x 1 x 1 images but this run's are 3 x 16 x 16; export this run's "
         f"model with `{typed()} export --env=tiny --checkpoint-dir={runs / 'runs'}`"),
    ]
    two_inputs = torch.onnx.export(torch.nn.Bilinear(2, 2, 2).eval(), (torch.zeros(1, 2), torch.zeros(1, 2)), dynamo=True,
                                   verbose=False)
    two_inputs.save(str(tmp_path / "two.onnx"))
    cases.append((["--runtime=onnxruntime", f"--onnx={tmp_path / 'two.onnx'}"], 1,
                  f"{tmp_path / 'two.onnx'} takes 2 input(s) and gives 1 output(s); the runner runs a classifier"))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    cases.append((["--runtime=onnxruntime", f"--onnx={tmp_path / 'junk.onnx'}"], 1, f"ONNX Runtime cannot load {tmp_path / 'junk.onnx'}: "))
    for extra, code, message in cases:
        assert main.main(["test", *flags(runs, f"--result-file={tmp_path / 'out.csv'}"), *extra]) == code, extra
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
        assert not (tmp_path / "out.csv").exists()


def test_help_lists_export_and_its_options(capsys):
    assert main.main(["export", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--format", "--output", "--opset", "--dynamic-batch", "--atol", "--rtol", "--use-ema"):
        assert option in text
    assert main.main(["help"]) == 0
    text = capsys.readouterr().out
    assert "  export    write what a run's experiment exports" in text and "--runtime" in text and "--onnx" in text


@pytest.mark.slow
def test_the_registered_models_export_to_both_formats_within_tolerance():
    """benchmarks/export_models.py runs every torchvision model; these are the registry's own
    and a torchvision one, at 64 px, randomly initialised, in one process (torch and onnx
    import once: 20 s instead of 43)."""
    import subprocess
    import sys

    from conftest import ROOT

    names = ["LeNet", "AlexNet", "SqueezeNet", "ResNet34", "torchvision.resnet18"]
    script = f"import sys; sys.path.insert(0, 'benchmarks')\nfrom export_models import one\nfor name in {names!r}: one(name, 64)"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["model"] for row in rows] == names, done.stderr[-3000:]
    for row in rows:
        assert row["onnx"].startswith("ok: ") and row["pt2"].startswith("ok: "), row


def test_a_file_exported_from_another_checkpoint_of_the_run_is_used_with_a_warning(run):
    tmp_path, _ = run
    older = tmp_path / "from_last.onnx"
    last = tmp_path / "runs" / "tiny" / "last.pth"
    assert run_cli("export", f"--load-model-path={last}", f"--output={older}").returncode == 0
    result = run_cli("test", *flags(tmp_path, "--runtime=onnxruntime", f"--onnx={older}", f"--result-file={tmp_path / 'o.csv'}"))
    assert result.returncode == 0, result.stderr
    assert f"WARNING {older} was exported from {last} at step " in result.stderr
    assert f"export this run's model with `{typed()} export --env=tiny --checkpoint-dir={tmp_path / 'runs'}`" in result.stderr


def test_an_experiment_without_an_export_says_so(tmp_path, capsys):
    torch.save({"config": {"experiment": "poetry"}, "model": {}}, tmp_path / "poet.pth")
    assert main.main(["export", f"--load-model-path={tmp_path / 'poet.pth'}"]) == 1
    assert capsys.readouterr().err == ("error: experiment poetry has nothing to export (export takes classify's models "
                                       "and the gan's generator)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poet.pth"]


def test_a_grey_array_data_set_exports_tests_and_predicts_the_same(tmp_path):
    """MNIST: 1 channel, items already float (no uint8 normalisation), resize 'whole'."""
    from conftest import make_mnist

    make_mnist(tmp_path / "mnist")
    common = ["--env=m", f"--checkpoint-dir={tmp_path / 'runs'}", "--num-workers=0"]
    trained = run_cli("train", *common, "--dataset=mnist", f"--train-data-root={tmp_path / 'mnist'}", "--model=LeNet",
                      "--batch-size=8", "--max-epoch=1", "--progress=false", "--debug-file=")
    assert trained.returncode == 0, trained.stderr
    assert run_cli("export", *common).returncode == 0
    _, meta = metadata(tmp_path / "runs" / "m" / "model.onnx")
    assert (meta["channels"], meta["image_size"], meta["resize"]) == (1, 28, "whole")
    assert meta["mean"] == [0.1307] and meta["classes"] == [str(digit) for digit in range(10)]
    by_torch = run_cli("test", *common, f"--result-file={tmp_path / 'torch.csv'}")
    by_onnx = run_cli("test", *common, "--runtime=onnxruntime", f"--result-file={tmp_path / 'ort.csv'}")
    assert by_torch.returncode == by_onnx.returncode == 0, by_onnx.stderr
    assert rows(tmp_path / "ort.csv") == rows(tmp_path / "torch.csv")  # id,class name
    assert by_onnx.stdout.splitlines()[1:] == by_torch.stdout.splitlines()[1:]  # accuracy and the per-class table
    # the first test image as a PNG a user might have: predict() names the class test wrote
    from configs.loader import load_config
    from data.mnist import Mnist

    test_split = Mnist(load_config({"dataset": "mnist", "train_data_root": str(tmp_path / "mnist")}), "test")
    Image.fromarray(test_split.images[test_split.positions[0]][..., 0]).save(tmp_path / "digit.png")
    probabilities = predict(tmp_path / "runs" / "m" / "model.onnx", tmp_path / "digit.png")
    assert max(probabilities, key=probabilities.get) == rows(tmp_path / "torch.csv")[1][1]


def test_a_model_over_the_2_gb_one_onnx_file_holds_is_refused_before_exporting():
    from utils.export.options import split_options

    with torch.device("meta"):  # 2 GiB of float32 weights, none of them allocated
        big = torch.nn.Linear(2 ** 15, 2 ** 14, bias=False)
    with pytest.raises(UserError, match=r"^big has 2\.0 GB of weights, more than the 2 GB one ONNX file holds "
                                        r"\(protobuf's limit\); use --format=pt2$"):
        exporter.to_onnx(big, None, None, {"model": "big"}, split_options({})[0], None)


def foreign_onnx(path, input_type=onnx.TensorProto.UINT8):
    """A classifier-shaped ONNX file the runner did not write: an N x 3 x 16 x 16 `pixels`
    input of `input_type` (cast to float), a mean over the image, N x 2 float out."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["as_float", "axes"], ["mean"], keepdims=0),
         helper.make_node("Concat", ["mean", "mean"], ["scores"], axis=1)],
        "foreign", [helper.make_tensor_value_info("pixels", input_type, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def with_metadata(source, path, text):
    """A copy of the ONNX file `source` whose runner metadata entry is `text`."""
    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key == "runner":
            entry.value = text
    onnx.save(model, str(path))
    return path


def test_foreign_or_broken_onnx_files_are_one_line_for_test_and_a_value_error_for_predict(run, tmp_path, capsys):
    from utils.export.predict import PredictError

    runs, _ = run
    exported = runs / "runs" / "tiny" / "model.onnx"
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    cases = [
        (foreign_onnx(tmp_path / "uint8.onnx"), r"uint8.onnx takes tensor\(uint8\) and gives tensor\(float\); the "
                                                r"runner feeds float32 image batches \(N x C x H x W\) and reads float "
                                                rf"outputs, as `{re.escape(typed())} export --env=<run>` writes them"),
        (with_metadata(exported, tmp_path / "not-json.onnx", "{'classes': [cat"),
         r"not-json.onnx: its 'runner' metadata entry is not a JSON object \(.*\); write the file again with "
         rf"`{re.escape(typed())} export --env=<run>`"),
        (with_metadata(exported, tmp_path / "a-list.onnx", "[1, 2]"), r"a-list.onnx: its 'runner' metadata entry is not "
                                                                      r"a JSON object"),
        (tmp_path / "junk.onnx", r"ONNX Runtime cannot load .*junk.onnx: .*; give an ONNX file, or write one again with "
                                 rf"`{re.escape(typed())} export --env=<run>`"),
    ]
    for path, message in cases:
        result_file = tmp_path / "out.csv"
        assert main.main(["test", *flags(runs, "--runtime=onnxruntime", f"--onnx={path}",
                                         f"--result-file={result_file}")]) == 1, path
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
        assert not result_file.exists()
        with pytest.raises(PredictError, match=message) as raised:
            Predictor(path)
        assert isinstance(raised.value, ValueError)  # one ValueError subclass a caller may catch
    # runner metadata whose values cannot be used: no resize of a billion pixels, no KeyError
    spec = metadata(exported)[1]
    for key, value in (("image_size", 10**9), ("mean", "dark"), ("channels", 7)):
        bad = with_metadata(exported, tmp_path / f"bad-{key}.onnx", json.dumps({**spec, key: value}))
        with pytest.raises(PredictError, match=rf"the runner's metadata holds no usable {key} "):
            predict(bad, str(runs / "data" / "test" / "1.jpg"))
    with pytest.raises(PredictError, match="cannot read image"):
        predict(exported, str(tmp_path / "missing.jpg"))
