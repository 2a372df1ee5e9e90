"""One option's value typed against the schema: text from a flag or a YAML scalar, or a
Python value, becomes the option's type (booleans from true/false/yes/no/1/0, numbers
finite and within NUMBER_LIMITS, paths with ~ expanded), and a command's own option table
(sweep's, export's) is read the same way. Nothing here imports torch."""
import math
import os
import re

from configs.param_spec import structured_text
from configs.schema import all_fields, fields_of
from utils.core.errors import UsageError, excerpt, shorten

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
_NULL = {"none", "null", "~"}
_INT = re.compile(r"[+-]?\d+")
TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}
# Every number option stays within these (an option's own maximum may be lower): torch holds
# integers in int64, and the engine computes in float32 (at most 3.4e38), where options
# multiply one another (AdamW's lr x weight decay; Adam's lr / (1 - beta1**t), up to 1e16
# times the lr as beta1 nears 1), so 1e15 leaves room for every product.
NUMBER_LIMITS = {int: (2**63 - 1, "torch's 64-bit integers"),
                 float: (1e15, "the engine computes in float32, and options multiply one another there")}


class Text(str):
    """A value given as text (a flag, a plain YAML scalar): parse it against the schema.
    A quoted YAML string is a plain `str` and is taken literally for string options."""


def flag(name):
    return "--" + name.replace("_", "-")


def split_command_flags(flags, table):
    """({name: typed value, defaults filled in} of the flags a command's own option `table`
    ({name: (type, default, doc)}: sweep's, export's) names, {the other flags as given})."""
    values, rest = {}, {}
    for key, value in flags.items():
        name = str(key).replace("-", "_")
        if name in table:
            values[name] = command_value(name, value, table[name][0])
        else:
            rest[key] = value
    for name, (_, default, _) in table.items():
        values.setdefault(name, default)
    return values, rest


def command_value(name, value, kind):
    """`value` (text from the command line, or a Python value) as the type `kind` of option
    `name` of a command's own table (sweep, export), which the schema does not type."""
    text = str(value).strip()
    if kind is bool:
        if isinstance(value, bool) or text.lower() in _TRUE | _FALSE:
            return value if isinstance(value, bool) else text.lower() in _TRUE
        raise UsageError(f"option {flag(name)} expects a boolean (true/false), got {excerpt(text)}")
    if kind is str:
        return text
    try:
        number = kind(text)
    except ValueError:
        number = None
    if number is None or (kind is float and not math.isfinite(number)):
        expected = "an integer" if kind is int else "a finite number"
        raise UsageError(f"option {flag(name)} expects {expected}, got {excerpt(text)}")
    return number


def option_field(name, experiment=None):
    return (fields_of(experiment) if experiment else all_fields())[name]


# The path options that name data a run reads: a new run saves them absolute (config.yaml
# and manifest.json then mean the same folder from any working directory).
DATA_PATHS = ("train_data_root", "test_data_root")


def same_value(name, a, b, experiment=None):
    """Whether two values of option `name` mean the same: equal, or for a path option the
    same file or folder however written (relative to here, with ~, through a link)."""
    if a == b:
        return True
    fields = fields_of(experiment) if experiment else all_fields()
    if name not in fields or not fields[name].metadata["path"]:
        return False
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def field_type(name, experiment=None):
    """(base type, optional?) of an option: Optional[int] -> (int, True); of runs of
    `experiment` (None: the first experiment that has the option)."""
    meta = option_field(name, experiment).metadata
    return meta["type"], meta["optional"]


def describe_type(name, experiment=None):
    base, optional = field_type(name, experiment)
    text = TYPE_NAMES[base]
    meta = option_field(name, experiment).metadata
    choices = meta["choices"]
    if choices:
        text = "|".join(choice for choice in choices if choice)  # an empty choice (off) goes without saying
    if meta["bare"] is not None:
        text = "flag|" + text  # --resume alone, or --resume=<path>
    return text + ("|none" if optional else "")


# -- coercion -------------------------------------------------------------------------------
def coerce(name, value, where, experiment=None):
    """Return `value` typed for option `name` (of runs of `experiment`), or raise UsageError
    saying what was expected."""
    base, optional = field_type(name, experiment)
    meta = option_field(name, experiment).metadata

    def fail(expected):
        shown = shorten(value if isinstance(value, str) else repr(value))
        raise UsageError(f"{where}option {flag(name)} expects {expected}, got {shown!r}")

    if value is None:
        if optional:
            return None
        fail(f"a {TYPE_NAMES[base]} (it cannot be none)")
    is_text = isinstance(value, Text) or (isinstance(value, str) and base is not str)
    nulls = _NULL if base is str else _NULL | {""}  # an empty string option stays ''
    if is_text and optional and value.strip().lower() in nulls:
        return None
    if meta["bare"] is not None and (isinstance(value, bool) or (is_text and value.lower() in _TRUE | _FALSE)):
        truthy = value if isinstance(value, bool) else value.lower() in _TRUE
        return meta["bare"] if truthy else ""

    if base is bool:
        if isinstance(value, bool):
            return value
        if is_text and value.strip().lower() in _TRUE:
            return True
        if is_text and value.strip().lower() in _FALSE:
            return False
        fail("a boolean (true/false, yes/no, 1/0)")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if is_text and _INT.fullmatch(value.strip()):
            return int(value)
        fail("an integer")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif is_text:
            try:
                number = float(value)
            except ValueError:
                fail("a number")
        else:
            fail("a number")
        if not math.isfinite(number):
            fail("a finite number")
        return number
    # base is str
    if meta.get("structured") and isinstance(value, (list, dict)):
        return structured_text(_plain(value))
    if not isinstance(value, str):
        fail("a string (quote it in YAML)")
    text = str(value)
    return os.path.expanduser(text) if meta["path"] and text else text


def _plain(value):
    """A YAML list or mapping read with every scalar kept as text (configs/loader.py), with
    the scalars typed back as YAML reads them (lr_mult: 10 -> 10, freeze: true -> True)."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Text):
        import yaml  # (lazily: the config path runs on a Python without the packages, to say so)

        try:
            typed = yaml.safe_load(str(value))
        except yaml.YAMLError:
            return str(value)
        return typed if isinstance(typed, (bool, int, float)) else str(value)
    return value


_INTERVAL = re.compile(r"(\d+(?:\.\d*)?)\s*([smh]?)")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def save_interval(text):
    """--save-every as ("steps", N), ("seconds", S) or None (off): N = every N steps, "10m" /
    "90s" / "1.5h" a time; UsageError naming the forms for anything else."""
    text = str(text or "").strip().lower()
    if text in ("", "0"):
        return None
    found = _INTERVAL.fullmatch(text)
    if found is not None:
        number, unit = found.groups()
        if not unit and "." not in number and 0 < int(number) <= 10**12:
            return "steps", int(number)
        if unit and 0 < float(number) <= 10**7:
            return "seconds", float(number) * _SECONDS[unit]
    raise UsageError(f"option --save-every must be a number of steps (e.g. 500) or a time with its unit (e.g. 10m, 90s, "
                     f"1h), or '' for epoch ends only; got {excerpt(text)}")


def logger_list(text):
    """--loggers as a list of names: 'tensorboard,mlflow' -> ['tensorboard', 'mlflow']; '' and
    'none' -> []. A name given twice is a UsageError (whether each is registered is checked
    against the LOGGERS registry by configs/loader.py)."""
    names = [name.strip() for name in str(text or "").split(",") if name.strip()]
    if names == ["none"]:
        return []
    seen = set()
    for name in names:
        if name in seen:
            raise UsageError(f"option --loggers names {name} twice; give each logger once (e.g. --loggers=tensorboard,mlflow)")
        seen.add(name)
    return names
