"""hkfs.mount.view_listing without FUSE: a view read a piece at a time lists what
MountModel.listdir lists (clash names, ',NAME' for a name a keyword takes, stored
queries and devices without attributes), and its offsets resume after the same name in
a listing made after a change."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

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
    got = listing_for(m, m.resolve(path), path)
    assert isinstance(got, ViewListing)
    return list(got.entries_from(offset))


def test_pieces_list_what_listdir_lists(model: MountModel) -> None:
    def seen(entries) -> set[tuple]:
        return {(n, mode, ino, None if a is None else tuple(a(k))) for n, mode, ino, a, k in entries}

    for path in ("/@/v", "/@/w", "/,"):
        whole = seen(model.listdir(path))
        pieces = streamed(model, path)
        assert seen(e for e, _off in pieces) == whole
        offs = [off for _e, off in pieces]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
    names = [e[0] for e, _ in streamed(model, "/@/v")]
    assert sum(n.startswith("dup~") for n in names) == 2      # two in //v clash, //w's is elsewhere
    assert ",x" in names and "x" in names                      # the file, and the keyword x
    assert "once" in names                                     # shared in the namespace, not in //v
    sub = next(e for e, _off in streamed(model, "/@/v") if e[0] == "sub")
    assert stat.S_IMODE(sub[3](sub[4])[2]) == 0o700             # the keyword's own mode
    for (name, mode, _ino, attrs_of, key), _off in streamed(model, "/@/v"):
        if attrs_of is not None and mode != stat.S_IFDIR:
            assert model.entity_values(key) == attrs_of(key), name


def test_offsets_resume_after_the_same_name_in_a_later_listing(model: MountModel) -> None:
    first = streamed(model, "/@/v")
    (gone, _m, _i, _a, _k), _ = first[6]
    (last, *_), at = first[5]
    model.unlink(f"/@/v/{gone}")                               # leaves the view
    model.create("/@/v/zz-new", stat.S_IFREG | 0o644, 0, 0)      # a higher id: listed after
    later = [e[0] for e, _off in streamed(model, "/@/v", at)]
    want = [e[0] for e, _off in first[6:] if e[0] != gone]
    assert last not in later and gone not in later
    assert [n for n in later if n != "zz-new"] == want
    assert "zz-new" in later
