"""A view's listing, read a piece at a time: memory that does not grow with the view.

`MountModel.listdir` builds every entry of a view at once (one tuple and one catalog
row object per file): a million-file view cost the daemon ~600 MiB while it was
listed. A `ViewListing` keeps only the view's ids (a sorted int64 array, 8 bytes a
file, fixed at the handle's first read as readdir(3) expects) and fetches names and
attributes CHUNK files at a time, in id order, as the kernel asks for them.

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
import stat
from collections.abc import Iterator

import numpy as np

from .model import Entry, MountModel, is_device
from .paths import clash_name, listed_name
from .queryfs import SUFFIX as QUERY_SUFFIX
from .views import KeySpaceLoc, Location, ViewLoc, view_children_of

__all__ = ["ViewListing", "WholeListing", "listing_for", "stable_offset", "CHUNK", "KEYWORDS"]

CHUNK = 1024                 # files fetched per catalog read
KEYWORDS = 1 << 62           # offsets of child keywords start here (inodes >> 2 are < 2**58)


def stable_offset(position: int, entry: Entry) -> int:
    """An entry's offset that does not depend on its position in the listing (the module doc):
    '.' and '..' (positions 0 and 1) are 1 and 2, a child keyword KEYWORDS + its inode >> 2,
    a file its inode + 1."""
    if position < 2:
        return position + 1
    return KEYWORDS + (entry[2] >> 2) if entry[1] == stat.S_IFDIR else entry[2] + 1


class ViewListing:
    """One open view's entries from an offset on (see the module doc)."""

    def __init__(self, model: MountModel, view: ViewLoc) -> None:
        self.model, self.view = model, view
        me = model.virtual_ino(view)
        root = (model.root << 2) | 2                 # as MountModel.listdir gives '..'
        self.head: list[Entry] = [(".", stat.S_IFDIR, me, None, None), ("..", stat.S_IFDIR, root, None, None)]
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
        self.ids: np.ndarray = model.reads.view_ids(view.ns, tuple(view.hks))
        self.shared: set[str] = model.reads.shared_names(view.ns)    # in the namespace
        self._piece: tuple[int, list[Entry], list[int]] = (-1, [], [])   # the last piece read

    def __len__(self) -> int:
        return len(self.head) + len(self.ids) + len(self.kw)

    def entries_from(self, offset: int) -> Iterator[tuple[Entry, int]]:
        """(entry, its offset) of every entry whose offset is above `offset`, in order."""
        for i, e in enumerate(self.head):
            if stable_offset(i, e) > offset:
                yield e, stable_offset(i, e)
        if offset < KEYWORDS:
            first = int(np.searchsorted(self.ids, (max(offset, 2) + 2) >> 2))   # ino + 1 > offset
            # A request takes a few dozen entries: pieces start at multiples of CHUNK and the
            # last one is kept for the requests that follow.
            i = first - first % CHUNK
            while i < len(self.ids):
                at, entries, offs = self._piece
                if at != i:
                    entries = self._files(self.ids[i:i + CHUNK])
                    offs = [e[2] + 1 for e in entries]          # a file's stable_offset: its inode + 1
                    self._piece = (i, entries, offs)
                for j in range(bisect.bisect_right(offs, offset), len(offs)):
                    yield entries[j], offs[j]
                i += CHUNK
        for e in self.kw:
            off = stable_offset(2, e)
            if off > offset:
                yield e, off

    def _files(self, ids: np.ndarray) -> list[Entry]:
        """The entries of these files of the view (sorted ids), in id order."""
        store = self.model.store
        lo, hi = int(ids[0]), int(ids[-1])
        if hi - lo + 1 == len(ids):          # consecutive ids: every row of the range is listed
            stats = store.entity_stats_between(lo, hi)
        elif hi - lo < 2 * len(ids):         # dense: one range scan, the others left out
            want = set(ids.tolist())
            stats = [s for s in store.entity_stats_between(lo, hi) if s.id in want]
        else:
            stats = store.entity_stats(ids.tolist())     # in id order; gone ones left out
        maybe = {s.name for s in stats if s.name in self.shared} if self.shared else ()
        shared = self._shared_names(maybe) if maybe else ()
        reg, q, dev, kws, attrs = stat.S_IFREG, QUERY_SUFFIX, is_device, self.keywords, self.model.viewed_values
        out: list[Entry] = []
        add = out.append
        for s in stats:
            name = s.name
            if name in shared:
                name = clash_name(name, s.id)
            elif name in kws:
                name = listed_name(name, s.id, shared=False, keyword=True)
            add((name, s.mode & 0o170000 or reg, (s.id << 2) | 1,
                 None if name.endswith(q) or dev(s.mode) else attrs, s))
        return out

    def _shared_names(self, names: set[str]) -> set[str]:
        """Which of these names (each borne by several files of the namespace) more than one
        file of the view bears."""
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
        self.offsets: list[int] | None = None
        if stable:
            offs = [stable_offset(i, e) for i, e in enumerate(entries)]
            order = sorted(range(len(entries)), key=offs.__getitem__)
            entries, self.offsets = [entries[i] for i in order], [offs[i] for i in order]
        self.entries = entries

    def entries_from(self, offset: int) -> Iterator[tuple[Entry, int]]:
        if self.offsets is None:
            return ((self.entries[i], i + 1) for i in range(offset, len(self.entries)))
        start = bisect.bisect_right(self.offsets, offset)
        return zip(self.entries[start:], self.offsets[start:], strict=True)


def listing_for(model: MountModel, loc: Location, path: str) -> ViewListing | WholeListing:
    """The listing of `path` (at `loc`): a view of a private mount a piece at a time, anything
    else whole."""
    if type(loc) is ViewLoc and not model.shared:
        return ViewListing(model, loc)
    return WholeListing(model.listdir(path), isinstance(loc, (KeySpaceLoc, ViewLoc)))
