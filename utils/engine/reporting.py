"""What a run says: the progress line, the epoch line and curves, the world it runs in, and
the commands that use a finished run."""
import logging

from configs.schema import FIELDS
from utils.core.errors import plural
from utils.engine import distributed, runtime

log = logging.getLogger(__name__)


def describe_world(cfg):
    """Log the global batch under torchrun (how a resume under another number of processes
    keeps it is said by utils/engine/resume.py)."""
    world = distributed.world_size()
    if world > 1:
        accumulated = f" x --accumulate {cfg.accumulate}" if cfg.accumulate > 1 else ""
        log.info("global batch %d = %d processes x --batch-size %d%s", world * cfg.batch_size * cfg.accumulate, world,
                 cfg.batch_size, accumulated)


def next_commands(cfg, experiment):
    """The commands that use a finished run, with its real --env, one per line after train's
    `next:` (test first, as the README shows them, then the experiment's others, runs and
    TensorBoard), each typed as this shell can run it (runtime.program)."""
    chosen = "" if cfg.experiment == FIELDS["experiment"].default else f" --experiment={cfg.experiment}"
    main = runtime.main_command()
    names = sorted((name for name in type(experiment).commands if name != "train"), key=lambda name: name != "test")
    commands = [f"{main} {name}{chosen} --env={cfg.env}{runtime.checkpoint_dir_flag(cfg)}" for name in names]
    return commands + [f"{main} runs{runtime.checkpoint_dir_flag(cfg)}",
                       f"{runtime.program('tensorboard')} --logdir {cfg.checkpoint_dir}"]


def log_progress(epoch, epochs, done, total, meters, images_per_second):
    """The bar's content as one log line: 'epoch 2/10: 1,280/5,000 img (26%), loss 0.4132
    accuracy 0.8150, 41 img/s, 1m31s left in the epoch'."""
    left = (total - done) / max(images_per_second, 1e-9)
    means = " ".join(f"{name} {meter.average():.4f}" for name, meter in meters.items())
    log.info("epoch %d/%d: %s/%s img (%.0f%%), %s, %.0f img/s, %s left in the epoch", epoch + 1, epochs, f"{done:,}",
             f"{total:,}", 100 * done / max(total, 1), means, images_per_second, _duration(left))


def _duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def report_epoch(experiment, objects, ctx, epoch, means, speed, metrics, lrs, improved):
    """Epoch-end curves, image grids and two log lines, what it measured and how it went,
    each short enough for an 80-120 column terminal; written before the epoch's checkpoints,
    so a run killed in between redoes and re-logs them (TensorBoard purges the first copy).
    `speed`: (images per second, share of the time spent waiting for data, the epoch's
    seconds, validation included)."""
    step, outputs = ctx.state.global_step, ctx.outputs
    images_per_second, data_wait, seconds = speed
    for name, value in means.items():
        outputs.plot(f"train/epoch_{name}", value, step)
    for name, value in (metrics or {}).items():
        outputs.plot(name.replace("_", "/", 1), value, step)
    for name, lr in lrs.items():
        outputs.plot(f"train/{name.replace('_', '/', 1)}", lr, step)  # the tag of the warm-up's points too
    outputs.plot("train/epoch_images_per_second", images_per_second, step)  # beside train/epoch_<loss>
    if outputs.writes:
        outputs.images(experiment.images(objects, ctx), step)
    outputs.flush()
    memory = runtime.resident_megabytes()
    outputs.plot("memory/resident_mb", memory, step)
    shown = {name: value for name, value in (metrics or {}).items()
             if name not in experiment.unprinted and isinstance(value, (int, float))}
    checked = {name[len("val_"):]: value for name, value in shown.items() if name.startswith("val_")}
    results = [f"train {' '.join(f'{k} {v:.4f}' for k, v in means.items())}",
               " ".join(f"{k} {v:.4f}" for k, v in shown.items() if not k.startswith("val_")),
               f"val {' '.join(f'{k} {v:.4f}' for k, v in checked.items())}" if checked else ""]
    where = f"epoch {epoch + 1}/{ctx.cfg.max_epoch}:"
    log.info("%s %s%s", where, " | ".join(part for part in results if part), " | best" if improved else "")
    left = seconds * (ctx.cfg.max_epoch - epoch - 1)
    pace = [f"{images_per_second:.0f} img/s ({100 * data_wait:.0f}% waiting for data)",
            " ".join(f"{name} {lr:.2e}" for name, lr in lrs.items()),
            f"{plural(sum(ctx.state.optimizer_steps.values()), 'optimizer step')} so far" if ctx.cfg.accumulate > 1 else "",
            f"rss {memory:.0f} MB", f"about {_duration(left)} left of the run" if left > 0 else ""]
    log.info("%s %s", where, " | ".join(part for part in pace if part))
