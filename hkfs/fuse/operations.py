"""The FUSE adapter: mount paths -> hkfs.mount.views locations -> store calls; handles; errno.

The mfusepy-facing parts are hkfs.fuse.glue (HKFuse: READDIRPLUS, zero-copy
buffers, f-calls without a path) and hkfs.fuse.kernel_cache (the kernel's caches). It
keeps no catalog state that another process could change: its memo
(hkfs.mount.cached_reads) is dropped whenever SQLite reports any commit, and every
operation that may leave another cached path stale drops the kernel's entry and
attribute caches (`_entity_changed`, KernelCache.invalidate) before it replies,
so a change through any path is visible to the very next call. Directories are
listed with READDIRPLUS (libfuse 3): names with their attributes, one round trip
per ~200 entries instead of a LOOKUP per file. Bytes go straight to STORE/entities/<id>
through one descriptor per open handle. Every callback's errors go through
`to_fuse_error` (HKError -> its errno, OSError -> its errno, anything else
logged with its traceback -> EIO).

Semantics that are choices (docs/mount.md explains them to users):
- create in a view: a new entity carrying the view's HKs;
- ln FILE VIEW/: attaches the view's HKs the file does not already satisfy;
- rm VIEW/f: detaches every HK of f that an HK of the view matches (f leaves the view);
- mv between views: drops the source view's HKs the destination does not match, adds the
  destination's; mv within a view (same list) renames (chfn);
- rename of a fresh file over an existing one (editor saves): the existing entity takes the
  new bytes and mode, keeping its id, keywords, links and xattrs; the fresh entity goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mfusepy
from mfusepy import FuseOSError, Operations, overrides

from ..core.errors import (
    HKError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotPermitted,
)
from ..core.naming import HK, format_hk_list, hk_matches, parse_hk_list
from ..core.store import EntityInfo, EntityStat, Store
from ..mount.cached_reads import CachedReads
from ..mount.queryfs import SUFFIX as QUERY_SUFFIX
from ..mount.queryfs import QueryFS
from ..mount.paths import AT, check_new_name, clash_name, listed_name
from ..mount.views import (
    DirLoc,
    KeySpaceLoc,
    LinkLoc,
    Location,
    NewKeyLoc,
    Resolver,
    ViewFileLoc,
    ViewLoc,
    attach_set,
    detach_set,
)
from ..query.embeddings import entry_kind
from .daemon_notify import SYNC_ATTR
from .glue import (
    BUF_API,
    BUFVEC_SIZE,
    FUSE_CAP_READDIRPLUS_AUTO,
    STAT_KEYS,
    DirEntryAttrs,
    FuseBufvec,
    HKFuse,
    buf_malloc,
    fd_bufvec,
    fill_fd_bufvec,
    voidpp,
)
from .kernel_cache import ALIAS_WAIT, KernelCache

__all__ = ["HKOperations", "serve", "to_fuse_error"]

log = logging.getLogger(__name__)

ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
XATTR_CREATE, XATTR_REPLACE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
KEYWORDS_ATTR, DKL_ATTR, NS_ATTR = "user.hk.keywords", "user.hk.dkl", "user.hk.ns"
MAX_NAME = 255
# Operations after which the kernel's cached entries and attributes may be wrong somewhere
# (a retag changes which views list a file, a keyword can shadow a file name). Operations that
# change one file's attributes, create or remove a file decide for themselves
# (HKOperations._entity_changed): most files are cached under one path only.
CHANGING_OPS = frozenset({"link", "symlink", "rename", "setxattr", "removexattr"})


def to_fuse_error(exc: BaseException, op: str = "") -> FuseOSError:
    """The one place errors become errnos: HKError and OSError keep theirs, the rest is EIO."""
    if isinstance(exc, FuseOSError):
        return exc
    if isinstance(exc, HKError):
        return FuseOSError(exc.errno)
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return FuseOSError(exc.errno)
    log.error("unexpected error in %s", op or "a FUSE callback", exc_info=exc)
    return FuseOSError(errno.EIO)


_KEPT_THREADS: set[int] = set()


def _keep_thread_state() -> None:
    """Give the calling libfuse thread a lasting Python thread state.

    ctypes wraps each callback from a foreign thread in PyGILState_Ensure/Release,
    which creates and destroys a thread state every time. One extra Ensure, never
    released, keeps the state alive (Release then only drops the GIL): measured
    ~40% more stat calls per second. This is for speed only: hkfs.core.catalog keys its
    connections by OS thread id, so it stays correct without it (and for any
    callback that does not come through `_mapped`, e.g. init/destroy).
    """
    tid = threading.get_ident()
    if tid not in _KEPT_THREADS:
        _KEPT_THREADS.add(tid)
        ctypes.pythonapi.PyGILState_Ensure()


def _mapped(fn: Callable[..., Any], *, pin: bool = True) -> Callable[..., Any]:
    """A FUSE callback: a lasting thread state, errors through to_fuse_error, the catalog
    memo pinned for the request, and the kernel's caches dropped after a CHANGING_OPS op."""
    changes = fn.__name__ in CHANGING_OPS

    @functools.wraps(fn)
    def wrapper(self: HKOperations, *args: Any) -> Any:
        _keep_thread_state()
        pinned = pin and self.reads.pin()
        try:
            result = fn(self, *args)
            if changes:
                self.kernel.invalidate()
            return result
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise to_fuse_error(exc, fn.__name__) from exc
        finally:
            if pinned:
                self.reads.unpin()
    return wrapper


# The data path (reads): no memo pin. A read touches no catalog state, and each 128 KiB
# request's Python is a good part of the daemon's CPU per GiB (the pin is a PRAGMA under a lock).
_mapped_io = functools.partial(_mapped, pin=False)


def _check_path(path: str) -> None:
    for part in path.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise FuseOSError(errno.ENAMETOOLONG)


def _is_query_path(path: str | None) -> bool:
    """Cheap pre-check before asking the .query layer (most paths are not queries)."""
    return bool(path) and path.endswith(QUERY_SUFFIX)  # type: ignore[union-attr]


def _caller() -> tuple[int, int]:
    """(uid, gid) of the process making the call; the daemon's own outside a FUSE request."""
    try:
        uid, gid, _pid = mfusepy.fuse_get_context()
        return uid, gid
    except (ValueError, OSError, AttributeError):
        return os.getuid(), os.getgid()


def _file_type(mode: int) -> int:
    """The file-type bits of an entity's stored mode (0 there means a regular file)."""
    return stat.S_IFMT(mode) or stat.S_IFREG


def _ino(kind: int, ident: int) -> int:
    return (ident << 2) | kind


@dataclass
class Handle:
    fd: int
    eid: int
    written: bool = False
    path: str | None = None       # the path it was opened by (the kernel's node for it)


class HKOperations(Operations):
    """Operations over a Store; the mount root is the mounting user's namespace root directory."""

    use_ns = True

    def __init__(self, store: Store, *, user: int | str | None = None,
                 on_ready: Callable[[], None] | None = None, keep_timeouts: bool = False) -> None:
        self.store = store
        self.kernel = KernelCache(store.catalog.path)
        store.on_locked_commit = self.kernel.own_commit
        self.kernel.open_paths = self._open_paths
        self.keep_timeouts = keep_timeouts     # the user chose entry_timeout/attr_timeout
        self.ns = store.namespace_id(os.getuid() if user is None else user)
        self.root = store.root_dir(self.ns)
        self.reads = CachedReads(store)
        self._entities = os.fspath(store.entities_dir)
        self.resolver = Resolver(self.reads, self.ns)
        self.queries = QueryFS(store, self.resolver)    # the .query layer (hkfs/mount/queryfs.py)
        self.on_ready = on_ready
        self.uid, self.gid = os.getuid(), os.getgid()
        self.start_ns = time.time_ns()
        self._handles: dict[int, Handle] = {}
        self._open_eids: dict[int, int] = {}     # entity -> open handles (their size is the file's)
        self._writing: dict[int, int] = {}       # entity -> writes in flight
        self._hlock = threading.Lock()
        self._next_fh = 1
        self._listings: dict[int, list[DirEntryAttrs]] = {}   # directory handle -> its entries

    # ---------------------------------------------------------------- lifecycle

    @overrides(Operations)
    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse's init: READDIRPLUS for every listing, kernel caches on where they can be dropped."""
        fuse3 = mfusepy.fuse_version_major >= 3
        if fuse3 and conn is not None:
            # READDIRPLUS_AUTO sends attributes only for the first 4 KiB of a listing unless
            # lookups follow; `ls -l` reads the whole listing before its first stat.
            conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        self.kernel.attach(mfusepy._libfuse, config if fuse3 else None, keep_timeouts=self.keep_timeouts)
        self.init("/")

    @overrides(Operations)
    def init(self, path: str) -> None:
        """Called by libfuse once the kernel talks to us: the mount is ready."""
        log.info("file system ready")
        self.queries.start()          # worker threads only now, after FUSE has set up
        if self.on_ready is not None:
            self.on_ready()

    @overrides(Operations)
    def destroy(self, path: str) -> None:
        with self._hlock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            self._sync(h)
            os.close(h.fd)
        self.queries.stop()
        self.kernel.stop()
        self.reads.close()

    # ---------------------------------------------------------------- helpers

    def loc(self, path: str) -> Location:
        memo = self.reads.memo()
        key = ("loc", path)
        found = memo.get(key)
        if found is None:
            _check_path(path)
            found = memo[key] = self.resolver.resolve(path)
        if type(found) is ViewFileLoc and found.eid is not None:
            self.kernel.note_viewed(found.eid)      # outside the memo: noted after every invalidation
        return found

    def _loc_or_handle(self, path: str | None, fh: int | None) -> Location:
        """Where an f-call (fchmod, futimens, ...) applies: its open file, else the path.

        libfuse 3 gives no path for a file removed while open (hard_remove)."""
        h = self._handles.get(fh) if fh is not None else None
        if h is not None:
            return LinkLoc(self.root, "", h.eid)     # only the entity id is used
        if path is None:
            raise FuseOSError(errno.ENOENT)
        return self.loc(path)

    def _eid_of(self, loc: Location) -> int:
        if isinstance(loc, (LinkLoc, ViewFileLoc)) and loc.eid is not None:
            return loc.eid
        if isinstance(loc, (LinkLoc, ViewFileLoc, NewKeyLoc)):
            raise NotFound("no such file")
        raise IsADirectory("is a directory")

    def _split(self, path: str) -> tuple[str, str]:
        parent, _, name = path.rstrip("/").rpartition("/")
        return parent or "/", name

    @staticmethod
    def _is_symlink(info: EntityInfo) -> bool:
        return stat.S_ISLNK(info.mode)    # the store keeps the file type in mode

    def _entity_attrs(self, info: EntityInfo | EntityStat) -> dict[str, Any]:
        return dict(zip(STAT_KEYS, self._entity_values(info), strict=True))

    def _entity_values(self, info: EntityInfo | EntityStat) -> tuple[int, ...]:
        """A file's attributes (STAT_KEYS order): the catalog's, but size and times from the
        bytes file while open.

        A closed file's size and mtime are what the daemon recorded at its last flush or
        close (fsck's stale-size repairs them after a crash in between), so a listing
        needs no stat(2) per file; an open one may be growing."""
        size, mtime, ctime = info.size, info.mtime_ns, info.ctime_ns
        if info.id in self._open_eids:
            try:
                st = os.stat(f"{self._entities}/{info.id}")
                size, mtime, ctime = st.st_size, st.st_mtime_ns, max(st.st_ctime_ns, ctime)
            except FileNotFoundError:
                pass
        mode = info.mode
        return ((info.id << 2) | 1, info.nlinks or 1, mode if mode & 0o170000 else mode | stat.S_IFREG,
                info.uid, info.gid, size, 131072, (size + 511) // 512, info.atime_ns, mtime, ctime)

    def _removed_attrs(self, h: Handle) -> dict[str, Any]:
        """fstat of a file removed while open (its entity is gone): the bytes file's, nlink 0."""
        st = os.fstat(h.fd)
        return dict(zip(STAT_KEYS, ((h.eid << 2) | 1, 0, stat.S_IFREG | (st.st_mode & 0o7777), st.st_uid,
                                    st.st_gid, st.st_size, 131072, (st.st_size + 511) // 512,
                                    st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns), strict=True))

    def _dir_attrs(self, dirid: int) -> dict[str, Any]:
        d = self.reads.dir(dirid)
        return {
            "st_mode": stat.S_IFDIR | (d.mode & 0o7777), "st_ino": _ino(2, d.id), "st_nlink": 2,
            "st_uid": d.uid, "st_gid": d.gid, "st_size": 4096, "st_blocks": 8, "st_blksize": 4096,
            "st_atime": d.atime_ns, "st_mtime": d.mtime_ns, "st_ctime": d.ctime_ns,
        }

    def _virtual_ino(self, loc: KeySpaceLoc | ViewLoc) -> int:
        key = f"{type(loc).__name__}:{loc.ns}:{format_hk_list(loc.hks)}".encode()
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        return _ino(3, h & ((1 << 58) - 1))

    def _virtual_attrs(self, loc: KeySpaceLoc | ViewLoc) -> dict[str, Any]:
        t = self.start_ns
        return {
            "st_mode": stat.S_IFDIR | 0o755, "st_ino": self._virtual_ino(loc), "st_nlink": 2,
            "st_uid": self.uid, "st_gid": self.gid, "st_size": 4096, "st_blocks": 8,
            "st_blksize": 4096, "st_atime": t, "st_mtime": t, "st_ctime": t,
        }

    def _handle(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise FuseOSError(errno.EBADF)
        return h

    def _new_handle(self, fd: int, eid: int, written: bool = False, path: str | None = None) -> int:
        with self._hlock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = Handle(fd, eid, written, path)
            self._open_eids[eid] = self._open_eids.get(eid, 0) + 1
        return fh

    def _entity_changed(self, eid: int) -> None:
        """Entity eid's attributes changed (size, times, mode, owner, link count).

        The kernel may hold them under other paths (views, other directory links) unless
        the file was not reached through a view since the last invalidation and has at most
        one directory link: then the only cached path is the one the change came through,
        whose inode the kernel updates itself, and nothing is invalidated (a create, write
        and close of a file in a directory costs no re-lookup of every path afterwards)."""
        if self.kernel.was_viewed(eid):
            self.kernel.invalidate()
            return
        try:
            info = self.reads.entity(eid)
        except NotFound:
            return                                  # gone: no path left to be stale
        # an embedding entry's rows change what FILE.query files (sizes included) answer
        if info.nlinks > 1 or entry_kind(info.name) is not None:
            self.kernel.invalidate()

    def _attrs_changed(self, eid: int, path: str | None) -> None:
        """Entity eid's attributes changed through `path`: its other open paths, then every
        other cached path (see _changed_for_aliases, _entity_changed)."""
        self._changed_for_aliases(eid, path)
        self._entity_changed(eid)

    def _changed_for_aliases(self, eid: int, path: str | None, *, writing: bool = False) -> None:
        """Entity eid's attributes changed through `path`: drop them in the kernel for the
        other paths it is open by (their descriptors would keep the old size otherwise).

        `writing`: called from inside a write (counted in _writing); with other writes of
        the file in flight the invalidation is not waited for (see KernelCache.invalidate_paths)."""
        if eid not in self._open_eids:
            return
        with self._hlock:
            others = {h.path for h in self._handles.values() if h.eid == eid and h.path and h.path != path}
            busy = self._writing.get(eid, 0) > (1 if writing else 0)
        if others:
            self.kernel.invalidate_paths(sorted(others), wait=0 if busy else ALIAS_WAIT)

    @contextlib.contextmanager
    def _writes_to(self, eid: int) -> Iterator[bool]:
        """Count a write to eid in flight (see _changed_for_aliases); yields whether eid is
        open more than once. A file open once (the writer's own handle) has no other open
        path, so its writes skip the count and the lock: the common case of every write."""
        if self._open_eids.get(eid, 0) < 2:
            yield False
            return
        with self._hlock:
            self._writing[eid] = self._writing.get(eid, 0) + 1
        try:
            yield True
        finally:
            with self._hlock:
                n = self._writing.pop(eid) - 1
                if n:
                    self._writing[eid] = n

    def _open_paths(self) -> list[str]:
        with self._hlock:
            return sorted({h.path for h in self._handles.values() if h.path})

    def _forget_open(self, eid: int) -> None:
        """One handle of eid closed (call under _hlock)."""
        n = self._open_eids.pop(eid, 0) - 1
        if n > 0:
            self._open_eids[eid] = n

    def _open_fd(self, eid: int, flags: int) -> int:
        keep = os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC | os.O_NOATIME
        fd = os.open(f"{self._entities}/{eid}", (flags & keep) | os.O_CLOEXEC)
        # The kernel's FUSE readahead sends 128 KiB reads on several threads, slightly out of
        # order; a sequential hint keeps the backing file's readahead window large.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def _sync(self, h: Handle) -> None:
        """Record the size and mtime of written bytes in the catalog (for hk ls and the CLI)."""
        if not h.written:
            return
        h.written = False
        try:
            st = os.fstat(h.fd)
            self.store.set_attrs(h.eid, size=st.st_size, mtime_ns=st.st_mtime_ns)
        except NotFound:
            pass   # the entity went (an editor's temp file renamed over its original)
        self._entity_changed(h.eid)

    def _dir_ns(self, dirid: int) -> int:
        return self.store.dir(dirid).owner_ns

    # ---------------------------------------------------------------- attributes

    @overrides(Operations)
    @_mapped
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if (fh is not None and self.queries.owns(fh)) or _is_query_path(path):
            q = self.queries.getattr(path, fh)
            if q is not None:
                return q
        if fh is not None and fh in self._handles:
            h = self._handles[fh]
            try:
                return self._entity_attrs(self.reads.entity(h.eid))
            except NotFound:
                return self._removed_attrs(h)
        loc = self.loc(path)
        if isinstance(loc, DirLoc):
            return self._dir_attrs(loc.dirid)
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            return self._virtual_attrs(loc)
        return self._entity_attrs(self.reads.entity(self._eid_of(loc)))

    @overrides(Operations)
    @_mapped
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        loc = self._loc_or_handle(path, fh)
        if isinstance(loc, DirLoc):
            self.store.set_dir_attrs(loc.dirid, mode=mode & 0o7777)
        elif isinstance(loc, (KeySpaceLoc, ViewLoc)):
            raise NotPermitted("views have no mode of their own")
        else:
            eid = self._eid_of(loc)
            self.store.set_attrs(eid, mode=mode & 0o7777)
            self._attrs_changed(eid, path)
        return 0

    @overrides(Operations)
    @_mapped
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        u = None if uid in (-1, 0xFFFFFFFF) else uid
        g = None if gid in (-1, 0xFFFFFFFF) else gid
        loc = self._loc_or_handle(path, fh)
        if isinstance(loc, DirLoc):
            self.store.set_dir_attrs(loc.dirid, uid=u, gid=g)
        elif isinstance(loc, (KeySpaceLoc, ViewLoc)):
            raise NotPermitted("views have no owner of their own")
        else:
            eid = self._eid_of(loc)
            self.store.set_attrs(eid, uid=u, gid=g)
            self._attrs_changed(eid, path)
        return 0

    @overrides(Operations)
    @_mapped
    def utimens(self, path: str | None, times: tuple[int, int] | None = None, fh: int | None = None) -> int:
        now = time.time_ns()
        a, m = times if times is not None else (now, now)
        a = now if a == UTIME_NOW else (None if a == UTIME_OMIT else a)
        m = now if m == UTIME_NOW else (None if m == UTIME_OMIT else m)
        loc = self._loc_or_handle(path, fh)
        if isinstance(loc, DirLoc):
            self.store.set_dir_attrs(loc.dirid, atime_ns=a, mtime_ns=m)
        elif isinstance(loc, (KeySpaceLoc, ViewLoc)):
            return 0
        else:
            eid = self._eid_of(loc)
            p = self.store.entity_path(eid)
            st = os.stat(p)
            os.utime(p, ns=(st.st_atime_ns if a is None else a, st.st_mtime_ns if m is None else m))
            self.store.set_attrs(eid, atime_ns=a, mtime_ns=m)
            self._attrs_changed(eid, path)
        return 0

    @overrides(Operations)
    @_mapped
    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.store.root)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail")
        out = {k: getattr(sv, k) for k in keys}
        out["f_namemax"] = MAX_NAME
        return out

    # ---------------------------------------------------------------- directories

    @overrides(Operations)
    def opendir(self, path: str) -> int:
        with self._hlock:
            fh = self._next_fh
            self._next_fh += 1
        return fh

    @overrides(Operations)
    def releasedir(self, path: str, fh: int) -> int:
        self._listings.pop(fh, None)
        return 0

    @overrides(Operations)
    @_mapped
    def readdir(self, path: str, fh: int) -> Iterable[tuple[str, dict[str, int], int]]:
        # Every entry needs an inode number: readdir(3) skips entries whose d_ino is 0.
        return [(name, {"st_mode": mode, "st_ino": ino}, 0) for name, mode, ino, _, _ in self._entries(path)]

    @_mapped
    def listing_from(self, path: str, fh: int, offset: int) -> list[DirEntryAttrs]:
        """A directory's entries for READDIRPLUS, computed at offset 0 and kept for the handle.

        The kernel asks for a big listing in buffer-sized pieces, resuming at the offset
        the last piece ended with; the entries stay those of the opendir's first read,
        as readdir(3) expects."""
        got = self._listings.get(fh) if offset else None
        if got is None:
            got = self._listings[fh] = self._entries(path)
        return got

    def _entries(self, path: str) -> list[DirEntryAttrs]:
        """A directory's or view's entries: name, type and inode now, the rest when asked."""
        loc = self.loc(path)
        me = self.getattr(path)["st_ino"]
        out: list[DirEntryAttrs] = [(".", stat.S_IFDIR, me, None, None),
                                    ("..", stat.S_IFDIR, _ino(2, self.root), None, None)]
        if isinstance(loc, DirLoc):
            if loc.dirid == self.root:
                at = KeySpaceLoc(self.ns, (), self.root)
                out.append((AT, stat.S_IFDIR, self._virtual_ino(at), self._virtual_attrs, at))
            for e in self.store.listdir(loc.dirid):
                if e.kind == "dir":
                    out.append((e.name, stat.S_IFDIR, _ino(2, e.id), self._dir_attrs, e.id))
                else:       # the type matters: find -type l, ls and cp trust d_type
                    out.append((e.name, _file_type(e.mode), _ino(1, e.id),
                                None if e.name.endswith(QUERY_SUFFIX) else self._entity_attrs_of, e.id))
            return out
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            last: HK = loc.hks[-1] if isinstance(loc, ViewLoc) and loc.hks else ()
            kids = self.reads.keyword_children(loc.ns, tuple(last))
            for k in kids:
                kid = ViewLoc(loc.ns, loc.with_child(k), loc.anchor)
                out.append((k, stat.S_IFDIR, self._virtual_ino(kid), self._virtual_attrs, kid))
            if isinstance(loc, ViewLoc):
                self._view_files(loc, kids, out)
            return out
        raise NotADirectory("not a directory")

    def _view_entity_attrs(self, info: EntityStat) -> tuple[int, ...]:
        """A view's file as READDIRPLUS sends it: the kernel now holds it under a view path."""
        self.kernel.note_viewed(info.id)
        return self._entity_values(info)

    def _entity_attrs_of(self, eid: int) -> dict[str, Any]:
        return self._entity_attrs(self.reads.entity(eid))

    def _view_files(self, view: ViewLoc, keywords: dict[str, None], out: list[DirEntryAttrs]) -> None:
        """Append a view's files to `out`: shared names become STEM~ID.EXT, a name equal to
        a child keyword is listed as ',NAME'. One pass: a view may hold 100k files."""
        attrs, reg, add = self._view_entity_attrs, stat.S_IFREG, out.append
        for name, e in self.reads.listing(view.ns, tuple(view.hks)).items():
            if type(e) is list:
                for x in e:
                    n = clash_name(name, x.id)
                    add((n, x.mode & 0o170000 or reg, (x.id << 2) | 1,
                         None if n.endswith(QUERY_SUFFIX) else attrs, x))
                continue
            n = listed_name(name, e.id, shared=False, keyword=True) if name in keywords else name
            add((n, e.mode & 0o170000 or reg, (e.id << 2) | 1, None if n.endswith(QUERY_SUFFIX) else attrs, e))

    @overrides(Operations)
    @_mapped
    def mkdir(self, path: str, mode: int) -> int:
        loc = self.loc(path)
        uid, gid = _caller()
        if isinstance(loc, LinkLoc):
            if loc.eid is not None:
                raise FuseOSError(errno.EEXIST)
            check_new_name(loc.name)
            self.store.mkdir(loc.dirid, loc.name, mode=mode & 0o7777, uid=uid, gid=gid)
        elif isinstance(loc, NewKeyLoc):
            self.store.mkkw(loc.parent.ns, loc.parent.child_hk(loc.name))
            self.kernel.invalidate()      # a keyword shadows files of that name in its parent's views
        elif isinstance(loc, ViewFileLoc):
            # A keyword may take the name of a file of the view: the keyword wins, ',NAME' reaches the file.
            check_new_name(loc.name)
            self.store.mkkw(loc.view.ns, loc.view.child_hk(loc.name))
            self.kernel.invalidate()
        else:
            raise FuseOSError(errno.EEXIST)
        return 0

    @overrides(Operations)
    @_mapped
    def rmdir(self, path: str) -> int:
        loc = self.loc(path)
        if isinstance(loc, DirLoc):
            if loc.dirid == self.root:
                raise FuseOSError(errno.EBUSY)
            self.store.rmdir(loc.dirid)
        elif isinstance(loc, ViewLoc) and loc.keyword:
            self.store.rmkw(loc.ns, loc.hks[-1])
            self.kernel.invalidate()      # ',NAME' files of its parent's views take their plain names
        elif isinstance(loc, (ViewLoc, KeySpaceLoc)):
            raise FuseOSError(errno.EBUSY)      # '@' and ',' are part of every directory
        else:
            raise NotADirectory("not a directory")
        return 0

    # ---------------------------------------------------------------- files

    @overrides(Operations)
    @_mapped
    def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
        loc = self.loc(path)
        flags |= os.O_RDWR if flags & os.O_ACCMODE == os.O_RDONLY else 0
        if isinstance(loc, (LinkLoc, ViewFileLoc)) and loc.eid is not None:
            eid = loc.eid
            fd = self._open_fd(eid, flags)
            if flags & os.O_TRUNC:
                self._entity_changed(eid)
            return self._new_handle(fd, eid, path=path)
        eid = self._new_entity(loc, mode)
        if isinstance(loc, ViewFileLoc):
            self.kernel.note_viewed(eid)
        if len(self.store.match_ids(self._loc_ns(loc), [], loc.name)) > 1:   # type: ignore[union-attr]
            self.kernel.invalidate()      # a shared name: listed views may now show STEM~ID names
        return self._new_handle(self._open_fd(eid, flags), eid, path=path)

    def _loc_ns(self, loc: LinkLoc | ViewFileLoc) -> int:
        return self._dir_ns(loc.dirid) if isinstance(loc, LinkLoc) else loc.view.ns

    def _new_entity(self, loc: Location, mode: int) -> int:
        uid, gid = _caller()
        perm = stat.S_IFMT(mode) | (mode & 0o7777)   # S_IFLNK kept for a symlink
        if isinstance(loc, LinkLoc):
            check_new_name(loc.name)
            return self.store.create(self._dir_ns(loc.dirid), loc.name, directory=loc.dirid,
                                     mode=perm, uid=uid, gid=gid)
        if isinstance(loc, ViewFileLoc):
            check_new_name(loc.name)
            return self.store.create(loc.view.ns, loc.name, hks=loc.view.hks, mode=perm, uid=uid, gid=gid)
        if isinstance(loc, NewKeyLoc):
            raise NotFound("a file in the keyword space needs a keyword: create it in a view")
        raise FuseOSError(errno.EEXIST)

    @overrides(Operations)
    @_mapped
    def open(self, path: str, flags: int) -> int:
        if _is_query_path(path):
            qfh = self.queries.open(path, flags)
            if qfh is not None:
                return qfh
        eid = self._eid_of(self.loc(path))
        fh = self._new_handle(self._open_fd(eid, flags), eid, bool(flags & os.O_TRUNC), path)
        if flags & os.O_TRUNC:
            self._entity_changed(eid)
        return fh

    @overrides(Operations)
    @_mapped
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if self.queries.owns(fh):
            return self.queries.read(fh, size, offset)
        return os.pread(self._handle(fh).fd, size, offset)

    @overrides(Operations)
    @_mapped
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        h = self._handle(fh)
        if _is_query_path(path):
            self.queries.check_write(path, h.eid, data, offset)
        with self._writes_to(h.eid) as aliased:
            n = os.pwrite(h.fd, data, offset)
            h.written = True
            if aliased:
                self._changed_for_aliases(h.eid, path or h.path, writing=True)
        self._entity_changed(h.eid)
        return n

    if BUF_API is not None:
        @overrides(Operations)
        @_mapped_io
        def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: int) -> int:
            """Answer a read with the entity file's descriptor: libfuse reads it, not Python.

            libfuse reads up to `size` and replies with what it got, so a read past the end
            needs no fstat here."""
            h = self._handles.get(fh)
            fd = h.fd if h is not None else self.queries.fd(fh) if self.queries.owns(fh) else -1
            if fd < 0:
                raise FuseOSError(errno.EBADF)
            ptr = buf_malloc(BUFVEC_SIZE)    # libfuse free()s it after replying
            if not ptr:
                raise FuseOSError(errno.ENOMEM)
            fill_fd_bufvec(ptr, fd, offset, size)
            voidpp(bufpp)[0] = ptr
            return 0

        @overrides(Operations)
        @_mapped
        def write_buf(self, path: str, buf: Any, offset: int, fh: int) -> int:
            """Let libfuse copy the request's data straight into the entity file."""
            h = self._handle(fh)
            copy, size, _malloc = BUF_API
            src = ctypes.cast(buf, ctypes.POINTER(FuseBufvec))
            if _is_query_path(path) and self.queries.wants_bytes(path):
                # a NAME.query body is checked as bytes by write()
                mem = ctypes.create_string_buffer(size(src))
                mvec = FuseBufvec(count=1, idx=0, off=0)
                mvec.buf[0].size, mvec.buf[0].flags = len(mem), 0
                mvec.buf[0].mem = ctypes.cast(mem, ctypes.c_void_p)
                got = copy(ctypes.byref(mvec), src, 0)
                if got < 0:
                    raise FuseOSError(-got)
                return self.write(path, mem.raw[:got], offset, fh)
            dst = fd_bufvec(h.fd, offset, size(src))
            with self._writes_to(h.eid) as aliased:
                n = copy(ctypes.byref(dst), src, 0)
                if n < 0:
                    raise FuseOSError(-n)
                h.written = True
                if aliased:
                    self._changed_for_aliases(h.eid, path or h.path, writing=True)
            self._entity_changed(h.eid)
            return n

    @overrides(Operations)
    @_mapped
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh is not None and fh in self._handles:
            h = self._handles[fh]
            os.ftruncate(h.fd, length)
            eid = h.eid
        else:
            eid = self._eid_of(self._loc_or_handle(path, None))
            os.truncate(self.store.entity_path(eid), length)
        self.store.record_bytes(eid)
        self._attrs_changed(eid, path)
        return 0

    @overrides(Operations)
    @_mapped
    def flush(self, path: str, fh: int) -> int:
        if self.queries.owns(fh):
            return 0
        h = self._handle(fh)
        written = h.written
        self._sync(h)
        if written and _is_query_path(path):
            self.queries.validate_stored(path, h.eid)    # a malformed NAME.query: close() fails, EINVAL
        return 0

    @overrides(Operations)
    @_mapped
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if self.queries.owns(fh):
            return 0
        h = self._handle(fh)
        if datasync:
            os.fdatasync(h.fd)
        else:
            os.fsync(h.fd)
        self._sync(h)
        return 0

    @overrides(Operations)
    @_mapped
    def release(self, path: str, fh: int) -> int:
        if self.queries.owns(fh):
            return self.queries.release(fh)
        with self._hlock:
            h = self._handles.pop(fh, None)
            if h is not None:
                self._forget_open(h.eid)
        if h is not None:
            try:
                self._sync(h)
            finally:
                os.close(h.fd)
        return 0

    # ---------------------------------------------------------------- symlinks

    @overrides(Operations)
    @_mapped
    def symlink(self, target: str, source: str) -> int:
        """`ln -s source target`: an entity holding the link text."""
        loc = self.loc(target)
        if isinstance(loc, (LinkLoc, ViewFileLoc)) and loc.eid is not None:
            raise FuseOSError(errno.EEXIST)
        eid = self._new_entity(loc, stat.S_IFLNK | 0o777)
        data = source.encode("utf-8", "surrogateescape")
        with open(self.store.entity_path(eid), "wb") as f:
            f.write(data)
        self.store.record_bytes(eid)
        return 0

    @overrides(Operations)
    @_mapped
    def readlink(self, path: str) -> str:
        info = self.store.entity(self._eid_of(self.loc(path)))
        if not self._is_symlink(info):
            raise InvalidArgument("not a symbolic link")
        return self.store.entity_path(info.id).read_bytes().decode("utf-8", "surrogateescape")

    # ---------------------------------------------------------------- names: unlink, link, rename

    @overrides(Operations)
    @_mapped
    def unlink(self, path: str) -> int:
        loc = self.loc(path)
        if isinstance(loc, LinkLoc) and loc.eid is not None:
            # cached elsewhere only if reached through a view or linked twice (else it goes
            # with its one link, or stays reachable through views nobody has looked at)
            elsewhere = self.kernel.was_viewed(loc.eid) or self.reads.entity(loc.eid).nlinks > 1
            self.store.unlink(loc.dirid, loc.name)
            if elsewhere:
                self.kernel.invalidate()
        elif isinstance(loc, ViewFileLoc) and loc.eid is not None:
            self._leave_view(loc.eid, loc.view)
            self.kernel.invalidate()
        elif isinstance(loc, (LinkLoc, ViewFileLoc, NewKeyLoc)):
            raise NotFound("no such file")
        else:
            raise IsADirectory("is a directory")
        return 0

    def _leave_view(self, eid: int, view: ViewLoc) -> None:
        """rm in a view: detach the file's HKs that the view's HKs match (it never deletes bytes)."""
        if not view.hks:
            raise NotPermitted("this view has no keyword to detach; use hk rme to delete a file")
        gone = detach_set(self.store.entity(eid).hks, view.hks)
        if gone:
            self.store.dtkw(eid, gone)

    @overrides(Operations)
    @_mapped
    def link(self, target: str, source: str) -> int:
        """`ln source target`: another directory link, or (into a view) the view's HKs attached."""
        src = self.loc(source)
        eid = self._eid_of(src)
        dst = self.loc(target)
        if isinstance(dst, (LinkLoc, ViewFileLoc)) and dst.eid is not None:
            raise FuseOSError(errno.EEXIST)
        if isinstance(dst, LinkLoc):
            check_new_name(dst.name)
            self.store.link(eid, dst.dirid, dst.name)
        elif isinstance(dst, ViewFileLoc):
            check_new_name(dst.name)
            info = self.store.entity(eid)
            add = attach_set(info.hks, dst.view.hks)
            if add:
                self.store.atkw(eid, add)
            if info.name != dst.name:
                self.store.chfn(eid, dst.name)
        elif isinstance(dst, NewKeyLoc):
            raise NotFound("no such keyword")
        else:
            raise FuseOSError(errno.EEXIST)
        return 0

    @overrides(Operations)
    @_mapped
    def rename(self, old: str, new: str) -> int:
        src = self.loc(old)
        if isinstance(src, DirLoc):
            self._rename_dir(src, old, new)
            return 0
        if isinstance(src, (KeySpaceLoc, ViewLoc)):
            raise NotPermitted("keywords are renamed with hk commands, not mv")
        eid = self._eid_of(src)
        dst = self.loc(new)
        if isinstance(dst, (DirLoc, KeySpaceLoc, ViewLoc)):
            raise IsADirectory("is a directory")
        if isinstance(dst, NewKeyLoc):
            raise NotFound("no such keyword")
        assert isinstance(src, (LinkLoc, ViewFileLoc)) and isinstance(dst, (LinkLoc, ViewFileLoc))
        check_new_name(dst.name)
        if dst.eid is not None and dst.eid != eid and self._replaceable(src, eid, dst.eid):
            self._replace(eid, dst.eid)
            return 0
        if dst.eid == eid and isinstance(dst, ViewFileLoc) and isinstance(src, ViewFileLoc) \
                and dst.name == src.name:
            return 0
        if isinstance(src, LinkLoc) and isinstance(dst, LinkLoc):
            self.store.rename(src.dirid, src.name, dst.dirid, dst.name)
            return 0
        if dst.eid is not None and dst.eid != eid:
            # Over a file that keeps other homes: that file leaves the destination.
            if isinstance(dst, LinkLoc):
                self.store.unlink(dst.dirid, dst.name)
            else:
                self._leave_view(dst.eid, dst.view)
        if isinstance(src, ViewFileLoc) and isinstance(dst, ViewFileLoc):
            self._retag(eid, src.view, dst.view)
            if dst.name != src.name:
                self.store.chfn(eid, dst.name)
        elif isinstance(src, LinkLoc) and isinstance(dst, ViewFileLoc):
            info = self.store.entity(eid)
            add = attach_set(info.hks, dst.view.hks)
            if add:
                self.store.atkw(eid, add)
            self.store.unlink(src.dirid, src.name)
            if info.name != dst.name:
                self.store.chfn(eid, dst.name)
        else:
            assert isinstance(src, ViewFileLoc) and isinstance(dst, LinkLoc)
            self.store.link(eid, dst.dirid, dst.name)
            if src.view.hks:
                gone = detach_set(self.store.entity(eid).hks, src.view.hks)
                if gone:
                    self.store.dtkw(eid, gone)
        return 0

    def _rename_dir(self, src: DirLoc, old: str, new: str) -> None:
        sp, sname = self._split(old)
        dp, dname = self._split(new)
        sparent, dparent = self.loc(sp), self.loc(dp)
        if not isinstance(sparent, DirLoc) or src.dirid == self.root:
            raise FuseOSError(errno.EBUSY)
        if not isinstance(dparent, DirLoc):
            raise FuseOSError(errno.EXDEV)     # a directory cannot go into a view
        check_new_name(dname)
        self.store.rename(sparent.dirid, sname, dparent.dirid, dname)

    def _retag(self, eid: int, src: ViewLoc, dst: ViewLoc) -> None:
        """mv between views: drop what only the source view matched, add what the destination needs."""
        if src.hks == dst.hks and src.ns == dst.ns:
            return
        carried = self.store.entity(eid).hks
        gone = set(detach_set(carried, src.hks))
        keep = [h for h in carried if h not in gone or any(hk_matches(q, h) for q in dst.hks)]
        new = keep + attach_set(keep, dst.hks)
        if set(new) != set(carried):
            self.store.set_hks(eid, new)

    def _replaceable(self, src: LinkLoc | ViewFileLoc, eid: int, dst_eid: int) -> bool:
        """True when `eid` lives only where the rename takes it from (an editor's fresh temp file):
        then the destination entity takes its bytes instead of being replaced."""
        info = self.store.entity(eid)
        if self._is_symlink(info) or self._is_symlink(self.store.entity(dst_eid)):
            return False
        if isinstance(src, LinkLoc):
            return info.nlinks == 1 and not info.hks
        if info.nlinks:
            return False
        dst_hks = self.store.entity(dst_eid).hks
        return all(h in src.view.hks or h in dst_hks for h in info.hks)

    def _replace(self, eid: int, dst_eid: int) -> None:
        """Give entity dst_eid the bytes (and mode) of entity eid, then delete eid.

        The bytes move by hard link + rename, so a crash leaves either the old or the
        new bytes in dst_eid and, at worst, eid still present: nothing is lost."""
        sp, dp = self.store.entity_path(eid), self.store.entity_path(dst_eid)
        tmp = dp.with_name(f"{dst_eid}.replacing")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.link(sp, tmp)
        os.replace(tmp, dp)
        info = self.store.entity(eid)
        st = os.stat(dp)
        self.store.set_attrs(dst_eid, size=st.st_size, mode=info.mode & 0o7777, mtime_ns=st.st_mtime_ns)
        with self._hlock:
            for h in self._handles.values():
                if h.eid == eid:
                    h.eid = dst_eid
                    self._forget_open(eid)
                    self._open_eids[dst_eid] = self._open_eids.get(dst_eid, 0) + 1
        self.store.rme(eid)

    # ---------------------------------------------------------------- extended attributes

    def _xattr_target(self, path: str) -> tuple[str, int]:
        loc = self.loc(path)
        if isinstance(loc, DirLoc):
            return "dir", loc.dirid
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            return "view", 0
        return "file", self._eid_of(loc)

    @overrides(Operations)
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == SYNC_ATTR:
            # a process that changed the catalog itself asks us to drop the kernel's caches
            # before it goes on (hkfs.fuse.daemon_notify); answered once they are dropped
            self.kernel.invalidate_foreign()
            return str(self.kernel.epochs).encode()
        if not name.startswith("user."):
            # ENOTSUP (not ENODATA) for system.* / security.*: `ls -l` then stops asking
            # for ACLs on this file system instead of asking once per file. Answered
            # before `_mapped`, so without a catalog read (cp -a, tar, ls ask these).
            raise FuseOSError(errno.ENOTSUP)
        return self._getxattr(path, name)

    @_mapped
    def _getxattr(self, path: str, name: str) -> bytes:
        kind, ident = self._xattr_target(path)
        if kind == "file" and name == KEYWORDS_ATTR:
            return format_hk_list(self.store.entity(ident).hks).encode()
        if kind == "dir" and name == DKL_ATTR:
            return format_hk_list(self.store.dir(ident).dkl).encode()
        if kind == "dir" and name == NS_ATTR:
            return self.store.namespace_user(self.store.dir(ident).ns).encode()
        if kind == "view" or not name.startswith("user."):
            raise FuseOSError(ENOATTR)
        try:
            return self.store.get_xattr(kind, ident, name)
        except NotFound:
            raise FuseOSError(ENOATTR) from None

    @overrides(Operations)
    @_mapped
    def listxattr(self, path: str) -> Iterable[str]:
        kind, ident = self._xattr_target(path)
        if kind == "view":
            return []
        own = [KEYWORDS_ATTR] if kind == "file" else [DKL_ATTR, NS_ATTR]
        return own + [n for n in self.store.list_xattrs(kind, ident) if n.startswith("user.")]

    @overrides(Operations)
    @_mapped
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        kind, ident = self._xattr_target(path)
        if kind == "file" and self.queries.set_file_attr(ident, name, bytes(value)):
            return 0                  # user.hk.embedding / user.hk.dim (raw float32 allowed)
        text = bytes(value).decode("utf-8", "strict").strip() if name.startswith("user.hk.") else ""
        if kind == "file" and name == KEYWORDS_ATTR:
            self.store.set_hks(ident, parse_hk_list(text) if text else ())
        elif kind == "dir" and name == DKL_ATTR:
            self.store.set_dkl(ident, parse_hk_list(text) if text else ())
        elif kind == "dir" and name == NS_ATTR:
            if not text:
                raise InvalidArgument("empty user name")
            self.store.chns(ident, text)
        elif kind == "view" or not name.startswith("user."):
            raise FuseOSError(errno.ENOTSUP)
        elif name.startswith("user.hk."):
            raise InvalidArgument(f"{name} is not an hkfs attribute of a {kind}")
        else:
            if options & (XATTR_CREATE | XATTR_REPLACE):
                try:
                    self.store.get_xattr(kind, ident, name)
                    exists = True
                except NotFound:
                    exists = False
                if exists and options & XATTR_CREATE:
                    raise FuseOSError(errno.EEXIST)
                if not exists and options & XATTR_REPLACE:
                    raise FuseOSError(ENOATTR)
            self.store.set_xattr(kind, ident, name, bytes(value))
        return 0

    @overrides(Operations)
    @_mapped
    def removexattr(self, path: str, name: str) -> int:
        kind, ident = self._xattr_target(path)
        if kind == "file" and name == KEYWORDS_ATTR:
            self.store.set_hks(ident, ())
        elif kind == "dir" and name == DKL_ATTR:
            self.store.set_dkl(ident, ())
        elif kind == "dir" and name == NS_ATTR:
            raise NotPermitted("a directory always refers to a namespace")
        elif kind == "view" or not name.startswith("user."):
            raise FuseOSError(ENOATTR)
        else:
            try:
                self.store.remove_xattr(kind, ident, name)
            except NotFound:
                raise FuseOSError(ENOATTR) from None
        return 0


def serve(store: Store, mountpoint: str | os.PathLike[str], options: dict[str, object], *,
          on_ready: Callable[[], None] | None = None, debug: bool = False,
          keep_timeouts: bool = False) -> None:
    """Mount and serve in this thread until unmounted (multithreaded FUSE loop).

    Unless keep_timeouts (the user chose entry_timeout or attr_timeout), the kernel caches
    are turned on once the kernel is found able to drop them on demand (hkfs.fuse.kernel_cache)."""
    ops = HKOperations(store, on_ready=on_ready, keep_timeouts=keep_timeouts)
    HKFuse(ops, str(Path(mountpoint)), foreground=True, nothreads=False, debug=debug, **options)
