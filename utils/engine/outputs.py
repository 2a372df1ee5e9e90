"""What a run writes besides checkpoints' contents: TensorBoard curves, image grids, texts
and status.json, all through `Outputs`, so one `writes` flag (rank 0 under DDP) guards them."""
import json
import os
import socket
import time

from utils.core.io import atomic_open
from utils.engine import checkpoint
from utils.visualize import Visualizer, save_grid


class Outputs:
    """Everything a run writes (curves, image grids, checkpoints) goes through here, so one
    `writes` flag (rank 0 under DDP) guards it."""

    def __init__(self, run_dir, cfg, writes=True, guard=None):
        self.run_dir, self.cfg, self.writes = run_dir, cfg, writes
        # guard(): raises when this process may no longer write to the run dir (a sweep's
        # trial taken over by another worker); called before every checkpoint and status.
        self.guard = guard or (lambda: None)
        self.checkpoints = checkpoint.CheckpointManager(run_dir, cfg.keep_checkpoints, writes, self.guard)
        self.vis = None
        self.restarts = []  # utils/engine/elastic.restarts_after: kept in every status.json

    def open(self, purge_step):
        if self.writes:
            self.vis = Visualizer(self.run_dir, self.cfg.visualizer, env=self.cfg.env, purge_step=purge_step)

    def plot(self, name, value, step):
        if self.vis:
            self.vis.plot(name, value, step)

    def table(self, name, header, rows, step):
        if self.vis:
            self.vis.table(name, header, rows, step)

    def text(self, tag, text, step):
        """A text (a generated sample) in TensorBoard's text tab, and <run dir>/texts/."""
        if self.vis:
            self.vis.log(text, tag, step)
        if self.writes:
            path = self.run_dir / "texts" / f"{tag.replace('/', '_')}_step{step:07d}.txt"
            with atomic_open(path, "w", encoding="utf-8") as handle:  # creates texts/
                handle.write(text + "\n")

    def images(self, grids, step):
        for tag, images in grids.items():
            if self.vis:
                self.vis.img(tag, images, step)
            if self.writes:
                save_grid(images, self.run_dir / "images" / f"{tag.replace('/', '_')}_step{step:07d}.png")

    def flush(self):
        if self.vis:
            self.vis.flush()

    def write_status(self, state, status, error=None):
        """<run dir>/status.json: what `python main.py runs` shows without loading a checkpoint.
        status: running (pid on host), finished (`stopped_early` says why when --patience ended
        it), pruned (by a sweep's pruner: `pruned` says why), stopped (resumable), crashed (error)."""
        if not self.writes:
            return
        self.guard()
        record = {"status": status, "experiment": self.cfg.experiment, "model": self.cfg.model,
                  "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "max_epoch": self.cfg.max_epoch,
                  "global_step": state.global_step, "best": state.best, "error": error,
                  "stopped_early": state.stopped_early, "pruned": state.pruned, "restarts": self.restarts,
                  "pid": os.getpid(), "host": socket.gethostname(), "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
        with atomic_open(self.run_dir / checkpoint.STATUS, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)

    def close(self):
        if self.vis:
            self.vis.close()
            self.vis = None
