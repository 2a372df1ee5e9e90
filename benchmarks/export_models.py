"""Which registered classify models export: every model of the MODELS registry and every
torchvision classification model (torchvision.<name>), randomly initialised, through the
same path as `python main.py export` (BatchNorm folded, torch.export, ONNX by torch.onnx,
the parity check against PyTorch on batches of 1 and 3), to both formats.

    .venv/bin/python benchmarks/export_models.py [--size 64] [--only resnet18,vit_b_16]
        [--timeout 900] > table.md

Each model runs in its own process (a crash or a hang is one row, not the end). Models with
a fixed input size (ViT, Swin, MaxViT: 224; Inception v3: 299) get it; the rest get --size
(default 64, which keeps the run to about an hour on 2 CPU cores). Prints a markdown table: params, export
seconds, the parity line's numbers or the first line of the error.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# position embeddings / windows for 224 px only; Inception v3's stem needs 75 px and more (299 is its own)
FIXED_SIZE = {"vit_": 224, "swin_": 224, "maxvit_": 224, "inception_v3": 299}


def one(name, size):
    """Export model `name` at `size` px to both formats; print one JSON line."""
    import logging

    import torch

    import models  # noqa: F401 - registers the models
    from utils.core.registry import MODELS
    from utils.engine.precision import fold_batchnorm
    from utils.export import Exportable
    from utils.export.exporter import fold_drift, onnx_runner, parity, pt2_runner, random_batch, to_onnx, to_pt2
    from utils.export.options import split_options

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    size = next((fixed for prefix, fixed in FIXED_SIZE.items() if name.split(".")[-1].startswith(prefix)), size)
    model = MODELS.build(name, num_classes=10, image_size=size) if name.startswith("torchvision.") \
        else MODELS.build(name, num_classes=10)
    with torch.no_grad():
        # a zero-initialised head (torchvision's ViT) would make every output 0 and parity trivial
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0, 0.02)
        # a fresh BatchNorm (mean 0, var 1, weight 1, bias 0) folds into nothing: give it an
        # affine part and the statistics of the activations it sees (two random batches in
        # training mode, averaged), as training would, so the fold is tested for real and the
        # outputs keep a trained network's scale
        norms = [module for module in model.modules()
                 if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None]
        for norm in norms:
            norm.momentum = None  # a plain average over the calibration batches
            if norm.affine:
                norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.1, 0.1)
        if norms:
            model.train()
            for seed in (10, 11):
                model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    model.eval()
    target = Exportable(model, "images", "logits", (3, size, size), {"model": name})
    options, _ = split_options({})
    row = {"model": name, "size": size, "params": sum(p.numel() for p in model.parameters())}
    folded_module, row["folded"] = fold_batchnorm(model)
    row["drift"] = fold_drift(model, folded_module, target.input_shape) if row["folded"] else 0.0
    example = random_batch(target.input_shape, 2, seed=1)
    for kind in ("onnx", "pt2"):
        started = time.perf_counter()
        try:
            with torch.no_grad():
                if kind == "onnx":
                    run = onnx_runner(to_onnx(folded_module, example, target, {"model": name}, options, None), "images")
                else:
                    run = pt2_runner(to_pt2(folded_module, example, {"model": name}, None))
                report = parity(folded_module, run, target.input_shape, (1, 3), options)
            row[kind] = ("ok: " if report.ok else "PARITY FAILED: ") + report.line.split(": ", 1)[1].rsplit(" (--", 1)[0]
        except Exception as error:  # noqa: BLE001 - the row says what failed
            row[kind] = "fails: " + (str(error).strip().splitlines() or [type(error).__name__])[0][:240]
        row[f"{kind}_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(row), flush=True)


def names(only):
    import torchvision

    import models  # noqa: F401
    from utils.core.registry import MODELS

    found = [name for name in MODELS.names() if "*" not in name and name not in ("NetG", "NetD", "CharRNN")]
    found += [f"torchvision.{arch}" for arch in torchvision.models.list_models(module=torchvision.models)]
    return [name for name in found if not only or name.split(".")[-1] in only or name in only]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="all", choices=("all", "one"))
    parser.add_argument("--model")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", default="")
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args()
    if args.mode == "one":
        one(args.model, args.size)
        return
    print("| model | px | params | BN folded (outputs moved) | ONNX | s | pt2 | s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names([part for part in args.only.split(",") if part]):
        command = [sys.executable, __file__, "one", f"--model={name}", f"--size={args.size}"]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if not lines:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
                print(f"| {name} | | | | fails: {tail} | | | |", flush=True)
                continue
            row = json.loads(lines[-1])
        except subprocess.TimeoutExpired:
            print(f"| {name} | | | | timed out after {args.timeout} s | | | |", flush=True)
            continue
        folded = f"{row['folded']} ({row['drift']:.1e})" if row["folded"] else "0"
        print(f"| {row['model']} | {row['size']} | {row['params'] / 1e6:.1f}M | {folded} | {row['onnx']} | "
              f"{row['onnx_s']} | {row['pt2']} | {row['pt2_s']} |", flush=True)


if __name__ == "__main__":
    main()
