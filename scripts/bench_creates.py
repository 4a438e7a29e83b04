#!/usr/bin/env python
"""Concurrent file creates in an ordinary directory of the mount, against the same on the disk.

Each of P processes creates N files of 100 bytes (open O_CREAT, write, close) in its own
subdirectory, under names every process uses (`shared`: f0, f1, ... as a source tree repeats
Makefile and __init__.py; they are made once in another directory first, untimed) or under
names of its own (`unique`). Prints, per case, creates a
second, p50/p90/p99 latency, the daemon's CPU per create and the disk's figures beside; writes
the table to docs/bench/creates.md and a plot to docs/bench/creates.png. Each case mounts a
fresh store. With --baseline, the daemon of each case also runs another checkout's code
(PYTHONPATH), alternately with this one's, for an A/B in one run.

    python scripts/bench_creates.py
    python scripts/bench_creates.py --baseline /tmp/main-copy --procs 8 --files 300
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_query  # noqa: E402  (its mount, unmount and daemon CPU helpers)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench"
BODY = b"x" * 100


def _creates(job: tuple[str, int, int, bool]) -> list[float]:
    """One process's creates; each one's seconds."""
    root, i, n, shared = job
    d = os.path.join(root, f"p{i}")
    os.makedirs(d, exist_ok=True)
    out = []
    for j in range(n):
        name = f"f{j}" if shared else f"u{i}_{j}"
        t = time.perf_counter()
        fd = os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, BODY)
        os.close(fd)
        out.append(time.perf_counter() - t)
    return out


def seed(root: Path, n: int, shared: bool) -> None:
    """Shared names made once in root/seed before the timed part (so one process's are shared too)."""
    if shared:
        _creates((str(root / "seed"), 0, n, True))


def run(root: Path, procs: int, n: int, shared: bool) -> dict[str, float]:
    """P processes creating n files each under root: rate and latency percentiles (ms)."""
    t = time.perf_counter()
    with mp.get_context("fork").Pool(procs) as pool:
        lat = sorted(x for r in pool.map(_creates, [(str(root), i, n, shared) for i in range(procs)]) for x in r)
    wall = time.perf_counter() - t
    q = statistics.quantiles(lat, n=100)
    return {"rate": len(lat) / wall, "p50": q[49] * 1e3, "p90": q[89] * 1e3, "p99": q[98] * 1e3}


def on_mount(work: Path, procs: int, n: int, shared: bool) -> dict[str, float]:
    """The case on a fresh store's mount, with the daemon's CPU per create."""
    store, mnt = work / "s", work / "m"
    shutil.rmtree(store, ignore_errors=True)
    proc = bench_query.mount(store, mnt)
    try:
        (mnt / "d").mkdir()
        seed(mnt / "d", n, shared)
        c = bench_query.cpu_ms(proc.pid)
        r = run(mnt / "d", procs, n, shared)
        r["cpu"] = (bench_query.cpu_ms(proc.pid) - c) / (procs * n)
    finally:
        bench_query.unmount(mnt, proc)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--files", type=int, default=300, help="files per process")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout served alternately")
    ap.add_argument("--out", type=Path, default=DOCS / "creates.md")
    a = ap.parse_args()
    codes: list[tuple[str, dict[str, str] | None]] = [("this", None)]
    if a.baseline:
        codes.insert(0, (f"baseline ({a.baseline})", dict(os.environ, PYTHONPATH=str(a.baseline.resolve()))))
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-creates-") as tmp:
        work = Path(tmp)
        for procs in a.procs:
            for shared in (True, False):
                disk = work / f"disk-{procs}-{shared}"
                disk.mkdir()
                seed(disk, a.files, shared)
                peer = run(disk, procs, a.files, shared)
                for label, env in codes:
                    bench_query.CHILD_ENV = env
                    r = on_mount(work, procs, a.files, shared)
                    rows.append((procs, "shared" if shared else "unique", label, r, peer))
                    print(f"{procs} x {a.files} {'shared' if shared else 'unique'} {label}: "
                          f"{r['rate']:.0f}/s (disk {peer['rate']:.0f}/s), p50 {r['p50']:.2f} ms, "
                          f"p99 {r['p99']:.2f} ms, daemon CPU {r['cpu']:.2f} ms a create", flush=True)
    write(rows, a, load0, os.getloadavg()[0])


def write(rows: list, a: argparse.Namespace, load0: float, load1: float) -> None:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python scripts/bench_creates.py " + " ".join(sys.argv[1:])
    lines = ["# Concurrent creates in an ordinary directory: mount vs disk", "",
             f"Written by `{cmd.strip()}` ({when}; load average {load0:.1f} at the start, {load1:.1f} at the "
             "end; no seeds: the names are f0, f1, ... or u<proc>_<n>). Each process creates "
             f"{a.files} files of 100 bytes in its own subdirectory; a fresh store per case; the disk "
             "is a directory of the same temporary file system, run just before.", "",
             "| processes | names | code | creates/s | disk creates/s | p50 ms | p90 ms | p99 ms "
             "| daemon CPU ms a create |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for procs, names, label, r, peer in rows:
        lines.append(f"| {procs} | {names} | {label} | {r['rate']:.0f} | {peer['rate']:.0f} | {r['p50']:.2f} | "
                     f"{r['p90']:.2f} | {r['p99']:.2f} | {r['cpu']:.2f} |")
    a.out.write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{p} proc, {n}\n{lab.split(' ')[0]}" for p, n, lab, _, _ in rows]
    ax.bar(range(len(rows)), [r["rate"] for *_, r, _ in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("creates/s through the mount")
    ax.set_title("Concurrent creates in an ordinary directory")
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"), dpi=100)
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
