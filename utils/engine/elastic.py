"""What makes a run survive restarts: checkpoints inside an epoch (--save-every), the global
batch kept when a run resumes under another number of processes, and the record of each
restart in status.json.

A restart (torchrun --max-restarts, SLURM --requeue, a Kubernetes restart policy) runs the
same command again; with --resume=auto (utils/engine/resume.py) it continues from the newest
checkpoint. What it redoes is the work since that checkpoint: with --save-every a few
minutes, not an epoch. docs/distributed.md tells what happens on each kind of failure.
"""
import logging
import time

from configs.values import save_interval
from utils.engine import distributed

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
