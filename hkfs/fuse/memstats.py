"""Where the daemon's memory goes, on request: `kill -USR2 PID` writes STORE/memstats.json.

A debug aid behind the daemon's memory figures (scripts/bench_mount.py --big splits its
RSS with it): the process's resident and peak memory, glibc's heap (in use, and freed but
not returned to the system), Python's object allocator, SQLite's page caches (all
connections), the read memo, libfuse's node table (hkfs.fuse.node_budget) and the
kernel's FUSE inodes. With HKFS_TRACEMALLOC=N set when the daemon starts, Python's
allocations are traced (N frames; slow) and the top sites are reported too. With
HKFS_MEMWATCH=MS, a thread samples the resident size every MS milliseconds and, each time it
passes its highest so far by RISE_MIB, notes the Python stacks of every thread (`rss_rises`):
what the daemon was doing when its peak grew, which a snapshot taken later cannot tell.

The main thread sits in libfuse's loop, where a Python signal handler would never run, so
the signal only wakes a thread of ours: the interpreter's C-level handler writes the
signal's number to the wakeup descriptor (signal.set_wakeup_fd), whichever thread the
kernel delivered it to (numpy's BLAS threads, libfuse's workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["install", "snapshot", "MEMSTATS_NAME"]

log = logging.getLogger(__name__)

MEMSTATS_NAME = "memstats.json"
RISE_MIB = 4          # HKFS_MEMWATCH: a new high this much over the last noted one is noted
RISES_KEPT = 12       # ... and the last this many are reported


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of /proc/PID/status in KiB."""
    got: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                got[key] = int(val.split()[0])
    return got


def heap() -> dict[str, int]:
    """glibc's heap in bytes: in use (uordblks + mmapped), free but kept (fordblks)."""
    try:
        f = _libc().mallinfo2
    except AttributeError:
        return {}
    f.restype = _Mallinfo2
    m = f()
    return {"in_use": m.uordblks + m.hblkhd, "free_kept": m.fordblks, "arena": m.arena, "mmapped": m.hblkhd}


def sqlite_memory() -> dict[str, int]:
    """SQLite's own heap (page caches of every connection, statements) in bytes."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    except OSError:
        return {}
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    return {"used": lib.sqlite3_memory_used(), "highwater": lib.sqlite3_memory_highwater(0)}


def kernel_fuse_inodes() -> int | None:
    """Active fuse_inode objects in the kernel (every FUSE mount; root only)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/slabinfo").read_text().splitlines():
            if line.startswith("fuse_inode "):
                return int(line.split()[1])
    return None


def snapshot(extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything above, plus what `extra` reports (the daemon's own caches)."""
    out: dict[str, Any] = {
        "time": time.time(),
        "status_kib": proc_status(),
        "malloc": heap(),
        "python": {"allocated_blocks": sys.getallocatedblocks(), "gc_counts": gc.get_count(),
                   "gc_objects": len(gc.get_objects())},
        "sqlite": sqlite_memory(),
        "kernel_fuse_inodes": kernel_fuse_inodes(),
    }
    if tracemalloc.is_tracing():
        cur, peak = tracemalloc.get_traced_memory()
        top = tracemalloc.take_snapshot().statistics("lineno")[:15]
        out["tracemalloc"] = {"current": cur, "peak": peak,
                              "top": [f"{s.size / 2**20:.1f} MiB {s.count} {s.traceback}" for s in top]}
    if _rises:
        out["rss_rises"] = list(_rises)
    if extra is not None:
        try:
            out.update(extra())
        except Exception as exc:  # noqa: BLE001 - a debug report must not take the daemon down
            out["extra_error"] = repr(exc)
    return out


def daemon_caches(ops: Any) -> dict[str, Any]:
    """The sizes of the daemon's own caches (an HKOperations; read without its locks: a report)."""
    from .node_budget import libfuse_nodes
    kernel = ops.kernel
    fuse, session = kernel._fuse, kernel.dirs.session
    return {
        "libfuse_nodes": libfuse_nodes(fuse.value, session) if fuse is not None and session else None,
        "budget": {k: getattr(kernel.budget, k) for k in ("limit", "held", "pending", "dropped", "pauses")},
        "read_memo": len(ops.reads._memo),
        "viewed": len(kernel.viewed),
        "listings_open": len(ops._listings),
        "catalog_connections": ops.store.catalog.connections(),
    }


_rises: list[dict[str, Any]] = []


def _stacks() -> dict[str, list[str]]:
    """The innermost frames of every Python thread, by thread name (for rss_rises)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    out: dict[str, list[str]] = {}
    for tid, frame in sys._current_frames().items():
        if tid == me:
            continue
        lines, f = [], frame
        while f is not None and len(lines) < 8:
            lines.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}")
            f = f.f_back
        out[names.get(tid, str(tid))] = lines
    return out


def watch(every_ms: float) -> None:
    """Sample VmRSS every `every_ms` and note the stacks at each new high (HKFS_MEMWATCH)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def run() -> None:
        noted = 0
        with open("/proc/self/statm", "rb", buffering=0) as f:
            while True:
                f.seek(0)
                rss = int(f.read().split()[1]) * page
                if rss > noted + (RISE_MIB << 20):
                    noted = rss
                    _rises.append({"time": time.time(), "rss_mib": round(rss / 2**20, 1),
                                   "stacks": _stacks()})
                    del _rises[:-RISES_KEPT]
                time.sleep(every_ms / 1e3)

    threading.Thread(target=run, name="hkfs-memwatch", daemon=True).start()


def install(path: Path, extra: Callable[[], dict[str, Any]] | None = None) -> bool:
    """Write snapshot(extra) to `path` on every SIGUSR2 (from the main thread, before serving)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    frames = os.environ.get("HKFS_TRACEMALLOC")
    if frames:
        tracemalloc.start(int(frames) if frames.isdigit() else 1)
    every = os.environ.get("HKFS_MEMWATCH", "").strip()
    if every.replace(".", "", 1).isdigit() and float(every) > 0:
        watch(float(every))
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.signal(signal.SIGUSR2, lambda _sig, _frame: None)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def wait() -> None:
        while True:
            got = os.read(r, 64)
            if not got:
                return
            if signal.SIGUSR2 not in got:
                continue
            try:
                data = snapshot(extra)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(data, indent=1) + "\n")
                os.replace(tmp, path)
            except Exception:  # noqa: BLE001 - a debug report must not take the daemon down
                log.exception("memstats failed")

    threading.Thread(target=wait, name="hkfs-memstats", daemon=True).start()
    return True
