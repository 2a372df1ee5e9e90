"""Exceptions that mean "the user asked for something we cannot do".

main.py turns these into one line on stderr and an exit code; every other exception is a
bug and keeps its traceback.
"""
import difflib
import reprlib


class UserError(Exception):
    """A mistake the user can fix (bad data folder, unreadable checkpoint); exit code 1."""
    exit_code = 1
    prefix = "error: "  # how main.py introduces the one-line message

    def __init__(self, message=""):
        super().__init__(_from_worker(str(message)))


WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


def _from_worker(message):
    """The user's one line inside the text a DataLoader worker re-raises with ("Caught UserError
    in DataLoader worker process 0. Original Traceback ... utils.errors.UserError: <line>"):
    torch rebuilds the exception from that whole text in the main process."""
    if WORKER_TRACEBACK not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    name, _, text = last.partition(": ")
    return text if name.split(".")[-1].endswith("Error") and text else last


def plural(count, word, many=None):
    """'1 image', '2 images', '1 entry', '3 entries'."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or (word[:-1] + 'ies' if word.endswith('y') else word + 's')}"


class UsageError(UserError):
    """A bad command line, config file or option value; exit code 2, as argparse does."""
    exit_code = 2


def close_matches(word, candidates, limit=3):
    """Return up to `limit` candidates that look like `word` (typo suggestions)."""
    candidates = list(candidates)
    by_lower = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=limit, cutoff=0.6)
    # A substring match ("resnet" -> "ResNet34") is a good hint even when difflib's ratio is low.
    for lower, original in by_lower.items():
        if len(found) < limit and word.lower() in lower and lower not in found:
            found.append(lower)
    return [by_lower[f] for f in found]


def did_you_mean(word, candidates, render=str):
    """'; did you mean X or Y?' or '' when nothing is close."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(render(m) for m in matches) + "?"


_SHORT = reprlib.Repr()  # Python 3.11's Repr takes its limits as attributes only
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def excerpt(value, limit=60):
    """`value` as an error line quotes it: its repr, cut to about `limit` characters (a
    hostile value of a megabyte, or a nested structure, stays one short line)."""
    return shorten(_SHORT.repr(value), limit)


def shorten(text, limit=60):
    """`text` (as str), cut to `limit` characters with '...' marking the cut."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
