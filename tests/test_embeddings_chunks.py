"""The query layer's steps over every source, done a chunk at a time (issue 12 goal 6: a daemon
whose 1M files all carry an embedding stays under 256 MiB): the same answers as the whole-array
versions they replace (np.isin, one `_key_ids` over all keys), with bounded transient memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hkfs.core.store import Store
from hkfs.query import embeddings as emb
from hkfs.query.embeddings import EMBEDDING_ATTR, EmbeddingCatalog, sorted_ids
from vecindex import ivf
from vecindex.ivf import IVFIndex

D = 8


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 18])
def test_in_sorted_is_isin(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(emb, "CHUNK", chunk)
    rng = np.random.default_rng(1)
    for n, m in ((0, 5), (5, 0), (1, 1), (300, 40), (1000, 1000)):
        x = rng.integers(-5, 200, size=n)          # repeats, and values outside the set's range
        s = np.sort(rng.integers(0, 150, size=m))  # repeats in the set too
        assert np.array_equal(emb._in_sorted(x, s), np.isin(x, s)), (n, m)


def test_sorted_copies_only_when_needed() -> None:
    a = np.array([1, 2, 2, 9])
    assert emb._sorted(a) is a
    assert np.array_equal(emb._sorted(np.array([3, 1, 2])), [1, 2, 3])
    assert len(emb._sorted(np.zeros(0, np.int64))) == 0


@pytest.mark.parametrize("chunk", [1, 3, 1 << 18])
def test_keys_ids_is_key_ids_over_the_kept_keys(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(emb, "CHUNK", chunk)
    rng = np.random.default_rng(2)
    eids = np.sort(rng.choice(10_000, size=200, replace=False)).astype(np.int64)
    own = rng.random(200) < 0.5
    code = eids * 2 + own
    nrows = np.where(own, 1, rng.integers(1, 6, size=200)).astype(np.int64)
    for ok in (None, rng.random(200) < 0.3, np.zeros(200, bool)):
        m = np.ones(200, bool) if ok is None else ok
        want = emb._key_ids(eids[m], own[m], nrows[m])
        assert np.array_equal(emb._keys_ids(code, nrows, ok), want)


def _old_allowed(keys: emb._Table, dead: np.ndarray, scope: np.ndarray | None, exclude: int | None) -> np.ndarray | None:
    """EmbeddingCatalog._allowed as it was (np.isin over every source at once)."""
    eids, own, nrows = keys.code >> 1, (keys.code & 1) == 1, keys.nrows
    ok = np.ones(len(eids), bool)
    if len(dead):
        ok &= ~np.isin(keys.code, dead)
    if exclude is not None:
        ok &= eids != exclude
    if scope is not None:
        ok &= np.isin(eids, scope)
    if ok.all():
        return None
    if not ok.any():
        return np.zeros(0, np.int64)
    return emb._key_ids(eids[ok], own[ok], nrows[ok])


def _table(n: int, rng: np.random.Generator) -> emb._Table:
    """n sources: mostly own embeddings, some entries of a few rows."""
    code = np.arange(n, dtype=np.int64) * 2 + 2 + (rng.random(n) < 0.9)
    nrows = np.where(code & 1, 1, rng.integers(1, 4, size=n)).astype(np.int64)
    return emb._Table(code, np.zeros(n, np.int64), np.full(n, D, np.int32), nrows)


@pytest.mark.parametrize("chunk", [5, 1 << 18])
def test_allowed_is_what_it_was(monkeypatch, chunk: int, tmp_path: Path) -> None:
    monkeypatch.setattr(emb, "CHUNK", chunk)
    rng = np.random.default_rng(3)
    keys = _table(500, rng)
    eids = keys.code >> 1
    with Store.open(tmp_path / "s") as st:
        cat = EmbeddingCatalog(st, writable=False)
        try:
            cases = [(emb._NO_CODES, None, None), (np.sort(rng.choice(keys.code, 40, replace=False)), None, None),
                     (emb._NO_CODES, np.sort(rng.choice(eids, 100, replace=False)), None),
                     (np.sort(rng.choice(keys.code, 7, replace=False)), np.sort(rng.choice(eids, 300, replace=False)),
                      int(eids[10])),
                     (emb._NO_CODES, np.array([10**9], np.int64), None), (emb._NO_CODES, eids.copy(), None)]
            for i, (dead, scope, exclude) in enumerate(cases):
                got = cat._allowed(1, D, i, keys, dead, scope, None, exclude)
                want = _old_allowed(keys, dead, scope, exclude)
                assert (got is None) == (want is None), i
                assert got is None or np.array_equal(got, want), i
        finally:
            cat.stop()


def test_allowed_over_a_million_sources_needs_a_few_mib(tmp_path: Path) -> None:
    """np.isin over a million sources and a million-id scope took ~60 MiB of transients (and
    _key_ids ~50 more): the allowed set is built a chunk at a time."""
    n = 1_000_000
    keys = emb._Table(np.arange(n, dtype=np.int64) * 2 + 3, np.zeros(n, np.int64), np.full(n, D, np.int32),
                  np.ones(n, np.int64))
    scope = np.arange(1, n + 1, 2, dtype=np.int64)      # half of them
    with Store.open(tmp_path / "s") as st:
        cat = EmbeddingCatalog(st, writable=False)
        try:
            tracemalloc.start()
            try:
                allowed = cat._allowed(1, D, 0, keys, emb._NO_CODES, scope, None, None)
                _cur, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        finally:
            cat.stop()
    assert allowed is not None and len(allowed) == n // 2
    assert np.array_equal(allowed[:2], [(1 << emb.ROW_BITS) | emb.OWN_ROW, (3 << emb.ROW_BITS) | emb.OWN_ROW])
    extra = peak - allowed.nbytes
    assert extra < 20 << 20, f"{extra / 2**20:.0f} MiB of transients"


def _stub(ids: np.ndarray, tail: np.ndarray, deleted: np.ndarray) -> SimpleNamespace:
    """What IVFIndex.positions_of reads of an index: its stored ids (main, then tail) and deleted positions."""
    stub = SimpleNamespace(n_main=len(ids), n_tail=len(tail), tail_ids=tail, deleted=deleted)
    stub._iter_ids = lambda chunk=1 << 20: ((a, ids[a:a + chunk]) for a in range(0, len(ids), chunk))
    return stub


@pytest.mark.parametrize("chunk", [3, 1 << 18])
def test_positions_of_is_what_it_was(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(ivf, "POSITIONS_CHUNK", chunk)
    rng = np.random.default_rng(4)
    ids = rng.permutation(1000).astype(np.int64) * 3
    tail = np.array([5000, 1, 7002], np.int64)
    deleted = np.sort(rng.choice(1003, 50, replace=False)).astype(np.int64)
    stub = _stub(ids, tail, deleted)
    for want in (rng.choice(3000, 400), np.sort(rng.choice(3000, 400, replace=False)), np.zeros(0, np.int64),
                 np.array([1, 1, 5000]), np.arange(3001)):
        old_want = np.unique(want)
        found = np.flatnonzero(np.isin(np.concatenate([ids, tail]), old_want)) if len(old_want) else []
        old = np.asarray(found, np.int64)
        old = old[~np.isin(old, deleted)]
        assert np.array_equal(IVFIndex.positions_of(stub, want), old)


def test_scoped_search_over_many_sources_gives_the_same_hits(monkeypatch, tmp_path: Path) -> None:
    """A store of a few thousand sources, scoped queries (a tag, all but some changed base rows,
    a file left out) answered with chunks smaller than the store: the hits are the exact top-k of
    the scope, as before."""
    monkeypatch.setattr(emb, "CHUNK", 97)
    monkeypatch.setattr(emb, "DEAD_BY_MASK", 0)      # changed base rows: left out by the allowed set
    monkeypatch.setattr(ivf, "POSITIONS_CHUNK", 101)
    rng = np.random.default_rng(5)
    with Store.open(tmp_path / "store") as st:
        ns = st.namespace_id("alice")
        st.mkkw(ns, "//even", parents=True)
        st.mkkw(ns, "//all", parents=True)
        vecs: dict[int, np.ndarray] = {}
        with st.catalog.write():
            for i in range(3000):
                eid = st.create(ns, f"f{i}.txt", hks=["//all", "//even"] if i % 2 == 0 else ["//all"],
                                uid=0, gid=0)
                v = rng.normal(size=D).astype(np.float32)
                st.set_xattr("file", eid, EMBEDDING_ATTR, v.tobytes())
                vecs[eid] = v
        cat = EmbeddingCatalog(st)
        try:
            cat.refresh(ns)
            cat.rebuild(ns, D)
            changed = list(vecs)[:: 301]                 # dead in the base, pending now
            for eid in changed:
                v = rng.normal(size=D).astype(np.float32)
                st.set_xattr("file", eid, EMBEDDING_ATTR, v.tobytes())
                vecs[eid] = v
            cat.refresh(ns)
            assert cat.stats()[f"ns{ns}-d{D}"]["dead_rows"] == len(changed)
            even = sorted_ids(st.match_ids(ns, ["//even"]))
            for t in range(6):
                q = rng.normal(size=D).astype(np.float32)
                scope = even if t % 2 == 0 else None
                exclude = int(even[t]) if t >= 4 else None
                keys = [e for e in vecs if (scope is None or e in set(even.tolist())) and e != exclude]
                s = unit(np.stack([vecs[e] for e in keys])) @ unit(q)
                want = [keys[i] for i in np.argsort(-s, kind="stable")[:20]]
                hits = cat.search(ns, q, 20, scope=scope, scope_token=("even", t) if scope is not None else None,
                                  exclude=exclude)
                assert [h.eid for h in hits] == want, t
        finally:
            cat.stop()


def test_sources_table_is_the_mapped_base_keys_when_nothing_changed(tmp_path: Path) -> None:
    """After a build, and in a fresh process opening the saved index and sources cache, the
    sources table is the base's mapped keys, not a second copy; a change makes it its own
    table again until the next build, with the same answers."""
    rng = np.random.default_rng(6)
    with Store.open(tmp_path / "store") as st:
        ns = st.namespace_id("alice")
        st.mkkw(ns, "//all", parents=True)
        eids = []
        for i in range(300):
            eids.append(st.create(ns, f"f{i}.txt", hks=["//all"], uid=0, gid=0))
            st.set_xattr("file", eids[-1], EMBEDDING_ATTR, rng.normal(size=D).astype(np.float32).tobytes())
        for writable in (True, False):
            cat = EmbeddingCatalog(st, writable=writable)
            try:
                cat.refresh(ns)
                if writable:
                    cat.rebuild(ns, D)
                sh = cat._shards[(ns, D)]
                assert cat._sources[ns] is sh.base_keys and isinstance(sh.base_keys.code, np.memmap)
                q = rng.normal(size=D).astype(np.float32)
                assert cat.search(ns, q, 5)
            finally:
                cat.stop()
        cat = EmbeddingCatalog(st)
        try:
            cat.refresh(ns)
            st.set_xattr("file", eids[0], EMBEDDING_ATTR, rng.normal(size=D).astype(np.float32).tobytes())
            cat.refresh(ns)
            sh = cat._shards[(ns, D)]
            assert cat._sources[ns] is not sh.base_keys and len(sh.dead) == 1
            v = np.frombuffer(st.get_xattr("file", eids[0], EMBEDDING_ATTR), np.float32)
            assert cat.search(ns, v, 1)[0].eid == eids[0]
            cat.rebuild(ns, D)
            assert cat._sources[ns] is cat._shards[(ns, D)].base_keys
            assert cat.search(ns, v, 1)[0].eid == eids[0]
        finally:
            cat.stop()


def test_merged_is_the_sorted_concatenation() -> None:
    from hkfs.query.embeddings import _merged
    rng = np.random.default_rng(7)
    have = _table(400, rng)
    have = emb._Table(have.code, rng.integers(0, 1 << 40, 400), have.dim, have.nrows)
    for keep_share, n_add in ((1.0, 0), (1.0, 5), (0.9, 0), (0.5, 30), (0.0, 10)):
        keep = rng.random(400) < keep_share
        free = np.setdiff1d(np.arange(2, 2000, dtype=np.int64), have.code[keep])
        codes = np.sort(rng.choice(free, n_add, replace=False))
        added = emb._Table.of(codes, rng.integers(0, 99, n_add), np.full(n_add, D, np.int32), np.ones(n_add))
        got = _merged(have, keep, added)
        want = emb._Table.concat([have.take(keep), added])
        for f in ("code", "fp", "dim", "nrows"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), (keep_share, n_add, f)
            assert getattr(got, f).dtype == getattr(want, f).dtype
    assert _merged(have, np.ones(400, bool), emb._Table.empty()) is have


def test_fingerprint_table_sorts_only_when_needed() -> None:
    from hkfs.query.embeddings import _fingerprint_table
    embs = np.array([(3, 30), (5, 50), (9, 90)], dtype=[("id", np.int64), ("fp", np.int64)])
    t = _fingerprint_table(np.zeros(0, np.int64), np.zeros(0, np.int64), embs)
    assert t.code.tolist() == [7, 11, 19] and t.fp.tolist() == [30, 50, 90]
    t = _fingerprint_table(np.array([10, 2], np.int64), np.array([1, 2], np.int64), embs)
    assert t.code.tolist() == [2, 7, 10, 11, 19] and t.fp.tolist() == [2, 30, 1, 50, 90]
    assert len(t.dim) == len(t.nrows) == 5
