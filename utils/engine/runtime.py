"""What every command does before its real work: pick the device, name and create the run
directory, log and save the resolved config, build data loaders."""
import dataclasses
import logging
import os
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import configs
from configs.schema import FIELDS
from configs.values import DATA_PATHS
from utils.core.errors import UsageError, UserError, shorten
from utils.core.io import atomic_open
from utils.core.records import Damaged
from utils.core.shell import main_command, program
from utils.engine import distributed, run_lock, status
from utils.engine.checkpoint import BEST, LAST

log = logging.getLogger(__name__)
STUDY_RECORD = "sweep.yaml"  # what marks a sweep's study folder (utils/sweep/study.py RECORD)


# How OpenMP threads wait between parallel regions, unless the user says otherwise. libgomp's
# default spins for a while before it sleeps; when another process takes one of the cores,
# the thread spinning at a barrier waits for a thread that is not running, and a 2-core
# run beside one busy process fell to 0.30-0.40x of its speed where its fair share is about
# 0.5x. Passive waiting gives the core back at once (benchmarks/shared_cpu.py prints the
# ratios, benchmarks/README.md has them).
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}


def prepare_threads():
    """Set the OpenMP wait policy before torch is imported (libgomp reads it when it loads),
    unless the environment says how to wait already (OMP_WAIT_POLICY or GOMP_SPINCOUNT)."""
    if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        os.environ.update(WAIT_POLICY)


def usable_cores():
    """The cores this process may run on (its affinity mask: taskset, cgroups cpusets, SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def apply_threads(cfg):
    """torch's intra-op thread count for --threads (0: this process's share of its cores;
    OMP_NUM_THREADS, which torchrun also sets, wins then). Returns the count in use."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        # torch's own default (one per physical core where it can tell) unless this process
        # may use fewer cores; never one thread per hyperthread
        torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cores() // distributed.per_node())))
    return torch.get_num_threads()


def apply_determinism(cfg):
    """--deterministic: kernels that give the same bits every run on the GPU (the CPU's are
    already). cuBLAS reads its workspace setting when CUDA starts, so this runs before."""
    if not cfg.deterministic:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without such a kernel warns, not fails
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def checkpoint_dir_flag(cfg):
    """' --checkpoint-dir=D' for a command about cfg's run, or '' for the default folder."""
    return "" if cfg.checkpoint_dir == FIELDS["checkpoint_dir"].default else f" --checkpoint-dir={cfg.checkpoint_dir}"


def run_flags(cfg):
    """'--env=E [--checkpoint-dir=D]', or '--load-model-path=P': the flags that name cfg's
    checkpoint in a printed command."""
    if cfg.env:
        return f"--env={cfg.env}{checkpoint_dir_flag(cfg)}"
    return f"--load-model-path={cfg.load_model_path}"


def _launcher():
    """How this process was launched, for a printed command: None, or torchrun and its options."""
    if distributed.world_size() == 1:
        return None
    per_node, torchrun = distributed.per_node(), program("torchrun")
    one_node = per_node == distributed.world_size()
    return f"{torchrun} --nproc_per_node={per_node}" if one_node else f"{torchrun} <the same torchrun options>"


def resume_command(cfg):
    """The command that continues the run of `cfg` (under torchrun: with torchrun)."""
    return f"{main_command(_launcher())} train --env={cfg.env}{checkpoint_dir_flag(cfg)} --resume"


def further_command(cfg, done):
    """The command that trains cfg's finished run (`done` epochs) on, half as long again."""
    return f"{resume_command(cfg)} --max-epoch={done + max(1, done // 2)}"


def command_again():
    """This process's command line as this shell can run it again (a sweep continues so)."""
    return f"{main_command(_launcher())} {shlex.join(sys.argv[1:])}"


def name_run(cfg):
    """cfg with env set: the given --env, or <experiment>-<model>-<YYYYmmdd-HHMMSS>."""
    if cfg.env:
        return cfg
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = f"{cfg.experiment}-{cfg.model}-{stamp}"
    suffix = 1
    while (Path(cfg.checkpoint_dir) / env).exists():  # two runs started in the same second
        suffix += 1
        env = f"{cfg.experiment}-{cfg.model}-{stamp}-{suffix}"
    return dataclasses.replace(cfg, env=env)


def check_output_dir(folder, option):
    """UserError unless files can be created in `folder` (made if missing): checked before
    a run or a prediction starts, so a bad path costs seconds, not an epoch."""
    folder = Path(folder)
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{option}: cannot create folder {str(folder)!r}: {str(blocker)!r} is a file, not a folder")
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(f"{option}: cannot write in {str(existing)!r}: {(error.strerror or str(error)).lower()}") from None


def output_file(cfg, option, name):
    """The file a command writes for `option` (result_file, gen_img): its value when given,
    else `name` in the run dir (of --env, or the folder of a --load-model-path that lies in a
    run dir), else beside a bare weights file under the file's name (lenet.pth -> lenet.csv).
    So one run's test never overwrites another run's csv."""
    return getattr(cfg, option) or default_output(cfg, name)


def default_output(cfg, name):
    """Where a command writes `name` when no file is given: see output_file."""
    if cfg.load_model_path:
        weights = Path(cfg.load_model_path)
        if (weights.parent / "config.yaml").is_file():
            return str(weights.parent / name)
        return str(weights.with_suffix(Path(name).suffix))
    return str(cfg.run_dir / name) if cfg.env else name


def check_output_file(path, option):
    """UserError unless `path` can be written as a file: not a folder, in a writable folder.
    A file that goes into a run dir holds the run's lock until the command ends
    (utils/engine/run_lock.py): a run being trained is written by its trainer alone."""
    path = Path(path)
    example = {"--result-file": "result.csv", "--gen-img": "result.png", "--output": "model.onnx"}.get(option, "out")
    if path.is_dir():
        raise UserError(f"{option}={path} is a folder; give a file name, e.g. {option}={path / example}")
    check_output_dir(path.parent, option)
    if (path.parent / "config.yaml").is_file():  # a run dir (a folder with a stray .pth is not)
        distributed.on_main(lambda: run_lock.acquire(path.parent, hint=f", or write the file elsewhere: {option}=<file>"))


def absolute_data(cfg):
    """cfg with its data folders (DATA_PATHS) absolute: what a new run saves, so that its
    config.yaml and manifest.json name the same data from any working directory."""
    found = {name: os.path.abspath(os.path.expanduser(getattr(cfg, name))) for name in DATA_PATHS
             if getattr(cfg, name, None)}
    return dataclasses.replace(cfg, **found)


def check_new_run(cfg):
    """UsageError when a new run (no --resume) would land in a run dir that holds a run:
    checked first, before any data is read or model built."""
    run_dir = cfg.run_dir
    if "/" in cfg.env and not cfg.resume:
        raise UsageError(f"--env={cfg.env} names a run of a group ({cfg.env.split('/')[0]}: its sweep makes its runs); a "
                         f"new run's --env is one name")
    if (run_dir / STUDY_RECORD).exists():
        raise UsageError(f"{run_dir} is a sweep's study, not a run; give another --env (its trials: `{main_command()} "
                         f"sweep --study={cfg.env}{checkpoint_dir_flag(cfg)} --summary`)")
    if not cfg.resume and any((run_dir / name).exists() for name in (LAST, BEST)):
        raise UsageError(f"{run_dir} already holds a run; {_go_on(cfg)}, or start a new one with another --env")


def _go_on(cfg):
    """How to go on with the run in cfg's run dir, as its status.json tells: a finished run
    trains further with a larger --max-epoch (the words `train --resume` prints for it)."""
    try:
        record = status.read(cfg.run_dir) or {}
    except Damaged:
        record = {}
    done, planned = record.get("epoch"), record.get("max_epoch")
    if record.get("status") == "finished" and done is not None and planned is not None and done >= planned:
        return (f"it has finished ({done} of --max-epoch={planned} epochs done); train it further with "
                f"`{further_command(cfg, done)}`")
    return f"continue it with `{resume_command(cfg)}`"


def start_run(cfg, named=None, given=(), source=None):
    """Create the run dir, refuse to overwrite another run, log what the user set (`given`:
    the option names typed; `source`: where the rest comes from, when not from the defaults)
    and what came from the data (`named`: the config before the data was read) and save
    config.yaml.
    Returns (run dir, whether this call created it)."""
    check_new_run(cfg)
    run_dir = cfg.run_dir
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create run folder {str(run_dir)!r}: {(error.strerror or str(error)).lower()}") from None
    for line in configs.describe(cfg, named, given, source):
        log.info("%s", line)
    try:
        with atomic_open(run_dir / "config.yaml", "w", encoding="utf-8") as handle:
            handle.write(configs.dump_yaml(cfg, run_dir / "config.yaml"))
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    log.info("run dir %s (the whole config: config.yaml there)", run_dir)
    return run_dir, created


def make_loader(dataset, cfg, device, shuffle, epoch=0, start=0):
    """DataLoader over this rank's part of `dataset` (all of it in a single process) with
    our deterministic sampler and no global-RNG use; `start` counts images of the epoch's
    global order already consumed."""
    import torch

    from data.sampling import EpochSampler
    from data.transforms import collate
    from utils.core import seeding  # numpy: off the path of help

    sampler = EpochSampler(len(dataset), cfg.seed, shuffle=shuffle, epoch=epoch, start=start,
                           rank=distributed.rank(), world=distributed.world_size(), batch_size=cfg.batch_size)
    pin = device.type == "cuda" if cfg.pin_memory is None else cfg.pin_memory
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=pin,
        drop_last=False,  # keep the last partial batch: every val/test image counts
        collate_fn=collate,  # uint8 images as channels_last batches (data/transforms.py)
        # Our own generator: DataLoader draws its base seed from it instead of the global RNG,
        # so creating a loader never shifts dropout or init randomness.
        generator=torch.Generator().manual_seed(seeding.derive_seed(cfg.seed, seeding.LOADER)),
        # Workers that live as long as the loader: a run keeps one train loader (and the
        # classify experiment one val loader) for all its epochs, so no epoch waits for
        # worker processes to start and fill the first batches.
        persistent_workers=cfg.num_workers > 0,
        worker_init_fn=_ignore_sigint,
    )


def _ignore_sigint(worker_id):
    # Ctrl+C reaches the whole process group. Workers ignore it so that the main process
    # alone decides: finish the step, save, then shut the workers down in order.

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resident_megabytes():
    """This process's resident memory (RSS) in MB now (its peak where /proc is missing):
    logged each epoch, so a leak shows as a climb (benchmarks/memory.py)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


# How torch says an allocation failed (CPU, CUDA) or a size overflowed before allocating.
ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "not enough memory",
                       "storage size calculation overflowed")


def out_of_memory(error):
    """A one-line UserError for `error` when it is an allocation that failed (a batch or a
    model larger than the machine holds), else None."""
    text = str(error)
    if not (isinstance(error, MemoryError) or (isinstance(error, RuntimeError)
                                               and any(part in text.lower() for part in ALLOCATION_FAILURES))):
        return None
    reason = (text.strip().splitlines() or [type(error).__name__])[0]
    # c10's "[enforce fail at alloc_cpu.cpp:117] err == 0. " says nothing to a user
    reason = reason[reason.index("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in reason else reason
    reason = shorten(reason, 160)
    return UserError(f"out of memory: {reason}; lower --batch-size, --image-size or the model's sizes "
                     f"(`{main_command()} help` lists them)")
