"""hkfs.query.embeddings and hkfs.mount.queryfs without FUSE: entries, per-file embeddings, the catalog
against brute force, scope, changes, persistence, background rebuilds, hit paths."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from hkfs.core.errors import InvalidArgument
from hkfs.core.store import Store
from hkfs.mount.queryfs import QueryFS
from hkfs.mount.views import Resolver
from hkfs.query.embeddings import (
    DIM_ATTR,
    EMBEDDING_ATTR,
    EmbeddingCatalog,
    parse_dim,
    parse_embedding,
    read_entry,
    sorted_ids,
)
from hkfs.query.queryfiles import Query
from vecindex.io import write_fvecs

D = 8


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def st(tmp_path: Path):
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


def put(st: Store, ns: int, name: str, rows: np.ndarray | None = None, hks=("//photo",),
        own: np.ndarray | None = None, directory: int | None = None) -> int:
    eid = st.create(ns, name, hks=list(hks) if directory is None else (), directory=directory, uid=0, gid=0)
    if rows is not None:
        write_entry(st, eid, name, rows)
    if own is not None:
        st.set_xattr("file", eid, EMBEDDING_ATTR, " ".join(f"{v:.9g}" for v in own).encode())
    return eid


def write_entry(st: Store, eid: int, name: str, rows: np.ndarray) -> None:
    p = st.entity_path(eid)
    if name.endswith(".npy"):
        with open(p, "wb") as f:
            np.save(f, rows.astype(np.float32))
    elif name.endswith(".fvecs"):
        write_fvecs(p, rows)
    else:
        rows.astype("<f4").tofile(p)
        st.set_xattr("file", eid, DIM_ATTR, str(rows.shape[1]).encode())
    info = p.stat()
    st.set_attrs(eid, size=info.st_size, mtime_ns=info.st_mtime_ns + 1)


def brute(q: np.ndarray, items: dict[tuple[int, int | None], np.ndarray], k: int) -> list[tuple[int, int | None]]:
    keys = list(items)
    s = unit(np.stack([items[kk] for kk in keys])) @ unit(q)
    return [keys[i] for i in np.argsort(-s, kind="stable")[:k]]


@pytest.fixture
def data(st: Store):
    """Three entries (npy 40 rows, fvecs 25 rows, f32 1 row) and 10 files with their own embedding."""
    rng = np.random.default_rng(7)
    ns = st.namespace_id("alice")
    for hk in ("//photo", "//animal/dog", "//animal/cat", "//doc"):
        st.mkkw(ns, hk, parents=True)
    items: dict[tuple[int, int | None], np.ndarray] = {}
    a = rng.normal(size=(40, D)).astype(np.float32)
    e = put(st, ns, "a.npy", a, ("//photo", "//animal/dog"))
    items.update({(e, r): a[r] for r in range(40)})
    b = rng.normal(size=(25, D)).astype(np.float32)
    e = put(st, ns, "b.fvecs", b, ("//photo", "//animal/cat"))
    items.update({(e, r): b[r] for r in range(25)})
    c = rng.normal(size=(1, D)).astype(np.float32)
    e = put(st, ns, "c.f32", c, ("//doc",))
    items[(e, None)] = c[0]
    for i in range(10):
        v = rng.normal(size=D).astype(np.float32)
        e = put(st, ns, f"f{i}.txt", None, ("//photo", "//animal/dog") if i % 2 else ("//doc",), own=v)
        items[(e, None)] = v
    return ns, items, rng


def got(hits) -> list[tuple[int, int | None]]:
    return [(h.eid, h.row) for h in hits]


# ------------------------------------------------------------------ readers


def test_read_entry_formats_and_errors(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    with open(tmp_path / "e1", "wb") as f:
        np.save(f, x)
    assert np.array_equal(read_entry(tmp_path / "e1", "v.npy"), x)
    write_fvecs(tmp_path / "e2", x)
    assert np.array_equal(read_entry(tmp_path / "e2", "v.FVECS"), x)
    x.tofile(tmp_path / "e3")
    assert np.array_equal(read_entry(tmp_path / "e3", "v.f32", 3), x)
    with pytest.raises(InvalidArgument, match="needs its dimension"):
        read_entry(tmp_path / "e3", "v.f32")
    with pytest.raises(InvalidArgument, match="whole number"):
        read_entry(tmp_path / "e3", "v.f32", 5)
    with open(tmp_path / "e4", "wb") as f:
        np.save(f, np.zeros(5, np.float32))
    with pytest.raises(InvalidArgument, match="2-D float"):
        read_entry(tmp_path / "e4", "v.npy")
    (tmp_path / "e5").write_bytes(b"not numpy")
    with pytest.raises(InvalidArgument, match="readable"):
        read_entry(tmp_path / "e5", "v.npy")


@pytest.mark.parametrize("big", [False, True], ids=["read", "private-copy"])
@pytest.mark.parametrize("fmt", ["v.npy", "v.fvecs", "v.f32"])
def test_entry_rows_survive_the_file_being_cut(tmp_path: Path, fmt: str, big: bool) -> None:
    """Rows read from an entry stay readable after another process truncates the file (as
    `np.save` over it does): with a memory mapping the daemon died of SIGBUS when its index
    worker copied rows of an entry being rewritten. An entry over COPY_MAX (made 4 KiB here)
    is mapped, but from a private copy. Run in a child: SIGBUS kills the process."""
    import subprocess
    import sys

    code = f"""
import os, numpy as np
from hkfs.query import embeddings
from hkfs.query.embeddings import read_entry
from vecindex.io import write_fvecs
if {big!r}:
    embeddings.COPY_MAX = 4096
p = {str(tmp_path / "e")!r}
x = np.arange(3 * 4096, dtype=np.float32).reshape(4096, 3)
if {fmt!r} == "v.npy":
    np.save(open(p, "wb"), x)
elif {fmt!r} == "v.fvecs":
    write_fvecs(p, x)
else:
    x.tofile(p)
rows = read_entry(p, {fmt!r}, 3)
assert isinstance(rows.base if {fmt!r} == "v.fvecs" else rows, np.memmap) == {big!r}
os.truncate(p, 0)
print(float(np.asarray(rows, np.float64).sum()) == float(x.astype(np.float64).sum()))
x.tofile(p + ".f32")
print(np.array_equal(read_entry(p + ".f32", "v.f32", 3, max_rows=5), x[:5]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["True", "True"], (r.returncode, r.stderr[-500:])


def test_a_short_read_is_an_invalid_entry(tmp_path: Path) -> None:
    """A file cut between its header and its rows reads as not an entry (read again later)."""
    from hkfs.query import embeddings

    x = np.ones((10, 3), np.float32)
    np.save(open(tmp_path / "e", "wb"), x)
    with pytest.raises(InvalidArgument, match="changed while read"):
        embeddings._read_copy(tmp_path / "e", "v.npy", np.dtype("<f4"), 128, (20, 3))


def test_attr_values() -> None:
    assert parse_embedding(b"1 2 3").tolist() == [1, 2, 3]
    raw = np.array([1.5, -2], "<f4").tobytes()
    assert parse_embedding(raw).tolist() == [1.5, -2]
    assert parse_dim(b" 64\n") == 64
    for bad in (b"x", b"0", b"-3"):
        with pytest.raises(InvalidArgument):
            parse_dim(bad)
    with pytest.raises(InvalidArgument):
        parse_embedding(b"1 nan")


# ------------------------------------------------------------------ the catalog


def test_search_equals_brute_force_before_and_after_rebuild(st: Store, data) -> None:
    ns, items, rng = data
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    for rebuilt in (False, True):
        for _ in range(5):
            q = rng.normal(size=D).astype(np.float32)
            for k in (1, 5, 100):
                assert got(cat.search(ns, q, k)) == brute(q, items, k), (rebuilt, k)
        cat.rebuild(ns, D)
        assert cat.stats()[f"ns{ns}-d{D}"]["pending_rows"] == 0
    cat.stop()


def test_scope_exclude_and_k_guaranteed(st: Store, data) -> None:
    ns, items, rng = data
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    cat.rebuild(ns, D)
    dogs = sorted_ids(st.match_ids(ns, ["//animal/dog"]))
    inscope = {kk: v for kk, v in items.items() if kk[0] in set(dogs.tolist())}
    q = rng.normal(size=D).astype(np.float32)
    hits = cat.search(ns, q, 30, scope=dogs, scope_token="dogs")
    assert len(hits) == 30 and got(hits) == brute(q, inscope, 30)
    first = hits[0].eid
    noself = {kk: v for kk, v in inscope.items() if kk[0] != first}
    assert got(cat.search(ns, q, 30, scope=dogs, scope_token="dogs", exclude=first)) == brute(q, noself, 30)
    assert cat.search(ns, np.ones(3, np.float32), 3) == []       # no embeddings of that dimension
    cat.stop()


@pytest.mark.parametrize("dead_by_mask", [0, 256])   # changed base rows: left out by the allowed set, or dropped
def test_changes_show_in_next_search(st: Store, data, monkeypatch, dead_by_mask) -> None:
    monkeypatch.setattr("hkfs.query.embeddings.DEAD_BY_MASK", dead_by_mask)
    ns, items, rng = data
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    cat.rebuild(ns, D)
    # a new entry, a changed own embedding, a removed entry, a retag (scope only)
    new = rng.normal(size=(3, D)).astype(np.float32)
    e_new = put(st, ns, "new.npy", new)
    items.update({(e_new, r): new[r] for r in range(3)})
    own_ids = [kk[0] for kk in items if kk[1] is None and st.entity(kk[0]).name.startswith("f")]
    v = rng.normal(size=D).astype(np.float32)
    st.set_xattr("file", own_ids[0], EMBEDDING_ATTR, v.astype("<f4").tobytes())
    items[(own_ids[0], None)] = v
    a_id = st.match_ids(ns, [], "a.npy")[0]
    st.rme(a_id)
    items = {kk: x for kk, x in items.items() if kk[0] != a_id}
    cat.refresh(ns)
    for _ in range(5):
        q = rng.normal(size=D).astype(np.float32)
        assert got(cat.search(ns, q, 20)) == brute(q, items, 20)
    st.dtkw(e_new, ["//photo"])
    st.atkw(e_new, ["//doc"])
    docs = sorted_ids(st.match_ids(ns, ["//doc"]))
    q = new[1]
    hits = cat.search(ns, q, 2, scope=docs, scope_token=("doc", 2))
    assert (hits[0].eid, hits[0].row) == (e_new, 1)
    # renaming an entry to a non-entry name drops it
    st.chfn(e_new, "new.txt")
    cat.refresh(ns)
    assert all(h.eid != e_new for h in cat.search(ns, q, 50))
    cat.stop()


def test_persisted_index_reused_and_corruption_rebuilt(st: Store, data, tmp_path: Path) -> None:
    ns, items, rng = data
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    cat.rebuild(ns, D)
    cat.stop()
    cat2 = EmbeddingCatalog(st, writable=False)
    cat2.refresh(ns)
    s = cat2.stats()[f"ns{ns}-d{D}"]
    assert s["pending_rows"] == 0 and s["base_rows"] == len(items)
    q = rng.normal(size=D).astype(np.float32)
    assert got(cat2.search(ns, q, 10)) == brute(q, items, 10)
    cat2.stop()
    manifest = st.root / "vectors" / f"ns{ns}-d{D}" / "manifest.json"
    manifest.write_text("{broken")
    cat3 = EmbeddingCatalog(st)
    cat3.refresh(ns)
    assert cat3.stats()[f"ns{ns}-d{D}"]["pending_rows"] == len(items)
    assert got(cat3.search(ns, q, 10)) == brute(q, items, 10)
    cat3.rebuild(ns, D)
    assert json.loads(manifest.read_text())["gen"] >= 1
    cat3.stop()


def test_background_rebuild_answers_from_previous_index(st: Store, data, monkeypatch) -> None:
    ns, items, rng = data
    cat = EmbeddingCatalog(st)
    cat.start()
    cat.refresh(ns)
    assert cat.wait_idle(60)
    assert cat.stats()[f"ns{ns}-d{D}"]["base_rows"] == len(items)
    import vecindex
    gate, entered = threading.Event(), threading.Event()
    real = vecindex.IVFIndex.build.__func__

    def slow_build(cls, *a, **kw):
        entered.set()
        gate.wait(30)
        return real(cls, *a, **kw)
    monkeypatch.setattr(vecindex.IVFIndex, "build", classmethod(slow_build))
    new = rng.normal(size=(5, D)).astype(np.float32)
    e = put(st, ns, "more.npy", new)
    items.update({(e, r): new[r] for r in range(5)})
    cat.refresh(ns)
    assert entered.wait(30)              # the rebuild is running ...
    for _ in range(3):                   # ... and queries are answered meanwhile, new rows included
        q = rng.normal(size=D).astype(np.float32)
        assert got(cat.search(ns, q, 15)) == brute(q, items, 15)
    gate.set()
    assert cat.wait_idle(60)
    s = cat.stats()[f"ns{ns}-d{D}"]
    assert s["base_rows"] == len(items) and s["pending_rows"] == 0
    q = rng.normal(size=D).astype(np.float32)
    assert got(cat.search(ns, q, 15)) == brute(q, items, 15)
    cat.stop()


def test_bad_entries_are_skipped_not_fatal(st: Store, data, caplog) -> None:
    ns, items, rng = data
    e = st.create(ns, "broken.npy", hks=["//photo"], uid=0, gid=0)
    st.entity_path(e).write_bytes(b"garbage")
    st.set_attrs(e, size=7)
    st.create(ns, "nodim.f32", hks=["//photo"], uid=0, gid=0)
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    q = rng.normal(size=D).astype(np.float32)
    assert got(cat.search(ns, q, 10)) == brute(q, items, 10)
    assert "broken.npy" in caplog.text
    cat.stop()


# ------------------------------------------------------------------ QueryFS (no FUSE)


def test_queryfs_paths_scope_and_clash_names(st: Store, data) -> None:
    ns, items, rng = data
    qfs = QueryFS(st, Resolver(st, ns))
    # two files named x.npy in //photo: hits are listed under their clash names
    x1 = put(st, ns, "x.npy", np.ones((1, D), np.float32) * np.arange(1, D + 1))
    x2 = put(st, ns, "x.npy", -np.ones((1, D), np.float32) * np.arange(1, D + 1))
    sc = qfs.scope("/@/photo")
    out = qfs.service.run(sc, Query(np.arange(1, D + 1, dtype=np.float32), k=1))
    assert out[0].path == f"@/photo/x~{x1}.npy" and out[0].row is None
    out = qfs.service.run(sc, Query(-np.arange(1, D + 1, dtype=np.float32), k=1))
    assert out[0].path == f"@/photo/x~{x2}.npy"
    # the virtual FILE.query: most similar within the view, itself excluded
    body = qfs.evaluate(qfs._target("/@/animal/dog/a.npy.query"))
    lines = body.decode().splitlines()
    assert len(lines) == 5 and all(not ln.split("\t")[1].startswith("@/animal/dog/a.npy") for ln in lines)
    assert qfs._target("/@/animal/dog/nothing.query") is None
    assert qfs._target(f"/@/photo/x~{x1}.npy.query") is not None
    # an ordinary directory: its links, plus its DKL's matches as ',/NAME'
    root = st.root_dir(ns)
    d = st.mkdir(root, "d", uid=0, gid=0)
    y = put(st, ns, "y.npy", np.ones((2, D), np.float32), directory=d)
    sc = qfs.scope("/d")
    out = qfs.service.run(sc, Query(np.ones(D, np.float32), k=5))
    assert [h.path for h in out] == ["d/y.npy", "d/y.npy"] and {h.row for h in out} == {0, 1}
    st.set_dkl(d, ["//doc"])
    sc = qfs.scope("/d")
    out = qfs.service.run(sc, Query(np.ones(D, np.float32), k=100))
    doc_ids = set(st.match_ids(ns, ["//doc"])) | {y}
    assert {h.path.split("#")[0] for h in out} == {"d/y.npy"} | {
        "d/,/" + st.entity(e).name for e in doc_ids - {y} if (e, None) in items or (e, 0) in items}
    with pytest.raises(InvalidArgument, match="dimension 3"):
        qfs.service.run(sc, Query(np.ones(3, np.float32)))
    qfs.stop()


def test_k_hits_even_when_probed_lists_hold_fewer(st: Store) -> None:
    ns = st.namespace_id("bob")
    st.mkkw(ns, "//x")
    x = np.random.default_rng(0).normal(size=(20000, 16)).astype(np.float32)
    put(st, ns, "a.npy", x, ("//x",))
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    cat.rebuild(ns, 16)
    hits = cat.search(ns, x[5], 3000, nprobe=1)
    s = unit(x) @ unit(x[5])
    assert len(hits) == 3000
    assert {h.row for h in hits} == set(np.argsort(-s)[:3000].tolist())
    cat.stop()


def test_background_look_backs_off_when_it_is_slow(st: Store, monkeypatch) -> None:
    """A look that takes t seconds makes the worker wait t / POLL_CPU_SHARE before the next
    (whatever the change feed reports), so a big, busy store does not keep a core re-reading
    attributes. The module's clock is a fake that the stand-in look advances: the wait is
    computed from the look's duration, not measured against a sleep (no timing assertion)."""
    import types

    from hkfs.query import embeddings

    now = [1000.0]
    monkeypatch.setattr(embeddings, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    cat = EmbeddingCatalog(st)
    cat._watched.add(st.namespace_id("alice"))
    for took in (0.0, 0.25, 3.0):
        def look(ns: int, took: float = took) -> None:
            now[0] += took
        monkeypatch.setattr(cat, "refresh", look)
        cat._poll()
        want = took / embeddings.POLL_CPU_SHARE
        assert cat._poll_wait == pytest.approx(want)
        assert cat._look_after - now[0] == pytest.approx(want)


def _looked(cat: EmbeddingCatalog, ns: int, deadline: float = 30.0) -> bool:
    """Whether the worker's background look reaches the catalog's current vectors_gen."""
    import time as _time
    end = _time.monotonic() + deadline
    while _time.monotonic() < end:
        with cat._lock:
            if cat._seen.get(ns) == cat.generation():
                return True
        _time.sleep(0.01)
    return False


def test_worker_looks_when_the_change_feed_reports_a_commit(st: Store, data, monkeypatch) -> None:
    """The worker subscribes to the store's change feed: an embedding change is loaded in the
    background at once, not at the next timed look (made an hour here)."""
    from hkfs.core.changes import ChangeFeed
    from hkfs.query import embeddings

    monkeypatch.setattr(embeddings, "POLL_S", 3600.0)
    ns, items, rng = data
    feed = ChangeFeed(st.catalog.path)
    cat = EmbeddingCatalog(st, changes=feed)
    cat.watch(ns)
    cat.start()
    try:
        assert _looked(cat, ns)                       # the first look, at start
        before = len(cat._sources[ns].code)
        put(st, ns, "late.npy", rng.normal(size=(3, D)).astype(np.float32))
        assert _looked(cat, ns), "the worker did not look after a reported commit"
        assert len(cat._sources[ns].code) == before + 1
        st.set_xattr("file", 1, "user.note", b"not an embedding")   # vectors_gen stays: no look
        assert _looked(cat, ns, deadline=0.2)
    finally:
        cat.stop()
        feed.close()


# ------------------------------------------------------------------ sources cache


def built(st: Store, ns: int) -> EmbeddingCatalog:
    """The daemon's catalog after its first look and first rebuild (the sources cache written)."""
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    cat.rebuild(ns, D)
    return cat


def fresh_reader(st: Store, ns: int, monkeypatch) -> tuple[EmbeddingCatalog, list[int]]:
    """A catalog as `hk query` opens it (read-only, new process state), counting full reads."""
    reads: list[int] = []
    orig = EmbeddingCatalog._fingerprints

    def counting(self, ns_):
        reads.append(ns_)
        return orig(self, ns_)

    monkeypatch.setattr(EmbeddingCatalog, "_fingerprints", counting)
    cat = EmbeddingCatalog(st, writable=False)
    cat.refresh(ns)
    return cat, reads


def check_all(cat: EmbeddingCatalog, ns: int, items, rng, k: int = 12) -> None:
    for _ in range(3):
        q = rng.normal(size=D).astype(np.float32)
        assert got(cat.search(ns, q, k)) == brute(q, items, k)


def test_sources_cache_reused_when_nothing_changed(st: Store, data, monkeypatch) -> None:
    ns, items, rng = data
    daemon = built(st, ns)
    # a change after the rebuild: pending in the daemon, read from its source by the reader
    v = rng.normal(size=D).astype(np.float32)
    e = put(st, ns, "late.txt", None, own=v)
    items[(e, None)] = v
    daemon.refresh(ns)
    assert (st.root / "vectors" / f"sources-ns{ns}.npz").is_file()
    cat, reads = fresh_reader(st, ns, monkeypatch)
    assert reads == []                                   # no full read of the sources
    assert cat.stats()[f"ns{ns}-d{D}"]["pending_rows"] == 1
    assert cat.nrows(ns, st.match_ids(ns, [], "a.npy")[0]) == 40
    check_all(cat, ns, items, rng)
    hit = cat.search(ns, v, 1)[0]
    assert (hit.eid, hit.row) == (e, None)
    cat.stop()
    daemon.stop()


def test_sources_cache_stale_after_embedding_change_and_rename(st: Store, data, monkeypatch) -> None:
    ns, items, rng = data
    daemon = built(st, ns)
    own_ids = [kk[0] for kk in items if kk[1] is None and st.entity(kk[0]).name.startswith("f")]
    v = rng.normal(size=D).astype(np.float32)
    st.set_xattr("file", own_ids[0], EMBEDDING_ATTR, v.astype("<f4").tobytes())
    items[(own_ids[0], None)] = v
    cat, reads = fresh_reader(st, ns, monkeypatch)       # the daemon has not looked yet: stale cache
    assert reads == [ns]
    check_all(cat, ns, items, rng)
    cat.stop()
    daemon.refresh(ns)                                   # the daemon looks: the cache is rewritten
    cat, reads = fresh_reader(st, ns, monkeypatch)
    assert reads == []
    check_all(cat, ns, items, rng)
    cat.stop()
    # renaming an entry file to a plain name takes its rows out; a plain file to an entry name adds them
    a_id = st.match_ids(ns, [], "a.npy")[0]
    st.chfn(a_id, "a.txt")
    items = {kk: x for kk, x in items.items() if kk[0] != a_id}
    rows = rng.normal(size=(3, D)).astype(np.float32)
    g = put(st, ns, "g.txt", None)
    write_entry(st, g, "g.npy", rows)
    st.chfn(g, "g.npy")
    items.update({(g, r): rows[r] for r in range(3)})
    for daemon_looked in (False, True):
        if daemon_looked:
            daemon.refresh(ns)
        cat, reads = fresh_reader(st, ns, monkeypatch)
        assert reads == ([] if daemon_looked else [ns])
        assert cat.nrows(ns, a_id) == 0 and cat.nrows(ns, g) == 3
        check_all(cat, ns, items, rng, k=30)
        cat.stop()
    daemon.stop()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other format", "other namespace"])
def test_sources_cache_ignored_when_damaged_or_foreign(st: Store, data, monkeypatch, damage) -> None:
    ns, items, rng = data
    daemon = built(st, ns)
    daemon.stop()
    path = st.root / "vectors" / f"sources-ns{ns}.npz"
    if damage == "garbage":
        path.write_bytes(b"not a cache" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        with np.load(path) as z:
            cols = {f: z[f] for f in z.files}
        if damage == "other format":
            cols["head"][0] += 1
        else:
            cols["head"][1] += 1
        with open(path, "wb") as f:
            np.savez(f, **cols)
    cat, reads = fresh_reader(st, ns, monkeypatch)
    assert reads == [ns]                                 # read from the sources instead
    check_all(cat, ns, items, rng)
    cat.stop()


def v1_keys(st: Store, ns: int) -> list:
    """The keys of every source as a version-1 manifest listed them: [entity, own, fingerprint, rows]."""
    import zlib
    out = []
    for e in st.match(ns, []):
        own = st.get_xattr("file", e.id, EMBEDDING_ATTR) if e.name.startswith("f") else None
        if own is not None:
            out.append([e.id, True, ["own", len(own), zlib.crc32(own)], 1])
        elif e.name.endswith((".npy", ".fvecs", ".f32")):
            dim = st.get_xattr("file", e.id, DIM_ATTR).decode() if e.name.endswith(".f32") else ""
            n = len(read_entry(st.entity_path(e.id), e.name, int(dim) if dim else None))
            out.append([e.id, False, ["entry", "." + e.name.rsplit(".", 1)[1], e.size, e.mtime_ns, dim], n])
    return out


@pytest.mark.parametrize("version", [1, 99])
def test_manifest_of_version_1_is_converted_another_ignored(st: Store, data, version) -> None:
    ns, items, rng = data
    built(st, ns).stop()
    sdir = st.root / "vectors" / f"ns{ns}-d{D}"
    doc = json.loads((sdir / "manifest.json").read_text())
    (sdir / doc["keys"]).unlink()
    (sdir / "manifest.json").write_text(json.dumps(
        {"version": version, "gen": doc["gen"], "index": doc["index"], "metric": "cosine",
         "keys": v1_keys(st, ns)}))
    for writable in (True, False):      # the daemon converts it; a reader then takes keys.npy
        cat = EmbeddingCatalog(st, writable=writable)
        cat.refresh(ns)
        s = cat.stats()[f"ns{ns}-d{D}"]
        if version == 1:
            assert (s["base_rows"], s["pending_rows"], s["dead_rows"]) == (len(items), 0, 0)
            assert json.loads((sdir / "manifest.json").read_text())["version"] == 2
        else:
            assert (s["base_rows"], s["pending_rows"]) == (0, len(items))
        check_all(cat, ns, items, rng)
        cat.stop()
