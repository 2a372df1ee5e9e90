"""What makes a run survive restarts: checkpoints inside an epoch (--save-every), the global
batch kept when a run resumes under another number of processes, and the record of each
restart in status.json.

A restart (torchrun --max-restarts, SLURM --requeue, a Kubernetes restart policy) runs the
same command again; with --resume=auto (utils/engine/resume.py) it continues from the newest
checkpoint. What it redoes is the work since that checkpoint: with --save-every a few
minutes, not an epoch. docs/distributed.md tells what happens on each kind of failure.
"""
import contextlib
import logging
import os
import time

from configs.values import save_interval
from utils.core.errors import UsageError, plural
from utils.core.records import Damaged
from utils.engine import distributed
from utils.engine import status as run_status

log = logging.getLogger(__name__)


class MidEpochSaves:
    """--save-every: when a step ends, whether last.pth is written now. Every N steps is the
    same on every rank; a time is rank 0's clock, agreed in the step's one all-reduce
    (distributed.agree_step), so all ranks save after the same step. A save that falls inside
    an --accumulate group waits for the group's end (no half-summed gradients are saved)."""

    def __init__(self, cfg, checkpoints, snapshot):
        self.interval = save_interval(cfg.save_every)
        self.checkpoints, self.snapshot = checkpoints, snapshot
        self.since = time.monotonic()  # the last write of last.pth (an epoch end counts)
        self.owed = False  # agreed, waiting for the end of an accumulation group

    def wanted(self, global_step):
        """This rank's wish for a save after step `global_step` (1-based)."""
        if self.interval is None:
            return False
        kind, amount = self.interval
        if kind == "steps":
            return global_step % amount == 0
        return distributed.is_main() and time.monotonic() - self.since >= amount

    def after_step(self, agreed, group_end):
        """Write last.pth (in the background) when a save is agreed or owed and the step ends
        an accumulation group; returns whether it did."""
        self.owed = self.owed or agreed
        if not (self.owed and group_end):
            return False
        self.checkpoints.save_last(self.snapshot(), background=True)  # snapshot(): a collective
        self.owed, self.since = False, time.monotonic()
        return True

    def epoch_written(self):
        self.owed, self.since = False, time.monotonic()


class LayoutError(UsageError):
    """The global batch cannot be kept at this world size; every rank finds it, rank 0 says it."""
    agreed = True


def layout_of(state, saved_config):
    """{"world", "batch_size", "accumulate"}: how the run in checkpoint `state` was launched
    (its global batch is their product), also for checkpoints written before it was kept."""
    return state.get("layout") or {"world": state.get("world_size", 1), "batch_size": saved_config["batch_size"],
                                   "accumulate": saved_config.get("accumulate", 1)}


def fit_global_batch(layout, world, batch_size=None, accumulate=None):
    """(per-process batch, accumulate, the layout from here on, what changed: one line or
    None) for a run launched as `layout` that goes on with `world` processes.

    The global batch (world x --batch-size x --accumulate images per optimizer step) is kept:
    the per-process batch takes the change when it divides evenly (so each step holds the same
    images as before, and the step count stays), else --accumulate, else the largest
    per-process batch below the launch's that divides it. `batch_size` / `accumulate`, given
    on the command line, choose another global batch instead (the layout starts again at this
    world). LayoutError when no whole split exists: it names --batch-size."""
    launched = (layout["world"], layout["batch_size"], layout["accumulate"])
    if batch_size is not None or accumulate is not None:
        chosen = (batch_size or layout["batch_size"], accumulate or layout["accumulate"])
        new = {"world": world, "batch_size": chosen[0], "accumulate": chosen[1]}
        before, after = launched[0] * launched[1] * launched[2], world * chosen[0] * chosen[1]
        sizes = f"--batch-size {chosen[0]} x --accumulate {chosen[1]} x {plural(world, 'process', 'processes')}"
        note = (f"the global batch stays {before} images ({sizes}), as given" if before == after else
                f"the global batch changes from {before} to {after} images ({sizes}), as given")
        return chosen[0], chosen[1], new, note
    if world == launched[0]:
        return launched[1], launched[2], layout, None
    total = launched[0] * launched[1] * launched[2]
    if total % world:
        fits = ", ".join(str(n) for n in range(1, total + 1) if total % n == 0 and n <= 64)
        raise LayoutError(f"cannot keep the global batch of {total} images over {plural(world, 'process', 'processes')} "
                          f"({total} is not a multiple of {world}); launch {fits} processes, or give --batch-size=<per "
                          f"process> (and --accumulate) to choose another global batch")
    share, (batch, steps) = total // world, launched[1:]
    if share % steps == 0:
        fitted = (share // steps, steps)
    elif share % batch == 0:
        fitted = (batch, share // batch)
    else:
        smaller = max(n for n in range(1, batch + 1) if share % n == 0)
        fitted = (smaller, share // smaller)
    note = (f"the global batch stays {total} images: --batch-size {batch} -> {fitted[0]}"
            f"{'' if fitted[1] == steps else f', --accumulate {steps} -> {fitted[1]}'} per process "
            f"(give --batch-size and --accumulate to choose otherwise)")
    return fitted[0], fitted[1], layout, note


LOST_PEER = "lost another process of the group"  # how distributed.lost_peer begins


def restarts_after(run_dir, state, saved_world):
    """The run's restarts as status.json will list them: those it listed, and this start when
    it continues a run that did not finish ({"at", "after": why the attempt before ended,
    "from": where this one goes on, "world", "torchrun_restart" when torchrun restarted it}).
    A run whose status.json says "running" ended without a word: kill -9, out of memory or a
    lost node. `state`: the TrainState resumed from."""
    try:
        before = run_status.read(run_dir) or {}
    except Damaged as damaged:
        # status.json says how the run stands and is written again at once; the damaged one
        # is kept beside it, since what it said (earlier restarts) is not to be lost unseen
        kept = damaged.path.with_name(damaged.path.name + ".damaged")
        with contextlib.suppress(OSError):
            os.replace(damaged.path, kept)
        log.warning("%s; kept as %s, and the run's earlier restarts are not carried over", damaged, kept.name)
        before = {}
    listed = [entry for entry in before.get("restarts") or [] if isinstance(entry, dict)]
    status, error = before.get("status"), str(before.get("error") or "")
    if status == "running":
        why = "killed: the attempt before ended without a word (kill -9, out of memory, a lost node)"
    elif status == "crashed" and error.startswith(LOST_PEER):
        why = f"lost a peer: {error[len(LOST_PEER):].split('; torchrun restarts')[0].strip(' ()')}"
    elif status == "crashed":
        why = f"crashed: {error}"
    elif status == "stopped":
        why = f"stopped: {error.split(';')[0]}"
    else:  # a finished run trained further, a first start: no restart
        return listed
    entry = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "after": why,
             "from": f"epoch {state.epoch + 1}, step {state.step_in_epoch + 1}" if state.step_in_epoch
             else f"epoch {state.epoch + 1}, its start",
             "world": f"{saved_world} -> {distributed.world_size()}" if saved_world != distributed.world_size()
             else distributed.world_size()}
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)):
        entry["torchrun_restart"] = f"{os.environ['TORCHELASTIC_RESTART_COUNT']} of {os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')}"
    log.info("restart %d of this run, after it was %s", len(listed) + 1, why)
    return listed + [entry]
