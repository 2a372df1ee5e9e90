"""The one schema: every option the runner knows, with its type, default and doc.

`python main.py help` is generated from this class, YAML files and flags are checked against
it, and the resolved, frozen instance is what every function receives. The defaults are the
embedded smoke demo (a generated Dogs-vs-Cats sample that trains on 2 CPU cores in about a
minute); `configs/dogcat.yaml` holds the settings for the real Kaggle data on a GPU.

Adding an option is one line here: `name: type = option(default, "group", "doc")`.
"""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

GROUPS = ("run", "data", "model", "optimisation", "logging", "debug", "test", "performance")


def option(default, group, doc, *, choices=None, registry=None, path=False, bare=None, minimum=None):
    """A schema field. `registry` names a registry the value must be registered in,
    `path` expands `~`, `bare` is the value of the flag given without `=value`,
    `minimum` is an inclusive lower bound for numbers."""
    assert group in GROUPS, group
    metadata = dict(group=group, doc=doc, choices=choices, registry=registry, path=path, bare=bare, minimum=minimum)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """Every knob of a run. Build it with `configs.load_config`, never mutate it."""

    # -- run --------------------------------------------------------------------------------
    config: Optional[str] = option(None, "run", "YAML file of overrides: defaults < this file < flags", path=True)
    experiment: str = option("classify", "run", "what train/val/test mean (EXPERIMENTS registry)", registry="experiments")
    env: Optional[str] = option(None, "run", "run name; run dir = <checkpoint-dir>/<env> (default <experiment>-<model>-<time>)")
    checkpoint_dir: str = option("checkpoints", "run", "parent folder of run dirs; `tensorboard --logdir` it", path=True)
    seed: int = option(0, "run", "seeds weights, data split, data order and augmentation", minimum=0)
    device: str = option("auto", "run", "auto (CUDA when present) | cpu | cuda | cuda:N")
    use_gpu: Optional[bool] = option(None, "run", "the book's switch: true = --device=cuda, false = --device=cpu")
    keep_checkpoints: int = option(0, "run", "also keep epoch_<n>.pth for the last k epochs (0 = only last.pth, best.pth)", minimum=0)
    resume: str = option("", "run", "continue a run: bare flag = <run dir>/last.pth, or a checkpoint path", path=True, bare="last")

    # -- data -------------------------------------------------------------------------------
    dataset: str = option("dogcat", "data", "dataset (DATASETS registry)", registry="datasets")
    train_data_root: str = option("data/sample/train", "data", "folder of cat.<n>.jpg / dog.<n>.jpg (Kaggle train/)", path=True)
    test_data_root: str = option("data/sample/test", "data", "folder of <n>.jpg to predict (Kaggle test/ or test1/)", path=True)
    val_ratio: float = option(0.3, "data", "share of train images held out for validation, per class", minimum=0.0)
    image_size: int = option(224, "data", "side of the square crop fed to the model", minimum=8)
    batch_size: int = option(32, "data", "images per step", minimum=1)
    num_workers: int = option(2, "data", "data-loading worker processes (0 = load in the main process)", minimum=0)

    # -- model ------------------------------------------------------------------------------
    model: str = option("SqueezeNet", "model", "architecture (MODELS registry), e.g. ResNet34, torchvision.resnet18", registry="models")
    num_classes: int = option(2, "model", "output classes (2 for Dogs vs. Cats: cat 0, dog 1)", minimum=1)
    pretrained: str = option("", "model", "'' = random init; a local weights file; 'hub' = download torchvision's (online only)", path=True)
    load_model_path: Optional[str] = option(None, "model", "checkpoint to load: initial weights for train, the model for val/test", path=True)

    # -- optimisation -----------------------------------------------------------------------
    optimizer: str = option("adam", "optimisation", "adam (the book's) | adamw | sgd", choices=("adam", "adamw", "sgd"))
    lr: float = option(1e-3, "optimisation", "initial learning rate", minimum=0.0)
    lr_policy: str = option("book", "optimisation", "book: lr *= lr-decay when the epoch's train loss rises | step | cosine | plateau", choices=("book", "step", "cosine", "plateau"))
    lr_decay: float = option(0.5, "optimisation", "factor applied by the book, step and plateau policies", minimum=0.0)
    lr_step: int = option(10, "optimisation", "epochs between decays (step) or to wait (plateau)", minimum=1)
    momentum: float = option(0.9, "optimisation", "SGD momentum", minimum=0.0)
    weight_decay: float = option(0.0, "optimisation", "L2 penalty (the book's 0e-5)", minimum=0.0)
    max_epoch: int = option(10, "optimisation", "epochs to train", minimum=1)
    monitor: str = option("val_logloss", "optimisation", "metric that decides best.pth", choices=("val_logloss", "val_accuracy", "val_loss"))

    # -- logging ----------------------------------------------------------------------------
    print_freq: int = option(20, "logging", "steps between train-loss points and debug-file checks", minimum=1)
    visualizer: str = option("tensorboard", "logging", "tensorboard (event files in the run dir) | visdom (needs a server) | none", choices=("tensorboard", "visdom", "none"))
    progress: bool = option(True, "logging", "tqdm progress bar per epoch (stderr)")

    # -- debug ------------------------------------------------------------------------------
    debug_file: str = option("/tmp/debug", "debug", "touch this file to enter ipdb in the training loop; '' = never check", path=True)
    pdb_on_error: bool = option(False, "debug", "open ipdb post-mortem on an unexpected exception")

    # -- test -------------------------------------------------------------------------------
    result_file: str = option("result.csv", "test", "Kaggle submission written by `test` (id,label = P(dog))", path=True)
    clip: float = option(0.0, "test", "clip P(dog) into [clip, 1-clip]; log loss punishes confident mistakes", minimum=0.0)
    tta: bool = option(False, "test", "average predictions over the image and its horizontal flip")

    # -- performance ------------------------------------------------------------------------
    amp: bool = option(False, "performance", "mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = option(False, "performance", "NHWC memory format (faster convs on recent GPUs)")
    pin_memory: Optional[bool] = option(None, "performance", "page-locked batches; default: on when training on CUDA")

    @property
    def run_dir(self):
        """`<checkpoint_dir>/<env>`; only meaningful once env is set."""
        if not self.env:
            raise ValueError("run_dir needs env to be set")
        return Path(self.checkpoint_dir) / self.env


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
