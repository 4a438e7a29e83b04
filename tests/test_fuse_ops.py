"""The FUSE adapter without a kernel: HKOperations methods called directly on a temporary store."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

mfusepy = pytest.importorskip("mfusepy")

from hkfs.core.errors import NotEmpty  # noqa: E402
from hkfs.core.fsck import check  # noqa: E402
from hkfs.core.store import Store  # noqa: E402
from hkfs.fuse.operations import HKOperations, to_fuse_error  # noqa: E402

FuseOSError = mfusepy.FuseOSError


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[HKOperations]:
    st = Store.open(tmp_path / "store")
    o = HKOperations(st)
    yield o
    o.destroy("/")
    st.close()


def err(fn, *args) -> int:
    with pytest.raises(FuseOSError) as ei:
        fn(*args)
    return ei.value.errno


def write_file(ops: HKOperations, path: str, data: bytes) -> None:
    fh = ops.create(path, 0o644, os.O_WRONLY)
    assert ops.write(path, data, 0, fh) == len(data)
    ops.flush(path, fh)
    ops.release(path, fh)


def read_file(ops: HKOperations, path: str) -> bytes:
    fh = ops.open(path, os.O_RDONLY)
    try:
        return ops.read(path, 1 << 20, 0, fh)
    finally:
        ops.release(path, fh)


def names(ops: HKOperations, path: str) -> list[str]:
    return [n for n, _a, _o in ops.readdir(path, 0) if n not in (".", "..")]


def test_error_mapping() -> None:
    assert to_fuse_error(NotEmpty("x")).errno == errno.ENOTEMPTY
    assert to_fuse_error(FileNotFoundError(errno.ENOENT, "x")).errno == errno.ENOENT
    assert to_fuse_error(RuntimeError("boom")).errno == errno.EIO


def test_unexpected_exception_is_eio_and_logged(ops: HKOperations, monkeypatch, caplog) -> None:
    def boom(*a):
        raise RuntimeError("boom")
    monkeypatch.setattr(ops.store, "dir", boom)
    with caplog.at_level(logging.ERROR, logger="hkfs.fuse.operations"):
        assert err(ops.getattr, "/") == errno.EIO
    assert "boom" in caplog.text and "getattr" in caplog.text


def test_files_in_dirs_and_views(ops: HKOperations) -> None:
    ops.mkdir("/d", 0o755)
    ops.mkdir("/@/k", 0o755)
    write_file(ops, "/d/a.txt", b"hello")
    write_file(ops, "/@/k/b.txt", b"tagged")
    assert read_file(ops, "/d/a.txt") == b"hello"
    assert names(ops, "/@/k") == ["b.txt"]
    assert names(ops, "/") == ["@", "d"]
    a = ops.getattr("/@/k/b.txt")
    assert stat.S_ISREG(a["st_mode"]) and a["st_size"] == 6
    assert ops.getattr("/@/k/b.txt")["st_ino"] == a["st_ino"]
    assert stat.S_ISDIR(ops.getattr("/@/k")["st_mode"])
    assert ops.getxattr("/@/k/b.txt", "user.hk.keywords") == b"//k"
    assert err(ops.getattr, "/d/nope") == errno.ENOENT
    assert err(ops.getattr, "/d/a.txt/x") == errno.ENOTDIR
    assert err(ops.getattr, "/@/nokw") == errno.ENOENT


def test_errnos(ops: HKOperations) -> None:
    ops.mkdir("/d", 0o755)
    ops.mkdir("/@/k", 0o755)
    write_file(ops, "/@/k/f", b"x")
    assert err(ops.mkdir, "/d", 0o755) == errno.EEXIST
    assert err(ops.mkdir, "/@/k", 0o755) == errno.EEXIST
    assert err(ops.mkdir, "/@/bad\x01", 0o755) == errno.EINVAL
    assert err(ops.mkdir, "/@/" + "a" * 256, 0o755) == errno.ENAMETOOLONG
    assert err(ops.create, "/d/" + "a" * 256, 0o644, os.O_WRONLY) == errno.ENAMETOOLONG
    assert err(ops.rmdir, "/@/k") == errno.ENOTEMPTY
    assert err(ops.rmdir, "/@") == errno.EBUSY
    assert err(ops.unlink, "/d") == errno.EISDIR
    assert err(ops.unlink, "/d/none") == errno.ENOENT
    assert err(ops.readlink, "/@/k/f") == errno.EINVAL
    assert err(ops.rename, "/@/k", "/d/k") == errno.EPERM       # a keyword into a directory (not EXDEV)
    assert err(ops.rename, "/@/k", "/@/k/sub") == errno.EINVAL   # under itself
    assert err(ops.rename, "/@", "/x") == errno.EPERM
    assert err(ops.chmod, "/@", 0o700) == errno.EPERM             # '@' has no mode of its own
    assert err(ops.setxattr, "/@/k/f", "trusted.x", b"1", 0) == errno.ENOTSUP
    assert err(ops.setxattr, "/@/k/f", "user.hk.keywords", b"//k/..", 0) == errno.EINVAL
    assert err(ops.setxattr, "/@/k/f", "user.hk.keywords", b"//nokw", 0) == errno.ENOENT
    assert err(ops.getxattr, "/@/k/f", "user.none") == errno.ENODATA
    assert err(ops.getxattr, "/@/k/f", "security.selinux") == errno.ENOTSUP   # no catalog read
    assert err(ops.removexattr, "/@/k/f", "user.none") == errno.ENODATA
    ops.setxattr("/@/k/f", "user.a", b"1", 0)
    assert err(ops.setxattr, "/@/k/f", "user.a", b"2", 1) == errno.EEXIST        # XATTR_CREATE
    assert err(ops.setxattr, "/@/k/f", "user.b", b"2", 2) == errno.ENODATA       # XATTR_REPLACE
    assert err(ops.create, "/@/newkw", 0o644, os.O_WRONLY) == errno.ENOENT
    # NUL cannot come through a kernel path, but can through the adapter and xattr values
    assert err(ops.mkdir, "/@/a\x00b", 0o755) == errno.EINVAL
    assert err(ops.create, "/d/a\x00b", 0o644, os.O_WRONLY) == errno.EINVAL
    assert err(ops.setxattr, "/@/k/f", "user.hk.keywords", b"//k\x00x", 0) == errno.EINVAL
    assert err(ops.setxattr, "/d", "user.hk.dkl", b"//..", 0) == errno.EINVAL
    assert err(ops.mkdir, "/d/@", 0o755) == errno.EEXIST
    assert err(ops.read, "/x", 10, 0, 999) == errno.EBADF


def test_symlinks(ops: HKOperations) -> None:
    ops.mkdir("/d", 0o755)
    ops.symlink("/d/l", "../target")
    assert ops.readlink("/d/l") == "../target"
    assert stat.S_ISLNK(ops.getattr("/d/l")["st_mode"])
    assert err(ops.symlink, "/d/l", "x") == errno.EEXIST
    eid = ops.store.lookup(ops.model.resolve("/d").dirid, "l").id
    assert ops.store.entity(eid).mode == stat.S_IFLNK | 0o777      # the type lives in the store
    assert ops.store.list_xattrs("file", eid) == []
    ops.release("/d/f", ops.create("/d/f", stat.S_IFREG | 0o640, os.O_WRONLY))
    assert ops.getattr("/d/f")["st_mode"] == stat.S_IFREG | 0o640
    assert err(ops.readlink, "/d/f") == errno.EINVAL
    types = {n: a["st_mode"] for n, a, _ in ops.readdir("/d", 0)}
    assert types["l"] == stat.S_IFLNK and types["f"] == stat.S_IFREG     # d_type: find -type l
    ops.mkdir("/@/k", 0o755)
    ops.symlink("/@/k/lv", "x")
    assert {n: a["st_mode"] for n, a, _ in ops.readdir("/@/k", 0)}["lv"] == stat.S_IFLNK


def test_rm_in_view_detaches_and_keeps_bytes(ops: HKOperations) -> None:
    ops.mkdir("/@/a", 0o755)
    ops.mkdir("/@/b", 0o755)
    write_file(ops, "/@/a/@/b/f", b"keep")
    ops.unlink("/@/a/f")
    assert ops.getxattr("/@/b/f", "user.hk.keywords") == b"//b"
    ops.unlink("/@/b/f")
    assert read_file(ops, "/lost+found/f") == b"keep"


def test_rename_over_keeps_the_original_entity(ops: HKOperations) -> None:
    ops.mkdir("/@/doc", 0o755)
    write_file(ops, "/@/doc/m.txt", b"old")
    ino = ops.getattr("/@/doc/m.txt")["st_ino"]
    ops.setxattr("/@/doc/m.txt", "user.note", b"n", 0)
    write_file(ops, "/@/doc/.m.txt.swp", b"new")
    ops.rename("/@/doc/.m.txt.swp", "/@/doc/m.txt")
    assert read_file(ops, "/@/doc/m.txt") == b"new"
    assert ops.getattr("/@/doc/m.txt")["st_ino"] == ino
    assert ops.getxattr("/@/doc/m.txt", "user.note") == b"n"
    assert names(ops, "/@/doc") == ["m.txt"]
    assert check(ops.store) == []


def test_save_over_a_file_whose_release_is_queued_keeps_it(ops: HKOperations) -> None:
    """`sed -i d/m.txt` closes its read descriptor of the document, then renames its temp over
    it. The kernel sends that RELEASE asynchronously; when libfuse serves the RENAME first, it
    still counts the document open and hides it (a rename to `.fuse_hidden*`) before the
    rename itself, in the same request. The hide must leave the document where it is, so
    that the rename is an editor save; done as a removal it made a plain rename (the temp
    took d/m.txt, the document kept its old bytes): the flake of
    test_editor_saves_keep_identity. Here libfuse's calls in that order, the RELEASE last."""
    ops.mkdir("/@/doc", 0o755)
    ops.mkdir("/@/doc/memo", 0o755)
    ops.mkdir("/d", 0o755)
    write_file(ops, "/@/doc/memo/m.txt", b"one\n")
    ops.link("/d/m.txt", "/@/doc/memo/m.txt")
    ops.setxattr("/d/m.txt", "user.note", b"keep", 0)
    ino = ops.getattr("/d/m.txt")["st_ino"]
    write_file(ops, "/@/doc/memo/sedV1eW0", b"ONE\n")   # the test's first save, through the view
    ops.rename("/@/doc/memo/sedV1eW0", "/@/doc/memo/m.txt")
    assert ops.getattr("/d/m.txt")["st_ino"] == ino
    reader = ops.open("/d/m.txt", os.O_RDONLY)        # sed's input: closed, RELEASE not yet served
    write_file(ops, "/d/sedAbC123", b"1\n")
    hidden = "/d/.fuse_hidden0000000500000001"
    with ops.removed.renaming(b"m.txt"):              # the RENAME request, as install's wrapper marks it
        ops.rename("/d/m.txt", hidden)                 # libfuse's hide of the open destination
        ops.rename("/d/sedAbC123", "/d/m.txt")         # the rename sed asked for
    assert ops.getattr("/d/m.txt")["st_ino"] == ino == ops.getattr("/@/doc/memo/m.txt")["st_ino"]
    assert read_file(ops, "/@/doc/m.txt") == b"1\n"
    assert ops.getxattr("/d/m.txt", "user.hk.keywords") == b"//doc/memo"
    assert ops.getxattr("/d/m.txt", "user.note") == b"keep"
    assert names(ops, "/d") == ["m.txt"] and names(ops, "/@/doc") == ["memo", "m.txt"]
    st = ops.getattr(hidden)                           # fstat of the reader: its old bytes
    assert (st["st_nlink"], st["st_size"]) == (0, 4)
    assert os.pread(ops.files[reader].fd, 10, 0) == b"ONE\n"
    ops.release(hidden, reader)
    ops.unlink(hidden)                                 # libfuse's unlink of the hidden name, last close
    assert names(ops, "/d") == ["m.txt"] and read_file(ops, "/d/m.txt") == b"1\n"
    assert check(ops.store) == []


def test_descriptors_open_across_an_editor_save_keep_the_old_bytes(ops: HKOperations) -> None:
    """A descriptor open on a document when an editor save replaces its bytes keeps the old ones
    (as after rename(2) on ext4): what it writes then stays there, and its size is not recorded
    as the document's (that made `ls -l` report the old file's size for the new bytes)."""
    ops.mkdir("/d", 0o755)
    write_file(ops, "/d/log", b"old")
    writer = ops.open("/d/log", os.O_WRONLY)
    write_file(ops, "/d/log.tmp", b"saved")
    ops.rename("/d/log.tmp", "/d/log")                  # an editor save
    ops.write("/d/log", b"x" * 100, 3, writer)
    ops.flush("/d/log", writer)
    assert ops.getattr("/d/log")["st_size"] == 5
    ops.release("/d/log", writer)
    assert ops.getattr("/d/log")["st_size"] == 5 and read_file(ops, "/d/log") == b"saved"
    assert check(ops.store) == []


def test_hides_outside_a_rename_over_the_file(ops: HKOperations) -> None:
    """An rm of an open file: libfuse's hide is the removal itself. A user's own rename to a
    name like libfuse's (the RENAME request's new name) is a plain rename, open or not."""
    ops.mkdir("/d", 0o755)
    write_file(ops, "/d/gone", b"x")
    fh = ops.open("/d/gone", os.O_RDONLY)
    ops.rename("/d/gone", "/d/.fuse_hidden0000000100000001")   # an UNLINK request's hide
    assert names(ops, "/d") == []
    assert ops.getattr("/d/.fuse_hidden0000000100000001")["st_nlink"] == 0
    ops.release("/d/.fuse_hidden0000000100000001", fh)
    ops.unlink("/d/.fuse_hidden0000000100000001")
    write_file(ops, "/d/kept", b"y")
    fh = ops.open("/d/kept", os.O_RDONLY)
    with ops.removed.renaming(b".fuse_hiddenMine"):
        ops.rename("/d/kept", "/d/.fuse_hiddenMine")
    ops.release("/d/.fuse_hiddenMine", fh)
    assert names(ops, "/d") == [".fuse_hiddenMine"]
    assert read_file(ops, "/d/.fuse_hiddenMine") == b"y"
    assert check(ops.store) == []


def _readers_hold_snapshots(store: Store) -> bool:
    """Whether any connection still reads an old snapshot (an unfinished statement, an open
    transaction): a TRUNCATE checkpoint from a fresh connection then cannot empty the WAL."""
    with Store.open(store.root) as other:          # a commit elsewhere, so the WAL moves on
        other.mkdir(other.root_dir(other.namespace_id("probe")), os.urandom(6).hex())
    probe = sqlite3.connect(store.catalog.path, timeout=0)
    try:
        busy, _log, _done = probe.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        probe.close()
    return bool(busy)


def test_lent_connections_keep_no_snapshot_between_requests(ops: HKOperations) -> None:
    """Suspect (a) of the editor-save flake, ruled out: a connection lent to a request
    (Catalog.lend) that kept an unfinished statement would lend the next request an old
    snapshot. The probe sees a statement held open; after a listing broken off mid-way (as
    READDIRPLUS does when the reply is full), requests that fail, an editor save and the
    RELEASE of its temp, no connection of the daemon reads an old snapshot any more."""
    ops.mkdir("/@/doc", 0o755)
    ns = ops.model.ns
    ops.store.bulk_create(ns, [(f"f{i}", [("doc",)]) for i in range(3000)])
    held = ops.store.catalog.connection().execute("SELECT id FROM entities")
    held.fetchone()                                       # a statement left unfinished
    assert _readers_hold_snapshots(ops.store)
    del held
    assert not _readers_hold_snapshots(ops.store)
    fh = ops.opendir("/@/doc")

    def requests() -> None:                               # on a libfuse-like thread: lent connections
        with ops.lent():
            for _piece, _start in ops.listing_from("/@/doc", fh, 0):
                break                                     # the reply is full
        assert err(ops.getattr, "/@/doc/nothing") == errno.ENOENT
        assert err(ops.getxattr, "/@/doc/f1", "user.none") == errno.ENODATA
        write_file(ops, "/@/doc/m.txt", b"old")
        tmp = ops.create("/@/doc/.m.txt.tmp", 0o644, os.O_WRONLY)
        ops.write("/@/doc/.m.txt.tmp", b"new", 0, tmp)
        ops.flush("/@/doc/.m.txt.tmp", tmp)
        ops.rename("/@/doc/.m.txt.tmp", "/@/doc/m.txt")  # an editor save, its temp still open
        ops.release("/@/doc/.m.txt.tmp", tmp)             # the temp's late RELEASE

    t = threading.Thread(target=requests)
    t.start()
    t.join()
    ops.releasedir("/@/doc", fh)
    assert read_file(ops, "/@/doc/m.txt") == b"new"
    assert ops.store.catalog.connections() >= 2           # the thread's requests were lent one
    assert not _readers_hold_snapshots(ops.store)


def test_truncate_utimens_chmod(ops: HKOperations) -> None:
    ops.mkdir("/d", 0o755)
    write_file(ops, "/d/f", b"0123456789")
    ops.truncate("/d/f", 4)
    assert read_file(ops, "/d/f") == b"0123"
    ops.utimens("/d/f", (1_000_000_000_000_000_000, 1_000_000_001_000_000_000))
    assert ops.getattr("/d/f")["st_mtime"] == 1_000_000_001_000_000_000
    ops.chmod("/d/f", 0o600)
    assert ops.getattr("/d/f")["st_mode"] & 0o7777 == 0o600
    assert ops.store.entity(ops.model.resolve("/d/f").eid).size == 4  # type: ignore[union-attr]
    assert ops.statfs("/")["f_namemax"] == 255
