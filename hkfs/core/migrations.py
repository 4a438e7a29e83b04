"""Catalog schema version and ordered, transactional migrations.

The catalog is user data, not a cache: it is never rebuilt on a version
mismatch. A new catalog gets hkfs/core/schema.sql (always the latest schema) and
user_version = SCHEMA_VERSION. An older one is upgraded one version at a time,
each step in its own BEGIN IMMEDIATE transaction that also bumps user_version,
so a crash mid-way leaves a catalog at some exact version. A newer catalog is
refused (StoreVersionError) instead of being misread.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable
from importlib import resources

from .errors import StoreVersionError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6

Migration = Callable[[sqlite3.Connection], None]

# MIGRATIONS[v] upgrades a catalog from version v-1 to v. Append, never edit.
MIGRATIONS: dict[int, tuple[str, Migration]] = {}


def _symlink_type_in_mode(conn: sqlite3.Connection) -> None:
    """v2: a symlink entity is `mode = S_IFLNK | perms` instead of a private `hkfs.symlink`
    xattr next to a type-less mode (what the mount wrote under v1)."""
    conn.execute("UPDATE entities SET mode = (mode & 4095) | 40960 WHERE id IN "
                 "(SELECT id FROM xattrs WHERE kind = 'file' AND name = 'hkfs.symlink')")
    conn.execute("DELETE FROM xattrs WHERE kind = 'file' AND name = 'hkfs.symlink'")


MIGRATIONS[2] = ("file type bits in entities.mode (symlinks)", _symlink_type_in_mode)


def _counters(conn: sqlite3.Connection) -> None:
    """v3: a counters table; 'entity_high' keeps deleted entity ids from being reused."""
    conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) "
                 "WITHOUT ROWID")
    conn.execute("INSERT OR IGNORE INTO counters(name, value) "
                 "SELECT 'entity_high', coalesce(max(id), 0) FROM entities")


MIGRATIONS[3] = ("counters: entity ids never reused", _counters)


def _devices(conn: sqlite3.Connection) -> None:
    """v4: special files (mknod): FIFOs, sockets, devices keep their type in entities.mode;
    a devices table holds a device's number."""
    conn.execute("CREATE TABLE IF NOT EXISTS devices (entity INTEGER PRIMARY KEY REFERENCES entities(id) "
                 "ON DELETE CASCADE, rdev INTEGER NOT NULL)")


MIGRATIONS[4] = ("devices: special files' device numbers", _devices)


def _generations(conn: sqlite3.Connection) -> None:
    """v5: the files_gen / vectors_gen counters and their triggers (the statements of
    schema.sql that make them: one copy)."""
    for stmt in split_statements(schema_sql()):
        if stmt.startswith("CREATE TRIGGER") or "('files_gen', 0)" in stmt:
            conn.execute(stmt)


MIGRATIONS[5] = ("generations: files_gen and vectors_gen counters kept by triggers", _generations)


def _keyword_attrs(conn: sqlite3.Connection) -> None:
    """v6: a keyword directory's own mode, uid and gid in the mount (NULL: the default)."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(keywords)")}
    for col in ("mode", "uid", "gid"):
        if col not in have:           # a catalog made from the latest schema.sql has them
            conn.execute(f"ALTER TABLE keywords ADD COLUMN {col} INTEGER")


MIGRATIONS[6] = ("keyword directories' mode and owner", _keyword_attrs)


def schema_sql() -> str:
    """The text of hkfs/core/schema.sql, read as package data."""
    return resources.files("hkfs.core").joinpath("schema.sql").read_text(encoding="utf-8")


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements (sqlite3.complete_statement decides)."""
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError("schema.sql ends with an incomplete statement")
    return out


def missing_tables(conn: sqlite3.Connection) -> list[str]:
    """Tables of schema.sql that the catalog lacks (a damaged catalog: every use of one would fail)."""
    want = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema_sql())
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [t for t in want if t not in have]


def recreate_missing(conn: sqlite3.Connection) -> list[str]:
    """fsck --repair of a damaged catalog: make the missing tables (empty) and indexes again
    from schema.sql (every statement is CREATE ... IF NOT EXISTS); returns the tables made."""
    gone = missing_tables(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in split_statements(schema_sql()):
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return gone


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _record(conn: sqlite3.Connection, version: int, name: str) -> None:
    conn.execute("INSERT OR REPLACE INTO migrations(version, name, applied_ns) VALUES (?, ?, ?)",
                 (version, name, time.time_ns()))
    conn.execute(f"PRAGMA user_version = {int(version)}")


def ensure_schema(conn: sqlite3.Connection, *, target: int | None = None,
                  migrations: dict[int, tuple[str, Migration]] | None = None) -> int:
    """Create or upgrade the catalog on `conn` (autocommit mode); return the version reached.

    `target` and `migrations` default to the module's; tests pass their own.
    """
    target = SCHEMA_VERSION if target is None else target
    migrations = MIGRATIONS if migrations is None else migrations
    v = user_version(conn)
    if v > target:
        raise StoreVersionError(
            f"catalog schema version {v} is newer than this hkfs supports ({target}); "
            "upgrade hkfs to open this store")
    if v == 0:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if user_version(conn) == 0:  # another process may have won the race
                tables = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
                if tables:
                    raise StoreVersionError("catalog has tables but no schema version; not an hkfs catalog")
                for stmt in split_statements(schema_sql()):
                    conn.execute(stmt)
                _record(conn, target, "initial schema")
                log.info("created catalog schema version %d", target)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return user_version(conn)
    while v < target:
        nxt = v + 1
        if nxt not in migrations:
            raise StoreVersionError(f"no migration from catalog schema version {v} to {nxt}")
        name, fn = migrations[nxt]
        conn.execute("BEGIN IMMEDIATE")
        try:
            if user_version(conn) == v:
                fn(conn)
                _record(conn, nxt, name)
                log.info("migrated catalog to version %d (%s)", nxt, name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        v = user_version(conn)
    return v
