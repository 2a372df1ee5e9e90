"""Live debugging, the book's section 6.2: `touch /tmp/debug` and the training loop opens
ipdb at its next check (every --print-freq steps), with model, images, output, loss and
optimizer in scope. `c` continues (delete the file first, or it fires again), `q` saves
last.pth and stops the run cleanly.

Without a terminal on stdin (CI, nohup, a scheduler) an existing debug file is reported once
and ignored: a leftover /tmp/debug must never stall an unattended run.
"""
import logging
import os
import sys

log = logging.getLogger(__name__)
BANNER = """
--- live debug: {path} exists ---
in scope: model, images, labels, output, loss, optimizer, cfg, epoch, progress
e.g. p loss.item() | p model.<layer>.weight.grad.norm() | optimizer.param_groups[0]['lr'] = 1e-4
leave: `c` continues (rm {path} first, or it triggers again) | `q` saves last.pth and stops
"""
_warned = set()


def check(cfg):
    """Enter ipdb in the caller's frame if cfg.debug_file exists and a human can answer."""
    path = cfg.debug_file
    if not path or not os.path.exists(path):
        return
    if not sys.stdin.isatty():
        if path not in _warned:
            _warned.add(path)
            log.warning("debug file %s exists but stdin is not a terminal; ignoring it (remove it to silence this)", path)
        return
    import ipdb

    print(BANNER.format(path=path), file=sys.stderr, flush=True)
    ipdb.set_trace(frame=sys._getframe(1))  # the training loop's frame, not this helper's


def post_mortem(error):
    """--pdb-on-error: inspect the frame that raised, as the book's `%debug` advice."""
    if not sys.stdin.isatty():
        log.warning("--pdb-on-error: stdin is not a terminal; skipping the post-mortem")
        return
    import ipdb

    print(f"\n--- post-mortem: {type(error).__name__}: {error} (`q` to leave) ---", file=sys.stderr, flush=True)
    ipdb.post_mortem(error.__traceback__)
