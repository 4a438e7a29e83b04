"""Embeddings in the store: embedding entries, per-file embeddings, and their vecindex indexes.

Sources of vectors (the entries are the truth; the indexes are rebuildable):
- an *embedding entry*: a file named `*.npy` (2-D float array), `*.fvecs`, or `*.f32`
  (raw little-endian float32, once its dimension is set in the `user.hk.dim` xattr);
  one vector per row;
- a file's *own embedding*: the `user.hk.embedding` xattr (text numbers or raw float32).

`EmbeddingCatalog` keeps one vecindex `IVFIndex` per (namespace, dimension), a
"shard". Index ids encode the source: `id = entity_id << 24 | row`, the own
embedding using row 0xFFFFFF, so an entry holds at most 16,777,215 rows
(a bigger one is skipped with a warning).

Keeping current without notifications: before each query the catalog asks the
store's change feed (hkfs.core.changes) for `vectors_gen`, a counter the catalog's
triggers bump whenever an embedding xattr or an entry-named file changes; when it
moved, it re-reads the fingerprints of the namespace's embedding sources (name
suffix, size, mtime; the xattr bytes) and applies the difference. Other commits
(bytes of other files, tags, times) cost nothing here. A shard is a persisted *base* index plus *pending*
sources (added or changed since the base was built; searched exactly, so an
addition is searchable at once) and *dead* keys (in the base but removed or
changed; filtered out). A background worker (started by the daemon's init()) looks
when the change feed reports a commit that moved `vectors_gen`, and rebuilds, that is
retrains, a shard's base when enough has changed, into a new directory, and swaps it in atomically under the lock; queries meanwhile use the
previous base. Retags need no index change at all: the scope of a query (the
entity ids a directory or view matches) is applied at search time.

Sources are kept as numpy columns (_Table: code = entity id * 2 + own, fingerprint, dim,
rows), not one object each, so a million cost ~28 MB; the daemon persists them with the
vectors_gen they were read at (the sources cache), and a fresh process (`hk query`) whose
vectors_gen matches opens that instead of reading every source.

Pending single-row sources keep only columns in RAM, their rows in an unlinked spill file
(_SpillFile), and a big base is built in a child process (build_child): a first build of a
million sources stays within the daemon's memory bound (docs/query.md).

Layout: STORE/vectors/{ns<NS>-d<DIM>/{manifest.json, gen-<N>/{index/, keys.npy}},
sources-ns<NS>.npz} (see docs/query.md, "Sources in memory and on disk").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from ..core.changes import ChangeFeed
from ..core.errors import InvalidArgument
from .queryfiles import parse_vector

__all__ = [
    "EMBEDDING_ATTR", "DIM_ATTR", "ENTRY_SUFFIXES", "ROW_BITS", "OWN_ROW", "MAX_ROWS",
    "entry_kind", "read_entry", "parse_embedding", "parse_dim", "EmbeddingCatalog", "SearchHit",
]

log = logging.getLogger(__name__)

EMBEDDING_ATTR = "user.hk.embedding"
DIM_ATTR = "user.hk.dim"
ENTRY_SUFFIXES = (".npy", ".fvecs", ".f32")
ROW_BITS = 24
OWN_ROW = (1 << ROW_BITS) - 1
MAX_ROWS = OWN_ROW
COPY_MAX = 64 << 20      # entry bytes read into memory; a bigger entry is a map of a private copy (read_entry)
MAX_DIM = 1 << 16
METRIC = "cosine"
# Rebuild a shard's base when pending + dead rows exceed this share of it (or this many rows).
REBUILD_SHARE = 0.05
REBUILD_ROWS = 50_000
POLL_S = 30.0       # a look when the change feed reported nothing for this long (a safety net)
POLL_CPU_SHARE = 0.1   # looks take at most this share of a core: a look of t s waits t / share
EXCLUDE_BY_MASK = 256  # an excluded file with more rows than this is left out by the allowed set
DEAD_BY_MASK = 256     # as many dead base rows as this are dropped from the hits, more by the allowed set
ALLOWED_MAX = 4        # allowed-id arrays kept (one per scope and index version; 8 bytes a row)
CHUNK = 1 << 18        # sources a step over all of them handles at a time (a few MiB of transients)
SPILL_READ = 1 << 14   # spilled rows read at a time (4 MiB at 64 dimensions)
LOAD_CHUNK = 4096      # new sources read per statement batch in a reconcile
BUILD_CHILD_BYTES = 32 << 20   # a base of more rows' bytes is built in a child process

CACHE_FORMAT = 1       # STORE/vectors/sources-ns<NS>.npz (docs/query.md); another is ignored
MANIFEST_FORMAT = 2    # manifest.json + gen-<N>/keys.npy; another is ignored (rebuilt)

Key = tuple[int, bool]      # (entity id, own embedding?)


# ------------------------------------------------------------------ sources


def entry_kind(name: str) -> str | None:
    """'.npy' / '.fvecs' / '.f32' when a file of this name is an embedding entry, else None."""
    low = name.lower()
    for s in ENTRY_SUFFIXES:
        if low.endswith(s) and len(low) > len(s):
            return s
    return None


def parse_dim(value: bytes | str) -> int:
    """The `user.hk.dim` value: a positive integer as text."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        d = int(text.strip())
    except ValueError:
        raise InvalidArgument(f"{DIM_ATTR}: {text.strip()[:40]!r} is not an integer") from None
    if not 0 < d <= MAX_DIM:
        raise InvalidArgument(f"{DIM_ATTR}: dimension {d} is not in 1..{MAX_DIM}")
    return d


def parse_embedding(value: bytes | str) -> np.ndarray:
    """The `user.hk.embedding` value (text numbers or raw float32) as a 1-D float32 vector."""
    v = parse_vector(value, EMBEDDING_ATTR)
    if len(v) > MAX_DIM:
        raise InvalidArgument(f"{EMBEDDING_ATTR}: {len(v)} numbers, more than {MAX_DIM}")
    return v


def read_entry(path: str | os.PathLike[str], name: str, dim: int | None = None,
               max_rows: int | None = None) -> np.ndarray:
    """The rows of an embedding entry as an (n, d) array (its first max_rows rows when given):
    read into memory up to COPY_MAX bytes; beyond, copied into a private file and mapped.

    Never a map of the entry itself: the file is a store entity another process may truncate
    or rewrite at any moment (`np.save` over it, an editor's save), and touching a mapped page
    past the new end kills the whole daemon with SIGBUS, where a short read or copy is only an
    error, read again at the next fingerprint. A big entry is copied by the kernel
    (`_private_map`) into an unnamed file nobody else can open, so its rows are not held in RAM
    either. `name` (the file name in the store) says the format; `path` is where the bytes are.
    Raises InvalidArgument when the bytes do not hold what the name promises.
    """
    kind = entry_kind(name)
    p = Path(path)
    size = p.stat().st_size
    if kind == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidArgument(f"{name}: not a readable .npy file ({exc})") from None
        if arr.ndim != 2 or arr.dtype.kind != "f":
            raise InvalidArgument(f"{name}: expected a 2-D float array, got {arr.dtype} {arr.shape}")
        if arr.shape[1] == 0:
            raise InvalidArgument(f"{name}: rows of dimension 0")
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        shape = arr.shape if order == "F" else _first_rows(arr.shape, max_rows)
        return _rows_copy(p, name, arr.dtype, arr.offset, shape, order)
    if kind == ".fvecs":
        if size < 4:
            raise InvalidArgument(f"{name}: empty .fvecs file")
        d = int(np.fromfile(p, dtype="<i4", count=1)[0])
        if not 0 < d <= MAX_DIM or size % (4 * (d + 1)):
            raise InvalidArgument(f"{name}: not an .fvecs file (dimension {d}, {size} bytes)")
        shape = _first_rows((size // (4 * (d + 1)), d + 1), max_rows)
        raw = _rows_copy(p, name, np.dtype("<f4"), 0, shape)
        if not np.all(raw[:1000, :1].view("<i4") == d):
            raise InvalidArgument(f"{name}: .fvecs rows of different dimensions")
        return raw[:, 1:]
    if kind == ".f32":
        if dim is None:
            raise InvalidArgument(f"{name}: a raw .f32 entry needs its dimension in {DIM_ATTR}")
        if size % (4 * dim):
            raise InvalidArgument(f"{name}: {size} bytes is not a whole number of {dim}-float32 rows")
        if size == 0:
            return np.zeros((0, dim), np.float32)
        return _rows_copy(p, name, np.dtype("<f4"), 0, _first_rows((size // (4 * dim), dim), max_rows))
    raise InvalidArgument(f"{name}: not an embedding entry (.npy, .fvecs or .f32)")


def _first_rows(shape: tuple[int, ...], max_rows: int | None) -> tuple[int, ...]:
    return shape if max_rows is None or shape[0] <= max_rows else (max_rows, *shape[1:])


def _rows_copy(p: Path, name: str, dtype: np.dtype, offset: int, shape: tuple[int, ...],
               order: str = "C") -> np.ndarray:
    """The values read into memory (up to COPY_MAX bytes) or, beyond, a map of a private copy."""
    if int(np.prod(shape)) * dtype.itemsize > COPY_MAX:
        return _private_map(p, name, dtype, offset, shape, order)
    return _read_copy(p, name, dtype, offset, shape, order)


def _unnamed_file(directory: Path | None) -> BinaryIO:
    """A read-write file of this process alone, never visible by name and gone with its last
    descriptor or map: O_TMPFILE in `directory` (the store's file system), else (no O_TMPFILE
    there, no write access, or no directory) one in the temporary directory."""
    import tempfile

    if directory is not None:
        try:
            return os.fdopen(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600), "w+b")
        except OSError:
            pass
    return tempfile.TemporaryFile(prefix="hkfs-")


def _private_map(p: Path, name: str, dtype: np.dtype, offset: int, shape: tuple[int, ...],
                 order: str = "C") -> np.ndarray:
    """shape values of dtype at offset of p, copied in the kernel (copy_file_range: the bytes
    never pass through this process) into an unnamed file of p's directory (O_TMPFILE: on
    the store's file system, never visible, gone with the last reference; the temporary
    directory where that is refused) and mapped read-only: nobody can truncate the copy
    under the map, and its pages are clean file pages, not RSS the daemon holds."""
    n = int(np.prod(shape)) * dtype.itemsize
    with _unnamed_file(p.parent) as f, open(p, "rb") as src:
        done = 0
        while done < n:
            try:
                got = os.copy_file_range(src.fileno(), f.fileno(), n - done, offset + done, done)
            except OSError:            # across file systems on old kernels: through user space
                src.seek(offset + done)
                chunk = src.read(min(n - done, 1 << 24))
                got = len(chunk)
                os.pwrite(f.fileno(), chunk, done)
            if got == 0:
                raise InvalidArgument(f"{name}: {done} of {n} bytes read (the file changed while read)")
            done += got
        return np.memmap(f, dtype=dtype, mode="r", shape=shape, order=order)  # type: ignore[arg-type]


def _read_copy(p: Path, name: str, dtype: np.dtype, offset: int, shape: tuple[int, ...],
               order: str = "C") -> np.ndarray:
    """shape values of dtype read from p at offset (a file cut short meanwhile: InvalidArgument)."""
    n = int(np.prod(shape))
    with open(p, "rb") as f:
        f.seek(offset)
        a = np.fromfile(f, dtype=dtype, count=n)
    if a.size != n:
        raise InvalidArgument(f"{name}: {a.size} of {n} values read (the file changed while read)")
    return a.reshape(shape, order=order)  # type: ignore[call-overload]


def _ids(eid: int, nrows: int, own: bool) -> np.ndarray:
    base = np.int64(eid) << ROW_BITS
    if own:
        return np.array([base | OWN_ROW], dtype=np.int64)
    return base + np.arange(nrows, dtype=np.int64)


def _vec_fp(value: bytes) -> int:
    """The fingerprint of an embedding xattr: its length and CRC-32 (an SQLite function)."""
    return len(value) << 32 | zlib.crc32(value)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:      # one query vector (a FILE.query read): the same sum as norm's, fewer calls
        n = np.sqrt(np.add.reduce(x * x))
        return x / n if n else x.copy()
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    n[n == 0] = 1.0
    return (x / n).astype(np.float32, copy=False)


# ------------------------------------------------------------------ catalog state


def _code_of_ids(ids: np.ndarray) -> np.ndarray:
    """The source code (entity id * 2 + own) of each index id."""
    return (ids >> ROW_BITS) * 2 + ((ids & OWN_ROW) == OWN_ROW)


def _key(code: int) -> Key:
    return code >> 1, bool(code & 1)


def _code(key: Key) -> int:
    return key[0] * 2 + int(key[1])


def _fp64(fp: tuple) -> int:
    """A fingerprint tuple as a stable signed 64-bit number (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(repr(fp).encode(), digest_size=8).digest(), "little",
                          signed=True)


@dataclass
class _Table:
    """Embedding sources as columns, one row each, sorted by code = entity id * 2 + own.

    A million sources cost 28 bytes each here, against a few hundred as Python objects,
    and load from disk in one read (the sources cache, docs/query.md)."""

    code: np.ndarray                  # int64, sorted, unique
    fp: np.ndarray                    # int64 fingerprint (_fp64, or len << 32 | crc32 of an xattr)
    dim: np.ndarray                   # int32 (0: no rows)
    nrows: np.ndarray                 # int64

    @classmethod
    def of(cls, code: Any, fp: Any, dim: Any, nrows: Any) -> _Table:
        code = np.asarray(code, np.int64)
        order = np.argsort(code, kind="stable")
        return cls(code[order], np.asarray(fp, np.int64)[order], np.asarray(dim, np.int32)[order],
                   np.asarray(nrows, np.int64)[order])

    @classmethod
    def empty(cls) -> _Table:
        return cls.of([], [], [], [])

    def __len__(self) -> int:
        return len(self.code)

    def find(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row index, present?) of each code."""
        if not len(self.code):
            return np.zeros(len(codes), np.int64), np.zeros(len(codes), bool)
        idx = np.minimum(np.searchsorted(self.code, codes), len(self.code) - 1)
        return idx, self.code[idx] == codes

    def same(self, codes: np.ndarray, fps: np.ndarray) -> np.ndarray:
        """Whether each (code, fingerprint) is a row of this table."""
        idx, hit = self.find(codes)
        return hit & (self.fp[idx] == fps)

    def get(self, key: Key) -> tuple[int, int] | None:
        """(dim, nrows) of a source, or None."""
        idx, hit = self.find(np.array([_code(key)], np.int64))
        return (int(self.dim[idx[0]]), int(self.nrows[idx[0]])) if hit[0] else None

    def of_entity(self, eid: int) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(dim, nrows) of entity eid's own embedding and of its entry rows (None: none), in one look."""
        own = entry = None      # (codes eid*2 and eid*2+1 are neighbours: one searchsorted, plain ints)
        i, n = int(self.code.searchsorted(eid * 2)), len(self.code)
        if i < n and self.code[i] == eid * 2:
            entry, i = (int(self.dim[i]), int(self.nrows[i])), i + 1
        if i < n and self.code[i] == eid * 2 + 1:
            own = (int(self.dim[i]), int(self.nrows[i]))
        return own, entry

    def same_rows(self, other: _Table) -> bool:
        """Whether both tables hold the same sources (code, fingerprint, rows), compared a
        chunk at a time."""
        if len(self) != len(other):
            return False
        return all(np.array_equal(getattr(self, f)[a:a + CHUNK], getattr(other, f)[a:a + CHUNK])
                   for a in range(0, len(self), CHUNK) for f in ("code", "fp", "nrows"))

    def take(self, mask: np.ndarray) -> _Table:
        return _Table(self.code[mask], self.fp[mask], self.dim[mask], self.nrows[mask])

    @staticmethod
    def concat(parts: list[_Table]) -> _Table:
        if len(parts) == 1 and (len(parts[0]) < 2 or bool((parts[0].code[1:] > parts[0].code[:-1]).all())):
            return parts[0]           # (a first reconcile: no million-wide sort and copies)
        return _Table.of(*(np.concatenate([getattr(p, f) for p in parts]) if parts else []
                           for f in ("code", "fp", "dim", "nrows")))


_EMPTY = _Table.empty()      # never changed (tables are replaced, not modified)
_NO_CODES = np.zeros(0, np.int64)


@dataclass
class _Pending:
    """Rows searched exactly until the next rebuild: unit-normalized, float32."""

    key: Key
    ids: np.ndarray
    rows: np.ndarray          # may be a memory map (big entries), normalized per block at search time
    norms: np.ndarray


class _SpillFile:
    """Rows of one shard's single-row pending sources, appended to a file and read back a
    chunk at a time (os.pread), so a million new sources cost their columns in RAM (20 bytes
    each, `_Spilled`), not ~1 KB of Python objects and rows each.

    The file has no name (`_unnamed_file`: a daemon's under STORE/vectors, a read-only
    process's in the temporary directory): it is this process's alone, nobody can truncate
    it (no SIGBUS, and it is read, not mapped, so its pages count in no RSS), and a killed
    process leaves nothing behind. Append-only: rows are written before a snapshot that names
    them is published, and a published row never changes."""

    def __init__(self, directory: Path | None, dim: int) -> None:
        self.dim = dim
        self.row_bytes = 4 * dim
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self._f = _unnamed_file(directory)
        self.fd = self._f.fileno()
        self.n = 0                 # rows written (flushed or buffered)
        self._buf = bytearray()
        self._flushed = 0

    def append(self, row: np.ndarray) -> int:
        """Queue one row (float32 little-endian); its position. Readable after flush()."""
        self._buf += np.ascontiguousarray(row, "<f4").tobytes()
        self.n += 1
        if len(self._buf) >= 1 << 20:
            self.flush()
        return self.n - 1

    def flush(self) -> None:
        if self._buf:
            os.pwrite(self.fd, self._buf, self._flushed * self.row_bytes)
            self._flushed += len(self._buf) // self.row_bytes
            self._buf = bytearray()

    def read(self, start: int, count: int) -> np.ndarray:
        """Rows start .. start+count (flushed ones) as a (count, dim) float32 array."""
        raw = os.pread(self.fd, count * self.row_bytes, start * self.row_bytes)
        if len(raw) != count * self.row_bytes:
            raise OSError(f"spill file: {len(raw)} of {count * self.row_bytes} bytes read")
        return np.frombuffer(raw, "<f4").reshape(count, self.dim)

    def rows(self, pos: np.ndarray) -> np.ndarray:
        """The rows at these positions, in their order: read SPILL_READ rows' span at a time."""
        if len(pos) and int(pos[-1]) - int(pos[0]) == len(pos) - 1 and \
                (len(pos) < 2 or bool((pos[1:] > pos[:-1]).all())):
            return self.read(int(pos[0]), len(pos))        # consecutive rows (the common case): one read
        out = np.empty((len(pos), self.dim), np.float32)
        order = np.argsort(pos, kind="stable")
        sp = np.asarray(pos)[order]
        i = 0
        while i < len(sp):
            lo = int(sp[i])
            j = int(np.searchsorted(sp, lo + SPILL_READ))
            out[order[i:j]] = self.read(lo, int(sp[j - 1]) - lo + 1)[sp[i:j] - lo]
            i = j
        return out

    def close(self) -> None:
        self._f.close()


@dataclass(frozen=True)
class _Spilled:
    """A shard's single-row pending sources (own embeddings, one-row entries) as columns
    sorted by index id, their rows in a _SpillFile. Replaced, never changed: a search holds
    the snapshot it started with."""

    file: _SpillFile | None
    ids: np.ndarray            # int64, sorted (eid << 24 | 0 or OWN_ROW)
    pos: np.ndarray            # int64 row in file
    norms: np.ndarray          # float32 (0 replaced by 1)

    def __len__(self) -> int:
        return len(self.ids)


_NO_SPILL = _Spilled(None, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _single_ids(code: np.ndarray) -> np.ndarray:
    """The index id of each source's one row (codes of sorted sources give sorted ids)."""
    return ((code >> 1) << ROW_BITS) | np.where((code & 1) == 1, OWN_ROW, 0)


@dataclass
class _Shard:
    ns: int
    dim: int
    base: Any = None                                        # vecindex.IVFIndex | None
    base_keys: _Table = field(default_factory=_Table.empty)  # the sources the base was built from
    base_n: int = 0                                         # base_keys.nrows.sum()
    pending: dict[Key, _Pending] = field(default_factory=dict)  # entries of several rows
    spilled: _Spilled = _NO_SPILL                           # single-row sources (their rows on disk)
    spill: _SpillFile | None = None                         # where new single rows go
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted codes of base_keys
    dead_n: int = 0                                         # base rows of the dead keys
    gen: int = 0
    version: int = 0                                        # bumped on every change (cache key)

    def pending_rows(self) -> int:
        return sum(len(p.ids) for p in self.pending.values()) + len(self.spilled)

    def dead_rows(self) -> int:
        return self.dead_n

    def base_total(self) -> int:
        return self.base_n


class SearchHit(NamedTuple):
    """One hit of a search (a tuple: a dozen are made per `FILE.query` read)."""

    score: float
    eid: int
    row: int | None         # None: the file's own embedding or a one-row entry
    nrows: int


class EmbeddingCatalog:
    """The (namespace, dimension) -> index map, kept current with the store's catalog.

    `writable=False` (the `hk` CLI while a daemon may be running) never writes
    STORE/vectors: it uses the persisted bases and searches the rest exactly.
    """

    def __init__(self, store: Any, *, writable: bool = True, root: Path | None = None,
                 changes: ChangeFeed | None = None) -> None:
        self.store = store
        self._own_changes = changes is None
        self.changes = changes if changes is not None else ChangeFeed(store.catalog.path)
        self.writable = writable
        self.root = Path(root) if root is not None else Path(store.root) / "vectors"
        self._lock = threading.RLock()
        self._sources: dict[int, _Table] = {}
        self._shards: dict[tuple[int, int], _Shard] = {}
        self._seen: dict[int, int] = {}
        self._warned: set[tuple[Key, tuple]] = set()
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._wake = threading.Condition(threading.Lock())
        self._poll_wait = 0.0        # after a look of t seconds: t / POLL_CPU_SHARE
        self._look_after = 0.0       # time.monotonic() before which the worker does not look
        self._kick = True            # the feed reported an embedding change (and the first look)
        self._kicked_gen: int | None = None
        self._subscribed = False
        self._todo: list[tuple[int, int]] = []
        self._stop = False
        self._busy = 0
        self._allowed_cache: dict[tuple, np.ndarray | None] = {}
        self._watched: set[int] = set()
        self._dims: dict[int, set[int]] = {}
        self._load_persisted()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background rebuild worker (the daemon calls this from FUSE init())."""
        if self._worker is not None or not self.writable:
            return
        self._stop = False
        self._kick = True
        self._worker = threading.Thread(target=self._run, name="hkfs-embeddings", daemon=True)
        self._worker.start()
        if not self._subscribed:
            self._subscribed = True
            self.changes.subscribe(self._committed)
        self.changes.start()          # the daemon's feed runs already when the kernel caches are on
        with self._lock:
            for key, sh in self._shards.items():
                if self._needs_rebuild(sh):
                    self._schedule(key)

    def watch(self, ns: int) -> None:
        """Keep namespace ns current in the background too (not only when queried)."""
        self._watched.add(ns)

    def stop(self) -> None:
        """Stop the worker (a rebuild in progress finishes first) and close the connection."""
        w = self._worker
        if w is not None:
            with self._wake:
                self._stop = True
                self._wake.notify_all()
            w.join(timeout=30)     # a long rebuild is abandoned (daemon thread); the old base stays valid
            self._worker = None
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if self._own_changes:
            self.changes.close()

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Block until the worker has nothing queued (tests, benchmarks)."""
        import time
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._wake:
                if not self._todo and not self._busy:
                    return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------ catalog reading

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            path = Path(self.store.catalog.path)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                         timeout=30)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.create_function("hk_vec_fp", 1, _vec_fp, deterministic=True)
        return self._conn

    def generation(self) -> int:
        """The catalog's vectors_gen: moves whenever an embedding source may have changed."""
        return self.changes.generations().vectors

    def _fingerprints(self, ns: int) -> tuple[list[tuple], dict[int, bytes], np.ndarray]:
        """(id, name, size, mtime_ns) of entry-named files, their dim xattrs, and the fingerprint
        (len << 32 | crc32) of each embedding xattr of ns as an (id, fp) array; the embedding bytes stay in SQLite
        (only new ones are read, by _values).

        Read-only SQL over the store's `entities` and `xattrs` tables (one snapshot);
        docs/dev/requests.md asks core for an API to replace it.
        """
        like = " OR ".join("lower(name) LIKE ?" for _ in ENTRY_SUFFIXES)
        with self._conn_lock:
            c = self._connection()
            c.execute("BEGIN")
            try:
                entries = c.execute(
                    f"SELECT id, name, size, mtime_ns FROM entities WHERE ns = ? AND ({like})",
                    (ns, *[f"%{s}" for s in ENTRY_SUFFIXES])).fetchall()
                dims = {eid: bytes(v) for eid, v in c.execute(
                    "SELECT x.id, x.value FROM xattrs x JOIN entities e ON e.id = x.id "
                    "WHERE x.kind = 'file' AND x.name = ? AND e.ns = ?", (DIM_ATTR, ns))}
                embs = np.fromiter(c.execute(      # straight into an array: no object per row kept
                    "SELECT x.id, hk_vec_fp(x.value) FROM xattrs x JOIN entities e ON e.id = x.id "
                    "WHERE x.kind = 'file' AND x.name = ? AND e.ns = ?", (EMBEDDING_ATTR, ns)),
                    dtype=[("id", np.int64), ("fp", np.int64)])
            finally:
                c.execute("COMMIT")
        return entries, dims, embs

    def _values(self, eids: list[int]) -> dict[int, bytes]:
        """The embedding xattrs of these entities (the new or changed ones of a reconcile)."""
        out: dict[int, bytes] = {}
        with self._conn_lock:
            c = self._connection()
            for a in range(0, len(eids), 500):
                part = eids[a:a + 500]
                out.update((eid, bytes(v)) for eid, v in c.execute(
                    f"SELECT id, value FROM xattrs WHERE kind = 'file' AND name = ? "
                    f"AND id IN ({','.join('?' * len(part))})", (EMBEDDING_ATTR, *part)))
        return out

    # ------------------------------------------------------------ keeping current

    def refresh(self, ns: int) -> None:
        """Bring namespace ns up to date if an embedding source changed since the last look.

        On the first look a process opens the sources cache (docs/query.md) when it was
        written at the current vectors_gen, instead of reading every source."""
        v = self.generation()       # read before the fingerprints: a change in between is seen next time
        with self._lock:
            if self._seen.get(ns) == v:
                return
            if ns not in self._sources and self._open_cache(ns, v):
                self._seen[ns] = v
                return
            self._reconcile(ns)
            self._seen[ns] = v
            table = self._sources.get(ns)
        if self.writable and table is not None:
            self._save_cache(ns, v, table)      # outside the lock: queries need not wait for the disk

    def _reconcile(self, ns: int) -> None:
        self._start_changes()
        entries, dims, embs = self._fingerprints(ns)
        codes: list[int] = []
        fps: list[int] = []
        meta: dict[int, tuple] = {}
        for eid, name, size, mtime in entries:
            kind = entry_kind(name)
            dim_raw = dims.get(eid)
            if kind is None or (kind == ".f32" and dim_raw is None):
                continue
            codes.append(eid * 2)
            fps.append(_fp64(("entry", kind, int(size), int(mtime),
                              dim_raw.decode("utf-8", "replace") if dim_raw is not None else "")))
            meta[eid * 2] = (name, dim_raw)
        want = _fingerprint_table(np.array(codes, np.int64), np.array(fps, np.int64), embs)
        del entries, embs, codes, fps
        have = self._sources.get(ns, _EMPTY)
        touched: set[tuple[int, int]] = set()
        same = np.empty(len(have), bool)    # have's rows still as they were
        known = np.zeros(len(want), bool)   # want's rows among those: nothing to read
        for a in range(0, len(have), CHUNK):     # a chunk at a time: no 1M-wide transients
            same[a:a + CHUNK] = want.same(have.code[a:a + CHUNK], have.fp[a:a + CHUNK])
        for a in range(0, len(want), CHUNK) if len(have) else ():
            idx, hit = have.find(want.code[a:a + CHUNK])
            known[a:a + CHUNK] = hit & same[idx]
        for i in np.flatnonzero(~same):
            self._drop(ns, _key(int(have.code[i])), int(have.dim[i]), touched)
        new = want.take(~known)
        parts = []
        left = np.ones(len(new), bool)
        for sh in self._shards.values():     # unchanged since a base was built: no read
            if sh.ns != ns or not len(sh.base_keys) or not left.any():
                continue
            idx, _hit = sh.base_keys.find(new.code)
            ok = left & sh.base_keys.same(new.code, new.fp)
            parts.append(_Table(new.code[ok], new.fp[ok], np.full(int(ok.sum()), sh.dim, np.int32),
                                sh.base_keys.nrows[idx[ok]]))
            left &= ~ok
        todo = new.take(left)
        ok = np.zeros(len(todo), bool)
        got_dim = np.zeros(len(todo), np.int32)
        got_rows = np.zeros(len(todo), np.int64)
        for a in range(0, len(todo), LOAD_CHUNK):    # no million-long Python lists, values a batch at a time
            code = todo.code[a:a + LOAD_CHUNK].tolist()
            values = self._values([c >> 1 for c in code if c & 1])
            for i, (c, fp) in enumerate(zip(code, todo.fp[a:a + LOAD_CHUNK].tolist(), strict=True), a):
                m = (values.get(c >> 1),) if c & 1 else meta[c]
                if c & 1 and m[0] is None:
                    continue
                got = self._load(ns, _key(c), fp, m, touched)
                if got is not None:
                    ok[i] = True
                    got_dim[i], got_rows[i] = got
            del values
        self._commit_spill()
        if ok.any():
            parts.append(_Table(todo.code[ok], todo.fp[ok], got_dim[ok], got_rows[ok]))
        self._sources[ns] = _merged(have, same, _Table.concat(parts))
        self._mark_dead(ns, touched)
        self._share(ns)
        self._dims.pop(ns, None)
        for t in touched:
            sh = self._shards[t]
            sh.version += 1
            if self._needs_rebuild(sh):
                self._schedule(t)

    def _mark_dead(self, ns: int, touched: set[tuple[int, int]]) -> None:
        """Base rows whose source is gone or changed since the base was built are filtered out."""
        live = self._sources.get(ns, _EMPTY)
        for sh in self._shards.values():
            if sh.ns != ns:
                continue
            b = sh.base_keys
            dead_parts, dead_n = [_NO_CODES], 0
            for a in range(0, len(b), CHUNK):      # 1M-wide lookups a chunk at a time
                code = b.code[a:a + CHUNK]
                idx, hit = live.find(code)
                ok = hit & (live.fp[idx] == b.fp[a:a + CHUNK]) & (live.dim[idx] == sh.dim) \
                    if len(live) else hit
                dead_parts.append(code[~ok])
                dead_n += int(b.nrows[a:a + CHUNK][~ok].sum())
            dead = np.concatenate(dead_parts)
            if not np.array_equal(dead, sh.dead):
                sh.dead = dead
                sh.dead_n = dead_n
                touched.add((sh.ns, sh.dim))

    def _share(self, ns: int) -> None:
        """When namespace ns's sources are exactly one shard's base as built (the steady state:
        nothing changed since the last build), the sources table becomes the base's keys,
        which are mapped from the daemon's own file (gen-N/keys.npy), instead of a second
        copy in the heap (28 bytes a source: 27 MiB at a million)."""
        t = self._sources.get(ns)
        if t is None or not len(t):
            return
        for sh in self._shards.values():
            b = sh.base_keys
            if sh.ns != ns or b is t or len(sh.dead) or len(b) != len(t) or not isinstance(b.code, np.memmap):
                continue
            if b.same_rows(t) and all(bool((t.dim[a:a + CHUNK] == sh.dim).all()) for a in range(0, len(t), CHUNK)):
                self._sources[ns] = b
            return

    def _own_pending(self, sh: _Shard) -> dict[Key, _Pending]:
        """The shard's pending dict, copied once per reconcile: searches iterate the old one unlocked."""
        if (sh.ns, sh.dim) not in self._copied:
            sh.pending = dict(sh.pending)
            self._copied.add((sh.ns, sh.dim))
        return sh.pending

    def _drop(self, ns: int, key: Key, dim: int, touched: set[tuple[int, int]]) -> None:
        sh = self._shards.get((ns, dim))
        if sh is None:
            return
        if key in sh.pending:
            self._own_pending(sh).pop(key, None)
        elif len(sh.spilled):
            self._spill_drop.setdefault((ns, dim), array("q")).append(_code(key))
        touched.add((ns, dim))

    def _start_changes(self) -> None:
        """Before a reconcile: no shard's pending dict copied yet, no spilled rows added or dropped."""
        self._copied = set()
        self._spill_add: dict[tuple[int, int], tuple[array, array, array]] = {}
        self._spill_drop: dict[tuple[int, int], array] = {}

    def _commit_spill(self) -> None:
        """After a reconcile: each touched shard's spilled snapshot without the dropped sources,
        with the added ones (their rows flushed first), built a column at a time."""
        for key in set(self._spill_add) | set(self._spill_drop):
            sh = self._shards[key]
            old = sh.spilled
            gone = np.sort(np.frombuffer(self._spill_drop.get(key, array("q")), np.int64))
            keep = ~_in_sorted(_code_of_ids(old.ids), gone) if len(gone) else np.ones(len(old), bool)
            ids, pos, norms = (np.frombuffer(a, dt) for a, dt in
                               zip(self._spill_add.get(key, (array("q"), array("q"), array("f"))),
                                   (np.int64, np.int64, np.float32), strict=True))
            if sh.spill is not None:
                sh.spill.flush()
            if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):   # (a reconcile adds in code order)
                order = np.argsort(ids, kind="stable")
                ids, pos, norms = ids[order], pos[order], norms[order]
            if not len(ids):
                sh.spilled = _Spilled(old.file, old.ids[keep], old.pos[keep], old.norms[keep])
            elif not len(old) or (bool(keep.all()) and old.ids[-1] < ids[0]):
                # the first reconcile (or additions after every spilled id): no million-wide insert;
                # the arrays share the appended buffers
                sh.spilled = _Spilled(sh.spill, *((np.concatenate([a, b]) if len(old) else b) for a, b in
                                                  ((old.ids, ids), (old.pos, pos), (old.norms, norms))))
            else:
                kept = old.ids[keep]
                at = np.searchsorted(kept, ids)
                sh.spilled = _Spilled(sh.spill, np.insert(kept, at, ids), np.insert(old.pos[keep], at, pos),
                                      np.insert(old.norms[keep], at, norms))
        self._spill_add, self._spill_drop = {}, {}

    def _load(self, ns: int, key: Key, fp: int, meta: tuple,
              touched: set[tuple[int, int]]) -> tuple[int, int] | None:
        """Read a new or changed source into its shard's pending rows: its (dim, nrows), or None."""
        eid, own = key
        try:
            if own:
                rows = parse_embedding(meta[0]).reshape(1, -1)
            else:
                name, dim_raw = meta
                dim = parse_dim(dim_raw) if dim_raw is not None else None
                path = self.store.entity_path(eid)
                try:
                    rows = read_entry(path, name, dim)
                except InvalidArgument:
                    if path.stat().st_size != self.store.entity(eid).size:
                        # being written (the catalog learns the size when the writer closes):
                        # no warning, it is read again once the new fingerprint shows up
                        log.debug("entity %d: bytes still changing; read later", eid)
                        return None
                    raise
                if len(rows) > MAX_ROWS:
                    raise InvalidArgument(f"{name}: {len(rows)} rows, more than {MAX_ROWS}")
        except FileNotFoundError:
            return None
        except (InvalidArgument, OSError) as exc:
            if (key, fp) not in self._warned:
                self._warned.add((key, fp))
                log.warning("entity %d is not used as an embedding: %s", eid, exc)
            return None
        self._add_pending(ns, key, rows, touched)
        return (int(rows.shape[1]) if len(rows) else 0), len(rows)

    def _add_pending(self, ns: int, key: Key, rows: np.ndarray, touched: set[tuple[int, int]]) -> None:
        if not len(rows):
            return
        d = int(rows.shape[1])
        sh = self._shards.get((ns, d))
        if sh is None:
            sh = self._shards[(ns, d)] = _Shard(ns, d)
        if len(rows) == 1:          # the common case (a file's own embedding): to the spill file
            if sh.spill is None:
                sh.spill = _SpillFile(self.root if self.writable else None, d)
            row = np.asarray(rows[0], np.float32)
            norm = float(np.linalg.norm(row.reshape(1, -1), axis=1)[0])    # as for several rows
            add = self._spill_add.setdefault((ns, d), (array("q"), array("q"), array("f")))
            add[0].append(int(_ids(key[0], 1, key[1])[0]))
            add[1].append(sh.spill.append(row))
            add[2].append(norm if norm != 0 else 1.0)
            touched.add((ns, d))
            return
        norms = np.empty(len(rows), np.float32)
        for a in range(0, len(rows), 65536):
            norms[a:a + 65536] = np.linalg.norm(np.asarray(rows[a:a + 65536], np.float32), axis=1)
        norms[norms == 0] = 1.0
        self._own_pending(sh)[key] = _Pending(key, _ids(key[0], len(rows), key[1]), rows, norms)
        touched.add((ns, d))

    # ------------------------------------------------------------ sources cache

    def _cache_path(self, ns: int) -> Path:
        return self.root / f"sources-ns{ns}.npz"

    def _save_cache(self, ns: int, gen: int, t: _Table) -> None:
        """Write ns's sources table with the vectors_gen it was read at (temp file + rename)."""
        path = self._cache_path(ns)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}-{threading.get_ident()}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, head=np.array([CACHE_FORMAT, ns, gen], np.int64),
                         code=t.code, fp=t.fp, dim=t.dim, nrows=t.nrows)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("%s: could not write the sources cache (%s)", path, exc)
            tmp.unlink(missing_ok=True)

    def _open_cache(self, ns: int, gen: int) -> bool:
        """Take ns's sources from the cache if it is of this format and was written at vectors_gen
        `gen` (else False: read them all). Only the sources no base holds are read (pending)."""
        path = self._cache_path(ns)
        try:
            with np.load(path, allow_pickle=False) as z:
                head = z["head"]
                if head.shape != (3,) or [int(x) for x in head] != [CACHE_FORMAT, ns, gen]:
                    log.info("%s: not of format %d at vectors_gen %d; reading the sources",
                             path, CACHE_FORMAT, gen)
                    return False
                t = _Table(*(np.asarray(z[f], dt) for f, dt in
                             (("code", np.int64), ("fp", np.int64), ("dim", np.int32), ("nrows", np.int64))))
            if not (len(t.code) == len(t.fp) == len(t.dim) == len(t.nrows)) or \
                    (len(t.code) > 1 and not (np.diff(t.code) > 0).all()):
                raise ValueError("columns of different lengths or unsorted")
        except FileNotFoundError:
            return False
        except Exception as exc:   # noqa: BLE001 - a torn or foreign file: read the sources instead
            log.info("%s: unreadable sources cache (%s); reading the sources", path, exc)
            return False
        self._start_changes()
        touched: set[tuple[int, int]] = set()
        need = t.nrows > 0
        for sh in self._shards.values():
            if sh.ns != ns or not len(sh.base_keys):
                continue
            for a in range(0, len(t), CHUNK):       # a chunk at a time: no 1M-wide transients
                idx, hit = sh.base_keys.find(t.code[a:a + CHUNK])
                need[a:a + CHUNK] &= ~(hit & (sh.base_keys.fp[idx] == t.fp[a:a + CHUNK])
                                       & (t.dim[a:a + CHUNK] == sh.dim))
        need_at = np.flatnonzero(need)
        del need
        for a in range(0, len(need_at), LOAD_CHUNK):     # no million-long Python lists
            at = need_at[a:a + LOAD_CHUNK]
            code = t.code[at].tolist()
            values = self._values([c >> 1 for c in code if c & 1])   # a statement per 500, not 3 each
            for c, n in zip(code, t.nrows[at].tolist(), strict=True):
                if c & 1:
                    v = values.get(c >> 1)
                    rows = None if v is None else _parse_or_none(v)
                else:
                    rows = self._rows_full(ns, _key(c), n)
                if rows is None or len(rows) != n:
                    for sh in self._shards.values():
                        if sh.ns == ns:
                            sh.pending = {}
                    self._start_changes()     # the rows spilled so far are never named
                    return False      # changed since: read everything
                self._add_pending(ns, _key(c), rows, touched)
        self._commit_spill()
        self._sources[ns] = t
        self._mark_dead(ns, touched)
        self._share(ns)
        self._dims.pop(ns, None)
        for k in touched:
            self._shards[k].version += 1
            if self._needs_rebuild(self._shards[k]):
                self._schedule(k)
        return True

    # ------------------------------------------------------------ queries

    def dims(self, ns: int) -> set[int]:
        """Dimensions of the embeddings namespace ns holds (after refresh)."""
        with self._lock:
            got = self._dims.get(ns)
            if got is None:
                t = self._sources.get(ns, _EMPTY)
                got = self._dims[ns] = {int(x) for x in np.unique(t.dim[t.nrows > 0])}
            return got

    def source(self, ns: int, eid: int) -> tuple[np.ndarray | None, int]:
        """The vector that stands for file `eid` in `FILE.query` (own embedding, else the mean of its
        rows, unit-normalized) and how many rows the file holds; (None, 0) without one."""
        with self._lock:
            own, entry = self._sources.get(ns, _EMPTY).of_entity(eid)
            found = [((eid, True), own), ((eid, False), entry)]
        for key, got in found:
            if got is None or not got[1]:
                continue
            rows = self._rows_of(key)
            if rows is not None:
                rows = np.asarray(rows, np.float32)     # (one row, an own embedding: no mean to take)
                return _unit(rows[0] if len(rows) == 1 else rows.mean(axis=0)), got[1]
        return None, 0

    def _rows_of(self, key: Key) -> np.ndarray | None:
        eid, own = key
        try:
            if own:
                value = self.store.xattr_value("file", eid, EMBEDDING_ATTR)    # a first FILE.query read
                return None if value is None else parse_embedding(value).reshape(1, -1)
            info = self.store.entity(eid)
            dim = None
            if entry_kind(info.name) == ".f32":
                dim = parse_dim(self.store.get_xattr("file", eid, DIM_ATTR))
            rows = read_entry(self.store.entity_path(eid), info.name, dim, max_rows=65536)
            return _unit(np.asarray(rows[:65536], np.float32))
        except Exception as exc:   # noqa: BLE001 - a vanished or changed file: no vector
            log.debug("no vector for entity %d: %s", eid, exc)
            return None

    def nrows(self, ns: int, eid: int) -> int:
        """Rows of entity eid's entry (0 if it is not one)."""
        with self._lock:
            got = self._sources.get(ns, _EMPTY).get((eid, False))
            return got[1] if got else 0

    def search(self, ns: int, vector: np.ndarray, k: int, *, nprobe: int | None = None,
               scope: np.ndarray | None = None, scope_token: object = None,
               exclude: int | None = None) -> list[SearchHit]:
        """Top-k sources of dimension len(vector) in namespace ns, best first.

        `scope`: sorted entity ids allowed (None: all); `scope_token` names that set for
        caching (the base ids it allows are computed once per token and index version);
        `exclude`: an entity id left out (FILE.query), by asking for as many more hits as
        it has rows and dropping them, so it does not change the allowed set (a big entry
        excluded is the exception: it goes into the allowed set). Exact over small scopes,
        so k hits come back whenever at least k embeddings are in scope.
        """
        q = _unit(np.asarray(vector, np.float32).reshape(-1))
        d = len(q)
        with self._lock:
            sh = self._shards.get((ns, d))
            if sh is None:
                return []
            base, base_keys, pending, dead, version = sh.base, sh.base_keys, sh.pending, sh.dead, sh.version
            spilled = sh.spilled
            base_n, dead_n = sh.base_n, sh.dead_n
            srcs = self._sources.get(ns, _EMPTY)
            extra = 0
            if exclude is not None:
                extra = sum(got[1] for got in srcs.of_entity(exclude) if got is not None)
        # sorted as documented (not checked here: a check of a 1M-id scope cost 0.6 ms a query)
        scope_set = None if scope is None else np.asarray(scope, np.int64)
        in_mask = exclude if extra > EXCLUDE_BY_MASK else None
        kk = k if in_mask is not None else k + extra
        # a few dead rows (changed since the base was built) are asked for and dropped, like an
        # excluded file: an allowed set of all but them would cost a fresh process a second
        drop_dead = 0 < dead_n <= DEAD_BY_MASK
        if drop_dead:
            kk += dead_n
        results: list[tuple[float, int]] = []
        if base is not None and len(base_keys):
            allowed = self._allowed(ns, d, version, base_keys, _NO_CODES if drop_dead else dead,
                                    scope_set, scope_token, in_mask)
            if allowed is None or len(allowed):
                s, ids = base.search(q.reshape(1, -1), k=kk, nprobe=nprobe, allowed_ids=allowed)
                found = [(a, b) for a, b in zip(s[0].tolist(), ids[0].tolist(), strict=True) if b >= 0]
                if allowed is None and len(found) < min(kk, base_n):
                    # the probed lists held fewer than k rows (small nprobe, big k): with every id
                    # allowed, vecindex falls back to an exact scan, so k hits still come back
                    everything = _keys_ids(base_keys.code, base_keys.nrows)
                    s, ids = base.search(q.reshape(1, -1), k=kk, nprobe=nprobe, allowed_ids=everything)
                    found = [(float(a), int(b)) for a, b in zip(s[0], ids[0], strict=True) if b >= 0]
                if exclude is not None:
                    found = [(a, b) for a, b in found if b >> ROW_BITS != exclude]
                if drop_dead and found:
                    got = np.array([b for _a, b in found], np.int64)
                    keep = ~np.isin((got >> ROW_BITS) * 2 + ((got & OWN_ROW) == OWN_ROW), dead)
                    found = [f for f, ok in zip(found, keep.tolist(), strict=True) if ok]
                results += found
        results += _exact_spilled(q, spilled, k, scope_set, exclude)
        small, big = _pending_blocks(pending)
        if small is not None:
            results += _exact_block(q, small, k, scope_set, exclude)
        for p in big:
            eid = p.key[0]
            if eid == exclude or (scope_set is not None and not _contains(scope_set, eid)):
                continue
            results += _exact(q, p, k)
        results.sort(key=lambda t: -t[0])
        top = results[:k]      # plain ints; an own embedding is one row, an entry's rows are looked up
        entry = [(ident >> ROW_BITS) * 2 for _s, ident in top if ident & OWN_ROW != OWN_ROW]
        rows_of: dict[int, int] = {}
        if entry:
            idx, hit = srcs.find(np.array(entry, np.int64))
            rows_of = {c: n for c, n, h in zip(entry, srcs.nrows[idx].tolist(), hit.tolist(), strict=True) if h}
        out = []
        for score, ident in top:
            eid, row = ident >> ROW_BITS, ident & OWN_ROW
            n = 1 if row == OWN_ROW else rows_of.get(eid * 2, 1)
            out.append(SearchHit(float(score), eid, None if n == 1 else row, n))
        return out

    def _allowed(self, ns: int, d: int, version: int, base_keys: _Table,
                 dead: np.ndarray, scope: np.ndarray | None,
                 scope_token: object, exclude: int | None) -> np.ndarray | None:
        """Ids of the base a query may return, or None when every base row may (the fast path).

        Kept per (scope token, index version, exclude): a FILE.query read passes no
        exclude here (see search), so every file of a view shares one entry."""
        ck = (ns, d, version, scope_token, exclude) if scope_token is not None else None
        if ck is not None:
            with self._lock:
                if ck in self._allowed_cache:
                    return self._allowed_cache[ck]
        ok = np.ones(len(base_keys), bool)
        scope = None if scope is None else _sorted(scope)
        for a in range(0, len(ok), CHUNK):     # a chunk at a time: no 1M-wide transients
            code, part = base_keys.code[a:a + CHUNK], ok[a:a + CHUNK]
            if len(dead):
                part &= ~_in_sorted(code, dead)
            if exclude is not None:
                part &= (code >> 1) != exclude
            if scope is not None:
                part &= _in_sorted(code >> 1, scope)
        if ok.all():
            allowed = None
        elif not ok.any():
            allowed = np.zeros(0, np.int64)
        else:
            allowed = _keys_ids(base_keys.code, base_keys.nrows, ok)
        if ck is not None:
            with self._lock:
                while len(self._allowed_cache) >= ALLOWED_MAX:
                    self._allowed_cache.pop(next(iter(self._allowed_cache)))
                self._allowed_cache[ck] = allowed
        return allowed

    # ------------------------------------------------------------ rebuilding

    def _needs_rebuild(self, sh: _Shard) -> bool:
        if not self.writable:
            return False
        changed = sh.pending_rows() + sh.dead_rows()
        if not changed:
            return False
        return sh.base is None or changed >= min(REBUILD_ROWS, max(1, REBUILD_SHARE * sh.base_total()))

    def _schedule(self, key: tuple[int, int]) -> None:
        if self._worker is None:
            return
        with self._wake:
            if key not in self._todo:
                self._todo.append(key)
            self._wake.notify_all()

    def _run(self) -> None:
        try:
            self._work()
        finally:
            release = getattr(getattr(self.store, "catalog", None), "release_thread", None)
            if release is not None:
                release()          # this thread's catalog connection ends with it

    def _committed(self, version: int) -> None:
        """The change feed saw a commit (its watcher thread): wake the worker if it may have
        changed an embedding source (vectors_gen moved)."""
        if self._worker is None:
            return
        gen = self.generation()
        with self._wake:
            if gen != self._kicked_gen:
                self._kicked_gen, self._kick = gen, True
                self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._todo and not self._stop:
                    wait = self._look_after + (0.0 if self._kick else POLL_S) - time.monotonic()
                    if wait <= 0:
                        break
                    self._wake.wait(wait)
                if self._stop:
                    return
                key = self._todo.pop(0) if self._todo else None
                if key is not None:
                    self._busy += 1
                else:
                    self._kick = False
            if key is None:
                self._poll()
                continue
            try:
                self.rebuild(*key)
            except Exception:   # noqa: BLE001 - the worker must survive; the old base keeps answering
                log.warning("rebuilding the index of namespace %d, dimension %d failed", *key,
                            exc_info=True)
            finally:
                with self._wake:
                    self._busy -= 1

    def _poll(self) -> None:
        """Look for changes in the watched namespaces.

        A look re-reads the namespace's entry files and embedding attributes (~50 ms per 100k
        files): in a big store that changes all the time it would take a core, so the next
        look waits long enough to keep it to POLL_CPU_SHARE (a query still looks itself). Looks
        follow the change feed's reports of an embedding change, else one every POLL_S."""
        with self._lock:
            spaces = self._watched | {ns for ns, _d in self._shards}
        t = time.monotonic()
        for ns in sorted(spaces):
            try:
                self.refresh(ns)
            except Exception:   # noqa: BLE001 - e.g. the store closing under us; queries refresh too
                log.debug("background refresh of namespace %d failed", ns, exc_info=True)
        end = time.monotonic()
        self._poll_wait = (end - t) / POLL_CPU_SHARE
        self._look_after = end + self._poll_wait

    def rebuild(self, ns: int, dim: int) -> None:
        """Build a new base for shard (ns, dim) from its live sources and swap it in atomically."""

        with self._lock:
            sh = self._shards.get((ns, dim))
            if sh is None:
                return
            t = self._sources.get(ns, _EMPTY)
            snap = t.take((t.dim == dim) & (t.nrows > 0))
            pend = dict(sh.pending)
            spilled = sh.spilled
            gen = sh.gen + 1
            sh.gen = gen
        sdir = self.root / f"ns{ns}-d{dim}"
        gdir = sdir / f"gen-{gen}"
        if gdir.exists():
            shutil.rmtree(gdir)
        gdir.mkdir(parents=True)
        n = int(snap.nrows.sum())
        rows_path = gdir / "rows.f32"
        ids = np.empty(n, np.int64)
        at = 0
        with open(rows_path, "wb") as f:
            for b in range(0, len(snap), SPILL_READ):     # spilled rows a chunk at a time
                code, nrows = snap.code[b:b + SPILL_READ], snap.nrows[b:b + SPILL_READ]
                one = _single_ids(code)
                i = np.minimum(np.searchsorted(spilled.ids, one), max(len(spilled) - 1, 0))
                inspill = (spilled.ids[i] == one) & (nrows == 1) if len(spilled) else np.zeros(len(code), bool)
                if inspill.all():
                    f.write(np.ascontiguousarray(spilled.file.rows(spilled.pos[i]), "<f4").tobytes())
                    ids[at:at + len(one)] = one
                    at += len(one)
                    continue
                for c, want, sp_i, sp_ok in zip(code.tolist(), nrows.tolist(), i.tolist(), inspill.tolist(),
                                                strict=True):
                    key = _key(c)
                    if sp_ok:
                        rows = spilled.file.rows(spilled.pos[sp_i:sp_i + 1])
                    else:
                        rows = pend[key].rows if key in pend else self._rows_full(ns, key, want)
                    if rows is None or len(rows) != want:
                        log.info("entity %d changed during a rebuild; retrying later", key[0])
                        shutil.rmtree(gdir, ignore_errors=True)
                        with self._lock:
                            self._schedule((ns, dim))
                        return
                    for a in range(0, len(rows), 65536):
                        f.write(np.ascontiguousarray(rows[a:a + 65536], dtype="<f4").tobytes())
                    ids[at:at + len(rows)] = _ids(key[0], len(rows), key[1])
                    at += len(rows)
        index = _build_base(gdir, rows_path, ids, n, dim)
        del ids
        rows_path.unlink()
        with self._lock:
            old = sh.base
            sh.base, sh.base_keys, sh.base_n = index, snap, n
            self._mark_dead(ns, set())
            _i, inbase = snap.find(np.array([_code(k_) for k_ in sh.pending], np.int64))
            dead = set(sh.dead.tolist())
            sh.pending = {k_: p for (k_, p), b in zip(sh.pending.items(), inbase.tolist(), strict=True)
                          if not b or _code(k_) in dead}
            self._spill_survivors(sh, snap)
            sh.version += 1
            self._write_manifest(sdir, gen, snap)
            sh.base_keys = _mapped_keys(sdir / f"gen-{gen}" / "keys.npy", len(snap), dim)
            self._share(ns)
            again = self._needs_rebuild(sh)
        for g in sdir.glob("gen-*"):
            if g != gdir:
                shutil.rmtree(g, ignore_errors=True)   # open descriptors keep in-flight searches valid
        del old
        log.info("namespace %d, dimension %d: new index of %d rows (gen %d)", ns, dim, n, gen)
        if again:
            self._schedule((ns, dim))

    def _spill_survivors(self, sh: _Shard, snap: _Table) -> None:
        """After a build: the spilled sources the new base does not hold (added or changed
        meanwhile), their rows copied into a fresh spill file; the old one goes when the last
        search holding it ends. Under the lock."""
        old = sh.spilled
        keep = np.ones(len(old), bool)
        for a in range(0, len(old), CHUNK):
            code = _code_of_ids(old.ids[a:a + CHUNK])
            idx, hit = snap.find(code)
            inbase = hit & (snap.nrows[idx] == 1) if len(snap) else hit
            keep[a:a + CHUNK] = ~inbase | _in_sorted(code, sh.dead)
        ids, pos, norms = old.ids[keep], old.pos[keep], old.norms[keep]
        del keep
        sh.spill = _SpillFile(self.root if self.writable else None, sh.dim) if len(ids) else None
        for a in range(0, len(ids), SPILL_READ):
            for row in old.file.rows(pos[a:a + SPILL_READ]):
                sh.spill.append(row)
        if sh.spill is not None:
            sh.spill.flush()
        sh.spilled = _Spilled(sh.spill, ids, np.arange(len(ids), dtype=np.int64), norms) if len(ids) \
            else _NO_SPILL

    def _rows_full(self, ns: int, key: Key, n: int) -> np.ndarray | None:
        eid, own = key
        try:
            if own:
                return parse_embedding(self.store.get_xattr("file", eid, EMBEDDING_ATTR)).reshape(1, -1)
            info = self.store.entity(eid)
            dim = parse_dim(self.store.get_xattr("file", eid, DIM_ATTR)) \
                if entry_kind(info.name) == ".f32" else None
            return read_entry(self.store.entity_path(eid), info.name, dim)
        except Exception as exc:   # noqa: BLE001 - changed or gone: the caller retries
            log.debug("entity %d unreadable during rebuild: %s", eid, exc)
            return None

    # ------------------------------------------------------------ persistence

    def _write_manifest(self, sdir: Path, gen: int, snap: _Table) -> None:
        """The base's sources beside it (gen-N/keys.npy: code, fingerprint, rows), then the
        manifest naming both (temp + rename: a reader sees the old or the new one)."""
        keys = sdir / f"gen-{gen}" / "keys.npy"
        with open(keys, "wb") as f:
            np.save(f, np.stack([snap.code, snap.fp, snap.nrows]))
            f.flush()
            os.fsync(f.fileno())
        doc = {"version": MANIFEST_FORMAT, "gen": gen, "index": f"gen-{gen}/index", "metric": METRIC,
               "keys": f"gen-{gen}/keys.npy", "sources": len(snap)}
        tmp = sdir / "manifest.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, sdir / "manifest.json")

    def _load_persisted(self) -> None:
        if not self.root.is_dir():
            return
        from vecindex import IVFIndex, VecIndexError

        for sdir in sorted(self.root.glob("ns*-d*")):
            try:
                ns_s, d_s = sdir.name[2:].split("-d")
                ns, dim = int(ns_s), int(d_s)
                doc = json.loads((sdir / "manifest.json").read_text(encoding="utf-8"))
                if doc.get("version") not in (1, MANIFEST_FORMAT):
                    raise ValueError(f"manifest format {doc.get('version')}, not {MANIFEST_FORMAT}")
                index = IVFIndex.open(sdir / doc["index"])
                if index.dim != dim:
                    raise ValueError(f"index dimension {index.dim}, directory says {dim}")
                if doc["version"] == 1:
                    keys = _v1_keys(doc["keys"], dim)
                    if self.writable:     # once: later processes read keys.npy, not the JSON
                        self._write_manifest(sdir, int(doc["gen"]), keys)
                else:
                    # mapped, not read: 24 bytes a source (24 MiB at 1M embedded files) stay
                    # out of the daemon's heap; the file is the daemon's own, written once into
                    # its generation directory and never rewritten (removed whole), so no SIGBUS
                    keys = _mapped_keys(sdir / doc["keys"], int(doc["sources"]), dim)
            except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, VecIndexError) as exc:
                # (a reader like `hk query` may race the daemon swapping generations: quietly exact)
                log.log(logging.WARNING if self.writable else logging.INFO,
                        "%s: ignoring the saved index (%s); it is rebuilt from the entries", sdir, exc)
                continue
            self._shards[(ns, dim)] = _Shard(ns, dim, index, keys, int(keys.nrows.sum()),
                                             gen=int(doc["gen"]))

    def stats(self) -> dict[str, Any]:
        """Shard sizes (for logs, tests and `hk query --stats`)."""
        with self._lock:
            return {f"ns{k[0]}-d{k[1]}": {"base_rows": sh.base_total(), "pending_rows": sh.pending_rows(),
                                          "dead_rows": sh.dead_rows(), "gen": sh.gen}
                    for k, sh in self._shards.items()}


def _parse_or_none(value: bytes) -> np.ndarray | None:
    """An embedding xattr as one row, or None when it does not parse (changed since: re-read)."""
    try:
        return parse_embedding(value).reshape(1, -1)
    except InvalidArgument:
        return None


def _build_base(gdir: Path, rows_path: Path, ids: np.ndarray, n: int, dim: int) -> Any:
    """vecindex's build of the rows file into gdir/index. Over BUILD_CHILD_BYTES of rows it
    runs in a child process (hkfs.query.build_child): the build's working set (~250 MiB at a
    million 64-d rows) then never counts in the daemon's RSS (docs/query.md)."""
    from vecindex import IVFIndex

    if n * dim * 4 > BUILD_CHILD_BYTES:
        from .build_child import build_in_child

        np.save(gdir / "ids.npy", ids)
        build_in_child(gdir / "index", rows_path, gdir / "ids.npy", n, dim, METRIC)
        (gdir / "ids.npy").unlink()
        return IVFIndex.open(gdir / "index")
    x = np.memmap(rows_path, np.float32, "r", shape=(n, dim)) if n else np.zeros((0, dim), np.float32)
    return IVFIndex.build(gdir / "index", x, metric=METRIC, ids=ids, progress=False)


def _fingerprint_table(codes: np.ndarray, fps: np.ndarray, embs: np.ndarray) -> _Table:
    """The sources a reconcile found, sorted by code: entry files (codes, fps) and own embeddings
    (embs: id, fp). No dim or rows (zero broadcasts), and no sort when already in order."""
    code = np.concatenate([codes, embs["id"] * 2 + 1]) if len(codes) else embs["id"] * 2 + 1
    fp = np.concatenate([fps, embs["fp"]]) if len(codes) else np.ascontiguousarray(embs["fp"])
    if len(code) > 1 and not bool((code[1:] > code[:-1]).all()):
        order = np.argsort(code, kind="stable")
        code, fp = code[order], fp[order]
    n = len(code)
    return _Table(code, fp, np.broadcast_to(np.int32(0), (n,)), np.broadcast_to(np.int64(0), (n,)))


def _merged(have: _Table, keep: np.ndarray, added: _Table) -> _Table:
    """have's rows where keep, with added's (sorted, codes none of have's kept ones) put in
    order: built a column at a time, so a few changes among a million sources cost the new
    table and one column's copy, not a concatenation and sort of every column. Nothing
    changed: have itself (still shared with a base, `_share`)."""
    if not len(added) and bool(keep.all()):
        return have
    if not len(have):
        return added             # a first reconcile: no million-wide insert
    kept = have.code[keep]
    at = np.searchsorted(kept, added.code)
    code = np.insert(kept, at, added.code)
    del kept
    fp = np.insert(np.asarray(have.fp[keep]), at, added.fp)
    dim = np.insert(np.asarray(have.dim[keep], np.int32), at, added.dim)
    nrows = np.insert(np.asarray(have.nrows[keep]), at, added.nrows)
    return _Table(code, fp, dim, nrows)


def _mapped_keys(path: Path, n: int, dim: int) -> _Table:
    """A base's keys (gen-N/keys.npy: code, fingerprint, rows of its n sources) mapped, not read
    (ValueError when the file is not that); every source of a base has its dimension."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.shape != (3, n) or arr.dtype != np.int64:
        raise ValueError(f"keys of shape {arr.shape}, {arr.dtype}")
    return _Table(arr[0], arr[1], np.broadcast_to(np.int32(dim), (n,)), arr[2])


def _v1_keys(rows: list, dim: int) -> _Table:
    """The keys of a version-1 manifest ([entity, own, fingerprint tuple, rows] in JSON) as a
    table, so an upgrade keeps the trained base instead of rebuilding it."""
    code, fp, nrows = [], [], []
    for e, o, f, n in rows:
        code.append(int(e) * 2 + int(bool(o)))
        fp.append(int(f[1]) << 32 | int(f[2]) if o else _fp64(tuple(f)))
        nrows.append(int(n))
    return _Table.of(code, fp, np.full(len(code), dim, np.int32), nrows)


def _key_ids(eids: np.ndarray, own: np.ndarray, nrows: np.ndarray) -> np.ndarray:
    """The index ids of these keys, in order (vectorized `_ids` over many keys)."""
    counts = np.where(own, 1, nrows)
    total = int(counts.sum())
    ends = np.cumsum(counts)
    rows = np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
    rows[np.repeat(own, counts)] = OWN_ROW
    return (np.repeat(eids, counts) << ROW_BITS) | rows


def _keys_ids(code: np.ndarray, nrows: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    """The index ids of the keys (sorted codes) where `ok` (None: all), in order: `_key_ids`
    CHUNK keys at a time into one array (its transients over a million keys were ~50 MiB)."""
    total = 0
    for a in range(0, len(code), CHUNK):
        count = np.where((code[a:a + CHUNK] & 1) == 1, 1, nrows[a:a + CHUNK])
        total += int(count.sum() if ok is None else count[ok[a:a + CHUNK]].sum())
    out = np.empty(total, np.int64)
    at = 0
    for a in range(0, len(code), CHUNK):
        c, n = code[a:a + CHUNK], nrows[a:a + CHUNK]
        if ok is not None:
            c, n = c[ok[a:a + CHUNK]], n[ok[a:a + CHUNK]]
        part = _key_ids(c >> 1, (c & 1) == 1, n)
        out[at:at + len(part)] = part
        at += len(part)
    return out


def _sorted(x: np.ndarray) -> np.ndarray:
    """x in ascending order: x itself when it already is (one byte a row to check), else sorted."""
    if len(x) < 2 or bool((x[1:] >= x[:-1]).all()):
        return x
    return np.sort(x)


def _in_sorted(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each element of x is in sorted_set (ascending): np.isin's answer by a binary
    search, CHUNK elements at a time. np.isin sorts both arrays together: ~100 MiB of
    transients at a million elements each, against a few MiB here."""
    out = np.zeros(len(x), bool)
    if not len(sorted_set):
        return out
    last = len(sorted_set) - 1
    for a in range(0, len(x), CHUNK):
        part = x[a:a + CHUNK]
        i = np.searchsorted(sorted_set, part)
        np.minimum(i, last, out=i)
        out[a:a + CHUNK] = sorted_set[i] == part
    return out


def _contains(sorted_ids: np.ndarray, eid: int) -> bool:
    i = int(np.searchsorted(sorted_ids, eid))
    return i < len(sorted_ids) and int(sorted_ids[i]) == eid


def _exact(q: np.ndarray, p: _Pending, k: int) -> list[tuple[float, int]]:
    n = len(p.ids)
    if n <= 65536:
        s = (np.asarray(p.rows, np.float32) @ q) / p.norms
    else:
        s = np.empty(n, np.float32)
        for a in range(0, n, 65536):
            s[a:a + 65536] = (np.asarray(p.rows[a:a + 65536], np.float32) @ q) / p.norms[a:a + 65536]
    kk = min(k, n)
    top = np.argpartition(-s, kk - 1)[:kk] if kk < n else np.arange(n)
    return [(float(s[i]), int(p.ids[i])) for i in top]


_BLOCKS: dict[int, tuple[dict, Any]] = {}


def _pending_blocks(pending: dict[Key, _Pending]) -> tuple[_Pending | None, list[_Pending]]:
    """Pending sources as one stacked block of the single-vector ones (own embeddings, one-row
    entries) plus the multi-row entries: thousands of additions cost one matrix product, not a
    Python loop. Computed once per pending dict (it is replaced, never changed, after a reconcile)."""
    hit = _BLOCKS.get(id(pending))
    if hit is not None and hit[0] is pending:
        return hit[1]
    ones = [p for p in pending.values() if len(p.ids) == 1]
    big = [p for p in pending.values() if len(p.ids) != 1]
    block = None
    if ones:
        block = _Pending((-1, False), np.concatenate([p.ids for p in ones]),
                         np.concatenate([np.asarray(p.rows, np.float32) for p in ones]),
                         np.concatenate([p.norms for p in ones]))
    if len(_BLOCKS) > 8:
        _BLOCKS.clear()
    _BLOCKS[id(pending)] = (pending, (block, big))
    return block, big


def _exact_block(q: np.ndarray, p: _Pending, k: int, scope: np.ndarray | None,
                 exclude: int | None) -> list[tuple[float, int]]:
    eids = p.ids >> ROW_BITS
    ok = np.ones(len(eids), bool)
    if scope is not None:
        ok &= _in_sorted(eids, scope)
    if exclude is not None:
        ok &= eids != exclude
    if not ok.all():
        p = _Pending(p.key, p.ids[ok], p.rows[ok], p.norms[ok])
    return _exact(q, p, k) if len(p.ids) else []


def _exact_spilled(q: np.ndarray, sp: _Spilled, k: int, scope: np.ndarray | None,
                   exclude: int | None) -> list[tuple[float, int]]:
    """The exact top-k of the spilled rows in scope, but exclude's: SPILL_READ rows read and
    scored at a time, keeping each chunk's top k (the same hits as one product over them all)."""
    if not len(sp) or sp.file is None or k <= 0:
        return []
    scores, ids = [], []
    for a in range(0, len(sp), SPILL_READ):
        part = sp.ids[a:a + SPILL_READ]
        ok = None
        if scope is not None:
            ok = _in_sorted(part >> ROW_BITS, scope)
        if exclude is not None:
            ok = (part >> ROW_BITS != exclude) if ok is None else ok & (part >> ROW_BITS != exclude)
        pos, norms = sp.pos[a:a + SPILL_READ], sp.norms[a:a + SPILL_READ]
        if ok is not None:
            part, pos, norms = part[ok], pos[ok], norms[ok]
        if not len(part):
            continue
        s = (sp.file.rows(pos) @ q) / norms
        if len(s) > k:
            top = np.argpartition(-s, k - 1)[:k]
            s, part = s[top], part[top]
        scores.append(s)
        ids.append(part)
    if not scores:
        return []
    s, got = np.concatenate(scores), np.concatenate(ids)
    kk = min(k, len(s))
    top = np.argpartition(-s, kk - 1)[:kk] if kk < len(s) else np.arange(len(s))
    return [(float(s[i]), int(got[i])) for i in top]


def sorted_ids(ids: Iterable[int]) -> np.ndarray:
    """Entity ids as the sorted int64 array `search(scope=...)` takes."""
    return np.unique(np.fromiter(ids, dtype=np.int64))
