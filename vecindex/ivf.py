"""IVFIndex: an on-disk inverted-file index searched with explicit reads into reused buffers.

Layout (all in one directory, see format.py for the header):
  vectors   float32 rows in inverted-list order (exact scores, re-ranking)
  codes     int8 rows, per-dimension scaled, same order (the compact scan copy)
  ids       int64 external ids, same order
  sqnorms   float32 |x|^2, same order (l2 only)
  offsets   int64, list l holds rows offsets[l]:offsets[l+1]
  centroids / coarse / coarse_offsets   the quantizer (clustering.py)
  quant     float32 (2, d): per-dimension minimum and step of the int8 codes
  tail_*    rows added since the last compaction (float32, ids, list labels), scanned exactly
  deleted   int64 positions removed since the last compaction

A search probes `nprobe` lists, reads their int8 codes list by list into one
reused buffer (contiguous preads, so RSS does not grow with the bytes scanned),
keeps the best `rerank` candidates by approximate score, then re-reads those
rows in float32 and ranks them exactly.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vecindex import _kernels
from vecindex import format as fmt
from vecindex.clustering import (
    FLAT_PROBE_MAX_NLIST,
    Quantizer,
    top_k_set,
    train_quantizer,
    train_steps,
)
from vecindex.format import IndexExistsError, IndexFormatError, VecIndexError
from vecindex.io import as_rows, open_vectors

log = logging.getLogger(__name__)

try:  # the C kernel, when built (setup.py); imported here, not per call (a few microseconds each)
    from vecindex._csearch import search_batch as _c_search_batch
except ImportError:
    _c_search_batch = None
try:  # its single-call entry (a kernel built before it lacks it: searches then use search_batch)
    from vecindex._csearch import prepare as _c_prepare
    from vecindex._csearch import search_prepared as _c_search_prepared
except ImportError:
    _c_prepare = _c_search_prepared = None

METRICS = ("cosine", "ip", "l2")
_NO_PROBES = np.zeros((1, 0), np.int64)  # kernel argument: no lists given, score the centroids
_NO_POS = np.zeros(0, np.int64)  # kernel argument: no deleted / allowed positions
BUF_BYTES = int(os.environ.get("VECINDEX_BUF_BYTES", 512 << 10))  # one buffer fill: stays in L2
MAX_BUF_ROWS = 32768
BLOCK_ROWS = 4096  # rows converted to float32 at a time (stays in cache)
POSITIONS_CHUNK = 1 << 18  # stored ids looked up at a time by positions_of (~6 MiB of transients)
SCAN_INT8_MIN_BYTES = 128 << 20  # scan="auto": int8 scan copy above this much float32 data


def default_nlist(n: int) -> int:
    """Lists for n rows: one list (exact scan) below 10k rows, else sqrt(n) rounded to a power of two.

    sqrt(n) balances the probe step (nlist centroids) against the list scan
    (nprobe * n / nlist rows); a power of two keeps figures comparable.
    """
    if n < 10_000:
        return 1
    return int(2 ** round(np.log2(np.sqrt(n))))


def auto_scan(n: int, d: int) -> str:
    """scan="auto": the int8 copy when a compiled kernel is there (its scan is then about 4x
    cheaper than float32 at any size); on the numpy path only once the float32 rows exceed 128 MiB
    (below that numpy's int8-to-float32 conversion costs more than the smaller reads save)."""
    return "int8" if _kernels.KERNEL != "numpy" or n * d * 4 > SCAN_INT8_MIN_BYTES else "none"


def default_nprobe(nlist: int) -> int:
    """Probe about 1/16 of the lists (at least 8): recall@10 around 0.95 on clustered data."""
    return max(1, min(nlist, max(8, nlist // 16)))


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (x / n).astype(np.float32, copy=False)


#: a build phase shows its bar only once it has run this long (tqdm's `delay`)
PROGRESS_DELAY_S = 2.0


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, shown only when asked, on a terminal, after PROGRESS_DELAY_S."""
    from tqdm import tqdm

    on = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, disable=not on,
                leave=False, delay=PROGRESS_DELAY_S, file=sys.stderr)


class _Buffers(threading.local):
    """Per-thread scratch buffers, allocated once and reused by every search."""

    def __init__(self) -> None:
        self.codes: np.ndarray | None = None
        self.block = np.empty((BLOCK_ROWS, 1), dtype=np.float32)
        self.rows = 0
        self.scores = np.empty(MAX_BUF_ROWS, dtype=np.float32)
        self.sq = np.empty(MAX_BUF_ROWS, dtype=np.float32)

    def ensure_kernel(self, d: int, int8_scan: bool) -> None:
        """Buffers of the numba kernel (the C kernel allocates its own): the unused scan buffer is one row."""
        if getattr(self, "k_key", None) != (d, int8_scan):
            rows = int(min(MAX_BUF_ROWS, max(256, BUF_BYTES // (d * (1 if int8_scan else 4)))))
            self.k8 = np.empty((rows if int8_scan else 1, d), np.int8)
            self.kf = np.empty((1 if int8_scan else rows, d), np.float32)
            self.ksq = np.empty(rows, np.float32)
            self.krow = np.empty((256, d), np.float32)  # re-rank spans (RERANK_GAP, _numba_search)
            self.kid = np.empty(256, np.int64)  # id spans
            self.k_key = (d, int8_scan)

    def ensure(self, d: int, dtype: type) -> None:
        if self.codes is None or self.codes.shape[1] != d or self.codes.dtype != dtype:
            self.rows = int(min(MAX_BUF_ROWS, max(BLOCK_ROWS, BUF_BYTES // (d * np.dtype(dtype).itemsize))))
            self.codes = np.empty((self.rows, d), dtype=dtype)
            self.block = np.empty((BLOCK_ROWS, d), dtype=np.float32)


class IVFIndex:
    """An on-disk IVF index; build with `IVFIndex.build`, reopen with `IVFIndex.open`.

    Scores: cosine similarity and inner product are returned highest first;
    l2 returns squared Euclidean distances, smallest first. Missing hits
    (fewer than k rows in scope) have id -1.
    """

    def __init__(self, path: Path, header: dict[str, Any], owns_dir: bool = False) -> None:
        self.path = path
        self._owns_dir = owns_dir
        self._lock = threading.RLock()
        self._bufs = _Buffers()
        self._fds: dict[str, int] = {}
        self._numpy_only = False  # set while a build calibrates (see _calibrate_nprobe)
        self._load(header)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> IVFIndex:
        """Open a saved index; sizes and small-file checksums are checked first."""
        p = Path(path)
        return cls(p, fmt.read_header(p))

    def _file(self, logical: str) -> Path:
        return self.path / self._h["files"][logical]["name"]

    def _small(self, logical: str, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
        ent = self._h["files"].get(logical)
        if ent is None:
            return np.zeros(0 if shape is None else shape, dtype=dtype)
        a = np.fromfile(self.path / ent["name"], dtype=dtype, count=ent["bytes"] // np.dtype(dtype).itemsize)
        return a if shape is None else a.reshape(shape)

    def _load(self, h: dict[str, Any]) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._h = h
        d = self.dim = int(h["dim"])
        self.metric = h["metric"]
        if self.metric not in METRICS:
            raise IndexFormatError(f"{self.path}: unknown metric {self.metric!r}")
        self.n_main = int(h["n_main"])
        self.n_tail = int(h["n_tail"])
        self.scan = h["scan"]
        files = h["files"]
        row_bytes = {"vectors": 4 * d, "codes": d, "ids": 8, "sqnorms": 4,
                     "tail_vectors": 4 * d, "tail_ids": 8, "tail_labels": 4}
        for logical, rb in row_bytes.items():
            if logical in files:
                n = self.n_tail if logical.startswith("tail_") else self.n_main
                if files[logical]["bytes"] != n * rb:
                    raise IndexFormatError(
                        f"{self.path}: {logical} holds {files[logical]['bytes']} bytes, "
                        f"header counts {n} rows of {rb} (corrupted header)"
                    )
        nlist = int(h["nlist"])
        self.nlist = nlist
        self.offsets = self._small("offsets", np.int64)
        if nlist:
            cents = self._small("centroids", np.float32, (nlist, d))
            coarse = coarse_off = None
            if h.get("ncoarse"):
                coarse = self._small("coarse", np.float32, (int(h["ncoarse"]), d))
                coarse_off = self._small("coarse_offsets", np.int64)
            self.quantizer: Quantizer | None = Quantizer(cents, self.metric, coarse, coarse_off)
            if (len(self.offsets) != nlist + 1 or self.offsets[0] != 0
                    or self.offsets[-1] != self.n_main or np.any(np.diff(self.offsets) < 0)):
                raise IndexFormatError(f"{self.path}: inconsistent list offsets (corrupted)")
            if coarse_off is not None and (len(coarse_off) != int(h["ncoarse"]) + 1
                                           or coarse_off[-1] != nlist):
                raise IndexFormatError(f"{self.path}: inconsistent coarse offsets (corrupted)")
        else:
            self.quantizer = None
        self._c_args: tuple | None = None  # the C kernel's per-index arguments (_c_const)
        self._fast: tuple | bool | None = None  # the plain search's prepared kernel arguments (_fast_args)
        self._default_nprobe = int(h.get("default_nprobe", 1))
        q = self._small("quant", np.float32, (2, d)) if "quant" in files else None
        self.q_min, self.q_step = (q[0], q[1]) if q is not None else (None, None)
        self.deleted = np.sort(self._small("deleted", np.int64))
        if len(self.deleted) and (self.deleted[0] < 0 or self.deleted[-1] >= self.n_main + self.n_tail):
            raise IndexFormatError(f"{self.path}: deleted positions out of range (corrupted)")
        self.tail_ids = self._small("tail_ids", np.int64)[: self.n_tail]
        self.tail_labels = self._small("tail_labels", np.int32)[: self.n_tail]
        if self.tail_labels.size and (self.tail_labels.min() < 0 or self.tail_labels.max() >= max(nlist, 1)):
            raise IndexFormatError(f"{self.path}: tail list labels out of range (corrupted)")
        for logical in ("vectors", "codes", "ids", "sqnorms", "tail_vectors"):
            if logical in files:
                self._fds[logical] = os.open(self._file(logical), os.O_RDONLY)

    def close(self) -> None:
        """Release file descriptors (and a temporary directory built without a path)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._c_args = self._fast = None  # they hold the closed descriptors' numbers
        if self._owns_dir:
            shutil.rmtree(self.path, ignore_errors=True)
            self._owns_dir = False

    def __enter__(self) -> IVFIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __len__(self) -> int:
        return self.n_main + self.n_tail - len(self.deleted)

    @property
    def ntotal(self) -> int:
        """Live rows (added minus removed)."""
        return len(self)

    def info(self) -> dict[str, Any]:
        """Header fields worth showing (`vecindex info`)."""
        h = self._h
        sizes = np.diff(self.offsets) if self.nlist else np.zeros(0)
        return {
            "path": str(self.path), "format_version": h["format_version"], "dim": self.dim,
            "metric": self.metric, "nlist": self.nlist, "ncoarse": int(h.get("ncoarse") or 0),
            "rows": len(self), "main_rows": self.n_main, "tail_rows": self.n_tail,
            "deleted": len(self.deleted), "scan": self.scan,
            "default_nprobe": int(h.get("default_nprobe", 1)),
            "default_nprobe_chosen_by": (
                "calibrated at build: the smallest nprobe of a 1.5x ladder at which {queries} held-out "
                "sample rows reach recall@10 >= {target} ({recall_at_10})".format(**h["nprobe_calibration"])
                if h.get("nprobe_calibration") else
                ("given at build" if h.get("nprobe_given") else "rule: nlist/16, at least 8")),
            "list_size_max": int(sizes.max()) if len(sizes) else 0,
            "list_size_mean": float(sizes.mean()) if len(sizes) else 0.0,
            "bytes_on_disk": sum(e["bytes"] for e in h["files"].values()),
        }

    def verify(self) -> None:
        """Check the CRC32 of every data file, the large ones included."""
        fmt.verify_files(self.path, self._h)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str] | None,
        data: np.ndarray | str | os.PathLike[str],
        metric: str = "cosine",
        nlist: int | None = None,
        ids: np.ndarray | None = None,
        dim: int | None = None,
        nprobe: int | None = None,
        sample_size: int | None = None,
        kmeans_method: str = "numpy",
        kmeans_iters: int = 12,
        scan: str = "auto",
        two_level: bool | None = None,
        seed: int = 0,
        progress: bool = True,
        overwrite: bool = False,
    ) -> IVFIndex:
        """Build an index from an array or a vector file into directory `path`.

        `path=None` builds into a temporary directory (removed on close; `save` copies it).
        `sample_size` defaults to min(n, 64*nlist, 1M) training rows.
        """
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        if scan not in ("auto", "int8", "none"):
            raise ValueError("scan must be 'auto', 'int8' or 'none'")
        x = open_vectors(data, dim) if isinstance(data, (str, os.PathLike)) else data
        x = x if isinstance(x, np.memmap) or getattr(x, "ndim", 0) == 2 else as_rows(x)
        if x.ndim != 2:
            raise ValueError("data must be a 2-D array")
        n, d = x.shape
        if d == 0:
            raise ValueError("vectors must have at least one dimension")
        if ids is None:
            ids_arr = np.arange(n, dtype=np.int64)
        else:
            ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(ids_arr) != n:
                raise ValueError(f"{len(ids_arr)} ids for {n} vectors")
        if scan == "auto":
            scan = auto_scan(n, d)
        owns = path is None
        p = Path(tempfile.mkdtemp(prefix="vecindex-")) if owns else Path(path)
        _prepare_dir(p, overwrite)
        t0 = time.perf_counter()
        nl = default_nlist(n) if nlist is None else int(nlist)
        if n and nl <= 0:
            raise ValueError("nlist must be positive")
        nl = min(nl, n) if n else 0
        rng = np.random.default_rng(seed)

        mm = getattr(x, "_mmap", None)
        chunk = build_chunk_rows(d)

        def rows(idx: np.ndarray | slice) -> np.ndarray:
            r = np.array(x[idx], dtype=np.float32)  # a copy: the map's pages are dropped next
            _drop_pages(mm)
            return _normalize(r) if metric == "cosine" else r

        quant: Quantizer | None = None
        cal: _Calibration | None = None
        if nl:
            m = min(n, sample_size or max(min(64 * nl, 1_000_000), min(n, 10_000)))
            samp = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
            sample = _gather_sorted(rows, samp, chunk)
            tk = time.perf_counter()
            with _progress(train_steps(m, nl, kmeans_iters, two_level), "train", progress) as bar:
                quant = train_quantizer(sample, nl, metric, seed, kmeans_method, kmeans_iters, two_level,
                                        bar=bar)
            log.info("trained %d lists (%s) on %d rows in %.1fs", nl,
                     "two-level" if quant.coarse is not None else "flat", m, time.perf_counter() - tk)
            cal_n = min(CALIBRATE_QUERIES, n // 50) if nprobe is None and nl > 1 else 0
            if cal_n:  # rows outside the training sample when there are any: held-out queries
                rest = np.setdiff1d(np.arange(n), samp, assume_unique=True) if m < n else samp
                cpos = np.sort(rng.choice(rest, min(cal_n, len(rest)), replace=False))
                cal = _Calibration(_gather_sorted(rows, cpos, chunk), cpos, metric)
            del sample
        labels = np.empty(n, dtype=np.int32)
        lo = np.zeros(d, np.float32) if not n else None
        hi = np.zeros(d, np.float32) if not n else None
        with _progress(n, "assign", progress) as bar:
            for a in range(0, n, chunk):
                xb = rows(slice(a, a + chunk))
                labels[a : a + len(xb)] = quant.assign(xb) if quant is not None else 0
                if cal is not None:
                    cal.update(a, xb)
                lo = xb.min(0) if lo is None else np.minimum(lo, xb.min(0))
                hi = xb.max(0) if hi is None else np.maximum(hi, xb.max(0))
                bar.update(len(xb))
        gen = _old_gen(p) + 1  # a rebuild in place never reuses a published file name
        header = {"dim": d, "metric": metric, "nlist": nl, "gen": gen, "tail_epoch": gen,
                  "n_tail": 0, "scan": scan, "files": {},
                  "default_nprobe": int(nprobe or (default_nprobe(nl) if nl else 1)),
                  "build": {"kmeans": kmeans_method, "seed": seed}}
        if nprobe:
            header["nprobe_given"] = True
        if quant is not None:
            _write_quantizer(p, header, quant)
        _write_lists(p, header, rows, ids_arr, labels, nl, progress, lo=lo, hi=hi)
        fmt.write_header(p, header)
        fmt.remove_unreferenced(p, header)
        ix = cls(p, fmt.read_header(p), owns_dir=owns)
        if cal is not None:
            tc = time.perf_counter()
            c = _calibrate_nprobe(ix, cal, ids_arr)
            h = _copy_header(ix._h)
            h["default_nprobe"] = c["nprobe"]
            h["nprobe_calibration"] = c
            ix._publish(h)
            log.info("default nprobe %d: recall@10 %.3f on %d sample rows (%.1fs)", c["nprobe"],
                     c["recall_at_10"], c["queries"], time.perf_counter() - tc)
        log.info("built %s: %d rows, %d lists in %.1fs", p, n, nl, time.perf_counter() - t0)
        return ix

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> IVFIndex:
        """Copy the index to `path` (files first, header last) and return it opened there."""
        dst = Path(path)
        if dst.resolve() == self.path.resolve():
            return self
        _prepare_dir(dst, overwrite)
        h = dict(self._h)
        h["files"] = {}
        for logical, ent in self._h["files"].items():
            tmp = dst / f".tmp-{ent['name']}"
            with open(self.path / ent["name"], "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 8 << 20)
                out.truncate(ent["bytes"])
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst / ent["name"])
            h["files"][logical] = dict(ent)
        fmt.write_header(dst, h)
        return IVFIndex.open(dst)

    # ------------------------------------------------------------------ updating
    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Append rows with external int64 ids; searchable as soon as this returns.

        New rows go to an exactly scanned tail; when the tail outgrows
        max(20k, 5% of the main rows) it is merged into the lists (`compact`).
        Ids default to consecutive numbers after the largest id in the index.
        """
        x = as_rows(vectors, self.dim)
        if ids is None:
            start = self._max_id() + 1
            ids_arr = np.arange(start, start + len(x), dtype=np.int64)
        else:
            ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(ids_arr) != len(x):
                raise ValueError(f"{len(ids_arr)} ids for {len(x)} vectors")
        if not len(x):
            return
        if self.metric == "cosine":
            x = _normalize(x)
        with self._lock:
            h = _copy_header(self._h)
            labels = (self.quantizer.assign(x) if self.quantizer is not None
                      else np.zeros(len(x), np.int32))
            epoch = h["tail_epoch"]
            for logical, arr in (("tail_vectors", x), ("tail_ids", ids_arr),
                                 ("tail_labels", labels.astype(np.int32))):
                ent = h["files"].get(logical) or {
                    "name": f"d-{logical}-{epoch}.{_EXT[logical]}", "bytes": 0, "crc32": 0}
                fp = self.path / ent["name"]
                with open(fp, "ab") as f:
                    f.truncate(ent["bytes"])  # drop a torn append left by a crash
                    b = np.ascontiguousarray(arr).tobytes()
                    f.write(b)
                    f.flush()
                    os.fsync(f.fileno())
                crc = zlib.crc32(b, ent["crc32"]) if ent.get("crc32") is not None else None
                nb = ent["bytes"] + len(b)
                if crc is not None and nb > fmt.CRC_LIMIT:
                    crc = None
                h["files"][logical] = {"name": ent["name"], "bytes": nb, "crc32": crc}
            h["n_tail"] = self.n_tail + len(x)
            self._publish(h)
        if self.n_tail > max(20_000, self.n_main // 20):
            self.compact()

    def _max_id(self) -> int:
        m = int(self.tail_ids.max()) if len(self.tail_ids) else -1
        if self.n_main:
            for _a, chunk in self._iter_ids():
                m = max(m, int(chunk.max()))
        return m

    def _iter_ids(self, chunk: int = 1 << 20):
        for a in range(0, self.n_main, chunk):
            n = min(chunk, self.n_main - a)
            yield a, _pread_array(self._fds["ids"], np.int64, n, a * 8)

    def positions_of(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Sorted positions (main rows, then tail rows) holding any of `ids`, deleted ones excluded.

        Each block of stored ids is looked up in the sorted wanted ids (a binary search), not
        matched with np.isin, whose sort of both arrays together cost ~100 MiB of transient
        memory at a million ids each; ids already sorted and unique are not copied."""
        want = _sorted_unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        found = []
        if len(want) and self.n_main:
            for a, chunk in self._iter_ids(POSITIONS_CHUNK):
                found.append(a + np.flatnonzero(_member(chunk, want)))
        if len(want) and self.n_tail:
            found.append(self.n_main + np.flatnonzero(_member(self.tail_ids, want)))
        pos = np.concatenate(found) if found else np.zeros(0, np.int64)
        if len(self.deleted):
            pos = pos[~_member(pos, self.deleted)]     # deleted: sorted (np.union1d)
        return pos.astype(np.int64, copy=False)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove every row with one of these ids; returns how many rows were removed."""
        with self._lock:
            pos = self.positions_of(ids)
            if not len(pos):
                return 0
            h = _copy_header(self._h)
            h["gen"] += 1
            dele = np.union1d(self.deleted, pos).astype(np.int64)
            h["files"]["deleted"] = fmt.write_array(self.path, f"d-deleted-{h['gen']}.i64", dele)
            self._publish(h)
        if len(self.deleted) > max(20_000, (self.n_main + self.n_tail) // 10):
            self.compact()
        return len(pos)

    def compact(self, retrain: bool | None = None, progress: bool = False) -> None:
        """Merge the tail into the lists and drop removed rows (a full rewrite, published atomically).

        `retrain=None` retrains the quantizer when there is none or the index has
        grown past 4x the rows it was trained for.
        """
        with self._lock:
            n = self.n_main + self.n_tail
            keep = np.ones(n, dtype=bool)
            keep[self.deleted] = False
            live = int(keep.sum())
            if retrain is None:
                retrain = self.quantizer is None or (
                    live >= 10_000 and self.nlist < default_nlist(live) // 4)
            vec_main = (np.memmap(self._file("vectors"), np.float32, "r", shape=(self.n_main, self.dim))
                        if self.n_main else np.zeros((0, self.dim), np.float32))
            vec_tail = (np.memmap(self._file("tail_vectors"), np.float32, "r", shape=(self.n_tail, self.dim))
                        if self.n_tail else np.zeros((0, self.dim), np.float32))
            ids_main = (np.fromfile(self._file("ids"), np.int64, self.n_main)
                        if self.n_main else np.zeros(0, np.int64))
            ids_all = np.concatenate([ids_main, self.tail_ids])[keep]
            src = np.flatnonzero(keep)

            def rows(idx: np.ndarray | slice) -> np.ndarray:
                g = src[idx]
                out = np.empty((len(g), self.dim), np.float32)
                inm = g < self.n_main
                out[inm] = vec_main[g[inm]]
                out[~inm] = vec_tail[g[~inm] - self.n_main]
                _drop_pages(getattr(vec_main, "_mmap", None))
                _drop_pages(getattr(vec_tail, "_mmap", None))
                return out

            h = _copy_header(self._h)
            h["gen"] += 1
            h["tail_epoch"] += 1
            for k in ("tail_vectors", "tail_ids", "tail_labels", "deleted"):
                h["files"].pop(k, None)
            h["n_tail"] = 0
            if retrain:
                nl = min(default_nlist(live), live) if live else 0
                quant = None
                if nl:
                    rng = np.random.default_rng(self._h["build"].get("seed", 0))
                    m = min(live, max(min(64 * nl, 1_000_000), min(live, 10_000)))
                    samp = np.sort(rng.choice(live, m, replace=False))
                    quant = train_quantizer(_gather_sorted(rows, samp, 262144), nl, self.metric)
                    for k in ("centroids", "coarse", "coarse_offsets"):
                        h["files"].pop(k, None)
                    _write_quantizer(self.path, h, quant, h["gen"])
                labels = np.zeros(live, np.int32)
                if quant is not None:
                    for a in range(0, live, 262144):
                        labels[a : a + 262144] = quant.assign(rows(slice(a, a + 262144)))
                h["nlist"] = nl
                h["default_nprobe"] = default_nprobe(nl) if nl else 1
            else:
                nl = self.nlist
                main_labels = np.repeat(np.arange(nl, dtype=np.int32), np.diff(self.offsets))
                labels = np.concatenate([main_labels, self.tail_labels])[keep]
            _write_lists(self.path, h, rows, ids_all, labels, nl, progress, h["gen"])
            self._publish(h)
            log.info("compacted %s: %d rows, %d lists", self.path, live, nl)

    def _publish(self, h: dict[str, Any]) -> None:
        fmt.write_header(self.path, h)
        self._load(fmt.read_header(self.path))
        fmt.remove_unreferenced(self.path, self._h)

    # ------------------------------------------------------------------ searching
    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        allowed_ids: np.ndarray | None = None,
        threads: int = 1,
        exact_limit: int = 50_000,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for each query: (scores, ids), each (nq, k).

        `rerank` is how many int8-scan candidates are re-scored exactly (default
        max(4k, 40)). `allowed_ids` restricts hits to those ids: when at most
        `exact_limit` of them are in the index they are scored exactly, else the
        IVF scan skips the others and falls back to exact when fewer than k are found.
        `threads` > 1 splits a batch over a thread pool.
        """
        q = as_rows(queries, self.dim)
        k = int(k)
        if k <= 0:
            raise ValueError("k must be positive")
        if allowed_ids is None and _kernels.KERNEL == "c":
            with self._lock:  # one call; the kernel runs `threads` threads itself, without the GIL
                fast = self._fast if self._fast is not None else self._fast_args()
                if fast:  # the common case, in few Python steps: its cost is paid per call
                    prepared, flags, nlist, int8_scan = fast
                    nprobe = int(nprobe or self._default_nprobe)
                    nq = len(q)
                    scores = np.empty((nq, k), np.float32)
                    out_ids = np.empty((nq, k), np.int64)
                    self._check_rc(_c_search_prepared(
                        prepared, flags, 1 if nprobe < 1 else nlist if nprobe > nlist else nprobe, q,
                        max(int(rerank or max(4 * k, 40)), k) if int8_scan else k, k, scores, out_ids,
                        1 if threads < 1 else 64 if threads > 64 else int(threads)))
                    return scores, out_ids
        nq = len(q)
        if not self._fds and self.n_main:
            raise VecIndexError(f"{self.path}: the index is closed")
        nprobe = int(nprobe or self._h.get("default_nprobe", 1))
        rerank = int(rerank or max(4 * k, 40))
        allowed_pos = None
        if allowed_ids is not None:
            allowed_pos = self.positions_of(allowed_ids)
        scores = np.full((nq, k), np.inf if self.metric == "l2" else -np.inf, dtype=np.float32)
        out_ids = np.full((nq, k), -1, dtype=np.int64)

        exact_only = allowed_pos is not None and len(allowed_pos) <= exact_limit
        if (_kernels.KERNEL != "numpy" and not (self._numpy_only and _kernels.KERNEL == "numba")
                and not exact_only and self.n_main and self.quantizer is not None):
            with self._lock:  # q as given: the kernel normalizes (cosine)
                self._search_compiled(q, k, nprobe, rerank, allowed_pos, threads, scores, out_ids)
            return scores, out_ids
        if self.metric == "cosine":
            q = _normalize(q)

        def one(i: int) -> None:
            if exact_only:
                s, pos = self._exact_positions(q[i], allowed_pos, k)
            else:
                s, pos = self._search_one(q[i], k, nprobe, rerank, allowed_pos)
                if allowed_pos is not None and len(pos) < min(k, len(allowed_pos)):
                    s, pos = self._exact_positions(q[i], allowed_pos, k)
            m = len(pos)
            out_ids[i, :m] = self._ids_at(pos)
            scores[i, :m] = -s if self.metric == "l2" else s

        with self._lock:
            if threads > 1 and nq > 1:
                from threadpoolctl import threadpool_limits

                # one BLAS thread per worker: nested BLAS threads only fight over the cores
                with threadpool_limits(1), ThreadPoolExecutor(threads) as ex:
                    list(ex.map(one, range(nq)))
            else:
                for i in range(nq):
                    one(i)
        return scores, out_ids

    def _two_level_probe(self) -> bool:
        """Lists are picked in Python by the two-level quantizer (else the kernel scores every centroid)."""
        quant = self.quantizer
        return quant is not None and quant.coarse is not None and self.nlist > FLAT_PROBE_MAX_NLIST

    def _c_const(self) -> tuple:
        """The C kernel's per-index arguments (files, offsets, centroids transposed, quantization,
        deleted positions), made once per load: building them per call was half its cost."""
        if self._c_args is None:
            quant = self.quantizer
            assert quant is not None
            d = self.dim
            int8_scan = self.scan != "none"
            fds = self._fds
            zeros = np.zeros(d, np.float32)
            self._c_args = (
                fds["codes" if int8_scan else "vectors"], fds["vectors"], fds.get("sqnorms", -1), fds["ids"],
                self.offsets, _centroid_panels(quant.centroids),
                quant._sq if quant._sq is not None else np.zeros(0, np.float32),
                self.q_min if int8_scan else zeros, self.q_step if int8_scan else zeros, self.deleted)
        return self._c_args

    def _c_flags(self) -> int:
        """The kernel's mode bits: 1 int8 scan, 2 l2, 4 cosine (see _csearch.c)."""
        return (self.scan != "none") | (self.metric == "l2") << 1 | (self.metric == "cosine") << 2

    def _run_batches(self, run: Callable[[int, int], None], nq: int, threads: int) -> None:
        """run(a, b) over the batch, split over `threads` workers (the kernels release the GIL)."""
        if threads > 1 and nq > 1:
            step = max(1, -(-nq // (4 * threads)))
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(lambda a: run(a, min(nq, a + step)), range(0, nq, step)))
        else:
            run(0, nq)

    def _check_rc(self, rc: int) -> None:
        if rc != 0:
            raise IndexFormatError(f"{self.path}: index file shorter than its header says "
                                   "(truncated while open?)")

    def _fast_args(self) -> tuple | bool:
        """(prepared kernel arguments, flags, nlist, int8 scan) of the plain search, made once per
        load: the C kernel alone, no tail to merge, flat probing (the kernel writes every score and
        id, missing hits included: flag 16); False, also kept until the next load, when the index
        needs more (or is closed/empty)."""
        if (self._fds and self.n_main and not self.n_tail and self.quantizer is not None
                and not self._two_level_probe() and _c_prepare is not None):
            self._fast = (_c_prepare(*self._c_const()), self._c_flags() | 16, self.nlist, self.scan != "none")
        else:
            self._fast = False
        return self._fast

    def _search_compiled(
        self, q: np.ndarray, k: int, nprobe: int, rerank: int, allowed_pos: np.ndarray | None,
        threads: int, scores: np.ndarray, out_ids: np.ndarray,
    ) -> None:
        """The compiled path (C or numba, no GIL) with a tail or an id filter or two-level probes:
        a batch per call, split over `threads` workers, then the tail merged in Python."""
        nq, d = q.shape
        int8_scan = self.scan != "none"
        l2 = self.metric == "l2"
        quant = self.quantizer
        assert quant is not None
        nprobe = max(1, min(nprobe, self.nlist))
        cosine = self.metric == "cosine"
        probes = _NO_PROBES
        if self._two_level_probe():
            probes = quant.probe(_normalize(q) if cosine else q, nprobe)
        keep = max(rerank, k) if int8_scan else k
        allowed = allowed_pos if allowed_pos is not None else _NO_POS
        s_int = np.empty((nq, k), np.float32)
        pos = np.empty((nq, k), np.int64)

        if _kernels.KERNEL == "c":
            const = self._c_const()
            flags = self._c_flags() | (allowed_pos is not None) << 3

            self._check_rc(_c_search_batch(flags, *const, probes, nprobe, q, keep, k, allowed, s_int, pos,
                                        out_ids, min(max(1, threads), 64)))
        else:
            fds = self._fds
            qmin = self.q_min if int8_scan else np.zeros(d, np.float32)
            qstep = self.q_step if int8_scan else np.zeros(d, np.float32)
            csq = quant._sq if quant._sq is not None else np.zeros(0, np.float32)

            def run(a: int, b: int) -> None:
                bufs = self._bufs
                bufs.ensure_kernel(d, int8_scan)
                self._check_rc(_kernels.numba_search_batch(
                    fds["codes" if int8_scan else "vectors"], fds["vectors"], fds.get("sqnorms", -1),
                    fds["ids"], int8_scan, l2, cosine, self.offsets, quant.centroids, csq, probes[a:b],
                    nprobe, q[a:b], qmin, qstep, keep, k, self.deleted, allowed, allowed_pos is not None,
                    bufs.k8, bufs.kf, bufs.ksq, bufs.krow, bufs.kid, s_int[a:b], pos[a:b], out_ids[a:b]))

            self._run_batches(run, nq, threads)
        if not self.n_tail and allowed_pos is None:
            valid = pos >= 0
            scores[valid] = (-s_int if l2 else s_int)[valid]
            return
        if cosine:
            q = _normalize(q)
        for i in range(nq):
            m = int((pos[i] >= 0).sum())
            s, p = s_int[i, :m], pos[i, :m]
            if self.n_tail:
                ts, tp = self._scan_tail(q[i], k, allowed_pos)
                s, p = _merge_topk(s, p, ts, tp, k)
            if allowed_pos is not None and len(p) < min(k, len(allowed_pos)):
                s, p = self._exact_positions(q[i], allowed_pos, k)
            if self.n_tail or allowed_pos is not None:
                m = len(p)
                out_ids[i, :m] = self._ids_at(p)
                out_ids[i, m:] = -1
            scores[i, :m] = -s if l2 else s

    # Internally every score is "higher is better": l2 uses -|q-x|^2.
    def _exact(self, qv: np.ndarray, x: np.ndarray) -> np.ndarray:
        if self.metric == "l2":
            diff = x - qv
            return -np.einsum("ij,ij->i", diff, diff)
        return x @ qv

    def _rows_at(self, pos: np.ndarray) -> np.ndarray:
        """float32 rows at sorted positions (main rows, then tail rows): one pread per run.

        Not a memory map: mapping even a few hundred scattered rows maps whole
        page-cache folios (fault-around, large folios) and RSS jumps by tens of MiB.
        """
        d = self.dim
        rb = 4 * d
        chunks: list[bytes] = []
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos):
            brk = np.flatnonzero((np.diff(pos) != 1) | (pos[1:] == self.n_main)) + 1
            starts = np.concatenate([[0], brk])
            ends = np.append(brk, len(pos))
            fd_main = self._fds.get("vectors")
            fd_tail = self._fds.get("tail_vectors")
            for st, en in zip(pos[starts].tolist(), (ends - starts).tolist(), strict=True):
                if st < self.n_main:
                    chunks.append(os.pread(fd_main, en * rb, st * rb))
                else:
                    chunks.append(os.pread(fd_tail, en * rb, (st - self.n_main) * rb))
        buf = b"".join(chunks)
        if len(buf) != len(pos) * rb:
            raise IndexFormatError(f"{self.path}: vectors file shorter than its header says")
        return np.frombuffer(buf, dtype=np.float32).reshape(len(pos), d).copy()

    def _ids_at(self, pos: np.ndarray) -> np.ndarray:
        """Ids at positions: one 8-byte pread per main row (k of them per query)."""
        out = np.empty(len(pos), dtype=np.int64)
        fd, n_main = self._fds.get("ids"), self.n_main
        for i, p in enumerate(pos.tolist()):
            if p < n_main:
                b = os.pread(fd, 8, p * 8)
                if len(b) != 8:
                    raise IndexFormatError(f"{self.path}: ids file shorter than its header says")
                out[i] = int.from_bytes(b, sys.byteorder, signed=True)
            else:
                out[i] = self.tail_ids[p - n_main]
        return out

    def _exact_positions(self, qv: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the given sorted positions, read in bounded chunks."""
        best_s = np.zeros(0, np.float32)
        best_p = np.zeros(0, np.int64)
        for a in range(0, len(pos), 16384):
            pp = pos[a : a + 16384]
            s = self._exact(qv, self._rows_at(pp))
            best_s, best_p = _merge_topk(best_s, best_p, s, pp, k)
        return best_s, best_p

    def _search_one(
        self, qv: np.ndarray, k: int, nprobe: int, rerank: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        cand_s = np.zeros(0, np.float32)
        cand_p = np.zeros(0, np.int64)
        exact_scan = self.scan == "none"
        keep = k if exact_scan else rerank
        if self.n_main and self.quantizer is not None:
            lists = self.quantizer.probe_set(qv, nprobe)  # sorted by list number = by file offset
            starts = self.offsets[lists]
            lens = self.offsets[lists + 1] - starts
            sel = lens > 0
            cand_s, cand_p = self._scan_lists(qv, starts[sel], lens[sel], keep, exact_scan, allowed)
        if not exact_scan and len(cand_p):
            order = np.argsort(cand_p)
            cand_p = cand_p[order]
            cand_s = self._exact(qv, self._rows_at(cand_p))
        if self.n_tail:
            ts, tp = self._scan_tail(qv, k, allowed)
            cand_s = np.concatenate([cand_s, ts])
            cand_p = np.concatenate([cand_p, tp])
        return _merge_topk(np.zeros(0, np.float32), np.zeros(0, np.int64), cand_s, cand_p, k)

    def _scan_lists(
        self, qv: np.ndarray, starts: np.ndarray, lens: np.ndarray, keep: int,
        exact_scan: bool, allowed: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        d = self.dim
        b = self._bufs
        b.ensure(d, np.float32 if exact_scan else np.int8)
        buf = b.codes
        cap = b.rows
        l2 = self.metric == "l2"
        if exact_scan:
            fd, rb = self._fds["vectors"], 4 * d
            qs, const = qv, 0.0
        else:
            fd, rb = self._fds["codes"], d
            # x ~ min + step*(code+128)  =>  q.x ~ (q*step).code + q.(min + 128 step)
            qs = (qv * self.q_step).astype(np.float32)
            const = float(qv @ (self.q_min + 128 * self.q_step))
        cand_s: list[np.ndarray] = []
        cand_p: list[np.ndarray] = []
        ncand = 0
        thr = -np.inf  # the keep-th best score seen so far (updated when candidates are pruned)
        seg_b: list[int] = []  # buffer row where each segment starts
        seg_g: list[int] = []  # its global position
        fill = 0

        def flush() -> None:
            nonlocal fill, ncand, thr
            if not fill:
                return
            s = b.scores[:fill]
            if exact_scan and l2:
                s[:] = self._exact(qv, buf[:fill])
            elif exact_scan:  # float32 rows: one BLAS call over the whole buffer
                np.matmul(buf[:fill], qs, out=s)
            else:
                for a in range(0, fill, BLOCK_ROWS):
                    m = min(BLOCK_ROWS, fill - a)
                    blk = b.block[:m]
                    blk[...] = buf[a : a + m]
                    np.matmul(blk, qs, out=s[a : a + m])
                if not exact_scan:
                    s += const
                    if l2:  # -|q-x|^2 + |q|^2 = 2 q.x - |x|^2
                        s *= 2
                        for sb, sg, sl in _segments(seg_b, seg_g, fill):
                            _pread_into(self._fds["sqnorms"], b.sq[sb : sb + sl], sg * 4)
                        s -= b.sq[:fill]
            need_pos = len(self.deleted) or allowed is not None
            if need_pos:
                pos_all = _positions(seg_b, seg_g, fill)
                bad = np.zeros(fill, dtype=bool)
                if len(self.deleted):
                    bad |= _member(pos_all, self.deleted)
                if allowed is not None:
                    bad |= ~_member(pos_all, allowed)
                s[bad] = -np.inf
            # only rows that beat the keep-th best so far can enter: a cheap compare
            # first, a partial sort of the survivors, pruning (no full sort) now and then
            top = np.flatnonzero(s > thr)
            if len(top) > keep:
                top = top[top_k_set(s[top], keep)]
            if len(top):
                cand_s.append(s[top].copy())
                cand_p.append(_buffer_to_global(top, seg_b, seg_g))
                ncand += len(top)
                # prune once keep candidates exist (the threshold then rejects most rows
                # of later buffers by one compare) and again whenever 4x keep pile up
                if ncand >= 4 * keep or (ncand >= keep and thr == -np.inf):
                    a_s, a_p = np.concatenate(cand_s), np.concatenate(cand_p)
                    part = top_k_set(a_s, keep)
                    cand_s[:], cand_p[:] = [a_s[part]], [a_p[part]]
                    ncand = keep
                    thr = float(a_s[part].min())
            fill = 0
            seg_b.clear()
            seg_g.clear()

        bufb = memoryview(buf).cast("B")  # one byte view per query, sliced per list
        for st, ln in zip(starts.tolist(), lens.tolist(), strict=False):
            done = 0
            while done < ln:
                m = min(ln - done, cap - fill)
                mv = bufb[fill * rb : (fill + m) * rb]
                if os.preadv(fd, [mv], (st + done) * rb) != len(mv):  # short read: finish it
                    _pread_into(fd, buf[fill : fill + m], (st + done) * rb)
                seg_b.append(fill)
                seg_g.append(st + done)
                fill += m
                done += m
                if fill == cap:
                    flush()
        flush()
        if not cand_s:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return _merge_topk(np.zeros(0, np.float32), np.zeros(0, np.int64),
                           np.concatenate(cand_s), np.concatenate(cand_p), keep)

    def _scan_tail(self, qv: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        best_s = np.zeros(0, np.float32)
        best_p = np.zeros(0, np.int64)
        chunk = 8192
        buf = np.empty((min(chunk, self.n_tail), self.dim), np.float32)
        for a in range(0, self.n_tail, chunk):
            m = min(chunk, self.n_tail - a)
            _pread_into(self._fds["tail_vectors"], buf[:m], a * 4 * self.dim)
            s = self._exact(qv, buf[:m])
            pos = self.n_main + a + np.arange(m, dtype=np.int64)
            ok = np.ones(m, dtype=bool)
            if len(self.deleted):
                ok &= ~_member(pos, self.deleted)
            if allowed is not None:
                ok &= _member(pos, allowed)
            best_s, best_p = _merge_topk(best_s, best_p, s[ok], pos[ok], k)
        return best_s, best_p


#: `default_nprobe` is calibrated at build time to reach this recall@10 on held-out sample rows
#: (a margin over the 0.95 promised: 200 queries measure recall to about +-0.01)
CALIBRATE_RECALL = 0.965
CALIBRATE_QUERIES = 200
CALIBRATE_K = 10


class _Calibration:
    """Exact neighbours of a few sample rows, gathered during the build's pass over the data.

    The queries are rows of the data itself; each one's own row is left out of its
    neighbours (it would be found trivially), so they stand in for held-out queries.
    """

    def __init__(self, q: np.ndarray, pos: np.ndarray, metric: str) -> None:
        self.q, self.pos, self.l2 = q, pos, metric == "l2"
        kk = CALIBRATE_K + 1
        self.best_s = np.full((len(q), kk), -np.inf, np.float32)
        self.best_p = np.full((len(q), kk), -1, np.int64)

    def update(self, a: int, xb: np.ndarray) -> None:
        for b in range(0, len(xb), 8192):  # score blocks of 200 x 8192: a few MiB
            self._update(a + b, xb[b : b + 8192])

    def _update(self, a: int, xb: np.ndarray) -> None:
        s = self.q @ xb.T
        if self.l2:
            s = 2 * s - np.einsum("ij,ij->i", xb, xb)[None, :]
        s = np.concatenate([self.best_s, s], 1)
        p = np.concatenate([self.best_p, np.broadcast_to(np.arange(a, a + len(xb)), (len(s), len(xb)))], 1)
        part = np.argpartition(-s, self.best_s.shape[1] - 1, axis=1)[:, : self.best_s.shape[1]]
        self.best_s = np.take_along_axis(s, part, 1)
        self.best_p = np.take_along_axis(p, part, 1)

    def truth(self) -> list[set[int]]:
        """Positions of each query's CALIBRATE_K nearest rows other than itself."""
        out = []
        for i in range(len(self.q)):
            o = np.argsort(-self.best_s[i], kind="stable")
            ps = [int(v) for v in self.best_p[i][o] if v != self.pos[i] and v >= 0]
            out.append(set(ps[:CALIBRATE_K]))
        return out


def _calibrate_nprobe(ix: IVFIndex, cal: _Calibration, ids: np.ndarray) -> dict[str, Any]:
    """The smallest nprobe (from a geometric ladder) whose recall@10 on the sample reaches the target."""
    truth = [{int(ids[p]) for p in t} for t in cal.truth()]
    own = ids[cal.pos]
    ladder = sorted({v for v in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                                 768, 1024, 1536, 2048, 3072, 4096) if v < ix.nlist} | {ix.nlist})

    def rec_at(npb: int) -> float:
        _, got = ix.search(cal.q, CALIBRATE_K + 1, nprobe=npb)
        hits = [[int(v) for v in row if v != o and v >= 0][:CALIBRATE_K] for row, o in zip(got, own, strict=True)]
        return float(np.mean([len(set(h) & t) / max(len(t), 1) for h, t in zip(hits, truth, strict=True)]))

    # a build process that has not searched yet does not load numba just for this (~130 MiB RSS);
    # the C kernel costs nothing to load and is used
    ix._numpy_only = "vecindex._numba_search" not in sys.modules
    try:
        i = 0
        final = rec_at(ladder[0])
        while i < len(ladder) - 1 and final < CALIBRATE_RECALL:
            i += 1
            final = rec_at(ladder[i])
        npb = ladder[i]
    finally:
        ix._numpy_only = False
    return {"nprobe": int(npb), "recall_at_10": round(final, 4), "target": CALIBRATE_RECALL,
            "queries": len(cal.q)}


# ---------------------------------------------------------------------- helpers
_EXT = {"vectors": "f32", "codes": "i8", "ids": "i64", "sqnorms": "f32", "offsets": "i64",
        "tail_vectors": "f32", "tail_ids": "i64", "tail_labels": "i32", "quant": "f32",
        "centroids": "f32", "coarse": "f32", "coarse_offsets": "i64", "deleted": "i64"}


def _old_gen(p: Path) -> int:
    try:
        return int(json.loads((p / fmt.HEADER).read_text()).get("gen", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _copy_header(h: dict[str, Any]) -> dict[str, Any]:
    c = dict(h)
    c["files"] = {k: dict(v) for k, v in h["files"].items()}
    return c


def _prepare_dir(p: Path, overwrite: bool) -> None:
    if p.exists():
        if not p.is_dir():
            raise VecIndexError(f"{p} exists and is not a directory")
        if any(p.iterdir()):
            if not overwrite and (p / fmt.HEADER).exists():
                raise IndexExistsError(f"{p} already holds an index (pass overwrite=True to replace it)")
            if not (p / fmt.HEADER).exists() and any(
                    not c.name.startswith(("d-", ".tmp-")) for c in p.iterdir()):
                raise VecIndexError(f"{p} is a non-empty directory that is not an index")
    p.mkdir(parents=True, exist_ok=True)


def _write_quantizer(p: Path, h: dict[str, Any], q: Quantizer, gen: int | None = None) -> None:
    g = h["gen"] if gen is None else gen
    h["files"]["centroids"] = fmt.write_array(p, f"d-centroids-{g}.f32", q.centroids)
    h["ncoarse"] = 0
    if q.coarse is not None:
        h["ncoarse"] = len(q.coarse)
        h["files"]["coarse"] = fmt.write_array(p, f"d-coarse-{g}.f32", q.coarse)
        h["files"]["coarse_offsets"] = fmt.write_array(p, f"d-coarse_offsets-{g}.i64", q.coarse_offsets)


def build_chunk_rows(d: int) -> int:
    """Rows a build reads and writes at a time: 32 MiB of float32 (a chunk is held about 4 times
    over while it is sorted and encoded, so this bounds the build's working set near 150 MiB)."""
    return max(4096, (32 << 20) // (4 * max(d, 1)))


def _drop_pages(mm: Any) -> None:
    """Unmap the touched pages of a read-only memory map (they stay in the page cache).

    Reading a big input through a memory map would otherwise count every page read
    in the build's RSS (10M x 64 float32 = 2.5 GB).
    """
    if mm is not None:
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (AttributeError, ValueError, OSError):  # not a mmap, or the platform lacks it
            pass


def _gather_sorted(rows: Callable[[Any], np.ndarray], idx: np.ndarray, chunk: int) -> np.ndarray:
    """rows(idx) for sorted positions, read one source chunk at a time."""
    parts = []
    hi = int(idx[-1]) + 1 if len(idx) else 0
    for a in range(0, hi, chunk):
        i0, i1 = np.searchsorted(idx, [a, a + chunk])
        if i1 > i0:
            parts.append(rows(idx[i0:i1]))
    return np.concatenate(parts) if parts else rows(idx)


def _row_range(rows: Callable[[Any], np.ndarray], n: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension minimum and maximum of all rows (one streamed pass)."""
    lo = hi = None
    for a in range(0, n, chunk):
        xb = rows(slice(a, min(n, a + chunk)))
        lo = xb.min(0) if lo is None else np.minimum(lo, xb.min(0))
        hi = xb.max(0) if hi is None else np.maximum(hi, xb.max(0))
    return lo, hi


def _write_lists(
    p: Path, h: dict[str, Any], rows: Callable[[Any], np.ndarray], ids: np.ndarray,
    labels: np.ndarray, nlist: int, progress: bool, gen: int | None = None,
    lo: np.ndarray | None = None, hi: np.ndarray | None = None,
) -> None:
    """Write rows in list order: float32, ids, int8 codes (and |x|^2 for l2); fill header entries.

    Streamed: the source is read in row order, one chunk at a time; each chunk's rows
    are sorted by list and written at their lists' write cursors (pwrite), so nothing
    but the labels and one chunk is held. `lo`/`hi` (the int8 range) are computed in a
    first pass when not given.
    """
    g = h["gen"] if gen is None else gen
    n = len(labels)
    d = h["dim"]
    nl1 = max(nlist, 1)
    counts = np.bincount(labels, minlength=nl1)[:nl1] if n else np.zeros(nl1, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64) if nlist else np.zeros(1, np.int64)
    names = {k: f"d-{k}-{g}.{_EXT[k]}" for k in ("vectors", "codes", "ids", "sqnorms", "offsets", "quant")}
    tmp = {k: p / f".tmp-{v}" for k, v in names.items()}
    chunk = build_chunk_rows(d)
    l2 = h["metric"] == "l2"
    int8 = h["scan"] == "int8"
    if lo is None or hi is None:
        lo, hi = _row_range(rows, n, chunk) if n else (np.zeros(d, np.float32), np.zeros(d, np.float32))
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    step = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    want = {"vectors": 4 * d, "ids": 8}
    if int8:
        want["codes"] = d
    if l2:
        want["sqnorms"] = 4
    fds = {k: os.open(tmp[k], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) for k in want}
    try:
        for k, rb in want.items():
            os.ftruncate(fds[k], n * rb)
        cursor = offsets[:-1].copy() if nlist else np.zeros(1, np.int64)
        with _progress(n, "write lists", progress) as bar:
            for a in range(0, n, chunk):
                xb = rows(slice(a, min(n, a + chunk)))
                lab = labels[a : a + len(xb)]
                order = np.argsort(lab, kind="stable")
                cols = {"vectors": xb[order], "ids": np.ascontiguousarray(ids[a : a + len(xb)][order], np.int64)}
                if int8:
                    c = cols["vectors"] - lo  # one float temporary, updated in place
                    c /= step
                    np.rint(c, out=c)
                    c -= 128
                    np.clip(c, -128, 127, out=c)
                    cols["codes"] = c.astype(np.int8)
                    del c
                if l2:
                    cols["sqnorms"] = np.einsum("ij,ij->i", cols["vectors"], cols["vectors"]).astype(np.float32)
                ls, st, cn = np.unique(lab[order], return_index=True, return_counts=True)
                for li, s0, c0 in zip(ls.tolist(), st.tolist(), cn.tolist(), strict=True):
                    dst = int(cursor[li])
                    for k, rb in want.items():
                        mv = memoryview(cols[k][s0 : s0 + c0]).cast("B")
                        if os.pwrite(fds[k], mv, dst * rb) != len(mv):
                            raise OSError(f"short write to {tmp[k]}")
                    cursor[li] += c0
                bar.update(len(xb))
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
    quant = np.stack([lo, step]).astype(np.float32)
    with open(tmp["offsets"], "wb") as f:
        offsets.tofile(f)
    with open(tmp["quant"], "wb") as f:
        quant.tofile(f)
    for k in ("vectors", "codes", "ids", "sqnorms", "offsets", "quant"):
        h["files"].pop(k, None)
        if k in ("codes", "sqnorms") and k not in want:
            tmp[k].unlink(missing_ok=True)
            continue
        os.replace(tmp[k], p / names[k])
        h["files"][k] = fmt.file_entry(p, names[k], full_crc=True)
    h["n_main"] = n
    h["nlist"] = nlist


def _centroid_panels(cents: np.ndarray) -> np.ndarray:
    """The centroids as the C kernel reads them: panels of PANEL centroids, each d x PANEL
    (zeros past the last), so one panel's scores come from one contiguous block."""
    from vecindex._csearch import PANEL

    nlist, d = cents.shape
    padded = np.zeros((-(-nlist // PANEL) * PANEL, d), np.float32)
    padded[:nlist] = cents
    return np.ascontiguousarray(padded.reshape(-1, PANEL, d).transpose(0, 2, 1))


def _pread_into(fd: int, arr: np.ndarray, offset: int) -> None:
    mv = memoryview(arr).cast("B")
    got = os.preadv(fd, [mv], offset)
    while got < len(mv):  # short reads are legal; a zero read means the file shrank
        r = os.preadv(fd, [mv[got:]], offset + got)
        if r == 0:
            raise IndexFormatError("index file shorter than its header says (truncated while open?)")
        got += r


def _pread_array(fd: int, dtype: Any, count: int, offset: int) -> np.ndarray:
    a = np.empty(count, dtype=dtype)
    _pread_into(fd, a, offset)
    return a


def _segments(seg_b: list[int], seg_g: list[int], fill: int):
    for i, (sb, sg) in enumerate(zip(seg_b, seg_g, strict=False)):
        end = seg_b[i + 1] if i + 1 < len(seg_b) else fill
        yield sb, sg, end - sb


def _positions(seg_b: list[int], seg_g: list[int], fill: int) -> np.ndarray:
    sb = np.asarray(seg_b, np.int64)
    lens = np.diff(np.append(sb, fill))
    return np.repeat(np.asarray(seg_g, np.int64) - sb, lens) + np.arange(fill, dtype=np.int64)


def _buffer_to_global(rows: np.ndarray, seg_b: list[int], seg_g: list[int]) -> np.ndarray:
    sb = np.asarray(seg_b, np.int64)
    i = np.searchsorted(sb, rows, side="right") - 1
    return np.asarray(seg_g, np.int64)[i] + (rows - sb[i])


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """x sorted without repeats: x itself when it already is (no copy; a one-byte-a-row check)."""
    if len(x) < 2 or bool((x[1:] > x[:-1]).all()):
        return x
    return np.unique(x)


def _member(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """x in sorted_set, elementwise, by binary search (sorted_set is sorted, non-empty)."""
    if not len(sorted_set):
        return np.zeros(len(x), dtype=bool)
    i = np.searchsorted(sorted_set, x)
    i[i == len(sorted_set)] = len(sorted_set) - 1
    return sorted_set[i] == x


def _merge_topk(
    s1: np.ndarray, p1: np.ndarray, s2: np.ndarray, p2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of two candidate sets, best first (ties broken by position)."""
    s = np.concatenate([s1, s2])
    p = np.concatenate([p1, p2])
    if len(s) > k:
        part = np.argpartition(-s, k - 1)[:k]
        s, p = s[part], p[part]
    order = np.lexsort((p, -s))
    return s[order], p[order]
