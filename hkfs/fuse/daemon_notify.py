"""Tell the daemon serving a store that this process changed its catalog.

The mount lets the kernel cache entries and attributes (hkfs.fuse.kernel_cache) and
drops them on every change it sees. A change made by another process (the hk
CLI, a script using hkfs.core.store) is seen by the daemon's watcher within a poll
interval; to make it visible to the very next command, that process pokes the
daemon after each commit: a getxattr of SYNC_ATTR on the mount root, which the
daemon answers only after it has invalidated the kernel's caches. `notify_daemon`
is a commit hook (hkfs.core.changes), registered by `hkfs/__init__.py` so that any
process importing hkfs pokes; the core itself does not import this module.

Only processes that do not hold the store lock poke (the daemon holds it and
invalidates for its own changes). Without a daemon (no STORE/daemon.pid) this
costs one failed stat per commit.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from .mountinfo import PID_NAME, hk_mounts

__all__ = ["SYNC_ATTR", "notify_daemon"]

log = logging.getLogger(__name__)

SYNC_ATTR = "user.hk.sync"

# store root -> (daemon.pid's mtime, the mount points serving it), re-read when a daemon restarts
_MOUNTS: dict[Path, tuple[int, list[Path]]] = {}


def _same_dir(a: Path, b: Path) -> bool:
    """The same directory however spelt (a symlink, '..'); a missing one is never the same."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _mountpoints(store: Path, pid_mtime: int) -> list[Path]:
    """The mounts serving `store`, kept while daemon.pid is unchanged.

    None found is not kept: the daemon writes daemon.pid before its mount appears."""
    known = _MOUNTS.get(store)
    if known is not None and known[0] == pid_mtime:
        return known[1]
    found = [mnt for mnt, st in hk_mounts() if st == store or _same_dir(st, store)]
    if found:
        _MOUNTS[store] = (pid_mtime, found)
    return found


def notify_daemon(store: Path) -> None:
    """Poke every mount of `store` so its daemon drops the kernel's caches before we go on."""
    try:
        pid_mtime = os.stat(store / PID_NAME).st_mtime_ns
    except OSError:
        return                      # not mounted
    for mnt in _mountpoints(store, pid_mtime):
        try:
            os.getxattr(mnt, SYNC_ATTR)
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ENOENT, errno.EINVAL):
                _MOUNTS.pop(store, None)      # unmounted or remounted: look again next time
            elif exc.errno not in (errno.EACCES, errno.EPERM):
                log.debug("poking the daemon on %s failed: %s", mnt, exc)
