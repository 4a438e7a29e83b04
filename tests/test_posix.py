"""POSIX promises of ordinary directories (issue 11), checked through a real mount."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from pathlib import Path

import pytest
from conftest import Mount, daemon_loads_libfuse3

pytestmark = pytest.mark.mount

# libfuse 2 passes no renameat2 flags: the kernel then refuses them all (EINVAL), never overwriting
needs_fuse3 = pytest.mark.skipif(not daemon_loads_libfuse3(), reason="renameat2 flags need libfuse 3")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    """renameat2(2) through libc (Python's os has no flags argument)."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


@needs_fuse3
def test_rename_exchange_in_directories(mount: Mount) -> None:
    """renameat2(RENAME_EXCHANGE) swaps two entries of ordinary directories (files, directories,
    a file with a directory, across directories), as on ext4. Done as a plain rename (what
    mfusepy's glue did) it lost the destination's bytes for good."""
    root = mount.root
    (root / "d").mkdir()
    (root / "e").mkdir()
    (root / "d" / "a").write_text("A")
    (root / "e" / "b").write_text("B")
    ino_a = (root / "d" / "a").stat().st_ino
    renameat2(root / "d" / "a", root / "e" / "b", RENAME_EXCHANGE)
    assert (root / "d" / "a").read_text() == "B" and (root / "e" / "b").read_text() == "A"
    assert (root / "e" / "b").stat().st_ino == ino_a
    (root / "d" / "sub").mkdir()
    (root / "d" / "sub" / "inner").write_text("I")
    renameat2(root / "d" / "sub", root / "e" / "b", RENAME_EXCHANGE)       # a directory with a file
    assert (root / "e" / "b" / "inner").read_text() == "I" and (root / "d" / "sub").read_text() == "A"
    renameat2(root / "d", root / "e", RENAME_EXCHANGE)                      # two directories
    assert (root / "d" / "b" / "inner").read_text() == "I" and (root / "e" / "sub").read_text() == "A"
    assert (root / "d").stat().st_nlink == 3 and (root / "e").stat().st_nlink == 2
    with pytest.raises(OSError) as exc:
        renameat2(root / "d", root / "d" / "b", RENAME_EXCHANGE)           # into itself
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        renameat2(root / "e" / "sub", root / "e" / "none", RENAME_EXCHANGE)
    assert os.listdir(root / "d") == ["b"] and sorted(os.listdir(root / "e")) == ["a", "sub"]


def test_rename_exchange_in_views_is_refused_and_never_overwrites(mount: Mount) -> None:
    """In a view a file's place is its keywords: an exchange is EINVAL, both files keep their bytes."""
    (mount.root / "@" / "kw").mkdir()
    (mount.root / "d").mkdir()
    a, b, c = mount.root / "@" / "kw" / "a.txt", mount.root / "@" / "kw" / "b.txt", mount.root / "d" / "c"
    a.write_text("A")
    b.write_text("B")
    c.write_text("C")
    for x, y in ((a, b), (a, c), (c, a)):
        with pytest.raises(OSError) as exc:
            renameat2(x, y, RENAME_EXCHANGE)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        renameat2(c, mount.root / "d" / "x", 1 << 5)             # a flag nobody knows
    assert exc.value.errno == errno.EINVAL
    assert (a.read_text(), b.read_text(), c.read_text()) == ("A", "B", "C")


@needs_fuse3
def test_rename_noreplace(mount: Mount) -> None:
    root = mount.root
    (root / "d").mkdir()
    (root / "a").write_text("A")
    (root / "b").write_text("B")
    with pytest.raises(FileExistsError):
        renameat2(root / "a", root / "b", RENAME_NOREPLACE)
    with pytest.raises(FileExistsError):
        renameat2(root / "a", root / "d", RENAME_NOREPLACE)
    assert (root / "a").read_text() == "A" and (root / "b").read_text() == "B"
    fd = os.open(root / "b", os.O_RDONLY)     # open: libfuse would hide it before a plain rename
    try:
        with pytest.raises(FileExistsError):
            renameat2(root / "a", root / "b", RENAME_NOREPLACE)
    finally:
        os.close(fd)
    assert (root / "a").read_text() == "A" and (root / "b").read_text() == "B"
    renameat2(root / "a", root / "c", RENAME_NOREPLACE)
    assert (root / "c").read_text() == "A" and not (root / "a").exists()


def test_fifo_socket_and_device_nodes(mount: Mount) -> None:
    """mkfifo, mknod and bind(2) make special files that work as on ext4 (ENOSYS before)."""
    mount.run("""
        mkdir d; cd d
        mkfifo fifo; test -p fifo; test "$(stat -c %a fifo)" = 644
        (echo through the pipe > fifo &) ; test "$(cat fifo)" = "through the pipe"
        mknod chr c 1 3; test -c chr; test "$(stat -c %t:%T chr)" = 1:3
        mknod blk b 7 0; test -b blk; test "$(stat -c %t:%T blk)" = 7:0
        "$PY" - <<'PY'
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("sock")
s.listen(1)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect("sock")
conn, _ = s.accept()
c.sendall(b"hello")
assert conn.recv(5) == b"hello"
PY
        test -S sock
        ls -l > /dev/null
        test "$(find . -type p)" = ./fifo; test "$(find . -type s)" = ./sock
        test "$(find . -type c)" = ./chr; test "$(find . -type b)" = ./blk
        fails_with "File exists" mkfifo fifo
        mv fifo fifo2; test -p fifo2
        ln chr chr2; test "$(stat -c %h:%t:%T chr2)" = 2:1:3
        rm fifo2 chr chr2 blk sock; test -z "$(ls)"
    """, env={"PY": __import__("sys").executable})


def test_fstat_of_an_open_then_unlinked_file(mount: Mount) -> None:
    """fstat, read and write of a file removed while open go on as on ext4 (nlink 0)."""
    for where in (mount.root, mount.root / "@" / "kw"):
        where.mkdir(exist_ok=True)
        p = where / "gone.txt"
        p.write_bytes(b"still here")
        fd = os.open(p, os.O_RDWR)
        try:
            os.unlink(p)
            st = os.fstat(fd)
            assert st.st_size == 10 and (st.st_nlink == 0 or where != mount.root)
            assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.getuid()   # the file's, not the bytes file's
            os.pwrite(fd, b"!", 10)
            assert os.fstat(fd).st_size == 11
            assert os.pread(fd, 11, 0) == b"still here!"
            os.fchmod(fd, 0o600)
            assert os.fstat(fd).st_mode & 0o777 == 0o600
        finally:
            os.close(fd)
        assert not p.exists()


def test_fallocate(mount: Mount) -> None:
    """Mode 0 and FALLOC_FL_KEEP_SIZE as on ext4; other modes EOPNOTSUPP, never done as something else."""
    p = mount.root / "f"
    p.write_bytes(b"abc")
    fd = os.open(p, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 10000)
        assert os.fstat(fd).st_size == 10000 and os.pread(fd, 3, 0) == b"abc"
        keep = 0x01                                           # FALLOC_FL_KEEP_SIZE
        if _libc.fallocate(fd, keep, ctypes.c_long(0), ctypes.c_long(50000)) != 0:
            raise OSError(ctypes.get_errno(), "fallocate KEEP_SIZE")
        assert os.fstat(fd).st_size == 10000
        punch = 0x02 | keep                                   # FALLOC_FL_PUNCH_HOLE
        assert _libc.fallocate(fd, punch, ctypes.c_long(0), ctypes.c_long(2)) != 0
        assert ctypes.get_errno() == errno.EOPNOTSUPP
        assert os.pread(fd, 3, 0) == b"abc"
    finally:
        os.close(fd)
    assert p.stat().st_size == 10000


def test_fsync_and_fsyncdir(mount: Mount) -> None:
    """fsync of a file and of a directory succeed (fsyncdir was ENOSYS, so a name just made
    could not be made durable)."""
    (mount.root / "d").mkdir()
    p = mount.root / "d" / "f"
    p.write_bytes(b"x")
    fd = os.open(p, os.O_RDWR)
    try:
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mount.root / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def test_fsync_makes_the_catalog_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync and fsyncdir reach the catalog: its -wal file (commits with synchronous=NORMAL
    are not synced) and the entities/ directory are fsynced. Without a kernel: what a power
    loss would drop cannot be watched through a mount."""
    from hkfs.core.store import Store
    from hkfs.fuse.operations import HKOperations

    st = Store.open(tmp_path / "store")
    ops = HKOperations(st)
    try:
        fh = ops.create("/f", 0o644, os.O_WRONLY)
        ops.write("/f", b"x", 0, fh)
        synced: list[str] = []
        real = os.fsync

        def spy(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)
        monkeypatch.setattr(os, "fsync", spy)
        ops.fsync("/f", 0, fh)
        assert str(st.catalog.path) + "-wal" in synced and str(st.entities_dir) in synced   # a new file
        synced.clear()
        ops.fsyncdir("/", 0, 0)
        assert str(st.catalog.path) + "-wal" in synced
        ops.release("/f", fh)
    finally:
        ops.destroy("/")
        st.close()


def test_removed_while_open_leaves_no_hidden_name(mount: Mount) -> None:
    """libfuse hides a file removed while open as .fuse_hidden*: no such name is ever listed,
    in a directory or in a view, and a rename over an open file (here an editor save: `new`
    was just made) leaves the reader with the old bytes and their size."""
    for where in (mount.root / "d", mount.root / "@" / "kw"):
        where.mkdir()
        (where / "old").write_bytes(b"old bytes")
        fd = os.open(where / "old", os.O_RDONLY)
        try:
            (where / "new").write_bytes(b"new")
            os.rename(where / "new", where / "old")
            assert (where / "old").read_bytes() == b"new"
            assert os.pread(fd, 100, 0) == b"old bytes" and os.fstat(fd).st_size == 9
            assert sorted(os.listdir(where)) == ["old"]
            os.unlink(where / "old")
            assert os.listdir(where) == []
        finally:
            os.close(fd)
        assert os.listdir(where) == []
    assert not [p for p in mount.root.rglob("*") if ".fuse_hidden" in p.name]
