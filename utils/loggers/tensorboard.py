"""The loggers that write beside the run: TensorBoard's event files in the run dir (the
default) and visdom (the book's live plots; needs a server). Both are utils/visualize.py's
Visualizer. Their failures are the run's: a full disk stops it with one line, as any write."""
from utils.core.registry import LOGGERS
from utils.loggers.base import Logger
from utils.visualize import Visualizer


@LOGGERS.register("tensorboard")
class TensorBoard(Logger):
    """Event files in the run dir: `tensorboard --logdir <checkpoint-dir>` shows every run.
    A resumed run drops the points of the work it redoes (purge_step), so curves continue
    without duplicates."""

    name = "tensorboard"
    backend = "tensorboard"

    def __init__(self, run_dir, cfg, start):
        super().__init__(run_dir, cfg, start)
        self.vis = Visualizer(run_dir, self.backend, env=cfg.env, purge_step=start.purge_step)

    def scalar(self, name, value, step):
        self.vis.plot(name, value, step)

    def images(self, name, images, step, path=None):
        self.vis.img(name, images, step)

    def text(self, name, text, step, path=None):
        self.vis.log(text, name, step)

    def table(self, name, header, rows, step):
        self.vis.table(name, header, rows, step)

    def flush(self):
        self.vis.flush()

    def end(self, status, best=None):
        self.vis.close()


@LOGGERS.register("visdom")
class Visdom(TensorBoard):
    """The book's visdom plots (`python -m visdom.server` first); without a server, one
    warning and nothing more."""

    name = "visdom"
    backend = "visdom"
