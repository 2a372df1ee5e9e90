"""How often a finished gloo process aborts at exit: the interpreter's teardown vs end_process.

    .venv/bin/python benchmarks/ddp_exit.py [--launches 200] [--parallel 4] [--steps 30]

Each launch is `torchrun --standalone --nproc_per_node=2` of a bare script that trains a small
DistributedDataParallel MLP on gloo for --steps steps. Each step also does an all-reduce and
an object broadcast, as the engine does. The script then destroys the process group and ends
in one of two ways:

  teardown     falls off the end, so Python tears the interpreter down (the runner before)
  end_process  utils.engine.distributed.end_process(0), what main.py does under torchrun now

Launches alternate between the two ways and run --parallel at a time, so both see the same
load. A busy machine is where the abort shows. The script prints, for each way, how many
launches exited non-zero, and how many of those said "terminate called without an active
exception". The abort is rare (about 1 in 100 here), so it takes a few hundred launches.
"""
import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("teardown", "end_process")
SCRIPT = """
import datetime, sys
sys.path.insert(0, {root!r})
import torch, torch.distributed as dist
from utils.engine import distributed

dist.init_process_group("gloo")
objects = dist.group.WORLD
human = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
model = torch.nn.parallel.DistributedDataParallel(
    torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 2)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range({steps}):
    model(torch.randn(8, 30)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    dist.all_reduce(torch.ones(4))
    box = [{{"step": step}}]
    dist.broadcast_object_list(box, src=0, group=objects)
dist.destroy_process_group()
if sys.argv[1] == "end_process":
    distributed._joined = True
    distributed.end_process(0)
"""


def launch(script, way):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), way], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return way, result.returncode, "terminate called without an active exception" in result.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=200, help="launches in all, half each way")
    parser.add_argument("--parallel", type=int, default=4, help="launches running at a time")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "ddp_exit_script.py"
        script.write_text(SCRIPT.format(root=str(ROOT), steps=args.steps))
        ways = [WAYS[index % 2] for index in range(args.launches)]
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda way: launch(script, way), ways))

    print(f"{args.launches} launches of 2 gloo processes, {args.parallel} at a time, {args.steps} DDP steps each")
    for way in WAYS:
        mine = [result for result in results if result[0] == way]
        failed = [result for result in mine if result[1] != 0]
        aborted = [result for result in failed if result[2]]
        print(f"  {way:<12} {len(failed):3d} of {len(mine)} exited non-zero "
              f"({len(aborted)} with 'terminate called without an active exception')")


if __name__ == "__main__":
    main()
