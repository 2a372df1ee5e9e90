"""The demo data's default folders, found from any working directory."""
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def repo_defaults(defaults, fields):
    """The default paths into the repository's own data/ folder (the embedded demo samples),
    of `fields` (the options of the run), as paths from the working directory: unchanged in
    the repository, absolute elsewhere, so `python /path/to/main.py train` finds the demo
    from any folder. Paths the user gives, and --checkpoint-dir, stay relative to the
    working directory."""
    if Path.cwd().resolve() == REPOSITORY:
        return {}
    return {name: str(REPOSITORY / value) for name, value in defaults.items()
            if fields[name].metadata["path"] and isinstance(value, str) and Path(value).parts[:1] == ("data",)}
