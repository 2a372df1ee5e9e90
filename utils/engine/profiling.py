"""--profile=N: N training steps under torch.profiler, after a warm-up, on rank 0.

Written into <run dir>/profile/: trace.pt.trace.json (Chrome trace format: Perfetto,
chrome://tracing, and TensorBoard's profiler plugin with `tensorboard --logdir <run
dir>/profile`), summary.txt (the table logged at the end) and summary.json. The table's
phases are wall-clock spans of the profiled steps, measured around the loop's own seams:
data (waiting for the loader, and the copy to the device), forward (the experiment's step
less the two below), backward and optimizer (ctx.optimize: clipping, the step, --ema), and
the rest of the loop (meters, logging, checkpoints, the all-reduce of the step's numbers);
on CUDA each seam synchronises first, so a phase holds its kernels. They add up to the
profiled steps' time. The operators are torch.profiler's, by self time. After the N steps
the profiler stops and the run goes on as if it had never started."""
import contextlib
import json
import logging
import os
import sys
import time

import torch

from utils.core.errors import UsageError
from utils.core.io import atomic_open

log = logging.getLogger(__name__)
WARMUP = 4  # 3 unprofiled steps (first-use allocations, autotuning, compiling) + torch.profiler's own warm-up step
PHASES = ("data", "forward", "backward", "optimizer", "rest of the loop")
TOP_OPERATORS = 10
FOLDER = "profile"
TRACE = "trace.pt.trace.json"  # the suffix TensorBoard's profiler plugin looks for


def steps_needed(cfg):
    """Steps an epoch must still have to host --profile (0 when off)."""
    return cfg.profile + WARMUP if cfg.profile else 0


class StepProfiler:
    """Counts the steps of the epoch that hosts the profile: `begin(tick, fetched)` when a
    batch arrives, `end()` after the loop's work on it; records the phases while torch's
    profiler is active, and writes the trace and the table when it is done."""

    def __init__(self, cfg, run_dir, device):
        # the profiler's own library (kineto) logs its start and stop, and on a CUDA build
        # without a GPU an error, on stderr; keep only its fatal lines
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        self.steps, self.folder, self.device = cfg.profile, run_dir / FOLDER, device
        self.seen = 0
        self.profiler = None
        self.recording = False
        self.totals = dict.fromkeys(("data", "step", "backward", "optimizer", "total"), 0.0)
        self.finished = False
        self.started_at = None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name):
        """Time `name` (and name it in the trace) while recording."""
        if not self.recording:
            yield
            return
        self._sync()
        started = time.perf_counter()
        with torch.profiler.record_function(f"runner/{name}"):
            try:
                yield
            finally:
                self._sync()
                self.totals[name] += time.perf_counter() - started

    def begin(self, tick, fetched):
        """A batch came at `fetched` (perf_counter), asked for at `tick`."""
        self.seen += 1
        self.recording = self.profiler is not None and self.seen > WARMUP
        if self.recording:
            self.started_at = tick
            self.totals["data"] += fetched - tick

    def end(self):
        """After the loop's work on the batch: step the profiler; True when the profile is done."""
        if self.recording:
            self._sync()
            self.totals["total"] += time.perf_counter() - self.started_at
        if self.profiler is None and self.seen == WARMUP - 1:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(
                activities=activities, schedule=torch.profiler.schedule(wait=0, warmup=1, active=self.steps, repeat=1),
                on_trace_ready=self._write_trace)
            with quiet_stderr():
                self.profiler.start()
        elif self.profiler is not None:
            last = self.seen == WARMUP + self.steps
            with quiet_stderr():
                self.profiler.step()  # the first starts tracing, the last writes the trace
                if last:
                    self.profiler.stop()
            if last:
                self.recording, self.finished = False, True
                self._write_summary()
        return self.finished

    def _write_trace(self, profiler):
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / (TRACE + ".part")
        profiler.export_chrome_trace(str(temporary))
        temporary.replace(self.folder / TRACE)
        self.operators = _operators(profiler, self.device)

    def _write_summary(self):
        seconds = phase_seconds(self.totals)
        total = self.totals["total"]
        summary = {"steps": self.steps, "warmup_steps": WARMUP, "seconds": total, "phases": seconds,
                   "shares": {name: value / total if total else 0.0 for name, value in seconds.items()},
                   "operators": [{"name": name, "seconds": value, "share": value / total if total else 0.0, "calls": calls}
                                 for name, value, calls in getattr(self, "operators", [])]}
        table = render(summary)
        for line in table.splitlines():
            log.info("%s", line)
        with atomic_open(self.folder / "summary.json", "w") as handle:
            json.dump(summary, handle, indent=1)
        with atomic_open(self.folder / "summary.txt", "w") as handle:
            handle.write(table + "\n")


@contextlib.contextmanager
def quiet_stderr():
    """Standard error (the file descriptor) to /dev/null: kineto, the profiler's library,
    prints its start and stop markers there from C++, which no setting turns off."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def phase_seconds(totals):
    """{phase: seconds} of the recorded totals; the rest of the loop is what the others leave."""
    forward = max(0.0, totals["step"] - totals["backward"] - totals["optimizer"])
    known = {"data": totals["data"], "forward": forward, "backward": totals["backward"], "optimizer": totals["optimizer"]}
    return {**known, "rest of the loop": max(0.0, totals["total"] - sum(known.values()))}


def _operators(profiler, device):
    """[(operator, self seconds, calls)] of the top operators by self time (on the GPU, when there)."""
    events = profiler.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ranked = sorted((event for event in events if not event.key.startswith(("runner/", "ProfilerStep"))),
                    key=lambda event: getattr(event, key), reverse=True)
    return [(event.key, getattr(event, key) / 1e6, event.count) for event in ranked[:TOP_OPERATORS]]


def render(summary):
    """The table: each phase's share of the profiled steps, then the top operators."""
    per_step = summary["seconds"] / max(1, summary["steps"]) * 1000
    lines = [f"profile of {summary['steps']} steps ({per_step:.1f} ms a step, after {summary['warmup_steps']} warm-up steps):"]
    for name, share in summary["shares"].items():
        lines.append(f"  {name:<18} {share * 100:5.1f} %  {summary['phases'][name] / summary['steps'] * 1000:8.2f} ms")
    if summary["operators"]:
        lines.append("  top operators by self time (share of the profiled steps' time, calls):")
        for operator in summary["operators"]:
            lines.append(f"    {operator['name'][:48]:<48} {operator['share'] * 100:5.1f} %  {operator['calls']}")
    return "\n".join(lines)


def check_fits(cfg, images, world):
    """UsageError when --profile's steps and warm-up do not fit in one epoch's steps."""
    steps = -(-(-(-images // world)) // cfg.batch_size)  # this rank's batches: ceil(ceil(images / world) / batch)
    if cfg.profile and steps < steps_needed(cfg):
        fits = steps - WARMUP
        fix = f"give --profile={fits} or less" if fits > 0 else "give a smaller --batch-size or more data"
        raise UsageError(f"--profile={cfg.profile}: an epoch has {steps} steps here ({images} images, --batch-size="
                         f"{cfg.batch_size}), fewer than the {WARMUP} warm-up steps and {cfg.profile} profiled ones; {fix}")
