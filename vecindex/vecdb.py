"""VecDB: the notebook seed's class API, backed by an IVFIndex.

The database file stays the notebook's raw float32 matrix (rows of DIMENSION);
the index lives in the directory `index_file_path`. The constructor, method
names, arguments and return types are the notebook's, so its evaluation code
(run_queries, evaluate_result, memory_usage_run_queries) runs unmodified.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import numpy as np

from vecindex.format import VecIndexError
from vecindex.ivf import IVFIndex, default_nlist

log = logging.getLogger(__name__)

DB_SEED_NUMBER = 42
ELEMENT_SIZE = np.dtype(np.float32).itemsize
DIMENSION = 64
GENERATE_CHUNK = 1_000_000
#: int8-scan candidates re-ranked exactly: uniform data has tiny score gaps near the top
VECDB_RERANK = 256


def vecdb_nprobe(nlist: int) -> int:
    """Lists probed by VecDB.retrieve: 1/8 of them, and at least 64 (all of them below 64).

    Uniform random data has almost no cluster structure; at 1M rows, 1/16 of
    the lists already put all top-5 hits inside the true top-16 for 100 of 100
    queries, so 1/8 keeps a 2x margin. Small databases have few, large-radius
    lists: 32 of 256 at 100k missed 1 query in 100, hence the floor of 64
    (docs/bench/vecindex.md has the figures).
    """
    return max(1, min(nlist, max(64, nlist // 8)))


class VecDB:
    """The notebook's VecDB: cosine top-k over a raw float32 file, answered by an IVF index."""

    def __init__(
        self,
        database_file_path: str = "saved_db.dat",
        index_file_path: str = "index.dat",
        new_db: bool = True,
        db_size: int | None = None,
    ) -> None:
        self.db_path = database_file_path
        self.index_path = index_file_path
        self._index: IVFIndex | None = None
        if new_db:
            if db_size is None:
                raise ValueError("You need to provide the size of the database")
            # delete the old DB file if exists
            if os.path.exists(self.db_path):
                os.remove(self.db_path)
            self.generate_database(db_size)

    def generate_database(self, size: int) -> None:
        """The notebook's generator: default_rng(42).random((size, 64), float32), written in chunks."""
        rng = np.random.default_rng(DB_SEED_NUMBER)
        tmp = self.db_path + ".tmp"
        with open(tmp, "wb") as f:
            for a in range(0, size, GENERATE_CHUNK):
                rng.random((min(GENERATE_CHUNK, size - a), DIMENSION), dtype=np.float32).tofile(f)
        os.replace(tmp, self.db_path)
        self._build_index()

    def _write_vectors_to_file(self, vectors: np.ndarray) -> None:
        mmap_vectors = np.memmap(self.db_path, dtype=np.float32, mode="w+", shape=vectors.shape)
        mmap_vectors[:] = vectors[:]
        mmap_vectors.flush()

    def _get_num_records(self) -> int:
        return os.path.getsize(self.db_path) // (DIMENSION * ELEMENT_SIZE)

    def insert_records(self, rows: Annotated[np.ndarray, (int, 64)]) -> None:
        """Append rows to the database file and add them to the index (ids = row numbers)."""
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, DIMENSION)
        num_old_records = self._get_num_records()
        with open(self.db_path, "ab") as f:
            rows.tofile(f)
        index = self._open_index(expected=num_old_records)
        if index is None:
            self._build_index()
        else:
            index.add(rows, np.arange(num_old_records, num_old_records + len(rows), dtype=np.int64))

    def get_one_row(self, row_num: int) -> np.ndarray:
        # This function is only load one row in memory
        try:
            offset = row_num * DIMENSION * ELEMENT_SIZE
            mmap_vector = np.memmap(self.db_path, dtype=np.float32, mode="r", shape=(1, DIMENSION), offset=offset)
            return np.array(mmap_vector[0])
        except Exception as e:  # noqa: BLE001 - the notebook's contract returns the message
            return f"An error occurred: {e}"  # type: ignore[return-value]

    def get_all_rows(self) -> np.ndarray:
        # Take care this load all the data in memory
        num_records = self._get_num_records()
        vectors = np.memmap(self.db_path, dtype=np.float32, mode="r", shape=(num_records, DIMENSION))
        return np.array(vectors)

    def _cal_score(self, vec1: np.ndarray, vec2: np.ndarray) -> float:
        dot_product = np.dot(vec1, vec2)
        norm_vec1 = np.linalg.norm(vec1)
        norm_vec2 = np.linalg.norm(vec2)
        return float(dot_product / (norm_vec1 * norm_vec2))

    def retrieve(self, query: Annotated[np.ndarray, (1, DIMENSION)], top_k: int = 5) -> list[int]:
        """Ids (row numbers) of the top_k rows by cosine similarity, best first."""
        index = self._open_index(expected=self._get_num_records())
        if index is None:
            log.warning("index at %s missing or stale: rebuilding", self.index_path)
            self._build_index()
            index = self._open_index(expected=self._get_num_records())
            assert index is not None
        q = np.asarray(query, dtype=np.float32).reshape(1, DIMENSION)
        _, ids = index.search(q, top_k, rerank=max(8 * top_k, VECDB_RERANK))
        return [int(i) for i in ids[0] if i >= 0]

    def _open_index(self, expected: int) -> IVFIndex | None:
        """The index if it exists and covers exactly `expected` rows, else None."""
        if self._index is None:
            try:
                self._index = IVFIndex.open(self.index_path)
            except (VecIndexError, FileNotFoundError) as e:
                log.info("no usable index at %s: %s", self.index_path, e)
                return None
        if len(self._index) != expected:
            return None
        return self._index

    def _build_index(self) -> None:
        """Build the IVF index over the whole database file; parameters chosen from its size."""
        n = self._get_num_records()
        if self._index is not None:
            self._index.close()
            self._index = None
        data = np.memmap(self.db_path, dtype=np.float32, mode="r", shape=(n, DIMENSION)) if n else (
            np.zeros((0, DIMENSION), np.float32))
        nlist = default_nlist(n)
        IVFIndex.build(
            self.index_path, data, metric="cosine", nlist=nlist, nprobe=vecdb_nprobe(nlist),
            overwrite=True, progress=True,
        ).close()
