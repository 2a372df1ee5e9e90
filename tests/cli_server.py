"""Run many `python main.py ...` commands fast: one process imports torch and the runner once,
then forks a fresh child per command, which behaves as `python main.py ARGS` would (its own
cwd, environment, stdin from /dev/null, stdout and stderr to files, the exit code of main()
or 1 with a traceback for an uncaught exception). Each child starts from the same pristine
state, since the server itself never runs a command.

Protocol: one JSON object per line on stdin {"args", "cwd", "env", "out", "err", "timeout",
"umask"} (umask optional: set in the child before it runs);
the answer is one line on stdout {"code", "timed_out"}. A child still running after
`timeout` seconds is killed (SIGKILL) and reported as timed out. conftest.run_cli sends every
command here unless a test needs a process of its own (stdin text, a preexec_fn), since
importing torch takes 3-5 s of each command on 2 cores.
"""
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxruntime  # noqa: E402,F401 - for `export` and --runtime=onnxruntime (a session is made per child)
import onnxscript  # noqa: E402,F401
import torch  # noqa: E402,F401 - the point: import once, before any fork
import torchvision  # noqa: E402,F401

import main  # noqa: E402
from utils.engine import loop as engine  # noqa: E402,F401
from utils.export import exporter  # noqa: E402,F401 - for `export`
from utils.sweep import worker  # noqa: E402,F401 - optuna, for `sweep`


def child(request):
    """In the forked child: become `python main.py ARGS`; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("umask") is not None:
            os.umask(request["umask"])
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


def wait(pid, timeout):
    """(exit code, timed out?) of child `pid`, killed once `timeout` seconds have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), True
        time.sleep(0.02)


def serve():
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(request)
        code, timed_out = wait(pid, request.get("timeout"))
        sys.stdout.write(json.dumps({"code": code, "timed_out": timed_out}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
