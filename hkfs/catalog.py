"""SQLite connections for the catalog: one per thread, WAL, busy timeout,
explicit transactions.

The FUSE daemon calls the store from many threads and `hk` processes open the
same catalog at once. sqlite3 connections must not be shared across threads
mid-transaction, so each thread gets its own (threading.local); WAL lets
readers proceed while one writer commits; writes start with BEGIN IMMEDIATE so
a writer waits for the lock up front (busy_timeout) instead of failing with
SQLITE_BUSY when a read transaction tries to upgrade.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from .migrations import ensure_schema

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 65_536  # page cache per connection, allocated as used


class Catalog:
    """The catalog database at `path`; `read()` / `write()` give a per-thread connection in a transaction."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        conn = self.connection()
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("catalog %s: journal_mode is %s, not wal", self.path, mode)
        ensure_schema(conn)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("catalog is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._local.conn = conn
            self._local.depth = 0
            self._local.writing = False
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self, write: bool, foreign_keys: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        loc = self._local
        if loc.depth:
            if write and not loc.writing:
                raise RuntimeError("write requested inside a read transaction")
            loc.depth += 1
            try:
                yield conn
            finally:
                loc.depth -= 1
            return
        if not foreign_keys:
            conn.execute("PRAGMA foreign_keys = OFF")  # only outside a transaction
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            loc.depth, loc.writing = 1, write
            try:
                yield conn
            except BaseException:
                loc.depth, loc.writing = 0, False
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            loc.depth, loc.writing = 0, False
            conn.execute("COMMIT")
        finally:
            if not foreign_keys:
                conn.execute("PRAGMA foreign_keys = ON")

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction (one consistent snapshot)."""
        return self._tx(False)

    def write(self, *, foreign_keys: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction, BEGIN IMMEDIATE; rolled back if the block raises.

        foreign_keys=False skips SQLite's reference checks for this transaction, for bulk
        inserts whose references the caller has already checked."""
        return self._tx(True, foreign_keys)

    def close(self) -> None:
        """Close every thread's connection (call when no thread is using the catalog)."""
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:  # pragma: no cover
                log.debug("closing a connection failed", exc_info=True)
        self._local = threading.local()
