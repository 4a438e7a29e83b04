"""The `.query` layer of the mount: virtual `FILE.query` files and stored `NAME.query` queries.

A layer over the mount, not branches inside it: `hkfs.fuse.operations` asks `QueryFS`
first for getattr/open/read/release of a path or handle, and hands the path on
to its own code when the answer is None. Pure (no mfusepy): it takes the store,
the mount's `Resolver` and an `EmbeddingCatalog`.

- `DIR/FILE.query` (FILE has an embedding, no file of that name exists): virtual,
  read-only, not listed; the files most similar to FILE within DIR (a directory or
  a view), FILE excluded.
- `DIR/NAME.query`, a file written there: a stored query (an ordinary entity, so it
  is listed); reading it evaluates its body afresh over DIR's embeddings.

Scope: a view's matches; an ordinary directory's file links plus, when it has a
DKL, the DKL's matches. A hit's path is built from the path the query was read
from and the hit's listed name there (clash names `STEM~ID.EXT`, `,NAME`).

Sizes: getattr reports the size of the evaluated result (kept for the handle,
so getattr/read of one open file agree), evaluated at most once per catalog
change and path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import InvalidArgument, NotFound, PermissionDenied
from ..core.naming import HK
from ..query.embeddings import (
    DIM_ATTR,
    EMBEDDING_ATTR,
    EmbeddingCatalog,
    parse_dim,
    parse_embedding,
)
from ..query.queryfiles import DEFAULT_K, Hit, Query, format_results, is_text, parse_query
from .paths import AT, COMMA, listed_name
from .views import DirLoc, LinkLoc, Resolver, ViewFileLoc, ViewLoc

__all__ = ["QueryFS", "Scope", "SUFFIX", "is_query_name"]

log = logging.getLogger(__name__)

SUFFIX = ".query"
HANDLE_BASE = 1 << 40
MAX_BODY = 1 << 24


def is_query_name(name: str) -> bool:
    return name.endswith(SUFFIX) and len(name) > len(SUFFIX)


@dataclass
class Scope:
    """The embeddings a query sees: a directory or a view, with the path prefix of its hits."""

    ns: int
    key: tuple
    prefix: str                              # '' or 'a/b/' or '@/photo/' or 'd/,/'
    view: tuple[HK, ...] | None = None       # a view's HK list (None: an ordinary directory)
    dirid: int | None = None
    dkl: tuple[HK, ...] = ()
    ids: np.ndarray | None = None
    names: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] | None = None     # name -> files of that name in the view / DKL list
    kids: set[str] = field(default_factory=set)


@dataclass
class _Target:
    path: str
    scope: Scope
    eid: int | None          # stored query: its entity; virtual: the file it is about
    stored: bool


class QueryFS:
    """Answers the `.query` paths of a mount; everything else is left to the caller (None)."""

    def __init__(self, store: Any, resolver: Resolver, catalog: EmbeddingCatalog | None = None) -> None:
        self.store = store
        self.resolver = resolver
        self.catalog = catalog or EmbeddingCatalog(store)
        # the resolver's store may memoise reads per catalog version (the mount's CachedReads)
        self._reads = resolver.store if hasattr(getattr(resolver, "store", None), "entity") else store
        self._handles: dict[int, tuple[int, int]] = {}     # fh -> (memfd holding the result, its size)
        self._next = HANDLE_BASE
        self._lock = threading.Lock()
        self._scopes: dict[tuple, Scope] = {}
        self._results: dict[tuple, bytes] = {}
        self._targets: dict[tuple, _Target | None] = {}
        self._handle_target: dict[int, _Target] = {}
        self._by_path: dict[str, int] = {}        # path -> its latest open handle (getattr without fh)
        self.start_ns = time.time_ns()

    def start(self) -> None:
        """Start background index retraining (call from FUSE init(), after daemonizing)."""
        self.catalog.watch(self.resolver.ns)
        self.catalog.start()

    def stop(self) -> None:
        self.catalog.stop()

    # ------------------------------------------------------------ scopes

    def scope(self, parent: str, comma: bool = False, version: int | None = None) -> Scope:
        """The scope of a query placed in directory/view `parent` (a mount path); `comma`: written
        as ',NAME.query' right under an ordinary directory (the CKL's view)."""
        version = self.catalog.data_version() if version is None else version
        ck = (parent, comma, version)
        sc = self._scopes.get(ck)
        if sc is not None:
            return sc
        loc = self.resolver.resolve(parent)
        rel = parent.strip("/")
        pre = rel + "/" if rel else ""
        if isinstance(loc, DirLoc):
            d = self.store.dir(loc.dirid)
            if comma:
                sc = Scope(d.ns, ("view", d.ns, d.dkl), pre + COMMA + "/", view=tuple(d.dkl))
            else:
                sc = Scope(d.ns, ("dir", loc.dirid), pre, dirid=loc.dirid, dkl=tuple(d.dkl))
        elif isinstance(loc, ViewLoc):
            sc = Scope(loc.ns, ("view", loc.ns, loc.hks), pre, view=tuple(loc.hks))
        else:
            raise NotFound(f"{parent}: a query needs a directory or a view")
        self._fill(sc)
        if len(self._scopes) > 512:
            self._scopes.clear()
        self._scopes[ck] = sc
        return sc

    def view_scope(self, ns: int, hks: tuple[HK, ...], prefix: str) -> Scope:
        """The scope of a view given as an HK list (the CLI's SPEC)."""
        sc = Scope(ns, ("view", ns, hks), prefix, view=hks)
        self._fill(sc)
        return sc

    def _fill(self, sc: Scope) -> None:
        if sc.view is not None:
            sc.ids = np.asarray(self.store.match_ids(sc.ns, sc.view), np.int64)
            return
        assert sc.dirid is not None
        names: dict[int, str] = {}
        for e in self.store.listdir(sc.dirid):
            if e.kind == "file":
                names.setdefault(e.id, e.name)
        ids = set(names)
        if sc.dkl:
            ids.update(self.store.match_ids(sc.ns, sc.dkl))
        sc.names = names
        sc.ids = np.unique(np.fromiter(ids, np.int64, len(ids)))

    def hit_path(self, sc: Scope, eid: int) -> str:
        """The hit's path from the mount root, as listed in the scope's directory or view."""
        name = sc.names.get(eid)
        if name is not None:
            return sc.prefix + name
        info = self.store.entity(eid)
        hks = sc.view if sc.view is not None else sc.dkl
        if sc.counts is None:            # per scope (and catalog version): child keywords, shared names
            sc.counts = {}
            sc.kids = set(self.store.keyword_children(sc.ns, hks[-1] if hks else ()))
        n = sc.counts.get(info.name)
        if n is None:
            n = sc.counts[info.name] = len(self.store.match_ids(sc.ns, hks, info.name))
        listed = listed_name(info.name, eid, shared=n > 1, keyword=info.name in sc.kids)
        if sc.view is None:              # a DKL match without a link in the directory
            listed = COMMA + "/" + listed
        sc.names[eid] = listed
        return sc.prefix + listed

    # ------------------------------------------------------------ evaluation

    def run(self, sc: Scope, query: Query, exclude: int | None = None, version: int | None = None) -> list[Hit]:
        """Top-k hits of `query` within scope `sc` (the namespace refreshed first)."""
        self.catalog.refresh(sc.ns, version)
        self.check_dim(sc.ns, len(query.vector))
        hits = self.catalog.search(sc.ns, query.vector, query.k, nprobe=query.nprobe, scope=sc.ids,
                                   scope_token=(sc.key, version) if version is not None else None,
                                   exclude=exclude)
        return [Hit(h.score, self.hit_path(sc, h.eid), h.row) for h in hits]

    def check_dim(self, ns: int, d: int) -> None:
        dims = self.catalog.dims(ns)
        if dims and d not in dims:
            have = ", ".join(str(x) for x in sorted(dims))
            raise InvalidArgument(f"the query vector has dimension {d}; the embeddings here have "
                                  f"dimension {have}")

    def _target(self, path: str) -> _Target | None:
        """What a `.query` path is (memoised while nothing is committed: getattr, then open)."""
        if not path.endswith(SUFFIX):
            return None                     # every other path of the mount: no catalog look at all
        ck = (path, self.catalog.data_version())
        try:
            return self._targets[ck]
        except KeyError:
            pass
        t = self._find_target(path)
        with self._lock:
            if len(self._targets) > 1024:
                self._targets.clear()
            self._targets[ck] = t
        return t

    def _find_target(self, path: str) -> _Target | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        comma = name.startswith(COMMA)
        bare = name[1:] if comma else name
        if not is_query_name(bare) or name == AT:
            return None
        try:
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
        self.catalog.refresh(sc.ns)
        vec, _n = self.catalog.source(sc.ns, eid)
        if vec is None:
            return None
        return _Target(path, sc, eid, False)

    def _is_dir(self, parent: str) -> bool:
        try:
            return isinstance(self.resolver.resolve(parent), DirLoc)
        except NotFound:
            return False

    def evaluate(self, t: _Target, *, keep: bool = False) -> bytes:
        """The bytes a read of target `t` returns; InvalidArgument for a malformed stored query.

        getattr keeps its result (`keep`) for the open that normally follows, which takes
        it; so each open evaluates afresh, at most once."""
        version = self.catalog.data_version()
        ck = (t.path, version)
        with self._lock:
            hit = self._results.get(ck) if keep else self._results.pop(ck, None)
        if hit is not None:
            return hit
        if t.stored:
            assert t.eid is not None
            query = parse_query(self._body(t.eid), f"{t.path.rsplit('/', 1)[-1]}")
            assert query is not None
            exclude = None
        else:
            assert t.eid is not None
            vec, _n = self.catalog.source(t.scope.ns, t.eid)
            if vec is None:
                raise NotFound("the file has no embedding any more")
            query, exclude = Query(vec, DEFAULT_K), t.eid
        out = format_results(self.run(t.scope, query, exclude, version))
        log.debug("evaluated %s (%d bytes)", t.path, len(out))
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
        return fh is not None and fh >= HANDLE_BASE and fh in self._handles

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any] | None:
        """Attributes of a `.query` path (size = the result's), or None when it is not one."""
        if fh is None:
            fh = self._by_path.get(path)      # the kernel re-checks attributes of an open file
        if fh is not None and fh >= HANDLE_BASE:
            got = self._handles.get(fh)
            if got is not None:
                return self._attrs(path, got[1], self._handle_target.get(fh))
        t = self._target(path)
        if t is None:
            return None
        if fh is not None and t.stored:
            return None              # a handle of the caller's (writing the body): its real size
        try:
            size = len(self.evaluate(t, keep=True))
        except InvalidArgument:
            size = self.store.entity_path(t.eid).stat().st_size if t.stored and t.eid else 0
        return self._attrs(path, size, t)

    def _attrs(self, path: str, size: int, t: _Target | None) -> dict[str, Any]:
        if t is not None and t.stored and t.eid is not None:
            info = self._reads.entity(t.eid)
            return {"st_mode": stat.S_IFREG | (info.mode & 0o7777), "st_ino": (t.eid << 2) | 1,
                    "st_nlink": max(1, info.nlinks), "st_uid": info.uid, "st_gid": info.gid,
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
        """A handle holding the evaluated result, or None (a write open of a stored query, or no query)."""
        t = self._target(path)
        if t is None:
            return None
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            if t.stored:
                return None
            raise PermissionDenied(f"{path}: a virtual .query file is read-only")
        data = self.evaluate(t)
        # The result lives in an anonymous memory file, so the mount can hand libfuse a
        # descriptor (read_buf) exactly as for an entity's bytes.
        fd = os.memfd_create("hkfs-query", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = (fd, len(data))
            self._handle_target[fh] = t
            self._by_path[path] = fh
        return fh

    def fd(self, fh: int) -> int:
        """The descriptor holding handle fh's result (for read_buf)."""
        return self._handles[fh][0]

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return os.pread(self._handles[fh][0], size, offset)

    def release(self, fh: int) -> int:
        with self._lock:
            got = self._handles.pop(fh, None)
            t = self._handle_target.pop(fh, None)
            if t is not None and self._by_path.get(t.path) == fh:
                del self._by_path[t.path]
        if got is not None:
            os.close(got[0])
        return 0

    def wants_bytes(self, path: str) -> bool:
        """True for writes the mount must pass to check_write as bytes (NAME.query bodies)."""
        return is_query_name(path.rstrip("/").rpartition("/")[2].lstrip(COMMA))

    def check_write(self, path: str, eid: int, data: bytes, offset: int) -> None:
        """Refuse (EINVAL) a write that leaves a `NAME.query` body certainly malformed.

        Only text ending in a newline is judged here (a body may arrive in several writes,
        and a write can end mid-number); the dimension is checked when the file is closed
        (flush), see docs/query.md for what tools report then."""
        name = path.rstrip("/").rpartition("/")[2].lstrip(COMMA)
        if not is_query_name(name) or not data.endswith(b"\n") or offset + len(data) > MAX_BODY:
            return
        head = b""
        if offset:
            with open(self.store.entity_path(eid), "rb") as f:     # the caller's fd may be write-only
                head = f.read(offset)
        body = head + bytes(data)
        if is_text(body) is not None:
            parse_query(body, name, partial=True)

    def validate_stored(self, path: str, eid: int) -> None:
        """Check a written `NAME.query` body: InvalidArgument (EINVAL) says what is wrong."""
        name = path.rstrip("/").rpartition("/")[2]
        if not is_query_name(name.lstrip(COMMA)):
            return
        query = parse_query(self._body(eid), name)
        assert query is not None
        info = self.store.entity(eid)
        self.catalog.refresh(info.ns)
        self.check_dim(info.ns, len(query.vector))

    def set_file_attr(self, eid: int, name: str, value: bytes) -> bool:
        """Validate and store `user.hk.embedding` / `user.hk.dim`; False for other attributes."""
        if name == EMBEDDING_ATTR:
            parse_embedding(bytes(value))
        elif name == DIM_ATTR:
            parse_dim(bytes(value))
        else:
            return False
        self.store.set_xattr("file", eid, name, bytes(value))
        return True
