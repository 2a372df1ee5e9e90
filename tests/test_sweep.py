"""`python main.py sweep`: Optuna studies whose trials are ordinary, resumable runs.

Workers in parallel finish exactly --trials trials; a worker killed with SIGKILL leaves its
trial to the next one, which resumes it bit for bit; SIGTERM releases the trial at once; the
pruner prunes and the pruned trial keeps its checkpoint; a failing trial is retried
--retries times; bad search spaces are one line and exit 2 before anything is written.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time

import optuna
import pytest
import torch
from conftest import ROOT, load, make_dogcat, run_cli, typed
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

import main
from utils.sweep import lease as leases

SPACE = """\
pruner: none
params:
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  batch_size: [4, 8]
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "data"
    make_dogcat(root, per_class=8, test_images=3, extras=False)
    return root


def sweep_flags(data, folder, study, trials, space_text=SPACE, **extra):
    space = folder / f"{study}.yaml"
    space.write_text(space_text)
    flags = {"study": study, "trials": trials, "search-space": space, "train-data-root": data / "train",
             "checkpoint-dir": folder / "runs", "model": "LeNet", "image-size": 16, "num-workers": 0, "max-epoch": 2,
             "progress": "false", "debug-file": "", "threads": 1}
    flags.update(extra)
    return ["sweep", *(f"--{key}={value}" for key, value in flags.items())]


def start(args, env=None):
    """A worker in a process of its own (the tests run several at once)."""
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def study_of(folder, name):
    storage = JournalStorage(JournalFileBackend(str(folder / "runs" / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def states(study):
    return sorted((t.number, t.state.name) for t in study.get_trials(deepcopy=False))


@pytest.mark.slow  # real interpreters, started together or killed
def test_two_workers_in_parallel_finish_exactly_n_trials(data, tmp_path):
    args = sweep_flags(data, tmp_path, "pair", 5, **{"max-epoch": 1})
    workers = [start(args), start(args)]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    study = study_of(tmp_path, "pair")
    assert states(study) == [(n, "COMPLETE") for n in range(5)]
    ran = [int(out.split("this worker ran ")[1].split(" trial")[0]) for out, _ in outputs]
    assert sum(ran) == 5  # no trial run twice, none lost
    for number in range(5):
        trial_dir = tmp_path / "runs" / "pair" / f"trial-{number}"
        assert {"config.yaml", "last.pth", "best.pth", "status.json"} <= {p.name for p in trial_dir.iterdir()}
        assert not (trial_dir / leases.LEASE).exists()  # a finished trial holds no lease
        assert json.loads((trial_dir / "status.json").read_text())["status"] == "finished"
    seeds = {load(tmp_path / "runs" / "pair" / f"trial-{n}" / "last.pth")["config"]["seed"] for n in range(5)}
    assert len(seeds) == 5  # each trial its own seed, derived from --seed and its number


@pytest.mark.slow  # real interpreters, started together or killed
def test_a_killed_worker_leaves_its_trial_to_the_next_which_resumes_it_bit_exactly(data, tmp_path):
    space = "pruner: none\nparams:\n  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n"
    args = sweep_flags(data, tmp_path, "kill", 2, space, **{"max-epoch": 3, "batch-size": 4})  # --stale-after 300
    # 12 train images in batches of 4: step 7 opens epoch 3, so epoch 1's last.pth is on disk
    # (epoch 2's may still be in flight: the epoch-end write runs in the background)
    killed = start(args, env={"RUNNER_FAULT_AT_STEP": "7:SIGKILL"})
    killed.communicate(timeout=120)
    assert killed.returncode == -9
    study = study_of(tmp_path, "kill")
    assert states(study) == [(0, "RUNNING")]
    trial_dir = tmp_path / "runs" / "kill" / "trial-0"
    assert (trial_dir / "last.pth").is_file() and (trial_dir / leases.LEASE).is_file()
    summary = run_cli("sweep", "--study=kill", f"--checkpoint-dir={tmp_path / 'runs'}", "--summary")
    assert re.split(r"\s{2,}", summary.stdout.splitlines()[3])[:2] == ["0", "stale (resumable)"]

    # The same machine: the lease's pid is gone, so its trial is taken over at once (from
    # another machine, after --stale-after: test_a_lease_is_stale_when_old_or_its_owner_is_gone)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert f"trial 0, resuming it (its worker, pid {killed.pid} on this machine, is gone)" in again.stderr
    assert f"resuming {trial_dir / 'last.pth'}" in again.stderr
    assert states(study_of(tmp_path, "kill")) == [(0, "COMPLETE"), (1, "COMPLETE")]

    # The same trial uninterrupted: a plain train run of its config.yaml.
    reference = run_cli("train", f"--config={trial_dir / 'config.yaml'}", f"--checkpoint-dir={tmp_path / 'ref'}",
                        "--env=ref")
    assert reference.returncode == 0, reference.stderr
    resumed, straight = load(trial_dir / "last.pth"), load(tmp_path / "ref" / "ref" / "last.pth")
    assert resumed["epoch"] == straight["epoch"] == 3
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for index, value in straight["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][index]["exp_avg"], value["exp_avg"])
    assert study_of(tmp_path, "kill").trials[0].value == pytest.approx(resumed["best"]["value"], abs=0)


def test_sigterm_saves_and_releases_the_trial_so_a_requeued_worker_resumes_it_at_once(data, tmp_path):
    space = "pruner: none\nparams:\n  lr: [0.01, 0.02]\n"
    args = sweep_flags(data, tmp_path, "term", 1, space, **{"max-epoch": 2, "batch-size": 4})  # --stale-after: 300 s
    stopped = run_cli(*args, env={"RUNNER_FAULT_AT_STEP": "2:SIGTERM"})
    assert stopped.returncode == 143, stopped.stderr
    trial_dir = tmp_path / "runs" / "term" / "trial-0"
    assert not (trial_dir / leases.LEASE).exists()
    assert load(trial_dir / "last.pth")["step_in_epoch"] == 2
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "trial 0, resuming it (its worker stopped and released it)" in again.stderr
    assert states(study_of(tmp_path, "term")) == [(0, "COMPLETE")]


def test_the_pruner_ends_a_bad_trial_and_keeps_its_checkpoint(data, tmp_path):
    space = "pruner: {type: median, n_startup_trials: 1}\nparams:\n  lr: [0.003, 0.0]\n"
    args = sweep_flags(data, tmp_path, "prune", 2, space, **{"max-epoch": 3})
    # Queue the order (an Optuna feature the sweep keeps: enqueued trials run first): a
    # learning trial, then one with lr 0 that cannot beat it.
    study_dir = tmp_path / "runs" / "prune"
    study_dir.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(study_dir / "optuna.journal")))
    study = optuna.create_study(study_name="prune", storage=storage)
    study.enqueue_trial({"lr": 0.003})
    study.enqueue_trial({"lr": 0.0})
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert states(study_of(tmp_path, "prune")) == [(0, "COMPLETE"), (1, "PRUNED")]
    said = [line for line in (result.stdout + result.stderr).splitlines() if "pruned" in line]
    assert len(said) == 1 and "sweep prune: trial 1 pruned at epoch 1: val_logloss" in said[0], said  # said once
    reported = study_of(tmp_path, "prune").trials[1].intermediate_values
    assert list(reported) == [0]  # epoch 1 is Optuna's step 0 (n_warmup_steps: 1 spares it)
    pruned = study_dir / "trial-1"
    state = load(pruned / "last.pth")
    assert state["epoch"] == 1 and state["pruned"].startswith("pruned at epoch 1: val_logloss")
    assert (pruned / "best.pth").is_file()
    status = json.loads((pruned / "status.json").read_text())
    assert status["status"] == "pruned" and status["epoch"] == 1
    listing = run_cli("runs", f"--checkpoint-dir={study_dir}")
    assert "pruned (pruned at epoch 1: val_logloss" in listing.stdout
    # A pruned trial stays over: resuming it trains nothing and says how to go on.
    resumed = run_cli("train", f"--checkpoint-dir={study_dir}", "--env=trial-1", "--resume")
    assert resumed.returncode == 0 and "its sweep's pruner ended it" in resumed.stdout


def test_a_failing_trial_is_recorded_retried_once_and_three_failures_stop_the_worker(data, tmp_path):
    args = sweep_flags(data, tmp_path, "fail", 2)
    result = run_cli(*args, env={"RUNNER_FAULT_AT_STEP": "2:error"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: sweep fail: the last 3 trials of this worker failed")
    trials = study_of(tmp_path, "fail").trials
    # trial 1 is trial 0 again (--retries=1), not retried itself; trial 2 is new, and its
    # retry waits in the queue for the next worker
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING]
    assert all(t.user_attrs["error"] == "injected fault at step 2 (RUNNER_FAULT_AT_STEP)" for t in trials[:3])
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert "retry_of" not in trials[2].user_attrs and trials[3].user_attrs["retry_of"] == 2
    assert "queued again with the same parameters (retry 1 of 1)" in result.stderr
    assert "not retried (--retries=1)" in result.stderr


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    result = run_cli(*sweep_flags(data, folder, "done", 3))
    assert result.returncode == 0, result.stderr
    return folder


def test_summary_sorts_by_the_metric_and_its_command_reproduces_the_best_trial(finished, tmp_path):
    summary = run_cli("sweep", "--study=done", f"--checkpoint-dir={finished / 'runs'}", "--summary")
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert lines[0].startswith(f"study done in {finished / 'runs' / 'done'}: 3 complete; val_logloss, lower is better")
    header = lines[2].split()
    assert header[:4] == ["trial", "state", "val_logloss", "epochs"] and header[4:] == ["lr", "batch_size", "note"]
    values = [float(line.split()[2]) for line in lines[3:6]]
    assert values == sorted(values)
    study = study_of(finished, "done")
    best = min(study.trials, key=lambda t: t.value)
    assert lines[3].split()[0] == str(best.number) and lines[7].startswith(f"best: trial {best.number}, val_logloss")
    member = f"--env=done/trial-{best.number} --checkpoint-dir={finished / 'runs'}"
    assert lines[8:10] == [f"its run: {finished / 'runs' / 'done' / f'trial-{best.number}'}; test it: {typed()} test {member}",
                           f"check that it trains again bit for bit: {typed()} reproduce {member}"]
    command = next(line for line in lines if line.startswith("train it anew, in a run of its own: ")).split(": ", 1)[1]
    argv = shlex.split(command)
    assert argv[1].endswith("main.py") and argv[2] == "train" and argv[3] == "--experiment=classify"  # named, always
    assert argv[-1] == f"--checkpoint-dir={finished / 'runs'}"  # a new run beside the study, not in it
    again = run_cli(*argv[2:])  # verbatim
    assert again.returncode == 0, again.stderr
    ours = load(finished / "runs" / f"done-trial-{best.number}" / "last.pth")["model"]
    theirs = load(finished / "runs" / "done" / f"trial-{best.number}" / "last.pth")["model"]
    assert all(torch.equal(ours[key], value) for key, value in theirs.items())


def test_runs_shows_the_study_and_tensorboard_has_each_trials_hparams(finished):
    listing = run_cli("runs", f"--checkpoint-dir={finished / 'runs'}")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("sweeps")):]  # after the runs, if any
    assert lines[0].startswith(f"sweeps (their trials: {typed()} sweep --study=<study> --summary")
    assert lines[1].split() == ["study", "metric", "trials", "best", "params"]
    row = lines[2].split()
    best = min(study_of(finished, "done").trials, key=lambda t: t.value)
    assert row[:4] == ["done", "val_logloss", "3", "complete"] and row[4] == f"{best.value:.4f}"
    assert f"--batch-size={best.params['batch_size']}" in lines[2]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished / "runs" / "done" / f"trial-{best.number}"))
    events.Reload()
    assert "hparam/val_logloss" in events.Tags()["scalars"]
    assert events.Scalars("hparam/val_logloss")[0].value == pytest.approx(best.value, rel=1e-6)
    content = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content
    start_info = content["_hparams_/session_start_info"]
    assert b"batch_size" in start_info and b"trial_state" in start_info and b"complete" in start_info


def test_a_second_worker_must_bring_the_same_search_space_and_options(finished, data):
    other = sweep_flags(data, finished, "done", 3, SPACE.replace("[4, 8]", "[4, 16]"))
    result = run_cli(*other)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: study done was started with another search space (see "
                                     f"{finished / 'runs' / 'done' / 'sweep.yaml'}); give the same file, or start "
                                     f"another --study")
    changed = run_cli(*sweep_flags(data, finished, "done", 3, **{"model": "SqueezeNet"}))
    assert changed.returncode == 2 and "--model='LeNet' and this worker gives 'SqueezeNet'" in changed.stderr
    more = run_cli(*sweep_flags(data, finished, "done", 3, **{"device": "cpu"}))  # execution options may differ
    assert more.returncode == 0, more.stderr
    assert "sweep done: 3 of 3 trials finished; this worker ran 0 trials" in more.stdout


BAD_SPACES = [
    ("params:\n  lrr: {low: 0.001, high: 0.1}\n", "unknown option --lrr; did you mean --lr?"),
    ("params:\n  lr: {low: 0.1, high: 0.01}\n", "option --lr: low (0.1) must be below high (0.01)"),
    ("params:\n  lr: {low: 0, high: 0.1, log: true}\n", "option --lr: a log range needs low > 0, got 0.0"),
    ("params:\n  optimizer: {low: 1, high: 2}\n", "option --optimizer is a str option: give a list of choices"),
    ("params:\n  optimizer: [adam, adamm]\n", "option --optimizer = 'adamm' cannot run: option --optimizer must be one of"),
    ("params:\n  batch_size: {low: 0, high: 8}\n", "option --batch-size = 0 cannot run: option --batch-size must be >= 1"),
    ("params:\n  batch_size: {low: 2.5, high: 8}\n", "option --batch-size is an integer option: low must be an integer"),
    ("params:\n  batch_size: []\n", "option --batch-size: the list of choices is empty"),
    ("params:\n  lr: {low: 0.001, hihg: 0.1}\n", "option --lr: unknown key 'hihg' in its range"),
    ("params:\n  seed: [1, 2]\n", "option --seed cannot be searched: each trial's seed is derived from --seed"),
    ("params:\n  model: [LeNet]\n", "option --model is searched here and also given on the command line"),
    ("lr: {low: 0.001, high: 0.1}\n", "option lr is at the top level; options to search go under `params:`"),
    ("params: {}\n", "`params:` must map at least one option"),
    ("metric: val_acc\nparams:\n  lr: [0.1]\n", "metric 'val_acc' is not one of experiment classify's"),
    ("direction: maximize\nparams:\n  lr: [0.1]\n", "direction 'maximize' contradicts val_logloss, where lower is better"),
    ("sampler: bayes\nparams:\n  lr: [0.1]\n", "sampler 'bayes' is not one of tpe, random, grid"),
    ("pruner: {type: median, patience: 2}\nparams:\n  lr: [0.1]\n", "pruner median takes n_startup_trials"),
    ("sampler: grid\nparams:\n  lr: {low: 0.001, high: 0.1}\n", "the grid sampler needs a list of values for --lr"),
    ("sampler: grid\nparams:\n  lr: [0.1, 0.01]\n", "the grid has 2 points and --trials=3 would repeat them"),
    ("params:\n  lr: [0.1\n", "not valid YAML"),
]


@pytest.mark.parametrize("space, message", BAD_SPACES, ids=[m.split(":")[0][:40] for _, m in BAD_SPACES])
def test_a_bad_search_space_is_one_line_and_exit_2_before_anything_is_written(data, tmp_path, space, message, capsys):
    # main.main in this process: the search space is checked before torch or optuna would load
    code = main.main(sweep_flags(data, tmp_path, "bad", 3, space))
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --search-space=") and message in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_a_bad_search_space_from_the_command_line(data, tmp_path):
    result = run_cli(*sweep_flags(data, tmp_path, "bad", 3, BAD_SPACES[0][0]))
    assert result.returncode == 2
    assert result.stderr == (f"error: --search-space={tmp_path / 'bad.yaml'}: unknown option --lrr; did you mean --lr? "
                             f"(`{typed()} help` lists every option)\n")


@pytest.mark.parametrize("flags, message", [
    (["--trials=3", "--search-space=x.yaml"], "sweep needs --study=<name>"),
    (["--study=a", "--search-space=x.yaml"], "sweep needs --trials=<how many finished trials>"),
    (["--study=a", "--trials=0", "--search-space=x.yaml"], "option --trials must be >= 1; got 0"),
    (["--study=a/b", "--trials=2", "--search-space=x.yaml"], "--study names a folder under --checkpoint-dir"),
    (["--study=a", "--trials=2", "--search-space=x.yaml", "--env=mine"], "drop --env"),
    (["--study=a", "--trials=2", "--search-space=x.yaml", "--stale-after=0"], "option --stale-after must be > 0"),
    (["--study=a", "--trials=2", "--search-space=missing.yaml"], "--search-space=missing.yaml: no such file"),
])
def test_bad_sweep_options_are_one_line_and_exit_2(flags, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main.main(["sweep", *flags])  # in this process: these fail before threads or torch are set up
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_the_summary_of_a_study_that_does_not_exist_names_how_to_start_one(tmp_path):
    result = run_cli("sweep", "--study=a", f"--checkpoint-dir={tmp_path}", "--summary")
    assert result.returncode == 1
    assert result.stderr == (f"error: no study in {tmp_path / 'a'} (no sweep.yaml); start one with `{typed()} sweep "
                             f"--study=a --trials=N --search-space=FILE`, or list them with `{typed()} runs`\n")


def test_the_lease_is_renewed_on_a_timer_and_taken_over_only_when_stale(tmp_path):
    run_dir = tmp_path / "trial-0"
    run_dir.mkdir()
    assert leases.is_stale(run_dir, 0.5)  # no lease: its worker died before writing one
    mine = leases.Lease(run_dir, 0.5).claim().start()
    time.sleep(1.5)  # three stale-after periods in which the main thread does nothing
    assert not leases.is_stale(run_dir, 0.5)
    mine.check()
    mine.stop()
    time.sleep(0.7)
    assert leases.is_stale(run_dir, 0.5)
    theirs = leases.Lease(run_dir, 0.5).claim(takeover_of=leases.read(run_dir / leases.LEASE))
    assert leases.read(run_dir / leases.LEASE)["took_over"]["token"] == mine.token
    assert mine.renew() is False  # a late renewal does not undo the takeover
    assert leases.read(run_dir / leases.LEASE)["token"] == theirs.token
    with pytest.raises(leases.LeaseLost, match="trial trial-0 was taken over by .* it writes nothing more there"):
        mine.check()
    mine.release()  # not ours any more: left alone
    assert leases.read(run_dir / leases.LEASE)["token"] == theirs.token
    theirs.release()
    assert not (run_dir / leases.LEASE).exists()


def test_a_worker_that_lost_its_trial_writes_nothing_more_to_it(data, tmp_path, monkeypatch):
    """The engine checks the lease before every write: once another worker holds the trial,
    this one raises LeaseLost and leaves the run dir (checkpoints, status) to it."""
    from configs import load_config
    from utils.engine import loop as engine

    run_dir = tmp_path / "runs" / "trial-0"
    run_dir.mkdir(parents=True)
    mine = leases.Lease(run_dir, 60).claim()

    class Hooks:
        def epoch_end(self, epoch, metrics):
            leases.Lease(run_dir, 60).claim(takeover_of="test")  # another worker takes over now
            return None

        def check_owner(self):
            mine.check()

    cfg = load_config({"train_data_root": str(data / "train"), "checkpoint_dir": str(tmp_path / "runs"),
                       "env": "trial-0", "model": "LeNet", "image_size": 16, "num_workers": 0, "max_epoch": 2,
                       "progress": False, "debug_file": "", "visualizer": "none"})
    with pytest.raises(leases.LeaseLost):
        engine.train(cfg, trial=Hooks())
    assert not (run_dir / "last.pth").exists() and not (run_dir / "best.pth").exists()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"  # written while it was ours


def test_help_lists_sweep_and_its_options():
    overview = run_cli("help")
    assert "  sweep     one worker of an Optuna study" in overview.stdout
    own = run_cli("sweep", "--help")
    assert own.returncode == 0
    for name in ("--study", "--trials", "--search-space", "--storage", "--stale-after", "--retries", "--summary"):
        assert f"    {name} " in own.stdout, name
    assert "--stale-after   number = 300.0" in own.stdout and len(own.stdout.splitlines()) < 60
    for text in (own.stdout, overview.stdout):  # the search spaces the examples name are shipped
        for path in re.findall(r"--search-space=(\S+)", text):
            assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("space, base", [("demo.yaml", {}), ("dogcat.yaml", {"config": "configs/dogcat.yaml"})])
def test_the_shipped_search_spaces_hold_for_the_commands_their_headers_show(space, base):
    from configs import load_config
    from utils.sweep.space import read_space

    checked = read_space(ROOT / "configs" / "sweeps" / space, load_config(base), set(), 6)
    assert checked.direction == "minimize"
    assert checked.metric == ("val_logloss" if space == "demo.yaml" else "val_logloss_ema")  # the preset's --monitor


def test_an_rdb_storage_by_url_holds_the_study_and_runs_finds_it(data, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = run_cli(*sweep_flags(data, tmp_path, "rdb", 2, **{"storage": url, "max-epoch": 1}))
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="rdb", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert not (tmp_path / "runs" / "rdb" / "optuna.journal").exists()
    listing = run_cli("runs", f"--checkpoint-dir={tmp_path / 'runs'}")
    assert "rdb    val_logloss  2 complete" in listing.stdout
    summary = run_cli("sweep", "--study=rdb", f"--checkpoint-dir={tmp_path / 'runs'}", "--summary")
    assert summary.returncode == 0 and ": 2 complete; val_logloss" in summary.stdout.splitlines()[0]
    journal = run_cli(*sweep_flags(data, tmp_path, "rdb", 2, **{"max-epoch": 1}))  # the study's own storage, not given
    assert journal.returncode == 2
    assert f"study rdb keeps its trials in {url}" in journal.stderr and f"give --storage={url}" in journal.stderr


def test_the_grid_sampler_runs_every_point_once(data, tmp_path):
    space = "sampler: grid\npruner: none\nparams:\n  lr: [0.001, 0.01]\n  batch_size: [4, 8]\n"
    result = run_cli(*sweep_flags(data, tmp_path, "grid", 4, space, **{"max-epoch": 1}))
    assert result.returncode == 0, result.stderr
    trials = study_of(tmp_path, "grid").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted((t.params["lr"], t.params["batch_size"]) for t in trials) == [(0.001, 4), (0.001, 8), (0.01, 4),
                                                                                (0.01, 8)]
    for trial in trials:  # what each trial trained with is what the study recorded
        config = load(tmp_path / "runs" / "grid" / f"trial-{trial.number}" / "last.pth")["config"]
        assert (config["lr"], config["batch_size"]) == (trial.params["lr"], trial.params["batch_size"])


def test_a_lease_is_stale_when_old_or_its_owner_is_gone(tmp_path):
    run_dir = tmp_path / "trial-0"
    run_dir.mkdir()
    lease = leases.Lease(run_dir, 60).claim()
    record = leases.read(run_dir / leases.LEASE)
    assert not leases.is_stale(run_dir, 60)  # ours, alive, fresh

    def with_owner(**changes):
        (run_dir / leases.LEASE).write_text(json.dumps({**record, **changes}))

    dead = subprocess.Popen(["true"])
    dead.wait()
    with_owner(pid=dead.pid)
    assert leases.is_stale(run_dir, 60)  # this machine, this PID namespace, no such process
    with_owner(pid=dead.pid, host="another-machine")
    assert not leases.is_stale(run_dir, 60)  # cannot be told from here: only its age counts
    with_owner(pid=dead.pid, pid_namespace="pid:[1]")
    assert not leases.is_stale(run_dir, 60)  # another container with this host name
    old = time.time() - 61
    os.utime(run_dir / leases.LEASE, (old, old))
    assert leases.is_stale(run_dir, 60)  # not renewed for --stale-after
    lease.stop()


def test_each_searched_value_is_checked_with_the_metric_and_the_other_options(tmp_path):
    """A trial's --monitor is the metric, and the other searched options come with it: an
    --ema of 0 cannot keep best.pth by val_logloss_ema, while the same space without 0 can."""
    from configs import load_config
    from configs.loader import UsageError
    from utils.sweep.space import read_space

    space = tmp_path / "space.yaml"
    space.write_text("metric: val_logloss_ema\nparams:\n  ema: [0.0, 0.99]\n  lr: [0.01]\n")
    with pytest.raises(UsageError, match=r"option --ema = 0.0 cannot run: .*the _ema metrics need --ema"):
        read_space(space, load_config({}), set(), 2)
    space.write_text("metric: val_logloss_ema\nparams:\n  ema: [0.9, 0.99]\n  lr: [0.01]\n")
    assert read_space(space, load_config({}), set(), 2).metric == "val_logloss_ema"
