"""The Store API: each operation, its errors, the catalog's versioning, threads and crashes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hkfs.core import migrations
from hkfs.core.errors import (
    AlreadyExists,
    HKError,
    HKSyntaxError,
    InvalidArgument,
    IsADirectory,
    KeywordInUse,
    NameClash,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    StoreLocked,
    StoreVersionError,
)
from hkfs.core.fsck import check
from hkfs.core.naming import list_matches
from hkfs.core.store import LOST_FOUND, Store


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def ns(store):
    ns = store.namespace_id("alice")
    for hk in [("photo",), ("animal", "dog", "poodle"), ("animal", "cat"), ("sports", "skate", "figure")]:
        store.mkkw(ns, hk, parents=True)
    return ns


# ---------------------------------------------------------------- store and catalog

def test_open_reopen_and_missing(tmp_path) -> None:
    with pytest.raises(NotFound):
        Store.open(tmp_path / "nope", create=False)
    s = Store.open(tmp_path / "s")
    ns = s.namespace_id("bob")
    s.mkkw(ns, ("a",))
    eid = s.create(ns, "f.txt", hks=[("a",)])
    s.close()
    s = Store.open(tmp_path / "s", create=False)
    assert s.match(ns, [("a",)])[0].id == eid
    assert s.entity_path(eid) == tmp_path / "s" / "entities" / str(eid)
    with sqlite3.connect(tmp_path / "s" / "catalog.sqlite") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
    s.close()


def test_newer_catalog_is_refused_not_rebuilt(tmp_path) -> None:
    Store.open(tmp_path / "s").close()
    with sqlite3.connect(tmp_path / "s" / "catalog.sqlite") as c:
        c.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION + 1}")
    with pytest.raises(StoreVersionError, match="newer"):
        Store.open(tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / "catalog.sqlite") as c:
        assert c.execute("SELECT count(*) FROM namespaces").fetchone()[0] == 0  # untouched


def test_migrations_apply_in_order_and_roll_back_on_failure(tmp_path) -> None:
    s = Store.open(tmp_path / "s")
    s.namespace_id("carol")
    s.close()
    conn = sqlite3.connect(tmp_path / "s" / "catalog.sqlite", isolation_level=None)
    v = migrations.SCHEMA_VERSION

    def add_col(c):
        c.execute("ALTER TABLE namespaces ADD COLUMN note TEXT DEFAULT 'x'")

    def broken(c):
        c.execute("CREATE TABLE half_done(x)")
        raise RuntimeError("boom")

    extra = {v + 1: ("note column", add_col), v + 2: ("broken", broken)}
    with pytest.raises(RuntimeError):
        migrations.ensure_schema(conn, target=v + 2, migrations=extra)
    assert migrations.user_version(conn) == v + 1          # the good step stuck
    assert conn.execute("SELECT note FROM namespaces").fetchone() == ("x",)
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name='half_done'").fetchone()
    assert [r[0] for r in conn.execute("SELECT version FROM migrations ORDER BY version")] == [v, v + 1]
    with pytest.raises(StoreVersionError, match="no migration"):
        migrations.ensure_schema(conn, target=v + 3, migrations={})
    conn.close()


def test_lock_is_exclusive(tmp_path) -> None:
    a = Store.open(tmp_path / "s")
    b = Store.open(tmp_path / "s")
    a.lock()
    with pytest.raises(StoreLocked):
        b.lock()
    a.unlock()
    b.lock()
    b.close()
    a.close()


# ---------------------------------------------------------------- keywords

def test_namespaces_are_separate(store, ns) -> None:
    other = store.namespace_id("bob")
    assert other != ns
    assert store.keywords(other) == []
    assert store.namespace_user(ns) == "alice"
    assert store.namespace_id("alice") == ns
    assert store.root_dir(ns) != store.root_dir(other)
    assert store.root_dir(ns) == store.root_dir(ns)
    with pytest.raises(NotFound):
        store.match(other, [("photo",)])


def test_mkkw_rmkw(store, ns) -> None:
    assert store.keyword_children(ns, ()) == ["animal", "photo", "sports"]
    assert store.keyword_children(ns, ("animal",)) == ["cat", "dog"]
    with pytest.raises(AlreadyExists):
        store.mkkw(ns, ("photo",))
    with pytest.raises(NotFound, match="parent"):
        store.mkkw(ns, ("x", "y"))
    with pytest.raises(HKSyntaxError):
        store.mkkw(ns, ("a/b",))
    with pytest.raises(InvalidArgument):
        store.mkkw(ns, ())
    assert store.mkkw(ns, "//x/y", parents=True) == store.mkkw(ns, ("x", "y"), parents=True)
    with pytest.raises(KeywordInUse, match="child"):
        store.rmkw(ns, ("x",))
    store.rmkw(ns, ("x", "y"))
    store.rmkw(ns, ("x",))
    assert not store.keyword_exists(ns, ("x",))
    with pytest.raises(NotFound):
        store.rmkw(ns, ("x",))
    eid = store.create(ns, "p.jpg", hks=[("animal", "cat")])
    with pytest.raises(KeywordInUse, match="carried by 1"):
        store.rmkw(ns, ("animal", "cat"))
    store.rme(eid)
    store.rmkw(ns, ("animal", "cat"))


def test_rmkw_drops_it_from_dkls(store, ns) -> None:
    store.mkkw(ns, ("tmp",))
    d = store.mkdir(store.root_dir(ns), "d")
    store.akl(d, [("photo",), ("tmp",)])
    store.rmkw(ns, ("tmp",))
    assert store.dir(d).dkl == (("photo",),)


def test_keyword_counts(store, ns) -> None:
    store.create(ns, "a", hks=[("animal", "dog", "poodle"), ("animal", "cat")])
    store.create(ns, "b", hks=[("animal", "cat")])
    counts = dict(store.keyword_counts(ns, ("animal",)))
    assert counts == {("animal",): 2, ("animal", "cat"): 2, ("animal", "dog"): 1,
                      ("animal", "dog", "poodle"): 1}


# ---------------------------------------------------------------- entities

def test_match_ids_named_is_match_ids_per_name(store, ns) -> None:
    """Several names of a list in one statement: the same ids as match_ids of each, and NotFound
    for a keyword that does not exist (as match_ids), even when no file bears the names."""
    e1 = store.create(ns, "a.txt", hks=[("photo",), ("animal", "dog")])
    e2 = store.create(ns, "a.txt", hks=[("photo",)])
    e3 = store.create(ns, "b.txt", hks=[("animal", "cat"), ("photo",)])
    names = ["a.txt", "b.txt", "c.txt"]
    for hks in ([("photo",)], [("animal",)], [("animal",), ("photo",)], [("animal", "dog")], []):
        assert store.match_ids_named(ns, hks, names) == {n: store.match_ids(ns, hks, n) for n in names}
    assert store.match_ids_named(ns, [("photo",)], names) == {"a.txt": sorted([e1, e2]), "b.txt": [e3],
                                                               "c.txt": []}
    for hks in ([("nope",)], [("photo",), ("animal", "nope")]):
        with pytest.raises(NotFound):
            store.match_ids(ns, hks, "a.txt")
        with pytest.raises(NotFound):
            store.match_ids_named(ns, hks, ["zzz", "a.txt"])


def test_create_resolve_atkw_dtkw(store, ns) -> None:
    e1 = store.create(ns, "fig1.jpg", hks=[("photo",), ("animal", "dog", "poodle")], mode=0o600, uid=5, gid=6)
    e2 = store.create(ns, "fig1.jpg", hks=[("sports", "skate", "figure")])
    info = store.entity(e1)
    assert (info.name, info.mode, info.uid, info.gid, info.size, info.nlinks) == ("fig1.jpg", 0o600, 5, 6, 0, 0)
    assert info.hks == (("animal", "dog", "poodle"), ("photo",))
    assert store.entity_path(e1).exists()
    assert [e.id for e in store.match(ns, [("animal",)])] == [e1]
    assert [e.id for e in store.match(ns, [("animal",), ("photo",)])] == [e1]
    assert store.match(ns, [("animal",), ("sports",)]) == []
    assert [e.id for e in store.match(ns, [], "fig1.jpg")] == [e1, e2]
    assert store.match_ids(ns, [("sports",)], "fig1.jpg") == [e2]
    assert store.name_counts(ns, []) == {"fig1.jpg": 2}
    with pytest.raises(NotFound):
        store.atkw(e1, [("nope",)])
    store.atkw(e1, [("new", "kw")], create=True)
    store.atkw(e1, [("photo",)])  # already carried: fine
    assert ("new", "kw") in store.entity(e1).hks
    store.dtkw(e1, [("animal",)])  # detaches the descendant //animal/dog/poodle
    assert store.entity(e1).hks == (("new", "kw"), ("photo",))
    with pytest.raises(NotFound, match="does not carry"):
        store.dtkw(e1, [("animal",)])
    with pytest.raises(NotFound):
        store.entity(9999)


def test_set_attrs(store, ns) -> None:
    eid = store.create(ns, "f", hks=[("photo",)])
    before = store.entity(eid)
    store.set_attrs(eid, size=10, mode=0o640, mtime_ns=123)
    after = store.entity(eid)
    assert (after.size, after.mode, after.mtime_ns) == (10, 0o640, 123)
    assert after.ctime_ns >= before.ctime_ns
    with pytest.raises(InvalidArgument):
        store.set_attrs(eid, size=-1)


def test_file_type_bits_in_mode(store, ns) -> None:
    import stat
    ln = store.create(ns, "l", hks=[("photo",)], mode=stat.S_IFLNK | 0o777)
    f = store.create(ns, "f", hks=[("photo",)], mode=stat.S_IFREG | 0o600)
    assert store.entity(ln).mode == stat.S_IFLNK | 0o777
    assert store.entity(f).mode == 0o600                 # regular: no type bits, as old rows
    store.set_attrs(ln, mode=0o755)                        # permissions only: still a symlink
    assert store.entity(ln).mode == stat.S_IFLNK | 0o755
    store.set_attrs(f, mode=stat.S_IFLNK | 0o777)
    assert store.entity(f).mode == stat.S_IFLNK | 0o777
    for bad in (stat.S_IFDIR | 0o755, 0o170000 | 0o644):
        with pytest.raises(InvalidArgument):
            store.create(ns, "x", hks=[("photo",)], mode=bad)
        with pytest.raises(InvalidArgument):
            store.set_attrs(f, mode=bad)
    assert store.bulk_create(ns, [("b", [("photo",)])], mode=stat.S_IFREG | 0o644)
    assert store.entity(store.match_ids(ns, [("photo",)], "b")[0]).mode == 0o644


def test_entity_ids_are_never_reused(store, ns) -> None:
    """The bytes of a deleted entity are unlinked after its commit: a new entity with the
    same id (another thread or process, in between) would lose its bytes file."""
    a = store.create(ns, "a", hks=[("photo",)])
    b = store.create(ns, "b", hks=[("photo",)])
    store.rme(b)
    c = store.create(ns, "c", hks=[("photo",)])
    assert c > b > a
    store.rme(c)
    [d] = store.bulk_create(ns, [("d", [("photo",)])])
    assert d > c and store.entity_path(d).exists()


def test_migration_v2_moves_the_symlink_mark_into_mode(tmp_path) -> None:
    import stat
    s = Store.open(tmp_path / "s")
    ns = s.namespace_id("dave")
    s.mkkw(ns, ("k",))
    ln = s.create(ns, "l", hks=[("k",)], mode=0o777)
    f = s.create(ns, "f", hks=[("k",)], mode=0o644)
    s.set_xattr("file", ln, "hkfs.symlink", b"1")          # how the v1 mount marked symlinks
    s.set_xattr("file", f, "user.other", b"v")
    s.close()
    with sqlite3.connect(tmp_path / "s" / "catalog.sqlite") as c:
        c.execute("PRAGMA user_version = 1")
    s = Store.open(tmp_path / "s")
    assert migrations.user_version(s.catalog.connection()) == migrations.SCHEMA_VERSION
    assert s.entity(ln).mode == stat.S_IFLNK | 0o777 and s.list_xattrs("file", ln) == []
    assert s.entity(f).mode == 0o644 and s.list_xattrs("file", f) == ["user.other"]
    s.close()


def test_dtkw_of_last_hk_goes_to_lost_found_and_rme_deletes(store, ns) -> None:
    eid = store.create(ns, "x.txt", hks=[("photo",)])
    store.entity_path(eid).write_text("keep me")
    store.dtkw(eid, [("photo",)])
    root = store.root_dir(ns)
    lf = store.lookup(root, LOST_FOUND)
    assert lf is not None and lf.kind == "dir"
    assert store.lookup(lf.id, "x.txt").id == eid
    assert store.entity_path(eid).read_text() == "keep me"
    other = store.create(ns, "x.txt")       # neither HK nor directory: lost+found too, renamed
    assert store.lookup(lf.id, f"x~{other}.txt").id == other
    store.rme(eid)
    assert not store.entity_path(eid).exists()
    assert store.lookup(lf.id, "x.txt") is None
    with pytest.raises(NotFound):
        store.rme(eid)
    assert check(store) == []


def test_set_hks(store, ns) -> None:
    eid = store.create(ns, "f", hks=[("photo",)])
    store.set_hks(eid, [("animal", "cat"), ("z",)], create=True)
    assert store.entity(eid).hks == (("animal", "cat"), ("z",))
    store.set_hks(eid, [])
    assert store.entity(eid).nlinks == 1  # lost+found


def test_chfn_renames_links(store, ns) -> None:
    root = store.root_dir(ns)
    d = store.mkdir(root, "d")
    eid = store.create(ns, "a.txt", hks=[("photo",)], directory=d)
    store.link(eid, root, "alias")
    store.chfn(eid, "b.txt")
    assert store.entity(eid).name == "b.txt"
    assert store.lookup(d, "b.txt").id == eid and store.lookup(d, "a.txt") is None
    assert store.lookup(root, "alias").id == eid
    store.create(ns, "c.txt", directory=d)
    with pytest.raises(AlreadyExists):
        store.chfn(eid, "c.txt")
    with pytest.raises(HKSyntaxError):
        store.chfn(eid, "a/b")


# ---------------------------------------------------------------- directories

def test_directories_links_unlink(store, ns) -> None:
    root = store.root_dir(ns)
    d = store.mkdir(root, "d", mode=0o700, uid=3, gid=4)
    info = store.dir(d)
    assert (info.parent, info.name, info.ns, info.owner_ns, info.mode, info.dkl) == (root, "d", ns, ns, 0o700, ())
    with pytest.raises(AlreadyExists):
        store.mkdir(root, "d")
    with pytest.raises(HKSyntaxError):
        store.mkdir(root, "..")
    tagged = store.create(ns, "t.txt", hks=[("photo",)], directory=d)
    plain = store.create(ns, "p.txt", directory=d)
    with pytest.raises(AlreadyExists):
        store.create(ns, "p.txt", directory=d)
    assert [(e.name, e.kind) for e in store.listdir(d)] == [("p.txt", "file"), ("t.txt", "file")]
    with pytest.raises(NotEmpty):
        store.rmdir(d)
    with pytest.raises(NotPermitted):
        store.rmdir(root)
    store.link(plain, root)
    store.unlink(d, "p.txt")            # not its last link: kept
    assert store.entity(plain).nlinks == 1
    store.unlink(root, "p.txt")         # last link, no HK: deleted like UNIX rm
    with pytest.raises(NotFound):
        store.entity(plain)
    assert not store.entity_path(plain).exists()
    store.unlink(d, "t.txt")            # has an HK: the entity stays
    assert store.entity(tagged).nlinks == 0
    with pytest.raises(NotFound):
        store.unlink(d, "t.txt")
    sub = store.mkdir(d, "sub")
    with pytest.raises(IsADirectory):
        store.unlink(d, "sub")
    store.rmdir(sub)
    store.rmdir(d)
    with pytest.raises(NotFound):
        store.dir(d)
    assert check(store) == []


def test_rename(store, ns) -> None:
    root = store.root_dir(ns)
    a = store.mkdir(root, "a")
    b = store.mkdir(a, "b")
    with pytest.raises(InvalidArgument):
        store.rename(root, "a", b, "a")
    f = store.create(ns, "f", directory=a)
    g = store.create(ns, "g", directory=a)
    t = store.create(ns, "t", hks=[("photo",)], directory=a)
    store.rename(a, "f", root, "f2")
    assert store.lookup(root, "f2").id == f and store.lookup(a, "f") is None
    store.rename(root, "f2", a, "g")    # replaces g, an untagged entity: deleted
    assert store.lookup(a, "g").id == f
    with pytest.raises(NotFound):
        store.entity(g)
    store.rename(a, "g", a, "t")        # replaces t, a tagged entity: kept
    assert store.entity(t).nlinks == 0
    with pytest.raises(IsADirectory):
        store.rename(a, "t", a, "b")
    store.create(ns, "x", directory=root)
    with pytest.raises(NotADirectory):
        store.rename(a, "b", root, "x")
    store.rename(a, "b", root, "b")
    assert store.dir(b).parent == root
    with pytest.raises(NotFound):
        store.rename(a, "zzz", root, "y")
    assert check(store) == []


def test_dkl_and_ldf(store, ns) -> None:
    root = store.root_dir(ns)
    d = store.mkdir(root, "d")
    with pytest.raises(NotFound):
        store.akl(d, [("nope",)])
    store.akl(d, [("photo",), ("animal",)])
    store.akl(d, [("photo",)])
    assert store.dir(d).dkl == (("photo",), ("animal",))
    with pytest.raises(NotFound):
        store.rkl(d, [("sports",)])
    store.rkl(d, [("photo",)])
    assert store.dir(d).dkl == (("animal",),)
    e1 = store.create(ns, "a.jpg", hks=[("animal", "cat")])
    e2 = store.create(ns, "b.jpg", hks=[("animal", "dog", "poodle")])
    assert store.ldf(d) == [e1, e2]
    assert store.ldf(d) == [e1, e2]     # loading twice is harmless
    assert [e.id for e in store.listdir(d)] == [e1, e2]
    e3 = store.create(ns, "a.jpg", hks=[("photo",)])
    with pytest.raises(NameClash) as ei:  # a.jpg is taken in d by another entity
        store.ldf(d, [("photo",)])
    assert ei.value.names == ["a.jpg"] and ei.value.errno == 17
    assert store.ldf(d, [("photo",)], name="nothing") == []
    store.set_dkl(d, [])
    with pytest.raises(InvalidArgument):
        store.ldf(d)
    store.unlink(d, "a.jpg")
    assert store.ldf(d, [("photo",)]) == [e3]


def test_chns(store, ns) -> None:
    bob = store.namespace_id("bob")
    store.mkkw(bob, ("bobs",))
    eb = store.create(bob, "b.txt", hks=[("bobs",)])
    d = store.mkdir(store.root_dir(ns), "d")
    store.akl(d, [("photo",)])
    store.chns(d, "bob")
    info = store.dir(d)
    assert (info.ns, info.owner_ns, info.dkl) == (bob, ns, ())
    with pytest.raises(NotFound):
        store.akl(d, [("photo",)])       # alice's keyword, not bob's
    store.akl(d, [("bobs",)])
    assert store.ldf(d) == [eb]
    sub = store.mkdir(d, "sub")
    assert store.dir(sub).ns == bob


def test_xattrs(store, ns) -> None:
    eid = store.create(ns, "f", hks=[("photo",)])
    d = store.root_dir(ns)
    store.set_xattr("file", eid, "user.color", b"red")
    store.set_xattr("dir", d, "user.color", b"blue")
    assert store.get_xattr("file", eid, "user.color") == b"red"
    assert store.xattr_value("file", eid, "user.color") == b"red"        # (one statement)
    assert store.xattr_value("dir", d, "user.color") == b"blue"
    assert store.xattr_value("file", eid + 1000, "user.color") is None
    assert store.list_xattrs("dir", d) == ["user.color"]
    store.remove_xattr("file", eid, "user.color")
    assert store.xattr_value("file", eid, "user.color") is None
    with pytest.raises(NotFound):
        store.get_xattr("file", eid, "user.color")
    with pytest.raises(NotFound):
        store.remove_xattr("file", eid, "user.color")
    with pytest.raises(InvalidArgument):
        store.list_xattrs("other", 1)
    store.set_xattr("file", eid, "user.x", b"1")
    store.rme(eid)
    with store.catalog.read() as c:
        assert c.execute("SELECT count(*) FROM xattrs WHERE kind = 'file'").fetchone()[0] == 0


def test_bulk_create(store, ns) -> None:
    ids = store.bulk_create(ns, [(f"f{i}", [("photo",), ("animal", "cat")] if i % 2 else [("photo",)])
                                 for i in range(100)])
    assert len(ids) == 100 and all(store.entity_path(i).exists() for i in ids)
    assert len(store.match_ids(ns, [("animal",)])) == 50
    with pytest.raises(NotFound):
        store.bulk_create(ns, [("x", [("nope",)])])
    assert store.bulk_create(ns, [("y", ["//new/kw"])], create_keywords=True)
    assert check(store) == []



def test_bulk_create_same_rows_as_one_by_one(store, ns) -> None:
    """The bulk path's shared tags string and keyword cache give what mkent + atkw give,
    also for an HK given twice, as text and as a tuple, and across calls (memoized paths)."""
    files = [("a", ["//photo", ("photo",), ("animal", "cat")]), ("b", []), ("c", [("animal",), "//animal/cat"])]
    bulk = store.bulk_create(ns, files, create_keywords=True) + store.bulk_create(ns, files)
    single = []
    for name, hks in files:
        single.append(store.create(ns, name, hks=hks))
    with store.catalog.read() as c:
        def rows(eid: int) -> list[tuple]:
            return c.execute("SELECT keyword, tags FROM entity_keywords WHERE entity = ? ORDER BY keyword",
                             (eid,)).fetchall()
        for eids in (bulk[:3], bulk[3:]):
            assert [rows(e) for e in eids] == [rows(e) for e in single]
    assert [store.entity(e).hks for e in bulk[:3]] == [store.entity(e).hks for e in single]
    for bad in (["//"], [("a/b",)], ["//x//y"]):
        with pytest.raises(HKError):
            store.bulk_create(ns, [("z", bad)], create_keywords=True)
    assert check(store) == []


def test_new_catalog_page_size(store) -> None:
    from hkfs.core.catalog import PAGE_SIZE
    with store.catalog.read() as c:
        assert c.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE


# ---------------------------------------------------------------- resolve vs a naive model

_comp = st.sampled_from(["a", "b", "c", "d"])
_hk = st.lists(_comp, min_size=1, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(st.sampled_from(["x", "y"]), st.lists(_hk, max_size=3)), max_size=25),
       query=st.lists(_hk, max_size=3), name=st.none() | st.sampled_from(["x", "y"]))
def test_resolve_vs_naive(tmp_path_factory, files, query, name) -> None:
    s = Store.open(tmp_path_factory.mktemp("s"))
    try:
        ns = s.namespace_id("u")
        carried = {}
        for fname, hks in files:
            eid = s.create(ns, fname, hks=hks, directory=None) if not hks else None
            if hks:
                for h in hks:
                    s.mkkw(ns, h, parents=True)
                eid = s.create(ns, fname, hks=hks)
            carried[eid] = (fname, set(hks))
        known = all(s.keyword_exists(ns, h) for h in query)
        if not known:
            with pytest.raises(NotFound):
                s.match(ns, query, name)
            return
        expect = sorted(e for e, (n, hks) in carried.items()
                        if list_matches(query, hks) and (name is None or n == name))
        assert [e.id for e in s.match(ns, query, name)] == expect
        assert s.match_ids(ns, query, name) == expect
        if name is None:
            counts: dict[str, int] = {}
            for e in expect:
                counts[carried[e][0]] = counts.get(carried[e][0], 0) + 1
            assert s.name_counts(ns, query) == counts
    finally:
        s.close()


# ---------------------------------------------------------------- threads and crashes

def test_many_threads(store, ns) -> None:
    errors: list[BaseException] = []
    root = store.root_dir(ns)

    def work(t: int) -> None:
        try:
            d = store.mkdir(root, f"t{t}")
            for i in range(30):
                eid = store.create(ns, f"f{i}", hks=[("photo",)], directory=d)
                store.atkw(eid, [("animal", "cat")])
                assert store.entity(eid).nlinks == 1
                store.match_ids(ns, [("animal",)])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.match_ids(ns, [("photo",), ("animal", "cat")])) == 180
    assert check(store) == []


def test_catalog_lends_the_connection_given_back_last(tmp_path) -> None:
    """A request's thread is lent the connection given back last (libfuse's workers take turns:
    each request would otherwise find its thread's page cache ~10 requests old); a thread with
    its own connection keeps it, a connection inside a transaction is not given back, and
    close() closes the lent ones too."""
    s = Store.open(tmp_path / "s")
    ns = s.namespace_id("alice")
    cat = s.catalog
    assert cat.lend() is False               # this thread has its own: nothing lent
    base = cat.connections()
    used: list[tuple[bool, object]] = []

    def request() -> None:
        lent = cat.lend()
        try:
            s.root_dir(ns)
            used.append((lent, cat.connection()))
        finally:
            cat.give_back()

    for _ in range(6):                       # six threads, one after another: one connection
        t = threading.Thread(target=request)
        t.start()
        t.join()
    assert all(lent for lent, _c in used) and len({id(c) for _l, c in used}) == 1
    assert cat.connections() == base + 1
    first, second = threading.Event(), threading.Event()
    both: list[object] = []

    def holding() -> None:                   # two requests at once: two connections
        cat.lend()
        both.append(cat.connection())
        first.set()
        second.wait(10)
        cat.give_back()

    t = threading.Thread(target=holding)
    t.start()
    first.wait(10)
    request()                                # (this thread has its own: not lent)
    t2 = threading.Thread(target=request)
    t2.start()
    t2.join()
    second.set()
    t.join()
    assert both[0] is used[0][1] and used[-1][1] is not both[0]
    assert cat.connections() == base + 2

    def in_transaction() -> None:            # give_back inside a transaction keeps it bound
        cat.lend()
        with cat.read():
            cat.give_back()
            used.append((True, cat.connection()))
        cat.give_back()

    t = threading.Thread(target=in_transaction)
    t.start()
    t.join()
    lent = used[-1][1]
    s.close()
    assert cat.connections() == 0
    with pytest.raises(sqlite3.ProgrammingError):
        lent.execute("SELECT 1")                # type: ignore[attr-defined]


def test_catalog_connection_per_os_thread_and_close(tmp_path) -> None:
    """One connection per OS thread (keyed by thread id, so libfuse's threads keep theirs
    between callbacks), reused across calls, all closed by close()."""
    s = Store.open(tmp_path / "s")
    ns = s.namespace_id("alice")
    cat = s.catalog
    base = cat.connections()
    mine = cat.connection()
    for _ in range(50):
        s.namespace_id("alice")
    assert cat.connection() is mine and cat.connections() == base
    seen: list[object] = []

    def work() -> None:
        for _ in range(20):
            s.root_dir(ns)
        seen.append(cat.connection())
        cat.release_thread()          # a worker about to end gives its connection back

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 4 and all(c is not mine for c in seen)
    assert cat.connections() == base
    with cat.read():
        with pytest.raises(RuntimeError):
            cat.release_thread()
    # connections of ended threads whose ids do not come back are closed (libfuse's workers come and go)
    import hkfs.core.catalog as catalog_mod
    ended = sqlite3.connect(":memory:", check_same_thread=False)
    cat._conns[-1] = catalog_mod._ThreadConn(ended, native_id=2**31 - 1, pid=os.getpid())    # no such thread
    old_prune, catalog_mod.PRUNE_AT = catalog_mod.PRUNE_AT, 0
    try:
        t = threading.Thread(target=lambda: s.root_dir(ns))
        t.start()
        t.join()
    finally:
        catalog_mod.PRUNE_AT = old_prune
    assert -1 not in cat._conns
    with pytest.raises(sqlite3.ProgrammingError):
        ended.execute("SELECT 1")
    assert cat.connection() is mine          # live threads keep theirs
    pid = os.fork()                          # a forked child opens its own connection
    if pid == 0:
        ok = False
        try:
            ok = cat.connection() is not mine and s.namespace_id("alice") == ns
        finally:
            os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert cat.connection() is mine
    s.close()
    assert cat.connections() == 0
    with pytest.raises(sqlite3.ProgrammingError):
        mine.execute("SELECT 1")
    with pytest.raises(RuntimeError, match="closed"):
        cat.connection()


_CHURN = textwrap.dedent("""
    import random, sys
    from hkfs.core.store import Store
    s = Store.open(sys.argv[1])
    ns = s.namespace_id("crash")
    s.mkkw(ns, ("k",), parents=True)
    root = s.root_dir(ns)
    rnd = random.Random(int(sys.argv[2]))
    live = []
    print("ready", flush=True)
    while True:
        op = rnd.random()
        if op < 0.5 or not live:
            eid = s.create(ns, f"f{rnd.randrange(10**9)}", hks=[("k",)] if rnd.random() < 0.5 else (),
                           directory=root if rnd.random() < 0.5 else None)
            with open(s.entity_path(eid), "wb") as f:
                f.write(b"x" * rnd.randrange(100))
            live.append(eid)
        elif op < 0.7:
            s.rme(live.pop(rnd.randrange(len(live))))
        elif op < 0.85:
            s.bulk_create(ns, [(f"b{i}", [("k",)]) for i in range(20)])
        else:
            eid = live[rnd.randrange(len(live))]
            try:
                s.dtkw(eid, [("k",)])
            except Exception:
                s.atkw(eid, [("k",)])
""")


def _wait_for_entities(path: Path, n: int, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    """Poll the catalog (a plain reader beside the writers, WAL) until it holds n entities."""
    deadline = time.monotonic() + timeout
    con = sqlite3.connect(path / "catalog.sqlite", timeout=60)
    try:
        while con.execute("SELECT count(*) FROM entities").fetchone()[0] < n:
            assert all(p.poll() is None for p in procs), "a churn process died"
            assert time.monotonic() < deadline, f"fewer than {n} entities after {timeout:.0f}s"
            time.sleep(0.05)
    finally:
        con.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_mid_way_leaves_a_consistent_store(tmp_path, seed) -> None:
    path = tmp_path / "s"
    Store.open(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", _CHURN, str(path), str(seed * 10 + i)],
                              stdout=subprocess.PIPE) for i in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == b"ready"
        # Kill mid-way through real work: once the churners have committed a fair amount (polled,
        # not a fixed sleep, which on a loaded machine may pass before they got going), plus a
        # seed-dependent moment so the two runs die at different points.
        _wait_for_entities(path, 40, procs)
        time.sleep(0.3 * seed)
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
    s = Store.open(path)
    try:
        with s.catalog.read() as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n = c.execute("SELECT count(*) FROM entities").fetchone()[0]
        assert n > 10
        problems = check(s)
        # A kill between creating the bytes and committing leaves an orphan file, and these
        # writers write bytes without recording their size (stale-size): both fsck's job.
        # Anything else is a bug: a row without bytes, a dangling reference, an unreachable entity.
        assert [p for p in problems if p.kind not in ("orphan-bytes", "stale-size")] == []
        # the store is usable afterwards
        ns = s.namespace_id("crash")
        s.create(ns, "after", hks=[("k",)])
    finally:
        s.close()


def test_names_of_and_name_counts_in_ns(store, ns) -> None:
    store.mkkw(ns, ("a",))
    e1 = store.create(ns, "x.txt", hks=[("a",)])
    e2 = store.create(ns, "x.txt", hks=[("a",)])
    e3 = store.create(ns, "y.txt", hks=[("a",)])
    assert store.names_of([e1, e3, 999]) == {e1: "x.txt", e3: "y.txt"}
    assert store.name_counts_in_ns(ns, ["x.txt", "y.txt", "z"]) == {"x.txt": 2, "y.txt": 1}
    assert store.names_of([]) == {} and store.name_counts_in_ns(ns, []) == {} and e2


def test_keyword_attrs_and_migration_v6(tmp_path) -> None:
    """A keyword directory's own mode and owner (the mount's chmod/chown/mkdir of keywords):
    NULL until set; a v5 catalog gains the columns, its keywords keep the default."""
    s = Store.open(tmp_path / "s")
    ns = s.namespace_id("erin")
    s.mkkw(ns, "//a")
    s.close()
    with sqlite3.connect(tmp_path / "s" / "catalog.sqlite") as c:     # a v5 catalog
        for col in ("mode", "uid", "gid"):
            c.execute(f"ALTER TABLE keywords DROP COLUMN {col}")
        c.execute("PRAGMA user_version = 5")
    s = Store.open(tmp_path / "s")
    assert migrations.user_version(s.catalog.connection()) == migrations.SCHEMA_VERSION >= 6
    assert s.keyword_attrs(ns, "//a") == (None, None, None)
    s.mkkw(ns, "//a/b", mode=0o40700, uid=5, gid=6)
    assert s.keyword_attrs(ns, "//a/b") == (0o700, 5, 6)
    s.set_keyword_attrs(ns, "//a", mode=0o750)
    s.set_keyword_attrs(ns, "//a", gid=9)
    assert s.keyword_attrs(ns, "//a") == (0o750, None, 9)
    assert s.child_keyword_attrs(ns, "//a") == {"b": (0o700, 5, 6)}
    assert s.child_keyword_attrs(ns) == {"a": (0o750, None, 9)}
    s.move_keyword(ns, "//a/b", "//c")                                  # the attrs go with it
    assert s.keyword_attrs(ns, "//c") == (0o700, 5, 6)
    with pytest.raises(NotFound):
        s.keyword_attrs(ns, "//a/b")
    with pytest.raises(NotFound):
        s.set_keyword_attrs(ns, "//nope", mode=0o700)
    s.close()


def test_xattr_changes_bump_ctime(store, ns) -> None:
    """POSIX: setxattr and removexattr change the ctime of a file or directory (not its mtime)."""
    eid = store.create(ns, "f", hks=[])
    d = store.mkdir(store.root_dir(ns), "d")
    with store.catalog.write() as c:
        c.execute("UPDATE entities SET ctime_ns = 1, mtime_ns = 1 WHERE id = ?", (eid,))
        c.execute("UPDATE dirs SET ctime_ns = 1, mtime_ns = 1 WHERE id = ?", (d,))
    store.set_xattr("file", eid, "user.a", b"1")
    store.set_xattr("dir", d, "user.a", b"1")
    assert (store.entity(eid).ctime_ns > 1, store.entity(eid).mtime_ns) == (True, 1)
    assert (store.dir(d).ctime_ns > 1, store.dir(d).mtime_ns) == (True, 1)
    with store.catalog.write() as c:
        c.execute("UPDATE entities SET ctime_ns = 1 WHERE id = ?", (eid,))
        c.execute("UPDATE dirs SET ctime_ns = 1 WHERE id = ?", (d,))
    store.remove_xattr("file", eid, "user.a")
    store.remove_xattr("dir", d, "user.a")
    assert store.entity(eid).ctime_ns > 1 and store.dir(d).ctime_ns > 1
