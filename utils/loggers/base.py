"""What a logger is given, and the thread that keeps a tracker's network off the training loop.

`Logger` is the whole interface, every method optional: the engine hands each logger of
--loggers what it already produces (scalars by the TensorBoard names and steps, image grids,
texts, tables, files, the run's end and its best metric). A logger is built once the run
dir exists, on the process that writes (rank 0 under torchrun), with `Start`.

`Tracker` is the base of loggers that talk to a service (MLflow, W&B): calls go onto a queue
and one thread sends them, so a slow or dead server never slows a step; the first failure is
one warning and the tracker is dropped for the rest of the run, which goes on (TensorBoard
keeps every curve). Points of one step are sent together; points a resume redoes that the
service already holds (`sent`, {name: last step held}) are not sent again.
"""
import logging
import queue
import threading
import time
import typing

log = logging.getLogger(__name__)

END_WAIT = 60.0  # seconds the end of a run waits for a tracker to send what it queued
FLUSH_WAIT = 10.0  # at an epoch's end, before its checkpoint
END = "at the run's end"
MERGED_POINTS = 1000  # at most this many queued points go in one call (MLflow's log_batch takes 1000)


class Start(typing.NamedTuple):
    """How a run starts, for its loggers: `purge_step` (None for a new run; on a resume,
    points at and after it belong to work the resume redoes), `sweep` (a sweep's trial: {"study", "number", "params", "parents"}, else None),
    `connection` (what the logger's `connect` returned before the run dir existed)."""
    purge_step: typing.Optional[int] = None
    sweep: typing.Optional[dict] = None
    connection: typing.Any = None


class Logger:
    """A destination of what a run reports. `connect(cfg)` runs before the run dir exists
    (a one-line UserError there stops the run before training); the instance is made with
    (run_dir, cfg, start)."""

    name = ""  # its --loggers name
    tracker = False  # a failure is a warning once and never stops training (see Tracker)

    @classmethod
    def connect(cls, cfg):
        return None

    def __init__(self, run_dir, cfg, start):
        self.run_dir, self.cfg, self.start = run_dir, cfg, start

    def scalar(self, name, value, step):
        pass

    def images(self, name, images, step, path=None):
        """A grid of images (N, C, H, W in [0, 1]); `path`: the PNG the run dir keeps of it."""

    def text(self, name, text, step, path=None):
        pass

    def table(self, name, header, rows, step):
        pass

    def file(self, path, folder=""):
        """Keep a file of the run (config.yaml, manifest.json, best.pth)."""

    def flush(self):
        pass

    def end(self, status, best=None):
        """The run ends: status finished, pruned, stopped (resumable), crashed; None = only
        close (the run dir is another worker's now). `best`: {"metric", "value", "epoch"}."""


class Tracker(Logger):
    """A Logger whose calls run on a thread of its own; subclasses implement `_send_scalars`
    ([(name, value, step)]) and the `_`-prefixed twins of the other methods."""

    tracker = True
    title = ""  # "MLflow": how warnings name it

    def __init__(self, run_dir, cfg, start):
        super().__init__(run_dir, cfg, start)
        self.sent = {}  # {name: last step the service already holds}, filled by subclasses on resume
        self.broken = False
        self._lagging = self._said_lagging = False  # a tracker slower than the run: waited for once, said once
        self._points, self._points_step = [], None
        self._jobs = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"{self.name}-logger", daemon=True)
        self._thread.start()

    # -- what the engine calls (the training thread) -------------------------------------------
    def scalar(self, name, value, step):
        if self.broken or step <= self.sent.get(name, -1):
            return
        if self._points_step is not None and step != self._points_step:
            self._queue_points()
        self._points.append((name, float(value), int(step)))
        self._points_step = step

    def images(self, name, images, step, path=None):
        self._queue(self._images, name, images, step, path)

    def text(self, name, text, step, path=None):
        self._queue(self._text, name, text, step, path)

    def table(self, name, header, rows, step):
        self._queue(self._table, name, list(header), [list(row) for row in rows], step)

    def file(self, path, folder=""):
        self._queue(self._file, path, folder)

    def flush(self):
        self._queue_points()
        self._wait(FLUSH_WAIT, "at an epoch's end")

    def end(self, status, best=None):
        self._queue_points()
        self._queue(self._end, status, best)
        self._wait(END_WAIT, END)
        self._jobs.put(None)  # the thread ends

    # -- the thread ----------------------------------------------------------------------------
    def _queue(self, method, *args):
        if not self.broken:
            self._queue_points()  # in order: a step's points before what came after them
            self._jobs.put((method, args))

    def _queue_points(self):
        if self._points:
            self._jobs.put((self._send_scalars, (self._points,)))
        self._points, self._points_step = [], None

    def _wait(self, seconds, when):
        """Wait until the queue is sent, at most `seconds`; then the run goes on without
        waiting again at epoch ends until the tracker has caught up (said once)."""
        if self._lagging and self._jobs.unfinished_tasks and when != END:
            return
        deadline = time.monotonic() + seconds
        while self._jobs.unfinished_tasks and not self.broken and time.monotonic() < deadline:
            time.sleep(0.01)
        self._lagging = bool(self._jobs.unfinished_tasks) and not self.broken
        if self._lagging and when == END:
            log.warning("%s has not taken what the run gave it last within %.0f s %s: that part is not sent",
                        self.title, seconds, when)
        elif self._lagging and not self._said_lagging:
            self._said_lagging = True
            log.warning("%s has not taken everything the run gave it within %.0f s %s; the run goes on, and the rest "
                        "is sent while it does", self.title, seconds, when)

    def _work(self):
        carry = None  # a job taken while merging points, run next
        while True:
            job, carry = carry or self._jobs.get(), None
            taken = 1
            if job is not None and job[0] == self._send_scalars:
                # points queued behind it (a service slower than the steps) go in the same call
                points = list(job[1][0])
                while len(points) < MERGED_POINTS:
                    try:
                        following = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if following is None or following[0] != self._send_scalars:
                        carry = following
                        break
                    points += following[1][0]
                    taken += 1
                job = (self._send_scalars, (points,))
            try:
                if job is None:
                    return
                if not self.broken:
                    method, args = job
                    method(*args)
            except Exception as error:  # noqa: BLE001 - any failure of a tracker is the tracker's, not the run's
                self.broken = True
                log.warning("%s failed: %s; the run goes on without it (TensorBoard and the run dir keep everything)",
                            self.title, one_line(error))
            finally:
                for _ in range(taken):
                    self._jobs.task_done()

    # -- what a tracker implements -----------------------------------------------------------
    def _send_scalars(self, points):
        raise NotImplementedError

    def _images(self, name, images, step, path):
        pass

    def _text(self, name, text, step, path):
        pass

    def _table(self, name, header, rows, step):
        pass

    def _file(self, path, folder):
        pass

    def _end(self, status, best):
        pass


def trial_state(status, best):
    """A sweep trial's end as the sweep tells Optuna: complete, pruned or failed (a stopped
    trial is resumed by the next worker: it stays "stopped")."""
    if status == "pruned":
        return "pruned"
    if status == "finished":
        return "complete" if best else "failed"
    return "failed" if status == "crashed" else status


def best_key(metric):
    """The name a tracker gives the best value of `metric`: best/val/logloss for val_logloss
    (its curve's name, as utils/engine/reporting.py makes it, under best/)."""
    return "best/" + metric.replace("_", "/", 1)


def one_line(error):
    """An exception as one short line: its first line, at most 300 characters."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 300 else text[:297] + "..."


def flat_config(cfg):
    """The resolved config as {name: text} (what trackers log as parameters): every option
    but the invocation ones, None as 'None'."""
    import dataclasses

    from configs.schema import with_role

    skipped = set(with_role("invocation", experiment=cfg.experiment))
    return {field.name: str(getattr(cfg, field.name)) for field in dataclasses.fields(cfg) if field.name not in skipped}
