#!/usr/bin/env python
"""One build or query run in a fresh process, for peak-RSS figures (VmHWM) of bench_vecindex.py.

Imports only what the measured engine needs (vecindex or faiss), so the baseline is fair.
Usage: python scripts/vecindex_rss_child.py '{"kind": "ours-query", ...}'  -> one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# the checkout's vecindex, as in bench_vecindex.py: not whichever one the running venv installed
# (an A/B of two checkouts with one venv would otherwise measure the same code twice)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def vm(key: str = "VmHWM") -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return (x / n).astype(np.float32)


def faiss_ivf(x: np.ndarray, nlist: int, metric: str, sample: int, seed: int = 0):
    """faiss IVF-Flat trained on the same sample size as vecindex; rows added in 1M chunks."""
    import faiss

    d = x.shape[1]
    mt = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    quant = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    idx = faiss.IndexIVFFlat(quant, d, nlist, mt)
    rng = np.random.default_rng(seed)
    n = len(x)
    samp = np.sort(rng.choice(n, min(n, sample), replace=False))
    xs = np.asarray(x[samp], dtype=np.float32)
    idx.train(normalize(xs) if metric == "cosine" else xs)
    for a in range(0, n, 1_000_000):
        xb = np.asarray(x[a : a + 1_000_000], dtype=np.float32)
        idx.add(normalize(xb) if metric == "cosine" else xb)
    return idx


def main(spec: dict) -> dict:
    kind = spec["kind"]
    if kind.startswith("ours"):
        import vecindex  # noqa: F401 - counted in the baseline, as a user's process would
    else:
        import faiss
    out: dict = {"after_imports_mib": vm()}
    if kind.endswith("build"):
        x = np.load(spec["data"]) if spec["data"].endswith(".npy") else np.memmap(
            spec["data"], np.float32, "r").reshape(-1, spec["dim"])
        out["after_load_mib"] = vm()
        if kind == "ours-build":
            vecindex.IVFIndex.build(spec["path"], x, metric=spec["metric"], nlist=spec["nlist"],
                                    overwrite=True, progress=False).close()
        else:
            faiss_ivf(x, spec["nlist"], spec["metric"], min(len(x), max(64 * spec["nlist"], 10_000)))
        return dict(out, hwm_mib=vm())
    q = np.load(spec["queries"])
    if kind == "ours-query":
        from threadpoolctl import threadpool_limits

        ix = vecindex.IVFIndex.open(spec["path"])
        out["after_open_mib"] = vm()
        with threadpool_limits(1):
            for i in range(len(q)):
                ix.search(q[i : i + 1], 10, nprobe=spec["nprobe"])
    else:
        faiss.omp_set_num_threads(1)
        ix = faiss.read_index(spec["path"])
        out["after_open_mib"] = vm()
        ix.nprobe = spec["nprobe"]
        qq = normalize(q) if spec["metric"] == "cosine" else q
        for i in range(len(q)):
            ix.search(qq[i : i + 1], 10)
    return dict(out, hwm_mib=vm())


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
