"""The runner's own JSON files read back with their shape checked: a file that is missing is
None, a file that does not parse or has another shape (edited by hand, cut by a full disk,
written by something else) is a `Damaged` error naming the file and what is wrong, in one
line, never a traceback from deep inside the code that reads it.

A shape is written as the data it describes:
    str, int, float, bool, None   that type (an int is no bool; a float may be an int)
    (shape, shape, ...)           any of them
    [shape]                       a list of items of that shape
    {"key": shape, ...}           a dict whose listed keys, when present, have their shape
                                  (other keys pass); Required(shape) marks a key it must have
    {"*": shape}                  a dict (of str keys) whose every value has that shape
    object                        anything
"""
import gzip
import json
from pathlib import Path

from utils.core.errors import UserError, shorten


class Damaged(UserError):
    """A runner file that is there but cannot be used: the message names it and says what
    is wrong with it."""

    def __init__(self, path, why, fix=""):
        self.path, self.why = Path(path), why
        super().__init__(f"{path} is damaged ({why}){fix}")


class Required:
    """A key a mapping must have (see the module)."""

    def __init__(self, shape):
        self.shape = shape


def problem(value, shape, where=""):
    """None when `value` has `shape` (see the module), else what is wrong, naming where
    (`where`: the path to `value`, '' for the whole document)."""
    if shape is object:
        return None
    if isinstance(shape, tuple):
        if any(problem(value, option, where) is None for option in shape):
            return None
        inner = [problem(value, option, where) for option in shape if _kind(option) == _kind(type(value))]
        return inner[0] if inner else f"{where or 'the file'} is {_seen(value)}, not {' or '.join(map(_kind, shape))}"
    if shape is None or isinstance(shape, type):
        fits = value is None if shape is None else isinstance(value, shape) and not (
            isinstance(value, bool) and shape in (int, float))
        fits = fits or (shape is float and isinstance(value, int) and not isinstance(value, bool))
        return None if fits else f"{where or 'the file'} is {_seen(value)}, not {_kind(shape)}"
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where or 'the file'} is {_seen(value)}, not a list"
        return next((found for index, item in enumerate(value)
                     for found in [problem(item, shape[0], f"{where}[{index}]")] if found), None)
    if not isinstance(value, dict):
        return f"{where or 'the file'} is {_seen(value)}, not a mapping"
    if "*" in shape:
        return next((found for key, item in value.items()
                     for found in [problem(item, shape["*"], f"{where}.{key}" if where else str(key))] if found), None)
    for key, wanted in shape.items():
        if key not in value:
            if isinstance(wanted, Required):
                return f"{where or 'the file'} has no {key!r}"
            continue
        found = problem(value[key], wanted.shape if isinstance(wanted, Required) else wanted,
                        f"{where}.{key}" if where else key)
        if found:
            return found
    return None


_NAMES = {str: "a text", int: "a whole number", float: "a number", bool: "true or false", dict: "a mapping",
          list: "a list", type(None): "null"}


def _kind(shape):
    """What a shape is called in a message: 'a text', 'a mapping', 'null'."""
    if shape is None:
        return "null"
    if isinstance(shape, type):
        return _NAMES.get(shape, shape.__name__)
    return "a list" if isinstance(shape, list) else "a mapping" if isinstance(shape, dict) else "a value"


def _seen(value):
    return shorten(json.dumps(value) if not isinstance(value, str) else repr(value), 40)


def read_json(path, shape, packed=False, fix=""):
    """The JSON document at `path` (gzip-packed with `packed`), None when there is none, or
    Damaged (with `fix`, '; <what to do>') when it does not parse or has another shape."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        if packed:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                document = json.load(handle)
        else:
            document = json.loads(path.read_text(encoding="utf-8"))
    except IsADirectoryError:
        raise Damaged(path, "it is a folder", fix) from None
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise Damaged(path, f"unreadable: {(getattr(error, 'strerror', None) or str(error)).lower()}", fix) from None
    except ValueError as error:
        raise Damaged(path, f"not whole JSON: {str(error).split(':')[0].lower()}; cut short or edited?", fix) from None
    found = problem(document, shape)
    if found:
        raise Damaged(path, found, fix)
    return document
