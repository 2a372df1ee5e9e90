"""What a run writes besides checkpoints' contents: curves, image grids, texts and tables to
every logger of --loggers (TensorBoard, MLflow, W&B: utils/loggers/), the grids and texts
into the run dir too, and status.json, all through `Outputs`, so one `writes` flag (rank 0
under DDP) guards them."""
import contextlib
import json
import os
import socket
import time

from utils import loggers as logger_registry
from utils.core.io import atomic_open
from utils.engine import checkpoint
from utils.visualize import save_grid


class Outputs:
    """Everything a run writes (curves, image grids, checkpoints) goes through here, so one
    `writes` flag (rank 0 under DDP) guards it."""

    def __init__(self, run_dir, cfg, writes=True, guard=None, connections=None, sweep=None):
        self.run_dir, self.cfg, self.writes = run_dir, cfg, writes
        # guard(): raises when this process may no longer write to the run dir (a sweep's
        # trial taken over by another worker); called before every checkpoint and status.
        self.guard = guard or (lambda: None)
        self.checkpoints = checkpoint.CheckpointManager(run_dir, cfg.keep_checkpoints, writes, self.guard)
        self.loggers = []
        # connections: utils/loggers.connect's, made before the run dir existed; sweep: a
        # trial's study, number, parameters and parent runs
        self.connections, self.sweep = connections, sweep
        self.restarts = []  # utils/engine/elastic.restarts_after: kept in every status.json

    def open(self, purge_step):
        if self.writes:
            self.loggers = logger_registry.open_all(self.run_dir, self.cfg, purge_step, self.sweep, self.connections)

    def plot(self, name, value, step):
        for logger in self.loggers:
            logger.scalar(name, value, step)

    def table(self, name, header, rows, step):
        for logger in self.loggers:
            logger.table(name, header, rows, step)

    def text(self, tag, text, step):
        """A text (a generated sample) to the loggers (TensorBoard's text tab), and <run dir>/texts/."""
        path = None
        if self.writes:
            path = self.run_dir / "texts" / f"{tag.replace('/', '_')}_step{step:07d}.txt"
            with atomic_open(path, "w", encoding="utf-8") as handle:  # creates texts/
                handle.write(text + "\n")
        for logger in self.loggers:
            logger.text(tag, text, step, path)

    def images(self, grids, step):
        for tag, images in grids.items():
            path = None
            if self.writes:
                path = save_grid(images, self.run_dir / "images" / f"{tag.replace('/', '_')}_step{step:07d}.png")
            for logger in self.loggers:
                logger.images(tag, images, step, path)

    def flush(self):
        for logger in self.loggers:
            logger.flush()

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
        """Flush every logger (a stop or a failure: what was reported is on disk, or queued
        to its tracker, before the run says how it ended); `end` closes them. A failed write
        here is not said: the error that stops the run matters more."""
        for logger in self.loggers:
            with contextlib.suppress(Exception):
                logger.flush()

    def end(self, status, best=None):
        """Tell every logger the run's end (finished, pruned, stopped, crashed; None: this
        process may no longer write) and its best metric, and close them."""
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.end(status, best)
