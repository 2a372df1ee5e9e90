"""Distributed data parallel on torchrun: one code path for 1 and N processes.

`torchrun --nproc_per_node=N main.py train ...` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK in their environment; `setup` finds them there and joins the
process group (nccl on CUDA, each process on cuda:<LOCAL_RANK>; gloo on CPU). Without them,
or with WORLD_SIZE=1, there is no process group and every function here is the identity,
so `python main.py train` runs exactly as it always did.

What the engine builds on it (utils/engine/loop.py):
  - rank 0 alone writes files (`is_main`); the others log warnings and errors only;
  - `on_main(fn)`: fn on rank 0, its failure (one exit code) shared with every rank;
  - `agree_step`: after each step one all-reduce gives every rank the same global means
    of the step's scalars, the same global image count and the same stop decision;
  - `wrap`: DistributedDataParallel (after the optional SyncBatchNorm conversion), while
    checkpoints keep holding the unwrapped modules' state dicts;
  - `gather_objects` / `broadcast_object` / `sum_values`: small collectives for the
    checkpoint's per-rank RNG states, the run name, evaluation counts and test rows.
Waits for a human (rank 0 in the live debugger) go through a second gloo group whose
timeout is a week, so a long debugging session never times out the other ranks.
"""
import datetime
import logging
import os
import signal
import sys

from utils.core.errors import UsageError, UserError
from utils.engine import peers
from utils.engine.checkpoint import unwrap

log = logging.getLogger(__name__)
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
HUMAN_WAIT = datetime.timedelta(days=7)
# Stop reasons, lowest priority first: when ranks saw different ones, the last present wins
# (a scheduler's requeue signal, then SIGTERM, then Ctrl+C, then `q` in the debugger).
STOP_DATABASE = "database unreachable"  # a sweep trial whose study database is gone (utils/sweep/hooks.py)
STOP_REASONS = ("debugger quit", signal.SIGINT, signal.SIGTERM, "requeue", STOP_DATABASE)
_objects_group = None  # gloo group for pickled objects (the default group under nccl is GPU-only)
_human_group = None
_joined = False  # whether this process has been in a process group (end_process)


class FollowerExit(UserError):
    """A non-zero rank leaving because rank 0 failed (rank 0 prints why)."""
    prefix = ""

    def __init__(self, exit_code):
        super().__init__("")
        self.exit_code = exit_code


def launched():
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def active():
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank():
    return int(os.environ["RANK"]) if launched() else 0


def local_rank():
    return int(os.environ["LOCAL_RANK"]) if launched() else 0


def world_size():
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def is_main():
    return rank() == 0


def per_node():
    """Processes on this machine (torchrun's --nproc_per_node)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def pick_device(cfg):
    """torch.device for --device (auto = CUDA when present); under torchrun with N
    processes, CUDA means this process's GPU, cuda:<LOCAL_RANK>."""
    import torch

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={cfg.device} but this machine has no usable CUDA GPU; use --device=auto or cpu")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device=mps but MPS is not available here; use --device=auto or cpu")
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def setup(cfg):
    """Join the process group when torchrun launched more than one process (idempotent)."""
    global _objects_group, _human_group, _joined
    if world_size() == 1 or active():
        return
    import torch
    import torch.distributed as dist

    if cfg.device.startswith("cuda:"):
        raise UsageError(f"--device={cfg.device}: under torchrun each process takes cuda:<LOCAL_RANK>; "
                         f"use --device=auto or cuda (and CUDA_VISIBLE_DEVICES to pick the GPUs)")
    device = pick_device(cfg)
    if device.type not in ("cuda", "cpu"):
        raise UsageError(f"--device={cfg.device}: distributed training runs on CUDA (nccl) or CPU (gloo); "
                         f"use --device=auto or cpu")
    if cfg.sync_bn and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA: SyncBatchNorm does not run on CPU; drop --sync-bn "
                         "(each process then normalises its own batch)")
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank()} but this machine shows {torch.cuda.device_count()} GPUs; "
                            f"start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=cfg.dist_timeout)
    store, _, _ = next(dist.rendezvous("env://", rank(), world_size(), timeout=timeout))
    dist.init_process_group(backend, store=peers.this_attempt(store, per_node(), world_size()), rank=rank(), world_size=world_size(), timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    _joined = True
    _objects_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
    _human_group = dist.new_group(backend="gloo", timeout=HUMAN_WAIT)
    if not is_main():
        # Rank 0 tells the story; the others speak up for warnings and errors only.
        # Warnings about the data (skipped files, ...) are the same on every rank: rank 0's are shown.
        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        for handler in root.handlers:
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank()}] %(message)s", "%H:%M:%S"))
            handler.addFilter(lambda record: record.levelno >= logging.ERROR or not record.name.startswith("data"))
    nodes = world_size() // per_node()
    log.info("distributed: %d processes on %d node%s (%s on %s)", world_size(), nodes, "s" if nodes > 1 else "", backend,
             device.type)


def lost_peer(error):
    """peers.lost_peer(error) once a process group has existed (one line for a lost peer), else None."""
    return peers.lost_peer(error) if _joined else None


def shutdown():
    """Leave the process group, and let go of the groups held here while the interpreter is whole."""
    global _objects_group, _human_group
    if active():
        import torch.distributed as dist

        dist.destroy_process_group()
    _objects_group = _human_group = None


def restarts_left():
    """Whether torchrun (its elastic agent) restarts the group when this attempt fails."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0) or 0) > int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def end_process(code):
    """Exit with `code` without the interpreter's teardown, once a process group has existed.

    After a finished run (files written, group destroyed), a gloo process could still abort at
    interpreter exit, "terminate called without an active exception" and exit -6, in about one
    exit in a hundred on a busy machine: gloo's threads and the groups DistributedDataParallel
    keeps alive were torn down along with the interpreter. So this does the part of a normal
    exit that matters (non-daemon threads joined, atexit handlers, streams flushed) and ends
    the process with os._exit, which skips the rest. Without torchrun it is sys.exit(code)."""
    if not _joined:
        sys.exit(code)
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging.shutdown, multiprocessing's clean-up of worker processes, ...
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass
    os._exit(code or 0)


def leave_together():
    """After a stop every rank agreed on: wait until rank 0 has written its files, then stop
    listening to signals, so that torchrun, which ends the other processes as soon as one
    exits non-zero, neither interrupts rank 0's last writes nor changes an exit code."""
    if not active():
        return
    import torch.distributed as dist

    dist.barrier(group=_objects_group)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def rank_prefix():
    """'[rank N] ' before a non-zero rank's error line, so the user sees where it came from."""
    return f"[rank {rank()}] " if not is_main() else ""


def exit_code_of(error):
    return getattr(error, "exit_code", None) or (130 if isinstance(error, KeyboardInterrupt) else 1)


def on_main(fn):
    """fn() on rank 0 and its result there (None elsewhere). If it fails, every rank fails:
    rank 0 with its error, the others with FollowerExit of the same exit code."""
    if not active():
        return fn()
    result, failure = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as error:
            failure = error
    code = broadcast_object(exit_code_of(failure) if failure is not None else None)
    if failure is not None:
        raise failure
    if code is not None:
        raise FollowerExit(code)
    return result


class NotShared(UserError):
    """A rank cannot see a file rank 0 wrote: the checkpoint dir is not on a shared file system."""
    agreed = True  # every rank raises it; rank 0 says it


# A rank looks for a file rank 0 wrote for 30 s by default: an NFS client caches a directory's
# entries for 30 to 60 s (acdirmin, acdirmax) unless it is told to look again. RUNNER_SHARED_WAIT
# (seconds) sets another wait.
SHARED_WAIT_VARIABLE = "RUNNER_SHARED_WAIT"


def check_shared(path):
    """Under torchrun, that every rank sees the file `path` (relative paths in its own
    working directory) as rank 0 does: the same size and the same first and last megabyte.
    A run across nodes whose --checkpoint-dir is not shared would otherwise fail at its
    first resume or sweep takeover, in a collective's traceback. Nothing is compared when
    rank 0 has no such file (the caller reports that itself)."""
    if not active():
        return
    import socket
    import time

    expected = broadcast_object(_fingerprint(path) if is_main() else None)
    seen = expected is None or is_main()
    deadline = time.monotonic() + float(os.environ.get(SHARED_WAIT_VARIABLE, 30))
    while not seen:
        seen = _fingerprint(path) == expected
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    views = gather_objects((seen, socket.gethostname()))
    blind = [(index, host) for index, (ok, host) in enumerate(views) if not ok]
    if blind:
        index, host = blind[0]
        others = f" (and {len(blind) - 1} more)" if len(blind) > 1 else ""
        raise NotShared(f"the checkpoint dir must be shared by every node: rank {index} on {host}{others} cannot see "
                        f"{path} as rank 0 wrote it; put --checkpoint-dir on a file system every node mounts at the "
                        f"same path (NFS, Lustre, ...)")


def _fingerprint(path, part=1 << 20):
    """(size, sha256 of the first and last `part` bytes) of the file at `path`, or None."""
    import hashlib

    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = hashlib.sha256(handle.read(part))
            if size > part:
                handle.seek(max(part, size - part))
                digest.update(handle.read(part))
    except OSError:
        return None
    return size, digest.hexdigest()


def broadcast_object(value):
    """Rank 0's `value` on every rank."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_objects_group)
    return box[0]


def gather_objects(value):
    """[value of rank 0, value of rank 1, ...] on every rank."""
    if not active():
        return [value]
    import torch.distributed as dist

    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value, group=_objects_group)
    return gathered


def sum_values(values):
    """The element-wise sum over ranks of a list of numbers (float64: counts stay exact)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(tensor, group=_objects_group)
    return tensor.tolist()


def agree_step(values, size, pending, save=False):
    """({name: global mean}, global image count, agreed stop reason or None, agreed save) of
    one step. `values` are this rank's batch means (tensors or numbers), `size` its batch
    size, `pending` the stop this rank was asked for (a signal number, "debugger quit",
    "requeue") or None, `save` whether this rank wants a checkpoint now (--save-every: rank
    0's clock); the save is agreed when any rank wants it. A NaN on any rank makes the mean
    NaN, so every rank sees it."""
    if not active():
        return {name: float(value) for name, value in values.items()}, size, pending, bool(save)
    import torch
    import torch.distributed as dist

    names = list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    # [value x size for each name..., size, save, one count per stop reason]: sums over ranks.
    sums = [torch.as_tensor(values[name], dtype=torch.float64, device=device).reshape(1) * size for name in names]
    counts = [float(size), float(bool(save))] + [float(pending == reason) for reason in STOP_REASONS]
    vector = torch.cat(sums + [torch.tensor(counts, dtype=torch.float64, device=device)])
    dist.all_reduce(vector)
    totals = vector.tolist()
    total_size = int(totals[len(names)])
    seen = totals[len(names) + 2:]
    agreed = next((reason for reason, count in reversed(list(zip(STOP_REASONS, seen))) if count > 0), None)
    return {name: totals[i] / total_size for i, name in enumerate(names)}, total_size, agreed, totals[len(names) + 1] > 0


def agree_stop(pending):
    """The stop reason every rank agrees on, outside the step loop (see agree_step)."""
    return agree_step({}, 0, pending)[2]


def decide_debug(wanted):
    """Rank 0's decision to open the live debugger, on every rank (one small collective
    at the --print-freq cadence)."""
    return bool(broadcast_object(bool(wanted))) if active() else wanted


def wait_for_debugger(quit_on_main=None):
    """Rank 0 passes whether `q` ended its debugger session; the others wait for it, in a
    collective whose timeout is a week (a human at the prompt, not a hung rank)."""
    if not active():
        return quit_on_main
    import torch.distributed as dist

    if not is_main():
        log.warning("rank 0 is in the live debugger; waiting for it")
    box = [quit_on_main]
    dist.broadcast_object_list(box, src=0, group=_human_group)
    return box[0]


def wrap(module, device, broadcast_buffers, sync_bn):
    """`module` for training in this process: SyncBatchNorm (--sync-bn) and DDP under N
    processes, unchanged in one. The optimizer's parameters stay the same tensors."""
    if not active():
        return module
    import torch

    if not any(p.requires_grad for p in module.parameters()):
        return module
    if sync_bn:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    # Parameters and buffers are copied from rank 0 at construction either way.
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=broadcast_buffers)


def sync_buffers(modules):
    """Every rank's module buffers (BatchNorm running statistics) become rank 0's: the ones
    its checkpoint saves, so evaluation on any rank uses the saved model."""
    if not active():
        return
    import torch.distributed as dist

    for module in modules:
        for buffer in unwrap(module).buffers():
            dist.broadcast(buffer, src=0)
