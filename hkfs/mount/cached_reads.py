"""Catalog reads for path resolution, memoised while no connection commits.

The mount resolves every path it is asked about against the catalog; many calls in
a row ask the same things (a view's listing, then a lookup of each listed name).
The store's change feed (hkfs.core.changes: SQLite's `PRAGMA data_version`) moves
whenever any connection commits (a daemon thread, the hk CLI, another process), so
the memo is dropped the moment anything changed and nothing stale is ever answered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.changes import ChangeFeed
from ..core.errors import NotFound
from ..core.naming import HK
from ..core.store import EntityInfo, EntityStat, Store

__all__ = ["CachedReads", "MEMO_MAX"]

MEMO_MAX = 500_000   # memo entries kept while nothing commits (~2-3 per file of an ls -l'd view)


class CachedReads:
    """The catalog reads path resolution needs, memoised while no connection commits.

    SQLite's `PRAGMA data_version` (on a connection of our own that never writes)
    changes whenever any other connection commits: a daemon thread, the hk CLI,
    another process. Every call checks it (a few microseconds) and drops the memo
    when it moved, so nothing stale is ever answered; in between, `ls -l` of a view
    costs one catalog query for the listing instead of several per file.
    """

    def __init__(self, store: Store, changes: ChangeFeed | None = None) -> None:
        self.store = store
        self._own_changes = changes is None
        self.changes = changes if changes is not None else ChangeFeed(store.catalog.path)
        self._lock = threading.Lock()
        self._version: int | None = None
        self._memo: dict[tuple, Any] = {}
        self._pinned: dict[int, dict[tuple, Any]] = {}   # OS thread -> memo for its current request

    def close(self) -> None:
        if self._own_changes:
            self.changes.close()

    def pin(self) -> bool:
        """Check the version once for a whole request; True if this call pinned (then unpin)."""
        tid = threading.get_ident()
        if tid in self._pinned:
            return False
        self._pinned[tid] = self._current()
        return True

    def unpin(self) -> None:
        self._pinned.pop(threading.get_ident(), None)

    def memo(self) -> dict[tuple, Any]:
        """The memo valid now (a fresh one whenever anything committed since it was made)."""
        pinned = self._pinned.get(threading.get_ident())
        return pinned if pinned is not None else self._current()

    def _current(self) -> dict[tuple, Any]:
        with self._lock:
            v = self.changes.version()
            if v != self._version or len(self._memo) > MEMO_MAX:
                self._version, self._memo = v, {}
            return self._memo

    def _get(self, key: tuple, fetch: Callable[[], Any]) -> Any:
        memo = self.memo()
        try:
            return memo[key]
        except KeyError:
            value = memo[key] = fetch()
            return value

    def root_dir(self, ns: int) -> int:
        return self._get(("root", ns), lambda: self.store.root_dir(ns))

    def dir(self, dirid: int) -> Any:
        return self._get(("dir", dirid), lambda: self.store.dir(dirid))

    def lookup(self, dirid: int, name: str) -> Any:
        """A directory entry; for a file link its entity is memoised too (the getattr that follows)."""
        memo = self.memo()
        key = ("lookup", dirid, name)
        try:
            return memo[key]
        except KeyError:
            pass
        entry, info = self.store.lookup_entity(dirid, name)
        memo[key] = entry
        if info is not None:
            memo[("ent", info.id)] = info
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
        return self._get(("kids", ns, hk), fetch)

    def view_ids(self, ns: int, hks: tuple[HK, ...]) -> np.ndarray:
        """The sorted ids of a view's files (8 bytes each: hkfs.mount.view_listing), read as one
        string of text (no Python int per file)."""
        def fetch() -> np.ndarray:
            ids = np.fromstring(self.store.match_ids_text(ns, hks), np.int64, sep=",")
            ids.sort()
            keep = np.ones(len(ids), bool)
            keep[1:] = ids[1:] != ids[:-1]
            return ids[keep]
        return self._get(("ids", ns, hks), fetch)

    def shared_names(self, ns: int) -> set[str]:
        """The names more than one file of namespace ns bears (clash names in views)."""
        return self._get(("shared", ns), lambda: self.store.shared_names(ns))

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

    def match(self, ns: int, hks: Any, name: str | None = None) -> list[EntityInfo] | list[EntityStat]:
        memo = self.memo()
        hks = tuple(hks)
        view = memo.get(("view", ns, hks))
        if view is not None and name is not None:
            got = view.get(name)
            return [] if got is None else list(got) if type(got) is list else [got]
        return self._get(("match", ns, hks, name), lambda: self.store.match(ns, hks, name))
