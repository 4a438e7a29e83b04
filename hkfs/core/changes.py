"""The change feed of a store's catalog: one `PRAGMA data_version` watcher with subscribers.

SQLite's `PRAGMA data_version`, read on a connection that never writes, changes
whenever any other connection commits (a thread of this process, the hk CLI,
another process). Everything derived from the catalog and kept in memory (the
mount's read memo, the kernel's entry caches, the query service's scopes, the
embedding index's view of the sources) asks this one feed instead of polling on
a connection of its own:

- `version()`: the data_version now (a few microseconds; a memo keyed by it is
  never stale);
- `generations()`: the counters `files_gen` / `vectors_gen` (schema v5, bumped by
  triggers in the writing transaction, see schema.sql), re-read only when the version
  moved. A write that touches neither (bytes, times, modes, other xattrs) leaves
  what depends on them valid: a `.query` read after such a commit costs no rescan.
- `subscribe(fn)`: fn(version) is called from the watcher thread (started by
  `start()`) within `poll` seconds of any commit; for work that must happen even
  when nobody asks (dropping the kernel's caches after another process's change).

The other direction, telling others at once: *commit hooks*. A Store that does not
hold the store lock (the hk CLI, a script) calls every registered hook with the
store's root after each commit. The core knows no mount: `hkfs/__init__.py`
registers the daemon poke (hkfs.fuse.daemon_notify), so any process that imports
hkfs pokes a mounted daemon and its next command sees the change at once; the
feed's watcher in the daemon is the fallback for writers that do not poke.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

__all__ = ["ChangeFeed", "Generations", "POLL_SECONDS", "add_commit_hook", "remove_commit_hook",
           "run_commit_hooks"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05


_COMMIT_HOOKS: list[Callable[[Path], None]] = []


def add_commit_hook(fn: Callable[[Path], None]) -> None:
    """Call fn(store root) after each commit of a Store that does not hold the store lock."""
    if fn not in _COMMIT_HOOKS:
        _COMMIT_HOOKS.append(fn)


def remove_commit_hook(fn: Callable[[Path], None]) -> None:
    if fn in _COMMIT_HOOKS:
        _COMMIT_HOOKS.remove(fn)


def run_commit_hooks(root: Path) -> None:
    """Run the commit hooks (Store does, after each commit while it does not hold the lock)."""
    for fn in tuple(_COMMIT_HOOKS):
        fn(root)


class Generations(NamedTuple):
    """The catalog's change counters at one data_version."""

    version: int
    files: int       # names, tags, links, directories, DKLs: which files a scope holds, and their names
    vectors: int     # embedding xattrs and entry files: what the embedding index is built from


class ChangeFeed:
    """The single data_version watcher of one catalog (thread-safe)."""

    def __init__(self, catalog_path: str | os.PathLike[str], *, poll: float = POLL_SECONDS) -> None:
        self.catalog_path = os.fspath(catalog_path)
        self.poll = poll
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.catalog_path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        self._gens = Generations(-1, -1, -1)
        self._subs: list[Callable[[int], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read_version(self) -> int:
        if self._conn is None:
            raise RuntimeError("the change feed is closed")
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def version(self) -> int:
        """The catalog's data_version now: it differs from any earlier value after any commit."""
        with self._lock:
            return self._read_version()

    def generations(self) -> Generations:
        """The change counters now (one small read, only when anything committed since)."""
        with self._lock:
            v = self._read_version()
            if v != self._gens.version:
                assert self._conn is not None
                rows = dict(self._conn.execute(
                    "SELECT name, value FROM counters WHERE name IN ('files_gen', 'vectors_gen')"))
                # a catalog without the counters (not migrated yet): every commit counts
                self._gens = Generations(v, rows.get("files_gen", v), rows.get("vectors_gen", v))
            return self._gens

    def subscribe(self, fn: Callable[[int], None]) -> None:
        """Call fn(data_version) from the watcher thread after every commit it sees."""
        with self._lock:
            self._subs.append(fn)

    def start(self) -> None:
        """Start the watcher thread (once); subscribers are called from it."""
        if self._thread is not None:
            return
        self._stop.clear()
        last = self.version()        # the baseline now: a commit right after start() is reported
        self._thread = threading.Thread(target=self._watch, args=(last,), name="hkfs-changes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher (the feed still answers version() and generations())."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _watch(self, last: int) -> None:
        try:
            while not self._stop.wait(self.poll):
                now = self.version()
                if now == last:
                    continue
                last = now
                for fn in list(self._subs):
                    try:
                        fn(now)
                    except Exception:   # noqa: BLE001 - one subscriber must not stop the others
                        log.warning("change subscriber %r failed", fn, exc_info=True)
        except (sqlite3.Error, RuntimeError) as exc:
            log.warning("change watcher stopped: %s", exc)
