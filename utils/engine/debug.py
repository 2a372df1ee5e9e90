"""Live debugging, the book's section 6.2: `touch /tmp/debug` and the training loop opens
ipdb at its next check (every --print-freq steps), with the experiment's named objects
(model, optimizer, ... or netg, netd, ...), the batch (images, labels), the step's returned
scalars (loss, ...), cfg, epoch and state in scope. `c` continues (delete the file first,
or it fires again), `q` saves last.pth and stops the run cleanly.

Without a terminal on stdin (CI, nohup, a scheduler) an existing debug file is reported once
and ignored: a leftover /tmp/debug must never stall an unattended run. Under torchrun rank 0
alone checks the file and opens the prompt; the other ranks wait for it (utils/engine/safe_stop.py).
"""
import logging
import os
import sys

log = logging.getLogger(__name__)
BANNER = """
--- live debug: {path} exists ---
in scope: {names}
e.g. p {example} | {optimizer}.param_groups[0]['lr'] = 1e-4 (kept: lr policies read it back)
leave: `c` continues (rm {path} first, or it triggers again) | `q` saves last.pth and stops
"""
# The prompt opens in a frame whose globals are `scope`, so every name in it is a plain
# variable at the prompt and assignments to objects (an lr, a weight) act on the live run.
# The second line gives the debugger a line to stop on inside that frame.
_PROMPT = "__import__('ipdb').set_trace()\npass\n"
_warned = set()


def wanted(cfg):
    """Whether the debug file exists and stdin is a terminal (warned once when it is not)."""
    path = cfg.debug_file
    if not path or not os.path.exists(path):
        return False
    if not sys.stdin.isatty():
        if path not in _warned:
            _warned.add(path)
            log.warning("debug file %s exists but stdin is not a terminal; ignoring it (remove it to silence this)", path)
        return False
    return True


def prompt(cfg, scope, before_prompt=None):
    """The ipdb prompt itself; `q` there raises bdb.BdbQuit out of this call."""
    path = cfg.debug_file
    if before_prompt is not None:
        before_prompt()
    names = ", ".join(scope)
    example = next((name for name in scope if name.startswith("loss")), next(iter(scope)))
    optimizer = next((name for name in scope if name.startswith("optimizer")), "optimizer")
    print(BANNER.format(path=path, names=names, example=example, optimizer=optimizer), file=sys.stderr, flush=True)
    exec(compile(_PROMPT, "<live debug>", "exec"), scope)  # noqa: S102 - our own constant


def post_mortem(error):
    """--pdb-on-error: inspect the frame that raised, as the book's `%debug` advice."""
    if not sys.stdin.isatty():
        log.warning("--pdb-on-error: stdin is not a terminal; skipping the post-mortem")
        return
    import ipdb

    print(f"\n--- post-mortem: {type(error).__name__}: {error} (`q` to leave) ---", file=sys.stderr, flush=True)
    ipdb.post_mortem(error.__traceback__)
