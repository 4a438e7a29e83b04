"""hkfs.fuse.glue's READDIRPLUS fill without FUSE: a listing piece handed to a filler that
stands in for libfuse's (a ctypes callback recording what it is given), by the C loop
(hkfs/fuse/_fill.c) and by the Python loop, entry for entry the same, stopping where the
filler says the reply is full."""

from __future__ import annotations

import contextlib
import ctypes
from types import SimpleNamespace
from typing import Any

import mfusepy
import numpy as np
import pytest

from hkfs.fuse import glue
from hkfs.mount.view_listing import NATTRS, Piece

# libfuse 3's fuse_fill_dir_t, the stat by address (whichever libfuse mfusepy loaded here)
FILLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64,
                          ctypes.c_int)


def piece() -> Piece:
    names = ["a", "é-ü", "x" * 255, "near.query", "b c"]
    attrs = np.array([[(i << 2) | 1, 1, 0o100644, 1000, 1000, i * 7, 131072, 1, -5, 10**18 + i, 3]
                      for i in range(len(names))], np.int64)
    plus = np.array([True, True, True, False, True])
    attrs[3, 1], attrs[3, 3:] = 0, 0
    return Piece(names, attrs, attrs[:, 0] + 1, plus)


def run(for_c: bool, start: int, room: int,
        names_only: bool = False) -> tuple[list[tuple[bytes, bytes, int, int]], int]:
    """What the filler was given, and fill_piece's answer, for a reply with room for `room` entries
    (`names_only`: the piece as sent while the node budget keeps no entries)."""
    got: list[tuple[bytes, bytes, int, int]] = []
    size = ctypes.sizeof(mfusepy.c_stat)

    def filler(buf: int, name: bytes, st: int, off: int, flags: int) -> int:
        assert buf == 1234
        if len(got) == room:
            return 1
        got.append((name, ctypes.string_at(st, size), off, flags))
        return 0

    cb = FILLER(filler)
    w = glue.wire(piece(), "utf-8", "surrogateescape", for_c=for_c)
    return got, glue.fill_piece(cb, 1234, glue.names_only(w) if names_only else w, size, start)


@pytest.mark.skipif(glue._cfill is None, reason="hkfs.fuse._fill not built (no C compiler)")
@pytest.mark.parametrize("start, room", [(0, 99), (0, 2), (2, 99), (4, 0), (5, 99)])
def test_c_loop_fills_what_the_python_loop_fills(start: int, room: int) -> None:
    assert run(True, start, room) == run(False, start, room)


def test_fill_gives_names_stats_offsets_and_flags() -> None:
    got, end = run(glue._cfill is not None, 1, 99)
    p = piece()
    assert end == len(p)
    assert [g[0] for g in got] == [n.encode() for n in p.names[1:]]
    assert [g[2] for g in got] == p.offsets[1:].tolist()
    assert [g[3] for g in got] == [glue.FUSE_FILL_DIR_PLUS, glue.FUSE_FILL_DIR_PLUS, 0, glue.FUSE_FILL_DIR_PLUS]
    st = mfusepy.c_stat.from_buffer_copy(got[0][1])
    assert (st.st_ino, st.st_size, st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec) == (5, 7, 10**9, 1)
    assert (st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec) == (-1, 10**9 - 5)    # floor, as set_st_attrs
    full, end = run(glue._cfill is not None, 0, 2)                                   # the reply is full
    assert end == 2 and len(full) == 2
    assert NATTRS == len(glue.STAT_KEYS)


@pytest.mark.parametrize("for_c", [False, True] if glue._cfill is not None else [False])
def test_names_only_sends_no_attributes(for_c: bool) -> None:
    """While the node budget's drops lag (hkfs.fuse.node_budget), entries go without
    FUSE_FILL_DIR_PLUS, so libfuse registers no node; the names and offsets are the same."""
    plain, end = run(for_c, 0, 99)
    bare, bare_end = run(for_c, 0, 99, names_only=True)
    assert bare_end == end == len(piece())
    assert [g[3] for g in bare] == [0] * len(plain)
    assert [(g[0], g[2]) for g in bare] == [(g[0], g[2]) for g in plain]


def test_listed_files_are_the_files_sent_with_attributes() -> None:
    """What the node budget counts: files with attributes, not directories nor looked-up entries."""
    p = piece()
    p.attrs[4, 2] = 0o040755                        # 'b c' a directory
    assert glue.listed_files(p, 0, len(p)) == ["a", "é-ü", "x" * 255]
    assert glue.listed_files(p, 1, 2) == ["é-ü"]
    assert glue.listed_files(p, 3, 5) == []
    assert glue.listed_files(p, 0, 2) == ["a", "é-ü"]      # all files: the names as they are
    assert glue.listed_files(p, 2, 2) == []


class _Kernel:
    """What HKFuse.readdir_fuse_3 asks of hkfs.fuse.kernel_cache.KernelCache and its NodeBudget."""

    def __init__(self, keeping: bool) -> None:
        self.budget = self
        self.active, self._keeping = False, keeping

    def keeping(self) -> bool:
        return self._keeping

    def handing(self) -> Any:
        return contextlib.nullcontext()

    def note_listing(self) -> None:
        pass

    def listed(self, names: list[str], encoding: str, errors: str) -> None:
        pass


@pytest.mark.parametrize("keeping", [True, False])
def test_names_only_replies_hold_one_piece(keeping: bool) -> None:
    """While the node budget keeps no entries, a READDIRPLUS reply ends after one piece (each
    of its names is then a LOOKUP): the next request asks the budget again. Otherwise a
    reply takes pieces until it is full."""
    pieces = [piece(), piece(), piece()]
    got: list[bytes] = []

    def filler(buf: int, name: bytes, st: int, off: int, flags: int) -> int:
        got.append(name)
        return 0

    ops = SimpleNamespace(kernel=_Kernel(keeping), listing_from=lambda path, fh, off: ((p, 0) for p in pieces),
                          lent=contextlib.nullcontext)
    me = SimpleNamespace(operations=ops, encoding="utf-8", errors="surrogateescape")
    fip = SimpleNamespace(contents=SimpleNamespace(fh=1))
    assert glue.HKFuse.readdir_fuse_3(me, b"/v", 0, FILLER(filler), 0, fip, glue.FUSE_READDIR_PLUS) == 0
    assert len(got) == (3 if keeping else 1) * len(pieces[0])
