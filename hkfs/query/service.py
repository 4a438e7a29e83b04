"""The query service: scope, run, hit paths; what `cat DIR/X.query` and `hk query` share.

A *scope* is the set of files a query sees (a view's matches; an ordinary
directory's file links plus, when it has a DKL, the DKL's matches) and the path
prefix its hits are named under. Scopes are kept per catalog `files_gen`
(hkfs.core.changes): a commit that renames, tags, links or creates nothing
(writing bytes, times, modes, other xattrs) leaves them valid, so a query after
it costs a search, not a rescan of the view. The embedding index
(EmbeddingCatalog) is brought up to date per `vectors_gen` the same way.

Pure: no FUSE, no click. `reads` is anything with the Store's read methods used
here (the mount passes its read memo; the CLI the Store itself).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.changes import ChangeFeed, Generations
from ..core.errors import InvalidArgument
from ..core.naming import HK
from ..mount.paths import COMMA, listed_name
from ..mount.views import view_children_of, view_ids
from .embeddings import EmbeddingCatalog, SearchHit
from .queryfiles import Hit, Query, result_line

__all__ = ["HeldFeed", "QueryService", "Scope"]

SCOPES_MAX = 64          # scopes kept ...
SCOPE_IDS_MAX = 4_000_000  # ... holding at most this many ids in all (8 bytes each: 32 MB)


@dataclass
class Scope:
    """The embeddings a query sees: a directory or a view, with the path prefix of its hits."""

    ns: int
    key: tuple
    prefix: str                              # '' or 'a/b/' or '@/photo/' or 'd/,/'
    view: tuple[HK, ...] | None = None       # a view's HK list (None: an ordinary directory)
    dirid: int | None = None
    dkl: tuple[HK, ...] = ()
    ids: np.ndarray | None = None            # sorted entity ids in scope
    gen: int = -1                            # files_gen the ids were read at
    names: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] | None = None     # name -> files of that name in the view / DKL list
    kids: set[str] = field(default_factory=set)


class HeldFeed:
    """The change feed as the query layer reads it: inside `held()`, a thread's version and
    generations are read once.

    One `.query` read asks for them a dozen times across its layers (target, scope, the
    index's refresh, the result memo); each ask is a `PRAGMA data_version` under a lock. Held,
    the request answers from one snapshot taken at its start: a commit that lands during the
    request is seen by the next one (as with the mount's memo pin), and what the request
    reads from the catalog is never older than the snapshot, so nothing is kept under a
    newer version than its data. Everything else (subscribe, start, close) is the feed's.
    """

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed
        self._held: dict[int, Generations] = {}     # OS thread -> its snapshot
        # set by the mount: the snapshot its memo pin took for the same request, if any
        # (hkfs.mount.cached_reads.CachedReads.pinned): held() then reads nothing itself
        self.pinned: Callable[[], Generations | None] = lambda: None

    def version(self) -> int:
        g = self._held.get(threading.get_ident())
        return g.version if g is not None else self.feed.version()

    def generations(self) -> Generations:
        g = self._held.get(threading.get_ident())
        return g if g is not None else self.feed.generations()

    @contextmanager
    def held(self) -> Iterator[Generations]:
        """Read the generations once for this thread until the block ends (nested: the outer's)."""
        tid = threading.get_ident()
        got = self._held.get(tid)
        if got is not None:
            yield got
            return
        got = self._held[tid] = self.pinned() or self.feed.generations()
        try:
            yield got
        finally:
            self._held.pop(tid, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.feed, name)


class QueryService:
    """Scopes, searches and hit paths over one store's embeddings."""

    def __init__(self, store: Any, *, reads: Any = None, catalog: EmbeddingCatalog | None = None,
                 changes: ChangeFeed | None = None, writable: bool = True) -> None:
        self.store = store
        self.reads = reads if reads is not None else store
        self._own_changes = changes is None
        self.changes = HeldFeed(changes if changes is not None else ChangeFeed(store.catalog.path))
        self.catalog = catalog if catalog is not None else EmbeddingCatalog(
            store, writable=writable, changes=self.changes)
        self._scopes: OrderedDict[tuple, Scope] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, ns: int) -> None:
        """Keep namespace ns's index current in the background (the daemon, after daemonizing)."""
        self.catalog.watch(ns)
        self.catalog.start()

    def stop(self) -> None:
        self.catalog.stop()
        if self._own_changes:
            self.changes.close()

    # ------------------------------------------------------------ scopes

    def view_scope(self, ns: int, hks: tuple[HK, ...], prefix: str) -> Scope:
        """The scope of a view (an HK list); hits are named `prefix + listed name`."""
        return self._scope(Scope(ns, ("view", ns, tuple(hks), prefix), prefix, view=tuple(hks)))

    def dir_scope(self, dirid: int, prefix: str, *, comma: bool = False) -> Scope:
        """The scope of an ordinary directory (its file links, plus its DKL's matches);
        `comma`: its CKL's view (a query written as `,NAME.query` there)."""
        d = self.reads.dir(dirid)
        if comma:
            return self._scope(Scope(d.ns, ("view", d.ns, tuple(d.dkl), prefix + COMMA + "/"),
                                     prefix + COMMA + "/", view=tuple(d.dkl)))
        return self._scope(Scope(d.ns, ("dir", dirid, prefix), prefix, dirid=dirid, dkl=tuple(d.dkl)))

    def _scope(self, fresh: Scope) -> Scope:
        gen = self.changes.generations().files
        with self._lock:
            sc = self._scopes.get(fresh.key)
            if sc is not None and sc.gen == gen:
                self._scopes.move_to_end(fresh.key)
                return sc
        fresh.gen = gen
        self._fill(fresh)
        with self._lock:
            self._scopes[fresh.key] = fresh
            held = sum(len(s.ids) for s in self._scopes.values() if s.ids is not None)
            while len(self._scopes) > 1 and (len(self._scopes) > SCOPES_MAX or held > SCOPE_IDS_MAX):
                _k, old = self._scopes.popitem(last=False)
                held -= len(old.ids) if old.ids is not None else 0
        return fresh

    def _fill(self, sc: Scope) -> None:
        if sc.view is not None:
            sc.ids = view_ids(self.store, sc.ns, sc.view)
            return
        assert sc.dirid is not None
        names: dict[int, str] = {}
        for e in self.store.listdir(sc.dirid):
            if e.kind == "file":
                names.setdefault(e.id, e.name)
        ids = np.fromiter(names, np.int64, len(names))
        if sc.dkl:
            ids = np.concatenate([ids, view_ids(self.store, sc.ns, sc.dkl)])
        sc.names = names
        sc.ids = np.unique(ids)

    # ------------------------------------------------------------ running

    def check_dim(self, ns: int, d: int) -> None:
        """InvalidArgument unless the namespace holds embeddings of dimension d (or none at all)."""
        self.catalog.refresh(ns)
        dims = self.catalog.dims(ns)
        if dims and d not in dims:
            have = ", ".join(str(x) for x in sorted(dims))
            raise InvalidArgument(f"the query vector has dimension {d}; the embeddings here have "
                                  f"dimension {have}")

    def like(self, ns: int, eid: int) -> np.ndarray | None:
        """The vector that stands for file eid (its own embedding, else its rows' mean), or None."""
        self.catalog.refresh(ns)
        vec, _n = self.catalog.source(ns, eid)
        return vec

    def run(self, sc: Scope, query: Query, exclude: int | None = None) -> list[Hit]:
        """Top-k hits of `query` within scope `sc`, best first, `exclude` (an entity) left out."""
        hits, paths = self._search(sc, query, exclude)
        return [Hit(h.score, paths[h.eid], h.row) for h in hits if h.eid in paths]

    def results(self, sc: Scope, query: Query, exclude: int | None = None) -> bytes:
        """run's hits as the `.query` file reads them (format_results), with no Hit made per line."""
        hits, paths = self._search(sc, query, exclude)
        return "".join([result_line(h.score, paths[h.eid], h.row) for h in hits if h.eid in paths]).encode(
            "utf-8", "surrogateescape")

    def _search(self, sc: Scope, query: Query, exclude: int | None) -> tuple[list[SearchHit], dict[int, str]]:
        self.check_dim(sc.ns, len(query.vector))
        hits = self.catalog.search(sc.ns, query.vector, query.k, nprobe=query.nprobe, scope=sc.ids,
                                   scope_token=(sc.key, sc.gen), exclude=exclude)
        return hits, self.hit_paths(sc, [h.eid for h in hits])

    def hit_paths(self, sc: Scope, eids: list[int]) -> dict[int, str]:
        """Each hit's path from the mount root, as listed in the scope's directory or view
        (a hit deleted meanwhile has none).

        Named in one small read for all the hits (their names, and how many files of the
        namespace bear each); only a name borne by several files is counted in the
        scope exactly, as `ls` of the view lists it (`STEM~ID.EXT` when shared there)."""
        new = [e for e in dict.fromkeys(eids) if e not in sc.names]
        if new:
            hks = sc.view if sc.view is not None else sc.dkl
            named = self.store.names_counted(sc.ns, new)     # one statement for all the hits
            names = {e: nm for e, (nm, _c) in named.items()}
            shared = {nm for nm, cnt in named.values() if cnt > 1}
            if sc.counts is None:        # per scope (and files_gen): child keywords, shared names
                sc.counts = {}
                kw = view_children_of(hks)     # operator views list their keyword's children
                sc.kids = set(self.store.keyword_children(sc.ns, kw)) if kw is not None else set()
            for e in new:
                name = names.get(e)
                if name is None:
                    continue              # deleted since the search: the caller gets no path
                n = 1
                if name in shared:
                    n = sc.counts.get(name) or sc.counts.setdefault(
                        name, len(self.store.match_ids(sc.ns, hks, name)))
                listed = listed_name(name, e, shared=n > 1, keyword=name in sc.kids)
                if sc.view is None:       # a DKL match without a link in the directory
                    listed = COMMA + "/" + listed
                sc.names[e] = listed
        return {e: sc.prefix + sc.names[e] for e in eids if e in sc.names}
