"""MountModel without FUSE: every view operation and the invalidation it reports, on a real Store.

In the style of borg's fuse tests: the meaning of mount paths checked by calling the model
as the FUSE adapter would (hkfs.fuse.operations only translates), on a store in a temp dir.
Bytes are written straight to the entity files, as the adapter's descriptors would.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hkfs.core import bytes as entity_bytes
from hkfs.core.errors import (
    AlreadyExists,
    Busy,
    CrossDevice,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotPermitted,
)
from hkfs.core.fsck import check, repair, stale_sizes
from hkfs.core.store import Store
from hkfs.mount.model import EDITOR_SAVE_SECONDS, EVERYTHING, NOTHING, MountModel, Stale
from hkfs.mount.views import DirLoc, LinkLoc, ViewFileLoc

UID, GID = os.getuid(), os.getgid()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def model(tmp_path: Path, clock: Clock) -> Iterator[MountModel]:
    st = Store.open(tmp_path / "store")
    m = MountModel(st, st.namespace_id(UID), clock=clock)
    yield m
    m.close()
    st.close()


def new(m: MountModel, path: str, data: bytes, *, uid: int = UID) -> int:
    """create + write + close through the model, as `echo data > path` does."""
    eid, _ = m.create(path, 0o644, uid, GID)
    m.store.entity_path(eid).write_bytes(data)
    st = os.stat(m.store.entity_path(eid))
    m.written(eid, st.st_size, st.st_mtime_ns)
    return eid


def read(m: MountModel, path: str) -> bytes:
    return m.store.entity_path(m.file(path)).read_bytes()


def names(m: MountModel, path: str) -> list[str]:
    return [e[0] for e in m.listdir(path)[2:]]


def hks(m: MountModel, path: str) -> str:
    return m.getxattr(path, "user.hk.keywords").decode()


def old(clock: Clock) -> None:
    """Let every file made so far stop being a fresh editor temp."""
    clock.now += EDITOR_SAVE_SECONDS + 1


# ---------------------------------------------------------------- create, ln, rm, mkdir, rmdir

def test_create_in_a_directory_and_a_view(model: MountModel) -> None:
    assert model.mkdir("/d", 0o755, UID, GID) == NOTHING
    assert model.mkdir("/@/photo", 0o755, UID, GID) == EVERYTHING   # a keyword may shadow a file name
    eid, stale = model.create("/d/a.txt", 0o600, UID, GID)
    assert stale == NOTHING
    assert model.resolve("/d/a.txt") == LinkLoc(model.resolve("/d").dirid, "a.txt", eid)  # type: ignore[union-attr]
    assert model.attrs("/d/a.txt").mode == stat.S_IFREG | 0o600
    v, stale = model.create("/@/photo/b.jpg", 0o644, UID, GID)
    assert stale == NOTHING and hks(model, "/@/photo/b.jpg") == "//photo"
    with pytest.raises(AlreadyExists):
        model.create("/@/photo/b.jpg", 0o644, UID, GID)
    with pytest.raises(NotFound):
        model.create("/@/c.txt", 0o644, UID, GID)           # the keyword space holds no files
    # a second file of the same name: views list clash names now, so the first file's plain
    # name in views is stale (the kernel cache drops everything if it holds it under one)
    _, stale = model.create("/d/b.jpg", 0o644, UID, GID)
    assert stale == Stale(clashes=(v,))
    model.setxattr("/d/b.jpg", "user.hk.keywords", b"//photo")
    assert sorted(names(model, "/@/photo")) == sorted(f"b~{e}.jpg" for e in model.store.match_ids(model.ns, [], "b.jpg"))
    assert v in model.store.match_ids(model.ns, [("photo",)])


def test_ln_attaches_and_rm_detaches(model: MountModel) -> None:
    model.mkdir("/@/a", 0o755, UID, GID)
    model.mkdir("/@/b", 0o755, UID, GID)
    eid = new(model, "/@/a/f", b"x")
    assert model.link("/@/a/f", "/@/b/f") == EVERYTHING
    assert hks(model, "/@/b/f") == "//a//b" and model.file("/@/b/f") == eid
    with pytest.raises(AlreadyExists):
        model.link("/@/a/f", "/@/b/f")
    assert model.unlink("/@/a/f") == EVERYTHING
    assert hks(model, "/@/b/f") == "//b" and names(model, "/@/a") == []
    model.mkdir("/d", 0o755, UID, GID)
    model.link("/@/b/f", "/d/f")
    assert model.store.entity(eid).nlinks == 1
    model.link("/d/f", "/d/g")
    # the last HK leaves: the directory links keep the file
    model.unlink("/@/b/f")
    assert read(model, "/d/g") == b"x"
    # a link among several: stale under its other paths for sure; the last: nothing else knows it
    assert model.unlink("/d/f") == Stale(eid=eid, shared=True)
    assert model.unlink("/d/g") == Stale(eid=eid, shared=False)
    with pytest.raises(NotFound):
        model.store.entity(eid)


def test_scratch_files_made_in_a_view_go_when_removed(model: MountModel, clock: Clock) -> None:
    """Issue 11 item 6: vim's .X.swp and 4913 probe, rsync's .NAME.XXXXXX, backups NAME~
    made in a view and removed from it again are deleted, not kept in lost+found; a file
    of an ordinary name, or a scratch file given another home, still only leaves the view."""
    model.mkdir("/@/a", 0o755, UID, GID)
    model.mkdir("/@/b", 0o755, UID, GID)
    lost = lambda: names(model, "/lost+found") if "lost+found" in names(model, "/") else []  # noqa: E731
    scratch_names = (".f.swp", "4913", ".f.x1Ab2C", "f~")
    scratch = [new(model, f"/@/a/{n}", b"s") for n in scratch_names]
    old(clock)                                      # long-lived (vim keeps its swap file open)
    for eid, n in zip(scratch, scratch_names, strict=True):
        model.unlink(f"/@/a/{n}")
        with pytest.raises(NotFound):
            model.store.entity(eid)
    assert lost() == []
    kept = new(model, "/@/a/notes.txt", b"n")       # an ordinary name: rm detaches, bytes kept
    model.unlink("/@/a/notes.txt")
    assert model.store.entity(kept).hks == () and lost() == ["notes.txt"]
    new(model, "/@/a/.both", b"2")                  # a scratch name with another keyword:
    model.link("/@/a/.both", "/@/b/.both")          # linked, so no longer scratch; rm detaches
    model.unlink("/@/a/.both")
    assert hks(model, "/@/b/.both") == "//b"
    moved = new(model, "/@/a/.tmp", b"m")           # renamed to its real name (rsync): a file
    model.rename("/@/a/.tmp", "/@/a/real")
    model.unlink("/@/a/real")
    assert model.store.entity(moved).hks == () and "real" in lost()


def test_mkdir_and_rmdir_under_at(model: MountModel) -> None:
    model.mkdir("/@/paper", 0o755, UID, GID)
    new(model, "/@/paper/os", b"file")
    assert model.mkdir("/@/paper/os", 0o755, UID, GID) == EVERYTHING    # keyword takes the name
    assert names(model, "/@/paper") == ["os", ",os"]
    assert read(model, "/@/paper/,os") == b"file"
    assert model.rmdir("/@/paper/os") == EVERYTHING
    assert names(model, "/@/paper") == ["os"]
    with pytest.raises(NotPermitted):                      # EBUSY: '@' is part of every directory
        model.rmdir("/@")
    model.mkdir("/d", 0o755, UID, GID)
    assert model.rmdir("/d") == NOTHING


def test_keyword_directories_have_their_own_mode_and_owner(model: MountModel) -> None:
    """mkdir under '@' or in a view keeps its mode and owner; chmod/chown of a view set its
    last keyword's; '@' and operator directories keep the default (the same value is fine)."""
    assert model.mkdir("/@/a", 0o700, 5, 6) == EVERYTHING
    model.mkdir("/@/a/b", 0o750, UID, GID)
    model.store.mkkw(model.ns, ("c",))                        # made by hk mkkw: the default
    a = model.attrs("/@/a")
    assert (a.mode, a.uid, a.gid) == (stat.S_IFDIR | 0o700, 5, 6)
    assert model.attrs("/@/a/b").mode & 0o7777 == 0o750
    c = model.attrs("/@/c")
    assert (c.mode & 0o7777, c.uid, c.gid) == (0o755, model.uid, model.gid)
    assert model.chmod("/@/c/@/a/b", 0o711) == EVERYTHING     # the view //c//a/b is //a/b's directory
    assert model.attrs("/@/a/b").mode & 0o7777 == 0o711
    assert model.chown("/@/@or/a", 7, None) == EVERYTHING     # //a under an operator
    assert (model.attrs("/@/a").uid, model.attrs("/@/a").gid) == (7, 6)
    listed = {n: attrs_of(key)[2] & 0o7777 for n, _t, _i, attrs_of, key in model.listdir("/@")[2:]}
    assert listed == {"a": 0o700, "c": 0o755}
    model.mkdir("/d", 0o755, UID, GID)
    model.setxattr("/d", "user.hk.dkl", b"//a")
    assert model.attrs("/d/,").mode & 0o7777 == 0o700        # d's ',' is the view //a
    for path in ("/@", "/@/@or", "/@/a/@"):
        with pytest.raises(NotPermitted):
            model.chmod(path, 0o700)
        with pytest.raises(NotPermitted):
            model.chown(path, 99, None)
        assert model.chmod(path, 0o755) == NOTHING            # its own mode: tar x, cp -a
        assert model.chown(path, model.uid, model.gid) == NOTHING
    model.rename("/@/a/b", "/@/e")                            # mv keeps them
    assert model.attrs("/@/e").mode & 0o7777 == 0o711


def test_mv_between_views_retags_and_within_a_view_renames(model: MountModel) -> None:
    for k in ("/@/photo", "/@/animal", "/@/animal/dog", "/@/sports"):
        model.mkdir(k, 0o755, UID, GID)
    eid = new(model, "/@/photo/@/animal/dog/f.jpg", b"dog")
    assert model.rename("/@/animal/f.jpg", "/@/sports/f.jpg") == EVERYTHING
    assert hks(model, "/@/sports/f.jpg") == "//photo//sports"    # //animal/dog went, //photo kept
    model.rename("/@/sports/f.jpg", "/@/sports/g.jpg")
    assert model.file("/@/photo/g.jpg") == eid and hks(model, "/@/photo/g.jpg") == "//photo//sports"
    with pytest.raises(NotPermitted):
        model.rename("/@", "/@/photo2")                   # '@' is path syntax, not a keyword
    with pytest.raises(IsADirectory):
        model.rename("/@/photo/g.jpg", "/@/animal")


def test_mv_between_a_directory_and_a_view(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    model.mkdir("/@/k", 0o755, UID, GID)
    eid = new(model, "/d/f", b"f")
    model.rename("/d/f", "/@/k/f")
    assert names(model, "/d") == [] and hks(model, "/@/k/f") == "//k"
    model.rename("/@/k/f", "/d/f")
    assert model.file("/d/f") == eid and names(model, "/@/k") == []


# ---------------------------------------------------------------- rename over (issue 11 items 2, 3)

def test_mv_of_an_old_file_over_another_in_a_view_keeps_the_source(model: MountModel, clock: Clock) -> None:
    model.mkdir("/@/photo", 0o755, UID, GID)
    model.mkdir("/@/cat", 0o755, UID, GID)
    tama = new(model, "/@/photo/@/cat/tama.jpg", b"tama")
    mike = new(model, "/@/photo/mike.jpg", b"mike")
    model.setxattr("/@/photo/tama.jpg", "user.note", b"tama's")
    model.store.set_xattr("file", tama, "user.hk.embedding", b"1 0 0")     # as the .query layer stores it
    model.setxattr("/@/photo/mike.jpg", "user.note", b"mike's")
    old(clock)
    assert model.rename("/@/photo/tama.jpg", "/@/photo/mike.jpg") == EVERYTHING
    assert model.file("/@/photo/mike.jpg") == tama
    assert read(model, "/@/photo/mike.jpg") == b"tama"
    assert hks(model, "/@/photo/mike.jpg") == "//cat//photo"
    assert model.getxattr("/@/photo/mike.jpg", "user.note") == b"tama's"
    assert model.getxattr("/@/photo/mike.jpg", "user.hk.embedding") == b"1 0 0"
    assert names(model, "/@/photo") == ["mike.jpg"]
    with pytest.raises(NotFound):
        model.store.entity(mike)                   # replaced: it had no other home
    assert check(model.store) == []


def test_mv_over_a_file_with_other_homes_in_a_view(model: MountModel, clock: Clock) -> None:
    model.mkdir("/@/photo", 0o755, UID, GID)
    model.mkdir("/@/keep", 0o755, UID, GID)
    a = new(model, "/@/photo/a", b"a")
    b = new(model, "/@/photo/@/keep/b", b"b")
    old(clock)
    model.rename("/@/photo/a", "/@/photo/b")
    assert model.file("/@/photo/b") == a
    assert model.file("/@/keep/b") == b and hks(model, "/@/keep/b") == "//keep"   # left //photo only


def test_rename_over_in_a_directory_is_posix(model: MountModel, clock: Clock) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    src = new(model, "/d/secret", b"root only", uid=0)
    model.chmod("/d/secret", 0o600)
    dst = new(model, "/d/mine", b"mine", uid=4242)
    model.link("/d/mine", "/d/other-link")
    old(clock)
    model.rename("/d/secret", "/d/mine")
    a = model.attrs("/d/mine")
    assert model.file("/d/mine") == src and (a.uid, a.mode & 0o7777) == (0, 0o600)
    assert read(model, "/d/mine") == b"root only"
    assert model.file("/d/other-link") == dst and read(model, "/d/other-link") == b"mine"
    assert names(model, "/d") == ["mine", "other-link"]


def test_a_fresh_temp_of_another_owner_is_no_editor_save(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    dst = new(model, "/d/f", b"theirs", uid=4242)
    src = new(model, "/d/tmp", b"root's", uid=0)
    model.chmod("/d/tmp", 0o600)
    model.rename("/d/tmp", "/d/f")
    assert model.file("/d/f") == src and model.attrs("/d/f").uid == 0
    with pytest.raises(NotFound):
        model.store.entity(dst)


def test_a_fresh_temp_over_a_file_with_other_hard_links_is_posix(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    dst = new(model, "/d/f", b"old")
    model.link("/d/f", "/d/g")
    src = new(model, "/d/.f.tmp", b"new")
    model.rename("/d/.f.tmp", "/d/f")
    assert model.file("/d/f") == src and read(model, "/d/g") == b"old" and model.file("/d/g") == dst


# ---------------------------------------------------------------- editor saves

def test_temp_and_rename_is_an_editor_save(model: MountModel) -> None:
    """gedit / emacs / sed -i: write a new temp file, rename it over the document."""
    model.mkdir("/@/doc", 0o755, UID, GID)
    model.mkdir("/d", 0o755, UID, GID)
    doc = new(model, "/@/doc/m.txt", b"old")
    model.link("/@/doc/m.txt", "/d/m.txt")
    model.setxattr("/@/doc/m.txt", "user.note", b"keep")
    tmp = new(model, "/@/doc/.goutputstream-X1", b"new")
    model.chmod("/@/doc/.goutputstream-X1", 0o640)
    model.chown("/@/doc/.goutputstream-X1", None, GID + 7)      # the temp's group wins, as in rename(2)
    assert model.rename("/@/doc/.goutputstream-X1", "/@/doc/m.txt") == Stale(everything=True, merged=(tmp, doc))
    assert model.attrs("/d/m.txt").gid == GID + 7
    assert model.file("/@/doc/m.txt") == doc and read(model, "/d/m.txt") == b"new"
    assert model.getxattr("/d/m.txt", "user.note") == b"keep" and hks(model, "/d/m.txt") == "//doc"
    assert model.attrs("/d/m.txt").mode & 0o7777 == 0o640 and model.attrs("/d/m.txt").size == 3
    assert names(model, "/@/doc") == ["m.txt"]
    # the same through the directory link (sed -i d/m.txt)
    new(model, "/d/sedAbc", b"newer")
    model.rename("/d/sedAbc", "/d/m.txt")
    assert model.file("/@/doc/m.txt") == doc and read(model, "/@/doc/m.txt") == b"newer"
    assert names(model, "/d") == ["m.txt"] and check(model.store) == []


def test_vim_save_patterns(model: MountModel) -> None:
    """vim: the swap file and the '4913' probe come and go; backupcopy=no renames the document
    to 'm.txt~', writes a new 'm.txt' and removes the backup; writing 'm.txt~' and renaming
    it over the document (a fresh temp) is an editor save."""
    model.mkdir("/@/doc", 0o755, UID, GID)
    doc = new(model, "/@/doc/m.txt", b"one")
    new(model, "/@/doc/.m.txt.swp", b"swap")
    new(model, "/@/doc/4913", b"")
    model.unlink("/@/doc/4913")
    # backupcopy=no
    model.rename("/@/doc/m.txt", "/@/doc/m.txt~")
    fresh = new(model, "/@/doc/m.txt", b"two")
    model.unlink("/@/doc/m.txt~")
    model.unlink("/@/doc/.m.txt.swp")
    assert read(model, "/@/doc/m.txt") == b"two" and names(model, "/@/doc") == ["m.txt"]
    assert model.file("/@/doc/m.txt") == fresh != doc
    # write X~ then rename it over X
    new(model, "/@/doc/m.txt~", b"three")
    model.rename("/@/doc/m.txt~", "/@/doc/m.txt")
    assert model.file("/@/doc/m.txt") == fresh and read(model, "/@/doc/m.txt") == b"three"


def test_only_a_temp_made_moments_ago_and_never_moved_is_an_editor_save(model: MountModel, clock: Clock) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    doc = new(model, "/d/doc", b"doc")
    new(model, "/d/t1", b"late")
    clock.now += EDITOR_SAVE_SECONDS + 1                   # made too long ago
    t2 = new(model, "/d/t2", b"moved")
    model.rename("/d/t2", "/d/t3")                          # renamed once: no longer a fresh temp
    model.rename("/d/t3", "/d/doc")
    assert model.file("/d/doc") == t2
    t1 = model.file("/d/t1")
    model.rename("/d/t1", "/d/doc")
    assert model.file("/d/doc") == t1
    with pytest.raises(NotFound):
        model.store.entity(doc)


def test_an_editor_save_interrupted_never_shares_bytes(model: MountModel, monkeypatch) -> None:
    """A crash between the bytes step and the catalog step of replace_bytes: the temp's
    row has no bytes (fsck removes it), the document has the new bytes, and no two
    entity files are one file."""
    model.mkdir("/d", 0o755, UID, GID)
    doc = new(model, "/d/doc", b"old")
    tmp = new(model, "/d/.doc.tmp", b"new!")

    def crash(*a, **k) -> None:
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(model.store, "replace_entity", crash)
    with pytest.raises(KeyboardInterrupt):
        model.rename("/d/.doc.tmp", "/d/doc")
    monkeypatch.undo()
    files = [model.store.entity_path(e) for e in (doc, tmp) if model.store.entity_path(e).exists()]
    assert len({os.stat(p).st_ino for p in files}) == len(files) == 1
    assert model.store.entity_path(doc).read_bytes() == b"new!"
    problems = check(model.store)
    assert sorted((p.kind, p.ids[0]) for p in problems) == [("missing-bytes", tmp), ("stale-size", doc)]
    repair(model.store, problems)                          # the temp's row goes: what the save was doing
    assert check(model.store) == [] and stale_sizes(model.store) == []
    assert read(model, "/d/doc") == b"new!" and names(model, "/d") == ["doc"]


# ---------------------------------------------------------------- attributes and what they leave stale

def test_inode_changes_report_the_entity(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    eid = new(model, "/d/f", b"0123456789")
    assert model.chmod("/d/f", 0o600) == Stale(eid=eid)
    assert model.chown(eid, 7, None) == Stale(eid=eid)          # an f-call: by the open file's entity
    assert model.truncate("/d/f", 4) == Stale(eid=eid)
    assert model.utimens("/d/f", None, 1_000_000_001_000_000_000) == Stale(eid=eid)
    a = model.attrs("/d/f")
    assert (a.uid, a.mode & 0o7777, a.mtime_ns, a.size) == (7, 0o600, 1_000_000_001_000_000_000, 4)
    assert read(model, "/d/f") == b"0123"
    assert model.chmod("/d", 0o700) == NOTHING
    model.link("/d/f", "/d/g")
    assert model.chmod("/d/f", 0o644) == Stale(eid=eid, shared=True)   # cached under /d/g too
    e = new(model, "/d/v.npy", b"")
    assert model.chmod("/d/v.npy", 0o644) == Stale(eid=e, shared=True)  # an embedding entry


def test_xattrs_symlinks_and_errors(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    new(model, "/d/f", b"x")
    assert model.setxattr("/d/f", "user.a", b"1") == EVERYTHING
    assert model.listxattr("/d/f") == ["user.a"]                 # no HK: user.hk.keywords not listed
    assert model.getxattr("/d/f", "user.hk.keywords") == b""      # (but readable)
    model.mkdir("/@/k", 0o755, UID, GID)
    model.link("/d/f", "/@/k/f")
    assert model.listxattr("/d/f") == ["user.hk.keywords", "user.a"]
    with pytest.raises(AlreadyExists):
        model.setxattr("/d/f", "user.a", b"2", 1)
    assert model.removexattr("/d/f", "user.a") == EVERYTHING
    with pytest.raises(NotFound):
        model.getxattr("/d/f", "user.a")
    assert model.symlink("/d/l", "f", UID, GID) == EVERYTHING
    assert model.readlink("/d/l") == "f" and stat.S_ISLNK(model.attrs("/d/l").mode)
    assert isinstance(model.resolve("/d"), DirLoc) and isinstance(model.resolve("/d/f"), LinkLoc)
    with pytest.raises(NotFound):
        model.resolve("/nope/x")


def test_link_counts_name_keywords_too(model: MountModel) -> None:
    """st_nlink: directory links plus HKs, at least 2 once a file carries an HK (tools then
    write it in place, not by rename); untagged files as on ext4. Listings say the same."""
    model.mkdir("/d", 0o755, UID, GID)
    model.mkdir("/@/a", 0o755, UID, GID)
    model.mkdir("/@/a/b", 0o755, UID, GID)
    model.mkdir("/@/c", 0o755, UID, GID)
    plain = new(model, "/d/p", b"")
    assert model.attrs("/d/p").nlink == 1
    model.link("/d/p", "/d/q")
    assert model.attrs("/d/p").nlink == 2
    new(model, "/@/a/b/f", b"")
    assert model.attrs("/@/a/f").nlink == 2                      # one HK, no link: still 2
    model.link("/@/a/f", "/@/c/f")
    model.link("/@/a/f", "/d/f")
    assert model.attrs("/@/c/f").nlink == model.attrs("/d/f").nlink == 3
    listed = {n: attrs_of(key)[1] for n, _t, _i, attrs_of, key in model.listdir("/@/a")[2:] if attrs_of}
    assert listed == {"b": 2, "f": 3}                            # b: the child keyword
    listed = {n: attrs_of(key)[1] for n, _t, _i, attrs_of, key in model.listdir("/d")[2:]}
    assert listed == {"f": 3, "p": 2, "q": 2}
    model.unlink("/d/q")
    assert model.attrs("/d/p").nlink == 1 and model.store.entity(plain).nlinks == 1


def test_listing_attrs_come_without_a_call_per_file(model: MountModel) -> None:
    model.mkdir("/@/v", 0o755, UID, GID)
    for i in range(3):
        new(model, f"/@/v/f{i}", b"x" * i)
    seen: list[int] = []
    model.on_view = seen.append
    entries = model.listdir("/@/v")
    sizes = {n: attrs_of(key)[5] for n, _t, _i, attrs_of, key in entries[2:]}
    assert sizes == {"f0": 0, "f1": 1, "f2": 2} and len(seen) == 3
    assert isinstance(model.resolve("/@/v/f1"), ViewFileLoc)


def test_bytes_ops_record_what_they_did(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    eid = new(model, "/d/f", b"abc")
    entity_bytes.truncate(model.store, eid, 10)
    assert model.store.entity(eid).size == 10
    entity_bytes.set_times(model.store, eid, None, 5_000_000_000)
    assert os.stat(model.store.entity_path(eid)).st_mtime_ns == 5_000_000_000
    assert model.store.entity(eid).mtime_ns == 5_000_000_000


def test_directories_stay_out_of_views_and_the_root_stays(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    model.mkdir("/@/k", 0o755, UID, GID)
    assert names(model, "/")[:1] == ["@"]                  # only the root lists '@'
    assert model.rename("/d", "/e") == EVERYTHING and names(model, "/") == ["@", "e"]
    with pytest.raises(CrossDevice):
        model.rename("/e", "/@/k/e")
    with pytest.raises(Busy):
        model.rmdir("/")
    new(model, "/e/f", b"")
    with pytest.raises(NotADirectory):
        model.listdir("/e/f")


def test_renameat2_flags_and_special_files(model: MountModel) -> None:
    model.mkdir("/d", 0o755, UID, GID)
    model.mkdir("/@/k", 0o755, UID, GID)
    a, b = new(model, "/d/a", b"a"), new(model, "/d/b", b"b")
    with pytest.raises(AlreadyExists):
        model.rename("/d/a", "/d/b", noreplace=True)      # RENAME_NOREPLACE
    assert model.exchange("/d/a", "/d/b") == EVERYTHING   # RENAME_EXCHANGE: both files keep their bytes
    assert (model.file("/d/a"), model.file("/d/b")) == (b, a) and read(model, "/d/a") == b"b"
    new(model, "/@/k/v", b"")
    with pytest.raises(InvalidArgument):
        model.exchange("/d/a", "/@/k/v")                  # a view has no places to swap
    assert model.mknod("/d/fifo", stat.S_IFIFO | 0o644, 0, UID, GID) == NOTHING
    assert model.mknod("/d/null", stat.S_IFCHR | 0o644, os.makedev(1, 3), UID, GID) == NOTHING
    assert stat.S_ISFIFO(model.attrs("/d/fifo").mode) and model.rdev(model.file("/d/null")) == os.makedev(1, 3)
    entries = {e[0]: e for e in model.listdir("/d")}
    assert entries["null"][3] is None and entries["fifo"][3] is not None   # devices: looked up for st_rdev
    # a special file renamed over another is never an editor save
    model.rename("/d/fifo", "/d/a")
    assert stat.S_ISFIFO(model.attrs("/d/a").mode)
