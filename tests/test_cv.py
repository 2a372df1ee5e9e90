"""Cross-validation groups (train --folds=K): the split, kill -9 and resume, parallel folds,
the OOF files and the cv report, the ensemble's submission, TTA, and bad input."""
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, load, make_dogcat, run_cli, tiny_flags, with_flags
from test_resume import assert_same_training_state

FOLDS = 3
# 24 train images (12 per class): 8 per fold, 16 to train on, batch 4: 4 steps per epoch
FLAGS = {"max-epoch": 2, "folds": FOLDS, "lr": 0.01}


def flags(tmp, env, **extra):
    return tiny_flags(tmp / "data", tmp, env=env, **{**FLAGS, **extra})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny Kaggle-layout data and the uninterrupted reference group `ref`."""
    tmp = tmp_path_factory.mktemp("cv")
    make_dogcat(tmp / "data", per_class=12, test_images=5)
    result = run_cli("train", *flags(tmp, "ref"))
    assert result.returncode == 0, result.stderr
    return tmp, result


def rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_split_is_stratified_covers_every_item_once_and_ignores_listing_order():
    from data.folds import assign

    identities = [[f"{kind}.{n}.jpg", label] for n in range(10) for label, kind in enumerate(("cat", "dog"))]
    identities += [[f"bird.{n}.jpg", 2] for n in range(7)]  # a class that does not divide by K
    targets = [identity[1] for identity in identities]
    folds = assign(identities, targets, 3, seed=5)
    assert sorted(set(folds)) == [1, 2, 3]
    for label in (0, 1, 2):  # each class spread as evenly as it can be
        counts = [sum(1 for fold, target in zip(folds, targets) if fold == k and target == label) for k in (1, 2, 3)]
        assert max(counts) - min(counts) <= 1, (label, counts)
    order = list(reversed(range(len(identities))))  # the same items listed in another order
    again = assign([identities[i] for i in order], [targets[i] for i in order], 3, seed=5)
    assert {str(identities[i]): fold for i, fold in zip(order, again)} == {str(i): f for i, f in zip(identities, folds)}
    assert assign(identities, targets, 3, seed=6) != folds  # --seed decides it


def test_the_group_records_its_split_and_writes_oof_predictions_and_the_cv_report(setup):
    tmp, result = setup
    group = tmp / "runs" / "ref"
    record = json.loads((group / "folds.json").read_text())
    images = sorted(p.name for p in (tmp / "data" / "train").glob("*.jpg"))
    assert sorted(item[0] for item in record["items"]) == images  # every image, once
    for k in range(1, FOLDS + 1):  # 4 cats and 4 dogs in each fold
        assert sorted(label for _, label, fold in record["items"] if fold == k) == [0] * 4 + [1] * 4
    oof = rows(group / "oof.csv")
    assert sorted(row["id"] for row in oof) == images  # one row per training image
    truth = {item[0]: ("cat", "dog")[item[1]] for item in record["items"]}
    assert all(row["label"] == truth[row["id"]] and int(row["fold"]) == dict((i[0], i[2]) for i in record["items"])[row["id"]]
               for row in oof)
    assert all(abs(float(row["p_cat"]) + float(row["p_dog"]) - 1) < 1e-6 for row in oof)
    # the OOF metric is the one a user recomputes from the file
    loss = -sum(math.log(min(max(float(row[f"p_{row['label']}"]), 1e-15), 1 - 1e-15)) for row in oof) / len(oof)
    report = json.loads((group / "cv.json").read_text())
    assert report["oof"]["val_logloss"] == pytest.approx(loss, abs=1e-12)
    per_fold = [fold["val_logloss"] for fold in report["per_fold"]]
    assert report["mean"] == pytest.approx(sum(per_fold) / FOLDS, abs=1e-12)
    # each fold's row is its best.pth's own validation (the engine's best metric)
    for fold in report["per_fold"]:
        best = json.loads((group / f"fold-{fold['fold']}" / "status.json").read_text())["best"]
        assert fold["val_logloss"] == pytest.approx(best["value"], abs=1e-5)
    line = re.search(r"cv: val_logloss (\d\.\d{4}) \(oof\) = (\d\.\d{4}) ± (\d\.\d{4}) over 3 folds", result.stdout)
    assert line and float(line.group(1)) == pytest.approx(loss, abs=5e-5), result.stdout
    assert re.search(r"^fold\s+epochs\s+best epoch\s+val_logloss", result.stdout, re.M)
    table = run_cli("runs", f"--checkpoint-dir={tmp / 'runs'}")
    assert re.search(r"^ref\s+classify\s+LeNet\s+folds 3/3\s+cv val_logloss", table.stdout, re.M), table.stdout
    assert re.search(r"^  ref/fold-2\s+classify\s+LeNet\s+2/2", table.stdout, re.M), table.stdout


def test_a_kill_inside_fold_2_then_resume_auto_on_the_group_equals_the_uninterrupted_group(setup):
    tmp, _ = setup
    killed = run_cli("train", *flags(tmp, "killed"),
                     env={"RUNNER_FAULT_IN_RUN": "fold-2", "RUNNER_FAULT_AT_STEP": "6:SIGKILL"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    group = tmp / "runs" / "killed"
    assert not (group / "fold-3").exists() and not (group / "oof.csv").exists()
    first = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in (group / "fold-1").iterdir()
             if path.is_file()}
    # the same command line again, --resume=auto: the group's options come from group.yaml
    resumed = run_cli("train", f"--checkpoint-dir={tmp / 'runs'}", "--env=killed", "--resume=auto", "--progress=false",
                      "--num-workers=0", "--debug-file=")
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 1: finished, left as it is" in resumed.stdout
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in (group / "fold-1").iterdir()
            if path.is_file() and path.name in first} == first  # fold 1 untouched
    for k in range(1, FOLDS + 1):
        assert_same_training_state(load(group / f"fold-{k}" / "last.pth"),
                                   load(tmp / "runs" / "ref" / f"fold-{k}" / "last.pth"))
    assert rows(group / "oof.csv") == rows(tmp / "runs" / "ref" / "oof.csv")
    again = run_cli("train", f"--checkpoint-dir={tmp / 'runs'}", "--env=killed", "--resume=auto", "--num-workers=0")
    assert again.returncode == 0 and again.stdout.count("finished, left as it is") == FOLDS, again.stderr


@pytest.mark.slow  # real interpreters, started together
def test_folds_trained_in_parallel_equal_the_serial_group(setup):
    tmp, _ = setup
    processes = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", *flags(tmp, "par", fold=k)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k in range(1, FOLDS + 1)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * FOLDS, [err for _, err in outputs]
    group, ref = tmp / "runs" / "par", tmp / "runs" / "ref"
    assert json.loads((group / "folds.json").read_text())["items"] == json.loads((ref / "folds.json").read_text())["items"]
    for k in range(1, FOLDS + 1):
        assert_same_training_state(load(group / f"fold-{k}" / "last.pth"), load(ref / f"fold-{k}" / "last.pth"))
    assert rows(group / "oof.csv") == rows(ref / "oof.csv")  # the last fold to finish wrote the report
    assert sum("cv: val_logloss" in out for out, _ in outputs) >= 1


@pytest.mark.slow  # a real interpreter, stopped while it holds its fold
def test_two_processes_cannot_train_one_fold(setup):
    tmp, _ = setup
    holder = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", *flags(tmp, "twice", fold=1)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RUNNER_FAULT_AT_STEP": "2:SIGSTOP"})
    try:
        deadline = time.time() + 120
        while not (tmp / "runs" / "twice" / "fold-1" / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        other = run_cli("train", *flags(tmp, "twice", fold=1, resume="auto"))
        assert other.returncode != 0
        assert f"pid {holder.pid}" in other.stderr.strip().splitlines()[-1], other.stderr
    finally:
        holder.kill()
        holder.communicate()


def test_test_on_the_group_writes_the_mean_of_the_fold_models(setup):
    tmp, _ = setup
    group = tmp / "runs" / "ref"
    ensemble = run_cli("test", f"--checkpoint-dir={tmp / 'runs'}", "--env=ref", "--clip=0", "--num-workers=0")
    assert ensemble.returncode == 0, ensemble.stderr
    assert "wrote 5 rows to" in ensemble.stdout
    singles = []
    for k in range(1, FOLDS + 1):
        out = tmp / f"fold-{k}.csv"
        single = run_cli("test", f"--checkpoint-dir={tmp / 'runs'}", f"--env=ref/fold-{k}", "--clip=0",
                         f"--result-file={out}", "--num-workers=0")
        assert single.returncode == 0, single.stderr
        singles.append({row["id"]: float(row["label"]) for row in rows(out)})
    submitted = rows(group / "result.csv")
    assert [row["id"] for row in submitted] == ["1", "2", "3", "4", "5"]  # the Kaggle csv, as one run writes it
    for row in submitted:
        assert float(row["label"]) == pytest.approx(sum(single[row["id"]] for single in singles) / FOLDS, abs=1e-6)


def test_tta_changes_the_probabilities_and_is_deterministic(setup):
    tmp, _ = setup
    outputs = []
    for tta, name in (("", "plain"), ("flip,crops", "tta"), ("flip,crops", "tta-again")):
        out = tmp / f"{name}.csv"
        result = run_cli("test", f"--checkpoint-dir={tmp / 'runs'}", "--env=ref", "--clip=0", f"--result-file={out}",
                         "--num-workers=0", *([f"--tta={tta}"] if tta else []))
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_text())
    assert outputs[1] == outputs[2] and outputs[1] != outputs[0]
    val = run_cli("val", f"--checkpoint-dir={tmp / 'runs'}", "--env=ref", "--tta=crops", "--num-workers=0")
    assert val.returncode == 0, val.stderr
    assert "over 3 folds (tta crops)" in val.stdout
    group = tmp / "runs" / "ref"
    crops = json.loads((group / "cv-crops.json").read_text())
    assert len(rows(group / "oof-crops.csv")) == 24
    assert crops["oof"]["val_logloss"] != json.loads((group / "cv.json").read_text())["oof"]["val_logloss"]


def fails(args, cwd=ROOT):
    result = run_cli(*args, cwd=cwd)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_bad_input_is_one_line_and_changes_nothing(setup):
    tmp, _ = setup
    base = flags(tmp, "bad")
    cases = [
        (with_flags(base, "--folds=1"), "error: --folds=1 holds no fold out to validate on"),
        (with_flags(base, "--folds=13"), "error: --folds=13 is more than the 12 image(s) of class 0"),
        (with_flags(base, "--fold=4"), "error: --fold=4 is not a fold of --folds=3; give --fold=1 to 3"),
        (with_flags(base, "--folds=0", "--fold=2"), "error: --fold=2 picks one fold of a cross-validation group"),
        (with_flags(base, "--tta=flip", "--hflip=0"), "error: --tta=flip averages each image with its mirror image"),
        (with_flags(base, "--tta=mirror"), "error: option --tta must be one of"),
    ]
    for args, message in cases:
        assert fails(["train", *args]).startswith(message), args
    assert not (tmp / "runs" / "bad").exists()
    ref = tmp / "runs" / "ref"
    before = sorted((path, path.stat().st_mtime_ns) for path in ref.rglob("*") if path.is_file())
    assert fails(["train", *flags(tmp, "ref")]).startswith(f"error: {tmp / 'runs' / 'ref'} already holds a "
                                                          f"cross-validation group (3 of 3 folds finished)")
    assert fails(["train", *flags(tmp, "ref", fold=3, lr=0.5, resume="auto")]) == (
        "error: group ref trains its folds with other options: --lr=0.5 (the group's: 0.01); drop them, or train a new "
        "group under another --env")
    assert sorted((path, path.stat().st_mtime_ns) for path in ref.rglob("*") if path.is_file()) == before


def test_a_missing_fold_is_refused_unless_partial(setup):
    tmp, _ = setup
    shutil.copytree(tmp / "runs" / "ref", tmp / "runs" / "gone")
    shutil.rmtree(tmp / "runs" / "gone" / "fold-2")
    (tmp / "runs" / "gone" / "result.csv").unlink(missing_ok=True)  # the copy's, if another test wrote one
    line = fails(["test", f"--checkpoint-dir={tmp / 'runs'}", "--env=gone", "--num-workers=0"])
    assert line.startswith("error: group gone: fold 2 is missing (2 of 3 folds finished); train it with `"), line
    assert not (tmp / "runs" / "gone" / "result.csv").exists()
    partial = run_cli("test", f"--checkpoint-dir={tmp / 'runs'}", "--env=gone", "--num-workers=0", "--partial")
    assert partial.returncode == 0, partial.stderr
    assert "using fold 1, 3 (2 of 3); fold 2 not finished" in partial.stderr
    assert "the mean of 2 fold models' probabilities (fold 1, 3)" in partial.stderr


def test_a_group_whose_data_changed_is_refused_naming_what_changed(tmp_path):
    make_dogcat(tmp_path / "data", per_class=6, test_images=2)
    first = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="g", folds=2, fold=1))
    assert first.returncode == 0, first.stderr
    shutil.copy(tmp_path / "data" / "train" / "cat.0.jpg", tmp_path / "data" / "train" / "cat.99.jpg")
    line = fails(["train", *tiny_flags(tmp_path / "data", tmp_path, env="g", folds=2, fold=2)])
    assert line.startswith("error: group g was split from other data: since then 1 item added (e.g. cat.99.jpg)"), line
    assert not (tmp_path / "runs" / "g" / "fold-2").exists()


def test_a_sweep_over_folds_ranks_trials_by_their_oof_metric_and_prunes_between_folds(setup, tmp_path):
    tmp, _ = setup
    space = tmp_path / "space.yaml"
    space.write_text("sampler: grid\npruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}\n"
                     "params:\n  lr: [0.003, 0.9]\n")
    args = with_flags(flags(tmp, "unused"), f"--checkpoint-dir={tmp_path}", "--max-epoch=1", "--seed=1")
    args = [arg for arg in args if not arg.startswith(("--env=", "--lr="))]
    result = run_cli("sweep", "--study=s", "--trials=2", f"--search-space={space}", *args)
    assert result.returncode == 0, result.stderr
    # the grid's order under --seed=1 (optuna pinned): the good lr first, then 0.9, which one fold shows bad
    assert "trial 1 pruned after fold 1: mean val_logloss" in result.stderr, result.stderr
    assert not (tmp_path / "s" / "trial-1" / "fold-2").exists()
    report = json.loads((tmp_path / "s" / "trial-0" / "cv.json").read_text())
    summary = run_cli("sweep", "--study=s", f"--checkpoint-dir={tmp_path}", "--summary")
    assert re.search(rf"^0\s+complete\s+{report['oof']['val_logloss']:.4f}\s+folds 3/3", summary.stdout, re.M), \
        summary.stdout
    record = [json.loads((tmp_path / "s" / f"trial-{n}" / "folds.json").read_text())["items"] for n in (0, 1)]
    assert record[0] == record[1]  # every trial is scored on the same split


@pytest.mark.slow  # torchrun: two interpreters
def test_a_group_under_torchrun_trains_the_same_folds_as_one_process(setup):
    from test_distributed import torchrun

    tmp, _ = setup
    # Both decode every image (--cache=off): Adam turns the ranks' float rounding into weights
    # up to 0.1 apart after 8 steps, which the 1e-4 below tolerates only where this tiny
    # data's predictions saturate, as the decoded images' do.
    single = run_cli("train", *flags(tmp, "ref-decoded", cache="off"))
    assert single.returncode == 0, single.stderr
    # 2 processes x batch 2: the reference's global batch of 4, the same images in each step
    result = torchrun("train", *flags(tmp, "ddp", cache="off", **{"batch-size": 2}))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("cv: val_logloss") == 1  # rank 0 reports
    group, ref = tmp / "runs" / "ddp", tmp / "runs" / "ref-decoded"
    assert json.loads((group / "folds.json").read_text())["items"] == json.loads((ref / "folds.json").read_text())["items"]
    mine, theirs = rows(group / "oof.csv"), rows(ref / "oof.csv")
    assert [row["id"] for row in mine] == [row["id"] for row in theirs]
    assert all(abs(float(a["p_dog"]) - float(b["p_dog"])) < 1e-4 for a, b in zip(mine, theirs))
    test = torchrun("test", f"--checkpoint-dir={tmp / 'runs'}", "--env=ddp", "--num-workers=0", "--clip=0")
    assert test.returncode == 0 and len(rows(group / "result.csv")) == 5, test.stderr


def test_a_group_whose_folds_differ_in_options_is_refused_naming_them(setup):
    tmp, _ = setup
    shutil.copytree(tmp / "runs" / "ref", tmp / "runs" / "mixed")
    saved = tmp / "runs" / "mixed" / "fold-2" / "config.yaml"
    saved.write_text(saved.read_text().replace("\nlr: 0.01\n", "\nlr: 0.05\n"))
    for command in ("test", "val"):
        line = fails([command, f"--checkpoint-dir={tmp / 'runs'}", "--env=mixed", "--num-workers=0"])
        assert line == ("error: fold 2 of group mixed was trained with other options: --lr=0.05 (the group's: 0.01); "
                        "its folds must share what they compute"), line


@pytest.mark.parametrize("monitor, line", [("val_accuracy", "cv: val_accuracy "), ("val_loss", "cv: val_logloss ")])
def test_the_cv_line_reports_the_monitored_metric_or_what_the_oof_gives_of_it(tmp_path, monitor, line):
    make_dogcat(tmp_path / "data", per_class=6, test_images=2)
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="g", folds=2, monitor=monitor))
    assert result.returncode == 0, result.stderr
    assert line in result.stdout and "(oof) = " in result.stdout, result.stdout
    assert json.loads((tmp_path / "runs" / "g" / "cv.json").read_text())["metric"] == line.split()[1]
