"""The kernel keeps entries for a bounded number of listed files (hkfs.fuse.node_budget).

On a mount with the bound set low (HKFS_NODE_BUDGET), listing a view bigger than it
leaves libfuse holding about the bound in nodes (read from its own table, via the
daemon's memory report on SIGUSR2: hkfs.fuse.memstats), and every file still lists,
stats and reads right after its entry was dropped. Without FUSE: the bookkeeping
(oldest pieces dropped first, a listing read again refreshes its pieces, new entries
stop being kept while the drops lag).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import Mount, MountFactory

from hkfs.fuse.memstats import MEMSTATS_NAME
from hkfs.fuse.node_budget import NodeBudget, budget_from_env

FILES = 3000
LIMIT = 400


def _fill(store: Path) -> None:
    from hkfs.core.store import Store
    with Store.open(store, create=True) as st:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, ("big",))
        ids = st.bulk_create(ns, [(f"f{i:05d}", [("big",)]) for i in range(FILES)])
        with st.catalog.write():
            for i, eid in enumerate(ids):
                if i % 7:
                    st.entity_path(eid).write_bytes(b"x" * (i % 7))
                    st.record_bytes(eid)


def _memstats(m: Mount) -> dict[str, Any]:
    """The daemon's memory report (written on SIGUSR2)."""
    path = m.store / MEMSTATS_NAME
    before = path.stat().st_mtime_ns if path.exists() else 0
    assert m.proc is not None
    os.kill(m.proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime_ns != before:
            return json.loads(path.read_text())
        time.sleep(0.02)
    pytest.fail(f"no memory report from the daemon:\n{m.log_tail()}")


def _ls_ln(path: Path, bufsize: int) -> dict[str, int]:
    """name -> size of a directory's files as `ls -ln` reads them (each getdents64(2) call's
    names lstat'ed before the next call), with calls of `bufsize` bytes (readdir(3) sizes its
    buffer by the directory's st_blksize: hkfs.mount.model.DIR_BLKSIZE)."""
    nr = {"x86_64": 217, "aarch64": 61}.get(platform.machine())      # SYS_getdents64
    if nr is None:
        pytest.skip(f"getdents64's number on {platform.machine()} not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(bufsize)
    sizes: dict[str, int] = {}
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while (n := libc.syscall(nr, fd, buf, bufsize)) > 0:
            raw, at = buf.raw[:n], 0
            while at < n:                   # struct linux_dirent64: ino, off, reclen, type, name
                reclen = int.from_bytes(raw[at + 16:at + 18], "little")
                name = raw[at + 19:at + reclen].split(b"\0", 1)[0].decode()
                if name not in (".", ".."):
                    sizes[name] = os.lstat(path / name).st_size
                at += reclen
        assert n == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    return sizes


def _settled_nodes(m: Mount, most: int) -> dict[str, Any]:
    """The report once libfuse holds at most `most` nodes (the kernel's FORGETs come in
    asynchronously), or the last one after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        got = _memstats(m)
        if got["libfuse_nodes"] is None or got["libfuse_nodes"] <= most or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.mount
def test_listed_entries_are_bounded_and_still_resolve(mount_factory: MountFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HKFS_NODE_BUDGET", str(LIMIT))       # the daemon inherits it
    m = mount_factory(fill=_fill)
    m.run("ls @ >/dev/null")
    if "bounded to" not in m.log.read_text():
        pytest.skip("no bound on this machine (kernel caches off, or libfuse's layout not recognised)")
    assert f"bounded to {LIMIT} " in m.log.read_text()
    want = {f"f{i:05d}": i % 7 for i in range(FILES)}

    def listing() -> dict[str, int]:
        # `ls -ln` in 32 KiB getdents calls, ~200 entries a READDIRPLUS: ls itself asks 1 MiB
        # at a time (a view's st_blksize), the whole view in one request, which the bound
        # keeps whole (it drops the entries of earlier requests, not the one ls stats next)
        return _ls_ln(m.root / "@/big", 32768)

    assert listing() == want
    got = _settled_nodes(m, 2 * LIMIT)
    # the oldest were dropped; while the drops lagged, names went out without entries
    assert got["budget"]["dropped"] > 0 and got["budget"]["held"] <= LIMIT, got
    assert got["libfuse_nodes"] is not None, "libfuse's node table not recognised"
    assert got["libfuse_nodes"] <= 2 * LIMIT, got               # FILES + 3 without the bound

    # the dropped entries come back on use: stat, read, list (the first files went first)
    for name in ("f00000", "f00001", "f00006", f"f{FILES - 1:05d}"):
        p = m.root / "@/big" / name
        assert p.stat().st_size == want[name]
        assert p.read_bytes() == b"x" * want[name]
    assert listing() == want


@pytest.mark.mount
def test_no_bound_keeps_every_listed_entry(mount_factory: MountFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer of the test above: HKFS_NODE_BUDGET=0 leaves libfuse a node per listed file."""
    monkeypatch.setenv("HKFS_NODE_BUDGET", "0")
    m = mount_factory(fill=_fill)
    m.run("ls -l @/big >/dev/null")
    got = _memstats(m)
    if got["libfuse_nodes"] is None:
        pytest.skip("libfuse's node table not recognised here")
    assert "bounded to" not in m.log.read_text()
    assert got["libfuse_nodes"] >= FILES


# ---------------------------------------------------------------- the bookkeeping, without FUSE

class _Kernel:
    """Records the drops a NodeBudget sends; `gate` holds the worker back while cleared."""

    def __init__(self) -> None:
        import threading
        self.dropped: list[tuple[int, bytes]] = []
        self.gate = threading.Event()
        self.gate.set()

    def inval(self, session: int, parent: int, name: bytes, size: int) -> int:
        assert session == 7 and size == len(name)
        self.gate.wait(10)
        self.dropped.append((parent, name))
        return 0


def _budget(limit: int) -> tuple[NodeBudget, _Kernel, Any]:
    b, k, config = NodeBudget(limit), _Kernel(), SimpleNamespace(entry_timeout=60.0)
    b.start(k.inval, 7, config)
    return b, k, config


def test_oldest_pieces_are_dropped_first() -> None:
    b, k, _ = _budget(5)
    try:
        for off, names in ((0, ["a", "b", "c"]), (3, ["d", "e"]), (5, ["f", "g"])):
            b.listing(2, off)
            b.listed(names)
        assert b.idle()
        assert k.dropped == [(2, b"a"), (2, b"b"), (2, b"c")]     # the first piece, whole
        assert (b.held, b.dropped) == (4, 3)
    finally:
        b.stop()


def test_a_listing_read_again_refreshes_its_pieces() -> None:
    b, k, _ = _budget(4)
    try:
        for _ in range(3):            # the same view listed three times: the same pieces
            b.listing(2, 0)
            b.listed(["a", "b"])
            b.listing(2, 2)
            b.listed(["c", "d"])
        assert b.idle() and k.dropped == [] and b.held == 4
        b.listing(9, 0)               # another directory: the view's oldest piece goes
        b.listed(["x"])
        assert b.idle() and k.dropped == [(2, b"a"), (2, b"b")]
    finally:
        b.stop()


def test_new_entries_are_not_kept_while_the_drops_lag() -> None:
    b, k, config = _budget(4)
    try:
        k.gate.clear()                # the drops make no progress
        for off in range(0, 24, 2):
            b.listing(3, off)
            b.listed([f"n{off}", f"n{off + 1}"])
        assert not b.keeping() and config.entry_timeout == 0 and b.pauses == 1
        k.gate.set()
        assert b.idle()
        assert b.keeping() and config.entry_timeout == 60.0
    finally:
        b.stop()
    assert config.entry_timeout == 60.0


def test_names_outside_a_readdirplus_are_ignored() -> None:
    b, k, _ = _budget(1)
    try:
        b.listed(["a", "b", "c"])     # no READDIRPLUS in this thread
        assert b.held == 0 and k.dropped == []
    finally:
        b.stop()


def test_budget_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HKFS_NODE_BUDGET", raising=False)
    assert budget_from_env(123) == 123
    monkeypatch.setenv("HKFS_NODE_BUDGET", "0")
    assert budget_from_env(123) == 0
    monkeypatch.setenv("HKFS_NODE_BUDGET", "many")
    assert budget_from_env(123) == 123

