"""Catalog reads for path resolution, memoised while no connection commits what they read.

The mount resolves every path it is asked about against the catalog; many calls in
a row ask the same things (a view's listing, then a lookup of each listed name).
The store's change feed (hkfs.core.changes) says when anything committed (SQLite's
`PRAGMA data_version`, any connection: a daemon thread, the hk CLI, another process)
and when what names files moved (`files_gen`, bumped by the catalog's own triggers
whenever keywords, tags, links, directories, DKLs or entity names change). So two memos:

- `memo()`: attributes (sizes, times, modes, listings with their stats), dropped on
  any commit;
- `structure()`: what paths resolve to (keyword children, directory entries, the ids a
  view or a name in it holds), dropped only when files_gen moves: a commit elsewhere that
  names nothing anew (bytes, times, a note xattr) leaves path resolution memoised.

Either way nothing stale is ever answered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..core.changes import ChangeFeed, Generations
from ..core.errors import NotFound
from ..core.naming import HK
from ..core.store import EntityInfo, EntityStat, Store
from .views import view_ids as read_view_ids

__all__ = ["CachedReads", "MEMO_MAX", "KEPT", "Matched"]

# Entries kept in both memos together while nothing commits. Listings (READDIRPLUS) do not go
# through them; a LOOKUP per name does (~2 entries, ~1 KiB of Python objects a name): at 500k
# the memo alone grew the daemon by ~150 MiB when `ls -l` looked up a million names
# (docs/bench/mount.md).
MEMO_MAX = 16_384
KEPT = frozenset(("view", "kids", "ids", "shared", "root"))   # kept past MEMO_MAX: few, and costly


class Matched(NamedTuple):
    """A file a name matched in a view, by id (what `views.Resolver.file_in` uses)."""

    id: int


Memos = tuple[dict[tuple, Any], dict[tuple, Any]]     # (attributes: per data_version, structure: per files_gen)


class CachedReads:
    """The catalog reads path resolution needs, memoised while no connection commits them.

    The change feed's generations (one `PRAGMA data_version` on a connection of its own that
    never writes; the counters re-read only when it moved) are checked once per request
    (`pin`) or per call, and each memo is dropped when its counter moved, so nothing stale
    is ever answered; in between, `ls -l` of a view costs one catalog query for the listing
    instead of several per file, and a path walk after an unrelated commit costs none.
    """

    def __init__(self, store: Store, changes: ChangeFeed | None = None) -> None:
        self.store = store
        self._own_changes = changes is None
        self.changes = changes if changes is not None else ChangeFeed(store.catalog.path)
        self._lock = threading.Lock()
        self._version: int | None = None
        self._files: int | None = None
        self._memo: dict[tuple, Any] = {}
        self._structure: dict[tuple, Any] = {}
        self._pinned: dict[int, Memos] = {}   # OS thread -> memos for its current request
        self._pinned_gens: dict[int, Generations] = {}   # OS thread -> the generations they are of

    def close(self) -> None:
        if self._own_changes:
            self.changes.close()

    def pin(self) -> bool:
        """Check the generations once for a whole request; True if this call pinned (then unpin)."""
        tid = threading.get_ident()
        if tid in self._pinned:
            return False
        self._pinned[tid] = self._current(self._pinned_gens, tid)
        return True

    def unpin(self) -> None:
        tid = threading.get_ident()
        self._pinned.pop(tid, None)
        self._pinned_gens.pop(tid, None)

    def pinned(self) -> Generations | None:
        """The generations this thread's request pinned its memos at (None outside a pin): the
        query layer's snapshot for the same request (hkfs.query.service.HeldFeed)."""
        return self._pinned_gens.get(threading.get_ident())

    def memo(self) -> dict[tuple, Any]:
        """The attribute memo valid now (a fresh one whenever anything committed since it was made)."""
        pinned = self._pinned.get(threading.get_ident())
        return (pinned if pinned is not None else self._current())[0]

    def structure(self) -> dict[tuple, Any]:
        """The memo of what paths resolve to, valid now (a fresh one whenever files_gen moved):
        only for values the catalog's files_gen triggers cover (names, keywords, tags, links,
        directories, DKLs), never attributes."""
        pinned = self._pinned.get(threading.get_ident())
        return (pinned if pinned is not None else self._current())[1]

    def _current(self, gens: dict[int, Generations] | None = None, tid: int = 0) -> Memos:
        with self._lock:
            g = self.changes.generations()
            if gens is not None:
                gens[tid] = g
            if g.version != self._version:
                self._version, self._memo = g.version, {}
            if g.files != self._files:
                self._files, self._structure = g.files, {}
            if len(self._memo) + len(self._structure) > MEMO_MAX:
                # the per-name answers go; what one query per view or namespace made stays
                # (a view's whole listing, which the lookups after a plain readdir use)
                self._memo, self._structure = _kept(self._memo), _kept(self._structure)
                if len(self._memo) + len(self._structure) > MEMO_MAX:
                    # the kept kinds alone fill it (very many views): start afresh, or every
                    # call would filter them again
                    self._memo, self._structure = {}, {}
            return self._memo, self._structure

    def _get(self, key: tuple, fetch: Callable[[], Any]) -> Any:
        return self._in(self.memo(), key, fetch)

    def _sget(self, key: tuple, fetch: Callable[[], Any]) -> Any:
        return self._in(self.structure(), key, fetch)

    @staticmethod
    def _in(memo: dict[tuple, Any], key: tuple, fetch: Callable[[], Any]) -> Any:
        try:
            return memo[key]
        except KeyError:
            value = memo[key] = fetch()
            return value

    def root_dir(self, ns: int) -> int:
        return self._sget(("root", ns), lambda: self.store.root_dir(ns))

    def dir(self, dirid: int) -> Any:
        return self._get(("dir", dirid), lambda: self.store.dir(dirid))

    def dir_naming(self, dirid: int) -> tuple[int, tuple[HK, ...]]:
        """A directory's namespace and DKL, kept per files_gen (its triggers cover both): a path
        walk after a commit that names nothing anew reads no directory row."""
        return self._sget(("naming", dirid), lambda: self.store.dir_naming(dirid))

    def lookup(self, dirid: int, name: str) -> Any:
        """A directory entry; for a file link its entity is memoised too (the getattr that follows)."""
        names = self.structure()
        key = ("lookup", dirid, name)
        try:
            return names[key]
        except KeyError:
            pass
        entry, info = self.store.lookup_entity(dirid, name)
        names[key] = entry
        if info is not None:
            self.memo()[("ent", info.id)] = info
        return entry

    def keyword_exists(self, ns: int, hk: HK) -> bool:
        # Asked for every name looked up in a view (a child keyword wins over a file name):
        # answered from the parent's memoised children, one query per view instead of one
        # per file (ls -l of a 100k-file view: 100k keyword lookups otherwise).
        if not hk:
            return True
        if isinstance(hk, str):
            return self.store.keyword_exists(ns, hk)
        return hk[-1] in self.keyword_children(ns, tuple(hk[:-1]))

    def keyword_children(self, ns: int, hk: HK) -> dict[str, None]:
        """hk's child keyword names in order (a dict: ordered, O(1) membership); none if hk is not a keyword."""
        def fetch() -> dict[str, None]:
            try:
                return dict.fromkeys(self.store.keyword_children(ns, hk))
            except NotFound:
                return {}
        return self._sget(("kids", ns, hk), fetch)

    def view_ids(self, ns: int, hks: tuple[HK, ...]) -> np.ndarray:
        """The sorted ids of a view's files (8 bytes each: hkfs.mount.view_listing), read as one
        string of text (no Python int per file)."""
        return self._sget(("ids", ns, hks), lambda: read_view_ids(self.store, ns, hks))

    def shared_names(self, ns: int) -> set[str]:
        """The names more than one file of namespace ns bears (clash names in views)."""
        return self._sget(("shared", ns), lambda: self.store.shared_names(ns))

    def entity(self, eid: int) -> EntityInfo:
        return self._get(("ent", eid), lambda: self.store.entity(eid))

    def listing(self, ns: int, hks: tuple[HK, ...]) -> dict[str, EntityStat | list[EntityStat]]:
        """All files of a view by name (one query), kept for the lookups that follow a readdir.

        A name one file has maps to it, a shared name to the list of its files (no list per
        file: a 100k-file view is listed in one pass)."""
        memo = self.memo()
        key = ("view", ns, hks)
        found = memo.get(key)
        if found is None:
            found = {}
            for e in self.store.match_stats(ns, hks):
                had = found.setdefault(e.name, e)
                if had is not e:
                    if type(had) is list:
                        had.append(e)
                    else:
                        found[e.name] = [had, e]
            memo[key] = found
        return found

    def match(self, ns: int, hks: Any, name: str | None = None) -> list[EntityInfo] | list[EntityStat] | list[Matched]:
        """A view's files (by `name`): what the resolver asks of a name (it needs only the ids).

        With a name and no listing kept, ids only (`Store.match_ids`: one statement, against
        three for whole entities): a lookup of one name in a view that was never listed (a
        first `cat VIEW/FILE.query` asks for two)."""
        memo = self.memo()
        hks = tuple(hks)
        view = memo.get(("view", ns, hks))
        if view is not None and name is not None:
            got = view.get(name)
            return [] if got is None else list(got) if type(got) is list else [got]
        if name is not None:
            return self._sget(("match", ns, hks, name),
                              lambda: [Matched(i) for i in self.store.match_ids(ns, hks, name)])
        return self._get(("match", ns, hks, name), lambda: self.store.match(ns, hks, name))

    def prefetch_names(self, ns: int, hks: tuple[HK, ...], names: list[str]) -> None:
        """Memoise `match` of several names in a view at once (Store.match_ids_named: one
        statement), for the lookups that follow (a `FILE.query` path: its name, then FILE's)."""
        memo, names_memo = self.memo(), self.structure()
        if ("view", ns, hks) in memo:
            return                        # a listing is kept: match answers from it
        want = [n for n in names if ("match", ns, hks, n) not in names_memo]
        if len(want) > 1:
            for n, ids in self.store.match_ids_named(ns, hks, want).items():
                names_memo[("match", ns, hks, n)] = [Matched(i) for i in ids]


def _kept(memo: dict[tuple, Any]) -> dict[tuple, Any]:
    """The entries of `memo` that stay past MEMO_MAX (one query per view or namespace made them)."""
    return {k: x for k, x in memo.items() if k[0] in KEPT}
