"""Fault injection for the test suite and for chaos drills, through the real code paths.

RUNNER_FAULT_AT_STEP="STEP:WHAT[,STEP:WHAT...]": during global step STEP (1-based, before the
experiment's step runs) the run sends itself SIGINT, SIGTERM or SIGUSR1/2 (handled as real
signals; USR1/2 stop the run under --requeue-signal and kill it otherwise) or SIGKILL (no
chance to save: `kill -9`), SIGSTOP (a live process that stands still until SIGCONT: Ctrl+Z,
a debugger, a frozen VM), `kill-node` (SIGKILL to torchrun's agent, this process's parent,
then to this process: a node of one process lost), raises an error (a crash), or sees a NaN in the
step's losses (divergence). Under torchrun "STEP:WHAT@RANK" fires on that rank only (the
others learn of it through the agreed stop).

RUNNER_FAULT_IN_RUN=NAME: the step faults fire only in the run whose --env is NAME (a group's
fold-2, a sweep's trial-1), not in the runs one command trains before it.

RUNNER_FAULT_AT_SAVE="N:WHAT[,...]": at the N-th checkpoint write of this process (1-based)
the process kills itself with SIGKILL, as `kill -9` would: `kill` right after the file was
renamed into place, `kill-before-rename` with the fully written temp file still beside it;
`slow` waits 2 s before the rename (a slow disk: a background write still in flight).

RUNNER_FAULT_AT_APPEND="N:WHAT[,...]": in the N-th append of this process to a study journal
(utils/sweep/journal.py), once half of it is written and fsynced: `kill` (SIGKILL: a worker
killed inside an append leaves a cut last line), `ENOSPC` or `EIO` (the write fails as on a
full or failing disk).

RUNNER_FAULT_IN_CACHE="N:WHAT[,...]": after the N-th progress record of a decoded-image
cache build (data/cache_build.py) of this process: `kill` (SIGKILL: a build killed half-way),
`slow` (a 1 s pause: a long build others wait for) or `fill` (every free byte of the cache's file system taken, as another process on a shared
disk would).

RUNNER_SAMPLE_LOG=FILE: every rank appends one JSON line per training step to FILE, {"rank",
"epoch", "indices"} of the images it trained on (the sampler's keys, in the loader's order),
so a test can prove that an epoch saw each image once across stops, restarts and world sizes.
"""
import errno
import os
import signal
import time

STEP_VARIABLE = "RUNNER_FAULT_AT_STEP"
SAVE_VARIABLE = "RUNNER_FAULT_AT_SAVE"
APPEND_VARIABLE = "RUNNER_FAULT_AT_APPEND"
SAMPLE_LOG_VARIABLE = "RUNNER_SAMPLE_LOG"
RUN_VARIABLE = "RUNNER_FAULT_IN_RUN"
CACHE_VARIABLE = "RUNNER_FAULT_IN_CACHE"
_cache_records = 0
_saves = 0
_appends = 0


def _planned(variable, count):
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)):
        return  # a restart by torchrun --max-restarts runs clean: the drill is its first attempt
    for fault in filter(None, os.environ.get(variable, "").split(",")):
        at, what = fault.split(":")
        what, _, rank = what.partition("@")
        if int(at) == count and (not rank or int(rank) == int(os.environ.get("RANK", 0))):
            yield what


def at_step(global_step, run=None):
    """Fire the faults due at `global_step` of run `run`; returns "nan" when the step's losses
    must be NaN."""
    fired = None
    if os.environ.get(RUN_VARIABLE) and os.environ[RUN_VARIABLE] != run:
        return None
    for what in _planned(STEP_VARIABLE, global_step):
        fired = what
        if what in ("SIGINT", "SIGTERM", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGSTOP"):
            os.kill(os.getpid(), getattr(signal, what))  # handled before os.kill returns
        elif what == "kill-node":  # torchrun's agent (the parent), then this process
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        elif what == "error":
            raise RuntimeError(f"injected fault at step {global_step} ({STEP_VARIABLE})")
    return fired


def at_save(stage):
    """Called by the atomic checkpoint write at `stage` "written" (temp file complete) and
    "renamed"; kills the process when a fault is planned there."""
    global _saves
    if stage == "written":
        _saves += 1
    for what in _planned(SAVE_VARIABLE, _saves):
        if (what, stage) in (("kill-before-rename", "written"), ("kill", "renamed")):
            os.kill(os.getpid(), signal.SIGKILL)
        elif (what, stage) == ("slow", "written"):
            time.sleep(2)


def at_append(sync):
    """Called by a journal append halfway through its bytes; `sync()` makes the half that is
    written durable first, so a kill leaves exactly that cut record on disk."""
    global _appends
    _appends += 1
    for what in _planned(APPEND_VARIABLE, _appends):
        sync()
        if what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif what in ("ENOSPC", "EIO"):
            code = getattr(errno, what)
            raise OSError(code, os.strerror(code))


def at_cache_progress(directory):
    """Called by a cache build after each progress record it wrote in `directory`."""
    global _cache_records
    _cache_records += 1
    for what in _planned(CACHE_VARIABLE, _cache_records):
        if what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif what == "slow":
            time.sleep(1)
        elif what == "fill":
            with open(os.path.join(directory, "filler"), "ab", buffering=0) as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                except OSError:
                    pass
                try:  # the last partial block too
                    while True:
                        handle.write(b"\0")
                except OSError:
                    pass


def sample_log(sampler, batch_size):
    """None, or (with RUNNER_SAMPLE_LOG set) a function log(step, size) that records the keys
    of this call's `step`-th batch (0-based) of `sampler`'s epoch (see the module docstring)."""
    path = os.environ.get(SAMPLE_LOG_VARIABLE)
    if not path:
        return None
    import json

    keys = sampler.indices()

    def log(step, size):
        line = {"rank": int(os.environ.get("RANK", 0)), "epoch": sampler.epoch,
                "indices": keys[step * batch_size:step * batch_size + size]}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    return log
