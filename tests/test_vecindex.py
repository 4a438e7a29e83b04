"""IVFIndex against brute force on seeded data; formats, round trips, corruption, filters."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vecindex import IndexFormatError, IVFIndex, VecIndexError
from vecindex.io import open_vectors, write_fvecs

METRICS = ["cosine", "ip", "l2"]


def brute(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k ids and scores, in the index's conventions."""
    x = x.astype(np.float64)
    q = q.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        s = ((q[:, None, :] - x[None]) ** 2).sum(-1)
        order = np.argsort(s, axis=1, kind="stable")[:, :k]
    else:
        s = q @ x.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, 1)


def clustered(n: int, d: int, seed: int, centers: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)) * 3
    return (c[rng.integers(0, centers, n)] + rng.standard_normal((n, d))).astype(np.float32)


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got.tolist(), want.tolist(), strict=False)]))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [0, 1, 7, 3000])
def test_matches_brute_force(tmp_path, metric: str, n: int) -> None:
    x = clustered(n, 12, seed=n + 1)
    q = clustered(9, 12, seed=99)
    nlist = 16 if n >= 3000 else None
    idx = IVFIndex.build(tmp_path / "ix", x, metric=metric, nlist=nlist, progress=False)
    k = 5
    scores, ids = idx.search(q, k, nprobe=idx.nlist or 1)
    assert ids.shape == (9, k) and scores.shape == (9, k)
    m = min(k, n)
    assert (ids[:, m:] == -1).all()
    if n == 0:
        return
    want, want_s = brute(x, q, m, metric)
    assert recall(ids[:, :m], want) >= 0.99
    np.testing.assert_allclose(scores[:, :m], want_s, rtol=1e-4, atol=1e-4)
    if n >= 3000:  # partial probing on clustered data still finds most neighbours
        _, ids2 = idx.search(q, 10, nprobe=4)
        assert recall(ids2, brute(x, q, 10, metric)[0]) >= 0.8


@pytest.mark.parametrize("scan", ["int8", "none"])
def test_scan_modes_agree(tmp_path, scan: str) -> None:
    x = clustered(4000, 16, seed=3)
    q = clustered(20, 16, seed=4)
    idx = IVFIndex.build(tmp_path / scan, x, metric="l2", nlist=8, scan=scan, progress=False)
    _, ids = idx.search(q, 10, nprobe=8)
    assert recall(ids, brute(x, q, 10, "l2")[0]) >= 0.99


def test_two_level_quantizer(tmp_path) -> None:
    x = clustered(20000, 8, seed=5, centers=50)
    q = clustered(20, 8, seed=6, centers=50)
    idx = IVFIndex.build(tmp_path / "ix", x, metric="cosine", nlist=256, two_level=True, progress=False)
    assert idx.info()["ncoarse"] == 16
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    # probing through all coarse cells ranks lists exactly as the flat probe does
    np.testing.assert_array_equal(idx.quantizer.probe(qn, 8, coarse_probe=16), idx.quantizer.probe(qn, 8))
    assert idx.quantizer.probe(qn, 8, coarse_probe=2).shape == (20, 8)
    _, ids = idx.search(q, 10, nprobe=64)
    assert recall(ids, brute(x, q, 10, "cosine")[0]) >= 0.9


def test_vector_file_formats(tmp_path) -> None:
    x = clustered(300, 6, seed=7)
    np.save(tmp_path / "v.npy", x)
    write_fvecs(tmp_path / "v.fvecs", x)
    x.tofile(tmp_path / "v.f32")
    for name, dim in (("v.npy", None), ("v.fvecs", None), ("v.f32", 6)):
        np.testing.assert_array_equal(np.asarray(open_vectors(tmp_path / name, dim)), x)
    with pytest.raises(ValueError):
        open_vectors(tmp_path / "v.f32")  # raw needs a dimension
    with pytest.raises(IndexFormatError):
        open_vectors(tmp_path / "v.f32", 7)  # size not a multiple of the row
    idx = IVFIndex.build(tmp_path / "ix", tmp_path / "v.fvecs", metric="l2", progress=False)
    _, ids = idx.search(x[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_save_open_add_remove_round_trip(tmp_path) -> None:
    x = clustered(3000, 10, seed=8)
    extra = clustered(50, 10, seed=9)
    idx = IVFIndex.build(None, x, metric="cosine", nlist=8, ids=np.arange(3000) + 10**9, progress=False)
    tmpdir = idx.path
    idx2 = idx.save(tmp_path / "saved")
    idx.close()
    assert not tmpdir.exists()  # a path-less build lives in a temporary directory
    idx2.close()
    ix = IVFIndex.open(tmp_path / "saved")
    assert len(ix) == 3000
    new_ids = np.arange(50) + 5 * 10**9
    ix.add(extra, new_ids)
    _, ids = ix.search(extra[:10], 1, nprobe=8)
    assert ids[:, 0].tolist() == new_ids[:10].tolist()  # searchable right after add
    assert ix.remove(new_ids[:5].tolist() + [10**9]) == 6
    ix.close()
    ix = IVFIndex.open(tmp_path / "saved")  # persisted
    assert len(ix) == 3000 + 50 - 6
    _, ids = ix.search(np.vstack([extra[:10], x[:1]]), 3, nprobe=8)
    flat = set(ids.ravel().tolist())
    assert not flat & (set(new_ids[:5].tolist()) | {10**9})
    assert ids[5:10, 0].tolist() == new_ids[5:10].tolist()
    # compaction merges the tail and drops removed rows without changing answers
    before = ix.search(extra[5:], 3, nprobe=8)[1]
    ix.compact()
    assert ix.n_tail == 0 and len(ix.deleted) == 0 and len(ix) == 3044
    np.testing.assert_array_equal(ix.search(extra[5:], 3, nprobe=8)[1], before)
    ix.close()
    assert len(IVFIndex.open(tmp_path / "saved")) == 3044


def test_empty_index_grows_through_compaction(tmp_path) -> None:
    ix = IVFIndex.build(tmp_path / "ix", np.zeros((0, 4), np.float32), metric="l2", progress=False)
    assert ix.search(np.ones((1, 4)), 3)[1].tolist() == [[-1, -1, -1]]
    x = clustered(25000, 4, seed=10)
    ix.add(x[:100])
    assert ix.search(x[:1], 1)[1][0, 0] == 0
    ix.add(x[100:])  # passes the tail threshold: compaction trains a quantizer
    assert ix.n_tail == 0 and ix.nlist == 128
    _, ids = ix.search(x[:20], 5, nprobe=128)
    assert recall(ids, brute(x, x[:20], 5, "l2")[0]) >= 0.99


def test_allowed_ids_filter(tmp_path) -> None:
    x = clustered(5000, 8, seed=11)
    q = clustered(5, 8, seed=12)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="ip", nlist=32, progress=False)
    allowed = np.arange(0, 5000, 97)  # a few rows spread over the lists
    for limit in (50_000, 0):  # exact subset path, then the filtered IVF path with fallback
        _, ids = ix.search(q, 10, nprobe=1, allowed_ids=allowed, exact_limit=limit)
        assert set(ids.ravel().tolist()) <= set(allowed.tolist())
        want, _ = brute(x[allowed], q, 10, "ip")
        if limit:
            assert recall(ids, allowed[want]) == 1.0
        assert (ids >= 0).all()  # still k hits although few are in scope
    _, ids = ix.search(q, 3, allowed_ids=np.array([4, 5]))
    assert sorted(ids[0, :2].tolist()) == [4, 5] and ids[0, 2] == -1


def test_truncated_and_corrupted_files_raise(tmp_path) -> None:
    x = clustered(3000, 8, seed=13)
    IVFIndex.build(tmp_path / "ix", x, metric="cosine", nlist=8, progress=False).close()
    h = json.loads((tmp_path / "ix" / "header.json").read_text())
    # every data file, truncated by one byte: a clear error on open, never a crash
    for logical, ent in h["files"].items():
        d = tmp_path / f"t-{logical}"
        IVFIndex.open(tmp_path / "ix").save(d).close()
        with open(d / ent["name"], "r+b") as f:
            f.truncate(max(ent["bytes"] - 1, 0))
        with pytest.raises(IndexFormatError, match="truncated|corrupted|shorter"):
            IVFIndex.open(d)
    # a flipped byte in a checksummed file
    d = tmp_path / "flip"
    IVFIndex.open(tmp_path / "ix").save(d).close()
    name = h["files"]["centroids"]["name"]
    b = bytearray((d / name).read_bytes())
    b[10] ^= 0xFF
    (d / name).write_bytes(bytes(b))
    with pytest.raises(IndexFormatError, match="checksum"):
        IVFIndex.open(d)
    # an edited header (row count) fails its own checksum; garbage fails to parse
    d = tmp_path / "hdr"
    IVFIndex.open(tmp_path / "ix").save(d).close()
    hh = json.loads((d / "header.json").read_text())
    hh["n_main"] = 10
    (d / "header.json").write_text(json.dumps(hh))
    with pytest.raises(IndexFormatError, match="checksum"):
        IVFIndex.open(d)
    (d / "header.json").write_bytes(b"\x00garbage")
    with pytest.raises(IndexFormatError):
        IVFIndex.open(d)
    with pytest.raises(IndexFormatError):
        IVFIndex.open(tmp_path / "nothing-here")
    # a flipped byte in the vectors file: checked on open while small, by verify() when large
    d = tmp_path / "big"
    IVFIndex.open(tmp_path / "ix").save(d).close()
    vname = h["files"]["vectors"]["name"]
    with open(d / vname, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(IndexFormatError, match="checksum"):
        IVFIndex.open(d).verify()


def test_build_refuses_to_clobber(tmp_path) -> None:
    x = clustered(10, 4, seed=14)
    IVFIndex.build(tmp_path / "ix", x, progress=False).close()
    with pytest.raises(VecIndexError):
        IVFIndex.build(tmp_path / "ix", x, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(VecIndexError):
        IVFIndex.build(tmp_path / "other", x, progress=False, overwrite=True)
    ix = IVFIndex.build(tmp_path / "ix", x[:5], progress=False, overwrite=True)
    assert len(ix) == 5
    assert sorted(os.listdir(tmp_path / "ix")) == sorted(
        ["header.json"] + [e["name"] for e in ix._h["files"].values()])


def test_search_rss_does_not_grow_with_bytes_scanned(tmp_path) -> None:
    psutil = pytest.importorskip("psutil")
    x = np.random.default_rng(15).random((200_000, 64), dtype=np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="cosine", nlist=64, progress=False)
    del x
    q = np.random.default_rng(16).random((40, 64), dtype=np.float32)
    ix.search(q[:2], 5, nprobe=64)  # warm up buffers
    proc = psutil.Process()
    before = proc.memory_info().rss
    ix.search(q, 5, nprobe=64)  # scans 40 x 200k rows = 0.5 GB of codes
    grown = proc.memory_info().rss - before
    assert grown < 20 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_large_files_checked_by_verify(tmp_path, monkeypatch) -> None:
    from vecindex import format as fmt

    monkeypatch.setattr(fmt, "CRC_LIMIT", 1000)  # make every data file "large"
    x = clustered(500, 8, seed=17)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="l2", nlist=4, progress=False)
    ent = ix._h["files"]["vectors"]
    assert ent["crc32"] is None and ent["crc32_full"] is not None
    ix.verify()
    ix.close()
    with open(tmp_path / "ix" / ent["name"], "r+b") as f:
        f.seek(40)
        f.write(b"\x7f")
    ix = IVFIndex.open(tmp_path / "ix")  # size still right: open succeeds
    with pytest.raises(IndexFormatError, match="checksum"):
        ix.verify()


def test_filter_sees_tail_and_skips_removed(tmp_path) -> None:
    x = clustered(3000, 8, seed=18)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="cosine", nlist=8, progress=False)
    ix.add(x[:10] * 2, np.arange(100_000, 100_010))  # same directions as rows 0..9
    ix.remove([0, 100_001])
    allowed = np.array([0, 1, 100_000, 100_001, 100_002])
    _, ids = ix.search(x[:3], 5, allowed_ids=allowed)
    got = set(ids.ravel().tolist()) - {-1}
    assert got == {1, 100_000, 100_002}
    _, ids = ix.search(x[1:2], 5, nprobe=8)
    assert ids[0, 0] == 1 and 100_001 not in ids  # its removed twin in the tail is gone


def test_threaded_batch_equals_serial(tmp_path) -> None:
    x = clustered(5000, 16, seed=19)
    q = clustered(40, 16, seed=20)
    ix = IVFIndex.build(tmp_path / "ix", x, metric="cosine", nlist=16, scan="int8", progress=False)
    s1, i1 = ix.search(q, 7, nprobe=4)
    s2, i2 = ix.search(q, 7, nprobe=4, threads=2)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


def test_top_k_set_matches_a_full_sort_and_breaks_ties_by_index() -> None:
    from vecindex.clustering import top_k_set

    rng = np.random.default_rng(3)
    for n, k in [(1, 1), (5, 5), (5, 9), (2048, 1), (2048, 64), (300, 10)]:
        s = rng.standard_normal(n).astype(np.float32)
        want = np.sort(np.argsort(-s, kind="stable")[: min(k, n)])
        assert np.array_equal(top_k_set(s, k), want)
    s = np.array([3, 1, 2, 2, 2, 0], np.float32)  # the cut falls among the tied 2s
    assert top_k_set(s, 3).tolist() == [0, 2, 3]
    s = np.array([1, np.nan, 3, 2], np.float32)
    assert len(top_k_set(s, 2)) == 2


def test_probe_set_is_the_probe_ranking_as_a_set(tmp_path) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20_000, 16)).astype(np.float32)
    for metric in ("cosine", "l2"):
        idx = IVFIndex.build(tmp_path / metric, x, metric=metric, nlist=128)
        qz = idx.quantizer
        for qv in rng.standard_normal((20, 16)).astype(np.float32):
            if metric == "cosine":
                qv = qv / np.linalg.norm(qv)
            for npb in (1, 7, 128, 500):
                assert np.array_equal(qz.probe_set(qv, npb), np.unique(qz.probe(qv[None, :], npb)[0]))
        idx.close()


def test_progress_bars_only_on_a_terminal(tmp_path, monkeypatch, capsys) -> None:
    """Bars go to stderr, only on a tty, and only for phases longer than PROGRESS_DELAY_S."""
    import vecindex.ivf as ivf

    x = np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32)
    IVFIndex.build(tmp_path / "a", x, nlist=32, progress=True).close()  # pytest's stderr: no tty
    assert capsys.readouterr().err == ""

    class Tty:
        def __init__(self) -> None:
            self.text = []

        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> int:
            self.text.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    tty = Tty()
    monkeypatch.setattr(ivf.sys, "stderr", tty)
    monkeypatch.setattr(ivf, "PROGRESS_DELAY_S", 0.0)
    IVFIndex.build(tmp_path / "b", x, nlist=32, progress=True).close()
    shown = "".join(tty.text)
    assert "train" in shown and "assign" in shown and "write lists" in shown
    tty.text.clear()
    IVFIndex.build(tmp_path / "c", x, nlist=32, progress=False).close()
    assert "".join(tty.text) == ""


def test_calibrated_default_nprobe_reaches_its_recall(tmp_path) -> None:
    xq = clustered(20_100, 16, seed=4, centers=40)  # held-out queries from the same clusters
    x, q = xq[:20_000], xq[20_000:]
    ix = IVFIndex.build(tmp_path / "ix", x, metric="l2", nlist=64, progress=False)
    info = ix.info()
    assert info["nlist"] == 64 and "calibrated" in info["default_nprobe_chosen_by"]
    want, _ = brute(x, q, 10, "l2")
    _, got = ix.search(q, 10)  # the default nprobe
    assert recall(got, want) >= 0.95
    given = IVFIndex.build(tmp_path / "g", x, metric="l2", nlist=64, nprobe=5, progress=False)
    assert given.info()["default_nprobe"] == 5 and given.info()["default_nprobe_chosen_by"] == "given at build"


def test_kmeans_seeding_spreads_centroids_over_skewed_clusters() -> None:
    """Clusters of Zipf-distributed sizes: k random rows as seeds crowd the big clusters, and the
    lists then hold fewer of a query's true neighbours; the default k-means++ seeding keeps more
    of them within the 2 best lists (0.971 against 0.935 for these seeds)."""
    from vecindex.clustering import Quantizer, kmeans

    g = np.random.default_rng(0)
    cent = g.standard_normal((256, 16)) * 2
    share = 1.0 / np.arange(1, 257)
    c = g.choice(256, 30000, p=share / share.sum())
    x = (cent[c] + g.standard_normal((30000, 16)) * np.exp(g.normal(0, 0.7, (256, 16)))[c] * 0.5)
    x = x.astype(np.float32)
    q, base = x[:200], x[200:]
    d2 = (q**2).sum(1)[:, None] - 2 * q @ base.T + (base**2).sum(1)[None]
    truth = np.argsort(d2, 1)[:, :10]

    def held(**kw) -> float:
        quant = Quantizer(kmeans(base, 128, "l2", 12, 0, **kw), "l2")
        lab, probed = quant.assign(base), quant.probe(q, 2)
        return float(np.mean([np.isin(lab[t], p).mean() for t, p in zip(truth, probed, strict=True)]))

    assert held() >= held(init="random") + 0.02
