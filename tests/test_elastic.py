"""One idempotent train command (--resume=auto), checkpoints inside an epoch (--save-every),
restarts recorded, the global batch kept at another world size (CPU, tiny data).

The torchrun parts (--max-restarts, a lost node) are in test_distributed.py, beside its
other launches."""
import hashlib
import json
import os

import pytest

from conftest import load, make_dogcat, run_cli, tiny_flags
from test_resume import assert_same_training_state
from utils.core.errors import UsageError

# 28 train images, batch 4: 7 steps per epoch, 14 in all.
FLAGS = {"max-epoch": 2, "resume": "auto"}
STEPS_PER_EPOCH = 7


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny data and an uninterrupted run started by --resume=auto."""
    tmp_path = tmp_path_factory.mktemp("elastic")
    make_dogcat(tmp_path / "data", per_class=20, test_images=3)
    result = run_cli("train", *flags(tmp_path, "reference"))
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr  # nothing to resume: a fresh run
    return tmp_path


def flags(tmp_path, env, **extra):
    return tiny_flags(tmp_path / "data", tmp_path, env=env, **{**FLAGS, **extra})


def files_of(folder):
    """{relative path: (bytes' sha256, mtime in ns)} of every file under `folder`."""
    return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_finished_run_started_again_trains_nothing_and_touches_no_file(setup):
    run_dir = setup / "runs" / "reference"
    before = files_of(run_dir)
    again = run_cli("train", *flags(setup, "reference"))
    assert again.returncode == 0, again.stderr
    [line] = again.stdout.splitlines()
    assert line.startswith("already finished: run reference, 2 of --max-epoch=2 epochs done; nothing trained. Train it "
                           "further: ")
    assert line.endswith(f"main.py train --env=reference --checkpoint-dir={setup / 'runs'} --resume --max-epoch=3")
    assert files_of(run_dir) == before
    assert not any(name.endswith(".tmp") for name in os.listdir(run_dir))


def test_a_kill_costs_at_most_save_every_steps_and_the_restart_ends_bit_identical(setup):
    """kill -9 before step 12 (epoch 2, step 5) of a run saving every 3 steps: last.pth holds
    step 9, so the restart redoes 2 steps, not 4, and ends where the uninterrupted run did."""
    killed = run_cli("train", *flags(setup, "killed", **{"save-every": 3}), env={"RUNNER_FAULT_AT_STEP": "12:SIGKILL"})
    assert killed.returncode == -9, killed.stderr
    run_dir = setup / "runs" / "killed"
    saved = load(run_dir / "last.pth")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 2, 9)
    assert 11 - saved["global_step"] <= 3  # steps 10 and 11 are redone
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"  # it never said goodbye

    restarted = run_cli("train", *flags(setup, "killed", **{"save-every": 3}))
    assert restarted.returncode == 0, restarted.stderr
    assert f"resuming {run_dir / 'last.pth'} in epoch 2 of 2: steps 1-2 were done, it goes on with step 3" \
        in restarted.stderr
    assert_same_training_state(load(run_dir / "last.pth"), load(setup / "runs" / "reference" / "last.pth"))


def test_options_that_change_the_run_are_named_together_and_nothing_starts(setup):
    run_dir = setup / "runs" / "reference"
    before = files_of(run_dir)
    result = run_cli("train", *flags(setup, "reference", lr=0.5, seed=3))
    assert result.returncode == 2
    assert "error: --seed=3 (it has 0), --lr=0.5 (it has 0.01) would change the resumed run; only --env, " in result.stderr
    assert files_of(run_dir) == before


def test_an_unreadable_last_checkpoint_falls_back_to_the_newest_whole_one(setup):
    """last.pth cut short (a copy that did not finish, a bad disk): the newest epoch_<n>.pth
    that loads is resumed, with a warning; the run ends as the uninterrupted one."""
    first = run_cli("train", *flags(setup, "cut", **{"max-epoch": 1, "keep-checkpoints": 1}))
    assert first.returncode == 0, first.stderr
    last = setup / "runs" / "cut" / "last.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    resumed = run_cli("train", *flags(setup, "cut", **{"keep-checkpoints": 1}))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{last} is unreadable (" in resumed.stderr and "resuming from epoch_1.pth, the newest complete" in resumed.stderr
    assert_same_training_state(load(last), load(setup / "runs" / "reference" / "last.pth"))

    for path in (setup / "runs" / "cut").glob("*.pth"):  # nothing whole is left
        path.write_bytes(b"PK\x03\x04 cut")
    hopeless = run_cli("train", *flags(setup, "cut", **{"keep-checkpoints": 1}))
    assert hopeless.returncode == 1
    assert f"error: cannot resume {setup / 'runs' / 'cut'}: {last} is unreadable (" in hopeless.stderr
    assert "no other checkpoint of the run is complete; train it anew under another --env" in hopeless.stderr


def test_resume_auto_needs_a_run_name(setup):
    result = run_cli("train", "--resume=auto", f"--checkpoint-dir={setup / 'runs'}")
    assert result.returncode == 2
    assert "error: --resume=auto needs --env=<run name> (a folder under --checkpoint-dir)" in result.stderr


@pytest.mark.parametrize("value, expected", [("500", ("steps", 500)), ("10m", ("seconds", 600.0)),
                                             ("90s", ("seconds", 90.0)), ("1.5h", ("seconds", 5400.0)),
                                             ("", None), ("0", None)])
def test_save_every_reads_steps_or_a_time(value, expected):
    from configs.values import save_interval

    assert save_interval(value) == expected


@pytest.mark.parametrize("value", ["abc", "1.5", "-3", "0m", "10 minutes", "1e3"])
def test_a_save_every_that_is_neither_is_refused_with_its_forms(value):
    from configs.values import save_interval

    with pytest.raises(UsageError, match=r"--save-every must be a number of steps \(e.g. 500\) or a time"):
        save_interval(value)


def test_a_timed_save_is_rank_0s_clock_and_waits_for_the_end_of_an_accumulation_group(monkeypatch):
    from configs import load_config
    from utils.engine import elastic

    clock = [100.0]
    monkeypatch.setattr(elastic.time, "monotonic", lambda: clock[0])
    written = []

    class Checkpoints:
        def save_last(self, state, background=False):
            written.append((state, background))

    saves = elastic.MidEpochSaves(load_config({"save_every": "2m"}), Checkpoints(), lambda: "state")
    assert not saves.wanted(1)
    clock[0] += 120
    assert saves.wanted(2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not saves.wanted(2)  # another rank's clock does not decide
    assert not saves.after_step(True, group_end=False) and written == []  # owed: inside a group
    assert saves.after_step(False, group_end=True) and written == [("state", True)]
    assert not saves.after_step(False, group_end=True)  # once


LAUNCH = {"world": 8, "batch_size": 4, "accumulate": 1}  # a global batch of 32


@pytest.mark.parametrize("world, expected", [
    (8, (4, 1)),  # the launch's own world
    (4, (8, 1)),  # a node of two lost: each process takes twice the images, the steps stay
    (1, (32, 1)),
    (16, (2, 1)),
    (32, (1, 1)),
])
def test_the_global_batch_is_kept_at_another_world_size(world, expected):
    from utils.engine.elastic import fit_global_batch

    batch, steps, layout, note = fit_global_batch(LAUNCH, world)
    assert (batch, steps) == expected and world * batch * steps == 32
    assert layout == LAUNCH  # fitted from the launch every time: back under 8 it is 4 again
    assert (note is None) == (world == 8)


def test_accumulation_takes_the_change_when_the_batch_cannot():
    from utils.engine.elastic import fit_global_batch

    launch = {"world": 1, "batch_size": 6, "accumulate": 4}  # 24
    assert fit_global_batch(launch, 2)[:2] == (3, 4)  # the batch divides
    assert fit_global_batch(launch, 8)[:2] == (3, 1)  # 3 per process: the batch of 6 cannot, accumulate 4 -> 1
    launch = {"world": 1, "batch_size": 4, "accumulate": 3}  # 12
    assert fit_global_batch(launch, 6)[:2] == (2, 1)  # neither divides alone: the largest batch below 4 that does
    batch, steps, _, note = fit_global_batch(launch, 3)
    assert (batch, steps) == (4, 1) and note == ("the global batch stays 12 images: --batch-size 4 -> 4, --accumulate "
                                                 "3 -> 1 per process (give --batch-size and --accumulate to choose "
                                                 "otherwise)")


def test_a_global_batch_that_cannot_be_split_names_the_flag_that_changes_it():
    from utils.engine.elastic import LayoutError, fit_global_batch

    with pytest.raises(LayoutError) as caught:
        fit_global_batch({"world": 2, "batch_size": 3, "accumulate": 1}, 4)
    assert str(caught.value) == ("cannot keep the global batch of 6 images over 4 processes (6 is not a multiple of "
                                 "4); launch 1, 2, 3, 6 processes, or give --batch-size=<per process> (and "
                                 "--accumulate) to choose another global batch")
    batch, steps, layout, note = fit_global_batch({"world": 2, "batch_size": 3, "accumulate": 1}, 4, batch_size=2)
    assert (batch, steps, layout) == (2, 1, {"world": 4, "batch_size": 2, "accumulate": 1})  # a new launch
    assert note == "the global batch changes from 6 to 8 images (--batch-size 2 x --accumulate 1 x 4 processes), as given"


def copy_of(setup, name):
    """A copy of the finished reference run, as run `name` (its checkpoints name no folder)."""
    import shutil

    shutil.copytree(setup / "runs" / "reference", setup / "runs" / name)
    return setup / "runs" / name


@pytest.mark.parametrize("resume", ["auto", "last"])
@pytest.mark.parametrize("damage", ["deleted", "a folder"])
def test_a_finished_run_without_its_last_pth_is_never_trained_again_over_its_best(setup, resume, damage):
    run_dir = copy_of(setup, f"lost-last-{resume}-{damage.replace(' ', '-')}")
    (run_dir / "last.pth").unlink()
    if damage == "a folder":
        (run_dir / "last.pth").mkdir()
    before = files_of(run_dir)
    result = run_cli("train", *flags(setup, run_dir.name, resume=resume))
    assert result.returncode == 1 and result.stdout == ""
    [line] = [text for text in result.stderr.splitlines() if text.startswith("error: ")]
    if damage == "deleted":
        assert line.startswith(f"error: cannot resume run {run_dir.name}: its last.pth is missing (deleted?), yet its "
                               f"status.json says it finished after 2 epochs; resuming would train it again from scratch "
                               f"over its "
                               f"files. Train a new run from its config and weights: ")
        assert line.endswith(f"main.py train --config={run_dir / 'config.yaml'} --load-model-path={run_dir / 'best.pth'} "
                             f"--env=<new name>")
    else:
        assert line == f"error: cannot resume run {run_dir.name}: {run_dir / 'last.pth'} is a folder, not a checkpoint; " \
                       f"move it away, then run this again"
    assert files_of(run_dir) == before  # best.pth and everything else as they were

    if damage == "deleted":  # the command it prints trains a new run from the weights
        printed = line.split("weights: ", 1)[1].replace("<new name>", f"{run_dir.name}-again").split()
        again = run_cli(*printed[printed.index("train"):], f"--checkpoint-dir={setup / 'runs'}",
                        *(f for f in flags(setup, "x") if f.startswith(("--progress", "--debug-file", "--num-workers"))))
        assert again.returncode == 0, again.stderr
        assert (setup / "runs" / f"{run_dir.name}-again" / "best.pth").is_file()


def test_a_run_without_last_pth_goes_on_from_an_epoch_checkpoint_it_kept(setup):
    run_dir = copy_of(setup, "kept-epochs")
    keep = run_cli("train", *flags(setup, "kept-epochs", **{"max-epoch": 3, "keep-checkpoints": 2}))
    assert keep.returncode == 0, keep.stderr
    (run_dir / "last.pth").unlink()
    refused = run_cli("train", *flags(setup, "kept-epochs", resume="last", **{"max-epoch": 4}))
    assert refused.returncode == 1 and f"it kept epoch_3.pth (resume from it: --resume={run_dir / 'epoch_3.pth'})" \
        in refused.stderr
    auto = run_cli("train", *flags(setup, "kept-epochs", **{"max-epoch": 4}))
    assert auto.returncode == 0, auto.stderr
    assert "last.pth is missing (missing); resuming from epoch_3.pth" in auto.stderr
    assert load(run_dir / "last.pth")["epoch"] == 4


def test_a_checkpoint_changed_after_it_was_saved_is_refused_unless_accepted(setup):
    import torch

    run_dir = copy_of(setup, "altered")
    state = torch.load(run_dir / "last.pth", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1
    torch.save(state, run_dir / "last.pth")
    before = files_of(run_dir)
    refused = run_cli("train", *flags(setup, "altered", resume="last", **{"max-epoch": 3}))
    assert refused.returncode == 1
    assert f"error: {run_dir / 'last.pth'} does not match the fingerprints written into it: model changed after the " \
           f"run saved it; restore the file, resume from another checkpoint (--resume=<epoch_<n>.pth>), or go on from it " \
           f"anyway with --accept-altered-checkpoint" in refused.stderr
    assert files_of(run_dir) == before
    accepted = run_cli("train", *flags(setup, "altered", resume="last", **{"max-epoch": 3, "accept-altered-checkpoint": True}))
    assert accepted.returncode == 0, accepted.stderr
    assert "model changed after the run saved it; resuming from it anyway (--accept-altered-checkpoint)" in accepted.stderr
    assert load(run_dir / "last.pth")["epoch"] == 3
