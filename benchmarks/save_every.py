"""What --save-every costs the training loop: a step alone against a step with a mid-epoch
last.pth written by the background thread (utils/engine/checkpoint.py save_last), side by side.

    .venv/bin/python benchmarks/save_every.py [--model ResNet34] [--rounds 3]

Per round, in a temp folder on the disk the runs use: the seconds the loop waits for the
save (the tensors copied), the seconds of the steps taken while the thread writes and
fsyncs last.pth against as many steps alone, and the whole write. Prints the loop's cost of
one save and what it is as a share of training time at --save-every=10m and at every 100
steps.
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.checkpoint_cost import parser_for, trained_once  # noqa: E402
from utils.engine import checkpoint  # noqa: E402


def main():
    args = parser_for(__doc__).parse_args()
    model, optimizer, train_step = trained_once(args)
    Path(args.folder).mkdir(parents=True, exist_ok=True)
    step = min(train_step() for _ in range(3))
    costs = []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.folder) as folder:
            manager = checkpoint.CheckpointManager(folder)
            alone = [train_step() for _ in range(3)]
            started = time.perf_counter()
            manager.save_last({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0},
                              background=True)
            wait = time.perf_counter() - started
            during, steps = 0.0, 0
            while manager._writer is not None and manager._writer.is_alive():
                during += train_step()
                steps += 1
            manager.wait()
            written = time.perf_counter() - started
            extra = during - steps * (sum(alone) / len(alone))
            cost = wait + max(extra, 0.0)
            costs.append(cost)
            size = (Path(folder) / checkpoint.LAST).stat().st_size / 1e6
            print(f"round {round_ + 1}: {size:.0f} MB last.pth written in {written:.2f} s by the thread; the loop "
                  f"waited {wait:.3f} s (copy), {steps} step(s) meanwhile took {extra:+.3f} s more than alone "
                  f"({sum(alone) / len(alone):.3f} s/step alone)")
    cost = min(costs)
    print(f"cost of one mid-epoch save to the loop: {cost:.3f} s ({cost / step:.1f} steps of {step:.3f} s)")
    print(f"  --save-every=10m: {100 * cost / 600:.3f}% of training time")
    print(f"  --save-every=100: {100 * cost / (100 * step):.2f}% of training time")


if __name__ == "__main__":
    main()
