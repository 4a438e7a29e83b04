"""The FUSE adapter: FUSE calls -> hkfs.mount.model.MountModel calls; Attrs -> stat; handles; errno.

The meaning of every path and change is the model's (hkfs/mount/model.py); this module
translates: a path (or an open handle's entity) into a model call, `Attrs` into a stat
dict, HKError/OSError into an errno (`to_fuse_error`), and a change's `Stale` into the
kernel cache's invalidation (KernelCache.carry_out). It keeps the open file handles,
one descriptor each on STORE/entities/<id>, and the `.query` layer's handles
(hkfs.mount.queryfs, asked first for the paths and handles it owns).

The mfusepy-facing parts are hkfs.fuse.glue (HKFuse: READDIRPLUS, zero-copy buffers,
f-calls without a path) and hkfs.fuse.kernel_cache (the kernel's caches). Nothing here
holds catalog state another process could change: the model's read memo
(hkfs.mount.cached_reads) is dropped whenever SQLite reports any commit, and every change
that may leave another cached path stale is carried out before the reply, so a change
through any path is visible to the very next call.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import mfusepy
from mfusepy import FuseOSError, Operations, overrides

from ..core.changes import ChangeFeed
from ..core.errors import HKError, InvalidArgument, NotFound
from ..core.store import Store
from ..mount.access import caller_groups, permitted
from ..mount.model import MAX_NAME, Attrs, MountModel, Stale, is_device
from ..mount.queryfs import SUFFIX as QUERY_SUFFIX
from ..mount.queryfs import QueryFS
from ..mount.view_listing import Piece, ViewListing, WholeListing, listing_for
from ..mount.views import KeySpaceLoc, ViewLoc
from ..query.service import QueryService
from . import memstats
from .callbacks import mapped, mapped_io, to_fuse_error
from .daemon_notify import SYNC_ATTR
from .glue import (
    BUF_API,
    BUFVEC_SIZE,
    FUSE_CAP_READDIRPLUS_AUTO,
    STAT_KEYS,
    FuseBufvec,
    HKFuse,
    buf_free,
    buf_malloc,
    fallocate,
    fd_bufvec,
    fill_fd_bufvec,
    fill_mem_bufvec,
    voidpp,
)
from .handles import Handle, OpenFiles
from .kernel_cache import ALIAS_WAIT, KernelCache
from .removed import RemovedWhileOpen

__all__ = ["HKOperations", "serve", "to_fuse_error"]

log = logging.getLogger(__name__)

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
FALLOC_FL_KEEP_SIZE = 0x01             # linux/falloc.h
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2   # linux/fs.h; other flags are refused


def _is_query_path(path: str | None) -> bool:
    """Cheap pre-check before asking the .query layer (most paths are not queries)."""
    return bool(path) and path.endswith(QUERY_SUFFIX)  # type: ignore[union-attr]


XATTR_PREFIXES = ("user.", "trusted.", "security.", "system.")


def _check_xattr_name(name: str) -> None:
    """A name that is only a namespace prefix ("user.") names no attribute: EINVAL, as on
    ext4 (the kernel leaves that check to FUSE file systems)."""
    if name in XATTR_PREFIXES:
        raise FuseOSError(errno.EINVAL)


def _caller() -> tuple[int, int]:
    """(uid, gid) of the process making the call; the daemon's own outside a FUSE request."""
    try:
        uid, gid, _pid = mfusepy.fuse_get_context()
        return uid, gid
    except (ValueError, OSError, AttributeError):
        return os.getuid(), os.getgid()


def _caller_context() -> tuple[int, int, int] | None:
    """(uid, gid, pid) of the request being served; None outside one."""
    try:
        return mfusepy.fuse_get_context()
    except (ValueError, OSError, AttributeError):
        return None


class HKOperations(Operations):
    """Operations over a Store; the mount root is the mounting user's namespace root directory."""

    use_ns = True

    def __init__(self, store: Store, *, user: int | str | None = None,
                 on_ready: Callable[[], None] | None = None, keep_timeouts: bool = False) -> None:
        self.store = store
        self.changes = ChangeFeed(store.catalog.path)    # the one data_version watcher
        self.kernel = KernelCache(self.changes)
        store.on_locked_commit = self.kernel.own_commit
        self.kernel.own_writes = lambda: store.catalog.writes_open > 0
        self.kernel.ctimes = store.ctimes      # what a foreign commit changed of what the kernel holds
        self.keep_timeouts = keep_timeouts     # the user chose entry_timeout/attr_timeout
        self.model = MountModel(store, store.namespace_id(os.getuid() if user is None else user),
                                changes=self.changes)
        self.model.on_view = self.kernel.note_viewed
        self.model.on_view_all = self.kernel.note_viewed_all
        self.kernel.always = lambda: self.model.shared    # a caller's reach depends on directory modes
        self.reads = self.model.reads
        # what the adapter does to a view listing's piece read ahead, on the reading worker
        # (HKFuse: encode it for libfuse's filler, so a READDIRPLUS only copies it)
        self.prepare_piece: Callable[[Piece], None] | None = None
        # a request's catalog reads on a connection lent for it, the last one given back first
        # (Catalog.lend): `mapped` callbacks, the listing's pieces and the commit poke
        self.lend, self.give_back, self.lent = store.catalog.lend, store.catalog.give_back, store.catalog.lent
        self.queries = QueryFS(store, self.model.resolver,   # the .query layer (hkfs/mount/queryfs.py)
                               QueryService(store, reads=self.reads, changes=self.changes))
        self.queries.changed = self._entity_changed_at
        self.queries.service.changes.pinned = self.reads.pinned    # one generations read a request
        self.queries.hidden = self.model.unreachable      # a shared mount: per caller (hkfs.mount.access)
        self.model.claim_file_attr = self.queries.set_file_attr
        self.model.caller = _caller_context
        self.model.read_file_attr = self.queries.get_file_attr
        self.on_ready = on_ready
        self.files = OpenFiles(store.entities_dir, self.model.open_counts)
        self.kernel.open_paths = self.files.paths
        self.kernel.dirs.on_drop = self._views_changed
        self._listings: dict[int, ViewListing | WholeListing] = {}   # directory handle -> its listing
        self.removed = RemovedWhileOpen()        # libfuse's hidden names (hkfs/fuse/removed.py)
        self._new_bytes_files = True             # entities/ changed since its last fsync (fsync)
        # fstat + record of a written size, one at a time: two descriptors of one file closing
        # together must not commit their sizes out of order (the older, smaller size last
        # would make the kernel read the file short and append over its end).
        self._record_lock = threading.Lock()

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
        table, code = self.kernel.dirs.ops_table, self.kernel.dirs.code
        if not (table and code and self.removed.install(table, code)):
            log.info("renames over open files are a removal then a plain rename (no editor save): "
                     "libfuse's low-level rename could not be wrapped")
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
        for h in self.files.pop_all():
            self._sync(h)
            os.close(h.fd)
        self.queries.stop()
        self.kernel.stop()
        self.model.close()

    # ---------------------------------------------------------------- helpers

    def _where(self, path: str | None, fh: int | None) -> str | int:
        """Where an f-call (fchmod, futimens, ...) applies: its open file's entity, else the path.

        libfuse 3 gives no path for a file removed while open (hard_remove)."""
        h = self.files.get(fh)
        if h is not None:
            return h.eid
        if path is None:
            raise FuseOSError(errno.ENOENT)
        hidden = self.removed.eid_of(path)
        return hidden if hidden is not None else path     # a file removed while open: by its hidden name

    def _stat(self, attrs: Attrs) -> dict[str, Any]:
        st = dict(zip(STAT_KEYS, attrs, strict=True))
        if is_device(attrs.mode):
            st["st_rdev"] = self.model.rdev(attrs.ino >> 2)
        return st

    def _open_attrs(self, h: Handle) -> dict[str, Any]:
        try:
            return self._stat(self.model.entity_attrs(h.eid))
        except NotFound:
            return self._removed_attrs(h)

    def _removed_handle(self, where: str | int) -> Handle | None:
        """An open handle of `where` if it is a file removed while open (no catalog row left)."""
        if not isinstance(where, int) or where not in self.files.counts:
            return None
        try:
            self.model.entity_attrs(where)
            return None
        except NotFound:
            return self.files.of_entity(where)

    def _removed_set(self, where: str | int, mode: int | None = None, uid: int | None = None,
                     gid: int | None = None) -> bool:
        """fchmod/fchown of a file removed while open: no catalog row is left to change, so its
        kept attributes change (see _removed_attrs). False if it has a row (or is no open file)."""
        h = self._removed_handle(where)
        if h is None:
            return False
        self.removed.change(h.eid, os.fstat(h.fd), mode, uid, gid)
        return True

    def _views_changed(self) -> None:
        """View listings are being dropped: their mtime moves, so that the kernel also throws
        away a listing that reached its cache just after the drop (hkfs.fuse.dir_cache)."""
        self.model.start_ns = time.time_ns()

    def _entity_changed_at(self, eid: int, path: str | None) -> None:
        """The .query layer changed a stored query's body through `path`."""
        self._changed(self.model.entity_stale(eid), path)

    def _changed(self, stale: Stale, path: str | None) -> None:
        """An entity's attributes changed through `path`: its other open paths, then what the
        model says is stale (see _changed_for_aliases, KernelCache.carry_out)."""
        if stale.eid is not None:
            self._changed_for_aliases(stale.eid, path)
        self.kernel.carry_out(stale)

    def _removed_attrs(self, h: Handle) -> dict[str, Any]:
        """fstat of a file removed while open (its entity is gone): the bytes file's, nlink 0."""
        st = os.fstat(h.fd)
        mode, uid, gid = self.removed.attrs(h.eid, st)
        return self._stat(Attrs((h.eid << 2) | 1, 0, stat.S_IFREG | (mode & 0o7777), uid, gid,
                                st.st_size, 131072, (st.st_size + 511) // 512, st.st_atime_ns, st.st_mtime_ns,
                                st.st_ctime_ns))

    def _changed_for_aliases(self, eid: int, path: str | None, *, writing: bool = False) -> None:
        """Entity eid's attributes changed through `path`: drop them in the kernel for the
        other paths it is open by (their descriptors would keep the old size otherwise).

        `writing`: called from inside a write; with other writes of the file in flight the
        invalidation is not waited for (see KernelCache.invalidate_paths)."""
        others, busy = self.files.aliases(eid, path, writing=writing)
        if others:
            self.kernel.invalidate_paths(others, wait=0 if busy else ALIAS_WAIT)

    def _sync(self, h: Handle) -> None:
        """Record the size and mtime of written bytes in the catalog (for hk ls and the CLI)."""
        if not h.written:
            return
        h.written = False
        if h.replaced:          # bytes an editor save replaced: their size is not the entity's
            return
        with self._record_lock:
            st = os.fstat(h.fd)
            stale = self.model.written(h.eid, st.st_size, st.st_mtime_ns)
        self.kernel.carry_out(stale)

    # ---------------------------------------------------------------- attributes

    @overrides(Operations)
    @mapped
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if (fh is not None and self.queries.owns(fh)) or _is_query_path(path):
            q = self.queries.getattr(path, fh)
            if q is not None:
                return q
        h = self.files.get(fh)
        hidden = self.removed.eid_of(path)
        if h is None and hidden is not None:    # fstat of a file removed while open: no handle is passed
            old = self.files.on_old_bytes(hidden)
            if old is not None:     # its entity took an editor save's bytes: the descriptor's, nlink 0
                return self._removed_attrs(old)
            h = self.files.of_entity(hidden)
            if h is None:
                raise NotFound("no such file")
        if h is None:
            return self._stat(self.model.attrs(path))
        st = self._open_attrs(h)
        if st["st_nlink"] and self.removed.hides(h.eid):
            # libfuse's getattr takes one off a hidden node's count (its hidden name is a link
            # it made); the daemon never made that link (the hide is the removal): add it back
            st["st_nlink"] += 1
        return st

    @overrides(Operations)
    @mapped
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        where = self._where(path, fh)
        if not self._removed_set(where, mode=mode & 0o7777):
            self._changed(self.model.chmod(where, mode), path)
        return 0

    @overrides(Operations)
    @mapped
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        u = None if uid in (-1, 0xFFFFFFFF) else uid
        g = None if gid in (-1, 0xFFFFFFFF) else gid
        where = self._where(path, fh)
        if not self._removed_set(where, uid=u, gid=g):
            self._changed(self.model.chown(where, u, g), path)
        return 0

    @overrides(Operations)
    @mapped
    def utimens(self, path: str | None, times: tuple[int, int] | None = None, fh: int | None = None) -> int:
        now = time.time_ns()
        a, m = times if times is not None else (now, now)
        a = now if a == UTIME_NOW else (None if a == UTIME_OMIT else a)
        m = now if m == UTIME_NOW else (None if m == UTIME_OMIT else m)
        self._changed(self.model.utimens(self._where(path, fh), a, m), path)
        return 0

    @overrides(Operations)
    @mapped
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if self.queries.owns(fh):
            return self.queries.truncate(fh, length)      # type: ignore[arg-type]
        h = self.files.get(fh)
        where = h.eid if h is not None else self._where(path, None)
        gone = self._removed_handle(where)
        if gone is not None:                 # ftruncate of a file removed while open: its bytes only
            os.ftruncate(gone.fd, length)
            return 0
        if h is None and path is not None:
            self.queries.check_truncate(path, self.model.file(path), length)   # a stored query stays valid
        self._changed(self.model.truncate(where, length, h.fd if h is not None else None), path)
        return 0

    @overrides(Operations)
    @mapped
    def access(self, path: str, amode: int) -> int:
        """access(2), faccessat(2) and chdir, asked only without default_permissions (with it
        the kernel answers from the attributes): the mode bits against the caller, as on ext4.
        Unanswered (ENOSYS: "allowed" for the kernel) `test -x` took every file for executable."""
        st = self.getattr(path)
        who = _caller_context()
        uid, gid, pid = who if who is not None else (os.getuid(), os.getgid(), os.getpid())
        if amode and not permitted(st["st_mode"], st["st_uid"], st["st_gid"], uid, caller_groups(pid, gid), amode):
            raise FuseOSError(errno.EACCES)
        return 0

    @overrides(Operations)
    @mapped
    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.store.root)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail")
        out = {k: getattr(sv, k) for k in keys}
        out["f_namemax"] = MAX_NAME
        return out

    # ---------------------------------------------------------------- directories

    @overrides(Operations)
    @mapped
    def opendir(self, path: str) -> int:
        fh = self.files.next_id()
        # The kernel keeps the listing until a change drops it; not on a shared mount, where
        # a view lists only what the calling user may reach (one kept listing is everyone's).
        if self.kernel.dirs.active and not self.model.shared and self._is_view(path):
            self.kernel.dirs.mark(fh)
        return fh

    def _is_view(self, path: str) -> bool:
        """Whether path is '@' or a view: listings the kernel may keep (hkfs.fuse.dir_cache)."""
        try:
            return isinstance(self.model.resolve(path), (KeySpaceLoc, ViewLoc))
        except HKError:
            return False         # gone meanwhile: the listing will say so

    @overrides(Operations)
    def releasedir(self, path: str, fh: int) -> int:
        self._listings.pop(fh, None)
        self.kernel.dirs.released(fh)
        return 0

    @overrides(Operations)
    @mapped
    def readdir(self, path: str, fh: int) -> Iterable[tuple[str, dict[str, int], int]]:
        # Every entry needs an inode number: readdir(3) skips entries whose d_ino is 0.
        return [(name, {"st_mode": mode, "st_ino": ino}, 0) for name, mode, ino, _, _ in self.model.listdir(path)]

    @mapped
    def listing_from(self, path: str, fh: int, offset: int) -> Generator[tuple[Piece, int], None, None]:
        """A directory's entries for READDIRPLUS after `offset`, each with its own offset, in
        pieces of columns (hkfs.mount.view_listing.Piece, with the index of the first entry
        after `offset`).

        The kernel asks for a big listing in buffer-sized pieces, resuming at the offset
        the last piece ended with; the entries stay those of the handle's first read, as
        readdir(3) expects. A view is read a piece at a time (hkfs.mount.view_listing); its
        offsets, and those of '@', do not depend on a position, because a listing the
        kernel keeps (hkfs.fuse.dir_cache) is resumed by a handle that read nothing itself
        when the kernel drops it midway: a listing made after a change then goes on after
        the same name, repeating or skipping none but the changed ones. Plain directories,
        never kept by the kernel, are listed whole and resumed by position."""
        got = self._listings.get(fh)
        if got is None or not offset:
            got = self._listings[fh] = listing_for(self.model, self.model.resolve(path), path, self.prepare_piece)
            self.kernel.dirs.listed(fh)
        return got.pieces_from(offset)

    @overrides(Operations)
    @mapped
    def mkdir(self, path: str, mode: int) -> int:
        self.kernel.carry_out(self.model.mkdir(path, mode, *_caller()), listing=True)
        return 0

    @overrides(Operations)
    @mapped
    def rmdir(self, path: str) -> int:
        self.kernel.carry_out(self.model.rmdir(path), listing=True)
        return 0

    # ---------------------------------------------------------------- files

    @overrides(Operations)
    @mapped
    def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
        loc = self.model.resolve(path)
        flags |= os.O_RDWR if flags & os.O_ACCMODE == os.O_RDONLY else 0
        eid = getattr(loc, "eid", None)
        if eid is not None:           # O_CREAT of an existing file opens it
            if self.queries.wants_bytes(path):     # a stored query's body: staged until valid
                return self.queries.stage(path, eid, truncate=bool(flags & os.O_TRUNC))
            fh = self.files.open(eid, flags, path=path)
            if flags & os.O_TRUNC:
                self.kernel.carry_out(self.model.entity_stale(eid))
            return fh
        eid, stale = self.model.create(path, mode, *_caller())
        self._new_bytes_files = True            # entities/ gets a name: the next fsync syncs it
        self.kernel.carry_out(stale, listing=True)
        if self.queries.wants_bytes(path):
            return self.queries.stage(path, eid)
        return self.files.open(eid, flags, path=path)

    @overrides(Operations)
    @mapped
    def open(self, path: str, flags: int) -> int:
        if _is_query_path(path):
            qfh = self.queries.open(path, flags)
            if qfh is not None:
                return qfh
        eid = self.model.file(path)
        fh = self.files.open(eid, flags, written=bool(flags & os.O_TRUNC), path=path)
        if flags & os.O_TRUNC:
            self.kernel.carry_out(self.model.entity_stale(eid))
        return fh

    @overrides(Operations)
    @mapped
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if self.queries.owns(fh):
            return self.queries.read(fh, size, offset)
        return os.pread(self.files[fh].fd, size, offset)

    @overrides(Operations)
    @mapped
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if self.queries.owns(fh):
            return self.queries.write(fh, data, offset)
        h = self.files[fh]
        with self.files.writes_to(h.eid) as aliased:
            n = os.pwrite(h.fd, data, offset)
            h.written = True
            if aliased:
                self._changed_for_aliases(h.eid, path or h.path, writing=True)
        self.kernel.carry_out(self.model.entity_stale(h.eid))
        return n

    if BUF_API is not None:
        @overrides(Operations)
        @mapped_io
        def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: int) -> int:
            """Answer a read with the entity file's descriptor: libfuse reads it, not Python.

            libfuse reads up to `size` and replies with what it got, so a read past the end
            needs no fstat here."""
            h = self.files.get(fh)
            data, fd = None, -1
            if h is not None:
                fd = h.fd
            elif self.queries.owns(fh):
                data = self.queries.result(fh)      # a result: bytes; a stored query's body: staged fd
                fd = -1 if data is not None else self.queries.fd(fh)
            if fd < 0 and data is None:
                raise FuseOSError(errno.EBADF)
            ptr = buf_malloc(BUFVEC_SIZE)    # libfuse free()s it after replying
            if not ptr:
                raise FuseOSError(errno.ENOMEM)
            if data is None:
                fill_fd_bufvec(ptr, fd, offset, size)
            else:       # a .query result (bytes): a malloc'd copy of the part asked for, freed by libfuse
                part = data[offset:offset + size]
                mem = buf_malloc(len(part) or 1)
                if not mem:
                    buf_free(ptr)
                    raise FuseOSError(errno.ENOMEM)
                ctypes.memmove(mem, part, len(part))
                fill_mem_bufvec(ptr, mem, len(part))
            voidpp(bufpp)[0] = ptr
            return 0

        @overrides(Operations)
        @mapped
        def write_buf(self, path: str, buf: Any, offset: int, fh: int) -> int:
            """Let libfuse copy the request's data straight into the entity file."""
            copy, size, _malloc = BUF_API
            src = ctypes.cast(buf, ctypes.POINTER(FuseBufvec))
            if self.queries.owns(fh):
                # a NAME.query body is staged and checked as bytes by write()
                mem = ctypes.create_string_buffer(size(src))
                mvec = FuseBufvec(count=1, idx=0, off=0)
                mvec.buf[0].size, mvec.buf[0].flags = len(mem), 0
                mvec.buf[0].mem = ctypes.cast(mem, ctypes.c_void_p)
                got = copy(ctypes.byref(mvec), src, 0)
                if got < 0:
                    raise FuseOSError(-got)
                return self.write(path, mem.raw[:got], offset, fh)
            h = self.files[fh]
            dst = fd_bufvec(h.fd, offset, size(src))
            with self.files.writes_to(h.eid) as aliased:
                n = copy(ctypes.byref(dst), src, 0)
                if n < 0:
                    raise FuseOSError(-n)
                h.written = True
                if aliased:
                    self._changed_for_aliases(h.eid, path or h.path, writing=True)
            self.kernel.carry_out(self.model.entity_stale(h.eid))
            return n

    @overrides(Operations)
    @mapped
    def flush(self, path: str, fh: int) -> int:
        if self.queries.owns(fh):
            return self.queries.flush(fh)    # a malformed NAME.query body: close() fails, EINVAL
        self._sync(self.files[fh])
        return 0

    @overrides(Operations)
    @mapped
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if self.queries.owns(fh):
            return self.queries.flush(fh)
        h = self.files[fh]
        if datasync:
            os.fdatasync(h.fd)
        else:
            os.fsync(h.fd)
        self._sync(h)
        self._durable()
        return 0

    @overrides(Operations)
    @mapped
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        """A directory's names are catalog rows: make every commit durable."""
        self._durable()
        return 0

    def _durable(self) -> None:
        """Store.sync, skipping the fsync of entities/ when no bytes file was made or moved
        there through this mount since the last one."""
        self.store.sync(entities=self._new_bytes_files)
        self._new_bytes_files = False

    @overrides(Operations)
    @mapped
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        """Mode 0 (reserve and extend) and FALLOC_FL_KEEP_SIZE (reserve only), done on the
        bytes file; any other mode (punch hole, collapse, zero range...) EOPNOTSUPP."""
        if mode & ~FALLOC_FL_KEEP_SIZE or self.queries.owns(fh):
            raise FuseOSError(errno.EOPNOTSUPP)
        h = self.files[fh]
        fallocate(h.fd, mode, offset, size)
        h.written = True
        self._sync(h)
        self._changed(self.model.entity_stale(h.eid), path or h.path)
        return 0

    @overrides(Operations)
    def release(self, path: str, fh: int) -> int:
        if self.queries.owns(fh):
            return self._release_result(fh)
        return self._release_file(path, fh)

    @mapped_io
    def _release_result(self, fh: int) -> int:
        """A `.query` handle: its bytes dropped (a staging handle's descriptor closed), no catalog
        read (so no memo pin)."""
        return self.queries.release(fh)

    @mapped
    def _release_file(self, path: str, fh: int) -> int:
        h = self.files.get(fh)
        try:
            if h is not None:
                self._sync(h)      # while still counted open: until the size is recorded, attributes
        finally:                   # of the file must come from its bytes file, not the catalog
            h = self.files.pop(fh)
            if h is not None:
                if h.eid not in self.files.counts:
                    self.removed.closed(h.eid)
                os.close(h.fd)
        return 0

    # ---------------------------------------------------------------- symlinks

    @overrides(Operations)
    @mapped
    def symlink(self, target: str, source: str) -> int:
        """`ln -s source target`: an entity holding the link text."""
        self._new_bytes_files = True
        self.kernel.carry_out(self.model.symlink(target, source, *_caller()), listing=True)
        return 0

    @overrides(Operations)
    @mapped
    def mknod(self, path: str, mode: int, dev: int) -> int:
        """mkfifo, mknod, bind(2) of a unix socket (MountModel.mknod)."""
        self._new_bytes_files = True
        self.kernel.carry_out(self.model.mknod(path, mode, dev, *_caller()), listing=True)
        return 0

    @overrides(Operations)
    @mapped
    def readlink(self, path: str) -> str:
        return self.model.readlink(path)

    # ---------------------------------------------------------------- names: unlink, link, rename

    @overrides(Operations)
    @mapped
    def unlink(self, path: str) -> int:
        if self.removed.forget_name(path):
            return 0          # libfuse's last close of a file removed while open: removed already
        self.kernel.carry_out(self.model.unlink(path), listing=True)
        return 0

    def _hide(self, old: str, hidden: str) -> bool:
        """libfuse hides a file removed while open (rm, or a rename over it) by renaming it to
        a `.fuse_hidden` name, remembered here so that fstat of the open file is answered
        (nothing is ever listed under it). For an rm that rename is the removal itself. For a
        rename over the file (hkfs.fuse.removed) the file keeps its name and everything else:
        the rename that follows in the same request replaces it, an editor save included. False:
        not such a rename (the file is not open, or a user renames a file to such a name)."""
        how = self.removed.hiding(hidden)
        if how is None:
            return False
        eid = getattr(self.model.resolve(old), "eid", None)
        if eid is None or (how == "removal" and eid not in self.files.counts):
            return False
        info = self.model.reads.entity(eid)
        if how == "removal":
            self.kernel.carry_out(self.model.unlink(old), listing=True)
        self.removed.hide(hidden, eid, info.mode, info.uid, info.gid)
        return True

    @overrides(Operations)
    @mapped
    def link(self, target: str, source: str) -> int:
        """`ln source target`: another directory link, or (into a view) the view's HKs attached."""
        self.kernel.carry_out(self.model.link(source, target), listing=True)
        return 0

    @overrides(Operations)
    @mapped
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags == RENAME_EXCHANGE:
            self.kernel.carry_out(self.model.exchange(old, new), listing=True)
            return 0
        if flags & ~RENAME_NOREPLACE:
            # any flag not known here is refused, never done as a plain rename (an exchange done
            # as an overwrite once lost the destination's bytes)
            raise InvalidArgument("renameat2 flags other than RENAME_NOREPLACE and RENAME_EXCHANGE "
                                  "are not supported")
        if self._hide(old, new.rpartition("/")[2]):
            return 0
        stale = self.model.rename(old, new, noreplace=bool(flags & RENAME_NOREPLACE))
        if stale.merged is not None:            # an editor save: the temp's handles write the saved file
            self.files.replaced(stale.merged[1])   # those open on it keep its old bytes
            self.files.merged(*stale.merged)
            self._new_bytes_files = True        # a bytes file was renamed in entities/
        self.kernel.carry_out(stale, listing=True)
        return 0

    # ---------------------------------------------------------------- extended attributes

    @overrides(Operations)
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == SYNC_ATTR:
            # a process that changed the catalog itself asks us to drop the kernel's caches
            # before it goes on (hkfs.fuse.daemon_notify); answered once they are dropped (or
            # found true still): the value counts invalidations and pokes that needed none
            with self.lent():
                self.kernel.invalidate_foreign()
            return str(self.kernel.epochs + self.kernel.kept).encode()
        _check_xattr_name(name)
        if not name.startswith("user."):
            # ENOTSUP (not ENODATA) for system.* / security.*: `ls -l` then stops asking
            # for ACLs on this file system instead of asking once per file. Answered
            # before `mapped`, so without a catalog read (cp -a, tar, ls ask these).
            raise FuseOSError(errno.ENOTSUP)
        return self._getxattr(path, name)

    @mapped
    def _getxattr(self, path: str, name: str) -> bytes:
        return self.model.getxattr(path, name)

    @overrides(Operations)
    @mapped
    def listxattr(self, path: str) -> Iterable[str]:
        return self.model.listxattr(path)

    @overrides(Operations)
    @mapped
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        _check_xattr_name(name)
        self.kernel.carry_out(self.model.setxattr(path, name, bytes(value), options))
        return 0

    @overrides(Operations)
    @mapped
    def removexattr(self, path: str, name: str) -> int:
        _check_xattr_name(name)
        self.kernel.carry_out(self.model.removexattr(path, name))
        return 0


def serve(store: Store, mountpoint: str | os.PathLike[str], options: dict[str, object], *,
          on_ready: Callable[[], None] | None = None, debug: bool = False,
          keep_timeouts: bool = False) -> None:
    """Mount and serve in this thread until unmounted (multithreaded FUSE loop).

    Unless keep_timeouts (the user chose entry_timeout or attr_timeout), the kernel caches
    are turned on once the kernel is found able to drop them on demand (hkfs.fuse.kernel_cache)."""
    # `kill -USR2 PID` writes the daemon's memory report (the main thread; `ops` is read when asked)
    memstats.install(Path(store.root) / memstats.MEMSTATS_NAME, lambda: memstats.daemon_caches(ops))
    ops = HKOperations(store, on_ready=on_ready, keep_timeouts=keep_timeouts)
    ops.model.shared = bool(options.get("allow_other"))
    HKFuse(ops, str(Path(mountpoint)), foreground=True, nothreads=False, debug=debug, **options)
