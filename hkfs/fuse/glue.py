"""What the FUSE adapter needs of libfuse beyond mfusepy's high-level glue.

- Zero-copy I/O: `read_buf`/`write_buf` hand libfuse a `fuse_bufvec` that names the
  entity file's descriptor, so file data never passes through Python (mfusepy declares
  the struct wrong: `buf` is an inline array in fuse_common.h).
- READDIRPLUS: `HKFuse` sends every listed entry with its attributes and an offset
  (mfusepy fills names only); a listing comes in pieces of columns
  (hkfs.mount.view_listing.Piece) whose attributes `StatPacker` packs into an array of
  `struct stat` at once.
- f-calls on files removed while open: libfuse 3 passes no path; `HKFuse` hands the
  operations the file handle instead.
- `.query` handles are opened direct_io (page-cached when the kernel holds the result's size).
- getattr (every LOOKUP and GETATTR) packs its attributes with `StatPacker` too; what it and
  READDIRPLUS give the kernel is noted (KernelCache.note_attrs, note_listing).
- rename's renameat2 flags (RENAME_NOREPLACE, RENAME_EXCHANGE) reach the operations.
The operations themselves (paths -> store calls) are hkfs.fuse.operations.HKOperations.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import operator
import os
import stat
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import mfusepy
import numpy as np
from mfusepy import FUSE

if TYPE_CHECKING:
    from ..mount.view_listing import Piece
    from .operations import HKOperations

__all__ = ["HKFuse", "StatPacker", "STAT_KEYS", "Wire", "wire", "fill_piece", "BUF_API", "FUSE_CAP_READDIRPLUS_AUTO",
           "fd_bufvec", "fill_fd_bufvec", "fill_mem_bufvec", "buf_free", "FuseBufvec", "BUFVEC_SIZE", "buf_malloc", "voidpp", "fallocate"]

log = logging.getLogger(__name__)

FUSE_READDIR_PLUS, FUSE_FILL_DIR_PLUS = 1 << 0, 1 << 1         # fuse.h (libfuse 3)
# A file's attributes as a tuple in this order (hkfs.mount.model.Attrs; a Piece's attrs columns)
STAT_KEYS = ("st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_size", "st_blksize", "st_blocks",
             "st_atime", "st_mtime", "st_ctime")
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14                            # fuse_common.h (libfuse 3)


# Zero-copy I/O: read_buf/write_buf hand libfuse a buffer that *is* the entity file's
# descriptor, so file data never passes through Python. mfusepy declares fuse_bufvec.buf
# as a pointer; in fuse_common.h it is an inline array (struct fuse_buf buf[1]).
class FuseBuf(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class FuseBufvec(ctypes.Structure):
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", FuseBuf * 1)]


_FUSE_BUF_IS_FD, _FUSE_BUF_FD_SEEK = 1 << 1, 1 << 2


def _load_buf_api() -> tuple[Any, Any, Any] | None:
    try:
        lib = mfusepy._libfuse
        copy, size = lib.fuse_buf_copy, lib.fuse_buf_size
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except (AttributeError, OSError):
        return None
    copy.argtypes = [ctypes.POINTER(FuseBufvec), ctypes.POINTER(FuseBufvec), ctypes.c_int]
    copy.restype = ctypes.c_ssize_t
    size.argtypes = [ctypes.POINTER(FuseBufvec)]
    size.restype = ctypes.c_size_t
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    return copy, size, libc.malloc


BUF_API = _load_buf_api()

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode (os has posix_fallocate only, which has none); OSError on failure."""
    if _LIBC.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


BUFVEC_SIZE = ctypes.sizeof(FuseBufvec)
buf_malloc = BUF_API[2] if BUF_API is not None else None
voidpp = functools.partial(ctypes.cast, typ=ctypes.POINTER(ctypes.c_void_p))


def _bufvec_packer() -> tuple[Callable[[int, int, int, int], None], Callable[[int, int, int], None]]:
    """Write a one-buffer fuse_bufvec naming (fd, pos, size) at an address, in one memmove;
    and one naming `size` bytes of memory at `mem` (malloc'd: libfuse frees it with the bufvec).

    Packed with struct at FuseBufvec's own field offsets (a ctypes struct per read costs a
    few microseconds; the read path runs once per 128 KiB)."""
    b = FuseBufvec.buf.offset
    fields = [(FuseBufvec.count.offset, "Q"), (FuseBufvec.idx.offset, "Q"), (FuseBufvec.off.offset, "Q"),
              (b + FuseBuf.size.offset, "Q"), (b + FuseBuf.flags.offset, "i"),
              (b + FuseBuf.mem.offset, "Q"), (b + FuseBuf.fd.offset, "i"), (b + FuseBuf.pos.offset, "q")]
    fmt, pos = "=", 0
    for off, code in fields:
        fmt += "x" * (off - pos) + code
        pos = off + struct.calcsize("=" + code)
    fmt += "x" * (BUFVEC_SIZE - pos)
    pack = struct.Struct(fmt).pack
    flags = _FUSE_BUF_IS_FD | _FUSE_BUF_FD_SEEK

    def fill(ptr: int, fd: int, offset: int, size: int) -> None:
        ctypes.memmove(ptr, pack(1, 0, 0, size, flags, 0, fd, offset), BUFVEC_SIZE)

    def fill_mem(ptr: int, mem: int, size: int) -> None:
        ctypes.memmove(ptr, pack(1, 0, 0, size, 0, mem, -1, 0), BUFVEC_SIZE)
    return fill, fill_mem


fill_fd_bufvec, fill_mem_bufvec = _bufvec_packer()
_LIBC.free.argtypes = [ctypes.c_void_p]
_LIBC.free.restype = None
buf_free = _LIBC.free


def fd_bufvec(fd: int, pos: int, size: int) -> FuseBufvec:
    v = FuseBufvec(count=1, idx=0, off=0)
    v.buf[0].size, v.buf[0].flags, v.buf[0].mem = size, _FUSE_BUF_IS_FD | _FUSE_BUF_FD_SEEK, None
    v.buf[0].fd, v.buf[0].pos = fd, pos
    return v


class StatPacker:
    """Packs attributes into the platform's `struct stat`: one from an attribute dict with one
    struct.pack_into (`pack`: LOOKUP, GETATTR), or a listing piece's (hkfs.mount.view_listing.
    Piece.attrs, Attrs order) into an array of them, numpy column by column (`pack_rows`).

    mfusepy's set_st_attrs spends several microseconds per stat on setattr and timespec
    objects, and READDIRPLUS sends attributes for every listed file. The layout is read
    from mfusepy's c_stat field offsets, so it follows the platform's struct stat."""

    INTS = ("st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_size", "st_blksize", "st_blocks")
    TIMES = ("st_atime", "st_mtime", "st_ctime")

    def __init__(self, c_stat: type[ctypes.Structure]) -> None:
        names, formats, offsets = [], [], []
        for n in self.INTS:
            field = getattr(c_stat, n)
            if field.size not in (4, 8):
                raise ValueError(f"c_stat.{n} is {field.size} bytes")
            names.append(n)
            formats.append("<u4" if field.size == 4 else "<i8")
            offsets.append(field.offset)
        for n in self.TIMES:
            field = getattr(c_stat, n + "spec")
            if field.size != 16:
                raise ValueError(f"c_stat.{n}spec is not two 64-bit words")
            names += [n, n + "_nsec"]
            formats += ["<i8", "<i8"]
            offsets += [field.offset, field.offset + 8]
        self.size = ctypes.sizeof(c_stat)
        self.dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": self.size})
        fmt, pos = "<", 0
        for offset, form in sorted(zip(offsets, formats, strict=True)):
            if offset < pos:
                raise ValueError("c_stat fields overlap")
            fmt += "x" * (offset - pos) + ("I" if form == "<u4" else "q")
            pos = offset + (4 if form == "<u4" else 8)
        order = [n for _off, n in sorted(zip(offsets, names, strict=True))]
        if order[-6:] != names[-6:]:
            raise ValueError("c_stat does not end with atime, mtime, ctime timespecs")
        self._ints = operator.itemgetter(*order[:-6])
        self._pack_into = struct.Struct(fmt).pack_into

    def pack(self, st: ctypes.Structure, attrs: dict[str, Any]) -> None:
        """Fill st from an attribute dict (STAT_KEYS; times in ns)."""
        a, m, c = attrs["st_atime"], attrs["st_mtime"], attrs["st_ctime"]
        self._pack_into(st, 0, *self._ints(attrs), a // 1_000_000_000, a % 1_000_000_000,   # type: ignore[arg-type]
                        m // 1_000_000_000, m % 1_000_000_000, c // 1_000_000_000, c % 1_000_000_000)

    def pack_rows(self, attrs: np.ndarray) -> np.ndarray:
        """len(attrs) struct stats, contiguous (fields not in STAT_KEYS zero)."""
        out = np.zeros(len(attrs), self.dtype)
        for j, name in enumerate(self.INTS):
            out[name] = attrs[:, j]
        for j, name in enumerate(self.TIMES, len(self.INTS)):
            out[name], out[name + "_nsec"] = np.divmod(attrs[:, j], 1_000_000_000)
        return out


def _stat_packer() -> StatPacker | None:
    try:
        return StatPacker(mfusepy.c_stat)
    except (AttributeError, ValueError) as exc:
        log.info("READDIRPLUS attributes through mfusepy.set_st_attrs: %s", exc)
        return None


_PACKER = _stat_packer()
# libfuse's fuse_fill_dir_t with the stat as an address: the stats of a piece are one array
_FILL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64,
                         ctypes.c_int)
# The fill loop in C (hkfs/fuse/_fill.c), optional: built without a C compiler, the loop is Python's
try:
    from . import _fill as _cfill
except ImportError:
    _cfill = None  # type: ignore[assignment]


class Wire(NamedTuple):
    """A listing piece as libfuse's filler takes it (made once per piece, which several
    requests read). For the C loop (hkfs/fuse/_fill.c) `names` is one bytes object of
    NUL-terminated names starting at `name_at`, and offsets and flags are int64 / int32
    arrays; for the Python loop they are lists and `name_at` is None."""

    stats: Any                # the packed struct stats (kept alive here)
    base: int                 # address of the first
    names: Any
    name_at: np.ndarray | None
    offsets: Any
    flags: Any                # FUSE_FILL_DIR_PLUS, or 0 for an entry sent without attributes


def wire(piece: Piece, encoding: str, errors: str, *, for_c: bool = _cfill is not None) -> Wire:
    """Encode a piece for the filler: names in the mount's encoding, attributes packed."""
    if _PACKER is not None:
        stats: Any = _PACKER.pack_rows(piece.attrs)
        base = stats.ctypes.data
    else:
        stats = (mfusepy.c_stat * len(piece))()
        for st, row, plus in zip(stats, piece.attrs.tolist(), piece.plus.tolist(), strict=True):
            if plus:
                mfusepy.set_st_attrs(st, dict(zip(STAT_KEYS, row, strict=True)), use_ns=True)
            else:
                st.st_ino, st.st_mode = row[0], row[2]
        base = ctypes.addressof(stats)
    flags = np.where(piece.plus, FUSE_FILL_DIR_PLUS, 0).astype(np.int32)
    if for_c:               # file names hold no NUL: it ends each
        names = "\0".join(piece.names).encode(encoding, errors) + b"\0"
        ends = np.flatnonzero(np.frombuffer(names, np.uint8) == 0)
        name_at = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)[:len(piece)]
        return Wire(stats, base, names, name_at, np.ascontiguousarray(piece.offsets, np.int64), flags)
    return Wire(stats, base, [n.encode(encoding, errors) for n in piece.names], None, piece.offsets.tolist(),
                flags.tolist())


def fill_piece(filler: Any, buf: Any, w: Wire, size: int, start: int) -> int:
    """Hand entries start.. of an encoded piece to libfuse's filler until the reply is full:
    the index of the first one it refused (the piece's length if none)."""
    if w.name_at is not None and _cfill is not None:
        return int(_cfill.fill(ctypes.cast(filler, ctypes.c_void_p).value, buf or 0, w.names,
                               w.name_at.ctypes.data, w.base, size, w.offsets.ctypes.data,
                               w.flags.ctypes.data, start, len(w.offsets)))
    fill = _FILL(ctypes.cast(filler, ctypes.c_void_p).value)
    names, offs, fl, base = w.names, w.offsets, w.flags, w.base
    for i in range(start, len(offs)):
        if fill(buf, names[i], base + i * size, offs[i], fl[i]):
            return i
    return len(offs)


_S_IFMT = 0o170000                 # the file-type bits of st_mode


def names_only(w: Wire) -> Wire:
    """The piece's entries without attributes (libfuse registers no node for them: node_budget)."""
    return w._replace(flags=np.zeros_like(w.flags) if isinstance(w.flags, np.ndarray) else [0] * len(w.flags))


def listed_files(piece: Piece, start: int, end: int) -> list[str]:
    """The names of entries start..end that are files sent with their attributes (what
    hkfs.fuse.node_budget counts; directories and looked-up entries are not)."""
    files = piece.plus[start:end] & (piece.attrs[start:end, 2] & _S_IFMT != stat.S_IFDIR)
    names = piece.names
    if files.all():                  # a view's files: the names as they are
        return names[start:end]
    return [names[i] for i in (np.flatnonzero(files) + start).tolist()]


class HKFuse(FUSE):
    """mfusepy's FUSE with the two things its high-level glue leaves out.

    - READDIRPLUS (libfuse 3): mfusepy fills names only, so the kernel follows every
      listed name with a LOOKUP; here each entry carries its attributes (FUSE_FILL_DIR_PLUS)
      and libfuse registers the node, so `ls -l` of a view needs no request per file.
    - `.query` handles are opened direct_io: their size is the result's, evaluated at open,
      and reads must not stop at a size the kernel cached from an earlier evaluation; unless
      the kernel holds that very size (`QueryFS.cached`: then the kernel answers the read at
      EOF itself); a read-only one also FOPEN_NOFLUSH (Linux 5.16+; nothing to flush: one
      request less).
    """

    operations: HKOperations

    def __init__(self, operations: HKOperations, *args: Any, **kwargs: Any) -> None:
        # a view listing's pieces read ahead are encoded on its worker (hkfs.mount.view_listing)
        # while the kernel and `ls` work on the last reply: a READDIRPLUS only hands them over
        operations.prepare_piece = self._prepare
        super().__init__(operations, *args, **kwargs)     # serves until unmounted

    def _prepare(self, piece: Piece) -> None:
        piece.wire = wire(piece, self.encoding, self.errors)

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any,
                       flags: int) -> int:
        if not flags & FUSE_READDIR_PLUS:
            return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
        # Offsets (HKOperations.listing_from gives one with each entry) make libfuse register
        # each node and encode its entry as it is filled (with offset 0 libfuse 3.14 buffers
        # the whole listing and drops the attributes).
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        size = _PACKER.size if _PACKER is not None else ctypes.sizeof(mfusepy.c_stat)
        kernel = self.operations.kernel
        budget = kernel.budget
        plus = budget.keeping()        # else names only: the kernel would not keep the entries
        files: list[str] = []          # the kernel keeps them, or looks them up and keeps them (node_budget)
        # the pieces read the catalog as they are filled, on a lent connection (Catalog.lend)
        with self.operations.lent(), kernel.handing():   # attributes given: a foreign commit drops everything (KernelCache.unchanged)
            if plus:
                kernel.note_listing()
            # closed as soon as the reply is full: a view listing then reads ahead for the next
            # request, on its worker, while the kernel and `ls` work on this reply
            with contextlib.closing(self.operations.listing_from(decoded, fip.contents.fh, offset)) as pieces:
                for piece, start in pieces:
                    w = piece.wire
                    if w is None:
                        w = piece.wire = wire(piece, self.encoding, self.errors)
                    end = fill_piece(filler, buf, w if plus else names_only(w), size, start)
                    if budget.active:
                        files += listed_files(piece, start, end)
                    if end < len(piece) or not plus:
                        # the reply is full; or names only (the drops lag): one piece a reply, so
                        # the next request sees the budget again (a 1 MiB one holds ~6,500 names,
                        # each then a LOOKUP, where entries may be kept again after a few)
                        break
        budget.listed(files, self.encoding, self.errors)
        return 0

    # libfuse 3 passes no path for a file removed while open; mfusepy's glue for these either
    # decodes it unconditionally or drops the file handle, so f-calls could not find the file.
    def _str(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return fip.contents.fh if fip else None

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        """Every LOOKUP and GETATTR: the attributes packed by `StatPacker` (one pack_into)
        instead of mfusepy's set_st_attrs (an attribute and a timespec object per field,
        ~15-50 us a call here); a device file's st_rdev, which the packer has no field for,
        still goes through set_st_attrs."""
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        fh = fip.contents.fh if fip else None
        kernel = self.operations.kernel
        with kernel.handing():       # noted before the reply (KernelCache.unchanged)
            attrs = self.operations.getattr(self._str(path), fh)    # type: ignore[arg-type]
            kernel.note_attrs(attrs.get("st_ino", 0), attrs.get("st_ctime", 0))
        if _PACKER is None or "st_rdev" in attrs:
            mfusepy.set_st_attrs(buf.contents, attrs, use_ns=True)
        else:
            _PACKER.pack(buf.contents, attrs)
        return 0

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        """renameat2's flags reach the operations (mfusepy's glue drops them: an exchange
        would have been done as a plain overwrite, losing the destination's bytes)."""
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
        return self.operations.read_buf(self._str(path), bufpp, size, offset, fip.contents.fh)

    def write_buf(self, path: bytes | None, buf: Any, offset: int, fip: Any) -> int:
        return self.operations.write_buf(self._str(path), buf, offset, fip.contents.fh)

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return self.operations.chmod(self._str(path), mode, self._fh(fip))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        uid = -1 if uid == 0xFFFFFFFF else uid
        gid = -1 if gid == 0xFFFFFFFF else gid
        return self.operations.chown(self._str(path), uid, gid, self._fh(fip))

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.operations.truncate(self._str(path), length, self._fh(fip))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            times = (mfusepy.time_of_timespec(buf.contents.actime, use_ns=True),
                     mfusepy.time_of_timespec(buf.contents.modtime, use_ns=True))
        return self.operations.utimens(self._str(path), times, self._fh(fip))

    def open(self, path: bytes, fip: Any) -> int:
        result = super().open(path, fip)
        if self.operations.queries.owns(fip.contents.fh):
            # page-cached only when the kernel holds the result's very size (QueryFS.cached)
            fip.contents.direct_io = 0 if self.operations.queries.cached(fip.contents.fh) else 1
            if fip.contents.flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY:
                fip.contents.noflush = 1     # an evaluated result: close() needs no FLUSH round trip
        return result
