"""`python main.py export`: a run's model as an ONNX file or a torch.export archive, checked
against PyTorch, and what serves it (docs/export.md).

    options.py      the command's own options (no torch import: `help` reads them)
    exporter.py     checkpoint -> folded eval-mode module -> file, after a parity check
    onnx_runtime.py ONNX Runtime sessions and the metadata entry of an exported file
    predict.py      `Predictor` / `predict()`: class probabilities of image files or PIL
                    images, from an exported file or a run's checkpoint, without the CLI

An experiment says what it exports through `Experiment.exportable()`, which returns an
`Exportable` (below): classify its model, the gan its generator.
"""
import dataclasses

METADATA_KEY = "runner"  # the ONNX metadata entry (a JSON object); runner.json in a .pt2 archive
METADATA_VERSION = 1


@dataclasses.dataclass
class Exportable:
    """What an experiment exports: `module` in eval mode with its weights loaded (on the CPU),
    taking one float32 batch named `input_name` whose items have `input_shape`, giving one
    output named `output_name`; `metadata` is what a caller needs to use it (class names,
    input size, normalisation, ...), stored in the exported file."""
    module: object
    input_name: str
    output_name: str
    input_shape: tuple
    metadata: dict
