"""The schema: every option, with its type, default and doc.

Shared options (run, data, model, optimisation, logging, debug, distributed, performance)
are the fields of `Config` below. An experiment's own options are declared in its file, as
the literal `options = {name: {"default": ..., "doc": ..., ...}}` of its class (read from the
source, without importing torch), and join the config of runs of that experiment only:
`config_class("gan")` is Config plus the gan's fields, and `--nz` for classify is an error
that names the experiment it belongs to. `python main.py help` is generated from both, YAML
files and flags are checked against them, and the resolved, frozen instance is what every
function receives. The defaults are the embedded smoke demo (a generated Dogs-vs-Cats sample
that trains on 2 CPU cores in about a minute); `configs/dogcat.yaml` holds the settings for
the real Kaggle data on a GPU.

Adding a shared option is one line here: `name: type = option(default, "group", "doc")`.
"""
import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from utils.core.registry import EXPERIMENTS

GROUPS = ("run", "data", "model", "optimisation", "logging", "debug", "distributed", "performance")

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
           maximum=None, below=None, smallest=None, inherited=None, structured=False):
    """A schema field. `role` is one of ROLES (see above), `registry` names a registry the
    value must be registered in, `path` expands `~`, `bare` is the value of the flag given
    without `=value`, `minimum` and `maximum` are inclusive bounds for numbers, `below` an exclusive upper
    bound (with the reason, as (bound, why)), `smallest` (with the reason, as (bound, why))
    the least value other than 0 (= off) of a number, `inherited` says whether
    val/test/generate take it from the checkpoint's config, `structured` that a YAML list or
    mapping is accepted for the text option (kept as its one-line text). Every number also stays within
    NUMBER_LIMITS (configs/loader.py validate)."""
    if group not in GROUPS or role not in ROLES:
        raise ValueError(f"option group {group!r} must be one of {GROUPS} and role {role!r} one of {ROLES}")
    inherited = role in ("model", "split") if inherited is None else inherited
    metadata = dict(group=group, doc=doc, role=role, choices=choices, registry=registry, path=path, bare=bare, minimum=minimum,
                    maximum=maximum, below=below, smallest=smallest, inherited=inherited, structured=structured)
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
    save_every: str = option("", "run", "also write last.pth inside an epoch, so a killed run redoes little: N = every N steps, or a time such as 10m, 90s, 1h (rank 0's clock decides, every rank saves the same step); written off the training thread; '' = at epoch ends and stops only", role="execution")
    keep_checkpoints: int = option(0, "run", "also keep epoch_<n>.pth for the last k epochs (0 = only last.pth, best.pth)", role="execution", minimum=0)
    accept_altered_checkpoint: bool = option(False, "run", "--resume from a checkpoint whose tensors no longer match the fingerprints written into it (changed after the run saved it) with a warning, instead of refusing", role="invocation")
    resume: str = option("", "run", "continue a run: bare flag = <run dir>/last.pth, or a checkpoint path; auto = the one command for every start and restart (torchrun --max-restarts, SLURM --requeue): a fresh run when --env holds none, else resume its newest checkpoint, or say it has finished", role="invocation", path=True, bare="last")

    # -- data -------------------------------------------------------------------------------
    dataset: str = option("dogcat", "data", "dataset (DATASETS registry): dogcat | cifar10 | mnist | imagefolder; gan: faces", role="split", registry="datasets")
    train_data_root: str = option("data/sample/train", "data", "dogcat: folder of cat.<n>.jpg / dog.<n>.jpg (Kaggle train/); cifar10 / mnist: the folder holding cifar-10-batches-py/ or MNIST/raw/; imagefolder: <root>/<class>/<image>; gan: a folder of images", role="split", path=True)
    test_data_root: Optional[str] = option(None, "data", "what `test` predicts; default: dogcat: test/ (or test1/) beside --train-data-root, or give one image; cifar10 / mnist: the official test split under --train-data-root; imagefolder: give a folder of images (any names, nested) or one image; test takes the run's unless given", role="execution", path=True, inherited=True)
    download: bool = option(False, "data", "cifar10 / mnist: let torchvision download the data set into --train-data-root when it is missing (online only)", role="execution")
    val_ratio: float = option(0.3, "data", "share of train images held out for validation, per class", role="split", minimum=0.0, below=(1, "a share of the train images"))
    folds: int = option(0, "data", "cross-validation: split the training data into K stratified folds (by --seed) and train K runs <env>/fold-<k>, each validated on its own fold; writes oof.csv and cv.json in <env>/ (docs/cross-validation.md); 0 = one run on a --val-ratio split", role="split", minimum=0, maximum=1000)
    fold: Optional[int] = option(None, "data", "with --folds: train only fold k (1..K) of the group, e.g. one per machine or SLURM array task", role="split", minimum=1)
    image_size: Optional[int] = option(None, "data", "side of the square image fed to the model; default: the data's (cifar10 32, mnist 28, dogcat / imagefolder 224)", role="model", minimum=8, maximum=8192)
    batch_size: int = option(32, "data", "images per step of each process; under torchrun the global batch is N x this (logged at start)", minimum=1)
    skip_bad_images: bool = option(False, "data", "leave out unreadable images (empty, truncated, not an image), found by decoding each once at start; listed in <run dir>/skipped_images.txt", role="split")
    num_workers: int = option(2, "data", "data-loading worker processes (0 = load in the main process)", role="execution", minimum=0, maximum=1024)
    cache: str = option("auto", "data", "decoded-image cache of image-file data (dogcat, imagefolder, faces), shared by runs, folds and trials: auto = train builds one in <checkpoint-dir>/image-cache when it reads the data twice or more and it fits in half the free disk, and every command reads one that exists; off = decode every image every time; <folder> = build and read caches there, exit 1 when it cannot (docs/image-cache.md)", role="execution", path=True)

    # -- model ------------------------------------------------------------------------------
    model: str = option("SqueezeNet", "model", "architecture (MODELS registry), e.g. ResNet34, torchvision.resnet18; gan: the generator", role="model", registry="models")
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
    grad_clip: float = option(0.0, "optimisation", "clip each optimizer's gradient norm to this (0 = no clipping)", minimum=0.0)
    max_epoch: int = option(10, "optimisation", "epochs to train", role="execution", minimum=1)
    warmup_epochs: float = option(0.0, "optimisation", "linear lr warm-up over this many epochs (fractions allowed), step by step, on top of the --lr-policy: an optimizer step at epoch progress p uses the policy's lr x min(1, p / this), while the policy (a cosine's decay too) runs from epoch 0; 0 = none", minimum=0.0)
    param_groups: str = option("", "optimisation", "per-parameter settings by name pattern, first match wins: 'fc=10,layer4=0.5' (pattern=lr multiplier), or in YAML a list of {params: <glob or re:regex>, lr_mult, weight_decay | wd_mult, freeze}; a pattern matches a parameter's name or a module holding it; the rest keep --lr and --weight-decay; train logs the groups (docs/fine-tuning.md)", structured=True)
    decay_norm_bias: bool = option(True, "optimisation", "false (--no-decay-norm-bias): no weight decay on biases, normalisation layers' weights and other 1-d parameters, in every group (the usual fine-tuning rule)")
    layer_decay: float = option(1.0, "optimisation", "layer-wise lr decay (timm's): the head keeps the lr, each layer before it gets this times the next one's (e.g. 0.75); for models that order their layers (ResNet34, torchvision resnets and vits); 1 = off")
    freeze: str = option("", "optimisation", "patterns of parameters (or modules holding them) kept fixed, comma-separated, e.g. conv1,bn1,layer1,layer2; their BatchNorm statistics stay fixed too; see --unfreeze-epoch", structured=True)
    unfreeze_epoch: int = option(0, "optimisation", "the epoch (from 1) from which the --freeze parameters train, e.g. 2 = one frozen epoch; 0 = frozen for the whole run", minimum=0)
    unfreeze: str = option("all", "optimisation", "all: every --freeze pattern trains from --unfreeze-epoch | gradual: one more per epoch, from the last listed (nearest the head) to the first", choices=("all", "gradual"))
    accumulate: int = option(1, "optimisation", "batches per optimizer step (gradient accumulation): the same update as one batch this many times larger, up to float rounding (BatchNorm still normalises each batch alone); under torchrun the accumulating batches skip the all-reduce (no_sync)", minimum=1)
    ema: float = option(0.0, "optimisation", "keep an exponential moving average of the weights with this decay (e.g. 0.999; 0 = off), BatchNorm statistics copied: evaluated beside the raw weights each epoch (val_*_ema metrics, which --monitor may pick), saved in the checkpoints, used by val / test / generate", minimum=0.0, below=(1, "a decay: the share of the average kept at each update"))
    ema_warmup: float = option(100.0, "optimisation", "EMA warm-up in optimizer steps: update t uses decay x (1 - exp(-t / this)), so the average forgets the random initial weights early; 0 = the full decay from the first update", minimum=0.0)
    use_ema: Optional[bool] = option(None, "optimisation", "val / test / generate: the EMA weights of a run trained with --ema (the default for such a run), or false for the raw weights", role="execution")
    patience: int = option(0, "optimisation", "early stopping: end the run when --monitor has not improved for this many epochs (exit 0, marked finished; resume it with a larger --patience, or 0, to train on); 0 = off", role="execution", minimum=0)
    monitor: Optional[str] = option(None, "optimisation", "metric that decides best.pth (and --lr-policy=plateau): one of the experiment's `monitors`; default: its first (classify val_logloss, poetry val_perplexity)")

    # -- logging ----------------------------------------------------------------------------
    print_freq: int = option(20, "logging", "steps between train-loss points, image grids and debug-file checks", role="execution", minimum=1)
    loggers: str = option("tensorboard", "logging", "where the run reports, comma-separated (LOGGERS registry): tensorboard (event files in the run dir) | visdom (needs a server) | mlflow | wandb (both: bash scripts/setup.sh --trackers); none = no curves", role="execution")
    visualizer: str = option("tensorboard", "logging", "the book's switch for the tensorboard entry of --loggers: tensorboard | visdom (needs a server) | none", role="execution", choices=("tensorboard", "visdom", "none"))
    mlflow_uri: Optional[str] = option(None, "logging", "--loggers=mlflow: the tracking server (http://host:5000) or store (sqlite:///path.db); default: sqlite:///<checkpoint-dir>/mlflow.db, artifacts in <checkpoint-dir>/mlartifacts, no server needed", role="execution")
    mlflow_experiment: Optional[str] = option(None, "logging", "--loggers=mlflow: the MLflow experiment the run goes into; default: the runner's --experiment (classify, gan, ...)", role="execution")
    wandb_project: Optional[str] = option(None, "logging", "--loggers=wandb: the W&B project; default: the runner's --experiment. Offline (wandb sync uploads later) unless an API key is configured or WANDB_MODE says otherwise", role="execution")
    log_checkpoints: bool = option(False, "logging", "--loggers=mlflow / wandb: also upload best.pth when the run ends (it can be large)", role="execution")
    progress: bool = option(True, "logging", "tqdm progress bar per epoch on stderr when it is a terminal (else plain progress lines, see --log-interval)", role="execution")
    log_interval: float = option(30.0, "logging", "without a bar (no terminal, --progress=false): a progress line at the --print-freq cadence, at most every N seconds (0 = every --print-freq steps)", role="execution", minimum=0.0)

    # -- debug ------------------------------------------------------------------------------
    debug_file: str = option("/tmp/debug", "debug", "touch this file to enter ipdb in the training loop; '' = never check", role="execution", path=True)
    pdb_on_error: bool = option(False, "debug", "open ipdb post-mortem on an unexpected exception", role="execution")

    # -- distributed (torchrun --nproc_per_node=N main.py train ...) ------------------------
    sync_bn: bool = option(False, "distributed", "under torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm) instead of each process's own")
    dist_timeout: int = option(600, "distributed", "seconds a process waits in a collective (and torchrun's store) for a peer before it gives up and exits, so torchrun can restart the group: a peer that died is noticed at once when its connection closes, one whose machine vanished after this long", role="execution", minimum=10, maximum=7 * 24 * 3600)
    requeue_signal: Optional[str] = option(None, "distributed", "also save last.pth and exit (128 + its number) on this signal, e.g. USR1 from SLURM's --signal, so a requeued job resumes; SIGTERM always does", role="execution", choices=("USR1", "USR2"))

    # -- performance ------------------------------------------------------------------------
    amp: bool = option(False, "performance", "mixed precision: bfloat16 autocast where the device has it (Ampere+ GPUs, CPUs with AVX512-BF16 / AMX), else float16 + loss scaling on CUDA; a CPU without bfloat16 keeps float32")
    amp_dtype: str = option("auto", "performance", "what --amp autocasts to: auto (see --amp) | bfloat16 | float16 (CUDA only)", choices=("auto", "bfloat16", "float16"))
    compile: bool = option(False, "performance", "torch.compile the models (first steps slower while it compiles; falls back to eager with a warning when it cannot); resume is not bit-exact across --compile", role="execution")
    channels_last: bool = option(True, "performance", "NHWC memory format for image batches and conv weights: faster convolutions on CPU (oneDNN) and on tensor-core GPUs; false = the classic NCHW")
    threads: int = option(0, "performance", "intra-op CPU threads of each process; 0 = torch's default (one per physical core), at most the cores this process may use shared among torchrun's processes on the machine (OMP_NUM_THREADS, when set, decides instead). A resume with another count is not bit-exact (float rounding)", role="execution", minimum=0, maximum=1024)
    deterministic: bool = option(False, "performance", "deterministic kernels on the GPU (torch.use_deterministic_algorithms, cuDNN without autotuning, a fixed cuBLAS workspace): bit-identical GPU runs, at a cost in speed; a CPU run is deterministic either way", role="execution")
    profile: int = option(0, "performance", "profile this many training steps with torch.profiler after a 4-step warm-up, in the first epoch with room for them: a trace in <run dir>/profile/ (Perfetto, chrome://tracing, TensorBoard) and a table of where a step's time goes (data, forward, backward, optimizer, the rest) with the top operators; the run goes on unprofiled; 0 = off", role="execution", minimum=0, maximum=100000)
    pin_memory: Optional[bool] = option(None, "performance", "page-locked batches; default: on when training on CUDA", role="execution")

    def __reduce__(self):
        # An experiment's config class is made at run time (config_class), so pickling
        # (torchrun's broadcast of the config) rebuilds it by experiment name.
        return _rebuild, (self.experiment, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @property
    def run_dir(self):
        """`<checkpoint_dir>/<env>`; only meaningful once env is set."""
        if not self.env:
            raise ValueError("run_dir needs env to be set")
        return Path(self.checkpoint_dir) / self.env


def _typed(f, hint):
    """The field `f` with its base type and whether it may be None in its metadata."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    f.metadata = {**f.metadata, "type": args[0] if args else hint, "optional": bool(args)}
    return f


FIELDS = {f.name: _typed(f, hint) for f, hint in zip(dataclasses.fields(Config), typing.get_type_hints(Config).values())}
OPTION_KEYS = {"default", "doc", "type", "role", "choices", "minimum", "maximum", "below", "smallest", "registry", "path", "bare",
               "inherited", "commands"}
TYPES = {"bool": bool, "int": int, "float": float, "str": str}


@functools.lru_cache(maxsize=None)
def experiment_fields(experiment):
    """{name: dataclass Field} of the options experiment `experiment` declares in its file
    (group = the experiment's name), read from source; {} for an unknown experiment. A
    declaration that is not well formed is the experiment author's bug: ValueError."""
    declared = EXPERIMENTS.declared(experiment, "options") or {}
    fields = {}
    for name, spec in declared.items():
        where = f"experiment {experiment}: option {name!r}"
        if name in FIELDS:
            raise ValueError(f"{where} is a shared option; set its default in `defaults` instead")
        if not isinstance(spec, dict) or "doc" not in spec or "default" not in spec or set(spec) - OPTION_KEYS:
            raise ValueError(f"{where} must be a dict with 'default' and 'doc' and only {sorted(OPTION_KEYS)}")
        default = spec["default"]
        base = TYPES[spec["type"]] if "type" in spec else type(default)
        if base not in TYPES.values():
            raise ValueError(f"{where}: give 'type' (bool, int, float or str) for a default of {default!r}")
        extra = {key: tuple(spec[key]) if key in ("below", "smallest") else spec[key]
                 for key in ("role", "minimum", "maximum", "below", "smallest", "registry", "path", "bare", "inherited")
                 if key in spec}
        choices = tuple(spec["choices"]) if "choices" in spec else None
        made = option(default, "run", spec["doc"], choices=choices, **extra)
        # `commands`: whose `<command> --help` shows it (default: every command of the experiment)
        made.metadata = {**made.metadata, "group": experiment, "commands": tuple(spec.get("commands", ()))}
        made.name, made.type = name, typing.Optional[base] if default is None else base
        fields[name] = _typed(made, made.type)
    return fields


def fields_of(experiment):
    """{name: Field} of every option a run of `experiment` has: shared, then its own."""
    return {**FIELDS, **experiment_fields(experiment)}


def all_fields():
    """{name: Field} of every option of any experiment (shared first; an option several
    experiments declare appears once)."""
    found = dict(FIELDS)
    for experiment in EXPERIMENTS.names():
        for name, f in experiment_fields(experiment).items():
            found.setdefault(name, f)
    return found


def owners(name):
    """The experiments that declare option `name` (empty for a shared or unknown one)."""
    return [experiment for experiment in EXPERIMENTS.names() if name in experiment_fields(experiment)]


@functools.lru_cache(maxsize=None)
def config_class(experiment):
    """The frozen Config class of runs of `experiment`: the shared fields and its own."""
    own = experiment_fields(experiment)
    if not own:
        return Config
    fresh = [(name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)) for name, f in own.items()]
    made = dataclasses.make_dataclass(f"{experiment.title().replace('_', '')}Config", fresh, bases=(Config,), frozen=True)
    made.__module__ = __name__
    return made


def _rebuild(experiment, values):
    return config_class(experiment)(**values)


def inherited(experiment=None):
    """Names of the options val/test/generate take from the checkpoint's config unless given
    (of runs of `experiment`; None: of any experiment)."""
    fields = fields_of(experiment) if experiment else all_fields()
    return [name for name, f in fields.items() if f.metadata["inherited"]]


def with_role(*roles, experiment=None):
    """Names of the options whose role is one of `roles`, in schema order (of runs of
    `experiment`; None: of any experiment)."""
    fields = fields_of(experiment) if experiment else all_fields()
    return [name for name, f in fields.items() if f.metadata["role"] in roles]
