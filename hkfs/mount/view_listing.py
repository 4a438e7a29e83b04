"""A view's listing, read a piece at a time: memory that does not grow with the view.

`MountModel.listdir` builds every entry of a view at once (one tuple and one catalog
row object per file): a million-file view cost the daemon ~600 MiB while it was
listed. A `ViewListing` keeps only the view's ids (a sorted int64 array, 8 bytes a
file, fixed at the handle's first read as readdir(3) expects) and fetches names and
attributes CHUNK files at a time, in id order, as the kernel asks for them.

A piece is columns (`Piece`: names, an int64 array of attributes in Attrs order, offsets):
read as one row (Store.entity_columns_between: the integers packed by SQLite into one BLOB,
hkfs.core.aggregates, or as text) and computed with numpy, it costs no Python object or call per
file, and the adapter packs and sends it whole (hkfs.fuse.glue). When a request is done with
its pieces (the reply full), a worker thread reads the next READ_AHEAD and the adapter packs
them there (`prepare`), while the kernel and `ls` work on the reply: the next request only
hands them to libfuse, and the worker holds no GIL a filling request waits for. A kept or
read-ahead piece is handed out only if nothing committed since it was read.

Offsets are stable, so a listing resumed by a handle that read nothing itself (the
kernel switching from the listing it kept, hkfs.fuse.dir_cache, to the daemon midway)
goes on after the last name it gave: '.' and '..' are 1 and 2, a file is its inode + 1
(inode = id << 2 | 1), a child keyword KEYWORDS + its inode >> 2, after every file.

Names are those `MountModel.listdir` gives (hkfs.mount.paths.listed_name): a name that
several files of the view bear is listed as STEM~ID.EXT for each (the namespace's shared
names are read once per catalog version; for those in a chunk, the files bearing them
are kept if they are in the view), a file named like a child keyword as ',NAME'.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..core.store import INT_COLUMNS, EntityColumns, EntityStat
from .model import BLKSIZE, Entry, MountModel
from .paths import clash_name, listed_name
from .queryfs import SUFFIX as QUERY_SUFFIX
from .views import KeySpaceLoc, Location, ViewLoc, int64s_of, view_children_of

__all__ = ["Piece", "ViewListing", "WholeListing", "listing_for", "stable_offset", "CHUNK", "READ_AHEAD", "KEYWORDS"]

CHUNK = 1024                 # files fetched per catalog read
READ_AHEAD = 8               # pieces read ahead of the one being sent: a 1 MiB READDIRPLUS takes ~6
KEYWORDS = 1 << 62           # offsets of child keywords start here (inodes >> 2 are < 2**58)
NATTRS = 11                  # columns of Piece.attrs: hkfs.mount.model.Attrs's fields, in its order
# Store.entity_stats's rows (EntityStat's fields) as numpy columns
_ROW = np.dtype([(f, object if f == "name" else np.int64) for f in EntityStat._fields])


def _reader() -> ThreadPoolExecutor:
    """The thread that reads the next piece of a view while the current one is sent: the
    catalog read overlaps the kernel's work on the reply and libfuse's fill (hkfs/fuse/_fill.c,
    without the GIL). A new one in a forked child (the daemon), which has no threads."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="hkfs-listing")


_AHEAD = _reader()


def _after_fork() -> None:
    global _AHEAD
    _AHEAD = _reader()


os.register_at_fork(after_in_child=_after_fork)


def stable_offset(position: int, entry: Entry) -> int:
    """An entry's offset that does not depend on its position in the listing (the module doc):
    '.' and '..' (positions 0 and 1) are 1 and 2, a child keyword KEYWORDS + its inode >> 2,
    a file its inode + 1."""
    if position < 2:
        return position + 1
    return KEYWORDS + (entry[2] >> 2) if entry[1] == stat.S_IFDIR else entry[2] + 1


class Piece:
    """Consecutive entries of a listing as columns: a READDIRPLUS reply packs them with no
    Python call per entry (hkfs.fuse.glue).

    `names` the listed names; `attrs` an (n, NATTRS) int64 array, a row per entry in Attrs
    order; `offsets` each entry's offset, ascending; `plus` whether the entry's attributes
    are sent (False for '.', '..', stored queries and devices: the kernel looks those up;
    their row holds only the inode and the file-type bits). `wire` is the adapter's encoded
    form of the piece, kept with it for the requests that read the rest of it."""

    __slots__ = ("names", "attrs", "offsets", "plus", "wire")

    def __init__(self, names: list[str], attrs: np.ndarray, offsets: np.ndarray, plus: np.ndarray) -> None:
        self.names, self.attrs, self.offsets, self.plus = names, attrs, offsets, plus
        self.wire: Any = None

    def __len__(self) -> int:
        return len(self.names)

    def after(self, offset: int) -> int:
        """Index of the first entry whose offset is above `offset`."""
        return int(np.searchsorted(self.offsets, offset, side="right"))

    @classmethod
    def of_entries(cls, entries: Sequence[Entry], offsets: Sequence[int]) -> Piece:
        """A piece of listed entries (each entry's attrs_of called now: a few directories, or
        a plain directory's listing)."""
        attrs = np.zeros((len(entries), NATTRS), np.int64)
        plus = np.zeros(len(entries), bool)
        for i, (_name, mode, ino, attrs_of, key) in enumerate(entries):
            if attrs_of is None:
                attrs[i, 0], attrs[i, 2] = ino, mode
            else:
                attrs[i] = attrs_of(key)
                plus[i] = True
        return cls([e[0] for e in entries], attrs, np.array(offsets, np.int64), plus)

    def entries(self) -> Iterator[tuple[str, int, tuple[int, ...] | None, int]]:
        """(name, inode, attributes or None, offset) of each entry (tests, debugging)."""
        for name, row, plus, off in zip(self.names, self.attrs.tolist(), self.plus.tolist(),
                                        self.offsets.tolist(), strict=True):
            yield name, row[0], tuple(row) if plus else None, off


_EMPTY = Piece([], np.zeros((0, NATTRS), np.int64), np.zeros(0, np.int64), np.zeros(0, bool))


def _attrs(model: MountModel, cols: dict[str, np.ndarray], names: list[str], nlinks: np.ndarray,
           nhks: np.ndarray) -> np.ndarray:
    """The Attrs rows of files given as columns (EntityStat's fields), as
    MountModel.entity_values makes them one at a time: the same rule on numpy columns."""
    eid, mode, size = cols["id"], cols["mode"], cols["size"]
    links = nlinks + nhks
    attrs = np.empty((len(eid), NATTRS), np.int64)
    attrs[:, 0] = (eid << 2) | 1
    attrs[:, 1] = np.where(nhks > 0, np.maximum(links, 2), np.maximum(links, 1))   # paths.link_count, or 1
    attrs[:, 2] = np.where(mode & 0o170000, mode, mode | stat.S_IFREG)
    attrs[:, 3], attrs[:, 4], attrs[:, 5] = cols["uid"], cols["gid"], size
    attrs[:, 6], attrs[:, 7] = BLKSIZE, (size + 511) // 512
    attrs[:, 8], attrs[:, 9], attrs[:, 10] = cols["atime_ns"], cols["mtime_ns"], cols["ctime_ns"]
    opened = model.open_counts
    if opened:           # an open file's size and times are its bytes file's
        for i in np.flatnonzero(np.isin(eid, list(opened))).tolist():
            info = EntityStat(*(names[i] if f == "name" else int(cols[f][i]) for f in EntityStat._fields[:9]),
                              int(nlinks[i]), int(nhks[i]))
            attrs[i] = model.entity_values(info)
    return attrs


def _columns(got: EntityColumns) -> dict[str, np.ndarray]:
    """Store.entity_columns_between's integer columns by name (INT_COLUMNS), in its row order."""
    if isinstance(got.ints, bytes):
        rows = int64s_of(got.ints).reshape(-1, len(INT_COLUMNS))
        return {f: rows[:, j] for j, f in enumerate(INT_COLUMNS)}
    return {f: int64s_of(t) for f, t in zip(INT_COLUMNS, got.ints, strict=True)}


def _occurrences(eid: np.ndarray, ids: bytes | str) -> np.ndarray:
    """How many times each of these ids (sorted) occurs among `ids` (Store.entity_columns_between's
    tagged, linked: one per HK, per link)."""
    if not ids or not len(eid):
        return np.zeros(len(eid), np.int64)
    seen = np.sort(int64s_of(ids))
    return np.searchsorted(seen, eid, "right") - np.searchsorted(seen, eid, "left")


class ViewListing:
    """One open view's entries from an offset on (see the module doc)."""

    def __init__(self, model: MountModel, view: ViewLoc, prepare: Callable[[Piece], None] | None = None) -> None:
        self.model, self.view = model, view
        self.prepare = prepare          # the adapter's encoding of a piece, on the worker with its read
        me = model.virtual_ino(view)
        root = (model.root << 2) | 2                 # as MountModel.listdir gives '..'
        head: list[Entry] = [(".", stat.S_IFDIR, me, None, None), ("..", stat.S_IFDIR, root, None, None)]
        self.head = Piece.of_entries(head, [1, 2])
        last = view_children_of(view.hks)
        kids = model.reads.keyword_children(view.ns, tuple(last)) if last is not None else {}
        if kids:
            model.fetch_keyword_attrs(view.ns, tuple(last))       # their modes, in one query
        self.keywords = set(kids)
        kw = []
        for k in kids:
            loc = ViewLoc(view.ns, view.with_child(k), view.anchor)
            kw.append((k, stat.S_IFDIR, model.virtual_ino(loc), model.virtual_attrs, loc))
        self.kw: list[Entry] = sorted(kw, key=lambda e: e[2])
        self._kw_piece: Piece | None = None          # made when the listing gets there
        # the namespace's shared names on the worker while this thread reads the view's ids
        # (two scans of ~30 ms each at 100k files; not waited for if the worker is busy)
        shared = _AHEAD.submit(model.reads.shared_names, view.ns)
        self.ids: np.ndarray = model.reads.view_ids(view.ns, tuple(view.hks))
        self.shared: set[str] = (shared.result() if shared.done() or not shared.cancel()
                                 else model.reads.shared_names(view.ns))
        self._piece: tuple[int, int, Piece | None] = (-1, 0, None)   # the last piece: index, catalog version
        self._ahead: dict[int, Future[tuple[int, Piece]]] = {}     # the next ones by index, being read

    def __len__(self) -> int:
        return len(self.head) + len(self.ids) + len(self.kw)

    def pieces_from(self, offset: int) -> Generator[tuple[Piece, int], None, None]:
        """(piece, index of its first entry whose offset is above `offset`) for every piece
        that has such entries, in order. When the caller is done with them (a READDIRPLUS
        reply full: it closes the iterator), the worker reads the next READ_AHEAD pieces."""
        if offset < 2:
            yield self.head, self.head.after(offset)
        if offset < KEYWORDS:
            first = int(np.searchsorted(self.ids, (max(offset, 2) + 2) >> 2))   # ino + 1 > offset
            # A request takes a few hundred entries: pieces start at multiples of CHUNK and the
            # last one is kept for the requests that follow.
            i = first - first % CHUNK
            try:
                while i < len(self.ids):
                    piece = self._piece_at(i)
                    start = piece.after(offset)
                    if start < len(piece):
                        yield piece, start
                    i += CHUNK
            finally:
                # between requests: the worker holds the GIL (numpy, the adapter's packing)
                # while the kernel and `ls` work on the reply, not while a request fills
                self._read_ahead(i + CHUNK)
        if self.kw:
            if self._kw_piece is None:
                self._kw_piece = Piece.of_entries(self.kw, [stable_offset(2, e) for e in self.kw])
            start = self._kw_piece.after(offset)
            if start < len(self._kw_piece):
                yield self._kw_piece, start

    def _piece_at(self, i: int) -> Piece:
        """The piece of the files from index i on: the one kept, or the one read ahead, if
        nothing committed since it was read, else one read now while the worker reads the
        next ones (the listing's start, a listing resumed elsewhere, a change)."""
        version = self.model.reads.changes.version()
        at, read_at, piece = self._piece
        if at == i and read_at == version and piece is not None:
            return piece
        piece = None
        ahead = self._ahead
        for j in [j for j in ahead if j < i]:        # passed over (a listing resumed further on)
            ahead.pop(j).cancel()
        fut = ahead.pop(i, None)
        # a read ahead not started yet (another listing's is running) is cancelled, not waited for
        if fut is not None and (fut.done() or not fut.cancel()):
            read_at, got = fut.result()
            if read_at == version:
                piece = got
        if piece is None:
            self._read_ahead(i + CHUNK)      # (before the read of piece i here: both at once)
            piece = self._files(self.ids[i:i + CHUNK])
        self._piece = (i, version, piece)
        return piece

    def _read_ahead(self, i: int) -> None:
        """Have the worker read the pieces from index i on that it is not reading, up to READ_AHEAD."""
        ahead = self._ahead
        for nxt in range(i, min(i + READ_AHEAD * CHUNK, len(self.ids)), CHUNK):
            if nxt not in ahead:
                ahead[nxt] = _AHEAD.submit(self._read, nxt)

    def _read(self, i: int) -> tuple[int, Piece]:
        """The piece from index i on, with the catalog version it was read at (read ahead),
        made ready for the wire by `prepare` (then a request only copies it to libfuse)."""
        version = self.model.reads.changes.version()
        piece = self._files(self.ids[i:i + CHUNK])
        if self.prepare is not None and len(piece):
            self.prepare(piece)
        return version, piece

    def _files(self, ids: np.ndarray) -> Piece:
        """The piece of these files of the view (sorted ids), in id order."""
        store = self.model.store
        lo, hi = int(ids[0]), int(ids[-1])
        got = None
        if hi - lo < 2 * len(ids):           # dense: one range read, the other files left out
            got = store.entity_columns_between(lo, hi)
            if got is None:
                return _EMPTY
            cols = _columns(got)
            names = got.names.split("/")
            if len(names) != len(cols["id"]):
                got = None                   # a name with a '/' (which no file name holds): row by row
        if got is not None:
            keep = np.isin(cols["id"], ids) if hi - lo + 1 != len(ids) else None   # consecutive: all listed
            if keep is not None or np.any(cols["id"][1:] < cols["id"][:-1]):
                order = np.flatnonzero(keep) if keep is not None else np.arange(len(names))
                order = order[np.argsort(cols["id"][order], kind="stable")]
                cols = {f: c[order] for f, c in cols.items()}
                names = [names[i] for i in order.tolist()]
            eid = cols["id"]
            nlinks, nhks = _occurrences(eid, got.linked), _occurrences(eid, got.tagged)
        else:
            stats = store.entity_stats(ids.tolist())     # in id order; gone ones left out
            if not stats:
                return _EMPTY
            rows = np.array(stats, _ROW)
            cols = {f: rows[f] for f in EntityStat._fields if f != "name"}
            names = rows["name"].tolist()
            eid, nlinks, nhks = cols["id"], cols["nlinks"], cols["nhks"]
        attrs = _attrs(self.model, cols, names, nlinks, nhks)
        renamed = self._shared_names(self.shared.intersection(names)) if self.shared else set()
        if renamed or (self.keywords and not self.keywords.isdisjoint(names)):   # (it iterates the names)
            kws = self.keywords
            for i, name in enumerate(names):
                if name in renamed:
                    names[i] = clash_name(name, int(eid[i]))
                elif name in kws:
                    names[i] = listed_name(name, int(eid[i]), shared=False, keyword=True)
        fmt = attrs[:, 2] & 0o170000
        # a device's attributes carry a device number READDIRPLUS does not (model.is_device);
        # a stored query's size is its result's
        plus = (fmt != stat.S_IFCHR) & (fmt != stat.S_IFBLK)
        # no name holds a '/': one scan of the joined names tells whether any ends with .query
        queries = ([i for i, name in enumerate(names) if name.endswith(QUERY_SUFFIX)]
                   if QUERY_SUFFIX + "/" in "/".join(names) + "/" else [])
        if queries:
            plus[queries] = False
        if not plus.all():
            bare = ~plus
            attrs[bare, 1] = 0
            attrs[bare, 2] = fmt[bare]
            attrs[bare, 3:] = 0
        self.model.on_view_all(eid[plus].tolist())   # handed out under a view path
        return Piece(names, attrs, attrs[:, 0] + 1, plus)      # a file's stable_offset: its inode + 1

    def _shared_names(self, names: set[str]) -> set[str]:
        """Which of these names (each borne by several files of the namespace) more than one
        file of the view bears."""
        if not names:
            return set()
        pairs = self.model.store.ids_named(self.view.ns, sorted(names))
        ids = np.fromiter((eid for _n, eid in pairs), np.int64, len(pairs))
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        seen: dict[str, int] = {}
        for (name, _eid), inside in zip(pairs, (self.ids[at] == ids).tolist(), strict=True):
            if inside:
                seen[name] = seen.get(name, 0) + 1
        return {n for n, c in seen.items() if c > 1}


class WholeListing:
    """A directory's entries listed whole (MountModel.listdir): plain directories, resumed by
    position, and '@' and the views of a shared mount, by their stable offsets (a listing the
    kernel keeps may be resumed by another handle: hkfs.fuse.dir_cache)."""

    def __init__(self, entries: list[Entry], stable: bool) -> None:
        if stable:
            offs = [stable_offset(i, e) for i, e in enumerate(entries)]
            order = sorted(range(len(entries)), key=offs.__getitem__)
            entries, offs = [entries[i] for i in order], [offs[i] for i in order]
        else:
            offs = list(range(1, len(entries) + 1))
        self.entries, self.offsets = entries, offs
        self._piece: tuple[int, Piece | None] = (-1, None)      # the last piece made

    def __len__(self) -> int:
        return len(self.entries)

    def pieces_from(self, offset: int) -> Generator[tuple[Piece, int], None, None]:
        """As ViewListing.pieces_from: CHUNK entries a piece, their attributes taken when the
        listing gets there."""
        first = bisect.bisect_right(self.offsets, offset)
        for i in range(first - first % CHUNK, len(self.entries), CHUNK):
            at, piece = self._piece
            if at != i or piece is None:
                piece = Piece.of_entries(self.entries[i:i + CHUNK], self.offsets[i:i + CHUNK])
                self._piece = (i, piece)
            yield piece, max(first - i, 0)


def listing_for(model: MountModel, loc: Location, path: str,
                prepare: Callable[[Piece], None] | None = None) -> ViewListing | WholeListing:
    """The listing of `path` (at `loc`): a view of a private mount a piece at a time (each piece
    read ahead handed to `prepare` on the worker), anything else whole."""
    if type(loc) is ViewLoc and not model.shared:
        return ViewListing(model, loc, prepare)
    return WholeListing(model.listdir(path), isinstance(loc, (KeySpaceLoc, ViewLoc)))
