"""`python main.py export`: a run's checkpoint -> an ONNX file or a torch.export archive.

1. The checkpoint is the one val / test would read (--env's best.pth, else last.pth, or
   --load-model-path); its saved config names the experiment and the model, and the
   experiment says what to export (`Experiment.exportable`: classify's model, the gan's
   generator), with the EMA weights of a run trained with --ema unless --use-ema=false.
2. The module, in eval mode on the CPU, gets each BatchNorm that follows a convolution
   folded into it (utils/engine/precision.fold_batchnorm), then goes through torch.export:
   to ONNX by torch.onnx's exporter (dynamo=True, onnxscript's graph optimisations), or to
   a .pt2 archive. The batch dimension is symbolic unless --dynamic-batch=false.
3. Parity: seeded random batches (sizes 1 and 3 for a dynamic batch, else one of the fixed
   size) go through the folded PyTorch module (what val and test compute) and through the exported bytes
   (ONNX Runtime, or torch.export.load). Every output must satisfy
   |exported - PyTorch| <= --atol + --rtol x |PyTorch|; the largest absolute and relative
   differences are printed. A failure is exit 1 with nothing written.
4. Only then is the file written, atomically (utils/core/io.atomic_open): a failed or
   interrupted export never leaves a partial file, and an earlier file of the same name
   survives it.
"""
import dataclasses
import io
import json
import logging
import re
from pathlib import Path

import torch

from configs.loader import adopt_checkpoint_config, changed_options, load_config
from configs.values import Text
from utils import loggers
from utils.core.errors import UsageError, UserError
from utils.core.io import atomic_open
from utils.core.registry import EXPERIMENTS
from utils.engine import checkpoint, runtime
from utils.engine.precision import fold_batchnorm
from utils.engine.state import inference_checkpoint
from utils.export import METADATA_KEY, METADATA_VERSION
from utils.export.onnx_runtime import require, session
from utils.export.options import FORMATS, MIN_OPSET

log = logging.getLogger(__name__)
for _chatty in ("onnxscript", "onnx_ir"):  # their graph passes log each step at INFO
    logging.getLogger(_chatty).setLevel(logging.WARNING)
PARITY_SEED = 0
ONNX_LIMIT = 2 ** 31 - 2 ** 24  # bytes of weights one ONNX file can hold: protobuf's 2 GB, less room for the graph
DYNAMIC_BATCHES = (1, 3)  # parity batch sizes of a dynamic-batch export; the traced example has 2


def main(options, cfg, flags):
    """Export the checkpoint cfg names as options say (see the module docstring)."""
    cfg, state, path = open_checkpoint(cfg, flags)
    output = Path(options.output or runtime.default_output(cfg, "model" + FORMATS[options.format]))
    runtime.check_output_file(output, "--output")
    if options.format == "onnx":
        onnx = require()[0]  # before any time goes into building the model
        newest = onnx.defs.onnx_opset_version()
        if options.opset > newest:
            raise UsageError(f"--opset={options.opset}: the installed onnx {onnx.__version__} knows opsets up to "
                             f"{newest}; use --opset={MIN_OPSET} (read by every current runtime) up to {newest}")
    target = EXPERIMENTS.get(cfg.experiment)(cfg).exportable(state, path)
    # The reference is the folded module: what classify's val and test compute (they fold the
    # same way), so parity measures the exporter and the runtime alone. The fold is exact
    # arithmetic rounded differently; how far it moves the outputs is logged.
    module, folded = fold_batchnorm(target.module.eval())
    if folded:
        drift = fold_drift(target.module, module, target.input_shape)
        log.info("%s: %d BatchNorm layer(s) folded into the convolution before, which moves the outputs by %.1e at "
                 "most; parity is checked against the folded model", target.metadata.get("model"), folded, drift)
    fixed = None if options.dynamic_batch else cfg.batch_size
    metadata = {"version": METADATA_VERSION, **target.metadata, "input": target.input_name,
                "output": target.output_name, "input_shape": list(target.input_shape), "batch": fixed,
                "exported_from": str(path), "torch": torch.__version__}
    example = random_batch(target.input_shape, fixed or 2, seed=PARITY_SEED + 1)
    with torch.no_grad():
        if options.format == "onnx":
            data = to_onnx(module, example, target, metadata, options, fixed)
            run = onnx_runner(data, target.input_name)
        else:
            data = to_pt2(module, example, metadata, fixed)
            run = pt2_runner(data)
        report = parity(module, run, target.input_shape, [fixed] if fixed else DYNAMIC_BATCHES, options)
    print(report.line)
    if not report.ok:
        raise UserError(f"the exported model differs from PyTorch beyond --atol={options.atol:g} / --rtol={options.rtol:g} "
                        f"(see above); nothing was written. An op the exporter translates loosely is the usual cause: "
                        f"try --format={'pt2' if options.format == 'onnx' else 'onnx'}, or raise the tolerances if the "
                        f"difference is acceptable")
    with atomic_open(output) as handle:
        handle.write(data)
    shape = " x ".join(str(size) for size in [fixed or "batch", *target.input_shape])
    print(f"wrote {output} ({len(data) / 2 ** 20:.1f} MB, {options.format}): input {target.input_name!r} "
          f"float32 {shape}, output {target.output_name!r}; metadata entry {METADATA_KEY!r}")
    if (Path(path).parent / "config.yaml").is_file():  # the checkpoint of a run: its MLflow / W&B runs get the file
        loggers.attach(Path(path).parent, output, "model")


def open_checkpoint(cfg, flags):
    """(cfg, checkpoint dict, path) of the checkpoint cfg names, cfg made the checkpoint's
    (run_config): what export and predict() start from."""
    path = inference_checkpoint(cfg)
    state = checkpoint.load_checkpoint(path)
    return run_config(cfg, flags, state, path), state, path


def run_config(cfg, flags, state, path):
    """cfg for the checkpoint: its experiment (unless --experiment is given) and the options
    that define its model, from its saved config."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return cfg  # a bare weights file: the flags must say the model (--model, --num-classes, ...)
    if "experiment" not in changed_options(cfg) and saved.get("experiment", cfg.experiment) != cfg.experiment:
        cfg = load_config({**flags, "experiment": Text(saved["experiment"])})
    return adopt_checkpoint_config(cfg, saved, source=str(path))


def random_batch(shape, size, seed):
    """A seeded standard-normal float32 batch of `size` items of `shape`: what normalised
    images (and a generator's noise) look like to a network."""
    return torch.randn(size, *shape, generator=torch.Generator().manual_seed(seed))


def _dynamic_shapes(fixed):
    return None if fixed else ({0: torch.export.Dim("batch", min=1)},)


def to_onnx(module, example, target, metadata, options, fixed):
    """The ONNX file's bytes, with the metadata entry."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in [*module.parameters(), *module.buffers()])
    if weights >= ONNX_LIMIT:
        raise UserError(f"{metadata.get('model')} has {weights / 2 ** 30:.1f} GB of weights, more than the 2 GB one ONNX "
                        f"file holds (protobuf's limit); use --format=pt2")
    try:
        program = torch.onnx.export(module, (example,), dynamo=True, verbose=False, input_names=[target.input_name],
                                    output_names=[target.output_name], opset_version=options.opset,
                                    dynamic_shapes=_dynamic_shapes(fixed), external_data=False)
    except Exception as error:  # noqa: BLE001 - torch.export and the translator fail in many ways
        raise _cannot("ONNX", metadata, error, "--format=pt2", fixed) from None
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    return program.model_proto.SerializeToString()


def to_pt2(module, example, metadata, fixed):
    """The torch.export archive's bytes, with the metadata as runner.json."""
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes(fixed))
    except Exception as error:  # noqa: BLE001 - see to_onnx
        raise _cannot("torch.export", metadata, error, "--format=onnx", fixed) from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    return buffer.getvalue()


def _cannot(what, metadata, error, other, fixed):
    """The one-line error of a failed export: the root cause (torch.onnx wraps torch.export's
    error in its own), its first line without terminal colours."""
    log.debug("export failed", exc_info=error)
    while error.__cause__ is not None:
        error = error.__cause__
    reason = re.sub(r"\x1b\[[0-9;]*m", "", (str(error).strip().splitlines() or [""])[0])[:300]
    return UserError(f"cannot export {metadata.get('model')} to {what}: {type(error).__name__}: {reason}; "
                     f"docs/export.md lists the models that export (try {other}"
                     f"{'' if fixed else ', or --dynamic-batch=false for a model that needs a fixed batch'})")


def onnx_runner(data, input_name):
    exported = session(data)

    def run(batch):
        return torch.from_numpy(exported.run(None, {input_name: batch.numpy()})[0])

    return run


def pt2_runner(data):
    module = torch.export.load(io.BytesIO(data)).module()

    def run(batch):
        return module(batch)

    return run


def fold_drift(unfolded, folded, shape):
    """The largest |folded - unfolded| output on a seeded batch of 3."""
    batch = random_batch(shape, 3, PARITY_SEED + 9)
    with torch.no_grad():
        return float((folded(batch).float() - unfolded(batch).float()).abs().max())


@dataclasses.dataclass(frozen=True)
class ParityReport:
    ok: bool  # every output within the tolerances
    line: str  # what export prints


def parity(reference, run, shape, sizes, options):
    """Whether `run` (the exported model) gives `reference`'s outputs on seeded batches of
    `sizes` items, within options.atol / options.rtol, and the line that says so."""
    worst_abs, worst_rel, largest, ok = 0.0, 0.0, 0.0, True
    for seed, size in enumerate(sizes, start=PARITY_SEED + 2):
        batch = random_batch(shape, size, seed)
        expected = reference(batch).float()
        got = run(batch).float()
        if got.shape != expected.shape:
            raise UserError(f"the exported model answers a batch of {size} with shape {tuple(got.shape)} where PyTorch "
                            f"gives {tuple(expected.shape)}; try --dynamic-batch=false")
        difference = (got - expected).abs()
        ok = ok and bool((difference <= options.atol + options.rtol * expected.abs()).all())
        worst_abs = max(worst_abs, float(difference.max()))
        largest = max(largest, float(expected.abs().max()))
        # relative to the values that are not ~0 (|value| > atol), where a ratio means something
        meaningful = expected.abs() > options.atol
        if meaningful.any():
            worst_rel = max(worst_rel, float((difference[meaningful] / expected.abs()[meaningful]).max()))
    counted = " and ".join(str(size) for size in sizes)
    verdict = "ok" if ok else "FAILED"
    line = (f"parity with PyTorch on random batches of {counted}: max abs diff {worst_abs:.2e}, max rel diff "
            f"{worst_rel:.2e}, outputs up to {largest:.2g} (--atol={options.atol:g} --rtol={options.rtol:g}): {verdict}")
    return ParityReport(ok, line)

