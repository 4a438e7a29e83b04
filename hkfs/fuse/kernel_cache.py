"""The kernel's entry and attribute caches for a mount: long timeouts, dropped on every change.

With the kernel's FUSE caches off (timeouts 0) every path component of every
system call is a round trip to the daemon: a `stat` is 3-4 requests, `ls -l` of a
view 2 per file, and Python answers ~5-10k requests a second. With them on, a
change made through one path (a file retagged in one view is listed in others)
or by another process (the hk CLI writes the catalog itself) would show only
when a timeout ran out.

Linux 6.16 added FUSE_NOTIFY_INC_EPOCH: one 16-byte message on the session's
/dev/fuse descriptor after which every dentry the kernel holds for this mount is
stale, so the next path walk asks the daemon again (and refreshes attributes
from that LOOKUP). The daemon sends it

- after every operation through the mount that changes anything, before replying;
- when a process that changed the catalog itself pokes the daemon
  (hkfs.fuse.daemon_notify: getxattr `user.hk.sync` on the mount root, answered after
  the message is sent, so that process's next command sees the change);
- when the store's change feed (hkfs.core.changes, the one `PRAGMA data_version`
  watcher) reports a commit by a writer that did not poke, within its poll interval.
  The daemon's own commits re-base this subscriber at once (`own_commit`), so they
  do not count as another writer's.

The epoch stales dentries, so every path walk refreshes attributes; a descriptor
already open through another path of the same file (another view, a hard link)
keeps its inode's attributes, though. For those the daemon also drops the
inode's attributes and pages (`fuse_invalidate_path`), from a worker thread: from
inside a request that could wait on a page lock held by a writer whose own
request waits on the daemon. The request waits for the worker only briefly, so
the change is visible at once unless another writer holds that inode's pages.

So the kernel may keep entries and attributes for CACHE_TIMEOUT seconds. Where the
kernel lacks the message (EINVAL) or libfuse 2 is loaded (its session descriptor
is not reachable through the high-level API), the timeouts stay 0 as before.

A commit by another process that names nothing anew (files_gen and vectors_gen unchanged:
hkfs.core.changes) and changes no file or directory whose attributes the kernel was given
since the last invalidation (their ctimes unchanged: `handed`) leaves every entry and
attribute the kernel holds true, so it sends no message: the next path walk needs no
LOOKUP of `@` or a view (a `cat VIEW/FILE.query` after a note set elsewhere). Attributes
reach the kernel only through getattr (every LOOKUP, GETATTR and entry reply) and
READDIRPLUS (hkfs.fuse.glue, which notes them here); a listing counts as every file, and
so does a getattr under way while the commit is checked. On a shared mount (allow_other)
every commit still drops everything: what a caller may reach depends on directory modes.

With the caches on, the kernel also keeps view listings (hkfs.fuse.dir_cache): every
invalidation drops them too (so the next listing is a READDIRPLUS that refreshes the
entries the epoch made stale), and so does every change that adds, removes or renames
a name without moving the epoch (`carry_out(..., listing=True)`): a file created in
one view or in a directory with a DKL is listed in other views.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import mfusepy

from ..core.changes import ChangeFeed, Generations
from ..mount.model import Stale
from .dir_cache import DirCache
from .node_budget import NodeBudget, budget_from_env

__all__ = ["KernelCache", "CACHE_TIMEOUT"]

log = logging.getLogger(__name__)

FUSE_NOTIFY_INC_EPOCH = 8                       # include/uapi/linux/fuse.h, protocol 7.44
_INC_EPOCH = struct.pack("<IiQ", 16, FUSE_NOTIFY_INC_EPOCH, 0)   # fuse_out_header, unique 0
CACHE_TIMEOUT = 60.0     # seconds the kernel may keep an entry or attributes between changes
ALIAS_WAIT = 0.05        # how long a request waits for open aliases' inodes to be dropped
ALIAS_WORKERS = 4        # invalidations blocked on one inode's pages do not hold up the others
VIEWED_MAX = 65536       # entities noted as viewed; past it, every entity counts as viewed
HANDED_MAX = 512         # files and directories whose attributes are checked after a foreign commit


class _All(set):   # type: ignore[type-arg]
    """KernelCache.viewed once it outgrew VIEWED_MAX: holds nothing, means everything."""

    def __contains__(self, eid: object) -> bool:
        return True


_ALL: set[int] = _All()
_EVERY: dict[int, int] = {}     # KernelCache.handed after a listing (or past HANDED_MAX): every file


def _session(libfuse: Any) -> tuple[ctypes.c_void_p, int]:
    """(struct fuse *, /dev/fuse descriptor) of the calling FUSE request's session (libfuse 3 only)."""
    libfuse.fuse_get_session.restype = ctypes.c_void_p
    libfuse.fuse_get_session.argtypes = [ctypes.c_void_p]
    libfuse.fuse_session_fd.restype = ctypes.c_int
    libfuse.fuse_session_fd.argtypes = [ctypes.c_void_p]
    libfuse.fuse_invalidate_path.restype = ctypes.c_int
    libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    fuse = ctypes.c_void_p(libfuse.fuse_get_context().contents.fuse)
    session = libfuse.fuse_get_session(fuse)
    if not session:
        raise OSError("no FUSE session")
    return fuse, int(libfuse.fuse_session_fd(session))


class KernelCache:
    """Turns the kernel's caches on for one mount and invalidates them on every change."""

    def __init__(self, changes: ChangeFeed, *, timeout: float = CACHE_TIMEOUT) -> None:
        self.changes = changes
        self.timeout = timeout
        self.epochs = 0                  # invalidations sent (tests and the sync xattr report it)
        self.kept = 0                    # foreign commits that needed none (`unchanged`)
        # Entities the kernel may have been given under a view path since the last
        # invalidation (lookups and listings of views add them). A file that is not in it
        # and has one directory link is cached under that one path at most, whose inode the
        # kernel updates itself: changing it needs no invalidation (see HKOperations).
        # The set of the generation before is kept too: an entry noted just before an
        # invalidation may reach the kernel just after it.
        # Past VIEWED_MAX entities (a big view listed) the set becomes ALL: every entity
        # counts as viewed until the next invalidation (memory stays bounded; a change to a
        # file with one link then drops the caches, as a change to a viewed one does).
        self.viewed: set[int] = set()
        self._viewed_before: set[int] = set()
        self._fd: int | None = None
        self._fuse: ctypes.c_void_p | None = None
        self._invalidate_path: Any = None
        self._version_lock = threading.Lock()
        self._last_version: int | None = None      # the catalog version the caches are known good at
        # paths of the files open through the mount (set by the adapter): another process's
        # change may have touched them, and descriptors keep their inodes' attributes
        self.open_paths: Callable[[], list[str]] = list
        # whether the daemon has a write transaction under way (set by the adapter: the
        # catalog's writes_open); a commit it is making is rebased by own_commit, not dropped
        self.own_writes: Callable[[], bool] = lambda: False
        self._aliases: queue.SimpleQueue[tuple[list[bytes], threading.Event] | None] = queue.SimpleQueue()
        self._alias_workers: list[threading.Thread] = []
        # Inode number -> ctime_ns of every file and directory whose attributes the kernel was
        # given since the last invalidation (and the generation before, as for `viewed`);
        # _EVERY after a listing or past HANDED_MAX. A foreign commit that moved none of these
        # ctimes, nor files_gen or vectors_gen since `_gens`, needs no invalidation.
        self._handed: dict[int, int] = {}
        self._handed_before: dict[int, int] = {}
        self._handing = 0                # getattrs and listings under way (their attributes unnoted yet)
        self._handed_lock = threading.Lock()
        self._gens: tuple[int, int] | None = None   # (files_gen, vectors_gen) at the last invalidation
        # set by the adapter: the ctimes of these (entity ids, directory ids) now (Store.ctimes);
        # whether every commit must drop everything (a shared mount)
        self.ctimes: Callable[[list[int], list[int]], tuple[dict[int, int], dict[int, int]]] | None = None
        self.always: Callable[[], bool] = lambda: False
        self.dirs = DirCache()           # the view listings the kernel keeps
        self.budget = NodeBudget(budget_from_env())   # the listed files the kernel keeps

    def attach(self, libfuse: Any, config: Any | None, *, keep_timeouts: bool = False) -> bool:
        """From the init callback: find the session, try the message, then lengthen the timeouts.

        `config` is libfuse 3's `struct fuse_config` (None on libfuse 2); with
        keep_timeouts the user's own entry_timeout/attr_timeout stay. False (and
        caches off) when the kernel or the library cannot invalidate."""
        if config is None:
            log.info("libfuse 2: kernel caches stay off (timeouts 0)")
            return False
        try:
            fuse, fd = _session(libfuse)
            self.dirs.find(libfuse, fuse, fd)      # libfuse's operations table, caches or not
            os.write(fd, _INC_EPOCH)
        except (OSError, AttributeError, ValueError) as exc:
            log.info("kernel caches stay off: cannot invalidate them (%s)", exc)
            return False
        self._fd, self._fuse, self._invalidate_path = fd, fuse, libfuse.fuse_invalidate_path
        g = self.changes.generations()     # read after the first message: nothing was handed before it
        self._gens = g.files, g.vectors
        if not keep_timeouts:
            config.entry_timeout = self.timeout
            config.attr_timeout = self.timeout
        log.info("kernel caches on: entry/attr timeouts %.0fs, dropped on every change",
                 config.entry_timeout)
        self.dirs.fresh = config.entry_timeout * 5 / 6      # a kept listing outlives no entry
        self.dirs.install(libfuse, fuse, fd, mfusepy.fuse_file_info)
        self.budget.install(libfuse, config, self.dirs.session, self.dirs.ops_table, self.dirs.code)
        self.own_commit()
        self.changes.subscribe(self._changed)
        self.changes.start()
        for i in range(ALIAS_WORKERS):
            t = threading.Thread(target=self._drop_aliases, name=f"hkfs-alias-inval-{i}", daemon=True)
            t.start()
            self._alias_workers.append(t)
        return True

    def invalidate(self, gens: Generations | None = None) -> None:
        """Make every cached entry of this mount stale (no-op while caches are off); `gens`:
        the generations read just before, if the caller has them."""
        fd = self._fd
        if fd is None:
            return
        self._viewed_before, self.viewed = self.viewed, set()   # before the message: see viewed
        # before the message: a commit after it moves them again
        gens = gens or self.changes.generations()
        with self._handed_lock:
            self._handed_before, self._handed = self._handed, {}
            self._gens = gens.files, gens.vectors
        try:
            os.write(fd, _INC_EPOCH)
            self.epochs += 1
        except OSError as exc:             # unmounted meanwhile: nothing is cached any more
            log.debug("epoch notification failed: %s", exc)
        self.dirs.drop()

    def carry_out(self, stale: Stale, *, listing: bool = False) -> None:
        """Drop what a change left stale (hkfs.mount.model.Stale): every entry, or nothing when
        only one entity changed that the kernel can hold under the changed path alone (one
        directory link, not reached through a view since the last invalidation), or when a
        new file's name is shared only by files the kernel was not given under a view path
        (`clashes`: only their plain names in views change; creating `Makefile` or
        `__init__.py` in a directory used to make every process walk every path again).

        `listing`: the change added, removed or renamed a name, so view listings may differ
        even when no entry is stale (a unique name created: views list it, and never looked
        it up)."""
        if stale.everything or (stale.eid is not None and (stale.shared or self.was_viewed(stale.eid))) \
                or any(self.was_viewed(e) for e in stale.clashes):
            self.invalidate()
        elif listing:
            self.dirs.drop()

    def note_viewed(self, eid: int) -> None:
        """The kernel is being given entity eid under a view path (no-op while caches are off)."""
        if self._fd is not None and self.viewed is not _ALL:
            if len(self.viewed) >= VIEWED_MAX:
                self.viewed = _ALL
            else:
                self.viewed.add(eid)

    def note_viewed_all(self, eids: list[int]) -> None:
        """note_viewed of each (a listing piece's files: one set update, not a call per file)."""
        if self._fd is not None and self.viewed is not _ALL:
            self.viewed.update(eids)
            if len(self.viewed) > VIEWED_MAX:
                self.viewed = _ALL

    def was_viewed(self, eid: int) -> bool:
        """Whether the kernel may hold entity eid under a view path (see `viewed`)."""
        return eid in self.viewed or eid in self._viewed_before     # _ALL contains every eid

    def invalidate_foreign(self) -> None:
        """Another process changed the catalog: drop every cached entry (unless nothing the
        kernel holds changed: `unchanged`), and the inodes of the files open through the mount
        (a size or mode changed by the API).

        Everything committed up to now is covered, so the change feed's next report of it
        (the poke came first) invalidates nothing again: at most one epoch per foreign commit."""
        if self._fd is None:
            return
        seen = self.changes.generations()      # its version: what this covers
        if self.unchanged(seen):
            with self._handed_lock:      # (the watcher and a poke may both get here)
                self.kept += 1
        else:
            self.invalidate(seen)
        self.invalidate_paths(self.open_paths())
        with self._version_lock:
            self._last_version = seen.version

    @contextlib.contextmanager
    def handing(self) -> Iterator[None]:
        """Around a getattr or a listing, from before it reads the catalog until its attributes
        are noted: a foreign commit checked meanwhile drops everything (`unchanged`)."""
        with self._handed_lock:
            self._handing += 1
        try:
            yield
        finally:
            with self._handed_lock:
                self._handing -= 1

    def note_attrs(self, ino: int, ctime_ns: int) -> None:
        """The kernel is being given these attributes (a file's or a directory's inode number,
        hkfs.mount.model: kind in the low 2 bits; views and `.query` files derive from the
        generations alone, so they are not noted)."""
        if self._fd is None or ino & 3 == 3:
            return
        with self._handed_lock:
            handed = self._handed
            if handed is _EVERY or handed.get(ino) == ctime_ns:
                return
            if len(handed) >= HANDED_MAX or ino & 3 == 0:     # (no such inode kind: check nothing)
                self._handed = _EVERY
            else:
                handed[ino] = ctime_ns

    def note_listing(self) -> None:
        """The kernel is being given a listing's attributes: every file counts as handed."""
        if self._fd is not None:
            with self._handed_lock:
                self._handed = _EVERY

    def unchanged(self, gens: Generations | None = None) -> bool:
        """Whether everything the kernel may hold is still true after a commit by another
        process (see the module doc): no name, tag or embedding changed since the last
        invalidation, no getattr or listing under way, and every file and directory whose
        attributes the kernel was given since has its ctime still. False means: drop all."""
        if self._fd is None or self.ctimes is None or self.always():
            return False
        g = gens or self.changes.generations()
        with self._handed_lock:
            if (self._handing or (g.files, g.vectors) != self._gens
                    or self._handed is _EVERY or self._handed_before is _EVERY):
                return False
            handed = [*self._handed_before.items(), *self._handed.items()]
        if not handed:
            return True
        ents = list({ino >> 2 for ino, _ in handed if ino & 3 == 1})
        dirs = list({ino >> 2 for ino, _ in handed if ino & 3 == 2})
        now_e, now_d = self.ctimes(ents, dirs)
        return all((now_e if ino & 3 == 1 else now_d).get(ino >> 2) == ctime for ino, ctime in handed)

    def invalidate_paths(self, paths: list[str], *, wait: float = ALIAS_WAIT) -> None:
        """Drop the kernel's attributes and pages of these paths' inodes (open aliases of a
        file that changed), waiting up to `wait` for it; no-op while caches are off.

        wait=0 when a write through such a path is in flight: it holds that inode's pages,
        so waiting would only chain concurrent writers' requests."""
        if not paths or self._fd is None:
            return
        done = threading.Event()
        self._aliases.put(([p.encode("utf-8", "surrogateescape") for p in paths], done))
        if wait > 0:
            done.wait(wait)

    def stop(self) -> None:
        self.budget.stop()
        self.dirs.stop()
        self.changes.stop()
        for _ in self._alias_workers:
            self._aliases.put(None)
        for t in self._alias_workers:
            t.join(timeout=5)
        self._fd = None

    def _drop_aliases(self) -> None:
        while True:
            item = self._aliases.get()
            if item is None:
                return
            paths, done = item
            for p in paths:
                if self._fd is None:
                    break
                # -ENOENT when libfuse no longer knows the path (renamed, forgotten): nothing cached
                self._invalidate_path(self._fuse, p)
            done.set()

    def own_commit(self) -> None:
        """The daemon committed: take the catalog's new data_version as the baseline.

        Otherwise the feed's report would take the daemon's own commits for another writer's
        and drop every cached entry after each of them. (A commit by a writer that does not
        poke, landing within microseconds after one of ours, is missed until the next
        invalidation or timeout.)"""
        if self._fd is None:
            return
        with self._version_lock:
            self._last_version = self.changes.version()

    def _changed(self, version: int) -> None:
        """The change feed saw a commit: invalidate unless it was the daemon's own.

        A commit of the daemon's lands before its own_commit runs: seen in between (a write
        transaction still open), it is left to own_commit, which re-bases (another writer
        cannot commit while the daemon holds the write lock; one committing just before it
        pokes the daemon, hkfs.fuse.daemon_notify)."""
        with self._version_lock:
            if self.own_writes():
                return
            moved, self._last_version = version != self._last_version, version
        if moved:
            self.invalidate_foreign()
