"""hkfs.core.changes without FUSE: the generations the catalog's triggers keep, the watcher's
subscribers, commit hooks; and the query service keeping scopes across unrelated commits."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

import hkfs.core.changes as changes
from hkfs.core import migrations
from hkfs.core.changes import ChangeFeed
from hkfs.core.store import Store
from hkfs.query.embeddings import EMBEDDING_ATTR
from hkfs.query.queryfiles import Query
from hkfs.query.service import QueryService


@pytest.fixture
def st(tmp_path: Path):
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


def test_generations_move_only_for_what_they_count(st: Store) -> None:
    feed = ChangeFeed(st.catalog.path)
    ns = st.namespace_id("alice")
    st.mkkw(ns, "//photo")
    a = st.create(ns, "a.txt", hks=["//photo"], uid=0, gid=0)
    b = st.create(ns, "b.npy", hks=["//photo"], uid=0, gid=0)
    g0 = feed.generations()
    # bytes, times, modes, other xattrs: neither counter
    st.set_attrs(a, mode=0o600, size=5)
    st.set_xattr("file", a, "user.note", b"x")
    g1 = feed.generations()
    assert g1.version != g0.version and (g1.files, g1.vectors) == (g0.files, g0.vectors)
    # a tag, a rename, a new file: files_gen
    st.mkkw(ns, "//doc")
    st.atkw(a, ["//doc"])
    g2 = feed.generations()
    assert g2.files > g1.files and g2.vectors == g1.vectors
    st.chfn(a, "c.txt")
    assert feed.generations().files > g2.files
    # an embedding attribute, an entry's size: vectors_gen
    g3 = feed.generations()
    st.set_xattr("file", a, EMBEDDING_ATTR, b"1 2 3")
    g4 = feed.generations()
    assert g4.vectors > g3.vectors and g4.files == g3.files
    st.set_attrs(b, size=128)
    assert feed.generations().vectors > g4.vectors
    feed.close()


def test_migration_5_adds_the_counters_and_triggers(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "c.sqlite", isolation_level=None)
    migrations.ensure_schema(conn, target=3)
    conn.execute("INSERT INTO namespaces(id, user, uid, gid) VALUES (1, 'u', 0, 0)")
    assert migrations.ensure_schema(conn) == migrations.SCHEMA_VERSION >= 5
    gen = lambda: conn.execute("SELECT value FROM counters WHERE name = 'files_gen'").fetchone()[0]  # noqa: E731
    before = gen()
    conn.execute("INSERT INTO keywords(ns, parent, name, path) VALUES (1, NULL, 'k', '/k/')")
    assert gen() == before + 1


def test_subscribers_hear_other_connections_commit(st: Store) -> None:
    feed = ChangeFeed(st.catalog.path, poll=0.01)
    heard = threading.Event()
    feed.subscribe(lambda v: heard.set())
    feed.start()
    try:
        st.namespace_id("bob")
        assert heard.wait(5)
    finally:
        feed.close()


def test_commit_hooks_run_for_stores_that_do_not_hold_the_lock(st: Store,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(changes, "_COMMIT_HOOKS", [])
    changes.add_commit_hook(calls.append)
    st.namespace_id("carol")
    assert calls and calls[-1] == st.root
    n = len(calls)
    st.lock()
    st.namespace_id("dave")
    assert len(calls) == n


def test_scope_kept_across_unrelated_commits(st: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = st.namespace_id("erin")
    st.mkkw(ns, "//photo")
    rng = np.random.default_rng(0)
    ids = []
    for i in range(20):
        eid = st.create(ns, f"f{i}.txt", hks=["//photo"], uid=0, gid=0)
        st.set_xattr("file", eid, EMBEDDING_ATTR, " ".join(f"{x:.9g}" for x in rng.normal(size=4)).encode())
        ids.append(eid)
    svc = QueryService(st)
    scans: list[object] = []
    real = st.match_ids
    monkeypatch.setattr(st, "match_ids", lambda *a, **k: scans.append(a) or real(*a, **k))
    q = Query(np.ones(4, np.float32), k=3)
    sc = svc.view_scope(ns, (("photo",),), "@/photo/")
    assert len(svc.run(sc, q, exclude=ids[0])) == 3
    n = len(scans)
    st.set_attrs(ids[1], mode=0o600)                      # unrelated: the same scope, no scan
    st.set_xattr("file", ids[1], "user.note", b"x")
    assert svc.view_scope(ns, (("photo",),), "@/photo/") is sc and len(scans) == n
    st.dtkw(ids[2], ["//photo"])                          # a tag change: scanned again
    sc2 = svc.view_scope(ns, (("photo",),), "@/photo/")
    assert sc2 is not sc and ids[2] not in sc2.ids
    assert all(h.path != "@/photo/f2.txt" for h in svc.run(sc2, Query(np.ones(4, np.float32), k=20)))
    svc.stop()
