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
    """Epoch-end curves, image grids and log line; written before the epoch's checkpoints, so
    a run killed in between redoes and re-logs them (TensorBoard purges the first copy).
    `speed`: (images per second, share of the time spent waiting for data)."""
    step, outputs = ctx.state.global_step, ctx.outputs
    images_per_second, data_wait = speed
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
    parts = [f"train {' '.join(f'{k} {v:.4f}' for k, v in means.items())}"]
    if metrics:
        parts.append(" ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    memory = runtime.resident_megabytes()
    outputs.plot("memory/resident_mb", memory, step)
    if ctx.cfg.accumulate > 1:
        parts.append(f"{plural(sum(ctx.state.optimizer_steps.values()), 'optimizer step')} so far")
    parts += [" ".join(f"{name} {lr:.2e}" for name, lr in lrs.items()),
              f"{images_per_second:.0f} img/s ({100 * data_wait:.0f}% waiting for data)", f"rss {memory:.0f} MB"]
    log.info("epoch %d: %s%s", epoch + 1, " | ".join(p for p in parts if p), " | best" if improved else "")
