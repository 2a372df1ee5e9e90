"""The options of `python main.py export` itself. Every other flag is a run option that picks
the checkpoint (--env, --load-model-path, --checkpoint-dir, --use-ema, --batch-size, --device);
`help` reads this table without importing torch."""
import dataclasses
from pathlib import Path

from configs.commands import register_command
from configs.values import flag, split_command_flags
from utils.core.errors import UsageError

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
MIN_OPSET = 18  # torch.onnx's exporter (dynamo=True) writes opset 18 and newer

# {name: (type, default, doc)}
OPTIONS = {
    "format": (str, "onnx", "onnx (ONNX Runtime, TensorRT, OpenVINO, browsers; needs `bash scripts/setup.sh --export`) "
                            "| pt2 (a torch.export archive: torch.export.load(file).module())"),
    "output": (str, "", "file to write; '' = model.onnx / model.pt2 in the run dir (of --env, or of a "
                        "--load-model-path inside one), or beside a bare weights file"),
    "opset": (int, MIN_OPSET, f"ONNX opset to target ({MIN_OPSET} and newer; 18 is read by every current runtime)"),
    "dynamic_batch": (bool, True, "any batch size at run time; false = a fixed batch of --batch-size (for runtimes "
                                  "that want static shapes)"),
    "atol": (float, 1e-3, "parity check: largest allowed |exported - PyTorch| per output value, beside --rtol"),
    "rtol": (float, 1e-3, "parity check: allowed difference relative to PyTorch's value; an output passes when "
                          "|exported - PyTorch| <= atol + rtol x |PyTorch| (numpy.allclose), else the export fails "
                          "(exit 1) and writes nothing"),
}

register_command(
    "export",
    "write what a run's experiment exports (classify: the model; gan: the generator) as an ONNX file or a "
    "torch.export archive, BatchNorm folded, with the metadata a caller needs (classify: class names, input size, "
    "mean and std); fails (exit 1, nothing written) unless the file gives PyTorch's outputs on a test input",
    OPTIONS, "options of the export itself",
    notes=("  the checkpoint: --env=<run> (its best.pth, else last.pth) or --load-model-path=<file.pth>, and",
           "  --use-ema=false for the raw weights of a run trained with --ema. Examples:",
           "    python main.py export --env=<run>                    # <run dir>/model.onnx",
           "    python main.py export --env=<run> --format=pt2       # <run dir>/model.pt2",
           "    python main.py test --env=<run> --runtime=onnxruntime   # the csv, computed by ONNX Runtime"),
    examples=("python main.py export --env=<run>                     # <run dir>/model.onnx, checked",))


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    format: str
    output: str
    opset: int
    dynamic_batch: bool
    atol: float
    rtol: float


def split_options(flags):
    """(ExportOptions, the run flags) of the export command's flags {name: text}."""
    values, rest = split_command_flags(flags, OPTIONS)
    values["format"] = values["format"].lower()
    if values["format"] not in FORMATS:
        raise UsageError(f"--format={values['format']} is not an export format; use --format=onnx or --format=pt2")
    if values["output"].lower() in ("none", "null"):
        values["output"] = ""
    suffix = FORMATS[values["format"]]
    # (a folder is refused as a folder, by the command, with an example file name)
    if values["output"] and not values["output"].endswith(suffix) and not Path(values["output"]).is_dir():
        other = next((name for name, ending in FORMATS.items() if values["output"].endswith(ending)), None)
        fix = f"add --format={other}" if other else f"name it <file>{suffix}"
        raise UsageError(f"--output={values['output']} does not end in {suffix}, as a --format={values['format']} "
                         f"file must; {fix}")
    if values["opset"] < MIN_OPSET:
        raise UsageError(f"--opset={values['opset']}: torch.onnx writes opset {MIN_OPSET} and newer; use --opset={MIN_OPSET}")
    for name in ("atol", "rtol"):
        if not values[name] >= 0:
            raise UsageError(f"option {flag(name)} must be >= 0; got {values[name]}")
    for name in ("resume", "train_data_root", "test_data_root"):
        if name in {str(key).replace("-", "_") for key in rest}:
            raise UsageError(f"export reads a checkpoint and no data; drop {flag(name)}")
    return ExportOptions(**values), rest
