"""POSIX promises of ordinary directories (issue 11), checked through a real mount."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

import pytest
from conftest import Mount

pytestmark = pytest.mark.mount

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    """renameat2(2) through libc (Python's os has no flags argument)."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


def test_rename_exchange_never_overwrites(mount: Mount) -> None:
    """An exchange is refused (EINVAL) and both files keep their bytes; done as a plain
    rename it would lose the destination's bytes for good."""
    for where in (mount.root, mount.root / "@" / "kw"):
        where.mkdir(exist_ok=True)
        a, b = where / "a.txt", where / "b.txt"
        a.write_text("A")
        b.write_text("B")
        with pytest.raises(OSError) as exc:
            renameat2(a, b, RENAME_EXCHANGE)
        assert exc.value.errno == errno.EINVAL
        assert a.read_text() == "A" and b.read_text() == "B"
        with pytest.raises(OSError) as exc:
            renameat2(a, b, 1 << 5)             # a flag nobody knows
        assert exc.value.errno == errno.EINVAL
        assert a.read_text() == "A" and b.read_text() == "B"


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
