"""Reading vector files (.npy, .fvecs, raw .f32) as float32 row matrices.

Every reader returns an array-like that can be sliced by rows without loading
the whole file (a memory map), so a 10M-row build streams its input.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from vecindex.format import IndexFormatError

log = logging.getLogger(__name__)


def open_vectors(path: str | os.PathLike[str], dim: int | None = None) -> np.ndarray:
    """Memory-map a vector file as an (n, d) float32 array.

    `.npy` carries its own shape; `.fvecs` stores each row as an int32 dimension
    then d float32s; anything else is raw little-endian float32 and needs `dim`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such vector file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise IndexFormatError(f"{p}: not a NumPy .npy file (no .npy header; use .fvecs, or raw "
                                   "float32 with another extension and --dim)")
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as e:  # object arrays, bad header: numpy's message mentions pickles
            raise IndexFormatError(f"{p}: not a float .npy array ({e})") from e
        if arr.ndim != 2:
            raise IndexFormatError(f"{p}: expected a 2-D array, got shape {arr.shape}")
        if arr.dtype != np.float32:
            log.info("%s: converting %s to float32 on the fly", p, arr.dtype)
        return arr
    if suffix == ".fvecs":
        return _open_fvecs(p)
    if dim is None or dim <= 0:
        raise ValueError(f"{p}: raw float32 file needs a positive dimension (--dim)")
    size = p.stat().st_size
    row = dim * 4
    if size % row:
        raise IndexFormatError(
            f"{p}: size {size} is not a multiple of {row} bytes (dim {dim} float32 rows)"
        )
    if size == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(p, dtype=np.float32, mode="r", shape=(size // row, dim))


def _open_fvecs(p: Path) -> np.ndarray:
    size = p.stat().st_size
    if size == 0:
        raise IndexFormatError(f"{p}: empty .fvecs file (dimension unknown)")
    d = int(np.fromfile(p, dtype="<i4", count=1)[0])
    if d <= 0 or d > 1 << 20:
        raise IndexFormatError(f"{p}: implausible .fvecs dimension {d}")
    row = 4 * (d + 1)
    if size % row:
        raise IndexFormatError(f"{p}: size {size} is not a multiple of the row size {row}")
    raw = np.memmap(p, dtype="<f4", mode="r", shape=(size // row, d + 1))
    dims = raw[:, :1].view("<i4")
    if not np.all(dims[: min(len(dims), 1000)] == d):
        raise IndexFormatError(f"{p}: rows of different dimensions")
    return raw[:, 1:]


def write_fvecs(path: str | os.PathLike[str], x: np.ndarray) -> None:
    """Write rows as .fvecs (used by tests and the CLI's round trips)."""
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    out = np.empty((n, d + 1), dtype="<f4")
    out[:, 0] = np.array([d], dtype="<i4").view("<f4")[0]
    out[:, 1:] = x
    out.tofile(path)


def as_rows(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Coerce a vector or matrix to a C-contiguous (n, d) float32 array."""
    if (type(x) is np.ndarray and x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous
            and (dim is None or x.shape[1] == dim)):
        return x  # already so (a search's common case: its per-call cost counts)
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    elif a.ndim > 2:
        a = a.reshape(-1, a.shape[-1])
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"vectors have dimension {a.shape[1]}, the index has {dim}")
    return np.ascontiguousarray(a)
