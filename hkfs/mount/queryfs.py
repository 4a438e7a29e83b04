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
from dataclasses import dataclass
from typing import Any


from ..core.errors import InvalidArgument, NotFound, PermissionDenied
from ..query.embeddings import DIM_ATTR, EMBEDDING_ATTR, parse_dim, parse_embedding
from ..query.queryfiles import DEFAULT_K, Query, format_results, is_text, parse_query
from ..query.service import QueryService, Scope
from .views import AT, COMMA, DirLoc, LinkLoc, Resolver, ViewFileLoc, ViewLoc

__all__ = ["QueryFS", "SUFFIX", "is_query_name"]

log = logging.getLogger(__name__)

SUFFIX = ".query"
HANDLE_BASE = 1 << 40
MAX_BODY = 1 << 24


def is_query_name(name: str) -> bool:
    return name.endswith(SUFFIX) and len(name) > len(SUFFIX)


@dataclass
class _Target:
    path: str
    scope: Scope
    eid: int | None          # stored query: its entity; virtual: the file it is about
    stored: bool
    vec: Any = None          # virtual: the file's vector (targets are kept per vectors_gen)


class QueryFS:
    """Answers the `.query` paths of a mount; everything else is left to the caller (None)."""

    def __init__(self, store: Any, resolver: Resolver, service: QueryService | None = None) -> None:
        self.store = store
        self.resolver = resolver
        self.service = service if service is not None else QueryService(store)
        self.catalog = self.service.catalog
        self._handles: dict[int, tuple[int, int]] = {}     # fh -> (memfd holding the result, its size)
        self._next = HANDLE_BASE
        self._lock = threading.Lock()
        self._results: dict[tuple, bytes] = {}
        self._targets: dict[tuple, _Target | None] = {}
        self._handle_target: dict[int, _Target] = {}
        self._by_path: dict[str, int] = {}        # path -> its latest open handle (getattr without fh)
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
        loc = self.resolver.resolve(parent)
        rel = parent.strip("/")
        pre = rel + "/" if rel else ""
        if isinstance(loc, DirLoc):
            return self.service.dir_scope(loc.dirid, pre, comma=comma)
        if isinstance(loc, ViewLoc):
            return self.service.view_scope(loc.ns, tuple(loc.hks), pre)
        raise NotFound(f"{parent}: a query needs a directory or a view")

    def _gens(self) -> tuple[int, int]:
        g = self.service.changes.generations()
        return g.files, g.vectors

    def _target(self, path: str) -> _Target | None:
        """What a `.query` path is (memoised while nothing is committed: getattr, then open)."""
        if not path.endswith(SUFFIX):
            return None                     # every other path of the mount: no catalog look at all
        ck = (path, *self._gens())
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
        ck = (t.path, self.service.changes.version()) if t.stored else (t.path, *self._gens())
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
            query, exclude = Query(t.vec, DEFAULT_K), t.eid
        # t.scope is current: targets are kept per files_gen, as scopes are
        out = format_results(self.service.run(t.scope, query, exclude))
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
            info = self.service.reads.entity(t.eid)
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
        self.service.check_dim(info.ns, len(query.vector))

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
