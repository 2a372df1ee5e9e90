"""Turn defaults + a YAML file + command-line flags into one frozen, checked Config.

Values arrive as text (flags, YAML scalars) or as Python objects (calls from code); both are
typed against the schema here, so fire's guesses (`--lr=1` -> int, `--use-gpu=false` ->
the string 'false', `--env=0701` -> ?) never reach the program. Nothing here imports torch.
"""
import dataclasses
import re
from pathlib import Path

from configs.demo_paths import repo_defaults
from configs.param_spec import check_fine_tuning
from configs.schema import FIELDS, config_class, fields_of, inherited, owners
from configs.values import NUMBER_LIMITS, Text, coerce, flag, logger_list, option_field, save_interval
from utils.core import registry
from utils.core.errors import UsageError, did_you_mean, excerpt, shorten
from utils.core.registry import EXPERIMENTS
from utils.core.shell import main_command

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_ENV = re.compile(r"[A-Za-z0-9_.@+=-]+")


# -- YAML -----------------------------------------------------------------------------------
def read_yaml(path):
    """Options from a YAML file as {name: Text|str|None}; errors name the file and line."""
    from configs.yaml_files import BoundedLoader, load_yaml

    class TextLoader(BoundedLoader):
        """Keeps every scalar as text so the schema, not YAML 1.1, decides its type
        (YAML would read `env: 0701` as the octal number 449)."""

    TextLoader.yaml_implicit_resolvers = {}

    def scalar(loader, node):
        text = loader.construct_scalar(node)
        if node.style is None:  # plain (unquoted) scalar
            return None if text.strip() in ("", "~", "null", "Null", "NULL") else Text(text)
        return str(text)

    TextLoader.add_constructor("tag:yaml.org,2002:str", scalar)

    file = Path(path)
    if file.is_dir():
        raise UsageError(f"config file {str(path)!r} is a folder; give a .yaml file (presets live in configs/*.yaml)")
    if not file.is_file():
        raise UsageError(f"config file {str(path)!r} not found (check --config; presets live in configs/*.yaml)")
    data = load_yaml(path, TextLoader)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option: value at the top level")
    options = {}
    for key, value in data.items():
        known = FIELDS.get(str(key).replace("-", "_"))
        if isinstance(value, (dict, list)) and not (known is not None and known.metadata["structured"]):
            raise UsageError(f"{path}: option {shorten(key)} must be a single value, not a {type(value).__name__}")
        options[str(key)] = value
    return options


# -- the whole resolution -------------------------------------------------------------------
def _normalise_keys(options, where, experiment):
    """{option name: value} with hyphens as underscores and --no-<flag> as <flag>=False;
    an option runs of `experiment` do not have is an error naming the experiment that has
    it, or the closest names."""
    fields = fields_of(experiment)
    normalised = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            has = owners(name)
            if name.startswith("no_") and name[3:] in fields and fields[name[3:]].metadata["type"] is bool:
                name, value = name[3:], False  # --no-progress, as fire's --noflag
            elif has:
                raise UsageError(f"{where}option {flag(name)} belongs to experiment {' and '.join(has)}, not {experiment}; "
                                 f"add --experiment={has[0]} or drop it")
            else:
                hint = did_you_mean(name, fields, render=flag)
                raise UsageError(f"{where}unknown option {shorten(flag(name))}{hint} (`{main_command()} help` lists every "
                                 f"option)")
        normalised[name] = value
    return normalised


def given_names(overrides, cfg):
    """Names of the options `overrides` (the flags) and cfg's --config file set, whatever their
    values: what the start-of-run log says the user set, a default typed again included."""
    sources = [overrides or {}] + ([read_yaml(cfg.config)] if cfg.config else [])
    names = set()
    for source in sources:
        names.update(_normalise_keys({str(key).replace("-", "_"): value for key, value in source.items()}, "",
                                     cfg.experiment))
    return names - {"config", "resume"}


def experiment_defaults(name):
    """{option: value} the experiment `name` declares as its defaults (its class's
    `defaults` literal, read without importing it), and its first monitored metric as
    --monitor; {} for an unknown name."""
    declared = dict(EXPERIMENTS.declared(name, "defaults") or {})
    monitors = EXPERIMENTS.declared(name, "monitors") or {}
    if monitors:
        declared.setdefault("monitor", next(iter(monitors)))
    return {key: coerce(key, value, f"experiment {name}: defaults: ", name)
            for key, value in _normalise_keys(declared, "", name).items()}


def defaults_for(experiment):
    """Every option's default for runs of `experiment`: the schema's, its own options', then
    its `defaults`; the demo data's folders anchored at the repository (repo_defaults)."""
    defaults = {**{name: f.default for name, f in fields_of(experiment).items()}, **experiment_defaults(experiment)}
    return {**defaults, **repo_defaults(defaults, fields_of(experiment))}


def load_config(overrides=None):
    """Resolve schema defaults < the experiment's defaults < `--config` YAML < `overrides`
    into a checked, frozen Config.

    `overrides` maps option names (hyphens or underscores) to text (from the command line)
    or Python values. Raises UsageError with a one-line explanation on any problem."""
    flags = {str(key).replace("-", "_"): value for key, value in (overrides or {}).items()}
    config_path = flags.get("config")
    if config_path is not None:
        config_path = coerce("config", config_path, "")
    from_file = {}
    if config_path:
        from_file = {str(key).replace("-", "_"): value for key, value in read_yaml(config_path).items()}
        if "config" in from_file:
            raise UsageError(f"{config_path}: 'config' cannot be set inside a config file")
    # The experiment first: it decides which options exist.
    experiment = FIELDS["experiment"].default
    for where, source in ((f"{config_path}: ", from_file), ("", flags)):
        if source.get("experiment") is not None:
            experiment = coerce("experiment", source["experiment"], where)
    if all(source.get("experiment") is None for source in (from_file, flags)):
        experiment = _experiment_of_run({**from_file, **flags}) or experiment
    _check_registered("experiment", experiment)
    from_file = {k: coerce(k, v, f"{config_path}: ", experiment)
                 for k, v in _normalise_keys(from_file, f"{config_path}: ", experiment).items()}
    flags = {k: coerce(k, v, "", experiment) for k, v in _normalise_keys(flags, "", experiment).items()}
    values = {**defaults_for(experiment), **from_file, **flags}
    values["config"] = config_path or None
    values["experiment"] = experiment
    return validate(config_class(experiment)(**values))


def _experiment_of_run(given):
    """The experiment of the run `given` names with --env (its config.yaml says it), or None:
    a command on an existing run (train --resume, val, generate) needs no --experiment, even
    with the run's own options."""
    if given.get("env") is None:
        return None
    env = coerce("env", given["env"], "")
    folder = given.get("checkpoint_dir")
    folder = coerce("checkpoint_dir", folder, "") if folder is not None else FIELDS["checkpoint_dir"].default
    saved = Path(folder) / env / "config.yaml"
    if not env or not saved.is_file():
        return None
    try:
        experiment = read_yaml(saved).get("experiment")
    except UsageError:
        return None  # a damaged config.yaml is reported where the run is read
    return str(experiment) if experiment else None


def _check_registered(name, value, experiment=None):
    """UsageError unless `value` is registered in the registry option `name` names."""
    table = next(r for r in registry.ALL if r.name == option_field(name, experiment).metadata["registry"])
    try:
        table.check(value)
    except UsageError as error:
        raise UsageError(f"option {flag(name)}: {error}") from None


def run_monitors(experiment, ema=0.0):
    """{metric: "min" | "max"} that --monitor may pick in a run of `experiment`: the
    experiment's `monitors` and, with --ema, each of them measured on the EMA weights
    (`<metric>_ema`)."""
    monitors = EXPERIMENTS.declared(experiment, "monitors") or {}
    return {**monitors, **{f"{name}_ema": mode for name, mode in monitors.items()}} if ema else dict(monitors)


def _check_recipe(cfg):
    """The engine's training recipes that an experiment must support: --ema keeps an average
    of the modules it names (`ema_modules`), --accumulate one that does not say it
    `cannot_accumulate`, --patience a monitored metric."""
    name = cfg.experiment
    if cfg.ema and not EXPERIMENTS.declared(name, "ema_modules"):
        raise UsageError(f"experiment {name} keeps no weight average (--ema); drop --ema")
    why = EXPERIMENTS.declared(name, "cannot_accumulate")
    if cfg.accumulate > 1 and why:
        raise UsageError(f"experiment {name} cannot accumulate gradients ({why}); drop --accumulate")
    if cfg.patience and not EXPERIMENTS.declared(name, "monitors"):
        raise UsageError(f"--patience stops on a validation metric and experiment {name} has none; drop --patience")


def _check_folds(cfg):
    """--folds and --fold agree with each other and with the experiment."""
    if cfg.folds == 1:
        raise UsageError("--folds=1 holds no fold out to validate on; give --folds=K with K >= 2 (5 is common), or drop "
                         "it for one run on a --val-ratio split")
    if cfg.fold is not None and not cfg.folds:
        raise UsageError(f"--fold={cfg.fold} picks one fold of a cross-validation group; give --folds=K too")
    if cfg.fold is not None and cfg.fold > cfg.folds:
        raise UsageError(f"--fold={cfg.fold} is not a fold of --folds={cfg.folds}; give --fold=1 to {cfg.folds}")
    if cfg.folds and not EXPERIMENTS.declared(cfg.experiment, "monitors"):
        raise UsageError(f"--folds validates each fold on a metric and experiment {cfg.experiment} has none; drop --folds")


def _check_cache(cfg):
    """--cache is auto, off or a folder that can be one (a typo of a word is not made a folder)."""
    value = cfg.cache
    if value in ("auto", "off"):
        return
    hint = did_you_mean(str(value), ("auto", "off")) if str(value).strip() else ""
    if not str(value).strip() or str(value).lower() in ("true", "false", "on", "none", "no", "yes", "0", "1"):
        raise UsageError(f"option --cache takes auto, off or a folder; got {excerpt(value)}{hint}")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--cache={value} is a file; give a folder for the image caches, or auto / off")
    if not path.exists() and "/" not in str(value):
        raise UsageError(f"--cache={excerpt(value)} is neither auto nor off, and no folder of that name exists{hint} "
                         f"(for a new folder here write --cache=./{value})")


def validate(cfg):
    """Cross-field checks and derived values (device from --use-gpu); returns the Config."""
    for name, meta in ((f.name, f.metadata) for f in dataclasses.fields(cfg)):
        value = getattr(cfg, name)
        if meta["choices"] and value is not None and value not in meta["choices"]:
            hint = did_you_mean(str(value), meta["choices"])
            shown = ", ".join(choice or "'' (none)" for choice in meta["choices"])
            raise UsageError(f"option {flag(name)} must be one of {shown}; got {excerpt(value)}{hint}")
        if meta["minimum"] is not None and value is not None and value < meta["minimum"]:
            raise UsageError(f"option {flag(name)} must be >= {meta['minimum']}; got {excerpt(value)}")
        if meta["maximum"] is not None and value is not None and value > meta["maximum"]:
            raise UsageError(f"option {flag(name)} must be <= {meta['maximum']}; got {excerpt(value)}")
        if meta["below"] is not None and value is not None and not value < meta["below"][0]:
            bound, why = meta["below"]
            raise UsageError(f"option {flag(name)} must be below {bound} ({why}); got {excerpt(value)}")
        if meta["smallest"] is not None and value and abs(value) < meta["smallest"][0]:
            bound, why = meta["smallest"]
            raise UsageError(f"option {flag(name)} must be 0 (off) or at least {bound:g} ({why}); got {excerpt(value)}")
        limit, why = NUMBER_LIMITS.get(meta["type"], (None, None))
        if limit is not None and value is not None and not isinstance(value, bool) and abs(value) > limit:
            shown = limit if isinstance(limit, int) else f"{limit:g}"
            bound = f"at most {shown}" if value > 0 else f"at least -{shown}"
            raise UsageError(f"option {flag(name)} must be {bound} ({why}); got {excerpt(value)}")
        if meta["registry"]:
            _check_registered(name, value, cfg.experiment)
    _check_recipe(cfg)
    save_interval(cfg.save_every)
    for name in logger_list(cfg.loggers):
        try:
            registry.LOGGERS.check(name)
        except UsageError as error:
            raise UsageError(f"option --loggers: {error}") from None
    monitors = run_monitors(cfg.experiment, cfg.ema)
    if monitors and cfg.monitor not in monitors:
        hint = did_you_mean(str(cfg.monitor), monitors)
        needs = " (the _ema metrics need --ema)" if str(cfg.monitor).endswith("_ema") and not cfg.ema else ""
        raise UsageError(f"option --monitor must be a metric of experiment {cfg.experiment}: {', '.join(monitors)}; "
                         f"got {excerpt(cfg.monitor)}{needs}{hint}")
    _check_folds(cfg)
    _check_cache(cfg)
    check_fine_tuning(cfg)
    if not _DEVICE.fullmatch(cfg.device):
        raise UsageError(f"option --device must be auto, cpu, cuda, cuda:N or mps; got {excerpt(cfg.device)}")
    # <group>/<member>: a run of a group of runs (a sweep's study/trial-<n>), as every command takes it
    parts = (cfg.env or "").split("/")
    if cfg.env is not None and (len(parts) > 2 or any(not _ENV.fullmatch(part) or part in (".", "..") for part in parts)
                                or len(cfg.env) > 200):
        raise UsageError(f"option --env names a folder under --checkpoint-dir (or <group>/<run>, a sweep's "
                         f"<study>/trial-<n>): letters, digits and _.@+=- only, at most "
                         f"200 of them; got {excerpt(cfg.env)}")
    if cfg.use_gpu is not None:
        wanted = "cuda" if cfg.use_gpu else "cpu"
        if cfg.device == "auto":
            cfg = dataclasses.replace(cfg, device=wanted)
        elif cfg.device.split(":")[0] != wanted:
            raise UsageError(f"--use-gpu={str(cfg.use_gpu).lower()} contradicts --device={cfg.device}; give only one")
    return cfg


# -- reporting and saving -------------------------------------------------------------------
def as_dict(cfg):
    """The config as plain data (for checkpoints and config.yaml)."""
    return dataclasses.asdict(cfg)


def changed_options(cfg):
    """{name: value} of options that differ from the defaults of cfg's experiment (except --config)."""
    defaults = defaults_for(cfg.experiment)
    return {name: getattr(cfg, name) for name in fields_of(cfg.experiment)
            if name != "config" and getattr(cfg, name) != defaults[name]}


def adopt_checkpoint_config(cfg, saved, source):
    """The Config for val/test/generate of a checkpoint whose saved config is `saved`: the
    inherited options (role model and split, and --test-data-root) come from the checkpoint
    unless given; a given model option that contradicts the checkpoint is an error (the
    weights would not fit)."""
    trained_by = saved.get("experiment", cfg.experiment)
    if trained_by != cfg.experiment:
        raise UsageError(f"{source} was trained by experiment {trained_by!r}; add --experiment={trained_by} "
                         f"(its commands: {commands_of(trained_by)})")
    changed = changed_options(cfg)
    adopted = {}
    for key in inherited(cfg.experiment):
        if key not in saved:
            continue
        if key in changed and changed[key] != saved[key]:
            if option_field(key, cfg.experiment).metadata["role"] == "model":
                raise UsageError(f"{flag(key)}={changed[key]} differs from the checkpoint's {saved[key]!r}; drop the flag")
        else:
            adopted[key] = saved[key]
    return load_config({**changed, **adopted})


def commands_of(experiment):
    """'train, generate, test (= generate)': the commands of `experiment`, its aliases too."""
    names = list(EXPERIMENTS.declared(experiment, "commands") or {})
    aliases = EXPERIMENTS.declared(experiment, "aliases") or {}
    return ", ".join(names + [f"{alias} (= {target})" for alias, target in aliases.items()])
