"""What `reproduce` will do, read from the run dir before torch loads (bad input is one line
at once): the run, its saved config, manifest and fingerprints, the starting checkpoint,
and the Config of the scratch run (the run's own, with the execution flags given and, by
default, the thread count the run was trained with)."""
import dataclasses
import os
import time
from pathlib import Path

from configs.loader import load_config, read_yaml
from configs.values import DATA_PATHS, Text
from utils.core.errors import UsageError, UserError
from utils.core.shell import main_command
from utils.engine import checkpoint, fingerprints, manifest, manifest_diff
from utils.engine.runtime import STUDY_RECORD, checkpoint_dir_flag


@dataclasses.dataclass
class Plan:
    run_dir: Path  # the original run: read, never written
    env: str  # as given: <run> or <study>/trial-<n>
    experiment: str
    cfg: object  # the scratch run's Config, env still unset (rank 0 names it: scratch_name)
    manifest: dict  # the original's manifest.json, or None (a run from before manifests)
    prints: dict  # {epoch: fingerprint record} of the original
    start: Path  # --from: the checkpoint to start from, or None
    options: object  # ReproduceOptions
    threads_given: bool = False  # --threads was given (else the run's own count is used)


def prepare(options, cfg, flags, study=""):
    """The Plan of `reproduce` for the command's config `cfg` (of a sweep's trial: its
    checkpoint dir is the `study`'s folder) and its other run flags `flags`."""
    if not cfg.env:
        raise UsageError(f"reproduce needs a run: --env=<run name> (`{main_command()} runs` lists them), or "
                         f"--env=<study>/trial-<n> for a sweep's trial")
    run_dir = Path(cfg.checkpoint_dir) / cfg.env
    name = f"{study}/{cfg.env}" if study else cfg.env
    top = Path(cfg.checkpoint_dir).parents[len(Path(study).parts) - 1] if study else Path(cfg.checkpoint_dir)
    if (run_dir / STUDY_RECORD).is_file():
        raise UsageError(f"{run_dir} is a sweep's study; reproduce one of its trials: --env={name}/trial-<n> "
                         f"(`{main_command()} sweep --study={cfg.env}{checkpoint_dir_flag(cfg)} --summary` lists them)")
    if not checkpoint.is_run(run_dir):
        raise UserError(f"no run {name} in {top}{checkpoint.run_hint(run_dir, study) or ''}")
    saved_config = run_dir / "config.yaml"
    if not saved_config.is_file():
        raise UserError(f"{run_dir} has no config.yaml, so what it trained is unknown; reproduce needs it")
    saved = read_yaml(saved_config)
    experiment = str(saved.get("experiment") or "classify")
    start = None
    if options.start:
        start = run_dir / options.start if (run_dir / options.start).is_file() else Path(options.start)
        if not start.is_file():
            found = sorted(p.name for p in run_dir.glob("*.pth"))
            raise UserError(f"--from={options.start}: no such checkpoint; {run_dir} holds {', '.join(found) or 'none'}")
        owner = start.parent
        if (owner / "config.yaml").is_file() and owner.resolve() != run_dir.resolve():
            raise UsageError(f"--from={options.start} is a checkpoint of run {owner.name}, not of {name}; give one of "
                             f"{name}'s: {', '.join(sorted(p.name for p in run_dir.glob('*.pth'))) or 'it has none'}")
    recorded = manifest.read(run_dir)
    manifest.read_files(run_dir)  # read again at the end: a damaged one is said now, before any training
    overrides = {str(key).replace("-", "_"): Text(str(value)) if not isinstance(value, bool) else value
                 for key, value in flags.items() if str(key).replace("-", "_") not in ("env", "checkpoint_dir")}
    threads_given = "threads" in overrides
    if recorded:  # a run saved its data folders as typed before they were saved absolute: where it ran
        cwd = manifest_diff.block_at(recorded, 0)[1].get("cwd")
        for option in DATA_PATHS:
            value = saved.get(option)
            if cwd and isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)) \
                    and option not in overrides:
                overrides[option] = Text(os.path.join(cwd, value))
    if recorded and start is None:  # (from a checkpoint: its own thread count and config, rerun._start)
        _, block = manifest_diff.block_at(recorded, 0)
        if block.get("threads") and not threads_given:
            overrides["threads"] = Text(str(block["threads"]))  # the run's own count: float sums split alike
        if block.get("max_epoch"):  # a schedule's length as it began (config.yaml has a resume's --max-epoch)
            overrides["max_epoch"] = Text(str(block["max_epoch"]))
    parent = top  # scratch runs beside the runs
    if start is None:
        scratch_cfg = load_config({"config": str(saved_config), **overrides, "env": "reproduce",
                                   "checkpoint_dir": str(parent), "resume": ""})
    else:
        scratch_cfg = load_config({**overrides, "experiment": experiment, "env": "reproduce",
                                   "checkpoint_dir": str(parent), "resume": "last"})
    return Plan(run_dir, name, experiment, scratch_cfg, recorded, fingerprints.read(run_dir), start, options,
                threads_given)


def scratch_name(plan):
    """A fresh run name beside the runs: <run>.reproduce-<YYYYmmdd-HHMMSS>[-k]."""
    base = f"{plan.env.strip('/').replace('/', '-')}.reproduce-{time.strftime('%Y%m%d-%H%M%S')}"
    name, suffix = base, 1
    while os.path.exists(Path(plan.cfg.checkpoint_dir) / name):
        suffix += 1
        name = f"{base}-{suffix}"
    return name
