"""The daemon's SQLite heap limit holds every connection's page cache under it (hkfs.fuse.native_memory).

Run in a fresh interpreter each (the limit and malloc's arenas are process-wide): three threads,
each with its own connection and a 64 MiB cache, read a ~24 MiB table; SQLite's heap stays near
the limit with it and grows past it without.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import ctypes, sqlite3, sys, threading
from hkfs.fuse import native_memory
path, limit = sys.argv[1], int(sys.argv[2])
native_memory.bound(sqlite_mib=limit)
with sqlite3.connect(path) as c:
    c.execute("CREATE TABLE t (x BLOB)")
    c.executemany("INSERT INTO t VALUES (?)", ((bytes(4000),) for _ in range(6000)))
lib = native_memory._shared_sqlite()
lib.sqlite3_memory_used.restype = ctypes.c_int64
def scan():
    c = sqlite3.connect(path)
    c.execute("PRAGMA cache_size = -65536")
    c.execute("SELECT sum(length(x)) FROM t").fetchone()
    keep.append(c)                       # open connections keep their caches
keep = []
for _ in range(3):
    t = threading.Thread(target=scan)
    t.start()
    t.join()
print(lib.sqlite3_memory_used() >> 20)
"""


def _heap_mib(tmp_path: Path, limit: int) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"t{limit}.sqlite"), str(limit)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_sqlite_heap_stays_under_the_limit(tmp_path: Path) -> None:
    from hkfs.fuse import native_memory
    if native_memory._shared_sqlite() is None:
        pytest.skip("sqlite3 is not a shared library here: no limit is set")
    assert _heap_mib(tmp_path, 0) >= 40          # no limit: each connection caches the table
    assert _heap_mib(tmp_path, 8) <= 12


def test_sqlite_limit_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from hkfs.fuse.native_memory import SQLITE_HEAP_MIB, sqlite_mib_from_env
    monkeypatch.delenv("HKFS_SQLITE_HEAP_MIB", raising=False)
    assert sqlite_mib_from_env() == SQLITE_HEAP_MIB
    monkeypatch.setenv("HKFS_SQLITE_HEAP_MIB", "0")
    assert sqlite_mib_from_env() == 0
    monkeypatch.setenv("HKFS_SQLITE_HEAP_MIB", "lots")
    assert sqlite_mib_from_env() == SQLITE_HEAP_MIB
