#!/usr/bin/env python3
"""A/B of `FILE.query` reads with both daemons mounted at once, reads interleaved.

`bench_query.py --baseline` serves a store by one checkout's daemon, then by the other's:
on a shared machine whose speed drifts by tens of percent within a minute, a pair of runs
differs by more than the change being measured. Here two copies of one store (made by
bench_query.py --stores; copy the directory with `cp -a`) are mounted at the same time,
A by the baseline checkout's daemon (PYTHONPATH) and B by this one's, and every step reads
on both, in alternating order, so both see the same load:

  first   the first read of a FILE.query (a file never read before)
  repeat  the same file again
  after   another process sets a note on another file (its commit pokes the daemon), then
          the first read of yet another file: the daemon's CPU includes answering the poke

Per kind: the median wall time of the read and the median CPU the daemon spent (all its
threads, schedstat), per code.

    python scripts/bench_query_pair.py --baseline /tmp/main-checkout \\
        --stores /tmp/bq/files100000 /tmp/bq-copy/files100000 --reads 300
    python scripts/bench_query_pair.py --baseline . --env HKFS_SQLITE_HEAP_MIB=64 --stores ...
        # one checkout, a setting A/B: the variable set in the second store's daemon only

At 1M files under load, A/A runs gave the baseline side 7-13% more daemon CPU whichever copy
it served (docs/bench/query.md, "SQLite mmap_size"): run a setting on each side in turn.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_query  # noqa: E402  (scripts/ is on sys.path when run as a script)
from bench_query import cpu_ms, read_all, unmount  # noqa: E402

from hkfs.core.store import Store  # noqa: E402

KINDS = ("first", "repeat", "after")


def mount(store: Path, mnt: Path, pythonpath: str, env: list[str] = ()) -> subprocess.Popen:
    """bench_query's `hk mount -f`, by the checkout at pythonpath, with env's NAME=VALUE set."""
    bench_query.CHILD_ENV = dict(os.environ, PYTHONPATH=pythonpath, **dict(e.split("=", 1) for e in env))
    return bench_query.mount(store, mnt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="the other checkout (served on the first store)")
    ap.add_argument("--stores", nargs=2, type=Path, required=True, help="two copies of one store")
    ap.add_argument("--reads", type=int, default=300, help="steps (each: first, repeat, after on both)")
    ap.add_argument("--seed", type=int, default=5, help="which files are read")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-query-pair"))
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in this checkout's daemon only (an A/B of a setting: --baseline .)")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in the baseline's daemon only")
    a = ap.parse_args()
    sides = {"baseline": (a.stores[0], a.work / "a", str(Path(a.baseline).resolve())),
             "this": (a.stores[1], a.work / "b", str(Path(__file__).resolve().parents[1]))}
    envs = {"baseline": a.baseline_env, "this": a.env}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for side, (store, mnt, pypath) in sides.items():
            procs[side] = mount(store, mnt, pypath, envs[side])
        with Store.open(a.stores[0]) as st, st.catalog.read() as c:
            names = [r[0] for r in c.execute("SELECT name FROM entities WHERE name GLOB "
                                             "'f[0-9][0-9][0-9][0-9][0-9][0-9].txt'")]
            other = c.execute("SELECT id FROM entities WHERE name GLOB 'f[0-9]*.txt' LIMIT 1").fetchone()[0]
        random.Random(a.seed).shuffle(names)
        writers = {side: Store.open(store) for side, (store, _m, _p) in sides.items()}
        for side, (_s, mnt, _p) in sides.items():      # warm: the index, the view's scope
            for nm in names[:10]:
                read_all(str(mnt / "@/bench" / f"{nm}.query"))
            writers[side].set_xattr("file", other, "user.note", b"warm")
        got: dict[tuple[str, str], tuple[list[float], list[float]]] = {
            (side, kind): ([], []) for side in sides for kind in KINDS}
        fresh = iter(names[10:])
        order = list(sides)
        for i in range(a.reads):
            name, later = next(fresh), next(fresh)
            order.reverse()
            for side in order:
                pid, view = procs[side].pid, sides[side][1] / "@/bench"
                for kind, nm in (("first", name), ("repeat", name), ("after", later)):
                    c = cpu_ms(pid)
                    if kind == "after":
                        writers[side].set_xattr("file", other, "user.note", str(i).encode())
                    t = time.perf_counter()
                    read_all(str(view / f"{nm}.query"))
                    got[(side, kind)][0].append((time.perf_counter() - t) * 1e3)
                    got[(side, kind)][1].append(cpu_ms(pid) - c)
        for w in writers.values():
            w.close()
        print(f"load {os.getloadavg()[0]:.1f}; {a.reads} steps, seed {a.seed}; median ms: wall / daemon CPU")
        for kind in KINDS:
            print(f"{kind:7s}" + "".join(
                f" | {side} {statistics.median(got[(side, kind)][0]):.2f} / {statistics.median(got[(side, kind)][1]):.2f}"
                for side in sides))
    finally:
        for side, proc in procs.items():
            unmount(sides[side][1], proc)


if __name__ == "__main__":
    main()
