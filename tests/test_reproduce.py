"""Reproducibility: every run writes manifest.json and per-epoch fingerprints, `reproduce`
trains it again in a scratch dir and proves it bit-identical or names what changed, and
`runs --diff` compares two runs. (The gan, the poet and a 2-process run reproduce in their
own test files, beside the runs they train.)"""
import gzip
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, load, make_dogcat, run_cli, tiny_flags
from utils.engine import data_fingerprint, fingerprints, manifest, provenance


def reproduce(*args, **run):
    return run_cli("reproduce", *args, **run)


def files_of(folder):
    """{relative path: (sha256, mtime_ns)} of every file under `folder`."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def scratch_dirs(runs):
    return sorted(p.name for p in runs.iterdir() if ".reproduce-" in p.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch classify run on tiny data (2 threads, epoch_<n>.pth kept)."""
    tmp_path = tmp_path_factory.mktemp("reproduce")
    make_dogcat(tmp_path / "data", per_class=12, test_images=3)
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="run", **{
        "max-epoch": 2, "threads": 2, "keep-checkpoints": 2}))
    assert result.returncode == 0, result.stderr
    return tmp_path, tmp_path / "runs" / "run"


def test_a_run_records_its_manifest_and_the_fingerprints_of_each_epoch(trained):
    tmp_path, run_dir = trained
    recorded = json.loads((run_dir / "manifest.json").read_text())
    block = recorded["environments"][0]
    assert block["kind"] == "start" and block["at"]["epoch"] == 0
    assert block["command"][2:4] == ["train", f"--train-data-root={tmp_path / 'data' / 'train'}"], block["command"]
    assert block["packages"]["torch"] == importlib.metadata.version("torch")
    assert block["threads"] == 2 and block["world_size"] == 1 and block["device"] == "cpu" and block["seed"] == 0
    assert "git" in block["code"] or "sources" in block["code"]
    train = tmp_path / "data" / "train"
    on_disk = sorted(p for p in train.rglob("*") if p.is_file())
    root = block["data"]["roots"]["train"]
    assert root["files"] == len(on_disk) and root["bytes"] == sum(p.stat().st_size for p in on_disk)
    with gzip.open(run_dir / "data-files.json.gz", "rt") as handle:
        listed = json.load(handle)["0"]["train"]
    assert listed["cat.3.jpg"] == hashlib.sha256((train / "cat.3.jpg").read_bytes()).hexdigest()[:16]
    assert set(block["data"]["split"]) == {"train", "val"}
    # each epoch end: a record, and the same sha256s inside the checkpoint of that epoch
    records = fingerprints.read(run_dir)
    assert sorted(records) == [1, 2]
    for epoch in (1, 2):
        state = load(run_dir / f"epoch_{epoch}.pth")
        assert state["fingerprints"] == fingerprints.summary(records[epoch]["objects"])
        assert state["fingerprints"] == fingerprints.summary(fingerprints.of_checkpoint(state))
        assert records[epoch]["global_step"] == state["global_step"]
    assert set(records[1]["objects"]) >= {"model", "optimizer", "lr_policy"}
    assert records[1]["objects"]["model"]["sha256"] != records[2]["objects"]["model"]["sha256"]


def test_a_manifest_holds_no_environment_value_the_runner_does_not_read(trained, tmp_path):
    data_root = trained[0] / "data"
    result = run_cli("train", *tiny_flags(data_root, tmp_path, env="secret"), env={
        "AWS_SECRET_ACCESS_KEY": "hunter2-do-not-keep", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "runs" / "secret" / "manifest.json").read_text()
    assert "hunter2" not in text and "AWS_SECRET" not in text
    assert json.loads(text)["environments"][0]["environment"]["OMP_NUM_THREADS"] == "1"
    assert manifest.hide_passwords("--storage=postgresql://me:pa55@db:5432/x") == "--storage=postgresql://me:***@db:5432/x"


def test_reproduce_trains_every_epoch_again_bit_for_bit_and_touches_nothing_of_the_run(trained):
    tmp_path, run_dir = trained
    before = files_of(run_dir)
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=run", "--all")
    assert result.returncode == 0, result.stderr
    record = fingerprints.read(run_dir)[2]
    tensors = sum(len(entry["tensors"]) for entry in record["objects"].values())
    assert set(record["metrics"]) == {"val_loss", "val_accuracy", "val_logloss"}  # the epoch's numbers, compared too
    assert f"reproduced: epochs 1-2 bit-identical (model, optimizer, lr policy: {tensors} tensors; 3 metrics of each " \
           f"epoch)" in result.stdout
    assert files_of(run_dir) == before  # byte for byte, not even a new mtime
    assert scratch_dirs(tmp_path / "runs") == []  # the scratch run is removed


def test_reproduce_from_a_checkpoint_checks_the_tail_and_keep_leaves_the_scratch_run(trained):
    tmp_path, run_dir = trained
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=run", "--from=epoch_1.pth", "--keep")
    assert result.returncode == 0, result.stderr
    assert "training epoch 2 again" in result.stdout and "reproduced: epoch 2 bit-identical" in result.stdout
    kept = scratch_dirs(tmp_path / "runs")
    assert len(kept) == 1 and f"scratch run kept: {tmp_path / 'runs' / kept[0]}" in result.stdout
    scratch = tmp_path / "runs" / kept[0]
    assert fingerprints.read(scratch)[2] == fingerprints.read(run_dir)[2]
    assert len(json.loads((scratch / "manifest.json").read_text())["environments"]) == 1
    shutil.rmtree(scratch)


def test_a_stopped_reproduce_removes_its_scratch_run_and_says_the_run_is_untouched(trained):
    tmp_path, run_dir = trained
    before = files_of(run_dir)
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=run", env={"RUNNER_FAULT_AT_STEP": "3:SIGTERM"})
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"reproduce of run stopped before it finished; nothing of "
                                                      f"{run_dir} was written")
    assert scratch_dirs(tmp_path / "runs") == [] and files_of(run_dir) == before


def test_another_thread_count_is_named_where_it_changes_the_numbers(trained):
    tmp_path, run_dir = trained
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=run", "--threads=1")
    assert result.returncode == 1, result.stderr
    assert "not reproduced: epoch 1 (steps 1-" in result.stdout and "  model: " in result.stdout
    lines = result.stdout.splitlines()
    assert "what differs now:" in lines and "  threads 2 -> 1" in lines
    assert not result.stderr.strip().splitlines()[-1].startswith("error"), result.stderr  # the report says it all
    assert scratch_dirs(tmp_path / "runs") == []


def test_atol_accepts_the_last_bits_where_the_run_kept_that_epochs_checkpoint(trained):
    tmp_path, _ = trained
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=run", "--threads=1", "--atol=1e-3")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("reproduced within --atol=0.001: "))
    worst = float(line.split("max |difference| ")[1].split(";")[0])
    assert 0 < worst <= 1e-3  # not bit for bit (2 threads against 1), within the tolerance
    assert "  threads 2 -> 1" in result.stdout.splitlines()
    tight = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=run", "--threads=1", f"--atol={worst / 10}")
    assert tight.returncode == 1 and "  max |difference| of model/" in tight.stdout, tight.stdout


def test_a_changed_training_file_is_named_with_the_count_of_files(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained[0] / "data", data)
    result = run_cli("train", *tiny_flags(data, tmp_path, env="data"))
    assert result.returncode == 0, result.stderr
    image = data / "train" / "cat.3.jpg"
    Image.fromarray(np.full((24, 24, 3), 255, dtype=np.uint8)).save(image)  # a white cat
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=data")
    assert result.returncode == 1, result.stderr
    files = len([p for p in (data / "train").rglob("*") if p.is_file()])
    assert f"  data: cat.3.jpg changed (1 of {files} files)" in result.stdout.splitlines()


def test_a_run_without_a_manifest_is_compared_by_its_saved_weights(trained, tmp_path):
    old = tmp_path / "runs" / "old"
    shutil.copytree(trained[1], old)
    for name in ("manifest.json", "data-files.json.gz", "source.diff"):
        (old / name).unlink(missing_ok=True)
    shutil.rmtree(old / "fingerprints")
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=old")
    assert result.returncode == 0, result.stderr
    assert "old has no manifest.json (trained before the runner wrote one): its code, packages, machine, threads " \
           "and data cannot be compared; its saved weights are compared instead" in result.stdout
    assert "reproduced: epoch 1 bit-identical" in result.stdout


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "reproduce needs a run: --env=<run name>"),
    (["--env=nope"], 1, "no run nope in "),
    (["--env=run", "--lr=0.1"], 2, "--lr: reproduce trains the run's own config"),
    (["--env=run", "--max-epoch=9"], 2, "--max-epoch: reproduce trains the run's own config"),
    (["--env=run", "--epochs=0"], 2, "--epochs=0: give 1 or more epochs"),
    (["--env=run", "--from=best.pth"], 2, "holds weights only, no run state; give last.pth or an epoch_<n>.pth"),
    (["--env=run", "--from=epoch_9.pth"], 1, "--from=epoch_9.pth: no such checkpoint; "),
    (["--env=run", "--from=last.pth"], 2, "run run recorded epochs up to 2: nothing after --from=last.pth"),
    (["--env=run", "--atol=-1"], 2, "option --atol must be >= 0"),
])
def test_bad_reproduce_input_is_one_line_and_writes_nothing(trained, args, code, message):
    tmp_path, run_dir = trained
    before = files_of(tmp_path / "runs")
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", *args)
    assert result.returncode == code, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr
    assert "Traceback" not in result.stderr
    assert files_of(tmp_path / "runs") == before


def test_runs_diff_names_the_options_the_manifest_items_the_best_and_where_they_part(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained[1], runs / "run")
    result = run_cli("train", *tiny_flags(trained[0] / "data", tmp_path, env="other", **{
        "max-epoch": 2, "threads": 1, "lr": 0.02}))
    assert result.returncode == 0, result.stderr
    result = run_cli("runs", "--diff", "run", "other", f"--checkpoint-dir={runs}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "runs --diff run other" and "options that differ:" in lines
    assert any(line.split() == ["--lr", "0.01", "0.02"] for line in lines)
    assert any(line.split() == ["--threads", "2", "1"] for line in lines)
    assert "  threads 2 -> 1" in lines
    assert any(line.startswith("best: run val_logloss ") and "| other val_logloss " in line for line in lines)
    assert lines[-1] == "fingerprints: part at epoch 1 (model, optimizer, lr_policy)"
    same = run_cli("runs", "--diff", "run", "run", f"--checkpoint-dir={runs}")
    assert same.stdout.splitlines()[1:3] == ["options: the same",
                                             "manifest: the same code, packages, data, machine and settings"]
    assert same.stdout.splitlines()[-1] == "fingerprints: identical in every epoch both recorded (1-2)"
    one = run_cli("runs", "--diff", "run", f"--checkpoint-dir={runs}")
    assert one.returncode == 2 and "runs --diff takes two runs" in one.stderr


def test_a_sweep_trial_reproduces(tmp_path):
    make_dogcat(tmp_path / "data", per_class=6, test_images=2, extras=False)
    (tmp_path / "space.yaml").write_text("pruner: none\nparams:\n  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n")
    args = [arg for arg in tiny_flags(tmp_path / "data", tmp_path, env="x") if not arg.startswith(("--env=", "--lr="))]
    result = run_cli("sweep", "--study=s", "--trials=1", f"--search-space={tmp_path / 'space.yaml'}", *args)
    assert result.returncode == 0, result.stderr
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=s/trial-0")
    assert result.returncode == 0, result.stderr
    assert "reproduced: epoch 1 bit-identical" in result.stdout
    assert scratch_dirs(tmp_path / "runs") == [] and sorted(p.name for p in (tmp_path / "runs" / "s").iterdir()) == [
        "optuna.journal", "sweep.yaml", "trial-0"]
    study = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=s")
    assert study.returncode == 2 and "reproduce one of its trials: --env=s/trial-<n>" in study.stderr
    missing = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=s/trial-3")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"error: no run s/trial-3 in {tmp_path / 'runs'}; did you mean " \
                                                      f"--env=s/trial-0?"


# -- the pieces -----------------------------------------------------------------------------
def test_a_fingerprint_is_canonical_and_sees_one_bit():
    state = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(), "a": {"n": 3, "lr": 0.1}}
    same = {"a": {"lr": 0.1, "n": 3}, "b": torch.arange(6, dtype=torch.float32).reshape(2, 3).t().contiguous()}
    assert fingerprints.of_object(state) == fingerprints.of_object(same)  # key order and memory layout aside
    flipped = state["b"].contiguous().clone()
    flipped.view(torch.int32)[0, 1] ^= 1  # the last bit of one float
    changed = fingerprints.of_object({**state, "b": flipped})
    assert changed["sha256"] != fingerprints.of_object(state)["sha256"]
    parted = fingerprints.differences({"x": fingerprints.of_object(state)}, {"x": changed})
    assert parted == [("x", ["b"], 1)]
    assert fingerprints.of_object({"b": torch.zeros(2, dtype=torch.bfloat16)})["tensors"]  # no numpy dtype needed
    assert fingerprints.of_object({**state, "a": {"n": 4, "lr": 0.1}})["tensors"] == fingerprints.of_object(state)["tensors"]


def test_the_data_hash_is_cached_by_size_and_time_and_sees_a_changed_file(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    for index in range(5):
        (root / "sub" / f"{index}.bin").write_bytes(bytes([index]) * 1000)
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    read = []
    original = data_fingerprint._file_sha256
    monkeypatch.setattr(data_fingerprint, "_file_sha256", lambda path: read.append(path) or original(path))
    first, files = data_fingerprint.fingerprint(root)
    assert first["files"] == 5 and first["bytes"] == 5000 and len(read) == 5 and set(files) == {f"sub/{k}.bin" for k in range(5)}
    read.clear()
    assert data_fingerprint.fingerprint(root)[0] == first and read == []  # every hash from the cache
    (root / "sub" / "2.bin").write_bytes(b"x" * 1000)  # same size, new time
    second, _ = data_fingerprint.fingerprint(root)
    assert len(read) == 1 and second["sha256"] != first["sha256"]
    assert data_fingerprint.fingerprint(tmp_path / "missing")[0] == {"missing": True}


def test_outside_git_the_code_is_every_source_file_hashed(monkeypatch):
    monkeypatch.setattr(provenance, "_git", lambda *args: None)
    code = provenance.code_state()
    assert set(code) == {"sources"}
    digests = code["sources"]["digests"]
    assert "main.py" in digests and "utils/engine/loop.py" in digests and not any(
        name.startswith((".venv/", ".git/", "checkpoints/")) for name in digests)
    assert digests["main.py"] == hashlib.sha256((ROOT / "main.py").read_bytes()).hexdigest()[:16]


@pytest.mark.slow  # a copy of the project, its own git and three interpreters
def test_a_changed_default_in_the_code_is_named_from_the_uncommitted_diff(trained, tmp_path):
    project = tmp_path / "project"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("the project is not a git checkout here")
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "a"]):
        assert subprocess.run([*git, *step], cwd=project, capture_output=True).returncode == 0
    flags = tiny_flags(trained[0] / "data", tmp_path, env="code")

    def main(*args):
        return subprocess.run([sys.executable, str(project / "main.py"), *map(str, args)], cwd=project, text=True,
                              capture_output=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    assert main("train", *flags).returncode == 0
    lenet = project / "models" / "lenet.py"
    text = lenet.read_text()
    assert "nn.Dropout(0.2)" in text
    lenet.write_text(text.replace("nn.Dropout(0.2)", "nn.Dropout(0.3)"))  # a default in the code, not an option
    result = main("reproduce", f"--checkpoint-dir={tmp_path / 'runs'}", "--env=code")
    assert result.returncode == 1, result.stderr
    assert "not reproduced: epoch 1" in result.stdout
    commit = json.loads((tmp_path / "runs" / "code" / "manifest.json").read_text())["environments"][0]["code"]["git"]["commit"]
    assert f"  git {commit[:7]} -> {commit[:7]} (dirty: 1 file: models/lenet.py)" in result.stdout.splitlines()


# -- what reproduce names (issue: damaged, edited and moved runs) ---------------------------
def test_an_edited_config_yaml_is_named_not_blamed_on_randomness(trained, tmp_path):
    run_dir = tmp_path / "runs" / "edited"
    shutil.copytree(trained[1], run_dir)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("\nlr: 0.01\n", "\nlr: 0.02\n"))
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=edited")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert "  option --lr 0.01 -> 0.02" in lines
    assert f"  (the options are {config}'s now, not those the run was trained with: edited after it began?)" in lines
    assert "randomness" not in result.stdout


def test_a_changed_validation_image_changes_the_metrics_and_is_not_reproduced(trained, tmp_path):
    """The state of epoch 1 agrees (no training image changed), what it measured does not."""
    from configs.loader import load_config
    from utils.core.registry import EXPERIMENTS

    data = tmp_path / "data"
    shutil.copytree(trained[0] / "data", data)
    flags = tiny_flags(data, tmp_path, env="val")
    assert run_cli("train", *flags).returncode == 0
    cfg = load_config({arg[2:].split("=", 1)[0]: arg.split("=", 1)[1] for arg in flags})
    _, val_set = EXPERIMENTS.get("classify")(cfg).datasets()
    image = val_set.items[0][0]
    Image.fromarray(np.full((24, 24, 3), 128, dtype=np.uint8)).save(image)  # a grey cat or dog
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=val")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("not reproduced: epoch 1 (steps 1-"), lines
    assert lines[2].startswith("  its metrics, while the state agrees: ") and " val_logloss " in lines[2], lines
    assert any(line.startswith(f"  data: {image.name} changed (1 of ") for line in lines), lines
    assert not any(line.startswith("reproduced") for line in lines) and "the numbers did not change" not in result.stdout


def test_a_checkpoint_of_another_run_is_refused_in_one_line(trained, tmp_path):
    other = tmp_path / "runs" / "other"
    shutil.copytree(trained[1], other)
    before = files_of(trained[1])
    result = reproduce(f"--checkpoint-dir={trained[0] / 'runs'}", "--env=run", f"--from={other / 'epoch_1.pth'}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --from={other / 'epoch_1.pth'} is a checkpoint of run other, not of run; give one of run's: "
        f"best.pth, epoch_1.pth, epoch_2.pth, last.pth")
    assert files_of(trained[1]) == before


def test_a_run_trained_on_a_relative_data_folder_reproduces_from_another_folder(trained, tmp_path):
    shutil.copytree(trained[0] / "data", tmp_path / "data")
    flags = [arg for arg in tiny_flags(tmp_path / "data", tmp_path, env="rel") if not arg.startswith("--train-data-root")]
    assert run_cli("train", "--train-data-root=data/train", *flags, cwd=tmp_path).returncode == 0
    config = (tmp_path / "runs" / "rel" / "config.yaml").read_text()
    assert f"\ntrain_data_root: {tmp_path / 'data' / 'train'}\n" in config  # saved as the folder it names
    block = json.loads((tmp_path / "runs" / "rel" / "manifest.json").read_text())["environments"][0]
    assert block["data"]["roots"]["train"]["path"] == str(tmp_path / "data" / "train")
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=rel", cwd=ROOT)  # from elsewhere
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not exist" not in result.stdout
    flags = [arg for arg in flags if not arg.startswith("--max-epoch")]
    resumed = run_cli("train", "--train-data-root=data/train", *flags, "--resume", "--max-epoch=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr  # the same folder, written as it was typed


def test_a_fingerprint_record_changed_on_disk_is_named_and_its_checkpoint_decides(trained, tmp_path):
    run_dir = tmp_path / "runs" / "record"
    shutil.copytree(trained[1], run_dir)
    path = run_dir / "fingerprints" / "epoch-0002.json"
    record = json.loads(path.read_text())
    record["objects"]["model"]["sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    result = reproduce(f"--checkpoint-dir={tmp_path / 'runs'}", "--env=record", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == (
        f"note: {run_dir / 'fingerprints'}/epoch-0002.json disagrees with the fingerprints epoch_2.pth carries for "
        f"epoch 2 (model): the record was changed after the run wrote it; epoch 2 is compared with epoch_2.pth instead")
    assert "reproduced: epochs 1-2 bit-identical" in result.stdout
