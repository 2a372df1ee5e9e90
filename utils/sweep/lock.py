"""The journal's lock: Optuna's symlink lock, with a link that names its holder.

Optuna's JournalFileSymlinkLock creates `<journal>.lock` (a symbolic link) to take the lock
and breaks a lock that has not changed for its 30 s grace period. A worker killed while it
holds the lock (SIGKILL inside an append) therefore stalls every other worker of the study
for 30 s. Here the link's text also names its holder: host, boot, pid namespace and pid. A
waiter on the same machine, boot and pid namespace sees at once that the holder is dead (no
such process, or a zombie) and breaks the lock; a holder on another machine, in another
container, or one that cannot be judged still gets the grace period, as with Optuna.

Breaking is checked twice: the link must still name the dead holder just before it is moved
away, and the moved link must be the one judged; a live lock moved by mistake (another
waiter broke the dead one and took the lock in between) is linked back. The link's target
does not exist, so os.stat would fail on it; the grace period uses the link's own lstat.
"""
import logging
import os
import time

from optuna.storages.journal import JournalFileSymlinkLock

from utils.core.liveness import identity, is_gone, take_away

log = logging.getLogger(__name__)
OWNER = "#held-by="  # between the journal's path and the holder in the link's text
GRACE_SECONDS = 30  # Optuna's grace period for a holder this process cannot judge


def holder_is_dead(text):
    """Whether the lock link's `text` names a process of this machine, boot and pid namespace
    that no longer runs. False whenever that cannot be told (another machine, an old link)."""
    return OWNER in text and is_gone(text.rsplit(OWNER, 1)[1])


class OwnedLock(JournalFileSymlinkLock):
    """Optuna's symlink lock of `filepath`, whose link names its holder (see the module)."""

    def __init__(self, filepath, grace_period=GRACE_SECONDS):
        super().__init__(filepath, grace_period=grace_period)
        self._text = f"{self._lock_target_file}{OWNER}{identity()}"

    def acquire(self):
        delay, seen, since = 0.001, None, time.monotonic()
        while True:
            try:
                os.symlink(self._text, self._lock_file)
                return True
            except FileExistsError:
                pass
            try:
                text, mtime = os.readlink(self._lock_file), os.lstat(self._lock_file).st_mtime
            except OSError:
                continue  # released in between: try again at once
            if holder_is_dead(text) and self._break(text):
                log.warning("the lock %s was held by a process that is gone (killed while it held it); "
                            "taken over", self._lock_file)
                continue
            if (text, mtime) != seen:
                seen, since = (text, mtime), time.monotonic()
            elif self.grace_period is not None and time.monotonic() - since > self.grace_period:
                log.warning("the lock %s has not been released for %g s; breaking it", self._lock_file,
                            self.grace_period)
                if self._break(text):
                    continue
                seen = None  # not broken (another waiter was first, or it cannot be moved): wait again
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _break(self, text):
        """Move the lock link `text` away; True when it was that link (liveness.take_away)."""
        return take_away(self._lock_file, text, os.readlink)
