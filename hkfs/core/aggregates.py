"""SQLite aggregates in C for big listings: hkfs_int64s(x, ...) and hkfs_repeated(text).

A view listing reads its files' attributes ~1,000 rows at a time (Store.entity_columns_between).
Read as group_concat text, SQLite turns every integer into decimal and numpy parses it back:
most of the daemon's CPU in a 100k-file `ls -l`. hkfs_int64s() packs each row's arguments as
native int64 into one BLOB instead (numpy.frombuffer, no parsing). hkfs_repeated() gives the
values that repeat among values read in order: the namespace's shared names
(Store.shared_names) from one index scan, without GROUP BY's cost per row. Both are in
hkfs/core/_aggregates.c.

They are registered with sqlite3_auto_extension, a public SQLite call that adds them to
every connection the process opens afterwards (the Catalog registers before it opens any),
through the libsqlite3 that Python's sqlite3 module runs on. `register()` says whether they
are there: not when the optional C part was not built, or sqlite3 is not a shared library
here; then the store reads the same values as text and with GROUP BY.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["register", "shared_sqlite"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: list[bool] = []          # [registered?] once tried


def shared_sqlite() -> ctypes.CDLL | None:
    """The libsqlite3 Python's sqlite3 module runs on, if it is a shared library of this process."""
    with open("/proc/self/maps") as f:
        path = next((line.split()[-1] for line in f if "/libsqlite3.so" in line), None)
    if path is None or not Path(path).exists():
        return None
    return ctypes.CDLL(path)


def register() -> bool:
    """Add the aggregates to every SQLite connection this process opens from now on (tried
    once; False when they cannot be: see the module doc)."""
    with _lock:
        if not _state:
            _state.append(_register())
        return _state[0]


def _register() -> bool:
    try:
        from . import _aggregates
    except ImportError:
        log.info("SQLite aggregates not built: listings read their columns as text")
        return False
    try:
        lib = shared_sqlite()
    except OSError as exc:
        log.info("SQLite aggregates not registered: %s", exc)
        return False
    if lib is None:
        log.info("SQLite aggregates not registered: sqlite3 is not a shared library here")
        return False
    lib.sqlite3_auto_extension.argtypes = [ctypes.c_void_p]
    lib.sqlite3_auto_extension.restype = ctypes.c_int
    if lib.sqlite3_auto_extension(_aggregates.entry_point()) != 0:
        return False
    # the library found must be the one Python's sqlite3 runs on: a new connection has them
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as c:
            return c.execute("SELECT hkfs_int64s(1) IS NOT NULL").fetchone()[0] == 1
    except sqlite3.Error as exc:
        log.info("SQLite aggregates not registered: %s", exc)
        return False
