"""One writer per run dir (utils/engine/run_lock.py): a live writer is named and keeps the run,
a killed one is taken over, a silent one elsewhere after STALE, a writer taken over writes
nothing more; end to end, a second train, test or export of a run being trained is refused
and the first run ends as if it had been alone."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_dogcat, run_cli, tiny_flags
from utils.core import liveness
from utils.engine import run_lock


def holder_process():
    """A process that holds nothing and sleeps: a live pid of this machine."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def plant(run_dir, age=0.0, **record):
    """A lock of run_dir naming `record` (this machine's by default), `age` seconds old."""
    path = run_lock.lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = json.loads(run_lock.RunLock(run_dir).text)
    path.write_text(json.dumps({**mine, **record}))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def holder_of(path):
    return json.loads(path.read_text())


def test_a_run_is_taken_released_and_held_again_by_its_own_process(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    lock = run_lock.acquire(run_dir)
    path = run_lock.lock_path(run_dir)
    assert path == tmp_path / "runs" / ".a.lock" and path.is_file() and not run_dir.exists()  # beside, not in it
    assert holder_of(path)["pid"] == os.getpid()
    assert sorted(p.name for p in path.parent.iterdir()) == [".a.lock"]  # written whole elsewhere, linked in place
    assert run_lock.acquire(run_dir) is lock  # re-entrant: reproduce holds it and the engine takes it again
    lock.release()
    assert path.is_file()  # held once more
    lock.release()
    assert not path.exists()


def test_a_live_holder_keeps_the_run_and_is_named(tmp_path):
    run_dir = tmp_path / "a"
    other = holder_process()
    try:
        plant(run_dir, pid=other.pid, started=liveness.start_ticks(other.pid), command="main.py train --env=a")
        with pytest.raises(run_lock.RunBusy) as refused:
            run_lock.acquire(run_dir)
        message = str(refused.value)
        assert message.startswith(f"run a is being written by another process: pid {other.pid} on "
                                  f"{socket.gethostname()}, since ")
        assert f"(main.py train --env=a); wait for it to end or stop it (kill -INT {other.pid}: it saves and exits), " \
               f"then run this again" in message
        # a holder silent for long is still the run's while its process runs on this machine (stopped, say)
        os.utime(run_lock.lock_path(run_dir), (0, 0))
        with pytest.raises(run_lock.RunBusy):
            run_lock.acquire(run_dir, hint=", or write the file elsewhere: --result-file=<file>")
    finally:
        other.kill()
        other.wait()


def test_a_killed_holder_and_a_reused_pid_are_taken_over_at_once(tmp_path, caplog):
    other = holder_process()
    other.kill()
    other.wait()
    plant(tmp_path / "a", pid=other.pid)
    lock = run_lock.acquire(tmp_path / "a")
    assert holder_of(lock.path)["pid"] == os.getpid()
    assert f"took over run a from pid {other.pid}" in caplog.text and "is gone" in caplog.text
    lock.release()
    # this very pid, but a process that started at another time: the holder's pid was reused
    plant(tmp_path / "b", pid=os.getpid(), started=liveness.start_ticks() + 1)
    run_lock.acquire(tmp_path / "b").release()


def test_a_holder_on_another_machine_is_waited_for_until_it_has_been_silent_too_long(tmp_path):
    plant(tmp_path / "a", host="gpu-node-7", boot="other", age=5)
    with pytest.raises(run_lock.RunBusy, match=r"if gpu-node-7 is down, its lock is taken over once it has been "
                                               r"silent for 120 s"):
        run_lock.acquire(tmp_path / "a")
    plant(tmp_path / "b", host="gpu-node-7", boot="other", age=run_lock.STALE + 1)
    run_lock.acquire(tmp_path / "b").release()
    # a file this runner did not write is judged by its age alone; a folder or a FIFO in its place is named
    run_lock.lock_path(tmp_path / "c").write_text("not json")
    with pytest.raises(run_lock.RunBusy, match="a process this runner cannot name"):
        run_lock.acquire(tmp_path / "c")
    os.mkfifo(run_lock.lock_path(tmp_path / "d"))
    with pytest.raises(run_lock.UserError, match=r"\.d\.lock is in the way of run d's lock \(it is not a file the runner "
                                                 r"made\); remove it, then run this again"):
        run_lock.acquire(tmp_path / "d")


def test_a_trial_takes_over_a_frozen_worker_of_this_machine_after_its_stale_after(tmp_path):
    other = holder_process()
    try:
        plant(tmp_path / "a", pid=other.pid, started=liveness.start_ticks(other.pid), age=3)
        run_lock.acquire(tmp_path / "a", stale_after=2).release()
    finally:
        other.kill()
        other.wait()


def test_a_holder_whose_lock_was_taken_over_writes_nothing_more(tmp_path):
    lock = run_lock.acquire(tmp_path / "a")
    try:
        lock.check()  # still ours
        os.unlink(lock.path)
        lock.path.write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "since": "then", "command": "main.py train"}))
        with pytest.raises(run_lock.WriterLost, match=r"run a was taken over by pid 4242 on gpu-node-7, since then "
                                                      r"\(main.py train\)") as lost:
            lock.check()
        assert lost.value.fenced
    finally:
        lock.release()
    assert lock.path.exists()  # the new holder's lock is left alone


def test_a_lock_removed_by_hand_is_made_again_and_renewed(tmp_path):
    lock = run_lock.acquire(tmp_path / "a")
    try:
        os.unlink(lock.path)
        lock.check()
        assert lock.path.read_text() == lock.text
        os.utime(lock.path, (0, 0))
        lock.renew()
        assert time.time() - lock.path.stat().st_mtime < 60
    finally:
        lock.release()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock") / "data"
    make_dogcat(root, per_class=8, test_images=2)
    return root


def stopped(process, timeout=120):
    """Wait until `process` stands still (SIGSTOP); False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        if liveness.read_text(f"/proc/{process.pid}/stat").rpartition(")")[2].split()[:1] == ["T"]:
            return True
        time.sleep(0.1)
    return False


def test_a_second_writer_of_a_run_being_trained_is_refused_and_the_first_ends_alone(data, tmp_path):
    """The first train stands still at step 5, in epoch 2 (SIGSTOP: alive, holding the run); a second
    `train --resume=auto`, a `test` and an `export` into its run dir are refused in one line
    naming it; once it goes on, it finishes with nothing of theirs in its run dir: no restart
    recorded, no temp file of its removed, status finished."""
    flags = tiny_flags(data, tmp_path, env="busy", **{"max-epoch": 2, "resume": "auto"})
    first = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", *flags], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, PYTHONUNBUFFERED="1", RUNNER_FAULT_AT_STEP="5:SIGSTOP"))
    try:
        assert stopped(first), first.communicate()
        second = run_cli("train", *flags)
        assert second.returncode == 1 and second.stdout == "", second.stderr
        [line] = [text for text in second.stderr.splitlines() if text.startswith("error: ")]
        assert line.startswith(f"error: run busy is being written by another process: pid {first.pid} on "
                               f"{socket.gethostname()}, since ")
        assert "main.py train --train-data-root=" in line and f"kill -INT {first.pid}" in line
        for command in ("test", "export"):
            result = run_cli(command, "--env=busy", f"--checkpoint-dir={tmp_path / 'runs'}")
            assert result.returncode == 1 and "run busy is being written by another process" in result.stderr, \
                result.stderr
            assert ", or write the file elsewhere: --" in result.stderr
        elsewhere = run_cli("test", "--env=busy", f"--checkpoint-dir={tmp_path / 'runs'}",
                            f"--result-file={tmp_path / 'elsewhere.csv'}")
        assert elsewhere.returncode == 0, elsewhere.stderr  # reading the run is fine
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    run_dir = tmp_path / "runs" / "busy"
    record = json.loads((run_dir / "status.json").read_text())
    assert record["status"] == "finished" and record["restarts"] == [] and record["epoch"] == 2
    assert not os.path.exists(run_lock.lock_path(run_dir))  # let go at the end
    # now free: the test writes its csv into the run dir
    assert run_cli("test", "--env=busy", f"--checkpoint-dir={tmp_path / 'runs'}").returncode == 0
    assert (run_dir / "result.csv").is_file() and not os.path.exists(run_lock.lock_path(run_dir))


def test_a_second_writer_of_a_killed_run_takes_it_over_and_resumes(data, tmp_path):
    flags = tiny_flags(data, tmp_path, env="killed", **{"max-epoch": 2, "resume": "auto", "save-every": 2})
    killed = run_cli("train", *flags, env={"RUNNER_FAULT_AT_STEP": "5:SIGKILL"})
    assert killed.returncode == -9
    assert os.path.exists(run_lock.lock_path(tmp_path / "runs" / "killed"))  # kill -9 let go of nothing
    again = run_cli("train", *flags)
    assert again.returncode == 0, again.stderr
    assert "took over run killed from pid" in again.stderr and "resuming " in again.stderr
    record = json.loads((tmp_path / "runs" / "killed" / "status.json").read_text())
    assert [entry["after"].split(":")[0] for entry in record["restarts"]] == ["killed"]
