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


@pytest.mark.parametrize("var, read, default", [
    ("HKFS_SQLITE_HEAP_MIB", "sqlite_mib_from_env", "SQLITE_HEAP_MIB"),
    ("HKFS_MMAP_THRESHOLD_KIB", "mmap_threshold_from_env", "MMAP_THRESHOLD_KIB")])
def test_bounds_from_env(monkeypatch: pytest.MonkeyPatch, var: str, read: str, default: str) -> None:
    from hkfs.fuse import native_memory
    fn, want = getattr(native_memory, read), getattr(native_memory, default)
    monkeypatch.delenv(var, raising=False)
    assert fn() == want
    monkeypatch.setenv(var, "0")
    assert fn() == 0
    monkeypatch.setenv(var, "lots")
    assert fn() == want


FREED = r"""
import sys
import numpy as np
from hkfs.fuse import memstats, native_memory
native_memory.bound(sqlite_mib=0)
big = np.ones(2 << 20)        # 16 MiB, freed: glibc's own threshold slides up to it
del big
pins, arrays = [], []
for _ in range(16):
    arrays.append(np.ones(1 << 19))      # 4 MiB each (a million-source step's array)
    pins.append(bytearray(200_000))      # kept after each: the heap cannot shrink past them
del arrays
print(memstats.heap()["free_kept"] >> 20)
"""


@pytest.mark.parametrize("kib", [0, 1024])
def test_big_freed_arrays_go_back_to_the_system(kib: int) -> None:
    """With glibc's sliding threshold (0), 4 MiB arrays freed stay in the heap as free memory;
    with MMAP_THRESHOLD_KIB they are unmapped."""
    import os
    env = dict(os.environ, HKFS_MMAP_THRESHOLD_KIB=str(kib))
    out = subprocess.run([sys.executable, "-c", FREED], capture_output=True, text=True, check=True, env=env)
    kept = int(out.stdout.split()[-1])
    if kib:
        assert kept < 8
    else:
        assert kept >= 32
