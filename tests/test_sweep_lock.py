"""utils/sweep/lock.py: the journal's lock names its holder, so a killed holder on this machine
is taken over at once, and any other one still after the grace period."""
import logging
import os
import subprocess
import sys
import time

from utils.sweep.lock import OWNER, OwnedLock, holder_is_dead, identity


def dead_pid():
    """The pid of a process that ran and was reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_holder_is_dead_only_when_this_machine_can_tell(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    assert not holder_is_dead(f"{journal}{OWNER}{identity()}")  # this process: alive
    assert holder_is_dead(f"{journal}{OWNER}{identity(dead_pid())}")
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie.kill()
    time.sleep(0.3)  # killed, not reaped: a zombie still answers kill(pid, 0)
    try:
        assert holder_is_dead(f"{journal}{OWNER}{identity(zombie.pid)}")
    finally:
        zombie.wait()
    host, boot, namespace, pid = identity(dead_pid()).split("|")
    assert not holder_is_dead(f"{journal}{OWNER}other-host|{boot}|{namespace}|{pid}")  # another machine
    assert not holder_is_dead(f"{journal}{OWNER}{host}|{boot}|pid:[1]|{pid}")  # another container
    assert not holder_is_dead(journal)  # Optuna's own link: no holder named


def test_a_lock_left_by_a_killed_holder_is_taken_at_once_and_others_wait_out_the_grace(tmp_path, caplog):
    journal = str(tmp_path / "optuna.journal")
    os.symlink(f"{journal}{OWNER}{identity(dead_pid())}", journal + ".lock")
    lock = OwnedLock(journal)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert lock.acquire()
    assert time.monotonic() - started < 1.0
    assert "held by a process that is gone" in caplog.text
    assert os.readlink(journal + ".lock") == f"{journal}{OWNER}{identity()}"  # now names this process
    lock.release()
    assert not os.path.lexists(journal + ".lock")

    os.symlink(f"{journal}{OWNER}elsewhere|b|n|1", journal + ".lock")  # a holder on another machine
    waiting = OwnedLock(journal)
    waiting.grace_period = 0.5
    started = time.monotonic()
    assert waiting.acquire()
    assert time.monotonic() - started >= 0.5  # its grace period, then broken
    waiting.release()
    assert [p.name for p in tmp_path.iterdir()] == []  # no moved link left behind


def test_a_live_lock_is_never_broken(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    holder = OwnedLock(journal)
    assert holder.acquire()
    text = os.readlink(journal + ".lock")
    assert not OwnedLock(journal)._break(f"{journal}{OWNER}someone|else|x|1")  # not the link it judged
    assert os.readlink(journal + ".lock") == text
    holder.release()
