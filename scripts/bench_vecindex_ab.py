"""A/B of vecindex's batch search across checkouts: 1 and 2 threads, alternating.

Each checkout runs in a fresh process (its own `vecindex` first on sys.path, so two builds of the
C kernel can be compared), one after the other, `--pairs` times; inside a process the 1- and
2-thread cases alternate for `--rounds` rounds, each sample repeating the batch call for at least
`--min-s` seconds. Prints one JSON line per run: median q/s per thread count, their ratio, the
process CPU ms a batch (all threads: what a second thread costs, visible even when the machine's
load hides its gain) and the 1-minute load average.

    python scripts/bench_vecindex_ab.py --checkouts /tmp/main-copy . \\
        --index bench-data/zipf_200k_index --queries bench-data/zipf_200k_queries.npy

(the index and queries of `bench_vecindex.py --sections zipf --zipf-size 200k --queries 300`).
Run it under `flock /tmp/bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(a: argparse.Namespace) -> None:
    sys.path.insert(0, a.checkout)
    import numpy as np

    from vecindex import IVFIndex, _kernels

    q = np.ascontiguousarray(np.load(a.queries)[: a.nq], dtype=np.float32)
    ix = IVFIndex.open(a.index)
    ths = (1, 2)
    ref = ix.search(q, a.k, nprobe=a.nprobe, threads=1)[1]
    for t in ths:  # warm, and the same hits on every thread count
        assert (ix.search(q, a.k, nprobe=a.nprobe, threads=t)[1] == ref).all()
    qps: dict[int, list[float]] = {t: [] for t in ths}
    cpu: dict[int, list[float]] = {t: [] for t in ths}
    for _ in range(a.rounds):
        for t in ths:
            n = 0
            w, c = time.perf_counter(), time.process_time()
            while True:
                ix.search(q, a.k, nprobe=a.nprobe, threads=t)
                n += 1
                el = time.perf_counter() - w
                if el >= a.min_s:
                    break
            qps[t].append(n * len(q) / el)
            cpu[t].append((time.process_time() - c) / n * 1e3)
    med = {t: float(np.median(v)) for t, v in qps.items()}
    print(json.dumps({"checkout": a.checkout, "kernel": _kernels.KERNEL, "qps": {t: round(m) for t, m in med.items()},
                      "ratio": round(med[2] / med[1], 3),
                      "cpu_ms_batch": {t: round(float(np.median(v)), 2) for t, v in cpu.items()},
                      "load": round(os.getloadavg()[0], 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkouts", nargs="+", default=["."], help="directories holding a built vecindex/")
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True, help=".npy of float32 queries")
    ap.add_argument("--nq", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pairs", type=int, default=3, help="alternations of the checkouts")
    ap.add_argument("--min-s", type=float, default=0.3, help="seconds a sample repeats the batch")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.checkout = a.child
        child(a)
        return
    for _ in range(a.pairs):
        for c in a.checkouts:
            args = [sys.executable, __file__, "--child", os.path.abspath(c), "--index", a.index, "--queries", a.queries,
                    "--nq", str(a.nq), "--k", str(a.k), "--nprobe", str(a.nprobe), "--rounds", str(a.rounds),
                    "--min-s", str(a.min_s)]
            print(subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
