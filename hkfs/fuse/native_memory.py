"""Bounds on the daemon's memory outside Python: SQLite's page caches and glibc's free lists.

Measured on a 1M-file store (docs/bench/mount.md): after `ls -l`, `find` and 150
FILE.query reads the daemon held ~210 MiB of SQLite page cache, because every thread
that reads the catalog has its own connection (hkfs.core.catalog) with a 64 MiB cache,
and libfuse runs up to ten worker threads; and glibc kept ~50-80 MiB of freed memory
spread over per-thread arenas.

- SQLite: one soft heap limit for the whole process (sqlite3_soft_heap_limit64): past
  it, a connection recycles its own least recently used pages instead of growing. The
  catalog's pages stay in the kernel's page cache, so a page recycled here costs a
  copy from there when read again, not a disk read.
- glibc: at most MALLOC_ARENAS arenas (each thread otherwise may get its own, whose
  free chunks no other thread reuses), and `trim()` hands freed pages back after big
  frees (the node budget calls it after dropping entries).
- glibc: a block of MMAP_THRESHOLD_KIB or more gets its own mapping, given back to the
  system when freed. glibc's default threshold slides up to the largest block freed so
  far (32 MiB at most), after which the query layer's arrays over a million sources (8 MiB
  each) came from the heap and stayed there as free memory once freed: with 1M embedded
  files the daemon kept 45-135 MiB of such free heap (docs/bench/query.md). A fixed
  threshold also fixes glibc's trim threshold, at 128 KiB unless set: each FILE.query read
  then shrank and regrew a thread's heap (mprotect, fresh pages: 1-4 ms more daemon CPU a
  read at 1M files), so free memory at a heap's top is kept up to TRIM_THRESHOLD_MIB.

The library must be the one Python's sqlite3 module uses; when sqlite3 is linked into
the interpreter instead, nothing is set (and the log says so).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sqlite3

from ..core.aggregates import shared_sqlite

__all__ = ["bound", "trim", "SQLITE_HEAP_MIB", "MALLOC_ARENAS"]

log = logging.getLogger(__name__)

SQLITE_HEAP_MIB = 16      # SQLite's page caches and statements, all connections together
MALLOC_ARENAS = 2         # glibc arenas (default 8 per core)
MMAP_THRESHOLD_KIB = 1024  # blocks this big or bigger get their own mapping (0: glibc's sliding default)
TRIM_THRESHOLD_MIB = 16   # ... and then free memory at a heap's top is handed back past this much
_M_ARENA_MAX = -8         # malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_libc: ctypes.CDLL | None = None


def _shared_sqlite() -> ctypes.CDLL | None:
    """The libsqlite3 Python's sqlite3 module runs on (hkfs.core.aggregates.shared_sqlite), set up for
    sqlite3_soft_heap_limit64."""
    lib = shared_sqlite()
    if lib is not None:
        lib.sqlite3_soft_heap_limit64.restype = ctypes.c_int64
        lib.sqlite3_soft_heap_limit64.argtypes = [ctypes.c_int64]
    return lib


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return max(0, int(raw)) if raw.isdigit() else default


def sqlite_mib_from_env(default: int = SQLITE_HEAP_MIB) -> int:
    """HKFS_SQLITE_HEAP_MIB (0: no limit) when set, else `default`."""
    return _env_int("HKFS_SQLITE_HEAP_MIB", default)


def mmap_threshold_from_env(default: int = MMAP_THRESHOLD_KIB) -> int:
    """HKFS_MMAP_THRESHOLD_KIB (0: glibc's default) when set, else `default`."""
    return _env_int("HKFS_MMAP_THRESHOLD_KIB", default)


def bound(sqlite_mib: int | None = None, arenas: int = MALLOC_ARENAS) -> None:
    """Set both bounds for this process (the daemon, before its threads start); sqlite_mib
    None: HKFS_SQLITE_HEAP_MIB or SQLITE_HEAP_MIB, 0: no limit."""
    global _libc
    if sqlite_mib is None:
        sqlite_mib = sqlite_mib_from_env()
    try:
        lib = _shared_sqlite() if sqlite_mib else None
    except OSError as exc:
        lib = None
        log.info("SQLite heap unbounded: %s", exc)
    if not sqlite_mib:
        log.info("SQLite heap unbounded (HKFS_SQLITE_HEAP_MIB=0)")
    elif lib is not None:
        lib.sqlite3_soft_heap_limit64(sqlite_mib << 20)
        log.info("SQLite %s heap limited to %d MiB (all connections)", sqlite3.sqlite_version, sqlite_mib)
    else:
        log.info("SQLite heap unbounded: sqlite3 is not a shared library here")
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.mallopt(_M_ARENA_MAX, arenas)
        mmap_kib = mmap_threshold_from_env()
        if mmap_kib:
            _libc.mallopt(_M_MMAP_THRESHOLD, mmap_kib << 10)
            _libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_MIB << 20)
        _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError) as exc:   # not glibc
        _libc = None
        log.info("malloc arenas not bounded: %s", exc)


def trim() -> None:
    """Give glibc's free pages back to the system (no-op unless bound() found glibc)."""
    if _libc is not None:
        _libc.malloc_trim(0)
