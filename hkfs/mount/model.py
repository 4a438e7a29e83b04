"""The meaning of mount paths, without FUSE: `MountModel` over a real `Store`.

What a path names (`resolve`), its attributes (`Attrs`), a directory's or view's
entries (`listdir`) and every change the mount can make: create, mknod, unlink, link,
rename (and renameat2's exchange), mkdir, rmdir, extended attributes,
chmod/chown/utimens/truncate, symlink.
hkfs.fuse.operations translates FUSE calls into these, `Attrs` into stat, and the
errors (hkfs.core.errors) into errnos; it keeps the file handles.

Each change returns a `Stale`: what a cache of paths (the kernel's, carried out by
hkfs.fuse.kernel_cache.KernelCache.carry_out) may now hold wrongly: nothing, one
entity's attributes (stale elsewhere only if it has other paths), or everything
(a retag changes which views list a file, a keyword can shadow a file name).

Semantics that are choices (docs/mount.md explains them to users):
- create in a view: a new entity carrying the view's HKs;
- ln FILE VIEW/: attaches the view's HKs the file does not already satisfy;
- rm VIEW/f: detaches every HK of f that an HK of the view matches (f leaves the view);
- mv between views: drops the source view's HKs the destination does not match, adds the
  destination's; mv within a view (same list) renames (chfn);
- mv over an existing file: the destination name refers to the source file (its identity,
  keywords, xattrs, owner and mode); the old destination loses that name and is deleted
  when it has no other home (POSIX rename);
- except an editor save (`is_editor_save`): a temp file made through this mount moments
  ago renamed over a file of the same owner: the existing file takes the new bytes and
  mode and keeps its id, keywords, links and xattrs; the temp goes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..core import bytes as entity_bytes
from ..core.changes import ChangeFeed
from ..core.completion import COMPLETE_ATTR, complete_word
from ..core.errors import (
    AlreadyExists,
    Busy,
    CrossDevice,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
)
from ..core.naming import (
    HK,
    format_hk_list,
    hk_matches,
    parse_hk_list,
    split_clash_name,
    term_keyword,
)
from ..core.store import EntityInfo, EntityStat, Store
from ..query.embeddings import entry_kind
from .access import blocked_dirs, caller_groups
from .cached_reads import CachedReads
from .paths import AT, check_new_name, clash_name, link_count, listed_name
from .queryfs import SUFFIX as QUERY_SUFFIX
from .views import (
    DirLoc,
    KeySpaceLoc,
    LinkLoc,
    Location,
    NewKeyLoc,
    Resolver,
    ViewFileLoc,
    ViewLoc,
    attach_set,
    check_writable_view,
    detach_set,
    view_children_of,
)

log = logging.getLogger(__name__)

__all__ = ["MountModel", "Attrs", "Stale", "NOTHING", "EVERYTHING", "Entry", "EDITOR_SAVE_SECONDS",
           "KEYWORDS_ATTR", "DKL_ATTR", "NS_ATTR", "INFO_ATTR", "MAX_NAME"]

KEYWORDS_ATTR, DKL_ATTR, NS_ATTR = "user.hk.keywords", "user.hk.dkl", "user.hk.ns"
# what `hk info` shows of a file, for users who cannot open the store (hkfs.cli.through_mount);
# answered, never listed (cp -a would copy it)
INFO_ATTR = "user.hk.info"
XATTR_CREATE, XATTR_REPLACE = 1, 2
MAX_NAME = 255
# How long after its creation a temp file renamed over another counts as an editor save.
EDITOR_SAVE_SECONDS = 30.0
SCRATCH_MAX = 4096       # scratch files remembered (the oldest are forgotten first)


def is_scratch_name(name: str) -> bool:
    """A name tools give their working files: dot-files (vim's .X.swp/.swx, rsync's
    .NAME.XXXXXX, emacs' .#NAME), backups ending in '~', and vim's numeric write probe
    ('4913'). Made in a view and removed from it again, such a file is deleted, not kept
    in lost+found (docs/mount.md, "Scratch files made in a view")."""
    return name.startswith(".") or name.endswith("~") or name.isdigit()
BLKSIZE = 131072
# A directory's st_blksize: glibc's opendir sizes readdir(3)'s getdents buffer by it (32 KiB
# up to 1 MiB), and since Linux 6.16 the kernel asks READDIRPLUS for as much as that buffer
# holds (up to max_pages): a 100k-file view is listed in 17 requests instead of 492.
DIR_BLKSIZE = 1 << 20


class Attrs(NamedTuple):
    """A file's or directory's attributes, FUSE-free (times in ns). Same field order as
    hkfs.fuse.glue.STAT_KEYS: listings hand out bare tuples in this order (no object per file)."""

    ino: int
    nlink: int
    mode: int
    uid: int
    gid: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


# A listed entry: name, file-type bits, inode, attrs_of(key) -> Attrs-ordered tuple (None:
# the kernel asks later, e.g. for a .query name whose size is computed), key.
Entry = tuple[str, int, int, "Callable[[Any], tuple[int, ...]] | None", Any]


@dataclass(frozen=True)
class Stale:
    """What a change leaves stale in a cache of paths.

    `everything`: any cached path may now name something else. Else `eid`: that entity's
    attributes changed; `shared`: it is known under other paths for sure (several links, or
    an embedding entry whose change alters FILE.query answers); a cache that also knows
    which entities it holds under view paths widens that itself. `clashes`: entities whose
    name a new file now shares: views listing them with it show STEM~ID names, so their
    plain names in views are stale (under directory links they keep theirs). `merged`
    (src, dst): an editor save made entity src into dst (handles open on src now write
    dst's bytes)."""

    everything: bool = False
    eid: int | None = None
    shared: bool = False
    clashes: tuple[int, ...] = ()
    merged: tuple[int, int] | None = None


NOTHING = Stale()
EVERYTHING = Stale(everything=True)


def _ino(kind: int, ident: int) -> int:
    return (ident << 2) | kind


def _check_path(path: str) -> None:
    """Names are UTF-8 (the catalog stores text): bytes that are not (decoded by mfusepy as
    surrogate escapes) raise UnicodeEncodeError, which the mount answers with EILSEQ."""
    for part in path.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise NameTooLong(f"{part[:40]}...: longer than {MAX_NAME} bytes")
    if not path.isascii():
        path.encode("utf-8")


def _names_file(listed: str, eid: int, name: str) -> bool:
    """Whether `listed`, a name in a view, is file eid's own name there: its name, or its clash
    name STEM~ID.EXT (`ln V/main~12.tex W/` names file 12 so)."""
    return listed == name or split_clash_name(listed) == (name, eid)


def _check_home(loc: ViewFileLoc) -> None:
    """',NAME' in a directory with no keyword list names a view of no keyword: a file made or
    moved there would have no keyword and no directory (it would land in lost+found)."""
    if not loc.view.hks:
        raise InvalidArgument(f"{loc.listed or loc.name!r}: a name starting with ',' needs a keyword list "
                              "(hk akl) here; it is mount path syntax, not a file name")


def is_device(mode: int) -> bool:
    """A character or block device: its attributes carry a device number (st_rdev), which
    READDIRPLUS's packed attributes do not, so listings leave them for the kernel to look up."""
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _is_symlink(info: EntityInfo) -> bool:
    return stat.S_ISLNK(info.mode)    # the store keeps the file type in mode


class MountModel:
    """The mount's meaning over a Store, for the namespace `ns` (its root directory is '/').

    `open_counts` (entity -> open descriptors, kept by the caller) makes attributes come
    from the bytes file while a file is open (it may be growing). `on_view` is told each
    entity handed out under a view path (the kernel cache's view bookkeeping; `on_view_all`
    a listing piece's at once)."""

    def __init__(self, store: Store, ns: int, *, uid: int | None = None, gid: int | None = None,
                 clock: Callable[[], float] = time.monotonic, changes: ChangeFeed | None = None) -> None:
        self.store = store
        self.ns = ns
        self.root = store.root_dir(ns)
        self.reads = CachedReads(store, changes)
        self.resolver = Resolver(self.reads, ns)
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.start_ns = time.time_ns()    # views' times (the adapter moves it when listings change)
        self.open_counts: dict[int, int] = {}
        self.on_view: Callable[[int], None] = lambda eid: None
        # the same for a listing piece's files at once (by default on_view for each)
        self.on_view_all: Callable[[list[int]], None] = self._view_each
        # a shared (allow_other) mount: views hide from each caller what its directories do
        # (hkfs.mount.access); `caller` gives (uid, gid, pid) of the request, None outside one
        self.shared = False
        self.caller: Callable[[], tuple[int, int, int] | None] = lambda: None
        # a hook for file attributes another layer validates and stores (user.hk.embedding)
        self.claim_file_attr: Callable[[int, str, bytes], bool] = lambda eid, name, value: False
        self.read_file_attr: Callable[[int, str], bytes | None] = lambda eid, name: None   # user.hk.query
        self._entities = os.fspath(store.entities_dir)
        self._clock = clock
        self._fresh: dict[int, float] = {}        # entity -> when created through this mount
        self._fresh_lock = threading.Lock()
        # scratch files created in a view through this mount, never renamed or linked since
        self._scratch: dict[int, None] = {}
        self._made_in_view: dict[int, None] = {}  # fresh files made in a view, keywords not yet set

    def close(self) -> None:
        self.reads.close()

    # ------------------------------------------------------------ what a path names

    def resolve(self, path: str) -> Location:
        """The location `path` names (memoised until what names files changes: files_gen)."""
        memo = self.reads.structure()
        key = ("loc", path)
        found = memo.get(key)
        if found is None:
            _check_path(path)
            found = memo[key] = self.resolver.resolve(path)
        if type(found) is ViewFileLoc and found.eid is not None:
            if self.shared and found.eid in self.unreachable():
                raise NotFound("no such file")      # only through directories the caller cannot search
            self.on_view(found.eid)      # outside the memo: told after every invalidation
        return found

    def exists(self, path: str) -> bool:
        """Whether `path` names something (RENAME_NOREPLACE's test)."""
        loc = self.resolve(path)
        if isinstance(loc, (LinkLoc, ViewFileLoc)):
            return loc.eid is not None
        return not isinstance(loc, NewKeyLoc)

    def unreachable(self) -> frozenset[int]:
        """Entities the calling user may not reach through a view on a shared mount: every
        directory link of theirs is below a directory the caller cannot search (hkfs.mount.access)."""
        blocked = self._blocked()
        if not blocked:
            return frozenset()
        memo = self.reads.memo()
        key = ("unreachable", blocked)
        found = memo.get(key)
        if found is None:
            found = memo[key] = frozenset(self.store.linked_only_in(blocked))
        return found

    def _blocked(self) -> frozenset[int]:
        """Directories the calling user cannot search down to on a shared mount (hkfs.mount.access)."""
        if not self.shared:
            return frozenset()
        who = self.caller()
        if who is None or who[0] == 0:
            return frozenset()
        uid, gid, pid = who
        groups = caller_groups(pid, gid)
        memo = self.reads.memo()
        key = ("blocked", uid, groups)
        found = memo.get(key)
        if found is None:
            found = memo[key] = frozenset(blocked_dirs(self.store.dir_perms(), uid, groups))
        return found

    def eid_of(self, loc: Location) -> int:
        """The file a location names: NotFound if none, IsADirectory for directories and views."""
        if isinstance(loc, (LinkLoc, ViewFileLoc)) and loc.eid is not None:
            return loc.eid
        if isinstance(loc, (LinkLoc, ViewFileLoc, NewKeyLoc)):
            raise NotFound("no such file")
        raise IsADirectory("is a directory")

    def file(self, path: str) -> int:
        return self.eid_of(self.resolve(path))

    def _where(self, where: str | int) -> Location:
        """A path, or an open file's entity id (f-calls: a removed file has no path)."""
        return LinkLoc(self.root, "", where) if isinstance(where, int) else self.resolve(where)

    # ------------------------------------------------------------ attributes

    def attrs(self, path: str) -> Attrs:
        loc = self.resolve(path)
        if isinstance(loc, DirLoc):
            return self.dir_attrs(loc.dirid)
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            return self.virtual_attrs(loc)
        return self.entity_attrs(self.eid_of(loc))

    def _view_each(self, eids: list[int]) -> None:
        for eid in eids:
            self.on_view(eid)

    def entity_attrs(self, eid: int) -> Attrs:
        return Attrs(*self.entity_values(self.reads.entity(eid)))

    def entity_values(self, info: EntityInfo | EntityStat) -> tuple[int, ...]:
        """A file's attributes (Attrs order, a bare tuple): the catalog's, but size and times
        from the bytes file while open.

        A closed file's size and mtime are what the daemon recorded at its last flush or
        close (fsck's stale-size repairs them after a crash in between), so a listing
        needs no stat(2) per file; an open one may be growing."""
        size, mtime, ctime = info.size, info.mtime_ns, info.ctime_ns
        if info.id in self.open_counts:
            try:
                st = os.stat(f"{self._entities}/{info.id}")
                size, mtime, ctime = st.st_size, st.st_mtime_ns, max(st.st_ctime_ns, ctime)
            except FileNotFoundError:
                pass
        mode = info.mode
        hks = len(info.hks) if isinstance(info, EntityInfo) else info.nhks
        return ((info.id << 2) | 1, link_count(info.nlinks, hks) or 1, mode if mode & 0o170000 else mode | stat.S_IFREG,
                info.uid, info.gid, size, BLKSIZE, (size + 511) // 512, info.atime_ns, mtime, ctime)

    def rdev(self, eid: int) -> int:
        """A device file's number (0 for every other file)."""
        return self.store.rdev(eid)

    def dir_links(self, dirid: int) -> int:
        """A directory's link count: 2 + its subdirectories (the root's '@' is one), as on ext4
        (find and other tree walkers use it to know when a directory has no subdirectory left)."""
        memo = self.reads.memo()
        key = ("subdirs", dirid)
        n = memo.get(key)
        if n is None:
            n = memo[key] = self.store.subdir_count(dirid)
        return 2 + n + (dirid == self.root)

    def dir_attrs(self, dirid: int) -> Attrs:
        d = self.reads.dir(dirid)
        return Attrs(_ino(2, d.id), self.dir_links(dirid), stat.S_IFDIR | (d.mode & 0o7777), d.uid, d.gid, 4096, DIR_BLKSIZE, 8,
                     d.atime_ns, d.mtime_ns, d.ctime_ns)

    def virtual_ino(self, loc: KeySpaceLoc | ViewLoc) -> int:
        key = f"{type(loc).__name__}:{loc.ns}:{format_hk_list(loc.hks)}".encode()
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        return _ino(3, h & ((1 << 58) - 1))

    def virtual_attrs(self, loc: KeySpaceLoc | ViewLoc) -> Attrs:
        """A view's attributes: its last keyword's mode and owner (`own_keyword`), which mkdir,
        chmod and chown set; '@', operator views and what a keyword leaves unset get 0755
        and the mounting user. Times are the mount's start."""
        t = self.start_ns
        mode, uid, gid = 0o755, self.uid, self.gid
        kw = self.own_keyword(loc)
        if kw is not None:
            m, u, g = self._keyword_attrs(loc.ns, kw)
            mode, uid, gid = (mode if m is None else m), (uid if u is None else u), (gid if g is None else g)
        return Attrs(self.virtual_ino(loc), 2, stat.S_IFDIR | mode, uid, gid, 4096, DIR_BLKSIZE, 8, t, t, t)

    @staticmethod
    def own_keyword(loc: KeySpaceLoc | ViewLoc) -> HK | None:
        """The keyword whose directory a view is: its last HK's (`@/photo/2000` is //photo/2000,
        `@/photo/@/animal` and `@/@or/animal` are //animal); None for '@' and the operator
        directories themselves (`@or`, `@untagged`, ...), which have no mode of their own."""
        if isinstance(loc, KeySpaceLoc) or not loc.hks:
            return None
        return term_keyword(loc.hks[-1]) or None

    def fetch_keyword_attrs(self, ns: int, parent: HK) -> None:
        """Memoise the attributes of parent's child keywords with one query (a listing's)."""
        memo = self.reads.memo()
        if ("kwattrs-of", ns, parent) in memo:
            return
        try:
            got = self.store.child_keyword_attrs(ns, parent)
        except NotFound:
            got = {}
        for name, attrs in got.items():
            memo[("kwattrs", ns, parent + (name,))] = attrs
        memo[("kwattrs-of", ns, parent)] = True

    def _keyword_attrs(self, ns: int, kw: HK) -> tuple[int | None, int | None, int | None]:
        memo = self.reads.memo()
        key = ("kwattrs", ns, kw)
        found = memo.get(key)
        if found is None:
            try:
                found = memo[key] = self.store.keyword_attrs(ns, kw)
            except NotFound:          # removed meanwhile: the default
                found = (None, None, None)
        return found

    # ------------------------------------------------------------ listings

    def listdir(self, path: str) -> list[Entry]:
        """A directory's or view's entries, '.' and '..' first: name, type and inode now,
        the attributes when asked (READDIRPLUS asks for all of them at once)."""
        loc = self.resolve(path)
        if isinstance(loc, DirLoc):
            me = _ino(2, loc.dirid)
        elif isinstance(loc, (KeySpaceLoc, ViewLoc)):
            me = self.virtual_ino(loc)
        else:
            self.eid_of(loc)
            raise NotADirectory("not a directory")
        out: list[Entry] = [(".", stat.S_IFDIR, me, None, None), ("..", stat.S_IFDIR, _ino(2, self.root), None, None)]
        if isinstance(loc, DirLoc):
            if loc.dirid == self.root:
                at = KeySpaceLoc(self.ns, (), self.root)
                out.append((AT, stat.S_IFDIR, self.virtual_ino(at), self.virtual_attrs, at))
            for e in self.store.listdir(loc.dirid):
                if e.kind == "dir":
                    out.append((e.name, stat.S_IFDIR, _ino(2, e.id), self.dir_attrs, e.id))
                else:       # the type matters: find -type l, ls and cp trust d_type
                    out.append((e.name, stat.S_IFMT(e.mode) or stat.S_IFREG, _ino(1, e.id),
                                None if e.name.endswith(QUERY_SUFFIX) or is_device(e.mode)
                                else self._linked_values, e.id))
            return out
        last = view_children_of(loc.hks) if isinstance(loc, ViewLoc) else ()
        kids = self.reads.keyword_children(loc.ns, tuple(last)) if last is not None else {}
        if kids:
            self.fetch_keyword_attrs(loc.ns, tuple(last))
        for k in kids:
            kid = ViewLoc(loc.ns, loc.with_child(k), loc.anchor)
            out.append((k, stat.S_IFDIR, self.virtual_ino(kid), self.virtual_attrs, kid))
        if isinstance(loc, ViewLoc):
            self._view_files(loc, kids, out)
        return out

    def _linked_values(self, eid: int) -> tuple[int, ...]:
        return self.entity_values(self.reads.entity(eid))

    def viewed_values(self, info: EntityStat) -> tuple[int, ...]:
        """A view's file as a listing hands it out: now known under a view path."""
        self.on_view(info.id)
        return self.entity_values(info)

    def _view_files(self, view: ViewLoc, keywords: dict[str, None], out: list[Entry]) -> None:
        """Append a view's files (paths.listed_name: STEM~ID.EXT, ',NAME'). One pass, no call
        per file for the common name: a view may hold 100k files."""
        attrs, reg, add, q, dev = self.viewed_values, stat.S_IFREG, out.append, QUERY_SUFFIX, is_device
        hide = self.unreachable() if self.shared else ()
        for name, e in self.reads.listing(view.ns, tuple(view.hks)).items():
            if hide and (e.id in hide if type(e) is not list else any(x.id in hide for x in e)):
                if type(e) is not list:
                    continue
                e = [x for x in e if x.id not in hide]
            if type(e) is list:
                for x in e:
                    n = clash_name(name, x.id)
                    add((n, x.mode & 0o170000 or reg, (x.id << 2) | 1,
                         None if n.endswith(q) or dev(x.mode) else attrs, x))
                continue
            n = listed_name(name, e.id, shared=False, keyword=True) if name in keywords else name
            add((n, e.mode & 0o170000 or reg, (e.id << 2) | 1, None if n.endswith(q) or dev(e.mode) else attrs, e))

    # ------------------------------------------------------------ what changes leave stale

    def entity_stale(self, eid: int) -> Stale:
        """Entity eid's attributes changed (size, times, mode, owner, link count)."""
        try:
            info = self.reads.entity(eid)
        except NotFound:
            return NOTHING                          # gone: no path left to be stale
        # an embedding entry's rows change what FILE.query files (sizes included) answer
        return Stale(eid=eid, shared=info.nlinks > 1 or entry_kind(info.name) is not None)

    def written(self, eid: int, size: int, mtime_ns: int) -> Stale:
        """Record the size and mtime of bytes written through a descriptor (for hk ls, the CLI)."""
        try:
            self.store.set_attrs(eid, size=size, mtime_ns=mtime_ns)
        except NotFound:
            pass   # the entity went (an editor's temp file renamed over its original)
        return self.entity_stale(eid)

    # ------------------------------------------------------------ files

    def create(self, path: str, mode: int, uid: int, gid: int) -> tuple[int, Stale]:
        """A new file at `path` (EEXIST if something is there): in a directory a link, in a
        view an entity carrying the view's HKs. mode may carry S_IFLNK (a symlink)."""
        loc = self.resolve(path)
        perm = stat.S_IFMT(mode) | (mode & 0o7777)
        if isinstance(loc, LinkLoc) and loc.eid is None:
            check_new_name(loc.name)
            d = self.store.dir(loc.dirid)
            ns = d.owner_ns
            gid = d.gid if d.mode & stat.S_ISGID else gid        # the BSD group rule of setgid dirs
            eid = self.store.create(ns, loc.name, directory=loc.dirid, mode=perm, uid=uid, gid=gid)
        elif isinstance(loc, ViewFileLoc) and loc.eid is None:
            check_new_name(loc.name)
            _check_home(loc)
            check_writable_view(loc.view.hks)
            ns = loc.view.ns
            eid = self.store.create(ns, loc.name, hks=loc.view.hks, mode=perm, uid=uid, gid=gid)
            self.on_view(eid)
            if is_scratch_name(loc.name):
                self._remember(self._scratch, eid)
            self._remember(self._made_in_view, eid)
        elif isinstance(loc, NewKeyLoc):
            raise NotFound("a file in the keyword space needs a keyword: create it in a view")
        else:
            raise AlreadyExists("file exists")
        if stat.S_IFMT(mode) in (0, stat.S_IFREG):
            self._note_fresh(eid)        # a temp an editor may rename over its document
        clashes = tuple(e for e in self.store.match_ids(ns, [], loc.name) if e != eid)
        return eid, Stale(clashes=clashes) if clashes else NOTHING

    def mknod(self, path: str, mode: int, dev: int, uid: int, gid: int) -> Stale:
        """mkfifo, mknod, bind(2) of a unix socket: an entity whose file type is in its mode,
        with an empty bytes file; a device's number is kept in the catalog. The kernel, not
        the daemon, serves what is done with them (a FIFO's pipe, a socket's peer)."""
        eid, stale = self.create(path, mode, uid, gid)
        if is_device(mode):
            self.store.set_rdev(eid, dev)
        return stale

    def symlink(self, path: str, target: str, uid: int, gid: int) -> Stale:
        """`ln -s target path`: an entity holding the link text."""
        eid, _ = self.create(path, stat.S_IFLNK | 0o777, uid, gid)
        entity_bytes.write_symlink(self.store, eid, target)
        return EVERYTHING

    def readlink(self, path: str) -> str:
        info = self.store.entity(self.file(path))
        if not _is_symlink(info):
            raise InvalidArgument("not a symbolic link")
        return entity_bytes.read_symlink(self.store, info.id)

    def unlink(self, path: str) -> Stale:
        """rm: a directory link goes (the file with it if that was its last home); in a view
        the file leaves the view (`leave_view`)."""
        loc = self.resolve(path)
        eid = self.eid_of(loc)
        scratch = self._is_scratch(eid)
        self._forget_fresh(eid)
        if isinstance(loc, LinkLoc):
            shared = self.reads.entity(eid).nlinks > 1
            self.store.unlink(loc.dirid, loc.name)
            return Stale(eid=eid, shared=shared)
        assert isinstance(loc, ViewFileLoc)
        self.leave_view(eid, loc.view, scratch=scratch)
        return EVERYTHING

    def leave_view(self, eid: int, view: ViewLoc, *, scratch: bool = False) -> None:
        """rm in a view: detach the file's HKs that the view's HKs match (it never deletes
        bytes), except a `scratch` file this would leave with no HK and no directory link:
        a tool's working file, deleted as on any file system (is_scratch_name)."""
        if not view.hks:
            raise NotPermitted("this view has no keyword to detach; use hk rme to delete a file")
        info = self.store.entity(eid)
        gone = detach_set(info.hks, view.hks)
        if scratch and not info.nlinks and set(gone) == set(info.hks):
            self.store.rme(eid)
        elif gone:
            self.store.dtkw(eid, gone)

    def link(self, source: str, target: str) -> Stale:
        """`ln source target`: another directory link, or (into a view) the view's HKs attached."""
        eid = self.file(source)
        dst = self.resolve(target)
        if isinstance(dst, (LinkLoc, ViewFileLoc)) and dst.eid is not None:
            raise AlreadyExists("file exists")
        if isinstance(dst, ViewFileLoc):
            check_new_name(dst.name)
            _check_home(dst)
            if not _names_file(dst.name, eid, self.store.entity(eid).name):
                # a file has one name in every view: a second name there cannot be made, and
                # doing the link as a rename would break link-then-unlink tools (git's object
                # files, lock files), which fall back to rename(2) on EPERM
                raise NotPermitted("a file has one name in every view: ln FILE VIEW/ keeps its "
                                   "name; mv renames it")
        self._forget_fresh(eid)
        if isinstance(dst, LinkLoc):
            check_new_name(dst.name)
            self.store.link(eid, dst.dirid, dst.name)
        elif isinstance(dst, ViewFileLoc):
            self._enter_view(eid, dst)
        elif isinstance(dst, NewKeyLoc):
            raise NotFound("no such keyword")
        else:
            raise AlreadyExists("file exists")
        return EVERYTHING

    def _enter_view(self, eid: int, dst: ViewFileLoc) -> None:
        """Attach what the view needs (the file keeps its name: `link`)."""
        add = attach_set(self.store.entity(eid).hks, dst.view.hks)
        if add:
            self.store.atkw(eid, add)

    # ------------------------------------------------------------ rename

    def rename(self, old: str, new: str, *, noreplace: bool = False) -> Stale:
        """mv old new; `noreplace` (RENAME_NOREPLACE): AlreadyExists if new names something."""
        src = self.resolve(old)
        if noreplace and self.exists(new):
            raise AlreadyExists("file exists")
        if isinstance(src, DirLoc):
            self._rename_dir(src, old, new)
            return EVERYTHING
        if isinstance(src, (KeySpaceLoc, ViewLoc)):
            self._rename_keyword(src, new)
            return EVERYTHING
        eid = self.eid_of(src)
        dst = self.resolve(new)
        if isinstance(dst, (DirLoc, KeySpaceLoc, ViewLoc)):
            raise IsADirectory("is a directory")
        if isinstance(dst, NewKeyLoc):
            raise NotFound("no such keyword")
        assert isinstance(src, (LinkLoc, ViewFileLoc)) and isinstance(dst, (LinkLoc, ViewFileLoc))
        check_new_name(dst.name)
        if isinstance(dst, ViewFileLoc):
            _check_home(dst)
        over = dst.eid if dst.eid is not None and dst.eid != eid else None
        if over is not None and self.is_editor_save(src, eid, dst):
            self._forget_fresh(eid)
            entity_bytes.replace_bytes(self.store, eid, over)
            return Stale(everything=True, merged=(eid, over))
        self._forget_fresh(eid)
        if dst.eid == eid and isinstance(dst, ViewFileLoc) and isinstance(src, ViewFileLoc) \
                and dst.name == src.name:
            return EVERYTHING
        if isinstance(src, LinkLoc) and isinstance(dst, LinkLoc):
            self.store.rename(src.dirid, src.name, dst.dirid, dst.name)    # rename(2), over included
            return EVERYTHING
        if isinstance(dst, LinkLoc):
            assert isinstance(src, ViewFileLoc)
            if over is not None:
                self.store.unlink(dst.dirid, dst.name)       # the name must be free for the link
            self.store.link(eid, dst.dirid, dst.name)
            if src.view.hks:
                gone = detach_set(self.store.entity(eid).hks, src.view.hks)
                if gone:
                    self.store.dtkw(eid, gone)
            return EVERYTHING
        # Into a view: the source takes the name first, then the file it replaces goes, so a
        # crash in between leaves both files (under clash names), never neither.
        if isinstance(src, ViewFileLoc):
            self.move_between_views(eid, src.view, dst.view)
            if dst.name != src.name:
                self.store.chfn(eid, dst.name)
        else:
            info = self.store.entity(eid)
            add = attach_set(info.hks, dst.view.hks)
            if add:
                self.store.atkw(eid, add)
            self.store.unlink(src.dirid, src.name)
            if info.name != dst.name:
                self.store.chfn(eid, dst.name)
        if over is not None:
            self._replaced_in_view(over, dst.view)
        return EVERYTHING

    def exchange(self, old: str, new: str) -> Stale:
        """RENAME_EXCHANGE of two entries of ordinary directories; in views (where a file's
        place is its keywords) it is refused with EINVAL, never done as something else."""
        places = []
        for path in (old, new):
            loc = self.resolve(path)
            if isinstance(loc, DirLoc):
                if loc.dirid == self.root:
                    raise Busy("the mount's root")
                parent_path, name = _split(path)
                parent = self.resolve(parent_path)
                if not isinstance(parent, DirLoc):
                    raise InvalidArgument("RENAME_EXCHANGE works in ordinary directories only")
                places.append((parent.dirid, name))
            elif isinstance(loc, LinkLoc):
                if loc.eid is None:
                    raise NotFound("no such file")
                self._forget_fresh(loc.eid)
                places.append((loc.dirid, loc.name))
            else:
                raise InvalidArgument("RENAME_EXCHANGE works in ordinary directories only")
        (a_dir, a_name), (b_dir, b_name) = places
        self.store.exchange(a_dir, a_name, b_dir, b_name)
        return EVERYTHING

    def _replaced_in_view(self, eid: int, view: ViewLoc) -> None:
        """The file a rename in a view replaced: it leaves the view, and is deleted when
        that was its last home (as rename(2) deletes a file whose last link it replaces)."""
        info = self.store.entity(eid)
        gone = detach_set(info.hks, view.hks)
        if not info.nlinks and len(gone) == len(info.hks):
            self.store.rme(eid)
        elif gone:
            self.store.dtkw(eid, gone)

    def _rename_dir(self, src: DirLoc, old: str, new: str) -> None:
        sp, sname = _split(old)
        dp, dname = _split(new)
        sparent, dparent = self.resolve(sp), self.resolve(dp)
        if not isinstance(sparent, DirLoc) or src.dirid == self.root:
            raise Busy("the root and '@' paths cannot be moved")
        if not isinstance(dparent, DirLoc):
            raise CrossDevice("a directory cannot go into a view")
        check_new_name(dname)
        self.store.rename(sparent.dirid, sname, dparent.dirid, dname)

    def _rename_keyword(self, src: KeySpaceLoc | ViewLoc, new: str) -> None:
        """`mv @/old @/new/place`: Store.move_keyword (hk mvkw). Onto an existing keyword as
        rename(2) onto a directory: an empty one (no file, no child) is replaced, else ENOTEMPTY."""
        if not (isinstance(src, ViewLoc) and src.keyword):
            raise NotPermitted("'@' and ',' are path syntax: only a keyword directory moves")
        dst = self.resolve(new)
        if isinstance(dst, NewKeyLoc):
            parent: KeySpaceLoc | ViewLoc = dst.parent
            target = parent.child_hk(dst.name)
        elif isinstance(dst, ViewFileLoc) and dst.eid is None:
            parent, target = dst.view, dst.view.child_hk(dst.name)
        elif isinstance(dst, ViewLoc) and dst.keyword:
            parent, target = dst, dst.hks[-1]
        elif isinstance(dst, (DirLoc, LinkLoc)):
            # not EXDEV: mv would copy the tree and then rm in the view, detaching every file
            raise NotPermitted("a keyword cannot become an ordinary directory")
        else:
            raise NotADirectory("a file has that name")
        if parent.ns != src.ns:
            raise NotPermitted("a keyword stays in its namespace")
        check_new_name(target[-1])
        try:
            self.store.move_keyword(src.ns, src.hks[-1], target, replace_empty=True)
        except AlreadyExists as exc:
            raise NotEmpty(str(exc)) from exc

    def move_between_views(self, eid: int, src: ViewLoc, dst: ViewLoc) -> None:
        """mv between views: drop what only the source view matched, add what the destination needs."""
        if src.hks == dst.hks and src.ns == dst.ns:
            return
        carried = self.store.entity(eid).hks
        gone = set(detach_set(carried, src.hks))
        keep = [h for h in carried if h not in gone or any(hk_matches(q, h) for q in dst.hks)]
        new = keep + attach_set(keep, dst.hks)
        if set(new) != set(carried):
            self.store.set_hks(eid, new)

    def is_editor_save(self, src: LinkLoc | ViewFileLoc, eid: int, dst: LinkLoc | ViewFileLoc) -> bool:
        """Whether renaming file eid over dst.eid is an editor's save (docs/mount.md, "Editor saves").

        All of: eid was created through this mount less than EDITOR_SAVE_SECONDS ago and has
        not been renamed or linked since; it lives only where the rename takes it from (no
        other link; in a view, no HK beyond the view's and the destination's); it has the
        destination's owner; both are regular files; and a destination in an ordinary directory
        has no other hard link (those keep the old bytes, as rename(2) leaves them)."""
        assert dst.eid is not None
        if not self._is_fresh(eid):
            return False         # an ordinary mv over a file: no catalog read
        info, old = self.store.entity(eid), self.store.entity(dst.eid)
        if stat.S_IFMT(info.mode) or stat.S_IFMT(old.mode) or info.uid != old.uid:
            why = "not two regular files of one owner"   # only regular files (type bits 0) are saved by editors
        elif isinstance(dst, LinkLoc) and old.nlinks > 1:
            why = "the destination has other links"
        elif isinstance(src, LinkLoc):
            why = "" if info.nlinks == 1 and not info.hks else "the temp has other links or keywords"
        elif info.nlinks:
            why = "the temp has directory links"
        else:
            why = "" if all(h in src.view.hks or h in old.hks for h in info.hks) else "the temp has other keywords"
        if why:
            # a fresh file renamed over another as a plain rename: say why in the daemon log
            # (an editor's save that loses the document's identity is worth tracing)
            log.info("rename of new file %d over %d is no editor save: %s (temp %s, destination %s)",
                     eid, dst.eid, why, info, old)
        return not why

    def _copied_keywords(self, path: str, eid: int, hks: tuple[HK, ...]) -> tuple[HK, ...]:
        """The HKs a file gets when user.hk.keywords is set on it: hks, plus the view's own the
        first time it is set on a file just made in that view through this mount. That is
        `cp -a`/`rsync -X`/`tar --xattrs` copying a file's keywords into a view: the copy keeps
        its keywords and stays where it was made (docs/mount.md, "Extended attributes")."""
        with self._fresh_lock:
            first = self._made_in_view.pop(eid, 0) is None
        if not first or not self._is_fresh(eid):
            return hks
        if not isinstance(self.resolve(path), ViewFileLoc):
            return hks
        return tuple(dict.fromkeys((*self.store.entity(eid).hks, *hks)))

    def _is_fresh(self, eid: int) -> bool:
        """eid was created through this mount under EDITOR_SAVE_SECONDS ago, never renamed or linked."""
        with self._fresh_lock:
            born = self._fresh.get(eid)
        return born is not None and self._clock() - born <= EDITOR_SAVE_SECONDS

    def _note_fresh(self, eid: int) -> None:
        now = self._clock()
        with self._fresh_lock:
            if len(self._fresh) > 1024:
                self._fresh = {e: t for e, t in self._fresh.items() if now - t <= EDITOR_SAVE_SECONDS}
            self._fresh[eid] = now

    def _forget_fresh(self, eid: int) -> None:
        """eid was renamed, linked or removed: it is no longer a fresh temp, nor scratch."""
        with self._fresh_lock:
            self._fresh.pop(eid, None)
            self._scratch.pop(eid, None)
            self._made_in_view.pop(eid, None)

    def _remember(self, marks: dict[int, None], eid: int) -> None:
        """Mark eid in one of the bounded sets of this mount's own recent files."""
        with self._fresh_lock:
            marks[eid] = None
            while len(marks) > SCRATCH_MAX:
                del marks[next(iter(marks))]

    def _is_scratch(self, eid: int) -> bool:
        with self._fresh_lock:
            return eid in self._scratch

    # ------------------------------------------------------------ directories and keywords

    def mkdir(self, path: str, mode: int, uid: int, gid: int) -> Stale:
        """In a directory a directory; under '@' or in a view a keyword (it may take the name
        of a file of the view: the keyword wins, ',NAME' reaches the file)."""
        loc = self.resolve(path)
        if isinstance(loc, LinkLoc):
            if loc.eid is not None:
                raise AlreadyExists("file exists")
            check_new_name(loc.name)
            parent = self.store.dir(loc.dirid)
            if parent.mode & stat.S_ISGID:      # a setgid directory's group and bit go down (as ext4)
                gid, mode = parent.gid, mode | stat.S_ISGID
            self.store.mkdir(loc.dirid, loc.name, mode=mode & 0o7777, uid=uid, gid=gid)
            return NOTHING
        # a keyword directory keeps the mode (umask applied by the kernel) and owner it is made with
        if isinstance(loc, NewKeyLoc):
            self.store.mkkw(loc.parent.ns, loc.parent.child_hk(loc.name), mode=mode & 0o7777, uid=uid, gid=gid)
            return EVERYTHING            # a keyword shadows files of that name in its parent's views
        if isinstance(loc, ViewFileLoc):
            check_new_name(loc.name)
            _check_home(loc)
            self.store.mkkw(loc.view.ns, loc.view.child_hk(loc.name), mode=mode & 0o7777, uid=uid, gid=gid)
            return EVERYTHING
        raise AlreadyExists("file exists")

    def rmdir(self, path: str) -> Stale:
        loc = self.resolve(path)
        if isinstance(loc, DirLoc):
            if loc.dirid == self.root:
                raise Busy("the mount's root")
            self.store.rmdir(loc.dirid)
            return NOTHING
        if isinstance(loc, ViewLoc) and loc.keyword:
            self.store.rmkw(loc.ns, loc.hks[-1])
            return EVERYTHING            # ',NAME' files of its parent's views take their plain names
        if isinstance(loc, (ViewLoc, KeySpaceLoc)):
            raise Busy("'@' and ',' are part of every directory")
        raise NotADirectory("not a directory")

    # ------------------------------------------------------------ inode changes

    def chmod(self, where: str | int, mode: int) -> Stale:
        loc = self._where(where)
        if isinstance(loc, DirLoc):
            self.store.set_dir_attrs(loc.dirid, mode=mode & 0o7777)
            return NOTHING
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            kw = self.own_keyword(loc)
            if kw is not None:
                self.store.set_keyword_attrs(loc.ns, kw, mode=mode & 0o7777)
                return EVERYTHING         # shown under every view path that ends in that keyword
            if mode & 0o7777 != self.virtual_attrs(loc).mode & 0o7777:
                raise NotPermitted("'@' and operator views have no mode of their own")   # same mode: tar x
            return NOTHING
        eid = self.eid_of(loc)
        self.store.set_attrs(eid, mode=mode & 0o7777)
        return self.entity_stale(eid)

    def chown(self, where: str | int, uid: int | None, gid: int | None) -> Stale:
        loc = self._where(where)
        if isinstance(loc, DirLoc):
            self.store.set_dir_attrs(loc.dirid, uid=uid, gid=gid)
            return NOTHING
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            kw = self.own_keyword(loc)
            if kw is not None:
                self.store.set_keyword_attrs(loc.ns, kw, uid=uid, gid=gid)
                return EVERYTHING
            if uid not in (None, self.uid) or gid not in (None, self.gid):
                raise NotPermitted("'@' and operator views have no owner of their own")  # same owner: tar x
            return NOTHING
        eid = self.eid_of(loc)
        self.store.set_attrs(eid, uid=uid, gid=gid)
        return self.entity_stale(eid)

    def utimens(self, where: str | int, atime_ns: int | None, mtime_ns: int | None) -> Stale:
        """Set times (None keeps one); views have none to set (a no-op, as touch expects)."""
        loc = self._where(where)
        if isinstance(loc, DirLoc):
            self.store.set_dir_attrs(loc.dirid, atime_ns=atime_ns, mtime_ns=mtime_ns)
            return NOTHING
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            return NOTHING
        eid = self.eid_of(loc)
        entity_bytes.set_times(self.store, eid, atime_ns, mtime_ns)
        return self.entity_stale(eid)

    def truncate(self, where: str | int, length: int, fd: int | None = None) -> Stale:
        eid = self.eid_of(self._where(where))
        entity_bytes.truncate(self.store, eid, length, fd)
        return self.entity_stale(eid)

    # ------------------------------------------------------------ extended attributes

    def _xattr_target(self, path: str) -> tuple[str, int]:
        loc = self.resolve(path)
        if isinstance(loc, DirLoc):
            return "dir", loc.dirid
        if isinstance(loc, (KeySpaceLoc, ViewLoc)):
            return "view", 0
        return "file", self.eid_of(loc)

    def getxattr(self, path: str, name: str) -> bytes:
        if name.startswith(COMPLETE_ATTR):            # the shells' Tab (hkfs.core.completion)
            loc = self.resolve(path)
            if isinstance(loc, DirLoc):
                ns = self.store.dir(loc.dirid).ns
            elif isinstance(loc, (ViewLoc, KeySpaceLoc)):
                ns = loc.ns
            else:                                     # files have no completions
                raise NoAttribute(name)
            return "\n".join(complete_word(name[len(COMPLETE_ATTR):], self.store.keywords(ns))).encode()
        kind, ident = self._xattr_target(path)
        if kind == "file" and name == KEYWORDS_ATTR:
            return format_hk_list(self.store.entity(ident).hks).encode()
        if kind == "file" and name == INFO_ATTR:
            return self.info_text(ident)
        if kind == "file" and (body := self.read_file_attr(ident, name)) is not None:
            return body                 # user.hk.query
        if kind == "dir" and name == DKL_ATTR:
            return format_hk_list(self.store.dir(ident).dkl).encode()
        if kind == "dir" and name == NS_ATTR:
            return self.store.namespace_user(self.store.dir(ident).ns).encode()
        if kind == "view" or not name.startswith("user."):
            raise NoAttribute(name)
        try:
            return self.store.get_xattr(kind, ident, name)
        except NotFound:
            raise NoAttribute(name) from None

    def info_text(self, eid: int) -> bytes:
        """`hk info` through the mount, as JSON: the file's entity id, name and namespace, and
        its directory links the caller can reach ([path, None] in the mount's tree, [path,
        user] in another namespace's); links below a directory it cannot search are left out."""
        info = self.store.entity(eid)
        blocked = self._blocked()
        links = []
        for dirid, name in self.store.links(eid):
            if dirid in blocked:
                continue
            d = self.store.dir(dirid)
            tree = None if d.owner_ns == self.ns else self.store.namespace_user(d.owner_ns)
            links.append([self.store.dir_path(dirid).rstrip("/") + "/" + name, tree])
        return json.dumps({"id": eid, "name": info.name, "namespace": self.store.namespace_user(info.ns),
                           "links": links}).encode()

    def listxattr(self, path: str) -> list[str]:
        kind, ident = self._xattr_target(path)
        if kind == "view":
            return []
        # user.hk.keywords is listed only when the file carries an HK: copying "no keyword"
        # (cp -a, rsync -X of an untagged file into a view) would untag the copy into lost+found
        if kind == "file":
            own = [KEYWORDS_ATTR] if self.reads.entity(ident).hks else []
        else:
            own = [DKL_ATTR, NS_ATTR]
        return own + [n for n in self.store.list_xattrs(kind, ident) if n.startswith("user.")]

    def setxattr(self, path: str, name: str, value: bytes, options: int = 0) -> Stale:
        """user.hk.keywords retags a file, user.hk.dkl / user.hk.ns set a directory's DKL /
        namespace, other user.* names are stored; options: XATTR_CREATE / XATTR_REPLACE."""
        kind, ident = self._xattr_target(path)
        if kind == "file" and self.claim_file_attr(ident, name, value):
            return EVERYTHING             # user.hk.embedding / user.hk.dim (raw float32 allowed)
        text = value.decode("utf-8", "strict").strip() if name.startswith("user.hk.") else ""
        if kind == "file" and name == KEYWORDS_ATTR:
            hks = parse_hk_list(text) if text else ()
            self.store.set_hks(ident, self._copied_keywords(path, ident, hks))
        elif kind == "dir" and name == DKL_ATTR:
            self.store.set_dkl(ident, parse_hk_list(text) if text else ())
        elif kind == "dir" and name == NS_ATTR:
            if not text:
                raise InvalidArgument("empty user name")
            self.store.chns(ident, text)
        elif kind == "view" or not name.startswith("user."):
            raise NotSupported(f"{name}: not an attribute this file system keeps here")
        elif name.startswith("user.hk."):
            raise InvalidArgument(f"{name} is not an hkfs attribute of a {kind}")
        else:
            if options & (XATTR_CREATE | XATTR_REPLACE):
                try:
                    self.store.get_xattr(kind, ident, name)
                    exists = True
                except NotFound:
                    exists = False
                if exists and options & XATTR_CREATE:
                    raise AlreadyExists(f"{name} exists")
                if not exists and options & XATTR_REPLACE:
                    raise NoAttribute(name)
            self.store.set_xattr(kind, ident, name, value)
        return EVERYTHING

    def removexattr(self, path: str, name: str) -> Stale:
        kind, ident = self._xattr_target(path)
        if kind == "file" and name == KEYWORDS_ATTR:
            self.store.set_hks(ident, ())
        elif kind == "dir" and name == DKL_ATTR:
            self.store.set_dkl(ident, ())
        elif kind == "dir" and name == NS_ATTR:
            raise NotPermitted("a directory always refers to a namespace")
        elif kind == "view" or not name.startswith("user."):
            raise NoAttribute(name)
        else:
            try:
                self.store.remove_xattr(kind, ident, name)
            except NotFound:
                raise NoAttribute(name) from None
        return EVERYTHING


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rstrip("/").rpartition("/")
    return parent or "/", name
