"""The kernel's cache of view listings (FOPEN_CACHE_DIR): a view listed once is listed by the kernel after.

Linux 4.20 keeps a directory's listing in the directory inode's page cache when its
opendir reply carries FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE; later listings of it are
served from there, with no READDIR(PLUS) request, until the pages are dropped. The
daemon drops them with FUSE_NOTIFY_INVAL_INODE on each such directory (its pages and
attributes) whenever a listing may have changed (KernelCache.invalidate, and the
namespace operations that move no epoch: see hkfs.fuse.operations).

libfuse's high-level API before 3.16 does not pass a high-level opendir's
`cache_readdir`/`keep_cache` on to its reply (libfuse issue 821): it answers from its
own `struct fuse_file_info`. So `DirCache.install` puts a wrapper in front of the
session's low-level opendir (the `opendir` slot of the `struct fuse_lowlevel_ops`
inside `struct fuse_session`, found and checked at run time: it must sit between the
session's descriptor and its userdata, every slot a null or a pointer into libfuse's
code). The wrapper keeps the request's own file info and node id in a thread-local;
the high-level opendir (same thread, within the wrapper) sets the flags there when the
directory is one to cache (`mark`). When the layout cannot be confirmed nothing is
patched and listings stay uncached, as before.

A race is left to the kernel's own check: a listing computed before a change whose
pages reach the cache after the drop. Before reading a cached listing from its start the
kernel refreshes the directory's mtime (attributes the drop made stale) and throws the
cache away if it differs from the one it had when the cache was started, so the views'
mtime moves at every drop that finds a cached directory open (`on_drop`): only through
an open directory can a listing still be on its way into the cache.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DirCache"]

log = logging.getLogger(__name__)

OPENDIR_SLOT = 20            # opendir's index in struct fuse_lowlevel_ops (fuse_lowlevel.h, 3.0 on)
_SLOTS = range(40, 72)       # plausible numbers of low-level operations (3.14 has 44)


def _code_range(addr: int) -> tuple[int, int] | None:
    """The executable mapping of this process that holds addr (libfuse's code)."""
    with open("/proc/self/maps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r-xp ", line)
            if m and int(m.group(1), 16) <= addr < int(m.group(2), 16):
                return int(m.group(1), 16), int(m.group(2), 16)
    return None


def find_opendir_slot(session: int, fd: int, userdata: int, code: tuple[int, int]) -> int | None:
    """Address of the opendir pointer in a libfuse 3 `struct fuse_session`, or None.

    The session starts with mountpoint, exited, fd, [io,] mo, debug, deny_others, then the
    low-level operations, got_init, cuse_data and userdata (lib/fuse_i.h)."""
    raw = ctypes.string_at(session, 1024)
    ints = [int.from_bytes(raw[i:i + 4], "little", signed=True) for i in range(0, 64, 4)]
    words = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    lo, hi = code

    def code_ptr(w: int) -> bool:
        return lo <= w < hi

    for fd_at in (i * 4 for i, v in enumerate(ints) if v == fd):
        for start in (fd_at + 20, fd_at + 28):      # without / with the custom-io pointer (3.15)
            if start % 8:
                continue
            first = start // 8
            for n in _SLOTS:
                end = first + n                      # got_init, cuse_data, userdata follow
                if end + 2 >= len(words) or words[end + 2] != userdata or words[end + 1] != 0:
                    continue
                table = words[first:end]
                if all(w == 0 or code_ptr(w) for w in table) and all(
                        code_ptr(table[i]) for i in (0, OPENDIR_SLOT, OPENDIR_SLOT + 1, OPENDIR_SLOT + 2)):
                    return session + 8 * (first + OPENDIR_SLOT)
    return None


class DirCache:
    """Which directories the kernel may hold listings of, and dropping them."""

    def __init__(self, fresh: float = 50.0) -> None:
        self.fresh = fresh                       # seconds a listing's entries outlive it (see mark)
        self._filled: dict[int, float] = {}      # node id -> when the daemon last listed it
        self._local = threading.local()
        self._lock = threading.Lock()
        self._marked: set[int] = set()          # node ids given the flags since the last drop
        self._open: dict[int, int] = {}         # open directory handle -> node id (may refill)
        self._inval: Any = None
        self._session: int | None = None
        self._keep: list[Any] = []               # the ctypes callbacks must outlive the mount
        self.on_drop: Callable[[], None] = lambda: None
        self.drops = 0                            # listings dropped (tests)
        # the session's struct fuse_lowlevel_ops and libfuse's code range once found (`find`;
        # hkfs.fuse.node_budget and hkfs.fuse.removed wrap other slots of the same table)
        self.ops_table: int | None = None
        self.code: tuple[int, int] | None = None
        self._found = 0                          # the session they were found in

    @property
    def active(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> int | None:
        """The session's `struct fuse_session *` once installed."""
        return self._session

    def find(self, libfuse: Any, fuse: ctypes.c_void_p, fd: int) -> bool:
        """Find the session's `struct fuse_lowlevel_ops` (`ops_table`) and libfuse's code range
        (`code`), wrapping nothing yet: the adapter wraps rename there whether or not the
        kernel caches are on (hkfs.fuse.removed). False when the layout cannot be confirmed."""
        try:
            session = libfuse.fuse_get_session(fuse)
            code = _code_range(ctypes.cast(libfuse.fuse_reply_open, ctypes.c_void_p).value or 0)
            slot = find_opendir_slot(session, fd, fuse.value or 0, code) if session and code else None
        except (OSError, AttributeError, ValueError) as exc:
            log.info("libfuse's operations table not found: %s", exc)
            return False
        if slot is None:
            log.info("libfuse's operations table not found: this libfuse's session layout is not the one expected")
            return False
        self.ops_table, self.code, self._found = slot - 8 * OPENDIR_SLOT, code, session
        return True

    def install(self, libfuse: Any, fuse: ctypes.c_void_p, fd: int, file_info: type[ctypes.Structure]) -> bool:
        """Wrap the session's low-level opendir (from the init callback, before any OPENDIR)."""
        if self.ops_table is None and not self.find(libfuse, fuse, fd):
            log.info("listings stay uncached")
            return False
        assert self.ops_table is not None
        session, slot = self._found, self.ops_table + 8 * OPENDIR_SLOT
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(file_info))
        pointer = ctypes.c_void_p.from_address(slot)
        original = proto(pointer.value)
        local = self._local

        def opendir(req: int, ino: int, fi: Any) -> None:
            local.call = (ino, fi)
            try:
                original(req, ino, fi)
            finally:
                local.call = None

        wrapper = proto(opendir)
        self._keep = [original, wrapper]
        inval = libfuse.fuse_lowlevel_notify_inval_inode
        inval.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64]
        inval.restype = ctypes.c_int
        self._inval, self._session = inval, session
        pointer.value = ctypes.cast(wrapper, ctypes.c_void_p).value
        log.info("view listings cached by the kernel, dropped on every change")
        return True

    def mark(self, fh: int) -> None:
        """From the high-level opendir of a directory whose listing the kernel may keep.

        When the daemon's last listing of it is older than `fresh`, the entries that listing
        gave the kernel are about to time out, and a kept listing would be followed by a
        LOOKUP per name: then the open drops the kept listing (no FOPEN_KEEP_CACHE) and the
        kernel keeps the new one, a READDIRPLUS that refreshes them all."""
        call = getattr(self._local, "call", None)
        if call is None or self._session is None:
            return
        ino, fi = call
        with self._lock:
            self._open[fh] = ino
            self._marked.add(ino)
            filled = self._filled.get(ino)
            keep = filled is None or time.monotonic() - filled <= self.fresh
        fi.contents.cache_readdir = 1
        fi.contents.keep_cache = int(keep)

    def listed(self, fh: int) -> None:
        """The daemon starts a listing for handle fh (READDIRPLUS at offset 0)."""
        with self._lock:
            ino = self._open.get(fh)
            if ino is not None:
                self._filled[ino] = time.monotonic()

    def released(self, fh: int) -> None:
        with self._lock:
            self._open.pop(fh, None)

    def drop(self) -> None:
        """Drop every listing the kernel may hold (before the reply to the change)."""
        if self._session is None:
            return
        with self._lock:
            nodes = self._marked | set(self._open.values())
            self._marked = set()
            reading = bool(self._open)
        if not nodes:
            return
        if reading:          # a listing may be on its way into the cache: see the module's doc
            self.on_drop()
        self.drops += 1
        for ino in nodes:
            # -ENOENT: the kernel has forgotten that directory (nothing cached any more)
            self._inval(self._session, ino, 0, 0)

    def stop(self) -> None:
        self._session = None
