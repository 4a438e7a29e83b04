"""Where a threaded batch search spends its time: the C kernel built with -DVX_PROF, 1 and 2 threads.

Compiles vecindex/_csearch.c with VX_PROF into a temporary directory (the installed kernel is not
touched), searches the given index through it and prints, per thread count, the batch's wall and
process CPU ms and the kernel's counters (`_csearch.prof()`, per batch): the caller's time per
phase and its wait at each phase's end, how late the helpers claimed their first item of each
phase, the serial planning; per thread the ms inside items (by phase), spinning, asleep, in
`pread`, and the candidate buffers' entries and cuts. Counters, not a benchmark: the clock reads
cost a little, and the figures move with the machine (rerun, or compare with bench_vecindex_ab.py).

    python scripts/profile_vecindex_threads.py --index bench-data/zipf_200k_index \\
        --queries bench-data/zipf_200k_queries.npy

(the index and queries of `bench_vecindex.py --sections zipf --zipf-size 200k --queries 300`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vecindex import IVFIndex  # noqa: E402

# setup.py's flags for the kernel, plus VX_PROF
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros", "-std=c11",
         "-Wall", "-pthread", "-fPIC", "-shared", "-DVX_PROF"]


def build(out: Path):
    """The VX_PROF kernel, compiled into `out` and imported under its own name."""
    so = out / ("_csearch" + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, *FLAGS, "-I" + sysconfig.get_paths()["include"], str(ROOT / "vecindex" / "_csearch.c"),
                    "-o", str(so)], check=True)
    spec = importlib.util.spec_from_file_location("vecindex_prof._csearch", so)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", required=True, help=".npy of float32 queries")
    ap.add_argument("--nq", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=4)
    ap.add_argument("--rerank", type=int, default=40)
    ap.add_argument("--batches", type=int, default=40, help="batch calls a sample")
    ap.add_argument("--rounds", type=int, default=2, help="samples of each thread count, alternating")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cs = build(Path(tmp))
    q = np.ascontiguousarray(np.load(a.queries)[: a.nq], dtype=np.float32)
    ix = IVFIndex.open(a.index)
    prep = cs.prepare(*ix._c_const())
    flags = ix._c_flags() | 16
    s, o = np.empty((len(q), a.k), np.float32), np.empty((len(q), a.k), np.int64)

    def run(t: int) -> None:
        if cs.search_prepared(prep, flags, a.nprobe, q, max(a.rerank, a.k), a.k, s, o, t) != 0:
            raise SystemExit("the kernel failed")

    for t in (1, 2):
        run(t)
    n = a.batches
    for _ in range(a.rounds):
        for t in (1, 2):
            cs.prof()
            w, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                run(t)
            w, c = (time.perf_counter() - w) / n * 1e3, (time.process_time() - c) / n * 1e3
            p = cs.prof()

            def ms(ns: float) -> str:
                return f"{ns / n / 1e6:.3f}"

            print(f"threads {t}: wall {w:.2f} ms a batch, CPU {c:.2f}; serial {ms(p['serial'])}, team start "
                  f"{ms(p['start_team'])}; load {os.getloadavg()[0]:.2f}")
            for name, v in p["phases"].items():
                if v["n"]:
                    print(f"  phase {name:8s} wall {ms(v['wall'])}  caller's end wait {ms(v['tailspin'] + v['tailsleep'])}"
                          f"  helpers late {ms(v['late'])}")
            for x in p["threads"]:
                print(f"  thread {x['tid']}: busy {ms(x['busy'])} (" + ", ".join(
                    f"{k} {ms(x[k])}" for k in ("prepare", "scan", "rerank", "write", "finish") if x[k])
                    + f"), spin {ms(x['spin'])}, asleep {ms(x['sleep'])}, pread {ms(x['pread'])} "
                    f"({x['preads'] / n:.0f} calls), scoring {ms(x['score'])}, offering {ms(x['offer'])} "
                    f"({x['enter'] / n:.0f} entries, {x['cut'] / n:.0f} cuts: {ms(x['cutns'])})")
    ix.close()


if __name__ == "__main__":
    main()
