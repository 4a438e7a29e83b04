"""Every search kernel this install has (C, numba, numpy) returns the same hits in the same order."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from vecindex import IVFIndex, _kernels
from vecindex.format import IndexFormatError, VecIndexError

COMPILED = [k for k in _kernels.available() if k != "numpy"]


def _with(monkeypatch, kernel: str, ix: IVFIndex, q: np.ndarray, **kw):
    monkeypatch.setattr(_kernels, "KERNEL", kernel)
    return ix.search(q, **kw)


def assert_same_hits(gs, gi, ws, wi, tie: float = 1e-5) -> None:
    """Same scores, and the same ids in the same order except where two hits tie within `tie`
    (summation order differs between BLAS and a compiled loop, so near-ties may swap)."""
    np.testing.assert_allclose(gs, ws, rtol=1e-4, atol=1e-3)
    for i, j in np.argwhere(gi != wi):
        near = np.flatnonzero(np.abs(ws[i] - ws[i, j]) <= tie)
        assert gi[i, j] in wi[i, near], f"query {i} rank {j}: id {gi[i, j]} not tied with {wi[i, j]}"


def test_the_c_kernel_is_built_where_a_compiler_is() -> None:
    """setup.py builds vecindex._csearch (optional): where a C compiler is (CI, `make setup`
    installs one) it must be there and be the default, else the speed goals silently go."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: this install searches with numba or numpy")
    assert "c" in _kernels.available()
    if not os.environ.get("VECINDEX_KERNEL"):
        assert _kernels.KERNEL == "c"


def test_kernel_choice(monkeypatch) -> None:
    """VECINDEX_KERNEL picks a kernel; an unavailable one falls back in order, a bad name warns."""
    monkeypatch.setattr(_kernels, "available", lambda: ["numba", "numpy"])
    monkeypatch.setenv("VECINDEX_KERNEL", "c")
    assert _kernels._choose() == "numba"
    monkeypatch.setenv("VECINDEX_KERNEL", "numpy")
    assert _kernels._choose() == "numpy"
    monkeypatch.setenv("VECINDEX_KERNEL", "fortran")
    with pytest.warns(UserWarning, match="fortran"):
        assert _kernels._choose() == "numba"
    monkeypatch.undo()  # the real available()
    monkeypatch.setenv("VECINDEX_NUMBA", "0")
    assert "numba" not in _kernels.available()


@pytest.mark.parametrize("kernel", COMPILED)
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("scan", ["int8", "none"])
@pytest.mark.parametrize("d", [13, 16])  # 13: the vector loops' partial last group
def test_compiled_matches_numpy(tmp_path, monkeypatch, kernel: str, metric: str, scan: str, d: int) -> None:
    rng = np.random.default_rng(5)
    c = rng.standard_normal((12, d)) * 3
    x = (c[rng.integers(0, 12, 4000)] + rng.standard_normal((4000, d))).astype(np.float32)
    q = (c[rng.integers(0, 12, 20)] + rng.standard_normal((20, d))).astype(np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x, metric=metric, nlist=16, scan=scan, progress=False)
    ix.remove(np.arange(0, 4000, 7))  # deleted rows are skipped
    cases = ({"k": 7, "nprobe": 4}, {"k": 3, "nprobe": 16, "threads": 2},
             {"k": 5, "nprobe": 2, "allowed_ids": np.arange(1, 4000, 3), "exact_limit": 10},
             {"k": 5000, "nprobe": 1})  # more hits than rows in scope: id -1
    for tail in (False, True):
        if tail:
            ix.add(x[:300] + 0.01, np.arange(10_000, 10_300))  # the tail is merged in
        for kw in cases:
            gs, gi = _with(monkeypatch, kernel, ix, q, **kw)
            ws, wi = _with(monkeypatch, "numpy", ix, q, **kw)
            assert_same_hits(gs, gi, ws, wi)
    ix.close()


@pytest.mark.parametrize("kernel", COMPILED)
def test_compiled_two_level_quantizer(tmp_path, monkeypatch, kernel: str) -> None:
    """Lists chosen in Python and passed in (a two-level quantizer's probes) give the same hits."""
    import vecindex.ivf as ivf

    rng = np.random.default_rng(9)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="l2", nlist=64, progress=False)
    # as if two-level: ivf hands the kernel Quantizer.probe's lists (here still the exact ones)
    monkeypatch.setattr(ivf, "FLAT_PROBE_MAX_NLIST", 8)
    monkeypatch.setattr(ix.quantizer, "coarse", np.zeros((1, 8), np.float32))
    calls = []
    real = type(ix.quantizer).probe
    monkeypatch.setattr(type(ix.quantizer), "probe", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q = rng.standard_normal((10, 8)).astype(np.float32)
    got = _with(monkeypatch, kernel, ix, q, k=5, nprobe=6)
    assert calls  # the kernel was given the lists
    want = _with(monkeypatch, "numpy", ix, q, k=5, nprobe=6)
    assert_same_hits(*got, *want)
    ix.close()


@pytest.mark.parametrize("kernel", COMPILED)
def test_compiled_truncated_file_is_an_error(tmp_path, monkeypatch, kernel: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="ip", nlist=8, scan="int8", progress=False)
    codes = ix._file("codes")
    os.truncate(codes, codes.stat().st_size // 2)
    monkeypatch.setattr(_kernels, "KERNEL", kernel)
    with pytest.raises(IndexFormatError, match="shorter"):
        ix.search(x[:3], k=5, nprobe=8)
    ix.close()


def test_c_kernel_checks_buffer_sizes() -> None:
    """A wrong-sized array is a ValueError, never a read past its end."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    from vecindex._csearch import PANEL, search_batch

    d, nlist, k = 4, 2, 3
    f = np.zeros
    panels = -(-nlist // PANEL)  # the centroids in panels of PANEL (ivf._centroid_panels)
    args = [0, 0, 0, -1, 0, np.array([0] * (nlist + 1), np.int64), f((panels, d, PANEL), np.float32),
            f(0, np.float32), f(d, np.float32), f(d, np.float32), f(0, np.int64), f((1, 0), np.int64), 1,
            f((1, d), np.float32), k, k, f(0, np.int64), f((1, k), np.float32), f((1, k), np.int64),
            f((1, k), np.int64)]
    assert search_batch(*args) == 0  # empty lists: no hits
    assert (args[-1] == -1).all()
    for i, shape, match in ((18, (1, k - 1), "out_p"), (6, (panels, d, PANEL + 1), "cpanels"),
                            (13, (2, d - 1), "Q")):
        bad = list(args)
        bad[i] = f(shape, bad[i].dtype)
        with pytest.raises(ValueError, match=match):
            search_batch(*bad)
    bad = list(args)
    bad[11] = np.array([[5]], np.int64)
    with pytest.raises(ValueError, match="probe"):
        search_batch(*bad)


def test_c_kernel_plain_c_loops_match_numpy(tmp_path) -> None:
    """The portable loops (a CPU without AVX2, forced by VECINDEX_NO_AVX2 at import) give the same
    hits; in a child process because the choice is made once, when the module loads."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    import subprocess
    import sys

    code = f"""
import numpy as np
from vecindex import IVFIndex, _kernels, _csearch
assert _csearch.ISA == "c", _csearch.ISA
rng = np.random.default_rng(3)
x = rng.standard_normal((3000, 13)).astype(np.float32)
for metric in ("cosine", "l2"):
    for scan in ("int8", "none"):
        ix = IVFIndex.build({str(tmp_path)!r} + "/" + metric + scan, x, metric=metric, nlist=16, scan=scan,
                            progress=False)
        _kernels.KERNEL = "c"
        got = ix.search(x[:20] + 0.1, k=8, nprobe=4)
        _kernels.KERNEL = "numpy"
        want = ix.search(x[:20] + 0.1, k=8, nprobe=4)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-3)
        assert (got[1] == want[1]).mean() > 0.99, metric + scan
print("ok")
"""
    env = dict(os.environ, VECINDEX_NO_AVX2="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("kernel", [*COMPILED, "numpy"])
def test_search_after_close_never_reads_another_file(tmp_path, monkeypatch, kernel: str) -> None:
    """A search after close() is a clear error: the C kernel's cached arguments hold descriptor
    numbers, and reading through them would read whatever file reused those numbers."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="l2", nlist=4, progress=False)
    monkeypatch.setattr(_kernels, "KERNEL", kernel)
    ix.search(x[:1], k=3)
    ix.close()
    fds = [os.open(tmp_path / "ix" / "header.json", os.O_RDONLY) for _ in range(8)]  # reuse the numbers
    try:
        with pytest.raises(VecIndexError, match="closed"):
            ix.search(x[:1], k=3)
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("kernel", COMPILED)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_a_batch_gives_each_query_what_it_gets_alone(tmp_path, monkeypatch, kernel: str, metric: str) -> None:
    """The C kernel scans lists once for all the queries of a batch that probe them, split over
    threads in whatever order they finish: the hits must still be exactly those of each query
    searched alone, exact ties (duplicate rows) included, over several rounds of queries (a huge
    rerank makes a round a few queries), with deleted rows and an id filter."""
    rng = np.random.default_rng(12)
    c = rng.standard_normal((6, 12)) * 2
    x = (c[rng.integers(0, 6, 3000)] + rng.standard_normal((3000, 12))).astype(np.float32)
    x[1500:2000] = x[1000:1500]  # duplicates: equal scores, ranked by position
    q = np.concatenate([x[1000:1010] + 0.001, (c[rng.integers(0, 6, 30)] + rng.standard_normal((30, 12)))])
    q = q.astype(np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x, metric=metric, nlist=16, scan="int8", progress=False)
    ix.remove(np.arange(0, 3000, 11))
    monkeypatch.setattr(_kernels, "KERNEL", kernel)
    for kw in ({"k": 10, "nprobe": 5}, {"k": 4, "nprobe": 16, "rerank": 200_000},
               {"k": 6, "nprobe": 3, "allowed_ids": np.arange(0, 3000, 2), "exact_limit": 10}):
        alone = [ix.search(q[i : i + 1], **kw) for i in range(len(q))]
        want_s = np.concatenate([a[0] for a in alone])
        want_i = np.concatenate([a[1] for a in alone])
        for threads in (1, 2, 3):
            got_s, got_i = ix.search(q, threads=threads, **kw)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_array_equal(got_s, want_s)
    # one query 64 times: every block is probed by all of them, so with threads its queries are
    # split over several units (SPLIT_UNITS in _csearch.c), each scanning the block itself
    same = np.repeat(q[:1], 64, axis=0)
    one_s, one_i = ix.search(q[:1], k=10, nprobe=2)
    for threads in (2, 3):
        got_s, got_i = ix.search(same, k=10, nprobe=2, threads=threads)
        np.testing.assert_array_equal(got_i, np.repeat(one_i, 64, axis=0))
        np.testing.assert_array_equal(got_s, np.repeat(one_s, 64, axis=0))
    ix.close()


@pytest.mark.parametrize("kernel", COMPILED)
@pytest.mark.parametrize("scan", ["int8", "none"])
def test_ties_across_lists_rank_by_position_in_a_batch(tmp_path, monkeypatch, kernel: str, scan: str) -> None:
    """Rows of many lists with exactly equal scores (the query looks at one dimension, whose values
    repeat): the kept hits are the lowest positions, whichever thread or block offered them first."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4000, 8)) * 3).astype(np.float32)
    x[:, 0] = rng.integers(0, 3, 4000)  # three values: hundreds of rows tie, in every list
    q = np.zeros((24, 8), np.float32)
    q[:, 0] = 1.0
    q[12:, 1] = rng.standard_normal(12).astype(np.float32) * 1e-3  # near-ties too
    ix = IVFIndex.build(tmp_path / "ix", x, metric="ip", nlist=32, scan=scan, progress=False)
    monkeypatch.setattr(_kernels, "KERNEL", kernel)
    want_s, want_i = _with(monkeypatch, "numpy", ix, q, k=15, nprobe=32)
    monkeypatch.setattr(_kernels, "KERNEL", kernel)
    for threads in (1, 2):
        got_s, got_i = ix.search(q, k=15, nprobe=32, threads=threads)
        np.testing.assert_array_equal(got_i[:12], want_i[:12])
        assert_same_hits(got_s, got_i, want_s, want_i)
    ix.close()


@pytest.mark.parametrize("kernel", COMPILED)
def test_ties_at_a_threshold_another_thread_shared(tmp_path, monkeypatch, kernel: str) -> None:
    """Threads share each query's threshold (offer_rows in _csearch.c): a row whose score equals
    another thread's threshold may still rank above it by its lower position, so it must be kept.
    Thousands of rows tie here, in every list, and blocks finish in any order on two threads."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((20000, 8)) * 3).astype(np.float32)
    x[:, 0] = rng.integers(0, 3, 20000)
    q = np.zeros((48, 8), np.float32)
    q[:, 0] = 1.0
    monkeypatch.setattr(_kernels, "KERNEL", kernel)
    for scan in ("none", "int8"):
        ix = IVFIndex.build(tmp_path / scan, x, metric="ip", nlist=64, scan=scan, progress=False)
        want = np.concatenate([ix.search(q[i : i + 1], k=15, nprobe=64)[1] for i in range(len(q))])
        for _ in range(3):
            np.testing.assert_array_equal(ix.search(q, k=15, nprobe=64, threads=2)[1], want)
        ix.close()


def test_without_the_c_kernel_vecindex_falls_back(tmp_path) -> None:
    """An install whose optional C build failed (no compiler) has no vecindex._csearch: vecindex
    imports, builds and searches with numba or numpy. In a child process, with the module made
    unimportable before vecindex is imported."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["vecindex._csearch"] = None  # as if setup.py's optional build had failed
import numpy as np
from vecindex import IVFIndex, _kernels
assert "c" not in _kernels.available() and _kernels.KERNEL != "c", _kernels.KERNEL
x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
ix = IVFIndex.build({str(tmp_path)!r} + "/ix", x, metric="l2", nlist=16, progress=False)
s, i = ix.search(x[:5], 5, nprobe=16, threads=2)
assert (i[:, 0] == np.arange(5)).all(), i
print("ok", _kernels.KERNEL)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


def _zipf_index(tmp_path, n: int = 20000, d: int = 16, nlist: int = 64):
    """Zipf-sized clusters (cluster c holds a share of rows proportional to 1/(c+1)), as the
    bench's clustered set: a few lists hold most rows, so a batch's work per list is skewed."""
    rng = np.random.default_rng(21)
    c = rng.standard_normal((48, d)).astype(np.float32) * 3
    share = 1.0 / np.arange(1, 49)
    lab = rng.choice(48, n + 600, p=share / share.sum())
    x = (c[lab] + rng.standard_normal((n + 600, d)).astype(np.float32) * 0.7).astype(np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x[:n], metric="l2", nlist=nlist, scan="int8", progress=False)
    return ix, x[n:]


def test_batch_work_split_is_exact_on_skewed_lists(tmp_path) -> None:
    """A batch big enough that every phase runs on the call's team of threads (600 queries x 64
    lists, Zipf-sized lists, removed rows): 1, 2, 3, 8 and 12 threads return exactly the hits of
    each query searched alone, over several calls (the helpers serve every phase of a call)."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    ix, q = _zipf_index(tmp_path)
    ix.remove(np.arange(0, 20000, 13))
    sizes = np.diff(ix.offsets)
    assert sizes.max() > 3 * np.median(sizes)  # skewed indeed (k-means splits the biggest clusters)
    alone = [ix.search(q[i : i + 1], k=10, nprobe=8) for i in range(0, len(q), 7)]
    want_s = np.concatenate([a[0] for a in alone])
    want_i = np.concatenate([a[1] for a in alone])
    ref_s, ref_i = ix.search(q, k=10, nprobe=8, threads=1)
    np.testing.assert_array_equal(ref_i[::7], want_i)
    np.testing.assert_array_equal(ref_s[::7], want_s)
    for threads in (2, 3, 8, 12, 2):
        got_s, got_i = ix.search(q, k=10, nprobe=8, threads=threads)
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_array_equal(got_s, ref_s)
    ix.close()


def test_scratch_is_reused_above_eight_threads(tmp_path) -> None:
    """The kernel keeps each thread's scratch buffers between calls: a second call with 12
    threads allocates no new scratch set (the pool once held 8, so above 7 threads every call
    reallocated its buffers)."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    from vecindex._csearch import scratch_sets_made

    ix, q = _zipf_index(tmp_path, n=5000, nlist=16)
    ix.search(q[:200], k=5, nprobe=4, threads=12)
    made = scratch_sets_made()
    for _ in range(3):
        ix.search(q[:200], k=5, nprobe=4, threads=12)
    assert scratch_sets_made() == made
    ix.close()


def test_a_short_file_is_an_error_on_many_threads(tmp_path) -> None:
    """A read that fails in a helper thread ends the call with the error (no hang): in the scan
    (codes) and in the round's re-rank (float32 rows)."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    for name in ("vectors", "codes"):
        ix, q = _zipf_index(tmp_path / name)
        f = ix._file(name)
        os.truncate(f, f.stat().st_size // 3)
        for threads in (1, 2, 5):
            with pytest.raises(IndexFormatError, match="shorter"):
                ix.search(q, k=10, nprobe=16, threads=threads)
        ix.close()


def test_concurrent_calls_share_the_helper_pool(tmp_path) -> None:
    """The kernel lends its kept helper threads to one call at a time; a call that finds them
    lent starts its own. Two Python threads searching two indexes at once, many times, with 2 and
    3 threads: every call returns exactly the one-thread hits."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    from concurrent.futures import ThreadPoolExecutor

    a, q = _zipf_index(tmp_path / "a")
    b, _ = _zipf_index(tmp_path / "b", n=15000)
    want = {id(ix): ix.search(q, k=10, nprobe=8, threads=1) for ix in (a, b)}

    def run(ix: IVFIndex) -> None:
        for t in (2, 3, 2, 3, 2):
            got = ix.search(q, k=10, nprobe=8, threads=t)
            np.testing.assert_array_equal(got[1], want[id(ix)][1])
            np.testing.assert_array_equal(got[0], want[id(ix)][0])

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(run, [a, b, a, b]))
    a.close()
    b.close()


def test_a_forked_child_searches_on_threads(tmp_path) -> None:
    """A child forked after the parent's threaded searches has none of the kept helper threads:
    its threaded searches still finish with the same hits (the kernel makes a new pool)."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    import subprocess
    import sys

    ix, q = _zipf_index(tmp_path)
    ix.close()
    np.save(tmp_path / "q.npy", q)
    code = f"""
import os, sys
import numpy as np
from vecindex import IVFIndex
ix = IVFIndex.open({str(tmp_path / "ix")!r})
q = np.load({str(tmp_path / "q.npy")!r})
want = ix.search(q, k=10, nprobe=8, threads=1)[1]
assert (ix.search(q, k=10, nprobe=8, threads=3)[1] == want).all()
pid = os.fork()
if pid == 0:
    ok = all((ix.search(q, k=10, nprobe=8, threads=t)[1] == want).all() for t in (2, 3, 4))
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert (ix.search(q, k=10, nprobe=8, threads=2)[1] == want).all()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_helpers_read_through_their_own_opens(tmp_path) -> None:
    """A call's helper threads read the index files through their own opens of them (reopened
    through /proc/self/fd, so threads reading at once do not share one open file's reference
    count): they follow the open file, not its path (the files unlinked after open still search
    alike on 1-12 threads), and every call closes them again."""
    if "c" not in _kernels.available():
        pytest.skip("no C kernel in this install")
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc: the helpers share the caller's descriptors")
    ix, q = _zipf_index(tmp_path)
    want = ix.search(q, k=10, nprobe=8, threads=1)
    for name in ("vectors", "codes", "ids"):
        os.unlink(ix._file(name))
    before = _open_fds()
    for threads in (2, 3, 8, 12, 2):
        got = ix.search(q, k=10, nprobe=8, threads=threads)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    assert _open_fds() == before
    ix.close()
