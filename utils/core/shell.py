"""Commands as this shell can run them: printed hints and next steps say `.venv/bin/python
main.py ...` when the venv is not activated and `python main.py ...` when it is, with paths
relative to the working directory, so every printed command works as printed."""
import os
import re
import shutil
import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parents[2] / "main.py"


def typed(path):
    """`path` as the user can type it here: relative to the working directory when below it."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def program(name):
    """How to call `name` (python, tensorboard, torchrun) so that it runs with this
    interpreter's packages: the bare name when the shell finds this interpreter's copy (the
    venv is activated), else its path in this interpreter's bin folder (`.venv/bin/python`).
    Printed commands then work as printed, activated or not."""
    mine = Path(sys.executable).parent / name
    if name == "python":
        mine = Path(sys.executable)
    found = shutil.which(name)
    if found and os.path.abspath(found) == os.path.abspath(mine):
        return name
    return typed(mine) if mine.exists() else name


def main_command(launcher=None):
    """`python main.py` as this shell can run it (see program)."""
    return f"{launcher or program('python')} {typed(MAIN)}"


def hide_passwords(text):
    """`text` with the password of any URL in it (scheme://user:password@host) replaced."""
    return re.sub(r"(\w+://[^/\s:@]+):[^@\s/]*@", r"\1:***@", text)
