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

GROUPS = ("run", "data", "model", "optimisation", "logging", "debug", "test", "gan", "distributed", "performance")

# What an option means for a run, which answers "which options define a run" in one place:
#   run         (the default) defines what is computed: fixed on --resume
#   model       defines the model: fixed on --resume; val/test/generate take it from the
#               checkpoint, and a flag that contradicts the checkpoint is an error
#   split       defines the data split: fixed on --resume; val/test take it from the
#               checkpoint unless given
#   execution   how or where the run executes or reports: may change on --resume
#   invocation  how this command was called (--config, --resume): may change, never saved
# `inherited` (default: true for model and split) marks what val/test/generate take from the
# checkpoint's config unless given; test_data_root is an execution option that is inherited.
ROLES = ("run", "model", "split", "execution", "invocation")


def option(default, group, doc, *, role="run", choices=None, registry=None, path=False, bare=None, minimum=None,
           inherited=None):
    """A schema field. `role` is one of ROLES (see above), `registry` names a registry the
    value must be registered in, `path` expands `~`, `bare` is the value of the flag given
    without `=value`, `minimum` is an inclusive lower bound for numbers, `inherited` says
    whether val/test/generate take it from the checkpoint's config."""
    if group not in GROUPS or role not in ROLES:
        raise ValueError(f"option group {group!r} must be one of {GROUPS} and role {role!r} one of {ROLES}")
    inherited = role in ("model", "split") if inherited is None else inherited
    metadata = dict(group=group, doc=doc, role=role, choices=choices, registry=registry, path=path, bare=bare, minimum=minimum,
                    inherited=inherited)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """Every knob of a run. Build it with `configs.load_config`, never mutate it."""

    # -- run --------------------------------------------------------------------------------
    config: Optional[str] = option(None, "run", "YAML file of overrides: defaults < this file < flags", role="invocation", path=True)
    experiment: str = option("classify", "run", "what the commands mean (EXPERIMENTS registry); `help` lists each one's commands", role="model", registry="experiments")
    env: Optional[str] = option(None, "run", "run name; run dir = <checkpoint-dir>/<env> (default <experiment>-<model>-<time>)", role="execution")
    checkpoint_dir: str = option("checkpoints", "run", "parent folder of run dirs; `tensorboard --logdir` it", role="execution", path=True)
    seed: int = option(0, "run", "seeds weights, data split, data order and augmentation", role="split", minimum=0)
    device: str = option("auto", "run", "auto (CUDA when present) | cpu | cuda | cuda:N", role="execution")
    use_gpu: Optional[bool] = option(None, "run", "the book's switch: true = --device=cuda, false = --device=cpu", role="execution")
    keep_checkpoints: int = option(0, "run", "also keep epoch_<n>.pth for the last k epochs (0 = only last.pth, best.pth)", role="execution", minimum=0)
    resume: str = option("", "run", "continue a run: bare flag = <run dir>/last.pth, or a checkpoint path", role="invocation", path=True, bare="last")

    # -- data -------------------------------------------------------------------------------
    dataset: str = option("dogcat", "data", "dataset (DATASETS registry): dogcat | cifar10 | mnist | imagefolder; gan: faces", role="split", registry="datasets")
    train_data_root: str = option("data/sample/train", "data", "dogcat: folder of cat.<n>.jpg / dog.<n>.jpg (Kaggle train/); cifar10 / mnist: the folder holding cifar-10-batches-py/ or MNIST/raw/; imagefolder: <root>/<class>/<image>; gan: a folder of images", role="split", path=True)
    test_data_root: Optional[str] = option(None, "data", "what `test` predicts; default: dogcat: test/ (or test1/) beside --train-data-root; cifar10 / mnist: the official test split under --train-data-root; imagefolder: give a folder of images (any names, nested) or one image; test takes the run's unless given", role="execution", path=True, inherited=True)
    download: bool = option(False, "data", "cifar10 / mnist: let torchvision download the data set into --train-data-root when it is missing (online only)", role="execution")
    val_ratio: float = option(0.3, "data", "share of train images held out for validation, per class", role="split", minimum=0.0)
    image_size: Optional[int] = option(None, "data", "side of the square image fed to the model; default: the data's (cifar10 32, mnist 28, dogcat / imagefolder 224)", role="model", minimum=8)
    batch_size: int = option(32, "data", "images per step of each process; under torchrun the global batch is N x this (logged at start)", minimum=1)
    skip_bad_images: bool = option(False, "data", "leave out unreadable images (empty, truncated, not an image), found by decoding each once at start; listed in <run dir>/skipped_images.txt", role="split")
    num_workers: int = option(2, "data", "data-loading worker processes (0 = load in the main process)", role="execution", minimum=0)

    # -- model ------------------------------------------------------------------------------
    model: str = option("SqueezeNet", "model", "architecture (MODELS registry), e.g. ResNet34, torchvision.resnet18; gan: the generator", role="model", registry="models")
    num_classes: Optional[int] = option(None, "model", "output classes; default: the data's (dogcat 2: cat 0, dog 1; cifar10 / mnist 10; imagefolder: its class folders)", role="model", minimum=1)
    pretrained: str = option("", "model", "'' = random init; a local weights file; 'hub' = download torchvision's (online only)", path=True)
    load_model_path: Optional[str] = option(None, "model", "checkpoint to load: initial weights for train, the model for val/test/generate", role="execution", path=True)

    # -- optimisation -----------------------------------------------------------------------
    optimizer: str = option("adam", "optimisation", "adam (the book's) | adamw | sgd", choices=("adam", "adamw", "sgd"))
    lr: float = option(1e-3, "optimisation", "initial learning rate", minimum=0.0)
    lr_policy: str = option("book", "optimisation", "book: lr *= lr-decay when the epoch's train loss rises | step | cosine | plateau (on --monitor) | constant", choices=("book", "step", "cosine", "plateau", "constant"))
    lr_decay: float = option(0.5, "optimisation", "factor applied by the book, step and plateau policies", minimum=0.0)
    lr_step: int = option(10, "optimisation", "epochs between decays (step) or to wait (plateau)", minimum=1)
    momentum: float = option(0.9, "optimisation", "SGD momentum", minimum=0.0)
    weight_decay: float = option(0.0, "optimisation", "L2 penalty (the book's 0e-5)", minimum=0.0)
    max_epoch: int = option(10, "optimisation", "epochs to train", role="execution", minimum=1)
    monitor: str = option("val_logloss", "optimisation", "metric that decides best.pth", choices=("val_logloss", "val_accuracy", "val_loss"))

    # -- logging ----------------------------------------------------------------------------
    print_freq: int = option(20, "logging", "steps between train-loss points, image grids and debug-file checks", role="execution", minimum=1)
    visualizer: str = option("tensorboard", "logging", "tensorboard (event files in the run dir) | visdom (needs a server) | none", role="execution", choices=("tensorboard", "visdom", "none"))
    progress: bool = option(True, "logging", "tqdm progress bar per epoch on stderr when it is a terminal (else plain progress lines, see --log-interval)", role="execution")
    log_interval: float = option(30.0, "logging", "without a bar (no terminal, --progress=false): a progress line at the --print-freq cadence, at most every N seconds (0 = every --print-freq steps)", role="execution", minimum=0.0)

    # -- debug ------------------------------------------------------------------------------
    debug_file: str = option("/tmp/debug", "debug", "touch this file to enter ipdb in the training loop; '' = never check", role="execution", path=True)
    pdb_on_error: bool = option(False, "debug", "open ipdb post-mortem on an unexpected exception", role="execution")

    # -- test -------------------------------------------------------------------------------
    result_file: str = option("", "test", "csv written by `test`; '' = result.csv in the run dir (of --env, or of a --load-model-path inside one), or <weights file>.csv beside a bare weights file. Columns per data set: dogcat id,label = P(dog) (Kaggle's); cifar10 / mnist id,label = class name; imagefolder path,label,probability", role="execution", path=True)
    clip: float = option(0.005, "test", "clip P(dog) into [clip, 1-clip]: one confident mistake costs -ln(clip) of log loss (5.3) instead of 34.5; 0 = no clip", role="execution", minimum=0.0)
    tta: bool = option(False, "test", "average predictions over the image and its horizontal flip", role="execution")

    # -- gan (the DCGAN of the book's chapter 7) ---------------------------------------------
    netd: str = option("NetD", "gan", "the discriminator (MODELS registry); --model is the generator", role="model", registry="models")
    nz: int = option(100, "gan", "length of the noise vector the generator draws from", role="model", minimum=1)
    ngf: int = option(64, "gan", "generator width: channels of its last hidden layer", role="model", minimum=1)
    ndf: int = option(64, "gan", "discriminator width: channels of its first layer", role="model", minimum=1)
    lr1: float = option(2e-4, "gan", "generator learning rate (Adam)", minimum=0.0)
    lr2: float = option(2e-4, "gan", "discriminator learning rate (Adam)", minimum=0.0)
    beta1: float = option(0.5, "gan", "Adam beta1 of both nets (DCGAN's 0.5)", minimum=0.0)
    d_every: int = option(1, "gan", "train the discriminator every N steps", minimum=1)
    g_every: int = option(5, "gan", "train the generator every N steps", minimum=1)
    gan_loss: str = option("bce", "gan", "bce (classic DCGAN) | rahinge (relativistic average hinge, the book's 2nd edition)", choices=("bce", "rahinge"))
    gen_img: str = option("", "gan", "grid PNG written by `generate`; '' = result.png in the run dir (of --env, or of --load-model-path)", role="execution", path=True)
    gen_num: int = option(64, "gan", "images in the generated grid: the best-scored of --gen-search-num", role="execution", minimum=1)
    gen_search_num: int = option(512, "gan", "noises drawn; the discriminator keeps the best --gen-num", role="execution", minimum=1)
    gen_mean: float = option(0.0, "gan", "mean of the generation noise", role="execution")
    gen_std: float = option(1.0, "gan", "standard deviation of the generation noise", role="execution", minimum=0.0)

    # -- distributed (torchrun --nproc_per_node=N main.py train ...) ------------------------
    sync_bn: bool = option(False, "distributed", "under torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm) instead of each process's own")
    requeue_signal: Optional[str] = option(None, "distributed", "also save last.pth and exit (128 + its number) on this signal, e.g. USR1 from SLURM's --signal, so a requeued job resumes; SIGTERM always does", role="execution", choices=("USR1", "USR2"))

    # -- performance ------------------------------------------------------------------------
    amp: bool = option(False, "performance", "mixed precision: bfloat16 autocast where the device has it (Ampere+ GPUs, CPUs with AVX512-BF16 / AMX), else float16 + loss scaling on CUDA; a CPU without bfloat16 keeps float32")
    amp_dtype: str = option("auto", "performance", "what --amp autocasts to: auto (see --amp) | bfloat16 | float16 (CUDA only)", choices=("auto", "bfloat16", "float16"))
    compile: bool = option(False, "performance", "torch.compile the models (first steps slower while it compiles; falls back to eager with a warning when it cannot); resume is not bit-exact across --compile", role="execution")
    channels_last: bool = option(True, "performance", "NHWC memory format for image batches and conv weights: faster convolutions on CPU (oneDNN) and on tensor-core GPUs; false = the classic NCHW")
    threads: int = option(0, "performance", "intra-op CPU threads of each process; 0 = torch's default (one per physical core), at most the cores this process may use shared among torchrun's processes on the machine (OMP_NUM_THREADS, when set, decides instead). A resume with another count is not bit-exact (float rounding)", role="execution", minimum=0)
    pin_memory: Optional[bool] = option(None, "performance", "page-locked batches; default: on when training on CUDA", role="execution")

    @property
    def run_dir(self):
        """`<checkpoint_dir>/<env>`; only meaningful once env is set."""
        if not self.env:
            raise ValueError("run_dir needs env to be set")
        return Path(self.checkpoint_dir) / self.env


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def inherited():
    """Names of the options val/test/generate take from the checkpoint's config unless given."""
    return [name for name, f in FIELDS.items() if f.metadata["inherited"]]


def with_role(*roles):
    """Names of the options whose role is one of `roles`, in schema order."""
    return [name for name, f in FIELDS.items() if f.metadata["role"] in roles]
