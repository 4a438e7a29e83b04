"""SQLite connections for the catalog: one per thread, WAL, busy timeout,
explicit transactions.

The FUSE daemon calls the store from many threads and `hk` processes open the
same catalog at once. sqlite3 connections must not be shared across threads
mid-transaction, so each OS thread gets its own, keyed by threading.get_ident()
(see `Catalog.connection` for why not threading.local); WAL lets
readers proceed while one writer commits; writes start with BEGIN IMMEDIATE so
a writer waits for the lock up front (busy_timeout) instead of failing with
SQLITE_BUSY when a read transaction tries to upgrade.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import aggregates
from .errors import CatalogDamaged, StoreVersionError
from .migrations import (
    SCHEMA_VERSION,
    ensure_schema,
    missing_tables,
    recreate_missing,
    user_version,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 65_536  # page cache per connection, allocated as used
PAGE_SIZE = 16_384  # for new catalogs: bulk tagging touches ~1 page per keyword, not ~4 (docs/store.md)
PRUNE_AT = 32       # open connections above which those of ended threads are closed


@dataclass
class _ThreadConn:
    """One thread's connection and where it is in a (possibly nested) transaction."""
    conn: sqlite3.Connection
    native_id: int
    pid: int
    depth: int = 0
    writing: bool = False
    lent: bool = False      # lent for a request (Catalog.lend), not the thread's own


class Catalog:
    """The catalog database at `path`; `read()` / `write()` give a per-thread connection in a transaction."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                 readonly: bool = False, repair: bool = False) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.readonly = readonly
        # before any connection of this catalog: each has hkfs_int64s() and hkfs_repeated()
        self.aggregates = aggregates.register()
        self._conns: dict[int, _ThreadConn] = {}
        self._conns_lock = threading.Lock()
        # connections lent to requests (`lend`), given back here: the last one back is lent next
        self._spare: list[_ThreadConn] = []
        self._closed = False
        self.on_commit: Callable[[], None] | None = None   # called after each outermost write commits
        # outermost write transactions of this process under way, from BEGIN IMMEDIATE until
        # after on_commit: a watcher seeing data_version move meanwhile knows it may be ours
        self.writes_open = 0
        self._writes_lock = threading.Lock()
        conn = self.connection()
        if readonly:
            # a check must never write: no schema is created and no migration is run
            # (a 0-byte catalog once got a fresh schema from `hk fsck`)
            v = user_version(conn)
            if v != SCHEMA_VERSION:
                self.close()
                raise StoreVersionError(
                    f"catalog {self.path} has no hkfs schema (empty or not a catalog)" if v == 0 else
                    f"catalog {self.path} is at schema version {v}, this hkfs reads {SCHEMA_VERSION} "
                    "(open it read-write once to migrate it)")
            self._check_tables(conn)
            return
        # a new catalog only (an existing file keeps its page size): see PAGE_SIZE
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("catalog %s: journal_mode is %s, not wal", self.path, mode)
        ensure_schema(conn)
        if repair:
            made = recreate_missing(conn)
            if made:
                log.warning("catalog %s: recreated missing table(s) %s, empty", self.path, ", ".join(made))
        self._check_tables(conn)

    def _check_tables(self, conn: sqlite3.Connection) -> None:
        """CatalogDamaged when a table is missing: said once here instead of failing every call."""
        gone = missing_tables(conn)
        if gone:
            self.close()
            raise CatalogDamaged(f"catalog {self.path} is damaged: table(s) {', '.join(gone)} missing; "
                                 "restore it from a backup, or hk fsck --repair makes them again, empty")

    def _state(self) -> _ThreadConn:
        """This OS thread's connection state (the connection opened on first use).

        Keyed by threading.get_ident(), not threading.local: libfuse calls Python through
        ctypes from its own threads, and ctypes gives each such callback a fresh Python
        thread state unless something keeps one alive, so a threading.local would be empty
        on every FUSE call (a new connection per call, never closed). hkfs.fuse.operations does
        keep one thread state per libfuse thread (for speed), but the catalog must not
        depend on how its callers manage thread states; the OS thread id is stable either way.
        A thread id is reused only after its thread ended, by which time every `with`
        block of that thread has closed its transaction (depth 0), so the next thread with
        that id may safely take the connection over. Connections of ended threads whose ids
        do not come back are closed once more than PRUNE_AT are open.
        """
        tid = threading.get_ident()
        st = self._conns.get(tid)
        if st is not None and st.native_id != threading.get_native_id():
            with self._conns_lock:     # a new thread with an ended thread's id: take it over
                if st.pid != os.getpid():
                    # a forked child: SQLite connections must not cross a fork; forget
                    # (never close) every connection of the parent
                    self._conns = {t: x for t, x in self._conns.items() if x.pid == os.getpid()}
                    st = None
                elif self._conns.get(tid) is st:
                    st.native_id = threading.get_native_id()
                else:
                    st = None          # pruned meanwhile
        if st is None:
            if self._closed:
                raise RuntimeError("catalog is closed")
            if self.readonly:
                conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=self.busy_timeout_ms / 1000)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=self.busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            st = _ThreadConn(conn, threading.get_native_id(), os.getpid())
            with self._conns_lock:
                if self._closed:
                    conn.close()
                    raise RuntimeError("catalog is closed")
                self._conns[tid] = st
                dead = self._dead_threads() if len(self._conns) > PRUNE_AT else []
            for c in dead:
                _close_quietly(c)
        return st

    def _dead_threads(self) -> list[sqlite3.Connection]:
        """Drop (under the lock) the connections of threads that have ended; return them to close.

        libfuse starts and ends worker threads as load varies, and their ids need not
        come back. Linux only (/proc/self/task); elsewhere nothing is pruned."""
        try:
            alive = {int(t) for t in os.listdir("/proc/self/task")}
        except OSError:
            return []
        gone = [tid for tid, st in self._conns.items() if st.native_id not in alive and st.pid == os.getpid()]
        return [self._conns.pop(tid).conn for tid in gone]

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        return self._state().conn

    def lend(self) -> bool:
        """Give the calling thread, for one request, the connection given back last (`give_back`);
        True if it was lent one (then call give_back), False if the thread has its own.

        libfuse hands each request to the worker that has waited longest, so a mount's
        requests go round its ~10 threads; with a connection per thread each request would
        find a page cache (and statement cache) ~10 requests old. Lent last-back-first, the
        few connections in use stay warm (docs/architecture.md, "Catalog connections")."""
        tid = threading.get_ident()
        if tid in self._conns:
            return False
        with self._conns_lock:
            if self._closed:
                raise RuntimeError("catalog is closed")
            pid = os.getpid()
            while self._spare:
                st = self._spare.pop()
                if st.pid == pid:      # (a forked child never uses its parent's connections)
                    st.native_id = threading.get_native_id()
                    self._conns[tid] = st
                    return True
        self._state().lent = True       # none to lend: a new one, given back after the request
        return True

    def give_back(self) -> None:
        """End a `lend`: the thread's connection goes back to be lent again (kept by the thread
        if a transaction of it is still open, which `with` blocks never leave; a thread's own
        connection is never given back)."""
        tid = threading.get_ident()
        with self._conns_lock:
            st = self._conns.get(tid)
            if st is None or st.depth or not st.lent:
                return
            del self._conns[tid]
            if self._closed:
                conn = st.conn
            else:
                self._spare.append(st)
                return
        _close_quietly(conn)

    @contextmanager
    def lent(self) -> Iterator[None]:
        """`lend` for a block: the connection is given back when it ends."""
        lent = self.lend()
        try:
            yield
        finally:
            if lent:
                self.give_back()

    def connections(self) -> int:
        """How many connections are open (one per thread that used the catalog, and those lent)."""
        return len(self._conns) + len(self._spare)

    def release_thread(self) -> None:
        """Close the calling thread's connection (a worker thread about to end); no-op if none.

        Refused inside a transaction of this thread."""
        tid = threading.get_ident()
        st = self._conns.get(tid)
        if st is None:
            return
        if st.depth:
            raise RuntimeError("release_thread inside a transaction")
        with self._conns_lock:
            self._conns.pop(tid, None)
        _close_quietly(st.conn)

    @contextmanager
    def _tx(self, write: bool, foreign_keys: bool = True) -> Iterator[sqlite3.Connection]:
        st = self._state()
        conn = st.conn
        if st.depth:
            if write and not st.writing:
                raise RuntimeError("write requested inside a read transaction")
            st.depth += 1
            try:
                yield conn
            finally:
                st.depth -= 1
            return
        if not foreign_keys:
            conn.execute("PRAGMA foreign_keys = OFF")  # only outside a transaction
        counted = False
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            if write:
                self._count_write(+1)
                counted = True
            st.depth, st.writing = 1, write
            try:
                yield conn
            except BaseException:
                st.depth, st.writing = 0, False
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            st.depth, st.writing = 0, False
            conn.execute("COMMIT")
            if write and self.on_commit is not None:
                self.on_commit()
        finally:
            if counted:
                self._count_write(-1)
            if not foreign_keys:
                conn.execute("PRAGMA foreign_keys = ON")

    def _count_write(self, step: int) -> None:
        with self._writes_lock:
            self.writes_open += step

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction (one consistent snapshot)."""
        return self._tx(False)

    def write(self, *, foreign_keys: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction, BEGIN IMMEDIATE; rolled back if the block raises.

        foreign_keys=False skips SQLite's reference checks for this transaction, for bulk
        inserts whose references the caller has already checked."""
        return self._tx(True, foreign_keys)

    def sync(self) -> None:
        """Make every committed transaction durable (fsync, fsyncdir of the mount).

        Commits run with synchronous=NORMAL: in WAL mode they are appended to the -wal file
        without an fsync (SQLite syncs it before each checkpoint), so a power loss may drop
        the last ones. An fsync of the -wal file makes all of them durable at once (what is
        no longer in it was checkpointed, and SQLite syncs the database after a checkpoint).

        Never open and close the database file itself here: close() of any descriptor of
        it drops every POSIX lock this process holds on it, SQLite's included; the next
        other process to close its connection then takes itself for the last one and
        deletes the -wal and -shm under this one's feet (later commits of this process are
        lost). SQLite takes no locks on the -wal file."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close every thread's connection (call when no thread is using the catalog); idempotent."""
        with self._conns_lock:
            self._closed = True
            conns, self._conns = [*self._conns.values(), *self._spare], {}
            self._spare = []
        for st in conns:
            _close_quietly(st.conn)


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:  # pragma: no cover
        log.debug("closing a connection failed", exc_info=True)
