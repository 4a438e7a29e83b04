#!/usr/bin/env python
"""Where a first `cat VIEW/FILE.query` spends its CPU, in-process (no FUSE, no daemon).

Calls HKOperations as the mount would for `cat` (getattr, open, read, release) on files of
@/bench never read before, in one thread, on a store made by `bench_query.py --stores`.
Prints the CPU per read and per step (a thread-CPU timer around each step; nested steps are
counted in their callers too). With --after, another connection sets a note on one file
before each read (a commit elsewhere: SQLite empties the page cache).

--mmap-ab MIB alternates blocks of reads with `PRAGMA mmap_size` = MIB MiB and = 0 on the
reading connection, and prints CPU and read syscalls (/proc/self/io) per read for each
(docs/bench/query.md, "SQLite mmap_size"). Timers are left out then.

    python scripts/bench_query_steps.py /tmp/queryfirst-stores/files100000 --reads 500
    python scripts/bench_query_steps.py STORE --reads 100 --blocks 6 --mmap-ab 256 --after

The store is only read (but for the --after notes); do not run it on a mounted store.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vecindex.ivf as ivf  # noqa: E402
from hkfs.core.store import Store  # noqa: E402
from hkfs.fuse.operations import HKOperations  # noqa: E402
from hkfs.mount import cached_reads, queryfs, views  # noqa: E402
from hkfs.query import embeddings, service  # noqa: E402

STEPS: list[tuple[type, str]] = [
    (HKOperations, "getattr"), (HKOperations, "open"), (HKOperations, "release"),
    (queryfs.QueryFS, "_find_target"), (queryfs.QueryFS, "evaluate"),
    (cached_reads.CachedReads, "prefetch_names"), (Store, "match_ids_named"),
    (views.Resolver, "tail_in"), (views.Resolver, "file_in"),
    (embeddings.EmbeddingCatalog, "source"), (Store, "xattr_value"),
    (embeddings.EmbeddingCatalog, "search"), (ivf.IVFIndex, "search"),
    (service.QueryService, "hit_paths"), (Store, "names_counted"),
]


def timed(acc: dict[str, int], label: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        t = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[label] += time.thread_time_ns() - t
    return wrapper


def read_syscalls() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscr"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("--reads", type=int, default=500, help="first reads (per block with --mmap-ab)")
    ap.add_argument("--blocks", type=int, default=6, help="--mmap-ab: blocks, alternating which goes first")
    ap.add_argument("--mmap-ab", type=int, default=0, metavar="MIB")
    ap.add_argument("--after", action="store_true", help="a commit by another connection before each read")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    acc: dict[str, int] = defaultdict(int)
    if not a.mmap_ab:
        for cls, name in STEPS:
            setattr(cls, name, timed(acc, f"{cls.__name__}.{name}", getattr(cls, name)))
    st = Store.open(a.store)
    ops = HKOperations(st)
    writer = Store.open(a.store)
    with st.catalog.read() as c:
        names = [r[0] for r in c.execute("SELECT name FROM entities WHERE name GLOB "
                                         "'f[0-9][0-9][0-9][0-9][0-9][0-9].txt'")]
        other = c.execute("SELECT id FROM entities WHERE name GLOB 'f[0-9]*.txt' LIMIT 1").fetchone()[0]
    random.Random(a.seed).shuffle(names)
    fresh = iter(names)

    def first_read(i: int) -> tuple[int, int]:
        """One first read: (thread CPU ns, read syscalls)."""
        if a.after:
            writer.set_xattr("file", other, "user.note", str(i).encode())
        path = f"/@/bench/{next(fresh)}.query"
        r, t = read_syscalls(), time.thread_time_ns()
        ops.getattr(path)
        fh = ops.open(path, os.O_RDONLY)
        try:
            ops.queries.read(fh, 1 << 16, 0)
        finally:
            ops.release(path, fh)
        return time.thread_time_ns() - t, read_syscalls() - r - 1   # (less the syscr read itself)

    try:
        for i in range(20):                       # the index, the view's scope: built once
            first_read(i)
        acc.clear()
        print(f"{a.store}, {'after a commit elsewhere' if a.after else 'first reads'}, "
              f"load {os.getloadavg()[0]:.1f}")
        if a.mmap_ab:
            conn = st.catalog.connection()
            got: dict[int, list[tuple[int, int]]] = {0: [], a.mmap_ab: []}
            for b in range(a.blocks):
                for mib in ((0, a.mmap_ab) if b % 2 == 0 else (a.mmap_ab, 0)):
                    conn.execute(f"PRAGMA mmap_size = {mib << 20}")
                    got[mib] += [first_read(i) for i in range(a.reads)]
            for mib, xs in got.items():
                print(f"  mmap_size {mib:5d} MiB: CPU median {statistics.median(x[0] for x in xs) / 1e3:.0f} us, "
                      f"read syscalls {statistics.mean(x[1] for x in xs):.1f} per read")
            return
        cpu = [first_read(i)[0] for i in range(a.reads)]
        print(f"  CPU per read: median {statistics.median(cpu) / 1e3:.0f} us, mean {statistics.mean(cpu) / 1e3:.0f}")
        for label, ns in sorted(acc.items(), key=lambda kv: -kv[1]):
            print(f"  {label:36s} {ns / a.reads / 1e3:7.1f} us")
    finally:
        ops.destroy("/")
        st.close()
        writer.close()


if __name__ == "__main__":
    main()
