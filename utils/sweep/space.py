"""The search space of a sweep: a YAML file, read and checked before any trial starts.

    metric: val_logloss        # optional: default --monitor (the experiment's first metric)
    direction: minimize        # optional: from the metric (val_logloss: lower is better)
    sampler: tpe               # tpe (default) | random | grid, or {type: tpe, n_startup_trials: 5}
    pruner: median             # median (default) | hyperband | none, or {type: median, n_warmup_steps: 2}
    params:                    # the options to search, by their flag names
      lr: {low: 1.0e-4, high: 0.1, log: true}   # a float option: a range (log: sample its logarithm)
      batch_size: [16, 32, 64]                  # a list of choices (any option type)
      lr_step: {low: 2, high: 10, step: 2}      # an int option: a range of integers

Every value is checked the way a flag is (type, bounds, choices, registered names), with a
one-line error naming the file, the option and the fix. Nothing here imports torch or optuna.
"""
import decimal
import math
from pathlib import Path

from configs.loader import load_config, run_monitors
from configs.values import coerce, flag
from configs.schema import fields_of
from configs.yaml_files import load_yaml
from utils.core.errors import UsageError, did_you_mean, excerpt
from utils.core.shell import main_command

TOP_KEYS = ("metric", "direction", "sampler", "pruner", "params")
RANGE_KEYS = ("low", "high", "log", "step")
# Options a sweep sets itself, per trial: they cannot be searched.
OWNED = {"env": "each trial's run dir is <checkpoint-dir>/<study>/trial-<number>",
         "checkpoint_dir": "the study's folder holds the trials", "resume": "the sweep resumes its trials itself",
         "config": "give --config=FILE to the sweep command", "experiment": "it decides which options exist",
         "seed": "each trial's seed is derived from --seed and its number",
         "monitor": "give `metric:` in the search space instead"}
SAMPLERS = {"tpe": ("n_startup_trials", "multivariate"), "random": (), "grid": ()}
MAX_GRID = 10**6  # grid points: Optuna's GridSampler lists every one of them in memory, in every worker
PRUNERS = {"median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
           "hyperband": ("min_resource", "max_resource", "reduction_factor"), "none": ()}


class SearchSpace:
    """A checked search space: `params` {option: ("range", low, high, log, step) or
    ("choices", [values])}, the metric, its direction and the sampler / pruner settings."""

    def __init__(self, path, params, metric, direction, sampler, pruner):
        self.path, self.params, self.metric, self.direction = path, params, metric, direction
        self.sampler, self.pruner = sampler, pruner  # (type, {argument: value})

    def as_dict(self):
        """Plain data (saved in the study's sweep.yaml; a later worker must bring the same)."""
        params = {name: (list(spec[1]) if spec[0] == "choices" else
                         {"low": spec[1], "high": spec[2], "log": spec[3], "step": spec[4]})
                  for name, spec in self.params.items()}
        return {"metric": self.metric, "direction": self.direction,
                "sampler": {"type": self.sampler[0], **self.sampler[1]},
                "pruner": {"type": self.pruner[0], **self.pruner[1]}, "params": params}

    def grid_size(self):
        """How many points the grid of these options has, counted without listing them."""
        return math.prod(len(spec[1]) if spec[0] == "choices" else (spec[2] - spec[1]) // (spec[4] or 1) + 1
                         for spec in self.params.values())

    def grid(self):
        """{option: every value} for the grid sampler (a range of integers counts its steps)."""
        points = {}
        for name, spec in self.params.items():
            if spec[0] == "choices":
                points[name] = list(spec[1])
            else:
                _, low, high, _, step = spec
                points[name] = list(range(low, high + 1, step or 1))
        return points

    def suggest(self, trial):
        """{option: value} of one optuna trial, drawn (or, for a trial that has them, read)."""
        values = {}
        for name, spec in self.params.items():
            if spec[0] == "choices":
                values[name] = trial.suggest_categorical(name, list(spec[1]))
            elif isinstance(spec[1], int):
                values[name] = trial.suggest_int(name, spec[1], spec[2], step=spec[4] or 1, log=spec[3])
            else:
                values[name] = trial.suggest_float(name, spec[1], spec[2], step=spec[4], log=spec[3])
        return values


def given_names(flags):
    """The option names the sweep's command line sets: a search space may not search them
    too (a --config file's values are a baseline, which the searched values replace)."""
    return {str(key).replace("-", "_") for key in flags} - {"config"}


def read_space(path, base, given, trials):
    """The SearchSpace of file `path` for trials of `base` (the sweep's resolved Config),
    with `given` the option names set on the command line, or UsageError."""
    where = f"--search-space={path}: "
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{where}no such file; write one (the README's Sweeps section has an example)")
    try:
        data = load_yaml(file)
    except UsageError as error:
        line = f"line {error.line}: " if getattr(error, "line", None) else ""
        raise UsageError(f"{where}{line}not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}expected a mapping with `params:` (and optionally {', '.join(TOP_KEYS[:-1])})")
    for key in data:
        if key not in TOP_KEYS:
            if str(key).replace("-", "_") in fields_of(base.experiment):
                raise UsageError(f"{where}option {key} is at the top level; options to search go under `params:`")
            raise UsageError(f"{where}unknown key {excerpt(key)}{did_you_mean(str(key), TOP_KEYS)} "
                             f"(keys: {', '.join(TOP_KEYS)})")
    raw = data.get("params")
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"{where}`params:` must map at least one option to a range {{low, high}} or a list of choices")

    # a searched --ema offers the _ema metrics (each trial's --ema is checked against the metric below)
    searched = {str(key).replace("-", "_") for key in raw}
    monitors = run_monitors(base.experiment, base.ema or "ema" in searched)
    if not monitors:
        raise UsageError(f"experiment {base.experiment} reports no validation metric, so a sweep has nothing to "
                         f"optimise")
    metric = str(data.get("metric") or base.monitor)
    if metric not in monitors:
        raise UsageError(f"{where}metric {excerpt(metric)} is not one of experiment {base.experiment}'s: {', '.join(monitors)}"
                         f"{did_you_mean(metric, monitors)}")
    if "monitor" in given and base.monitor != metric:
        raise UsageError(f"{where}metric {metric} differs from --monitor={base.monitor}; the trials keep best.pth by "
                         f"the metric the sweep optimises: drop one")
    natural = "minimize" if monitors[metric] == "min" else "maximize"
    direction = str(data.get("direction") or natural)
    if direction != natural:
        better = "lower" if natural == "minimize" else "higher"
        raise UsageError(f"{where}direction {excerpt(direction)} contradicts {metric}, where {better} is better "
                         f"(direction: {natural}, or leave it out)")

    params = {}
    for key, spec in raw.items():
        name = str(key).replace("-", "_")
        params[name] = _param(name, spec, base, given, where)
    # Each value must make a trial that can start: with the metric as --monitor and every
    # other searched option at its first value (or low), as a flag of the trial would.
    typical = {name: spec[1][0] if spec[0] == "choices" else spec[1] for name, spec in params.items()}
    for name, spec in params.items():
        for value in spec[1] if spec[0] == "choices" else spec[1:3]:
            _check_value(name, value, {**typical, "monitor": metric}, base, where)
    sampler = _choice("sampler", data.get("sampler", "tpe"), SAMPLERS, where)
    pruner = _choice("pruner", data.get("pruner", "median"), PRUNERS, where)
    space = SearchSpace(str(path), params, metric, direction, sampler, pruner)
    if sampler[0] == "grid":
        floats = [name for name, spec in params.items() if spec[0] == "range" and isinstance(spec[1], float)]
        if floats:
            raise UsageError(f"{where}the grid sampler needs a list of values for {flag(floats[0])} (a float range "
                             f"has no grid points)")
        size = space.grid_size()
        if size > MAX_GRID:
            raise UsageError(f"{where}the grid has {size:,} points, more than the {MAX_GRID:,} a grid sweep may have "
                             f"(its sampler lists every point); search fewer values, or use sampler: tpe or random")
        if trials is not None and trials > size:
            raise UsageError(f"{where}the grid has {size} points and --trials={trials} would repeat them: give "
                             f"--trials={size} or fewer")
    return space


def _param(name, spec, base, given, where):
    """("range", low, high, log, step) or ("choices", values) of option `name`, checked."""
    fields = fields_of(base.experiment)
    if name in OWNED:
        raise UsageError(f"{where}option {flag(name)} cannot be searched: {OWNED[name]}")
    if name not in fields:
        raise UsageError(f"{where}unknown option {flag(name)}{did_you_mean(name, fields, render=flag)} "
                         f"(`{main_command()} help` lists every option)")
    if fields[name].metadata["role"] == "invocation":
        raise UsageError(f"{where}option {flag(name)} says how a command is called; it cannot be searched")
    if name in given:
        raise UsageError(f"{where}option {flag(name)} is searched here and also given on the command line; drop one")
    base_type = fields[name].metadata["type"]
    if isinstance(spec, list):
        if not spec:
            raise UsageError(f"{where}option {flag(name)}: the list of choices is empty")
        values = [coerce(name, value, f"{where}", base.experiment) for value in spec]
        if len(set(map(repr, values))) != len(values):
            raise UsageError(f"{where}option {flag(name)}: the choices repeat a value: {excerpt(spec)}")
        return ("choices", tuple(values))
    if not isinstance(spec, dict):
        raise UsageError(f"{where}option {flag(name)}: give a range {{low: .., high: ..}} or a list of choices, "
                         f"not {excerpt(spec)}")
    unknown = [key for key in spec if key not in RANGE_KEYS]
    if unknown:
        raise UsageError(f"{where}option {flag(name)}: unknown key {excerpt(unknown[0])} in its range "
                         f"(keys: low, high, log, step)")
    if base_type not in (int, float):
        raise UsageError(f"{where}option {flag(name)} is a {base_type.__name__} option: give a list of choices, "
                         f"not a range")
    if "low" not in spec or "high" not in spec:
        raise UsageError(f"{where}option {flag(name)}: a range needs both low and high")
    low, high = (_number(name, spec[key], base_type, key, where) for key in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"{where}option {flag(name)}: log must be true or false, got {excerpt(log)}")
    step = _number(name, spec["step"], base_type, "step", where) if spec.get("step") is not None else None
    if not low < high:
        raise UsageError(f"{where}option {flag(name)}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise UsageError(f"{where}option {flag(name)}: a log range needs low > 0, got {low}")
    if step is not None and (step <= 0 or (log and step != 1)):
        raise UsageError(f"{where}option {flag(name)}: step must be > 0, and a log range takes no step")
    if step is not None and not log:
        _check_step(name, low, high, step, where)
    return ("range", low, high, log, step)


def _check_step(name, low, high, step, where):
    """UsageError unless `step` cuts the range low..high into whole steps (Optuna would
    otherwise warn and move high, or draw only low)."""
    if step > high - low:
        raise UsageError(f"{where}option {flag(name)}: step {step} is larger than the range {low}..{high}, so only "
                         f"{low} would ever run; give a smaller step, or a list of choices")
    exact_low, exact_step = decimal.Decimal(str(low)), decimal.Decimal(str(step))
    span = decimal.Decimal(str(high)) - exact_low
    if span % exact_step:
        last = span // exact_step * exact_step + exact_low
        raise UsageError(f"{where}option {flag(name)}: the range {low}..{high} is not a whole number of steps of "
                         f"{step}; give high: {int(last) if isinstance(low, int) else float(last)} (or another step)")


def _number(name, value, base_type, key, where):
    """`value` of a range's `key` as the option's type (YAML reads 1e-3 as text: accepted)."""
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise UsageError(f"{where}option {flag(name)}: {key} must be a number, got {excerpt(value)}")
    if base_type is int:
        if number != int(number):
            raise UsageError(f"{where}option {flag(name)} is an integer option: {key} must be an integer, "
                             f"got {excerpt(value)}")
        return int(number)
    return float(number)


def _check_value(name, value, others, base, where):
    """UsageError when a trial with option `name` = `value` (and the options `others`) could
    not start (bounds, choices, registered names, the experiment's own checks): the config
    resolves it as a flag would."""
    try:
        load_config({**_settings(base), **others, name: value})
    except UsageError as error:
        raise UsageError(f"{where}option {flag(name)} = {excerpt(value)} cannot run: {error}") from None


def _settings(base):
    """The options of `base` as load_config takes them back (the experiment first decides
    which options exist; a None stays None)."""
    return {name: getattr(base, name) for name in fields_of(base.experiment) if name not in ("config", "resume")}


def _choice(kind, value, table, where):
    """(type, {argument: value}) of the sampler or pruner setting `value` (a name or a
    mapping with `type`), checked against `table` {type: allowed arguments}."""
    if isinstance(value, dict):
        arguments = dict(value)
        name = str(arguments.pop("type", ""))
    else:
        name, arguments = str(value), {}
    if name not in table:
        raise UsageError(f"{where}{kind} {excerpt(name)} is not one of {', '.join(table)}{did_you_mean(name, table)}")
    for key, argument in arguments.items():
        if key not in table[name]:
            allowed = ", ".join(table[name]) or "no arguments"
            raise UsageError(f"{where}{kind} {name} takes {allowed}; got {excerpt(key)}")
        if key == "multivariate":
            if not isinstance(argument, bool):
                raise UsageError(f"{where}{kind} {name}: {key} must be true or false, got {excerpt(argument)}")
        else:
            least = 1 if "resource" in key or key == "reduction_factor" else 0
            if isinstance(argument, bool) or not isinstance(argument, int) or argument < least:
                raise UsageError(f"{where}{kind} {name}: {key} must be a whole number >= {least}, got {excerpt(argument)}")
    return name, arguments
