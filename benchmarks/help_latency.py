"""How fast `help` and a config error answer, next to the cost of `import torch`.

    .venv/bin/python benchmarks/help_latency.py [--runs 7]

Prints the median wall time of each command over fresh processes and its ratio to the
target (0.5 s) and to a bare `import torch`. The machine is shared and noisy: read the
medians, and compare only numbers from one run of this script.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.5
CASES = {
    "main.py help": [sys.executable, "main.py", "help"],
    "main.py train --lrr=0.1 (config error)": [sys.executable, "main.py", "train", "--lrr=0.1"],
    "main.py train --model=ResNet43 (registry error)": [sys.executable, "main.py", "train", "--model=ResNet43"],
    "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch, torchvision"],
}


def median_wall(command, runs):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    results = {name: median_wall(command, runs) for name, command in CASES.items()}
    torch_s = results["python -c 'import torch' (reference)"]
    print(f"median of {runs} fresh processes each (target {TARGET_S:.2f} s)")
    for name, seconds in results.items():
        print(f"  {name:<48} {seconds:6.3f} s   {seconds / TARGET_S:5.2f}x target   {seconds / torch_s:5.2f}x import torch")


if __name__ == "__main__":
    main()
