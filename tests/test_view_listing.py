"""hkfs.mount.view_listing without FUSE: a view read a piece at a time lists what
MountModel.listdir lists (clash names, ',NAME' for a name a keyword takes, stored
queries and devices without attributes), and its offsets resume after the same name in
a listing made after a change."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hkfs.core.store import Store
from hkfs.mount import view_listing
from hkfs.mount.model import MountModel
from hkfs.mount.view_listing import ViewListing, listing_for


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MountModel]:
    monkeypatch.setattr(view_listing, "CHUNK", 4)          # many pieces from a few files
    st = Store.open(tmp_path / "store")
    ns = st.namespace_id(os.getuid())
    for hk in ("//v", "//v/x", "//v/sub", "//w"):
        st.mkkw(ns, hk, parents=True)
    st.set_keyword_attrs(ns, "//v/sub", mode=0o700, uid=1234, gid=1234)   # its own mode and owner
    st.bulk_create(ns, [(f"f{i:02d}", [("v",)]) for i in range(13)])
    for name, hks in (("dup", ["//v"]), ("dup", ["//v"]), ("dup", ["//w"]), ("x", ["//v"]),
                      ("near.query", ["//v"]), ("only-w", ["//w"]), ("once", ["//w"]), ("once", ["//v"])):
        st.create(ns, name, hks=hks, uid=0, gid=0)
    st.create(ns, "tty", hks=["//v"], mode=stat.S_IFCHR | 0o600, uid=0, gid=0)
    m = MountModel(st, ns)
    yield m
    m.close()
    st.close()


def streamed(m: MountModel, path: str, offset: int = 0) -> list[tuple[tuple, int]]:
    """(name, inode, attributes or None) and offset of each entry the listing gives after offset."""
    got = listing_for(m, m.resolve(path), path)
    assert isinstance(got, ViewListing)
    return [((name, ino, attrs), off) for piece, start in got.pieces_from(offset)
            for name, ino, attrs, off in list(piece.entries())[start:]]


def test_pieces_list_what_listdir_lists(model: MountModel) -> None:
    def seen(entries) -> set[tuple]:
        return {(n, ino, None if a is None else tuple(a(k))) for n, _mode, ino, a, k in entries}

    for path in ("/@/v", "/@/w", "/,"):
        whole = seen(model.listdir(path))
        pieces = streamed(model, path)
        assert {e for e, _off in pieces} == whole
        offs = [off for _e, off in pieces]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
    names = [e[0] for e, _ in streamed(model, "/@/v")]
    assert sum(n.startswith("dup~") for n in names) == 2      # two in //v clash, //w's is elsewhere
    assert ",x" in names and "x" in names                      # the file, and the keyword x
    assert "once" in names                                     # shared in the namespace, not in //v
    sub = next(e for e, _off in streamed(model, "/@/v") if e[0] == "sub")
    assert stat.S_IMODE(sub[2][2]) == 0o700                    # the keyword's own mode
    bare = {e[0] for e, _off in streamed(model, "/@/v") if e[2] is None}
    assert bare == {".", "..", "near.query", "tty"}            # the kernel looks these up


def test_piece_columns_are_entity_values(model: MountModel, tmp_path: Path) -> None:
    """The columns a piece computes for its files (numpy, one pass) equal what
    MountModel.entity_values gives one file at a time: link counts, regular-file bits, an
    open file's size and times from its bytes file."""
    store = model.store
    eids = store.match_ids(model.ns, [("v",)])
    for name in ("linked", "linked-too"):                               # two directory links too
        store.link(eids[0], store.root_dir(model.ns), name)
    store.atkw(eids[1], ["//w", "//v/sub"])                             # three HKs
    open_eid = eids[2]
    model.open_counts[open_eid] = 1
    with open(store.entities_dir / str(open_eid), "wb") as f:          # grows while open
        f.write(b"x" * 1000)
    want = {s.id: model.entity_values(s) for s in store.entity_stats(eids)}
    got = {ino >> 2: attrs for (_n, ino, attrs), _off in streamed(model, "/@/v") if attrs and ino & 3 == 1}
    tty = store.match_ids(model.ns, [("v",)], "tty")[0]
    assert set(got) == set(want) - {tty, *store.match_ids(model.ns, [("v",)], "near.query")}
    for eid, attrs in got.items():
        assert attrs == want[eid], eid
    assert got[open_eid][5] == 1000
    assert got[eids[0]][1] == 3 and got[eids[1]][1] == 3 and got[eids[3]][1] == 2
    # files with no HK (0 in the count columns): in a directory, listed by @untagged
    for i in range(3):
        model.create(f"/loose{i}", stat.S_IFREG | 0o600, 0, 0)
    untagged = {ino >> 2: attrs for (n, ino, attrs), _off in streamed(model, "/@/@untagged") if n.startswith("loose")}
    assert len(untagged) == 3
    for s in store.entity_stats(sorted(untagged)):
        assert untagged[s.id] == model.entity_values(s) and untagged[s.id][1] == 1
    # a piece of ids far apart (read by id, not by range): //w's, one made after the loose files
    model.create("/@/w/far", stat.S_IFREG | 0o640, 0, 0)
    sparse = {ino >> 2: attrs for (_n, ino, attrs), _off in streamed(model, "/@/w") if attrs and ino & 3 == 1}
    assert len(sparse) == 5
    for s in store.entity_stats(sorted(sparse)):
        assert sparse[s.id] == model.entity_values(s)


def test_offsets_resume_after_the_same_name_in_a_later_listing(model: MountModel) -> None:
    first = streamed(model, "/@/v")
    (gone, _i, _a), _ = first[6]
    (last, *_), at = first[5]
    model.unlink(f"/@/v/{gone}")                               # leaves the view
    model.create("/@/v/zz-new", stat.S_IFREG | 0o644, 0, 0)      # a higher id: listed after
    later = [e[0] for e, _off in streamed(model, "/@/v", at)]
    want = [e[0] for e, _off in first[6:] if e[0] != gone]
    assert last not in later and gone not in later
    assert [n for n in later if n != "zz-new"] == want
    assert "zz-new" in later


def test_a_piece_read_before_a_commit_is_read_again(model: MountModel) -> None:
    """The listing keeps its last piece for the requests that follow and reads the next one
    ahead: after a commit neither is handed out, or the kernel would keep the attributes
    they had before the change (a chmod between two requests of one `ls -l`)."""
    got = listing_for(model, model.resolve("/@/v"), "/@/v")
    pieces = got.pieces_from(0)
    next(pieces)                                               # '.' and '..'
    first, _start = next(pieces)                               # f00-f03; f04-f07 read ahead
    assert first.names == ["f00", "f01", "f02", "f03"]
    at = int(first.offsets[1])                                 # the reply ended after f01
    assert isinstance(got, ViewListing) and got._ahead
    for fut in got._ahead.values():
        fut.result()
    for name in ("f02", "f05"):
        model.chmod(f"/@/v/{name}", 0o600)
    modes = {name: stat.S_IMODE(attrs[2]) for piece, start in got.pieces_from(at)
             for name, _ino, attrs, _off in list(piece.entries())[start:] if attrs}
    assert modes["f02"] == 0o600 and modes["f05"] == 0o600
    assert modes["f03"] != 0o600


def test_pieces_are_read_ahead_and_told_as_viewed_at_once(model: MountModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a piece is handed out, the next READ_AHEAD are being read (the next request's
    while the kernel works on this reply), and each piece's files are told to the kernel
    cache in one on_view_all call."""
    monkeypatch.setattr(view_listing, "READ_AHEAD", 2)
    told: list[list[int]] = []
    model.on_view_all = told.append
    got = listing_for(model, model.resolve("/@/v"), "/@/v")
    assert isinstance(got, ViewListing)
    pieces = got.pieces_from(0)
    next(pieces)                                               # '.' and '..'
    first, _start = next(pieces)
    assert sorted(got._ahead) == [4, 8]                        # CHUNK 4: the next two pieces
    for fut in got._ahead.values():
        fut.result()
    assert len(told) == 3 and all(len(t) == 4 for t in told)          # read here and ahead: any order
    assert [int(i) >> 2 for i in first.attrs[:, 0]] in told
    rest = [p for p, _s in pieces]
    assert sum(len(p) for p in rest) == len(got) - 2 - len(first)
    assert not got._ahead                                      # none left over at the end


def test_shared_names_are_read_even_while_the_read_ahead_thread_is_busy(model: MountModel) -> None:
    """A listing reads the namespace's shared names on the read-ahead thread while it reads
    the view's ids; when that thread is busy (another listing's pieces) it reads them itself."""
    want = {name for p, _s in listing_for(model, model.resolve("/@/v"), "/@/v").pieces_from(0)
            for name in p.names}
    assert sum(n.startswith("dup~") for n in want) == 2
    busy = threading.Event()
    blocker = view_listing._AHEAD.submit(busy.wait, 30)
    try:
        got = listing_for(model, model.resolve("/@/v"), "/@/v")     # does not wait for the blocker
        assert isinstance(got, ViewListing) and got.shared == model.reads.shared_names(model.ns)
        assert not blocker.done()
    finally:
        busy.set()
    assert {n for p, _s in got.pieces_from(0) for n in p.names} == want


@pytest.mark.parametrize("path", ["/@/v", "/@/w", "/@/v/@/w", "/@/v/@/@or/w", "/@/@untagged", "/@/v/sub"])
def test_view_ids_are_match_ids(model: MountModel, path: str) -> None:
    """A view's ids, read as one string of text, are match_ids, sorted, each once (also a file
    that carries several keywords of the subtree: the column may repeat it, Store.match_ids_column)."""
    model.create("/loose", stat.S_IFREG | 0o600, 0, 0)
    twice = model.store.match_ids(model.ns, [("v",)], "f01")[0]
    model.store.atkw(twice, ["//v/sub", "//v/x"])               # three rows in //v's subtree
    hks = model.resolve(path).hks
    got = model.reads.view_ids(model.ns, tuple(hks))
    assert got.dtype == np.int64
    assert got.tolist() == sorted(set(model.store.match_ids(model.ns, hks)))


def test_read_ahead_works_in_a_forked_child() -> None:
    """The daemon is forked from a process that may have listed views itself (the tests, a
    caller of hkfs.fuse.daemon.mount): its read-ahead thread must be its own, or a piece read
    ahead would never come."""
    assert view_listing._AHEAD.submit(int).result(timeout=10) == 0      # the parent's thread runs
    pid = os.fork()
    if pid == 0:
        try:
            ok = view_listing._AHEAD.submit(lambda: 7).result(timeout=10) == 7
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_read_ahead_is_topped_up_between_requests_not_during_them(model: MountModel,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A request served from pieces read ahead gives the worker nothing new while it fills
    (the worker's numpy and packing would hold the GIL the filling request needs); once
    the caller closes the pieces (the reply is full), the next READ_AHEAD are read."""
    monkeypatch.setattr(view_listing, "READ_AHEAD", 2)
    got = listing_for(model, model.resolve("/@/v"), "/@/v")
    assert isinstance(got, ViewListing)
    with contextlib.closing(got.pieces_from(0)) as pieces:
        next(pieces)                                           # '.' and '..'
        first, _start = next(pieces)                           # read here: the worker reads 4, 8
        assert sorted(got._ahead) == [4, 8]
    for fut in got._ahead.values():
        fut.result()
    with contextlib.closing(got.pieces_from(int(first.offsets[-1]))) as pieces:
        second, _start = next(pieces)                          # read ahead: nothing more asked
        assert second.names[0] == "f04" and sorted(got._ahead) == [8]
        next(pieces)                                           # the reply ends in piece 8
    assert sorted(got._ahead) == [12, 16]                      # the next request's, between requests


def test_pieces_read_ahead_are_prepared_on_the_worker(model: MountModel) -> None:
    """`prepare` (the adapter's packing for libfuse) runs on the worker with each piece it reads,
    so a request only hands the piece over; a piece read on the caller's thread is not prepared."""
    where: dict[str, str] = {}

    def prepare(piece: view_listing.Piece) -> None:
        where[piece.names[0]] = threading.current_thread().name
        piece.wire = ("ready", len(piece))

    got = listing_for(model, model.resolve("/@/v"), "/@/v", prepare)
    assert isinstance(got, ViewListing)
    pieces = got.pieces_from(0)
    next(pieces)                                               # '.' and '..'
    first, _start = next(pieces)                               # read here, at the start
    assert first.wire is None and first.names[0] not in where
    for _i in range(3):                                        # files 4..15, read ahead
        for fut in got._ahead.values():
            fut.result()                                       # (not cancelled as not started)
        p, _start = next(pieces)
        assert p.wire == ("ready", len(p)) and where[p.names[0]].startswith("hkfs-listing")


def test_columns_packed_by_sqlite_are_the_text_ones(model: MountModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the C aggregate built (hkfs/core/_aggregates.c) a catalog's connections pack a piece's
    integer columns into one BLOB (hkfs.core.aggregates); the listing is the same as from the
    columns read as text (the fallback without it): attributes, link and HK counts, names."""
    pytest.importorskip("hkfs.core._aggregates")
    store = model.store
    assert store.catalog.aggregates
    eids = store.match_ids(model.ns, [("v",)])
    store.link(eids[0], store.root_dir(model.ns), "linked")
    store.atkw(eids[1], ["//w", "//v/sub"])
    got = store.entity_columns_between(min(eids), max(eids))
    assert got is not None and isinstance(got.ints, bytes) and isinstance(got.tagged, bytes)
    packed = streamed(model, "/@/v")
    monkeypatch.setattr(store.catalog, "aggregates", False)
    text = store.entity_columns_between(min(eids), max(eids))
    assert text is not None and isinstance(text.ints, tuple) and text.names == got.names
    assert streamed(model, "/@/v") == packed
    assert len(packed) > 20 and any(attrs and attrs[1] == 3 for (_n, _i, attrs), _o in packed)
