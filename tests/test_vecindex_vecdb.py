"""The notebook's VecDB API and its own evaluation code, run unmodified on vecindex.VecDB."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List  # noqa: UP035 - copied verbatim from the notebook

import numpy as np
import pytest
from memory_profiler import memory_usage

from vecindex import VecDB

DIMENSION = 64
QUERY_SEED_NUMBER = 10


# ---- verbatim from the notebook seed (In [22]) ----
@dataclass
class Result:
    run_time: float
    top_k: int
    db_ids: List[int]  # noqa: UP006
    actual_ids: List[int]  # noqa: UP006

def run_queries(db, queries, top_k, actual_ids, num_runs):
    """
    Run queries on the database and record results for each query.

    Parameters:
    - db: Database instance to run queries on.
    - queries: List of query vectors.
    - top_k: Number of top results to retrieve.
    - actual_ids: List of actual results to evaluate accuracy.
    - num_runs: Number of query executions to perform for testing.

    Returns:
    - List of Result
    """
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
    """
    Run queries and measure memory usage during the execution.

    Parameters:
    - args: Arguments to be passed to the run_queries function.

    Returns:
    - results: The results of the run_queries.
    - memory_diff: The difference in memory usage before and after running the queries.
    """
    global results
    mem_before = max(memory_usage())
    mem = memory_usage(proc=(run_queries, args, {}), interval = 1e-3)
    return results, max(mem) - mem_before

def evaluate_result(results: List[Result]):  # noqa: UP006
    """
    Evaluate the results based on accuracy and runtime.
    Scores are negative. So getting 0 is the best score.

    Parameters:
    - results: A list of Result objects

    Returns:
    - avg_score: The average score across all queries.
    - avg_runtime: The average runtime for all queries.
    """
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
# ---- end of verbatim code ----


def actual_sorted_ids(vectors: np.ndarray, query: np.ndarray, needed_top_k: int = 10000) -> list[int]:
    """The notebook's ground truth: ids by decreasing cosine similarity."""
    return np.argsort(vectors.dot(query.T).T / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)),
                      axis=1).squeeze().tolist()[::-1][:needed_top_k]


def test_notebook_evaluation_scores_zero_at_100k(tmp_path) -> None:
    db_path = str(tmp_path / "saved_db_100k.dat")
    db = VecDB(database_file_path=db_path, index_file_path=str(tmp_path / "index_100k"),
               new_db=True, db_size=100_000)
    vectors = db.get_all_rows()
    expected = np.random.default_rng(42).random((100_000, DIMENSION), dtype=np.float32)
    np.testing.assert_array_equal(vectors, expected)  # the notebook's commented-out generator
    rng = np.random.default_rng(QUERY_SEED_NUMBER)
    queries = [rng.random((1, 64), dtype=np.float32) for _ in range(20)]
    query_dummy = rng.random((1, 64), dtype=np.float32)
    actual_ids = [actual_sorted_ids(vectors, q) for q in queries]
    del vectors
    # reopen as the notebook does, with new_db=False
    db = VecDB(database_file_path=db_path, index_file_path=str(tmp_path / "index_100k"), new_db=False)
    run_queries(db, query_dummy, 5, actual_ids, 1)  # the notebook's warm-up: queries[0] is 1-D
    res = run_queries(db, queries, 5, actual_ids, len(queries))
    score, _ = evaluate_result(res)
    assert score == 0
    assert all(len(r.db_ids) == 5 for r in res)
    # the notebook's RAM figure: memory_profiler's RSS delta while the queries run
    big = np.ones((2_000_000, 64), np.float32)  # raise glibc's mmap threshold, as a long session does
    del big
    res, mem = memory_usage_run_queries((db, queries, 5, actual_ids, len(queries)))
    assert evaluate_result(res)[0] == 0
    assert mem < 20, f"RAM delta {mem:.1f} MB"


def test_api_rows_and_insert(tmp_path) -> None:
    db_path = str(tmp_path / "db.dat")
    db = VecDB(db_path, str(tmp_path / "ix"), new_db=True, db_size=1000)
    assert db._get_num_records() == 1000
    row = db.get_one_row(17)
    assert row.shape == (64,)
    assert db.retrieve(row, 1) == [17]
    new = np.random.default_rng(1).random((30, 64), dtype=np.float32)
    db.insert_records(new)
    assert db._get_num_records() == 1030
    np.testing.assert_array_equal(db.get_one_row(1012), new[12])
    assert db.retrieve(new[12], 3)[0] == 1012
    assert db.get_all_rows().shape == (1030, 64)
    # a fresh handle on the same files sees the inserted rows through the index
    db2 = VecDB(db_path, str(tmp_path / "ix"), new_db=False)
    assert db2.retrieve(new[5].reshape(1, 64), 5)[0] == 1005
    assert isinstance(db.get_one_row(10**9), str)  # the notebook returns the error text
    assert db._cal_score(new[0], new[0]) == pytest.approx(1.0)


def test_new_db_needs_size(tmp_path) -> None:
    with pytest.raises(ValueError):
        VecDB(str(tmp_path / "db.dat"), str(tmp_path / "ix"), new_db=True)


def test_missing_index_is_rebuilt(tmp_path) -> None:
    db_path = tmp_path / "db.dat"
    np.random.default_rng(3).random((500, 64), dtype=np.float32).tofile(db_path)
    db = VecDB(str(db_path), str(tmp_path / "ix"), new_db=False)
    assert db.retrieve(db.get_one_row(42), 1) == [42]
