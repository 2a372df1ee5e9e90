"""Bit-exact resume, safe stop on signals / crashes / NaN, on tiny data (CPU)."""
import pytest
import torch

from conftest import load, make_dogcat, run_cli, tiny_flags, typed

EPOCHS = 3
# 16 train images, batch 2: 8 steps per epoch, 24 in all; print_freq 3 exercises plotting.
FLAGS = {"max-epoch": EPOCHS, "batch-size": 2, "print-freq": 3, "lr": 0.01}



def assert_same_training_state(a, b):
    """Every tensor of model and optimizer equal bit for bit; counters and lr policy equal."""
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            other = b["optimizer"]["state"][index][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, name)
    for key in ("epoch", "step_in_epoch", "global_step", "lr_policy", "best"):
        assert a[key] == b[key], key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny data and the uninterrupted reference run (num_workers=0)."""
    tmp_path = tmp_path_factory.mktemp("resume")
    make_dogcat(tmp_path / "data", per_class=12, test_images=3)
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="reference", **FLAGS))
    assert result.returncode == 0, result.stderr
    return tmp_path, load(tmp_path / "runs" / "reference" / "last.pth")


def flags(setup, env, **extra):
    tmp_path, _ = setup
    return tiny_flags(tmp_path / "data", tmp_path, env=env, **{**FLAGS, **extra})


def test_stop_after_k_epochs_then_resume_equals_uninterrupted(setup):
    tmp_path, reference = setup
    first = run_cli("train", *flags(setup, "split", **{"max-epoch": 1}))
    assert first.returncode == 0, first.stderr
    # --resume=<path>: the run dir is the checkpoint's folder, the config comes from the file.
    resumed = run_cli("train", f"--resume={tmp_path / 'runs' / 'split' / 'last.pth'}", f"--max-epoch={EPOCHS}",
                      "--progress=false", "--debug-file=", "--num-workers=0")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training_state(load(tmp_path / "runs" / "split" / "last.pth"), reference)


@pytest.fixture(scope="module")
def sigint_run(setup):
    """A run stopped by SIGINT mid-epoch 2 and resumed to the end: (stopped, state at the stop, resumed)."""
    tmp_path, _ = setup
    stopped = run_cli("train", *flags(setup, "sigint"), env={"RUNNER_FAULT_AT_STEP": "11:SIGINT"})
    state = load(tmp_path / "runs" / "sigint" / "last.pth") if stopped.returncode == 130 else None
    resumed = run_cli("train", *flags(setup, "sigint", resume="true"))
    return stopped, state, resumed


def test_sigint_mid_epoch_then_resume_equals_uninterrupted(setup, sigint_run):
    tmp_path, reference = setup
    stopped, state, resumed = sigint_run
    assert stopped.returncode == 130, stopped.stderr
    assert "finishing this step, then saving last.pth" in stopped.stderr
    assert f"Resume: {typed()} train --env=sigint" in stopped.stderr  # a command that works as printed
    assert "\nstopped (SIGINT); saved " in stopped.stderr and "error: stopped" not in stopped.stderr
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 11)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'runs' / 'sigint' / 'last.pth'} in epoch 2 of 3: steps 1-3 were done, it goes on with " \
           f"step 4" in resumed.stderr
    assert_same_training_state(load(tmp_path / "runs" / "sigint" / "last.pth"), reference)


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_continues_without_duplicates_and_with_the_same_values(setup, sigint_run):
    tmp_path, _ = setup
    run_dir = tmp_path / "runs" / "sigint"
    assert sigint_run[2].returncode == 0, sigint_run[2].stderr
    assert [step for step, _ in scalars(run_dir, "train/loss")] == list(range(3, 25, 3))
    # The interrupted epoch's mean loss covers all its steps (meters are resumed too).
    reference_dir = tmp_path / "runs" / "reference"
    for tag in ("train/loss", "train/epoch_loss", "train/epoch_accuracy", "val/logloss", "train/lr"):
        assert scalars(run_dir, tag) == scalars(reference_dir, tag), tag


def test_num_workers_do_not_change_the_bits(setup):
    tmp_path, reference = setup
    result = run_cli("train", *flags(setup, "workers", **{"num-workers": 2}))
    assert result.returncode == 0, result.stderr
    assert_same_training_state(load(tmp_path / "runs" / "workers" / "last.pth"), reference)


def test_sigterm_saves_and_exits_143(setup):
    tmp_path, _ = setup
    result = run_cli("train", *flags(setup, "sigterm", **{"num-workers": 2}), env={"RUNNER_FAULT_AT_STEP": "5:SIGTERM"})
    assert result.returncode == 143, result.stderr
    assert load(tmp_path / "runs" / "sigterm" / "last.pth")["global_step"] == 5


def test_resume_refuses_changes_to_the_run_definition(setup):
    tmp_path, _ = setup
    result = run_cli("train", "--env=reference", f"--checkpoint-dir={tmp_path / 'runs'}", "--resume", "--model=AlexNet")
    assert result.returncode == 2
    assert "--model='AlexNet' would change the resumed run (it has 'LeNet'); only" in result.stderr
    missing = run_cli("train", "--env=nope", f"--checkpoint-dir={tmp_path / 'runs'}", "--resume")
    assert missing.returncode == 1 and "nothing to resume" in missing.stderr  # a missing checkpoint, as for val


def test_crash_saves_emergency_checkpoint_and_keeps_traceback(setup):
    tmp_path, _ = setup
    result = run_cli("train", *flags(setup, "crash"), env={"RUNNER_FAULT_AT_STEP": "10:error"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: injected fault at step 10" in result.stderr
    emergency = load(tmp_path / "runs" / "crash" / "emergency.pth")
    assert emergency["global_step"] == 9  # the last consistent state: step 10 never finished
    last = load(tmp_path / "runs" / "crash" / "last.pth")
    assert last["global_step"] == 8  # the epoch-end checkpoint is untouched


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup):
    tmp_path, _ = setup
    result = run_cli("train", *flags(setup, "nan"), env={"RUNNER_FAULT_AT_STEP": "12:nan"})
    assert result.returncode == 1
    assert "error: loss is nan at epoch 2, step 4; stopped without saving it" in result.stderr
    state = load(tmp_path / "runs" / "nan" / "last.pth")
    assert state["global_step"] == 8
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_keep_checkpoints_keeps_the_last_k_epoch_files(setup):
    tmp_path, _ = setup
    result = run_cli("train", *flags(setup, "keep", **{"keep-checkpoints": 2}))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "keep"
    assert sorted(p.name for p in run_dir.glob("epoch_*.pth")) == ["epoch_2.pth", "epoch_3.pth"]
    assert load(run_dir / "epoch_3.pth")["epoch"] == 3


def test_second_sigint_stops_at_once_and_leaves_the_last_checkpoint_whole(setup):
    tmp_path, _ = setup
    # The epoch-1 last.pth (the 2nd write) is still being written by the background thread when
    # the two signals come: the message must name the file that the run leaves, not "none yet".
    result = run_cli("train", *flags(setup, "twice"), env={"RUNNER_FAULT_AT_STEP": "11:SIGINT,11:SIGINT",
                                                           "RUNNER_FAULT_AT_SAVE": "2:slow"})
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr and "saved" not in result.stderr
    assert (f"interrupted again: stopped at once, and this stop wrote nothing; the latest checkpoint is "
            f"{tmp_path / 'runs' / 'twice' / 'last.pth'} (written ") in result.stderr
    state = load(tmp_path / "runs" / "twice" / "last.pth")  # the epoch-1 checkpoint, intact
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 8)


def test_the_thread_count_is_saved_and_a_resume_with_another_says_it_is_not_bit_exact(setup):
    tmp_path, _ = setup
    last = tmp_path / "runs" / "threads" / "last.pth"
    first = run_cli("train", *flags(setup, "threads", **{"max-epoch": 1, "threads": 2}))
    assert first.returncode == 0, first.stderr
    assert load(last)["threads"] == 2
    other = run_cli("train", *flags(setup, "threads", **{"max-epoch": 2, "threads": 1, "resume": "true"}))
    assert other.returncode == 0, other.stderr
    assert ("WARNING this run was saved with 2 intra-op threads and resumes with 1: float sums are split differently, "
            "so from here on the weights differ in the last bits from an uninterrupted run (give --threads=2 for "
            "bit-exact)") in other.stderr
    assert load(last)["threads"] == 1
    same = run_cli("train", *flags(setup, "threads", **{"max-epoch": 3, "threads": 1, "resume": "true"}))
    assert same.returncode == 0 and "intra-op thread" not in same.stderr, same.stderr


def test_a_resume_within_the_same_second_keeps_the_first_runs_curve(tmp_path):
    """tensorboardX names event files by host and second: without a suffix of ours, a run
    stopped and resumed within one second (tiny runs do) overwrote the first file."""
    from utils.visualize import Visualizer

    first = Visualizer(tmp_path, "tensorboard", env="x", purge_step=None)
    first.plot("train/loss", 1.0, 3)
    first.close()
    second = Visualizer(tmp_path, "tensorboard", env="x", purge_step=4)
    second.plot("train/loss", 2.0, 6)
    second.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert scalars(tmp_path, "train/loss") == [(3, 1.0), (6, 2.0)]
