"""The `.query` layer of the mount: virtual `FILE.query` files and stored `NAME.query` queries.

A layer over the mount, not branches inside it: `hkfs.fuse.operations` asks `QueryFS`
first for getattr/open of a `.query` path and for every call on a handle it owns,
and hands the path on to its own code when the answer is None. Pure (no mfusepy):
it takes the store, the mount's `Resolver` and a `QueryService` (hkfs.query.service:
scopes, searches, hit paths; shared with `hk query`).

- `DIR/FILE.query` (FILE has an embedding, no file of that name exists): virtual,
  read-only, not listed; the files most similar to FILE within DIR (a directory or
  a view), FILE excluded.
- `DIR/NAME.query`, a file written there: a stored query (an ordinary entity, so it
  is listed); reading it evaluates its body afresh over DIR's embeddings. Its handles:
  a read-only open gets the result; a write open (or create) gets a *staging* handle
  whose bytes replace the body only when closed valid, so a refused write keeps the
  old body. Results read from this mount and written back (cp, an editor's unchanged
  save) store the body of the query that produced them. `user.hk.query` is the body.

Sizes: getattr reports the size of the evaluated result (kept for the handle,
so getattr/read of one open file agree), evaluated at most once per catalog
generation and path (docs/query.md).

Reads through the kernel's page cache when it is safe (`cached`): a read-only handle
whose result has exactly the size the kernel was last told for that path (by this
layer's getattr, not while another getattr of the path was under way, nor since a
body was written through it) and no other handle of the path open is served like an
ordinary file, so the kernel answers the
read at EOF itself (one request less per `cat`; it drops the pages at every open).
Any other handle is direct_io: its reads reach the daemon whatever size the kernel
holds, so a result that grew since the last lookup is never cut to the old size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import InvalidArgument, NotFound, PermissionDenied
from ..query.embeddings import DIM_ATTR, EMBEDDING_ATTR, parse_dim, parse_embedding
from ..query.queryfiles import DEFAULT_K, Query, format_body, is_text, parse_query
from ..query.service import QueryService, Scope
from .paths import AT, COMMA, link_count, parse
from .views import DirLoc, LinkLoc, Resolver, ViewFileLoc, ViewLoc

__all__ = ["QueryFS", "SUFFIX", "QUERY_ATTR", "is_query_name"]

log = logging.getLogger(__name__)

SUFFIX = ".query"
QUERY_ATTR = "user.hk.query"     # a stored query's body, to read and set without evaluating it
HANDLE_BASE = 1 << 40
MAX_BODY = 1 << 24
PARENTS_MAX = 256                # directory paths whose scope is kept
REMEMBER_RESULTS = 64            # results read, kept to recognise them written back (cp, editors)
REMEMBER_MAX_BYTES = 1 << 16     # (so at most 4 MiB kept)
SIZES_MAX = 4096                 # paths whose size the kernel was told, kept to open them page-cached
UNSURE = -1                      # getattrs of a path overlapped: which size the kernel kept is unknown


NO_HITS = "no other file in its scope has an embedding"


def _more(counts: dict[str, int], key: str) -> int:
    """One more of `key` in counts: how many there were before."""
    had = counts.get(key, 0)
    counts[key] = had + 1
    return had


def _less(counts: dict[str, int], key: str) -> int:
    """One fewer of `key` in counts (its entry goes at 0): how many are left."""
    left = counts.pop(key, 1) - 1
    if left:
        counts[key] = left
    return left


def is_query_name(name: str) -> bool:
    return name.endswith(SUFFIX) and len(name) > len(SUFFIX)


@dataclass
class _Staged:
    """A write handle on a stored query's body: the new bytes, kept apart until valid."""

    fd: int              # memfd
    eid: int
    path: str
    dirty: bool = False
    refused: str | None = None   # a write was refused: this handle never replaces the body
    append: bool = False         # O_APPEND: writes go to the end of the staged body


@dataclass
class _Target:
    path: str
    scope: Scope
    eid: int | None          # stored query: its entity; virtual: the file it is about
    stored: bool
    vec: Any = None          # virtual: the file's vector (targets are kept per vectors_gen)


def _without(sc: Scope, hidden: frozenset[int]) -> Scope:
    """A scope less the entities the caller may not reach (a set of its own for the index's caches)."""
    assert sc.ids is not None
    ids = sc.ids[~np.isin(sc.ids, np.fromiter(hidden, np.int64, len(hidden)))]
    return dataclasses.replace(sc, ids=ids, key=(sc.key, "hidden", hidden))


class QueryFS:
    """Answers the `.query` paths of a mount; everything else is left to the caller (None)."""

    def __init__(self, store: Any, resolver: Resolver, service: QueryService | None = None) -> None:
        self.store = store
        self.resolver = resolver
        self.service = service if service is not None else QueryService(store)
        self.catalog = self.service.catalog
        self._handles: dict[int, bytes] = {}      # fh -> the result it reads (bytes: no memfd to make)
        self._next = HANDLE_BASE
        self._lock = threading.Lock()
        self._results: dict[tuple, bytes] = {}
        self._targets: dict[tuple, _Target | None] = {}
        self._handle_target: dict[int, _Target] = {}
        self._by_path: dict[str, int] = {}        # path -> its latest open handle (getattr without fh)
        self._staged: dict[int, _Staged] = {}     # fh -> a stored query's body being written
        # path -> the size the kernel was last told (getattr; UNSURE); getattrs under way per path;
        # open result handles per path; the handles opened page-cached (see the module doc)
        self._told: OrderedDict[str, int] = OrderedDict()
        self._asking: dict[str, int] = {}
        self._writers: dict[str, int] = {}       # path -> open staging handles (a body being written)
        self._overlapped: set[str] = set()
        self._open_paths: dict[str, int] = {}
        self._page_cached: set[int] = set()
        self._parents: dict[tuple[str, bool], Scope] = {}     # (directory path, comma) -> its scope
        # a view path P whose names extend its last HK -> (files_gen, its view): P/NAME.query is
        # resolved from it (Resolver.tail_in), not walked from the root again
        self._tails: dict[str, tuple[int, ViewLoc]] = {}
        # result bytes read from this mount -> the body that made them (`cp a.query b.query`)
        # (a virtual query's body is kept as its Query and written out only when asked for)
        self._read_results: OrderedDict[bytes, bytes | Query] = OrderedDict()
        # set by the mount: a stored query's body changed through `path` (kernel caches)
        self.changed: Callable[[int, str], None] | None = None
        # set by a shared mount: the entities the calling user may not reach (hkfs.mount.access);
        # they are neither hits nor the subject of a query for that user
        self.hidden: Callable[[], frozenset[int]] = frozenset
        self.start_ns = time.time_ns()

    def start(self) -> None:
        """Start background index retraining (call from FUSE init(), after daemonizing)."""
        self.service.start(self.resolver.ns)

    def stop(self) -> None:
        self.service.stop()

    # ------------------------------------------------------------ scopes

    def scope(self, parent: str, comma: bool = False) -> Scope:
        """The scope of a query placed in directory/view `parent` (a mount path); `comma`: written
        as ',NAME.query' right under an ordinary directory (the CKL's view)."""
        gen = self.service.changes.generations().files
        got = self._parents.get((parent, comma))
        if got is not None and got.gen == gen:
            return got                 # (a path means the same while files_gen stays)
        loc = self.resolver.resolve(parent)
        if isinstance(loc, ViewLoc) and not comma and Resolver.extends_by_tail(parse(parent)):
            with self._lock:      # its queries' names are looked up in it directly (_find_target)
                if len(self._tails) >= PARENTS_MAX:
                    self._tails.clear()
                self._tails[parent] = (gen, ViewLoc(loc.ns, loc.hks, loc.anchor))
        rel = parent.strip("/")
        pre = rel + "/" if rel else ""
        if isinstance(loc, DirLoc):
            sc = self.service.dir_scope(loc.dirid, pre, comma=comma)
        elif isinstance(loc, ViewLoc):
            sc = self.service.view_scope(loc.ns, tuple(loc.hks), pre)
        else:
            raise NotFound(f"{parent}: a query needs a directory or a view")
        with self._lock:
            if len(self._parents) >= PARENTS_MAX:
                self._parents.clear()
            self._parents[(parent, comma)] = sc
        return sc

    def _gens(self) -> tuple[int, int]:
        g = self.service.changes.generations()
        return g.files, g.vectors

    def _target(self, path: str) -> _Target | None:
        """What a `.query` path is (memoised while nothing is committed: getattr, then open)."""
        if not path.endswith(SUFFIX):
            return None                     # every other path of the mount: no catalog look at all
        ck = (path, *self._gens())
        try:
            t = self._targets[ck]
        except KeyError:
            t = self._find_target(path)
            with self._lock:
                if len(self._targets) > 1024:
                    self._targets.clear()
                self._targets[ck] = t
        if t is not None and t.eid is not None and t.eid in self.hidden():
            return None                     # the caller may not reach that file (as in views)
        return t

    def _find_target(self, path: str) -> _Target | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        comma = name.startswith(COMMA)
        bare = name[1:] if comma else name
        if not is_query_name(bare) or name == AT:
            return None
        sc = self._parents.get((parent or "/", False))
        prefetch = getattr(self.resolver.store, "prefetch_names", None)    # the mount's CachedReads
        if prefetch and not comma and sc is not None and sc.view is not None and sc.gen == self._gens()[0]:
            # a view queried before: its own name and FILE's looked up in one statement
            prefetch(sc.ns, sc.view, [name, bare[: -len(SUFFIX)]])
        tail = None if comma else self._tails.get(parent or "/")
        try:
            if tail is not None and tail[0] == self._gens()[0]:
                loc = self.resolver.tail_in(tail[1], name)     # the view's path is not walked again
            else:
                loc = self.resolver.resolve(path)
        except NotFound:
            return None
        if not isinstance(loc, (LinkLoc, ViewFileLoc)):
            return None
        parent = parent or "/"
        comma_dir = comma and isinstance(loc, ViewFileLoc) and self._is_dir(parent)
        if loc.eid is not None:
            return _Target(path, self.scope(parent, comma_dir), loc.eid, True)
        about = bare[: -len(SUFFIX)]
        if isinstance(loc, LinkLoc):
            ent = self.store.lookup(loc.dirid, about)
            eid = ent.id if ent is not None and ent.kind == "file" else None
        else:
            eid = self.resolver.file_in(loc.view, about).eid
        if eid is None:
            return None
        sc = self.scope(parent, comma_dir)
        vec = self.service.like(sc.ns, eid)
        if vec is None:
            return None
        return _Target(path, sc, eid, False, vec)

    def _is_dir(self, parent: str) -> bool:
        try:
            return isinstance(self.resolver.resolve(parent), DirLoc)
        except NotFound:
            return False

    def evaluate(self, t: _Target, *, keep: bool = False) -> bytes:
        """The bytes a read of target `t` returns; InvalidArgument for a malformed stored query.

        getattr keeps its result (`keep`) for the open that normally follows, which takes
        it; so each open evaluates afresh, at most once."""
        # a stored query's body is bytes (no generation counts them): any commit; a virtual one's
        # result depends on names, scopes and vectors only
        hidden = self.hidden()
        ck = (t.path, self.service.changes.version()) if t.stored else (t.path, *self._gens())
        ck += (hidden,) if hidden else ()
        with self._lock:
            hit = self._results.get(ck) if keep else self._results.pop(ck, None)
        if hit is not None:
            return hit
        if t.stored:
            assert t.eid is not None
            body = self._body(t.eid)
            query = parse_query(body, f"{t.path.rsplit('/', 1)[-1]}")
            assert query is not None
            exclude = None
        else:
            assert t.eid is not None
            query, exclude = Query(t.vec, DEFAULT_K), t.eid
            body = query              # its text (65 numbers) only if written back (_known_result)
        # t.scope is current: targets are kept per files_gen, as scopes are
        out = self.service.results(_without(t.scope, hidden) if hidden else t.scope, query, exclude)
        log.debug("evaluated %s (%d bytes)", t.path, len(out))
        if not out:        # a read of nothing, exit status 0: the log says why
            log.info("%s reads empty: %s", t.path, NO_HITS)
        if len(out) <= REMEMBER_MAX_BYTES:
            with self._lock:
                self._read_results[out] = body
                self._read_results.move_to_end(out)
                while len(self._read_results) > REMEMBER_RESULTS:
                    self._read_results.popitem(last=False)
        if keep:
            with self._lock:
                if len(self._results) > 256:
                    self._results.clear()
                self._results[ck] = out
        return out

    def _body(self, eid: int) -> bytes:
        p = self.store.entity_path(eid)
        with open(p, "rb") as f:
            body = f.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise InvalidArgument(f"a query body is at most {MAX_BODY} bytes")
        return body

    # ------------------------------------------------------------ the FUSE-facing calls

    def owns(self, fh: int | None) -> bool:
        return fh is not None and fh >= HANDLE_BASE and (fh in self._handles or fh in self._staged)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any] | None:
        """Attributes of a `.query` path (size = the result's), or None when it is not one."""
        with self._lock:
            if _more(self._asking, path):
                self._overlapped.add(path)      # the replies may reach the kernel in either order
        size: int | None = None
        try:
            got = self._getattr(path, fh)
            size = None if got is None else got["st_size"]
            return got
        finally:
            with self._lock:
                if not _less(self._asking, path):
                    self._told.pop(path, None)
                    if path in self._overlapped:
                        self._overlapped.discard(path)
                        size = UNSURE
                    if size is not None and not self._writers.get(path):
                        self._told[path] = size
                        while len(self._told) > SIZES_MAX:
                            self._told.popitem(last=False)

    def _getattr(self, path: str, fh: int | None) -> dict[str, Any] | None:
        if fh is not None and fh in self._staged:
            st = self._staged[fh]
            return self._attrs(path, os.fstat(st.fd).st_size, _Target(path, None, st.eid, True))  # type: ignore[arg-type]
        if fh is None:
            fh = self._by_path.get(path)      # the kernel re-checks attributes of an open file
        if fh is not None and fh >= HANDLE_BASE:
            got = self._handles.get(fh)
            if got is not None:
                return self._attrs(path, len(got), self._handle_target.get(fh))
        with self.service.changes.held():      # one generations read for the whole request
            t = self._target(path)
            if t is None:
                return None
            try:
                size = len(self.evaluate(t, keep=True))
            except InvalidArgument:
                size = self.store.entity_path(t.eid).stat().st_size if t.stored and t.eid else 0
            return self._attrs(path, size, t)

    def _attrs(self, path: str, size: int, t: _Target | None) -> dict[str, Any]:
        if t is not None and t.stored and t.eid is not None:
            info = self.service.reads.entity(t.eid)
            return {"st_mode": stat.S_IFREG | (info.mode & 0o7777), "st_ino": (t.eid << 2) | 1,
                    "st_nlink": link_count(info.nlinks, len(info.hks)) or 1, "st_uid": info.uid, "st_gid": info.gid,
                    "st_size": size, "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                    "st_atime": info.atime_ns, "st_mtime": info.mtime_ns, "st_ctime": info.ctime_ns}
        h = int.from_bytes(hashlib.blake2b(b"query:" + path.encode("utf-8", "surrogateescape"),
                                           digest_size=8).digest(), "little")
        now = time.time_ns()
        return {"st_mode": stat.S_IFREG | 0o444, "st_ino": ((h & ((1 << 58) - 1)) << 2) | 3,
                "st_nlink": 1, "st_uid": os.getuid(), "st_gid": os.getgid(), "st_size": size,
                "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                "st_atime": now, "st_mtime": now, "st_ctime": self.start_ns}

    def open(self, path: str, flags: int) -> int | None:
        """A handle for a `.query` path, or None (no query here: the caller's own file).

        Read-only: the evaluated result. A write open of a stored query: a staging
        handle (its body, or nothing with O_TRUNC); the body changes only when a
        complete, valid body is closed (see flush), so a refused write keeps the old one."""
        with self.service.changes.held():      # one generations read for the whole request
            t = self._target(path)
            if t is None:
                return None
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
                if t.stored:
                    assert t.eid is not None
                    return self.stage(path, t.eid, truncate=bool(flags & os.O_TRUNC),
                                      append=bool(flags & os.O_APPEND))
                raise PermissionDenied(f"{path}: a virtual .query file is read-only")
            return self._result_handle(t, self.evaluate(t))

    @staticmethod
    def _memfd(name: str, data: bytes) -> int:
        """An anonymous memory file holding data (a stored query's staged body): the mount
        hands libfuse its descriptor (read_buf) exactly as for an entity's bytes."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _result_handle(self, t: _Target, data: bytes) -> int:
        """A read-only handle on an evaluated result, kept as bytes: the mount hands libfuse a
        copy of the part a READ asks for (result), not a descriptor (three system calls fewer
        than a memfd's create, write and close, for a result of a few hundred bytes)."""
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = data
            self._handle_target[fh] = t
            self._by_path[t.path] = fh
            first = not _more(self._open_paths, t.path)
            if first and not self._asking.get(t.path) and not self._writers.get(t.path) \
                    and self._told.get(t.path) == len(data):
                self._page_cached.add(fh)
        return fh

    def cached(self, fh: int) -> bool:
        """Whether handle fh may be read through the kernel's page cache (see the module doc);
        else the mount opens it direct_io."""
        return fh in self._page_cached

    def stage(self, path: str, eid: int, *, truncate: bool = False, append: bool = False) -> int:
        """A write handle on stored query `eid`'s body: writes go to a staging copy, which
        replaces the body when it is closed valid (flush)."""
        fd = self._memfd("hkfs-query-body", b"" if truncate else self._body(eid))
        with self._lock:
            fh = self._next
            self._next += 1
            self._staged[fh] = _Staged(fd, eid, path, dirty=truncate, append=append)
            # its writes move the kernel's size: nothing told holds until a lookup after the close
            _more(self._writers, path)
            self._told.pop(path, None)
        return fh

    def fd(self, fh: int) -> int:
        """The descriptor holding a staging handle's bytes (for read_buf)."""
        return self._staged[fh].fd

    def result(self, fh: int) -> bytes | None:
        """The bytes a result handle reads (None: a staging handle, read through fd)."""
        return self._handles.get(fh)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        got = self._handles.get(fh)
        return got[offset:offset + size] if got is not None else os.pread(self.fd(fh), size, offset)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        """Write into a staging handle; EINVAL (nothing written) when the body would end
        in a complete line that no body and no result read from this mount starts with."""
        st = self._staged[fh]
        if st.append:      # (the kernel's offset is the size it knows: the results', not the body's)
            offset = os.fstat(st.fd).st_size
        if offset + len(data) > MAX_BODY:
            raise InvalidArgument(f"a query body is at most {MAX_BODY} bytes")
        if data.endswith(b"\n"):
            body = os.pread(st.fd, offset, 0) + bytes(data)
            if not self._known_result(body, prefix=True) and is_text(body) is not None:
                try:
                    parse_query(body, st.path.rpartition("/")[2], partial=True)
                except InvalidArgument as exc:
                    st.refused = str(exc)   # what was written before it is not a body either
                    raise
        n = os.pwrite(st.fd, data, offset)
        st.dirty = True
        return n

    def truncate(self, fh: int, length: int) -> int:
        st = self._staged[fh]
        os.ftruncate(st.fd, length)
        st.dirty = True
        return 0

    def check_truncate(self, path: str, eid: int, length: int) -> None:
        """A truncate by path (no handle) of a stored query: refused unless the shorter body
        is valid (then the caller truncates)."""
        if not self.wants_bytes(path):
            return
        self._checked_body(self._body(eid)[:length], path, eid)

    def flush(self, fh: int) -> int:
        """Close of a staging handle: a changed body replaces the old one if it is valid,
        else InvalidArgument (close() fails with EINVAL) and the old body stays."""
        st = self._staged.get(fh)
        if st is None or not st.dirty:
            return 0
        if st.refused is not None:
            raise InvalidArgument(f"{st.refused}; the previous body is kept")
        size = os.fstat(st.fd).st_size
        if size > MAX_BODY:
            raise InvalidArgument(f"a query body is at most {MAX_BODY} bytes")
        content = os.pread(st.fd, size, 0)
        body = self._checked_body(content, st.path, st.eid)
        self._replace_body(st.eid, body)
        st.dirty = False
        if self.changed is not None:
            self.changed(st.eid, st.path)
        return 0

    def release(self, fh: int) -> int:
        with self._lock:
            got = self._handles.pop(fh, None)
            st = self._staged.pop(fh, None)
            t = self._handle_target.pop(fh, None)
            if t is not None and self._by_path.get(t.path) == fh:
                del self._by_path[t.path]
            if got is not None and t is not None:
                _less(self._open_paths, t.path)
            if st is not None:
                _less(self._writers, st.path)
                self._told.pop(st.path, None)
            self._page_cached.discard(fh)
        if st is not None:
            os.close(st.fd)
        return 0

    def _known_result(self, content: bytes, *, prefix: bool = False) -> bytes | None:
        """The body of the query whose result, as read from this mount, `content` is (or,
        with prefix, begins)."""
        with self._lock:
            for result, body in reversed(self._read_results.items()):
                if result == content or (prefix and result.startswith(content)):
                    return format_body(body) if isinstance(body, Query) else body
        return None

    def _checked_body(self, content: bytes, path: str, eid: int) -> bytes:
        """What a write of `content` to stored query eid stores: itself when it is a valid
        body; the body of the query it is the result of (`cp a.query b.query`, an editor
        saving unchanged results); else InvalidArgument."""
        body = self._known_result(content)
        if body is not None:
            return body
        name = path.rstrip("/").rpartition("/")[2]
        query = parse_query(content, name)
        assert query is not None
        self.service.check_dim(self.store.entity(eid).ns, len(query.vector))
        return content

    def _replace_body(self, eid: int, body: bytes) -> None:
        """Replace the body's bytes atomically (a new file renamed over the old), then record it."""
        dst = self.store.entity_path(eid)
        tmp = dst.with_name(f"{dst.name}.query-tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        self.store.record_bytes(eid)

    def set_body(self, path: str, eid: int, content: bytes) -> None:
        """Replace a stored query's body (setfattr user.hk.query): InvalidArgument, and
        nothing changed, unless valid."""
        self._replace_body(eid, self._checked_body(content, path, eid))
        if self.changed is not None:
            self.changed(eid, path)

    def wants_bytes(self, path: str) -> bool:
        """True for the names of stored queries (`NAME.query`, `,NAME.query`)."""
        return is_query_name(path.rstrip("/").rpartition("/")[2].lstrip(COMMA))

    def get_file_attr(self, eid: int, name: str) -> bytes | None:
        """`user.hk.query`: a stored query's body (None: not this layer's attribute)."""
        if name != QUERY_ATTR:
            return None
        self._need_query(eid)
        return self._body(eid)

    def _need_query(self, eid: int) -> str:
        name = self.store.entity(eid).name
        if not is_query_name(name.lstrip(COMMA)):
            raise InvalidArgument(f"{QUERY_ATTR} is the body of a NAME.query file, not of {name!r}")
        return name

    def set_file_attr(self, eid: int, name: str, value: bytes) -> bool:
        """Validate and store `user.hk.embedding` / `user.hk.dim`, or replace a stored query's
        body (`user.hk.query`); False for other attributes."""
        if name == QUERY_ATTR:
            self.set_body(self._need_query(eid), eid, bytes(value))
            return True
        if name == EMBEDDING_ATTR:
            parse_embedding(bytes(value))
        elif name == DIM_ATTR:
            parse_dim(bytes(value))
        else:
            return False
        self.store.set_xattr("file", eid, name, bytes(value))
        return True
