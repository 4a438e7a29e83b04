"""Files removed while open: libfuse's hidden names for them and the attributes kept for them.

libfuse (without hard_remove) renames a file removed while open (rm, or a rename over it) to
`.fuse_hidden<node><counter>` in the same directory, asks for its attributes under that name
(fstat: the kernel sends no file handle), and unlinks that name at the last close. The
daemon never holds the hidden name in the catalog; this remembers it, and the mode and owner
the file had, for as long as the file is open (an entity removed for good has no row to read
them from).

What the hidden rename means depends on the request libfuse serves (HKOperations._hide):
- an UNLINK: it is the removal itself;
- a RENAME over the file: libfuse renames the rename's source over that name next, in the
  same request and thread. The destination then keeps its name until that rename, which
  replaces it as any rename over a file does: an editor save keeps it (hkfs.mount.model).
  Taking the hide as a removal made the save a plain rename and split the document in two
  (the temp took its name, the document kept its old bytes), and "open" includes the
  editor's own read descriptor whose close the kernel reports asynchronously (RELEASE):
  `sed -i` lost the document's identity now and then, when that RELEASE was still queued.

libfuse's high-level API says nothing of the request a hidden rename belongs to, so
`install` wraps the session's low-level rename (the `struct fuse_lowlevel_ops` table that
hkfs.fuse.dir_cache finds), which notes the request's new name in a thread-local while
libfuse serves it (`hiding`).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["HIDDEN_PREFIX", "RENAME_SLOT", "RemovedWhileOpen"]

HIDDEN_PREFIX = ".fuse_hidden"
RENAME_SLOT = 12             # rename's index in struct fuse_lowlevel_ops (fuse_lowlevel.h, 3.0 on)


class RemovedWhileOpen:
    """Hidden name -> entity, and entity -> (mode bits, uid, gid) while it stays open."""

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        self._kept: dict[int, tuple[int, int, int]] = {}
        self._local = threading.local()     # .over: the new name of the RENAME this thread serves
        self._keep: list[Any] = []          # the ctypes callbacks must outlive the mount

    def install(self, table: int, code: tuple[int, int]) -> bool:
        """Wrap the session's low-level rename (`table`: its struct fuse_lowlevel_ops, `code`:
        libfuse's code range; hkfs.fuse.dir_cache.DirCache.find), from init, before any RENAME."""
        pointer = ctypes.c_void_p.from_address(table + 8 * RENAME_SLOT)
        if not pointer.value or not code[0] <= pointer.value < code[1]:
            return False
        # (req, parent, name, newparent, newname, flags): names as bare pointers, handed on as they came
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64,
                                 ctypes.c_void_p, ctypes.c_uint)
        original = proto(pointer.value)

        def rename(req: int, parent: int, name: int, newparent: int, newname: int, flags: int) -> None:
            with self.renaming(ctypes.string_at(newname) if newname else b""):
                original(req, parent, name, newparent, newname, flags)

        wrapper = proto(rename)
        self._keep = [original, wrapper]
        pointer.value = ctypes.cast(wrapper, ctypes.c_void_p).value
        return True

    @contextmanager
    def renaming(self, newname: bytes) -> Iterator[None]:
        """While a RENAME to `newname` is served (`install`'s wrapper; tests drive the adapter so)."""
        self._local.over = newname
        try:
            yield
        finally:
            self._local.over = None

    def hiding(self, hidden: str) -> str | None:
        """What a rename to `hidden` is: None if not libfuse hiding an open file (not a hidden
        name, or the very rename a RENAME request asked for); "rename" if it hides the open
        destination of the RENAME this thread serves (that rename comes next); "removal"
        otherwise (an UNLINK's, or a RENAME's when the low-level rename is not wrapped)."""
        if not self.is_hidden_name(hidden):
            return None
        over = getattr(self._local, "over", None)
        if over is None:
            return "removal"
        return None if hidden.encode("utf-8", "surrogateescape") == over else "rename"

    @staticmethod
    def is_hidden_name(name: str) -> bool:
        return name.startswith(HIDDEN_PREFIX)

    def eid_of(self, path: str | None) -> int | None:
        """The entity a hidden path stands for; None for every other path (cheap when none)."""
        if not self._names or path is None:
            return None
        return self._names.get(path.rpartition("/")[2])

    def hides(self, eid: int) -> bool:
        """Whether libfuse holds eid under a hidden name (an open file removed by one of its names)."""
        return bool(self._names) and eid in self._names.values()

    def hide(self, name: str, eid: int, mode: int, uid: int, gid: int) -> None:
        self._names[name] = eid
        self._kept[eid] = (mode & 0o7777, uid, gid)

    def forget_name(self, path: str) -> bool:
        """libfuse's unlink of the hidden name at the last close; False if path is not one."""
        return self._names.pop(path.rpartition("/")[2], None) is not None

    def attrs(self, eid: int, st: os.stat_result) -> tuple[int, int, int]:
        """(mode bits, uid, gid) of a removed file: as kept, else its bytes file's."""
        return self._kept.get(eid) or (st.st_mode & 0o7777, st.st_uid, st.st_gid)

    def change(self, eid: int, st: os.stat_result, mode: int | None = None, uid: int | None = None,
               gid: int | None = None) -> None:
        """fchmod / fchown of a removed file."""
        m, u, g = self.attrs(eid, st)
        self._kept[eid] = (m if mode is None else mode & 0o7777, u if uid is None else uid,
                           g if gid is None else gid)

    def closed(self, eid: int) -> None:
        """Entity eid's last handle closed: nothing is kept for it any more."""
        self._kept.pop(eid, None)
