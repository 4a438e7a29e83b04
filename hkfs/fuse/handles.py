"""The mount's open files: one descriptor each on STORE/entities/<id>, counted per entity.

The counts are the model's `open_counts` (an open file's size comes from its bytes
file); the paths files were opened by are what the kernel must drop when the file
changes through another path (hkfs.fuse.operations._changed_for_aliases).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from mfusepy import FuseOSError

__all__ = ["Handle", "OpenFiles"]

# open(2) flags passed on to the bytes file (O_CREAT/O_EXCL are the mount's business)
_KEEP = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC | os.O_NOATIME


@dataclass
class Handle:
    fd: int
    eid: int
    written: bool = False
    path: str | None = None       # the path it was opened by (the kernel's node for it)
    # an editor save gave the entity other bytes while this was open: the descriptor keeps the
    # old ones (as after rename(2) on ext4), whose size is no longer the entity's
    replaced: bool = False


class OpenFiles:
    """Handles by number; `counts` (entity -> open handles) is shared with the model."""

    def __init__(self, entities_dir: str | os.PathLike[str], counts: dict[int, int]) -> None:
        self._entities = os.fspath(entities_dir)
        self.counts = counts
        self._handles: dict[int, Handle] = {}
        self._writing: dict[int, int] = {}       # entity -> writes in flight
        self._lock = threading.Lock()
        self._next = 1

    def next_id(self) -> int:
        """A fresh handle number (directory handles use them too)."""
        with self._lock:
            fh = self._next
            self._next += 1
        return fh

    def open(self, eid: int, flags: int, *, written: bool = False, path: str | None = None) -> int:
        fd = os.open(f"{self._entities}/{eid}", (flags & _KEEP) | os.O_CLOEXEC)
        # The kernel's FUSE readahead sends 128 KiB reads on several threads, slightly out of
        # order; a sequential hint keeps the backing file's readahead window large.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = Handle(fd, eid, written, path)
            self.counts[eid] = self.counts.get(eid, 0) + 1
        return fh

    def get(self, fh: int | None) -> Handle | None:
        return self._handles.get(fh) if fh is not None else None

    def __getitem__(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise FuseOSError(errno.EBADF)
        return h

    def of_entity(self, eid: int) -> Handle | None:
        """An open handle of entity eid (None if it is no longer open)."""
        with self._lock:
            return next((h for h in self._handles.values() if h.eid == eid), None)

    def replaced(self, eid: int) -> None:
        """An editor save gave entity eid other bytes: its handles open on the old ones keep them
        (told by the inode: a handle opened since holds the new bytes)."""
        now = os.stat(f"{self._entities}/{eid}").st_ino
        with self._lock:
            mine = [h for h in self._handles.values() if h.eid == eid]
        for h in mine:
            try:
                h.replaced = h.replaced or os.fstat(h.fd).st_ino != now
            except OSError:       # closed meanwhile
                pass

    def on_old_bytes(self, eid: int) -> Handle | None:
        """A handle of eid that keeps bytes an editor save replaced (None if none is open)."""
        with self._lock:
            return next((h for h in self._handles.values() if h.eid == eid and h.replaced), None)

    def pop(self, fh: int) -> Handle | None:
        """Forget a handle (the caller records its bytes and closes its descriptor)."""
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is not None:
                self._forget(h.eid)
        return h

    def pop_all(self) -> list[Handle]:
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
            self.counts.clear()
        return handles

    def merged(self, src: int, dst: int) -> None:
        """Entity src became dst (an editor save): its handles now count for dst."""
        with self._lock:
            for h in self._handles.values():
                if h.eid == src:
                    h.eid = dst
                    self._forget(src)
                    self.counts[dst] = self.counts.get(dst, 0) + 1

    def paths(self) -> list[str]:
        with self._lock:
            return sorted({h.path for h in self._handles.values() if h.path})

    def aliases(self, eid: int, path: str | None, *, writing: bool = False) -> tuple[list[str], bool]:
        """The other paths eid is open by, and whether other writes of it are in flight
        (`writing`: the caller's own write is counted)."""
        if eid not in self.counts:
            return [], False
        with self._lock:
            others = {h.path for h in self._handles.values() if h.eid == eid and h.path and h.path != path}
            busy = self._writing.get(eid, 0) > (1 if writing else 0)
        return sorted(others), busy

    @contextlib.contextmanager
    def writes_to(self, eid: int) -> Iterator[bool]:
        """Count a write to eid in flight (see aliases); yields whether eid is open more than
        once. A file open once (the writer's own handle) has no other open path, so its
        writes skip the count and the lock: the common case of every write."""
        if self.counts.get(eid, 0) < 2:
            yield False
            return
        with self._lock:
            self._writing[eid] = self._writing.get(eid, 0) + 1
        try:
            yield True
        finally:
            with self._lock:
                n = self._writing.pop(eid) - 1
                if n:
                    self._writing[eid] = n

    def _forget(self, eid: int) -> None:
        """One handle of eid closed (under the lock)."""
        n = self.counts.pop(eid, 0) - 1
        if n > 0:
            self.counts[eid] = n
