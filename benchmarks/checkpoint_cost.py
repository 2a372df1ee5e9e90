"""What an epoch-end checkpoint costs the training loop: written in the loop (as before)
against written by the background thread (utils/engine/checkpoint.py), side by side.

    .venv/bin/python benchmarks/checkpoint_cost.py [--model ResNet34] [--rounds 3]

Builds the model with Adam (after one step, so Adam's two moments exist: the state a
resumable last.pth holds), then per round, in a temp folder on the disk the runs use:
  in the loop:   save_epoch_end(..., background=False): best.pth + last.pth written and
                 fsynced before training may go on;
  in background: save_epoch_end(..., background=True): the time until training may go on
                 (copying the tensors), and one training step taken while the thread
                 writes, against one step alone.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import load_config  # noqa: E402
from models import build_model  # noqa: E402
from utils.engine import checkpoint  # noqa: E402


def trained_once(args):
    """(model, its Adam, a function that takes one training step and returns its seconds) of
    --model at --image-size, after one step, so Adam's two moments exist (the state a
    resumable last.pth holds)."""
    cfg = load_config({"model": args.model, "num_classes": 2, "image_size": args.image_size})
    model = build_model(cfg).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size).to(memory_format=torch.channels_last)
    labels = torch.zeros(args.batch_size, dtype=torch.long)

    def train_step():
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    train_step()
    return model, optimizer, train_step


def parser_for(doc):
    """The options the checkpoint benchmarks share (the model trained once, rounds, folder)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default="ResNet34")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", default="checkpoints", help="where to write (the disk of your runs)")
    return parser


def main():
    args = parser_for(__doc__).parse_args()
    model, optimizer, train_step = trained_once(args)

    def state():
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}

    Path(args.folder).mkdir(parents=True, exist_ok=True)
    best = {"loop": float("inf"), "pause": float("inf"), "write": float("inf"), "alone": float("inf"), "during": float("inf")}
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        manager = checkpoint.CheckpointManager(folder)
        weights = lambda: {"model": model.state_dict(), "kind": checkpoint.WEIGHTS_KIND}  # noqa: E731
        for _ in range(args.rounds):
            started = time.perf_counter()
            manager.save_epoch_end(state(), 1, improved=True, weights=weights, background=False)
            best["loop"] = min(best["loop"], time.perf_counter() - started)
            best["alone"] = min(best["alone"], train_step())
            started = time.perf_counter()
            manager.save_epoch_end(state(), 1, improved=True, weights=weights, background=True)
            best["pause"] = min(best["pause"], time.perf_counter() - started)
            best["during"] = min(best["during"], train_step())
            manager.wait()
            best["write"] = min(best["write"], time.perf_counter() - started)
        sizes = {name: (Path(folder) / name).stat().st_size / 1e6 for name in (checkpoint.BEST, checkpoint.LAST)}
    print(f"{args.model} + Adam: last.pth {sizes['last.pth']:.0f} MB, best.pth {sizes['best.pth']:.0f} MB, "
          f"written to {Path(args.folder).resolve()}; best of {args.rounds}")
    print(f"  written in the loop:     training waits {best['loop']:.2f} s")
    print(f"  written in background:   training waits {best['pause']:.2f} s (the copy); the thread is done after "
          f"{best['write']:.2f} s")
    print(f"  a training step (batch {args.batch_size}): {best['alone']:.2f} s alone, {best['during']:.2f} s while the thread writes")
    print(f"  the loop's wait: {best['loop'] / best['pause']:.0f}x shorter")


if __name__ == "__main__":
    main()
