"""What a busy neighbour costs a training run, per OpenMP wait policy and thread count.

    .venv/bin/python benchmarks/shared_cpu.py [--workloads gan,classify] [--rounds 1]

Each workload is a real `python main.py train` (the gan demo for 4 epochs; the classify demo
for 2), run alone and then beside one single-thread busy loop (another user's job on a
shared machine), under three settings:
  spin      libgomp's own default: threads spin a while at each barrier before sleeping
            (GOMP_SPINCOUNT=300000, its documented default)
  passive   the runner's default (utils/engine/runtime.py: OMP_WAIT_POLICY=PASSIVE), all usable cores
  1 thread  passive, --threads=1
It prints img/s (median over the epochs after the first, best of --rounds), the ratio beside
the busy loop / alone (a fair share on 2 cores is about 0.5), and each setting alone against
spin alone (what the setting costs when the machine is yours).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "gan": ["--experiment=gan", "--max-epoch=4"],
    "classify": ["--max-epoch=2"],
}
SETTINGS = {
    "spin": ({"GOMP_SPINCOUNT": "300000"}, []),
    "passive": ({}, []),
    "1 thread": ({}, ["--threads=1"]),
}


def speed(workload, setting, busy, folder):
    """Median img/s of the epochs after the first of one run."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    extra_env, flags = SETTINGS[setting]
    env.update(extra_env)
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        run = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", *WORKLOADS[workload], *flags,
                              f"--checkpoint-dir={folder}", f"--env={workload}-{setting.replace(' ', '')}-{int(busy)}",
                              "--progress=false", "--visualizer=none"], cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        if neighbour:
            neighbour.kill()
            neighbour.wait()
    if run.returncode != 0:
        sys.exit(f"{workload} / {setting} failed:\n{run.stderr[-2000:]}")
    speeds = [float(value) for value in re.findall(r"epoch \d+/\d+: (\d+) img/s", run.stderr)]
    return statistics.median(speeds[1:] or speeds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="gan,classify")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; each number: median img/s of the epochs after the first, best of {args.rounds}")
    for workload in args.workloads.split(","):
        results = {}
        with tempfile.TemporaryDirectory() as folder:
            for setting in SETTINGS:
                for busy in (False, True):
                    results[setting, busy] = max(speed(workload, setting, busy, Path(folder) / f"r{round_}")
                                                 for round_ in range(args.rounds))
        print(f"\n{workload}:")
        print(f"  {'setting':9s} {'alone':>8s} {'busy':>8s} {'busy/alone':>11s} {'alone vs spin':>14s}")
        for setting in SETTINGS:
            alone, busy = results[setting, False], results[setting, True]
            print(f"  {setting:9s} {alone:8.0f} {busy:8.0f} {busy / alone:11.2f} {alone / results['spin', False]:14.2f}")


if __name__ == "__main__":
    main()
