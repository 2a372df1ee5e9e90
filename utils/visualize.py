"""Visualizer: the book's plot / img / log calls, written to TensorBoard (default) or visdom.

TensorBoard event files go into the run dir, so `tensorboard --logdir checkpoints` shows
every run side by side. The visdom backend needs a running server; if none answers, one
warning is logged and every later call is a no-op, never a traceback per plot.
"""
import itertools
import logging
import math
import os

from PIL import Image

from utils.core.io import OutputError, atomic_open
from utils.core.shell import program

log = logging.getLogger(__name__)
_WRITERS = itertools.count(1)  # numbers the event files this process opens


class Visualizer:
    """plot(name, y), img(name, images), log(text), table(name, rows); steps are explicit or
    auto-incremented per name as in the book."""

    def __init__(self, run_dir, backend="tensorboard", env="main", purge_step=None):
        self.backend = backend
        self.index = {}
        self.writer = None
        self.vis = None
        if backend == "tensorboard":
            # purge_step drops points at/after it left by an interrupted run, so a resumed
            # run continues the curves without duplicates.
            # tensorboardX names the file after the host and the second it opens it: a run
            # stopped and resumed within one second would overwrite the first one's points.
            self.writer, self._events = _summary_writer(run_dir, f".{os.getpid()}.{next(_WRITERS)}",
                                                        purge_step=purge_step, flush_secs=30)
        elif backend == "visdom":
            self.vis = _connect_visdom(env)

    def _check(self):
        """OutputError once the event file could not be written (a full disk): one line, the
        run stops as on any failed write; the points written before it are kept."""
        if self.writer is not None and self._events.failure:
            error = self._events.failure[0]
            raise OutputError(f"cannot write {self._events.name}: {_reason(error)}; the curves written before are kept")

    def _step(self, name, step):
        if step is None:
            step = self.index.get(name, 0)
        self.index[name] = step + 1
        return step

    def plot(self, name, y, step=None):
        """One scalar point on curve `name`."""
        step = self._step(name, step)
        if self.writer is not None:
            self._check()
            self.writer.add_scalar(name, float(y), step)
        elif self.vis is not None:
            self.vis.line(Y=[float(y)], X=[step], win=name, opts={"title": name}, update=None if step == 0 else "append")

    def img(self, name, images, step=None):
        """A grid of images: a (N,)C,H,W float tensor in [0, 1]."""
        step = self._step(name, step)
        images = images.detach().cpu()
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if self.writer is not None:
            self._check()
            self.writer.add_images(name, images, step)
        elif self.vis is not None:
            self.vis.images(images.numpy(), win=name, opts={"title": name})

    def log(self, text, name="log", step=None):
        """A line of text (markdown in TensorBoard's Text tab)."""
        step = self._step(name, step)
        if self.writer is not None:
            self._check()
            self.writer.add_text(name, text, step)
        elif self.vis is not None:
            self.vis.text(text, win=name, append=step > 0)

    def table(self, name, header, rows, step=None):
        """A small table (a markdown table in TensorBoard), e.g. a confusion matrix."""
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        self.log("\n".join(lines), name=name, step=step)

    def flush(self):
        if self.writer is not None:
            self.writer.flush()
            self._check()

    def close(self):
        if self.writer is not None:
            self.writer.close()  # a failed write was said already, or is said by the error that stops the run
            self.writer = None


def _summary_writer(run_dir, suffix, purge_step=None, **options):
    """(tensorboardX SummaryWriter of a new event file in `run_dir`, its _guard); a file
    that cannot be created is an OutputError. Events are written when they are added
    (_write_when_added), and `purge_step` starts the file as tensorboardX would."""
    from tensorboardX import SummaryWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    try:
        writer = SummaryWriter(logdir=str(run_dir), filename_suffix=suffix, **options)
        # tensorboardX 2.6's objects (pinned in requirements.txt): writer -> FileWriter -> EventFileWriter -> EventsWriter
        file_writer = writer._get_file_writer()
    except OSError as error:
        raise OutputError(f"cannot write TensorBoard's event file in {run_dir}: {_reason(error)}") from None
    guarded = _guard(file_writer.event_writer._ev_writer)
    _write_when_added(file_writer.event_writer)
    if purge_step is not None:  # what SummaryWriter(purge_step=) adds: TensorBoard hides the steps from it on
        file_writer.add_event(Event(step=purge_step, file_version="brain.Event:2"))
        file_writer.add_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
    return writer, guarded


def _write_when_added(event_file_writer):
    """Write each event into the file when it is added, instead of queueing it for
    tensorboardX's thread, which writes when it gets to it and flushes every flush_secs: its
    flush() does not wait for the queue, so a run killed (SIGKILL) shortly after an epoch's
    end lost that epoch's points, and the resume, which redoes only the steps after its
    checkpoint, never wrote them again. Written and flushed here, an event is in the file (the
    OS's page cache, which a killed process does not lose) when add_* returns."""
    events_writer = event_file_writer._ev_writer

    def add_event(event):
        if not event_file_writer._closed:
            events_writer.write_event(event)
            events_writer.flush()

    event_file_writer.add_event = add_event


class _Guarded:
    """What _guard gives back: the event file's name and the write error, once one happened."""

    def __init__(self, name):
        self.name, self.failure = name, []


def _guard(events_writer):
    """Make tensorboardX's EventsWriter keep an OSError (ENOSPC, EIO) instead of raising it.
    Its writes run on tensorboardX's logging thread, where an error kills the thread with a
    traceback, after which the next add blocks for ever on a full queue; guarded, the thread
    drops what comes after the first error and Visualizer._check raises it as one line."""
    guarded = _Guarded(events_writer._file_name)

    def keeping_errors(method, after_failure):
        def call(*args):
            if guarded.failure and not after_failure:
                return None
            try:
                return method(*args)
            except OSError as error:
                guarded.failure.append(error)
                return None
        return call

    # close runs even after a failure: it releases the file (its flush, guarded, writes nothing more)
    for name, after_failure in (("_write_serialized_event", False), ("flush", False), ("close", True)):
        setattr(events_writer, name, keeping_errors(getattr(events_writer, name), after_failure))
    return guarded


def _reason(error):
    return (error.strerror or str(error)).lower()


def _connect_visdom(env):
    try:
        import visdom

        vis = visdom.Visdom(env=env, raise_exceptions=True, use_incoming_socket=False)
        if vis.check_connection(timeout_seconds=2):
            return vis
    except Exception as error:  # any failure to reach a server means "no visdom", by design
        log.warning("visdom unavailable (%s); plots are skipped. Start one with `%s -m visdom.server`.", error,
                    program("python"))
        return None
    log.warning("no visdom server answered; plots are skipped. Start one with `%s -m visdom.server`.", program("python"))
    return None


def save_grid(images, path, nrow=None):
    """Write images (N, C, H, W) in [0, 1] as one PNG grid, atomically; returns the path.
    `nrow` images per row (default: a near-square grid)."""
    import torch
    from torchvision.utils import make_grid

    images = images.detach().float().cpu()
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_open(path, "wb") as handle:
        Image.fromarray(pixels).save(handle, format="PNG")
    return path


def write_hparams(run_dir, params, metrics, state="complete"):
    """A run's hyperparameters and final metrics in TensorBoard's HParams tab (one session
    per run dir, so `tensorboard --logdir <study folder>` compares a sweep's trials side by
    side); `state` is the trial's ("complete", "pruned", "failed"), shown as an hparam too.
    Written to an event file of its own in the run dir, next to the run's curves."""
    from tensorboardX.summary import hparams

    shown = {name: value if isinstance(value, (bool, int, float, str)) else str(value)  # None: 'None'
             for name, value in params.items()}
    experiment, start, end = hparams({**shown, "trial_state": state}, dict(metrics))
    writer, events = _summary_writer(run_dir, f".hparams.{os.getpid()}.{next(_WRITERS)}")
    with writer:
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, float(value), 0)
    if events.failure:
        raise OutputError(f"cannot write {events.name}: {_reason(events.failure[0])}")
