"""Live debugging through a real pseudo-terminal (pexpect): prompt, `q`, `c`, no-TTY runs."""
import os
import re
import sys
import time

import pexpect
import pytest
import torch

from conftest import ROOT, make_dogcat, run_cli, tiny_flags


@pytest.fixture
def data(tmp_path):
    make_dogcat(tmp_path / "data", per_class=12, test_images=3)
    debug_file = tmp_path / "debug"
    debug_file.touch()
    return tmp_path, debug_file


def spawn(tmp_path, debug_file, env=None, **extra):
    flags = tiny_flags(tmp_path / "data", tmp_path, **{"debug-file": debug_file, "max-epoch": 2, "batch-size": 2,
                                                        "print-freq": 3, **extra})
    return pexpect.spawn(sys.executable, [str(ROOT / "main.py"), "train", *flags], cwd=str(ROOT),
                         env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), encoding="utf-8", timeout=60,
                         dimensions=(40, 200))


def processes_mentioning(text):
    """PIDs of live processes whose command line contains `text` (leftover workers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_prompt_opens_in_the_loop_and_q_saves_a_resumable_checkpoint(data):
    tmp_path, debug_file = data
    child = spawn(tmp_path, debug_file, **{"num-workers": 2})
    child.expect("live debug")
    child.expect("ipdb>")
    child.sendline("p float(loss), tuple(images.shape), type(optimizer).__name__")
    child.expect(r"\(\d+\.\d+, \(2, 3, 16, 16\), 'Adam'\)")
    child.expect("ipdb>")
    child.sendline("p epoch, cfg.max_epoch")  # as the bar counts: epoch 1/2, not 0
    child.expect(r"\(1, 2\)")
    child.expect("ipdb>")
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130, child.before
    state = torch.load(tmp_path / "runs" / "tiny" / "last.pth", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    time.sleep(0.5)
    assert processes_mentioning(str(tmp_path)) == []  # no worker left behind
    debug_file.unlink()
    resumed = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, **{"max-epoch": 2, "batch-size": 2,
                                                                             "print-freq": 3, "resume": "true"}))
    assert resumed.returncode == 0, resumed.stderr
    # The point logged at the stopping step survives the resume (it was logged before the save).
    from test_resume import scalars

    assert [step for step, _ in scalars(tmp_path / "runs" / "tiny", "train/loss")] == [3, 6, 9, 12, 15]


@pytest.mark.slow
def test_c_after_removing_the_file_continues_to_the_end(data):
    tmp_path, debug_file = data
    child = spawn(tmp_path, debug_file)
    child.expect("ipdb>")
    debug_file.unlink()
    child.sendline("c")
    child.expect("trained tiny")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert torch.load(tmp_path / "runs" / "tiny" / "last.pth", weights_only=True)["epoch"] == 2


def test_without_a_tty_a_leftover_debug_file_is_reported_once_and_ignored(data):
    tmp_path, debug_file = data
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, **{"debug-file": debug_file, "max-epoch": 2,
                                                                           "batch-size": 2, "print-freq": 1}), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("exists but stdin is not a terminal; ignoring it") == 1


@pytest.mark.slow
def test_pdb_on_error_opens_post_mortem_then_saves_emergency_state(data):
    tmp_path, debug_file = data
    debug_file.unlink()  # absent: the loop must not stop before the injected error
    child = spawn(tmp_path, debug_file, env={"RUNNER_FAULT_AT_STEP": "4:error"}, **{"pdb-on-error": "true"})
    child.expect("post-mortem: RuntimeError: injected fault at step 4")
    child.expect("ipdb>")
    child.sendline("up")  # from the fault injector to the engine's loop
    child.expect("ipdb>")
    child.sendline("p ('global step', state.global_step)")
    child.expect(r"\('global step', 3\)")
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert torch.load(tmp_path / "runs" / "tiny" / "emergency.pth", weights_only=True)["global_step"] == 3


@pytest.mark.slow
def test_the_progress_bar_is_cleared_before_the_prompt(data):
    tmp_path, debug_file = data
    child = spawn(tmp_path, debug_file, progress="true")  # a terminal: the bar is drawn
    child.expect("live debug")
    shown = child.before.replace("\r\n", "\n")
    assert "epoch 1/2" in shown  # the bar was there
    assert "epoch 1/2" not in re.split(r"\r", shown)[-1]  # and the banner starts on a cleared line
    assert "img/s" in shown and "img_s" not in shown  # the speed once, as tqdm's rate
    child.expect("ipdb>")
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
