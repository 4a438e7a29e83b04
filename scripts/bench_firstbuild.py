"""The daemon's memory through a first build (issue 12 goal 6): a store whose files all carry
an embedding the daemon has never indexed (no STORE/vectors/), listed, `find`-ed and queried
while the daemon reads every embedding and builds its first index.

    python scripts/bench_firstbuild.py --store COPY [--baseline OTHER_CHECKOUT] [--reads 20]

COPY is a store of `bench_query.py --stores` (files f000000.txt... in view //bench, each with
a 64-d own embedding), a copy: its vectors/ directory is removed first, every run. Steps:
mount (`hk mount -f`), --reads first FILE.query reads (answered from the pending rows
while no base is saved yet), `ls -l` of the view, `find` of the mount, wait until the first base is saved
(STORE/vectors/ns*-d*/manifest.json) and the worker idles, --reads more first reads. After
each step: the daemon's RSS and peak (VmHWM, /proc), its CPU, and the peak RSS of any child
process it ran (sampled every 0.1 s: the index build runs in one above 32 MiB of rows).
--baseline runs the daemon with another checkout on PYTHONPATH (an A/B with the same store).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_query  # noqa: E402
from bench_query import cpu_ms, mount, read_all, unmount  # noqa: E402

from hkfs.core.store import Store  # noqa: E402


def status(pid: int) -> dict[str, int]:
    got = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                got[k] = int(v.split()[0]) // 1024
    except OSError:
        pass
    return got


class ChildPeak(threading.Thread):
    """The highest RSS any child of pid reached (sampled; a child's own VmHWM while it runs)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.seen, self.stop = pid, 0, 0, False

    def run(self) -> None:
        while not self.stop:
            kids = set()
            for task in Path(f"/proc/{self.pid}/task").glob("*"):
                try:
                    kids.update((task / "children").read_text().split())
                except OSError:
                    pass
            for k in kids:
                self.peak = max(self.peak, status(int(k)).get("VmHWM", 0))
            self.seen += bool(kids)
            time.sleep(0.1)


def names(store: Path, n: int, seed: int) -> list[str]:
    with Store.open(store) as st, st.catalog.read() as c:
        got = [r[0] for r in c.execute("SELECT name FROM entities WHERE name GLOB "
                                       "'f[0-9][0-9][0-9][0-9][0-9][0-9].txt' ORDER BY id")]
    pick = np.random.default_rng(seed).choice(len(got), size=min(n, len(got)), replace=False)
    return [got[int(i)] for i in pick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="a copy of a bench_query store (vectors/ is removed)")
    ap.add_argument("--mnt", type=Path, default=None, help="mount point (default: STORE.mnt)")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout for the daemon (PYTHONPATH)")
    ap.add_argument("--reads", type=int, default=20, help="FILE.query first reads before and after the build")
    ap.add_argument("--seed", type=int, default=11, help="which files are read")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the first build")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.baseline is not None:
        env["PYTHONPATH"] = str(a.baseline.resolve())
    bench_query.CHILD_ENV = env
    shutil.rmtree(a.store / "vectors", ignore_errors=True)
    (a.store / "memstats.json").unlink(missing_ok=True)
    mnt = a.mnt or a.store.with_name(a.store.name + ".mnt")
    picks = names(a.store, 2 * a.reads, a.seed)
    print(f"load {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f}; code "
          f"{'baseline ' + str(a.baseline) if a.baseline else 'this checkout'}; store {a.store}", flush=True)
    t0 = time.monotonic()
    proc = mount(a.store, mnt)
    pid = proc.pid
    kids = ChildPeak(pid)
    kids.start()
    rows = []

    def note(step: str) -> None:
        s = status(pid)
        rows.append((step, s.get("VmRSS", 0), s.get("VmHWM", 0), cpu_ms(pid) / 1e3, time.monotonic() - t0))
        print(f"{step:28s} RSS {rows[-1][1]:5d} MiB  peak {rows[-1][2]:5d}  cpu {rows[-1][3]:7.1f} s  "
              f"at {rows[-1][4]:6.1f} s", flush=True)

    try:
        note("mounted")
        bench = mnt / "@" / "bench"
        t = time.perf_counter()
        for name in picks[:a.reads]:
            read_all(str(bench / f"{name}.query"))
        built = bool(list((a.store / "vectors").glob("ns*-d*/manifest.json")))
        note(f"{a.reads} FILE.query ({'base' if built else 'pending'})")
        print(f"  {(time.perf_counter() - t) / max(a.reads, 1) * 1e3:.0f} ms a read", flush=True)
        subprocess.run(["ls", "-l", str(bench)], stdout=subprocess.DEVNULL, check=True)
        note("ls -l view")
        subprocess.run(["find", str(mnt / "@")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        note("find")
        end = time.monotonic() + a.timeout
        while not list((a.store / "vectors").glob("ns*-d*/manifest.json")):
            if time.monotonic() > end:
                raise SystemExit("no first build within the timeout")
            time.sleep(0.5)
        time.sleep(2.0)          # the worker swaps the base in after writing the manifest
        note("first build saved")
        t = time.perf_counter()
        for name in picks[a.reads:]:
            read_all(str(bench / f"{name}.query"))
        note(f"{a.reads} FILE.query (base)")
        print(f"  {(time.perf_counter() - t) / max(a.reads, 1) * 1e3:.1f} ms a read", flush=True)
    finally:
        kids.stop = True
        unmount(mnt, proc)
    print(f"daemon peak {max(r[2] for r in rows)} MiB; children's peak {kids.peak} MiB "
          f"({kids.seen} samples); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
