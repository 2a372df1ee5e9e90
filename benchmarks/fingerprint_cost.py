"""What the state fingerprints (utils/engine/fingerprints.py) cost a run, against an epoch.

    .venv/bin/python benchmarks/fingerprint_cost.py [--model ResNet34] [--images 17500]

Builds the model with Adam after one step (the state last.pth holds: weights, BatchNorm
buffers and Adam's two moments), then, best of --rounds:
  hash:    fingerprints.of_checkpoint of that state (every tensor's sha256), as the
           checkpoint writer's thread does at each epoch end;
  steps:   a training step alone, and one taken while a thread hashes (the loop never waits
           for the hash: the thread runs on the copy the writer already made);
  epoch:   --images (the Kaggle train split: 25,000 x 0.7) at the measured images/s;
  resume:  loading that state from a file (torch.load, weights_only) and checking it against
           the fingerprints written into it, as every --resume does (utils/engine/resume.py).
Prints the hash time, its share of an epoch, the step time ratio and the resume check's
share of a resume's load.
"""
import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.checkpoint_cost import trained_once  # noqa: E402
from utils.engine import checkpoint, fingerprints  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet34")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=17500, help="images per epoch (Kaggle's train split)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, optimizer, train_step = trained_once(args)
    state = checkpoint.detached_copy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "objects": ["model", "optimizer"]})
    size = sum(leaf.numel() * leaf.element_size() for name in state["objects"]
               for _, leaf in fingerprints.leaves(state[name]) if torch.is_tensor(leaf))
    best = {"hash": float("inf"), "alone": float("inf"), "during": float("inf")}
    for _ in range(args.rounds):
        started = time.perf_counter()
        prints = fingerprints.of_checkpoint(state)
        best["hash"] = min(best["hash"], time.perf_counter() - started)
        best["alone"] = min(best["alone"], train_step())
        thread = threading.Thread(target=fingerprints.of_checkpoint, args=(state,))
        thread.start()
        best["during"] = min(best["during"], train_step())
        thread.join()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.pth"
        torch.save(dict(state, fingerprints=fingerprints.summary(prints)), path)
        best["load"] = best["check"] = float("inf")
        for _ in range(args.rounds):
            started = time.perf_counter()
            loaded = checkpoint.load_checkpoint(path)
            best["load"] = min(best["load"], time.perf_counter() - started)
            started = time.perf_counter()
            assert fingerprints.summary(fingerprints.of_checkpoint(loaded)) == loaded["fingerprints"]
            best["check"] = min(best["check"], time.perf_counter() - started)
    epoch = args.images / (args.batch_size / best["alone"])
    print(f"{args.model} + Adam: {size / 1e6:.0f} MB of state in {fingerprints.tensor_count(prints)} tensors; "
          f"best of {args.rounds}; {torch.get_num_threads()} threads")
    print(f"  hash of the whole state: {best['hash']:.2f} s ({size / 1e6 / best['hash']:.0f} MB/s), "
          f"in the checkpoint writer's thread")
    print(f"  a training step (batch {args.batch_size}, {args.image_size} px): {best['alone']:.2f} s alone, "
          f"{best['during']:.2f} s while a thread hashes ({best['during'] / best['alone']:.2f}x)")
    print(f"  an epoch of {args.images} images at that speed: {epoch / 60:.1f} min; the hash is "
          f"{100 * best['hash'] / epoch:.3f} % of it")
    print(f"  a resume: loading last.pth {best['load']:.2f} s, checking it against its fingerprints "
          f"{best['check']:.2f} s ({best['check'] / best['load']:.2f}x the load, once per resume)")


if __name__ == "__main__":
    main()
