"""The coarse quantizer: k-means training on a sample, one or two levels, and assignment.

Two levels (coarse cells, each holding its own fine centroids) keep both the
assignment of 10M rows and the probe step cheap when `nlist` is large: a row or
query meets sqrt(nlist) coarse centroids plus the fine centroids of a few cells
instead of all `nlist`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: above this many lists the quantizer is trained and searched in two levels
TWO_LEVEL_MIN_NLIST = 4096
#: a row is assigned to the best fine centroid within this many best coarse cells
ASSIGN_CELLS = 8
#: up to this many lists a search scores all fine centroids (one matmul) instead of two levels
FLAT_PROBE_MAX_NLIST = 65536


@dataclass
class Quantizer:
    """Centroids ordered by coarse cell; `coarse_offsets[c]:coarse_offsets[c+1]` are cell c's lists."""

    centroids: np.ndarray  # (nlist, d) float32
    metric: str  # "l2" | "ip" | "cosine"
    coarse: np.ndarray | None = None  # (ncoarse, d) float32, or None for one level
    coarse_offsets: np.ndarray | None = None  # (ncoarse + 1,) int64

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def __post_init__(self) -> None:
        self._sq = (self.centroids**2).sum(1) if self.metric == "l2" else None
        if self.coarse is not None:
            self._csq = (self.coarse**2).sum(1) if self.metric == "l2" else None

    def _affinity(self, x: np.ndarray, c: np.ndarray, sq: np.ndarray | None) -> np.ndarray:
        s = x @ c.T
        if sq is not None:  # argmax of 2x.c - |c|^2 is the nearest centroid in L2
            s *= 2
            s -= sq
        return s

    def assign(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """The list of every row (int32), nearest centroid by the quantizer's rule.

        Rows go in chunks whose score block (chunk x nlist float32) stays near 16 MiB,
        so the assignment never holds a large matrix (it used to dominate build RSS).
        """
        if chunk is None:  # the widest score block: all lists, or the coarse cells and one cell's lists
            width = len(self.centroids) if self.coarse is None else max(
                len(self.coarse), int(np.diff(self.coarse_offsets).max()))
            chunk = int(min(65536, max(1024, (16 << 20) // (4 * max(width, 1)))))
        out = np.empty(len(x), dtype=np.int32)
        for a in range(0, len(x), chunk):
            xb = x[a : a + chunk]
            if self.coarse is None:
                out[a : a + len(xb)] = self._affinity(xb, self.centroids, self._sq).argmax(1)
                continue
            # the best fine centroid among the ASSIGN_CELLS best coarse cells: the coarse
            # ranking alone is noisy (a coarse centroid averages many clusters)
            t = min(ASSIGN_CELLS, len(self.coarse))
            cells = _topk_rows(self._affinity(xb, self.coarse, self._csq), t)
            best_s = np.full(len(xb), -np.inf, dtype=np.float32)
            best_l = np.zeros(len(xb), dtype=np.int32)
            off = self.coarse_offsets
            for c in np.unique(cells):
                rows = np.flatnonzero((cells == c).any(1))
                lo, hi = int(off[c]), int(off[c + 1])
                sq = None if self._sq is None else self._sq[lo:hi]
                sc = self._affinity(xb[rows], self.centroids[lo:hi], sq)
                j = sc.argmax(1)
                v = sc[np.arange(len(rows)), j]
                better = v > best_s[rows]
                best_s[rows[better]] = v[better]
                best_l[rows[better]] = lo + j[better]
            out[a : a + len(xb)] = best_l
        return out

    def probe_set(self, qv: np.ndarray, nprobe: int) -> np.ndarray:
        """The `nprobe` best lists of one query (1-D), as sorted unique list numbers.

        The search reads lists in file order, so it needs the set, not the ranking:
        one argpartition over the centroid scores, no per-row sort or gather.
        """
        nprobe = max(1, min(nprobe, self.nlist))
        if self.coarse is not None and self.nlist > FLAT_PROBE_MAX_NLIST:
            return np.unique(self.probe(qv[None, :], nprobe)[0])
        s = self.centroids @ qv
        if self._sq is not None:
            s *= 2
            s -= self._sq
        return top_k_set(s, nprobe)

    def probe(self, q: np.ndarray, nprobe: int, coarse_probe: int | None = None) -> np.ndarray:
        """The `nprobe` best lists for each query, (nq, nprobe) int64, best first."""
        nprobe = max(1, min(nprobe, self.nlist))
        if self.coarse is None or (coarse_probe is None and self.nlist <= FLAT_PROBE_MAX_NLIST):
            # scoring every fine centroid is one small matmul and ranks lists exactly
            s = self._affinity(q, self.centroids, self._sq)
            return _topk_rows(s, nprobe)
        off = self.coarse_offsets
        ncoarse = len(self.coarse)
        if coarse_probe is None:
            # enough cells to hold about 8x nprobe lists on average, at least 16
            per_cell = self.nlist / ncoarse
            coarse_probe = int(min(ncoarse, max(16, np.ceil(8 * nprobe / per_cell))))
        cs = _topk_rows(self._affinity(q, self.coarse, self._csq), coarse_probe)
        out = np.empty((len(q), nprobe), dtype=np.int64)
        for i in range(len(q)):
            cand = np.concatenate([np.arange(off[c], off[c + 1]) for c in cs[i]])
            sq = None if self._sq is None else self._sq[cand]
            s = self._affinity(q[i : i + 1], self.centroids[cand], sq)[0]
            m = min(nprobe, len(cand))
            best = cand[_topk_rows(s[None, :], m)[0]]
            if m < nprobe:  # too few lists in the chosen cells: pad by repeating
                best = np.resize(best, nprobe)
            out[i] = best
        return out


def top_k_set(s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array, ascending; ties at the cut go to the lowest index.

    np.partition plus one compare costs about half of np.argpartition (which
    builds and moves an index array) on the few thousand scores of a probe or
    a scan buffer, and a search calls it a few times per query.
    """
    n = len(s)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k == 1:
        return np.array([int(np.argmax(s))], dtype=np.int64)
    t = np.partition(s, n - k)[n - k]
    top = np.flatnonzero(s >= t)
    if len(top) < k:  # NaN scores: no threshold orders them; the old way does
        return np.sort(np.argpartition(-s, k - 1)[:k])
    if len(top) > k:  # ties at the threshold: all rows above it, then the first tied ones
        above = np.flatnonzero(s > t)
        tied = np.flatnonzero(s == t)[: k - len(above)]
        top = np.sort(np.concatenate([above, tied]))
    return top


def _topk_rows(s: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest per row, sorted best first."""
    n = s.shape[1]
    k = min(k, n)
    if k < n:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), s.shape).copy()
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def kmeans(
    x: np.ndarray,
    k: int,
    metric: str,
    iters: int = 12,
    seed: int = 0,
    method: str = "numpy",
    bar: Any = None,
    init: str = "k-means++",
) -> np.ndarray:
    """Train k centroids on x (already normalized for cosine) and return them as float32.

    `method="numpy"` is a plain Lloyd loop (BLAS assignment, sparse-matrix update);
    `"minibatch"` uses scikit-learn's MiniBatchKMeans. Empty clusters are reseeded
    from random rows. For cosine the centroids are renormalized each step.
    `init="k-means++"` seeds the numpy loop by k-means++ on a subsample (see
    `_seed_kmeanspp`); `"random"` starts from k random rows (the rule before issue 12).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if k <= 0:
        raise ValueError("k must be positive")
    rng = np.random.default_rng(seed)
    if n <= k:
        c = np.empty((k, x.shape[1]), dtype=np.float32)
        c[:n] = x
        if k > n:  # more lists than rows: pad with jittered copies so lists stay valid
            src = x[rng.integers(0, max(n, 1), k - n)] if n else rng.standard_normal((k, x.shape[1]))
            c[n:] = src + 1e-3 * rng.standard_normal(src.shape).astype(np.float32)
        return _maybe_normalize(c, metric)
    t0 = time.perf_counter()
    if method == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(
            n_clusters=k, init="random", batch_size=max(4096, 4 * k), n_init=1,
            max_iter=iters, random_state=seed,
        )
        km.fit(x)
        c = km.cluster_centers_.astype(np.float32)
        log.debug("minibatch k-means k=%d n=%d: %.2fs", k, n, time.perf_counter() - t0)
        return _maybe_normalize(c, metric)
    if method != "numpy":
        raise ValueError(f"unknown k-means method {method!r}")
    from scipy import sparse

    c = _seed_kmeanspp(x, k, rng) if init == "k-means++" else x[rng.choice(n, k, replace=False)].copy()
    for it in range(iters):
        # cosine: spherical k-means; l2 and ip: Euclidean k-means (as faiss trains IP lists)
        q = Quantizer(_maybe_normalize(c, metric), "ip" if metric == "cosine" else "l2")
        lab = q.assign(x)
        m = sparse.csr_matrix(
            (np.ones(n, dtype=np.float32), (lab, np.arange(n))), shape=(k, n)
        )
        counts = np.bincount(lab, minlength=k).astype(np.float32)
        sums = np.asarray(m @ x, dtype=np.float32)
        empty = counts == 0
        counts[empty] = 1
        c = sums / counts[:, None]
        if empty.any():
            c[empty] = x[rng.choice(n, int(empty.sum()), replace=False)]
        log.debug("k-means k=%d iter %d, %d empty", k, it, int(empty.sum()))
        if bar is not None:
            bar.update(1)
    log.debug("numpy k-means k=%d n=%d: %.2fs", k, n, time.perf_counter() - t0)
    return _maybe_normalize(c.astype(np.float32), metric)


#: k-means++ seeding runs on at most this many sample rows per centroid
KPP_ROWS_PER_CENTROID = 8


def _seed_kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k centroids drawn by k-means++ (each next row with probability proportional to its
    squared distance to the nearest one drawn so far) from KPP_ROWS_PER_CENTROID * k rows of x.

    Why: seeding with k random rows puts most centroids into the big clusters of skewed data, and
    12 Lloyd steps do not move them out. On Zipf-sized clusters (200k x 128, 512 lists) random
    seeds left lists that hold 0.990-0.996 of the true top 10 within the 16 best lists (faiss
    0.991-0.993); k-means++ seeds 1.000, at a lower k-means error. The subsample keeps the k
    sequential steps cheap (k matrix-vector products over 8k rows).
    """
    from threadpoolctl import threadpool_limits

    n, d = x.shape
    most = KPP_ROWS_PER_CENTROID * k
    sub = x if n <= most else x[rng.choice(n, most, replace=False)]
    m = len(sub)
    sq = np.einsum("ij,ij->i", sub, sub)
    c = np.empty((k, d), dtype=np.float32)
    j = int(rng.integers(m))
    d2 = np.full(m, np.inf, dtype=np.float32)
    t = np.empty(m, dtype=np.float32)
    with threadpool_limits(1):  # k small products: BLAS threads only add their wake-ups
        for i in range(k):
            c[i] = sub[j]
            np.matmul(sub, c[i], out=t)
            t *= -2
            t += sq
            t += sq[j]
            np.maximum(t, 0, out=t)
            np.minimum(d2, t, out=d2)
            if i + 1 < k:
                cs = np.cumsum(d2, dtype=np.float64)
                # no distance left (fewer distinct rows than k): any row; Lloyd reseeds empty lists
                j = (min(m - 1, int(np.searchsorted(cs, rng.random() * cs[-1], "right")))
                     if cs[-1] > 0 else int(rng.integers(m)))
    return c


def _maybe_normalize(c: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(c, dtype=np.float32)


def train_quantizer(
    sample: np.ndarray,
    nlist: int,
    metric: str,
    seed: int = 0,
    method: str = "numpy",
    iters: int = 12,
    two_level: bool | None = None,
    bar: Any = None,
) -> Quantizer:
    """Train one level, or two when `nlist` is large (coarse cells of about sqrt(nlist) lists).

    `bar` (a tqdm bar, total `train_steps(...)`) advances once per k-means iteration
    of the single level or of the coarse level, and once per coarse cell.
    """
    amet = "ip" if metric == "ip" else ("cosine" if metric == "cosine" else "l2")
    if two_level is None:
        two_level = nlist >= TWO_LEVEL_MIN_NLIST
    if not two_level or len(sample) < 4 * nlist:
        return Quantizer(kmeans(sample, nlist, amet, iters, seed, method, bar=bar), metric)
    ncoarse = int(round(np.sqrt(nlist)))
    coarse = kmeans(sample, ncoarse, amet, iters, seed, method, bar=bar)
    cq = Quantizer(coarse, metric)
    lab = cq.assign(sample)
    counts = np.bincount(lab, minlength=ncoarse)
    # fine lists per cell proportional to the cell's share of the sample, at least one
    share = counts / counts.sum() * nlist
    per = np.maximum(1, np.floor(share).astype(np.int64))
    while per.sum() < nlist:
        per[np.argmax(share - per)] += 1
    while per.sum() > nlist:
        per[np.argmax(np.where(per > 1, per - share, -np.inf))] -= 1
    cents = []
    order = np.argsort(lab, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for c in range(ncoarse):
        xs = sample[order[starts[c] : starts[c + 1]]]
        cents.append(kmeans(xs, int(per[c]), amet, iters, seed + 1 + c, method))
        if bar is not None:
            bar.update(1)
    offsets = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
    return Quantizer(np.concatenate(cents).astype(np.float32), metric, coarse, offsets)


def train_steps(n_sample: int, nlist: int, iters: int = 12, two_level: bool | None = None) -> int:
    """How many times `train_quantizer` advances its bar (for the bar's total)."""
    if two_level is None:
        two_level = nlist >= TWO_LEVEL_MIN_NLIST
    if not two_level or n_sample < 4 * nlist:
        return iters
    return iters + int(round(np.sqrt(nlist)))
