"""Run many `python main.py ...` commands fast: one process imports torch and the runner once,
then forks a fresh child per command, which behaves as `python main.py ARGS` would (its own
cwd, environment, stdin from /dev/null, stdout and stderr to files, the exit code of main()
or 1 with a traceback for an uncaught exception). Each child starts from the same pristine
state, since the server itself never runs a command.

Protocol: one JSON object per line on stdin {"args", "cwd", "env", "out", "err"}; the
answer is one line on stdout with the exit code. Used by tests/test_bad_inputs.py, whose
catalogue would otherwise spend most of its time importing torch.
"""
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402,F401 - the point: import once, before any fork
import torchvision  # noqa: E402,F401

import main  # noqa: E402
from utils import engine  # noqa: E402,F401


def child(request):
    """In the forked child: become `python main.py ARGS`; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, name in ((1, "out"), (2, "err")):
            target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = [str(ROOT / "main.py"), *request["args"]]
        try:
            code = main.main(request["args"])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the interpreter would print
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code if isinstance(code, int) else 1)


def serve():
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(request)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        sys.stdout.write(json.dumps({"code": code}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
