"""Sweeps on an unlucky cluster and under hostile input: a worker killed inside a journal
append, a full disk or an I/O error there and inside a trial, a journal broken in the middle,
junk where the journal or sweep.yaml should be, bad --storage URLs, a study mistaken for a
run and back. Each is one line with the documented exit code, and no record of the study is
lost: the next worker finishes exactly --trials trials.
"""
import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess

import pytest
from conftest import fill, run_cli, small_disk, typed
from test_sweep import sweep_flags, states, study_of

from utils.sweep import lease as leases

ONE = "pruner: none\nparams:\n  lr: [0.01, 0.02]\n"
TRIAL = {"max-epoch": 1, "batch-size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import make_dogcat

    root = tmp_path_factory.mktemp("faults") / "data"
    make_dogcat(root, per_class=6, test_images=2, extras=False)
    return root


def journal(folder, study):
    return folder / "runs" / study / "optuna.journal"


def records(path):
    """The journal's records, each line decoded (fails on a line that is not JSON)."""
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def appends(data, tmp_path_factory):
    """The appends one worker makes for a study of one trial, in order (their op codes):
    a fault at append N hits the same operation in a fresh study of the same command."""
    folder = tmp_path_factory.mktemp("reference")
    result = run_cli(*sweep_flags(data, folder, "ref", 1, ONE, **TRIAL))
    assert result.returncode == 0, result.stderr
    return records(journal(folder, "ref"))


def first(appends, op_code, **fields):
    """The 1-based number of the first append with `op_code` (and `fields`)."""
    return next(n for n, record in enumerate(appends, 1)
                if record["op_code"] == op_code and all(record.get(k) == v for k, v in fields.items()))


TELL_COMPLETE = dict(op_code=6, state=1)  # SET_TRIAL_STATE_VALUES, TrialState.COMPLETE
ASK = dict(op_code=4)  # CREATE_TRIAL


def one_line(result, code, pattern):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Warning:" not in result.stderr, result.stderr
    assert re.fullmatch(rf"error: {pattern}", lines[-1]), lines[-1]


def test_a_worker_killed_inside_an_append_leaves_a_cut_line_the_next_one_removes(data, tmp_path, appends):
    args = sweep_flags(data, tmp_path, "cut", 1, ONE, **TRIAL)
    killed = run_cli(*args, env={"RUNNER_FAULT_AT_APPEND": f"{first(appends, **TELL_COMPLETE)}:kill"})
    assert killed.returncode == -9
    path = journal(tmp_path, "cut")
    written = path.read_bytes()
    assert not written.endswith(b"\n")  # the tell is cut in half, as kill -9 leaves it
    cut = written[written.rindex(b"\n") + 1:]

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "ended in a cut record" in line]
    assert len(warnings) == 1 and f"its bytes are in {path}.cut" in warnings[0]
    assert (tmp_path / "runs" / "cut" / "optuna.journal.cut").read_bytes() == cut + b"\n"
    assert "trial 0, resuming it" in again.stderr  # the killed worker's pid is gone: taken over at once
    assert states(study_of(tmp_path, "cut")) == [(0, "COMPLETE")]
    assert all(isinstance(record, dict) for record in records(path))  # every line a whole record again


@pytest.mark.parametrize("fault, at, message", [
    ("ENOSPC", TELL_COMPLETE, r"no space left on device; the journal is kept as it was; trial 0 is handed back \(what "
                              r"it saved is kept\): fix that and run the sweep again, which resumes it"),
    ("EIO", ASK, r"input/output error; the journal is kept as it was; this worker ran no trial: fix that and run "
                 r"the sweep again"),
])
def test_a_failed_append_rolls_back_and_hands_the_trial_back(data, tmp_path, appends, fault, at, message):
    args = sweep_flags(data, tmp_path, "full", 1, ONE, **TRIAL)
    number = first(appends, **at)
    failed = run_cli(*args, env={"RUNNER_FAULT_AT_APPEND": f"{number}:{fault}"})
    path = journal(tmp_path, "full")
    one_line(failed, 1, rf"cannot append to {re.escape(str(path))}: {message}")
    assert len(records(path)) == number - 1  # the half it wrote is gone; every record before it is whole
    assert not (tmp_path / "runs" / "full" / "trial-0" / leases.LEASE).exists()  # never RUNNING for ever

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert states(study_of(tmp_path, "full")) == [(0, "COMPLETE")]


def tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if p.name != "filler"}


def test_a_full_disk_inside_a_trial_hands_it_back_and_the_next_worker_finishes_it(data, tmp_path):
    with small_disk(tmp_path / "disk", "600k") as disk:
        args = [arg.replace(str(tmp_path / "runs"), str(disk / "runs")) for arg in
                sweep_flags(data, tmp_path, "disk", 2, ONE, **{**TRIAL, "max-epoch": 2})]
        # 600 kB hold the study, the first trial's best.pth and events, not its last.pth as well;
        # the checkpoint thread may fill the disk while the trial reports its epoch, so the
        # write that fails is a checkpoint or the journal's lock
        full = run_cli(*args)
        one_line(full, 1, rf"cannot (write {re.escape(str(disk))}/runs/disk/trial-0/(last|best).pth|create the lock file "
                          rf"{re.escape(str(disk))}/runs/disk/optuna.journal.lock): no space left on "
                          rf"device; .*; trial 0 is handed back \(what it saved is kept\): fix that and run the sweep "
                          rf"again, which resumes it")
        assert not (disk / "runs" / "disk" / "trial-0" / leases.LEASE).exists()
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # space freed
        again = run_cli(*args)
        assert again.returncode == 0, again.stderr
        assert "trial 0, resuming it (its worker stopped and released it)" in again.stderr
        trials = records(disk / "runs" / "disk" / "optuna.journal")
        assert sum(r["op_code"] == 6 and r["state"] == 1 for r in trials) == 2  # exactly --trials complete

        # A disk already full when a worker starts: whichever write fails first (the study's
        # lock link, an append, or the lease of the trial it just asked for), one line, and
        # every record stays whole.
        fill(disk)
        more_args = [arg.replace("--trials=2", "--trials=3") for arg in args]
        more = run_cli(*more_args)
        one_line(more, 1, rf"cannot (append to|write|create the lock file) {re.escape(str(disk))}/runs/disk/\S+: no space "
                          rf"left on device; .*")
        assert len(records(disk / "runs" / "disk" / "optuna.journal")) >= len(trials)
        (disk / "filler").unlink()
        finish = run_cli(*more_args)
        assert finish.returncode == 0, finish.stderr
        trials = records(disk / "runs" / "disk" / "optuna.journal")
        assert sum(r["op_code"] == 6 and r["state"] == 1 for r in trials) == 3


def test_a_journal_broken_in_the_middle_is_one_line_and_repair_keeps_every_record(data, tmp_path):
    args = sweep_flags(data, tmp_path, "mend", 2, ONE, **TRIAL)
    assert run_cli(*args).returncode == 0
    path = journal(tmp_path, "mend")
    lines = path.read_bytes().splitlines(keepends=True)
    # What Optuna's own backend leaves when a worker dies inside an append and another appends
    # after it: a record cut in half with the next one glued to it; and a line of junk.
    cut = 4
    broken = lines[:cut] + [lines[cut][:len(lines[cut]) // 2] + lines[cut + 1]] + lines[cut + 2:] + [b"junk\n"]
    path.write_bytes(b"".join(broken))
    for command in (["sweep", "--study=mend", f"--checkpoint-dir={tmp_path / 'runs'}", "--summary"], args):
        one_line(run_cli(*command), 1, rf"the study journal {re.escape(str(path))} is damaged: line {cut + 1} is not an "
                                       rf"Optuna record; `.* sweep --study=mend --checkpoint-dir={tmp_path / 'runs'} "
                                       rf"--repair` keeps every readable record in order and backs the file up first")
    assert path.read_bytes() == b"".join(broken)  # nothing written by the refusals

    live = leases.Lease(tmp_path / "runs" / "mend" / "trial-1", 300).claim()  # this process: a live worker
    one_line(run_cli("sweep", "--study=mend", f"--checkpoint-dir={tmp_path / 'runs'}", "--repair"), 1,
             r"study mend has running workers \(trial-1 holds a live lease\); stop them before --repair")
    live.path.unlink()
    assert path.read_bytes() == b"".join(broken)
    repaired = run_cli("sweep", "--study=mend", f"--checkpoint-dir={tmp_path / 'runs'}", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    backups = list(path.parent.glob("optuna.journal.broken-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == b"".join(broken)
    total = len(broken)
    assert repaired.stdout.strip() == (f"repaired {path}: kept {total - 1} of {total} records (1 recovered from behind a "
                                       f"record cut by a killed writer, which is lost), dropped 1 line that holds no "
                                       f"record (line {total}); the original is saved as {backups[0]}")
    kept = records(path)
    assert kept == [json.loads(line) for line in lines[:cut] + lines[cut + 1:]]  # in order, only the cut one lost
    summary = run_cli("sweep", "--study=mend", f"--checkpoint-dir={tmp_path / 'runs'}", "--summary")
    assert summary.returncode == 0, summary.stderr
    intact = run_cli("sweep", "--study=mend", f"--checkpoint-dir={tmp_path / 'runs'}", "--repair")
    assert intact.stdout.strip() == f"{path} is intact: {len(kept)} records, nothing to repair"
    # the trial whose tell was cut is stale, and the next worker tells it again from its run dir
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert [state for _, state in states(study_of(tmp_path, "mend"))] == ["COMPLETE", "COMPLETE"]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("done")
    result = run_cli(*sweep_flags(data, folder, "done", 1, ONE, **TRIAL))
    assert result.returncode == 0, result.stderr
    return folder


def damage(study_dir, what):
    path = study_dir / ("sweep.yaml" if what.startswith("record") else "optuna.journal")
    path.unlink()
    if what == "journal a folder":
        path.mkdir()
    elif what == "journal binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif what == "journal junk":
        path.write_text("this is not a journal\nat all\n")
    elif what == "journal empty":
        path.write_bytes(b"")
    elif what == "record invalid YAML":
        path.write_text("study: [done\n")
    elif what == "record not a record":
        path.write_text("- just\n- a list\n")
    elif what == "record a folder":
        path.mkdir()
    elif what == "record a FIFO":
        os.mkfifo(path)  # reading it would block for ever


DAMAGE = [
    ("journal a folder", 1, r"{journal} is a folder; it must be the study's journal file: move the folder away"),
    ("journal binary", 1, r"the study journal {journal} is damaged: line 1 is not an Optuna record; .*--repair.*"),
    ("journal junk", 1, r"the study journal {journal} is damaged: line 1 is not an Optuna record; .*--repair.*"),
    ("record invalid YAML", 1, r"{record} is not a valid sweep record \({record}:2:1: invalid YAML: .*\); restore it, "
                               r"or delete it \(the next worker writes it again from its own options\)"),
    ("record not a record", 1, r"{record} is not a valid sweep record \(not a mapping\); restore it, or delete it .*"),
    ("record a folder", 1, r"{record} is a folder, not the study's record; move it away"),
    ("record a FIFO", 1, r"{record} is not a valid sweep record \({record}: invalid YAML: not a regular file\); .*"),
]


@pytest.mark.parametrize("what, code, message", DAMAGE, ids=[case[0] for case in DAMAGE])
def test_junk_in_place_of_the_journal_or_the_record_is_one_line_for_summary_and_worker(finished, data, tmp_path, what,
                                                                                      code, message):
    import shutil

    shutil.copytree(finished / "runs", tmp_path / "runs")
    study_dir = tmp_path / "runs" / "done"
    damage(study_dir, what)
    before = tree(tmp_path / "runs")
    pattern = message.format(journal=re.escape(str(study_dir / "optuna.journal")),
                             record=re.escape(str(study_dir / "sweep.yaml")))
    summary = run_cli("sweep", "--study=done", f"--checkpoint-dir={tmp_path / 'runs'}", "--summary")
    one_line(summary, code, pattern)
    worker = run_cli(*sweep_flags(data, tmp_path, "done", 2, ONE, **TRIAL))
    one_line(worker, code, pattern)
    assert tree(tmp_path / "runs") == before
    listing = run_cli("runs", f"--checkpoint-dir={tmp_path / 'runs'}")  # a row (or no study), not a crash
    assert listing.returncode == 0, listing.stderr


def test_an_emptied_journal_is_refused_before_new_trials_collide_with_the_runs(finished, data, tmp_path):
    import shutil

    shutil.copytree(finished / "runs", tmp_path / "runs")
    damage(tmp_path / "runs" / "done", "journal empty")
    one_line(run_cli("sweep", "--study=done", f"--checkpoint-dir={tmp_path / 'runs'}", "--summary"), 1,
             rf"study done is not in its storage {re.escape(str(tmp_path / 'runs' / 'done' / 'optuna.journal'))} yet")
    one_line(run_cli(*sweep_flags(data, tmp_path, "done", 2, ONE, **TRIAL)), 1,
             rf"{re.escape(str(tmp_path / 'runs' / 'done'))} holds the run of trial 0, but its storage knows 0 trials: "
             rf"the study's records were lost; restore them .*, or start another --study")


STORAGES = [
    ("not a URL", "not a url", 2, r"--storage='not a url' is not a database URL; give e.g. sqlite:///study.db or "
                                  r"postgresql://user@host/db, or leave --storage out for the journal file"),
    ("unknown scheme", "nosuchdb://host/x", 2, r"--storage=nosuchdb://host/x: unknown database 'nosuchdb'; .*"),
    ("driver missing, password hidden", "postgresql+psycopg2://bob:secret@localhost/x", 1,
     r"--storage=postgresql\+psycopg2://bob:\*\*\*@localhost/x needs the Python package psycopg2-binary \(the driver of "
     r"postgresql\+psycopg2\), which is not installed: .* -m pip install 'psycopg2-binary'"),
    ("in memory", "sqlite://", 2, r"--storage=sqlite://: an in-memory database ends with its worker, .*"),
    ("folder missing", "sqlite:///{tmp}/nowhere/study.db", 1,
     r"--storage=sqlite:///{tmp}/nowhere/study.db: the folder {tmp}/nowhere does not exist; create it, or give another "
     r"file"),
    ("not a database", "sqlite:///{tmp}/junk.db", 1, r"--storage=sqlite:///{tmp}/junk.db: {tmp}/junk.db is not an SQLite "
                                                     r"database; give another file"),
]


@pytest.mark.parametrize("record", ["with its sweep.yaml", "its journal alone"])
def test_a_copied_or_renamed_study_folder_is_named_and_nothing_is_appended(finished, data, tmp_path, record):
    """cp -a runs/done runs/moved: its journal and sweep.yaml hold study done; a sweep of
    --study=moved says so instead of adding a study to the copy and finding its runs unknown."""
    import shutil

    shutil.copytree(finished / "runs" / "done", tmp_path / "runs" / "moved")
    if record == "its journal alone":
        (tmp_path / "runs" / "moved" / "sweep.yaml").unlink()
    before = tree(tmp_path / "runs")
    one_line(run_cli(*sweep_flags(data, tmp_path, "moved", 2, ONE, **TRIAL)), 1,
             rf"{re.escape(str(tmp_path / 'runs' / 'moved'))} holds study done, not moved \(a study folder copied or "
             rf"renamed\?\); go on with it as --study=done in a folder of that name, or start another --study; nothing "
             rf"was written")
    assert tree(tmp_path / "runs") == before


def test_a_relative_data_folder_naming_the_recorded_one_is_the_same_option(finished, data, tmp_path):
    import shutil

    shutil.copytree(finished / "runs", tmp_path / "runs")
    flags = [arg for arg in sweep_flags(data, tmp_path, "done", 2, ONE, **TRIAL) if not arg.startswith("--train-data-")]
    relative = os.path.relpath(data / "train", tmp_path)
    result = run_cli(*flags, f"--train-data-root={relative}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sweep done: 2 of 2 trials finished" in result.stdout


@pytest.mark.parametrize("url, code, message", [case[1:] for case in STORAGES], ids=[case[0] for case in STORAGES])
def test_a_bad_storage_url_is_one_line_before_anything_is_written(data, tmp_path, url, code, message):
    (tmp_path / "junk.db").write_text("not sqlite")
    before = tree(tmp_path)
    url = url.format(tmp=tmp_path)
    result = run_cli(*sweep_flags(data, tmp_path, "db", 1, ONE, storage=url, **TRIAL))
    one_line(result, code, message.format(tmp=re.escape(str(tmp_path))))
    assert "secret" not in result.stderr
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k != "db.yaml"} == {k: v for k, v in before.items() if k != "db.yaml"}


def test_sweep_yaml_is_written_only_once_the_data_was_read_so_the_corrected_command_works(data, tmp_path):
    wrong = sweep_flags(data, tmp_path, "fix", 1, ONE, **{**TRIAL, "train-data-root": tmp_path / "nowhere"})
    one_line(run_cli(*wrong), 1, r"data folder '.*nowhere' does not exist; .*")
    assert not (tmp_path / "runs" / "fix").exists()
    fixed = run_cli(*sweep_flags(data, tmp_path, "fix", 1, ONE, **TRIAL))
    assert fixed.returncode == 0, fixed.stderr
    assert states(study_of(tmp_path, "fix")) == [(0, "COMPLETE")]


def test_a_study_and_a_run_are_not_mistaken_for_each_other(finished, data, tmp_path):
    runs = finished / "runs"
    one_line(run_cli("train", f"--checkpoint-dir={runs}", "--env=done"), 2,
             rf"{re.escape(str(runs / 'done'))} is a sweep's study, not a run; give another --env \(its trials: `.* sweep "
             rf"--study=done --checkpoint-dir={re.escape(str(runs))} --summary`\)")
    one_line(run_cli("train", f"--checkpoint-dir={runs}", "--env=done", "--resume"), 2, r".* is a sweep's study, not a run.*")
    trial_runs = runs / "done"  # its trials are runs: a study named after one is refused
    for extra in (["--summary"], ["--trials=1", f"--search-space={tmp_path / 's.yaml'}"]):
        (tmp_path / "s.yaml").write_text(ONE)
        one_line(run_cli("sweep", "--study=trial-0", f"--checkpoint-dir={trial_runs}", *extra), 2,
                 rf"--study=trial-0: {re.escape(str(trial_runs / 'trial-0'))} holds a train run, not a sweep's study; "
                 rf"give another --study")


def test_read_only_commands_create_no_file_or_folder(finished, tmp_path):
    runs = finished / "runs"
    before = tree(finished)
    commands = [
        ["runs", f"--checkpoint-dir={runs}"],
        ["sweep", "--study=done", f"--checkpoint-dir={runs}", "--summary"],
        ["sweep", "--study=nothing", f"--checkpoint-dir={runs}", "--summary"],
        ["help"],
        ["val", f"--checkpoint-dir={runs / 'done'}", "--env=trial-0", f"--train-data-root={tmp_path / 'nowhere'}"],
        ["test", f"--checkpoint-dir={runs / 'done'}", "--env=trial-0", f"--test-data-root={tmp_path / 'nowhere'}",
         f"--result-file={finished / 'new' / 'result.csv'}"],
    ]
    for command in commands:
        run_cli(*command, cwd=tmp_path)
        assert tree(finished) == before, command
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_a_sweep_prints_the_sweep_command_that_continues_it(data, tmp_path):
    args = sweep_flags(data, tmp_path, "stop", 1, ONE, **TRIAL)
    stopped = run_cli(*args, env={"RUNNER_FAULT_AT_STEP": "2:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped (SIGINT); saved {tmp_path / 'runs' / 'stop' / 'trial-0' / 'last.pth'}. Resume: ")
    command = shlex.split(last.split("Resume: ", 1)[1])
    assert command[:2] == shlex.split(typed()) and command[2:] == list(map(str, args))
    again = run_cli(*command[2:])
    assert again.returncode == 0, again.stderr
    assert "trial 0, resuming it (its worker stopped and released it)" in again.stderr
    assert states(study_of(tmp_path, "stop")) == [(0, "COMPLETE")]


BIG_SPACES = [
    ("grid past a million points", "sampler: grid\nparams:\n  lr_step: {low: 1, high: 2000}\n  print_freq: {low: 1, high: 2000}\n",
     r"the grid has 4,000,000 points, more than the 1,000,000 a grid sweep may have \(its sampler lists every point\); "
     r"search fewer values, or use sampler: tpe or random"),
    ("step larger than its range", "params:\n  lr_step: {low: 2, high: 10, step: 20}\n",
     r"option --lr-step: step 20 is larger than the range 2..10, so only 2 would ever run; give a smaller step, or a "
     r"list of choices"),
    ("range not whole steps", "params:\n  lr: {low: 0.1, high: 0.35, step: 0.1}\n",
     r"option --lr: the range 0.1..0.35 is not a whole number of steps of 0.1; give high: 0.3 \(or another step\)"),
    ("billion laughs", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + "params:\n  lr: [0.1]\n",
     r"line \d+: not valid YAML \(expands to more than 100,000 values \(aliases of aliases\?\); a runner file is far "
     r"smaller\)"),
    ("duplicate key", "params:\n  lr: [0.1]\n  lr: [0.2]\n",
     r"line 3: not valid YAML \(key 'lr' appears twice \(first on line 2\); keep one\)"),
]


@pytest.mark.parametrize("space, message", [case[1:] for case in BIG_SPACES], ids=[case[0] for case in BIG_SPACES])
def test_a_search_space_too_large_or_hostile_is_one_line_in_a_blink(data, tmp_path, space, message):
    import time

    import main

    started = time.perf_counter()
    with contextlib.redirect_stderr(__import__("io").StringIO()) as err:
        code = main.main(sweep_flags(data, tmp_path, "big", 3, space))
    assert code == 2 and time.perf_counter() - started < 1.0, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"error: --search-space={re.escape(str(tmp_path / 'big.yaml'))}: {message}",
                                            lines[0]), lines
    assert not (tmp_path / "runs").exists()
