"""A bound on the files the kernel (and so libfuse) holds entries for: the daemon's memory.

Every file a listing hands the kernel with its attributes (READDIRPLUS) becomes a dentry
and an inode in the kernel, and libfuse's high-level API keeps a node for it (~140 bytes
with its hash slots; hkfs.fuse.glue) until the kernel sends FORGET. With memory to spare
the kernel forgets nothing, so after `ls -l` or `find` of a million-file store the daemon
held a million nodes (~130-150 MiB, measured in docs/bench/mount.md) for good.

`NodeBudget` remembers the file names listings handed out, newest last, per (directory
node, request offset): a view listed again refreshes its pieces instead of adding to
them. Past `limit` names, the oldest pieces are dropped in the kernel by a worker thread
with FUSE_NOTIFY_INVAL_ENTRY (fuse_lowlevel_notify_inval_entry): the kernel unhashes
each dentry, evicts its unused inode and sends FORGET, and libfuse frees the node. A
dropped name is looked up again when next used (one LOOKUP), so nothing is lost but
that round trip; an open file keeps its inode. Only files are dropped: a directory's
dentry may be a process's working directory, which unhashed would make getcwd() fail.

From a worker, never from a request: the kernel takes the directory's inode lock for the
message, which a listing of that directory holds while it waits for the daemon. The
message also moves the directory's version, so a view whose entries are dropped loses
the listing the kernel kept of it (hkfs.fuse.dir_cache) and is read from the daemon on
its next listing, which hands its entries out again. The drops fall behind a big
listing of the same directory (that lock again), so past half a budget of drops to do new
entries are not kept until they catch up (`_pause`); names listed meanwhile are counted
too, since `ls -l` looks them up, maybe once entries are kept again.

Entries a LOOKUP creates (a path walked without a listing) are not counted: nothing in
a LOOKUP tells the daemon whether the name is a file, and the bulk is listings.

The directory's node id comes from a wrapper around the session's low-level readdirplus
(the operations table hkfs.fuse.dir_cache finds), which keeps the request's node id and
offset in a thread-local for the high-level readdir (same thread, inside the wrapper).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import native_memory

__all__ = ["NodeBudget", "NODE_BUDGET", "READDIRPLUS_SLOT", "libfuse_nodes"]

log = logging.getLogger(__name__)

# ~30 MiB of libfuse nodes (and ~200 MB of kernel inodes and dentries); a 100k-file view,
# however often listed, stays whole, so its second listing is still the kernel's (docs/mount.md).
NODE_BUDGET = 200_000
TRIM_AFTER = 1.0             # seconds without drops after which freed memory is handed back
READDIRPLUS_SLOT = 41        # readdirplus's index in struct fuse_lowlevel_ops (fuse_lowlevel.h, 3.0 on)


def budget_from_env(default: int = NODE_BUDGET) -> int:
    """HKFS_NODE_BUDGET (names; 0: no bound) when set, else `default`."""
    raw = os.environ.get("HKFS_NODE_BUDGET", "")
    try:
        return max(0, int(raw)) if raw.strip() else default
    except ValueError:
        log.warning("HKFS_NODE_BUDGET=%r is not a number: using %d", raw, default)
        return default


def libfuse_nodes(fuse: int, session: int) -> int | None:
    """How many nodes libfuse 3's high-level `struct fuse` holds (its id table's count), or None
    when its layout is not the one expected (lib/fuse.c: the session pointer, then the name
    and id tables, each {array, use, size, split})."""
    words = (ctypes.c_size_t * 9).from_address(fuse)
    if words[0] != session:
        return None
    name_use, name_size, id_array, id_use, id_size = words[2], words[3], words[5], words[6], words[7]
    if not id_array or id_use > id_size or name_use > name_size or id_size < 8 or name_use > id_use:
        return None
    return int(id_use)


class NodeBudget:
    """The names listings handed the kernel, and dropping the oldest past `limit` (module doc)."""

    def __init__(self, limit: int = NODE_BUDGET) -> None:
        self.limit = limit
        self.held = 0                       # names in _pieces (handed out, believed kept)
        self.pending = 0                    # names popped from _pieces, not yet dropped
        self.dropped = 0                    # names dropped in the kernel so far (tests, memstats)
        self.pauses = 0                     # times new entries stopped being kept (tests, memstats)
        self._pieces: collections.OrderedDict[tuple[int, int], tuple[bytes, int]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._work: queue.SimpleQueue[list[tuple[int, bytes, int]] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._inval: Any = None
        self._session: int | None = None
        self._config: Any = None            # libfuse's struct fuse_config: entry_timeout
        self._timeout = 0.0                 # its entry_timeout while entries are kept
        self._keep: list[Any] = []          # the ctypes callbacks must outlive the mount

    @property
    def active(self) -> bool:
        return self._session is not None

    def keeping(self) -> bool:
        """Whether the kernel keeps what is handed out now (False: the drops lag, see `_pause`)."""
        return self._config is None or self._config.entry_timeout > 0

    def install(self, libfuse: Any, config: Any, session: int | None, table: int | None,
                code: tuple[int, int] | None) -> bool:
        """Wrap the session's low-level readdirplus (from init, before any listing); `table` is
        the address of its struct fuse_lowlevel_ops and `code` libfuse's code (DirCache.ops_table,
        DirCache.code), `config` libfuse's struct fuse_config. False: no bound."""
        if not self.limit or not session or not table or not code or config.entry_timeout <= 0:
            return False
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64,
                                 ctypes.c_void_p)
        pointer = ctypes.c_void_p.from_address(table + 8 * READDIRPLUS_SLOT)
        if not pointer.value or not code[0] <= pointer.value < code[1]:
            log.info("listed entries unbounded: no readdirplus found in this libfuse's operations")
            return False
        original = proto(pointer.value)
        local = self._local

        def readdirplus(req: int, ino: int, size: int, off: int, fi: int) -> None:
            local.call = (ino, off)     # as listing(ino, off), without a Python call more
            try:
                original(req, ino, size, off, fi)
            finally:
                local.call = None

        wrapper = proto(readdirplus)
        inval = libfuse.fuse_lowlevel_notify_inval_entry
        inval.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
        inval.restype = ctypes.c_int
        self._keep = [original, wrapper]
        self.start(inval, session, config)
        pointer.value = ctypes.cast(wrapper, ctypes.c_void_p).value
        log.info("kernel entries of listed files bounded to %d (older ones dropped)", self.limit)
        return True

    def start(self, inval: Callable[[int, int, bytes, int], int], session: int, config: Any) -> None:
        """Start dropping with `inval(session, parent, name, len)` (install's, or a test's)."""
        self._inval, self._session = inval, session
        self._config, self._timeout = config, config.entry_timeout
        self._worker = threading.Thread(target=self._drop_loop, name="hkfs-node-budget", daemon=True)
        self._worker.start()

    def listing(self, parent: int, offset: int) -> None:
        """The READDIRPLUS being answered in this thread (install's wrapper sets it; tests)."""
        self._local.call = (parent, offset)

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until every drop handed to the worker is done (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending

    def listed(self, names: list[str], encoding: str = "utf-8", errors: str = "surrogateescape") -> None:
        """From a READDIRPLUS: these files were handed to the kernel, with their attributes
        or (while not `keeping`) without, to be looked up, maybe once the entries are kept again."""
        call = getattr(self._local, "call", None)
        if call is None or not names or self._session is None:
            return
        blob = "\0".join(names).encode(encoding, errors)
        out: list[tuple[int, bytes, int]] = []
        with self._lock:
            old = self._pieces.pop(call, None)
            if old is not None:
                self.held -= old[1]
            self._pieces[call] = (blob, len(names))
            self.held += len(names)
            while self.held > self.limit and len(self._pieces) > 1:
                (parent, _off), (gone, n) = self._pieces.popitem(last=False)
                self.held -= n
                self.pending += n
                out.append((parent, gone, n))
            if self.pending > self.limit // 2:
                self._pause(True)
        if out:
            self._work.put(out)

    def _pause(self, on: bool) -> None:
        """Stop (on) or resume keeping new entries in the kernel (under the lock).

        The drops run behind a listing of the directory they drop from (the kernel takes
        its lock for each), so a big listing can hand out entries faster than they are
        dropped. Past half a budget of drops to do, new entries go out with an entry
        timeout of 0: the kernel lets go of each as soon as nothing uses it (`ls -l` then
        looks each name up, and forgets it again), and listings give names without
        attributes (hkfs.fuse.glue), until the drops are down to an eighth of a budget."""
        if on == (self._config.entry_timeout <= 0):
            return
        self._config.entry_timeout = 0.0 if on else self._timeout
        if on:
            self.pauses += 1
        log.debug("new kernel entries %s (%d drops to do)", "not kept" if on else "kept again", self.pending)

    def _drop_loop(self) -> None:
        trimmed = 0
        while True:
            try:
                item = self._work.get(timeout=TRIM_AFTER) if self.dropped > trimmed else self._work.get()
            except queue.Empty:
                # the kernel's FORGETs for the drops have come in: libfuse freed the nodes
                trimmed = self.dropped
                native_memory.trim()
                continue
            if item is None:
                return
            for parent, blob, n in item:
                for name in blob.split(b"\0"):
                    session = self._session
                    if session is None:
                        return
                    # -ENOENT: the kernel holds no such entry any more (forgotten, renamed)
                    self._inval(session, parent, name, len(name))
                self.dropped += n
                with self._lock:
                    self.pending -= n
                    if self.pending <= self.limit // 8:
                        self._pause(False)

    def stop(self) -> None:
        self._session = None
        if self._worker is not None:
            self._work.put(None)
            self._worker.join(timeout=5)
        if self._config is not None:
            with self._lock:
                self._pause(False)
