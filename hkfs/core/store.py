"""The store: the paper's operations as a Python API over the SQLite catalog
and the entity files (STORE/entities/<id>).

Every public method is one transaction (BEGIN IMMEDIATE for writes), so a crash
between two calls leaves the catalog consistent. Bytes are created before the
row that names them is committed and deleted only after the row's deletion is
committed: a crash can leave an orphan file (fsck removes it), never a row
without bytes. Safe from many threads (a connection per thread, WAL) and from
many processes (SQLite locking). See docs/store.md.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import functools
import json
import logging
import os
import pwd
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Literal, NamedTuple

from .catalog import Catalog
from .changes import run_commit_hooks
from .errors import (
    AlreadyExists,
    HKError,
    InvalidArgument,
    IsADirectory,
    KeywordInUse,
    NameClash,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    StoreLocked,
)
from .naming import (
    HK,
    Atom,
    clash_name,
    compile_query,
    format_hk,
    has_operators,
    hk_matches,
    parse_hk,
    term_keyword,
    validate_component,
    validate_name,
)

__all__ = ["Store", "EntityInfo", "EntityStat", "DirInfo", "DirEntry", "EntityColumns", "INT_COLUMNS", "LOST_FOUND", "CATALOG", "ENTITIES"]

log = logging.getLogger(__name__)

LOST_FOUND = "lost+found"
CATALOG = "catalog.sqlite"
ENTITIES = "entities"
LOCK = "lock"
# How many candidates to count per HK when choosing the most selective one to drive a query.
_ESTIMATE_CAP = 20_000


@dataclass(frozen=True)
class EntityInfo:
    """A file entity: its bytes live in STORE/entities/<id>, apart from any directory."""

    id: int
    ns: int
    name: str
    size: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlinks: int               # number of directory links
    hks: tuple[HK, ...]


class EntityStat(NamedTuple):
    """What a listing needs of a file entity (no HKs: cheap for 100k-file views)."""

    id: int
    name: str
    size: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlinks: int
    nhks: int                 # number of HKs carried


# The columns of an EntityStat, in its order, for the queries that list a view's files.
_STAT_SELECT = ("SELECT e.id, e.name, e.size, e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.ctime_ns, "
                "(SELECT count(*) FROM links l WHERE l.entity = e.id), "
                "(SELECT count(*) FROM entity_keywords x WHERE x.entity = e.id) FROM entities e")
# The integers among their first nine (all but the name), for entities with ids in a range
# (entity_columns_between): packed by hkfs_int64s() (hkfs.core.aggregates), or as text
INT_COLUMNS = tuple(f for f in EntityStat._fields[:9] if f != "name")
_RANGE = " FROM entities WHERE id BETWEEN ? AND ?"
_COLUMNS_PACKED = f"SELECT hkfs_int64s({', '.join(INT_COLUMNS)}), group_concat(name, '/')" + _RANGE
_COLUMNS_TEXT = ("SELECT " + ", ".join(f"group_concat({f})" for f in INT_COLUMNS) + ", group_concat(name, '/')"
                 + _RANGE)


class EntityColumns(NamedTuple):
    """Entities with ids in a range as columns (Store.entity_columns_between). Integers are
    either packed (bytes: native int64, `ints` row-major in INT_COLUMNS order) or text
    (values joined by ','; `ints` one text per column)."""

    ints: bytes | tuple[str, ...]
    names: str                 # joined by '/', which no file name holds
    tagged: bytes | str        # the entity of each of their HKs (entity_keywords rows)
    linked: bytes | str        # the entity of each of their directory links


@dataclass(frozen=True)
class DirInfo:
    """An ordinary directory; `ns` is the namespace its ',' refers to (chns), `owner_ns` where it lives."""

    id: int
    parent: int | None
    name: str
    ns: int
    owner_ns: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    dkl: tuple[HK, ...]


@dataclass(frozen=True)
class DirEntry:
    name: str
    kind: Literal["dir", "file"]
    id: int
    mode: int = 0             # listdir: a file entity's mode (S_IFLNK: a symlink); 0 for dirs and from lookup


# ---------------------------------------------------------------- helpers

_ENTITY_TYPES = (0, stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


def _entity_mode(mode: int, old: int = 0) -> int:
    """An entity's stored mode: permission bits plus file-type bits, S_IFLNK for a symlink
    and 0 for a regular file (S_IFREG is stored as 0, as in rows older than symlinks).
    Without type bits the type of `old` is kept (chmod never turns a symlink into a file)."""
    kind = stat.S_IFMT(mode)
    if kind not in _ENTITY_TYPES:
        raise InvalidArgument(f"a file entity cannot have file type {oct(kind)}")
    if not kind:
        kind = stat.S_IFMT(old)
    return (0 if kind == stat.S_IFREG else kind) | (mode & 0o7777)


def _now() -> int:
    return time.time_ns()


def _as_hk(hk: HK | str) -> HK:
    """Accept an HK tuple (validated) or its text '//a/b'."""
    if isinstance(hk, str):
        return parse_hk(hk)
    hk = tuple(hk)
    for c in hk:
        validate_component(c)
    return hk


def _hks(hks: Iterable[HK | str]) -> list[HK]:
    out: list[HK] = []
    for h in hks:
        h = _as_hk(h)
        if not h:
            raise InvalidArgument("the root '//' is not a keyword")
        if h not in out:
            out.append(h)
    return out


def _path(hk: HK) -> str:
    return "/" + "/".join(hk) + "/"


def _hk_of_path(path: str) -> HK:
    return tuple(path[1:-1].split("/"))


def _range(hk: HK) -> tuple[str, str]:
    """The index range of hk's subtree (itself included) over keywords.path."""
    p = _path(hk)
    return p, p[:-1] + "0"


def _sorted_hks(tags: str | None) -> tuple[HK, ...]:
    """The HKs of a tags string ',/a/b/,/c/,'."""
    if not tags:
        return ()
    return tuple(sorted(_hk_of_path(p) for p in tags.split(",") if p))


@functools.lru_cache(maxsize=1 << 16)
def _valid_path(h: HK | str) -> str:
    """The keywords.path of one HK as given (validated; the root refused); memoized for bulk_create."""
    return _path(_hks([h])[0])


def _tags(paths: Iterable[str]) -> str:
    """',/a/b/,/c/,': every carried path between commas, so instr(tags, ',/a/') tests a subtree."""
    return "," + ",".join(sorted(set(paths))) + ","


_ENTITY_COLS = ("e.id, e.ns, e.name, e.size, e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.ctime_ns, "
                "(SELECT count(*) FROM links l WHERE l.entity = e.id), "
                "(SELECT x.tags FROM entity_keywords x WHERE x.entity = e.id LIMIT 1)")


def _entity_of_row(r: tuple) -> EntityInfo:
    return EntityInfo(*r[:11], hks=_sorted_hks(r[11]))


class Store:
    """A store directory: catalog.sqlite, entities/<id>, lock. Open with Store.open(path)."""

    def __init__(self, root: Path, catalog: Catalog) -> None:
        self.root = root
        self.catalog = catalog
        self.entities_dir = root / ENTITIES
        self._lock_fd: int | None = None
        # called after each commit while this Store holds the lock (the daemon's own commits)
        self.on_locked_commit: Callable[[], None] | None = None
        catalog.on_commit = self._after_commit

    def _after_commit(self) -> None:
        """Tell others at once (the commit hooks: a mounted store's daemon drops the kernel's
        caches before this process goes on, see hkfs.core.changes).

        Not in the daemon (it holds the lock and invalidates for its own changes)."""
        if self._lock_fd is None:
            run_commit_hooks(self.root)
        elif self.on_locked_commit is not None:
            self.on_locked_commit()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True, readonly: bool = False,
             repair: bool = False) -> Store:
        """Open (and with create, make) the store at path; migrates an older catalog.

        readonly: writes nothing at all (a check): no schema, no migration, no entities/.
        repair: make tables missing from a damaged catalog again, empty (hk fsck --repair)."""
        root = Path(path).absolute()
        if not (root / CATALOG).exists():
            if not create or readonly:
                raise NotFound(f"no hkfs store at {root}")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)    # private: see docs/store.md
            os.close(os.open(root / CATALOG, os.O_WRONLY | os.O_CREAT, 0o600))
        if readonly:
            return cls(root, Catalog(root / CATALOG, readonly=True))
        (root / ENTITIES).mkdir(exist_ok=True)
        return cls(root, Catalog(root / CATALOG, repair=repair))

    def close(self) -> None:
        """Close every connection and release the lock."""
        self.unlock()
        self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self) -> None:
        """Exclusive flock on STORE/lock (held by the mounting daemon); StoreLocked if taken."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (_errno.EWOULDBLOCK, _errno.EAGAIN):
                raise StoreLocked(f"store {self.root} is in use by another process (locked)") from exc
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def sync(self, *, entities: bool = True) -> None:
        """What an fsync promises beyond a file's bytes: its name and attributes (catalog rows)
        and (`entities`: when files were made or moved there since the last sync) its bytes
        file's name in entities/ survive a power loss."""
        if entities:
            fd = os.open(self.entities_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.catalog.sync()

    def entity_path(self, eid: int) -> Path:
        """STORE/entities/<eid>, opened directly by the mount for read/write."""
        return self.entities_dir / str(int(eid))

    # ------------------------------------------------------------ namespaces

    def namespace_id(self, user: str | int) -> int:
        """The namespace of a user name or uid, created on first use."""
        name, uid, gid = self._user(user)
        with self.catalog.read() as c:
            r = c.execute("SELECT id FROM namespaces WHERE user = ?", (name,)).fetchone()
        if r:
            return r[0]
        with self.catalog.write() as c:
            return self._ns_id(c, user)

    @staticmethod
    def _user(user: str | int) -> tuple[str, int, int]:
        if isinstance(user, int):
            try:
                pw = pwd.getpwuid(user)
                return pw.pw_name, pw.pw_uid, pw.pw_gid
            except KeyError:
                return str(user), user, user
        if not user or "/" in user or "\0" in user:
            raise InvalidArgument(f"bad user name {user!r}")
        try:
            pw = pwd.getpwnam(user)
            return pw.pw_name, pw.pw_uid, pw.pw_gid
        except KeyError:
            if user.isdigit():
                return user, int(user), int(user)
            return user, os.getuid(), os.getgid()

    def known_user(self, user: str | int) -> bool:
        """A user of this system (passwd) or one that already has a namespace here: what
        chns and the CLI's --user accept (a mistyped name must not make a new namespace)."""
        with self.catalog.read() as c:
            return self._known_user(c, user)

    def _known_user(self, c: sqlite3.Connection, user: str | int) -> bool:
        """A user of this system (passwd) or one that already has a namespace here."""
        name = self._user(user)[0]
        if c.execute("SELECT 1 FROM namespaces WHERE user = ?", (name,)).fetchone():
            return True
        try:
            if isinstance(user, int) or user.isdigit():
                pwd.getpwuid(int(user))
            else:
                pwd.getpwnam(user)
        except KeyError:
            return False
        return True

    def _ns_id(self, c: sqlite3.Connection, user: str | int) -> int:
        name, uid, gid = self._user(user)
        r = c.execute("SELECT id FROM namespaces WHERE user = ?", (name,)).fetchone()
        if r:
            return r[0]
        cur = c.execute("INSERT INTO namespaces(user, uid, gid) VALUES (?, ?, ?)", (name, uid, gid))
        log.info("new namespace %s for user %s", cur.lastrowid, name)
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def namespace_user(self, ns: int) -> str:
        with self.catalog.read() as c:
            r = c.execute("SELECT user FROM namespaces WHERE id = ?", (ns,)).fetchone()
        if not r:
            raise NotFound(f"no namespace {ns}")
        return r[0]

    def namespaces(self) -> list[tuple[int, str]]:
        """All namespaces as (id, user)."""
        with self.catalog.read() as c:
            return [tuple(r) for r in c.execute("SELECT id, user FROM namespaces ORDER BY id")]

    def root_dir(self, ns: int) -> int:
        """The namespace's top directory (created on first use); also holds lost+found."""
        with self.catalog.read() as c:
            r = c.execute("SELECT root_dir FROM namespaces WHERE id = ?", (ns,)).fetchone()
        if not r:
            raise NotFound(f"no namespace {ns}")
        if r[0] is not None:
            return r[0]
        with self.catalog.write() as c:
            return self._root_dir(c, ns)

    def _root_dir(self, c: sqlite3.Connection, ns: int) -> int:
        r = c.execute("SELECT root_dir, uid, gid FROM namespaces WHERE id = ?", (ns,)).fetchone()
        if not r:
            raise NotFound(f"no namespace {ns}")
        if r[0] is not None:
            return r[0]
        t = _now()
        cur = c.execute(
            "INSERT INTO dirs(parent, name, ns, owner_ns, mode, uid, gid, atime_ns, mtime_ns, ctime_ns) "
            "VALUES (NULL, '', ?, ?, ?, ?, ?, ?, ?, ?)", (ns, ns, 0o755, r[1], r[2], t, t, t))
        c.execute("UPDATE namespaces SET root_dir = ? WHERE id = ?", (cur.lastrowid, ns))
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def _lost_found(self, c: sqlite3.Connection, ns: int) -> int:
        root = self._root_dir(c, ns)
        r = c.execute("SELECT id FROM dirs WHERE parent = ? AND name = ?", (root, LOST_FOUND)).fetchone()
        if r:
            return r[0]
        if c.execute("SELECT 1 FROM links WHERE dir = ? AND name = ?", (root, LOST_FOUND)).fetchone():
            raise HKError(f"a file named {LOST_FOUND} blocks the namespace's lost+found directory")
        rd = c.execute("SELECT uid, gid FROM dirs WHERE id = ?", (root,)).fetchone()
        return self._mkdir(c, root, LOST_FOUND, 0o700, rd[0], rd[1])

    # ------------------------------------------------------------ keywords

    @staticmethod
    def _kw(c: sqlite3.Connection, ns: int, hk: HK) -> int | None:
        r = c.execute("SELECT id FROM keywords WHERE ns = ? AND path = ?", (ns, _path(hk))).fetchone()
        return r[0] if r else None

    def _need_kw(self, c: sqlite3.Connection, ns: int, hk: HK) -> int:
        kid = self._kw(c, ns, hk)
        if kid is None:
            raise NotFound(f"no keyword {format_hk(hk)}")
        return kid

    def _mkkw(self, c: sqlite3.Connection, ns: int, hk: HK, parents: bool) -> int:
        kid = self._kw(c, ns, hk)
        if kid is not None:
            if parents:
                return kid
            raise AlreadyExists(f"keyword {format_hk(hk)} exists")
        # the nearest existing ancestor, then the missing levels downwards: a loop, not
        # recursion (an HK may be 1,000 levels deep)
        n, parent = len(hk) - 1, None
        while n > 0:
            parent = self._kw(c, ns, hk[:n])
            if parent is not None:
                break
            if not parents:
                raise NotFound(f"parent keyword {format_hk(hk[:-1])} of {format_hk(hk)} does not exist")
            n -= 1
        for i in range(n + 1, len(hk) + 1):
            cur = c.execute("INSERT INTO keywords(ns, parent, name, path) VALUES (?, ?, ?, ?)",
                            (ns, parent, hk[i - 1], _path(hk[:i])))
            parent = int(cur.lastrowid)  # type: ignore[arg-type]
        assert parent is not None
        return parent

    def mkkw(self, ns: int, hk: HK | str, *, parents: bool = False, mode: int | None = None,
             uid: int | None = None, gid: int | None = None) -> int:
        """Make an HK. Its parent must exist unless parents=True (which also accepts an existing hk).
        mode/uid/gid: the keyword directory's in the mount (`mkdir`); None keeps the default."""
        hk = _hks([hk])[0]
        with self.catalog.write() as c:
            self._check_ns(c, ns)
            kid = self._mkkw(c, ns, hk, parents)
            if (mode, uid, gid) != (None, None, None):
                self._set_keyword_attrs(c, kid, mode, uid, gid)
            return kid

    def keyword_attrs(self, ns: int, hk: HK | str) -> tuple[int | None, int | None, int | None]:
        """A keyword directory's mode (permission bits), uid and gid in the mount; None where
        it has none of its own (the mount's default: 0755, the mounting user)."""
        hk = _hks([hk])[0]
        with self.catalog.read() as c:
            r = c.execute("SELECT mode, uid, gid FROM keywords WHERE ns = ? AND path = ?",
                          (ns, _path(hk))).fetchone()
        if r is None:
            raise NotFound(f"no keyword {format_hk(hk)}")
        return r[0], r[1], r[2]

    def child_keyword_attrs(self, ns: int, hk: HK | str = ()) -> dict[str, tuple[int | None, int | None, int | None]]:
        """keyword_attrs of each child of hk (() : the top-level keywords) in one query, by name
        (a listing of '@' or of a view shows them all)."""
        hk = _hks([hk])[0] if hk else ()
        with self.catalog.read() as c:
            if hk:
                rows = c.execute("SELECT name, mode, uid, gid FROM keywords WHERE parent = ?",
                                 (self._need_kw(c, ns, hk),))
            else:
                rows = c.execute("SELECT name, mode, uid, gid FROM keywords WHERE ns = ? AND parent IS NULL", (ns,))
            return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def set_keyword_attrs(self, ns: int, hk: HK | str, *, mode: int | None = None, uid: int | None = None,
                          gid: int | None = None) -> None:
        """chmod / chown of a keyword directory: None keeps a value."""
        hk = _hks([hk])[0]
        with self.catalog.write() as c:
            self._set_keyword_attrs(c, self._need_kw(c, ns, hk), mode, uid, gid)

    @staticmethod
    def _set_keyword_attrs(c: sqlite3.Connection, kid: int, mode: int | None, uid: int | None,
                           gid: int | None) -> None:
        c.execute("UPDATE keywords SET mode = coalesce(?, mode), uid = coalesce(?, uid), gid = coalesce(?, gid) "
                  "WHERE id = ?", (None if mode is None else mode & 0o7777, uid, gid, kid))

    @staticmethod
    def _check_ns(c: sqlite3.Connection, ns: int) -> None:
        if not c.execute("SELECT 1 FROM namespaces WHERE id = ?", (ns,)).fetchone():
            raise NotFound(f"no namespace {ns}")

    def rmkw(self, ns: int, hk: HK | str) -> None:
        """Remove an HK; KeywordInUse if a file carries it or it has child keywords.

        It is also dropped from the DKLs that name it (they would match nothing)."""
        hk = _hks([hk])[0]
        with self.catalog.write() as c:
            kid = self._need_kw(c, ns, hk)
            kids = [r[0] for r in c.execute("SELECT name FROM keywords WHERE parent = ? ORDER BY name LIMIT 5", (kid,))]
            if kids:
                raise KeywordInUse(f"keyword {format_hk(hk)} has child keywords ({', '.join(kids)})")
            n = c.execute("SELECT count(*) FROM entity_keywords WHERE keyword = ?", (kid,)).fetchone()[0]
            if n:
                raise KeywordInUse(f"keyword {format_hk(hk)} is carried by {n} file(s)")
            c.execute("DELETE FROM dir_keywords WHERE hk = ? AND dir IN (SELECT id FROM dirs WHERE ns = ?)",
                      (format_hk(hk), ns))
            c.execute("DELETE FROM xattrs WHERE kind = 'keyword' AND id = ?", (kid,))
            c.execute("DELETE FROM keywords WHERE id = ?", (kid,))

    def move_keyword(self, ns: int, src: HK | str, dst: HK | str, *, merge: bool = False,
                     parents: bool = False, replace_empty: bool = False) -> None:
        """Rename or move keyword src, with its child keywords, to dst (hk mvkw, mv in the mount).

        Its files keep it under the new name, and DKLs that name src or a descendant follow.
        dst must not exist, unless merge (then dst must exist: src's files and children join
        dst's, a child of the same name merging in turn, and src goes) or replace_empty (an
        existing dst with no file and no child is replaced, as rename(2) replaces an empty
        directory). dst's parent must exist unless parents. One transaction: keyword paths
        are materialized, so the subtree's paths get their prefix rewritten, and so do the
        affected files' tags strings (a merge may fold two paths into one)."""
        src, dst = _hks([src])[0], _hks([dst])[0]
        self._move_keyword(ns, src, dst, merge=merge, parents=parents, replace_empty=replace_empty)

    def rename_invalid_keyword(self, ns: int, hk: HK, name: str) -> HK:
        """fsck --repair: rename keyword hk, whose own name today's rules refuse (made before
        they did, e.g. '@x', so no hk command can name it), to `name` among its siblings (as
        move_keyword: its files and DKLs follow); its parents must be valid. Returns the new HK."""
        validate_component(name)
        dst = tuple(hk[:-1]) + (name,)
        _hks([dst])
        self._move_keyword(ns, tuple(hk), dst)
        return dst

    def _move_keyword(self, ns: int, src: HK, dst: HK, *, merge: bool = False, parents: bool = False,
                      replace_empty: bool = False) -> None:
        if hk_matches(src, dst):
            raise InvalidArgument(f"cannot move {format_hk(src)} onto or under itself ({format_hk(dst)})")
        with self.catalog.write() as c:
            self._check_ns(c, ns)
            sid = self._need_kw(c, ns, src)
            did = self._kw(c, ns, dst)
            if did is not None and not merge:
                if not (replace_empty and self._kw_empty(c, did)):
                    raise AlreadyExists(f"keyword {format_hk(dst)} exists (hk mergekw {format_hk(src)} "
                                        f"{format_hk(dst)} merges them)")
                merge = True
            if merge and did is None:
                raise NotFound(f"no keyword {format_hk(dst)} to merge into")
            lo, hi = _range(src)
            old_p, new_p = _path(src), _path(dst)
            self._move_tags(c, ns, lo, hi, old_p, new_p)
            if did is None:
                parent = None
                if len(dst) > 1:
                    parent = self._kw(c, ns, dst[:-1])
                    if parent is None:
                        if not parents:
                            raise NotFound(f"parent keyword {format_hk(dst[:-1])} of {format_hk(dst)} "
                                           "does not exist (-p makes it)")
                        parent = self._mkkw(c, ns, dst[:-1], True)
                # nothing exists under dst (it does not exist), so no path collides on the way
                c.execute("UPDATE keywords SET path = ? || substr(path, ?) WHERE ns = ? AND path >= ? AND path < ?",
                          (new_p, len(old_p) + 1, ns, lo, hi))
                c.execute("UPDATE keywords SET parent = ?, name = ? WHERE id = ?", (parent, dst[-1], sid))
            else:
                self._merge_subtree(c, ns, old_p, new_p)
            self._rewrite_dkls(c, ns, src, dst)

    @staticmethod
    def _move_tags(c: sqlite3.Connection, ns: int, lo: str, hi: str, old_p: str, new_p: str) -> None:
        """Rewrite the tags strings of the files carrying a keyword of the subtree [lo, hi)
        as if it were at new_p; before the keywords move (the rows are found by their
        old keyword ids). Every row of such a file is updated in (keyword, entity) order,
        the table's own, so the pages are written in sequence rather than at random."""
        kid = dict(c.execute("SELECT path, id FROM keywords WHERE ns = ?", (ns,)))
        rows: list[tuple[str, int, int]] = []
        touched: list[tuple[int, int]] = []
        now = _now()
        for eid, tags in dict(c.execute(
                "SELECT x.entity, x.tags FROM keywords k JOIN entity_keywords x ON x.keyword = k.id "
                "WHERE k.ns = ? AND k.path >= ? AND k.path < ?", (ns, lo, hi))).items():
            paths = [p for p in tags.split(",") if p]
            new = _tags(new_p + p[len(old_p):] if p.startswith(old_p) else p for p in paths)
            rows += [(new, kid[p], eid) for p in paths]
            touched.append((now, eid))
        rows.sort(key=itemgetter(1, 2))
        c.executemany("UPDATE entity_keywords SET tags = ? WHERE keyword = ? AND entity = ?", rows)
        touched.sort(key=itemgetter(1))
        c.executemany("UPDATE entities SET ctime_ns = ? WHERE id = ?", touched)

    def _kw_empty(self, c: sqlite3.Connection, kid: int) -> bool:
        return not (c.execute("SELECT 1 FROM keywords WHERE parent = ? LIMIT 1", (kid,)).fetchone()
                    or c.execute("SELECT 1 FROM entity_keywords WHERE keyword = ? LIMIT 1", (kid,)).fetchone())

    def _merge_subtree(self, c: sqlite3.Connection, ns: int, old_p: str, new_p: str) -> None:
        """Merge the keywords under path old_p into new_p (which exists), parents first: one
        that has a namesake there gives it its files and goes, the others move."""
        sub = c.execute("SELECT id, path FROM keywords WHERE ns = ? AND path >= ? AND path < ? ORDER BY path",
                        (ns, old_p, old_p[:-1] + "0")).fetchall()
        dead: list[int] = []
        for kid, p in sub:
            np = new_p + p[len(old_p):]
            r = c.execute("SELECT id FROM keywords WHERE ns = ? AND path = ?", (ns, np)).fetchone()
            if r is None:
                parent_path = np[:np.rstrip("/").rfind("/") + 1]
                parent = c.execute("SELECT id FROM keywords WHERE ns = ? AND path = ?", (ns, parent_path)).fetchone()
                c.execute("UPDATE keywords SET path = ?, parent = ?, name = ? WHERE id = ?",
                          (np, parent[0] if parent else None, _hk_of_path(np)[-1], kid))
                continue
            c.execute("INSERT OR IGNORE INTO entity_keywords(keyword, entity, tags) "
                      "SELECT ?, entity, tags FROM entity_keywords WHERE keyword = ?", (r[0], kid))
            c.execute("DELETE FROM entity_keywords WHERE keyword = ?", (kid,))
            c.execute("DELETE FROM xattrs WHERE kind = 'keyword' AND id = ?", (kid,))
            dead.append(kid)
        for kid in reversed(dead):          # deepest first: their children are gone or moved
            c.execute("DELETE FROM keywords WHERE id = ?", (kid,))

    def _rewrite_dkls(self, c: sqlite3.Connection, ns: int, src: HK, dst: HK) -> None:
        """DKLs of the namespace that name src or a descendant name the moved keyword instead."""
        text = format_hk(src)
        dirs = [r[0] for r in c.execute(
            "SELECT DISTINCT k.dir FROM dir_keywords k JOIN dirs d ON d.id = k.dir WHERE d.ns = ? "
            "AND (k.hk = ? OR substr(k.hk, 1, ?) = ?)", (ns, text, len(text) + 1, text + "/"))]
        for d in dirs:
            out: list[HK] = []
            for h in self._dkl(c, d):
                h = dst + h[len(src):] if hk_matches(src, h) else h
                if h not in out:
                    out.append(h)
            self._write_dkl(c, d, out)

    def keyword_exists(self, ns: int, hk: HK | str) -> bool:
        """Whether the keyword exists; for a query term ('@not', 'a'), its keyword (@untagged: True)."""
        if not isinstance(hk, str) and has_operators([hk]):
            hk = term_keyword(tuple(hk)) or ()
        if not isinstance(hk, str) and any(c.startswith("@") for c in hk):
            return False        # e.g. a file named '@x' looked up in a view: no keyword can be
        hk = _as_hk(hk)
        if not hk:
            return True
        with self.catalog.read() as c:
            return self._kw(c, ns, hk) is not None

    def keyword_children(self, ns: int, hk: HK | str = ()) -> list[str]:
        """Names of hk's child keywords, sorted; hk=() gives the top-level ones."""
        hk = _as_hk(hk)
        with self.catalog.read() as c:
            if not hk:
                rows = c.execute("SELECT name FROM keywords WHERE ns = ? AND parent IS NULL ORDER BY name", (ns,))
            else:
                kid = self._need_kw(c, ns, hk)
                rows = c.execute("SELECT name FROM keywords WHERE parent = ? ORDER BY name", (kid,))
            return [r[0] for r in rows]

    def keywords(self, ns: int) -> list[HK]:
        """Every HK of the namespace, sorted (for completion)."""
        with self.catalog.read() as c:
            return [_hk_of_path(r[0]) for r in
                    c.execute("SELECT path FROM keywords WHERE ns = ? ORDER BY path", (ns,))]

    def keyword_counts(self, ns: int, hk: HK | str = ()) -> list[tuple[HK, int]]:
        """hk's subtree (hk itself unless root), each with the number of files carrying it or a descendant."""
        hk = _as_hk(hk)
        with self.catalog.read() as c:
            if hk:
                self._need_kw(c, ns, hk)
                lo, hi = _range(hk)
                where, params = "k.ns = ? AND k.path >= ? AND k.path < ?", (ns, lo, hi)
            else:
                where, params = "k.ns = ?", (ns,)
            rows = c.execute(
                "SELECT k.path, (SELECT count(DISTINCT x.entity) FROM keywords d "
                "JOIN entity_keywords x ON x.keyword = d.id WHERE d.ns = k.ns AND d.path >= k.path "
                "AND d.path < substr(k.path, 1, length(k.path) - 1) || '0') "
                f"FROM keywords k WHERE {where} ORDER BY k.path", params)
            return [(_hk_of_path(p), n) for p, n in rows]

    # ------------------------------------------------------------ entities

    def _new_bytes(self, eid: int) -> None:
        fd = os.open(self.entity_path(eid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def _drop_bytes(self, eids: Iterable[int]) -> None:
        """After commit: delete the bytes of deleted entities."""
        for eid in eids:
            try:
                os.unlink(self.entity_path(eid))
            except FileNotFoundError:
                log.warning("entity %d had no bytes file", eid)

    def create(self, ns: int, name: str, *, hks: Sequence[HK | str] = (), directory: int | None = None,
               mode: int = 0o644, uid: int = 0, gid: int = 0) -> int:
        """Create an empty entity carrying hks and/or linked into directory (else into lost+found).

        mode may carry file-type bits: S_IFLNK | 0o777 makes a symlink (its bytes are the target)."""
        validate_name(name)
        hk_list = _hks(hks)
        made: list[int] = []
        try:
            with self.catalog.write() as c:
                self._check_ns(c, ns)
                kids = [self._need_kw(c, ns, h) for h in hk_list]
                tags = _tags(_path(h) for h in hk_list)
                if directory is not None:
                    self._need_dir(c, directory)
                    self._name_free(c, directory, name)
                t = _now()
                cur = c.execute(
                    "INSERT INTO entities(id, ns, name, size, mode, uid, gid, atime_ns, mtime_ns, ctime_ns) "
                    "VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                    (self._next_entity_id(c), ns, name, _entity_mode(mode), uid, gid, t, t, t))
                eid = int(cur.lastrowid)  # type: ignore[arg-type]
                self._new_bytes(eid)
                made.append(eid)
                c.executemany("INSERT INTO entity_keywords(keyword, entity, tags) VALUES (?, ?, ?)",
                              [(k, eid, tags) for k in kids])
                if directory is not None:
                    c.execute("INSERT INTO links(dir, name, entity) VALUES (?, ?, ?)", (directory, name, eid))
                    self._touch_dir(c, directory)
                elif not kids:
                    self._settle(c, eid)
        except BaseException:
            self._drop_bytes_quiet(made)
            raise
        return eid

    def _drop_bytes_quiet(self, eids: Iterable[int]) -> None:
        for eid in eids:
            try:
                os.unlink(self.entity_path(eid))
            except OSError:
                pass

    def bulk_create(self, ns: int, items: Iterable[tuple[str, Sequence[HK | str]]], *, mode: int = 0o644,
                    uid: int = 0, gid: int = 0, make_files: bool = True,
                    create_keywords: bool = False) -> list[int]:
        """Create many tagged entities in one transaction (imports, benchmarks); returns their ids.

        make_files=False skips the empty bytes files: only for throwaway benchmark stores,
        since every entity row must otherwise have its file."""
        items = list(items)
        made: list[int] = []
        try:
            # references are checked here (namespace, keywords; ids are new), so SQLite's
            # per-row foreign-key probes are skipped
            with self.catalog.write(foreign_keys=False) as c:
                self._check_ns(c, ns)
                # every keyword of the namespace, once: path -> id
                known = dict(c.execute("SELECT path, id FROM keywords WHERE ns = ?", (ns,)))
                cache: dict[HK | str, tuple[int, str]] = {}   # as given -> (keyword id, path)

                def resolve(h: HK | str) -> tuple[int, str]:
                    p = _valid_path(h)
                    kid = known.get(p)
                    if kid is None:
                        if not create_keywords:
                            raise NotFound(f"no keyword {format_hk(_hk_of_path(p))}")
                        kid = known[p] = self._mkkw(c, ns, _hk_of_path(p), True)
                    got = cache[h] = (kid, p)
                    return got

                base = self._next_entity_id(c)
                t = _now()
                ids = list(range(base, base + len(items)))
                rows, tagrows, untagged = [], [], []
                m = _entity_mode(mode)
                add_row, add_tags = rows.append, tagrows.extend
                for eid, (name, hks) in zip(ids, items, strict=True):
                    if not name or "/" in name or "\0" in name or name in (".", "..") or len(name) > 63:
                        validate_name(name)
                    add_row((eid, ns, name, m, uid, gid, t, t, t))
                    if not hks:
                        untagged.append(eid)
                        continue
                    try:
                        kp = [cache[h] for h in hks]  # type: ignore[index]
                    except KeyError:
                        kp = [cache.get(h) or resolve(h) for h in hks]  # type: ignore[arg-type]
                    # the tags string is built once per file and shared by its rows
                    tags = "," + ",".join(sorted({p for _, p in kp})) + ","
                    add_tags([(kid, eid, tags) for kid in {k for k, _ in kp}])
                # (keyword, entity) order (ids ascend, the sort is stable): index pages fill in sequence
                tagrows.sort(key=itemgetter(0))
                c.executemany(
                    "INSERT INTO entities(id, ns, name, size, mode, uid, gid, atime_ns, mtime_ns, ctime_ns) "
                    "VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?)", rows)
                c.executemany("INSERT INTO entity_keywords(keyword, entity, tags) VALUES (?, ?, ?)", tagrows)
                for eid in untagged:
                    self._settle(c, eid)
                if make_files:
                    for eid in ids:
                        self._new_bytes(eid)
                        made.append(eid)
        except BaseException:
            self._drop_bytes_quiet(made)
            raise
        return ids

    def entity(self, eid: int) -> EntityInfo:
        with self.catalog.read() as c:
            return self._entity(c, eid)

    def _entity(self, c: sqlite3.Connection, eid: int) -> EntityInfo:
        r = c.execute(f"SELECT {_ENTITY_COLS} FROM entities e WHERE e.id = ?", (eid,)).fetchone()
        if not r:
            raise NotFound(f"no file entity {eid}")
        return _entity_of_row(r)

    def _need_entity(self, c: sqlite3.Connection, eid: int) -> int:
        r = c.execute("SELECT ns FROM entities WHERE id = ?", (eid,)).fetchone()
        if not r:
            raise NotFound(f"no file entity {eid}")
        return r[0]

    def record_bytes(self, eid: int) -> None:
        """Record size and mtime of entity eid's bytes file, after writing it directly.

        The mount lists closed files with the catalog's size and mtime (fsck's stale-size)."""
        st = os.stat(self.entity_path(eid))
        self.set_attrs(eid, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def set_attrs(self, eid: int, *, size: int | None = None, mode: int | None = None,
                  uid: int | None = None, gid: int | None = None, atime_ns: int | None = None,
                  mtime_ns: int | None = None) -> None:
        """Record inode data (the mount writes the bytes itself). ctime follows any change.

        A mode without file-type bits changes the permissions only (the type is kept)."""
        sets: dict[str, int] = {}
        for k, v in (("size", size), ("mode", mode), ("uid", uid), ("gid", gid),
                     ("atime_ns", atime_ns), ("mtime_ns", mtime_ns)):
            if v is not None:
                sets[k] = int(v)
        if size is not None and size < 0:
            raise InvalidArgument("negative size")
        if mode is not None:
            _entity_mode(mode)        # refuse a bad type before the transaction
        with self.catalog.write() as c:
            self._need_entity(c, eid)
            if not sets:
                return
            if mode is not None:
                sets["mode"] = _entity_mode(mode, c.execute("SELECT mode FROM entities WHERE id = ?",
                                                            (eid,)).fetchone()[0])
            sets["ctime_ns"] = _now()
            c.execute(f"UPDATE entities SET {', '.join(k + ' = ?' for k in sets)} WHERE id = ?",
                      (*sets.values(), eid))

    def replace_entity(self, src: int, dst: int, *, size: int, mtime_ns: int) -> None:
        """Step 2 of hkfs.core.bytes.replace_bytes (an editor save), in one transaction: entity
        dst gets src's permissions and group (what rename(2) would leave; editors set them on the
        temp file) and the size and mtime of its bytes (already moved); src goes."""
        with self.catalog.write() as c:
            self._need_entity(c, dst)
            new = self._entity(c, src)
            c.execute("UPDATE entities SET size = ?, mode = ?, gid = ?, mtime_ns = ?, ctime_ns = ? WHERE id = ?",
                      (size, _entity_mode(new.mode & 0o7777, self._entity(c, dst).mode), new.gid, mtime_ns,
                       _now(), dst))
            self._delete_entity(c, src)

    def set_rdev(self, eid: int, rdev: int) -> None:
        """The device number of a character or block device entity (mknod)."""
        with self.catalog.write() as c:
            self._need_entity(c, eid)
            c.execute("INSERT OR REPLACE INTO devices(entity, rdev) VALUES (?, ?)", (eid, rdev))

    def rdev(self, eid: int) -> int:
        """A device entity's number (0 for every other file)."""
        with self.catalog.read() as c:
            r = c.execute("SELECT rdev FROM devices WHERE entity = ?", (eid,)).fetchone()
        return r[0] if r else 0

    def _touch_entity(self, c: sqlite3.Connection, eid: int) -> None:
        c.execute("UPDATE entities SET ctime_ns = ? WHERE id = ?", (_now(), eid))

    def atkw(self, eid: int, hks: Sequence[HK | str], *, create: bool = False) -> None:
        """Attach HKs (already carried ones are fine). Unknown ones: NotFound, or made with create=True."""
        hl = _hks(hks)
        with self.catalog.write() as c:
            ns = self._need_entity(c, eid)
            kids = [self._mkkw(c, ns, h, True) if create else self._need_kw(c, ns, h) for h in hl]
            c.executemany("INSERT OR IGNORE INTO entity_keywords(keyword, entity, tags) VALUES (?, ?, '')",
                          [(k, eid) for k in kids])
            self._retag(c, eid)
            self._touch_entity(c, eid)

    @staticmethod
    def _retag(c: sqlite3.Connection, eid: int) -> None:
        """Recompute the entity's tags string on all its entity_keywords rows."""
        paths = [r[0] for r in c.execute(
            "SELECT k.path FROM entity_keywords x JOIN keywords k ON k.id = x.keyword WHERE x.entity = ?", (eid,))]
        if paths:
            c.execute("UPDATE entity_keywords SET tags = ? WHERE entity = ?", (_tags(paths), eid))

    def dtkw(self, eid: int, hks: Sequence[HK | str]) -> None:
        """Detach HKs: each removes the carried HKs it matches (itself and descendants).

        NotFound if one of them matches nothing the file carries. A file left with no
        HK and no link goes to lost+found."""
        hl = _hks(hks)
        with self.catalog.write() as c:
            ns = self._need_entity(c, eid)
            for h in hl:
                self._need_kw(c, ns, h)
                lo, hi = _range(h)
                n = c.execute(
                    "DELETE FROM entity_keywords WHERE entity = ? AND keyword IN "
                    "(SELECT id FROM keywords WHERE ns = ? AND path >= ? AND path < ?)",
                    (eid, ns, lo, hi)).rowcount
                if not n:      # named as the user knows it (the id is internal)
                    name = c.execute("SELECT name FROM entities WHERE id = ?", (eid,)).fetchone()[0]
                    raise NotFound(f"{name} does not carry {format_hk(h)}")
            self._retag(c, eid)
            self._touch_entity(c, eid)
            self._settle(c, eid)

    def set_hks(self, eid: int, hks: Sequence[HK | str], *, create: bool = False) -> None:
        """Make the file carry exactly hks (the user.hk.keywords xattr)."""
        hl = _hks(hks)
        with self.catalog.write() as c:
            ns = self._need_entity(c, eid)
            kids = [self._mkkw(c, ns, h, True) if create else self._need_kw(c, ns, h) for h in hl]
            c.execute("DELETE FROM entity_keywords WHERE entity = ?", (eid,))
            c.executemany("INSERT OR IGNORE INTO entity_keywords(keyword, entity, tags) VALUES (?, ?, '')",
                          [(k, eid) for k in kids])
            self._retag(c, eid)
            self._touch_entity(c, eid)
            self._settle(c, eid)

    def _settle(self, c: sqlite3.Connection, eid: int) -> None:
        """Keep an entity with no HK and no link reachable: link it into its namespace's lost+found."""
        if c.execute("SELECT 1 FROM entity_keywords WHERE entity = ? LIMIT 1", (eid,)).fetchone():
            return
        if c.execute("SELECT 1 FROM links WHERE entity = ? LIMIT 1", (eid,)).fetchone():
            return
        ns, name = c.execute("SELECT ns, name FROM entities WHERE id = ?", (eid,)).fetchone()
        lf = self._lost_found(c, ns)
        if self._entry(c, lf, name) is not None:
            name = clash_name(name, eid)
            if self._entry(c, lf, name) is not None:
                name = f"{eid}"
        c.execute("INSERT INTO links(dir, name, entity) VALUES (?, ?, ?)", (lf, name, eid))
        log.info("entity %d has no keyword and no link: linked as %s/%s", eid, LOST_FOUND, name)

    def chfn(self, eid: int, new_name: str) -> None:
        """Change the file name; directory links that carried the old name follow it."""
        validate_name(new_name)
        with self.catalog.write() as c:
            self._need_entity(c, eid)
            old = c.execute("SELECT name FROM entities WHERE id = ?", (eid,)).fetchone()[0]
            if old == new_name:
                return
            dirs = [r[0] for r in c.execute("SELECT dir FROM links WHERE entity = ? AND name = ?", (eid, old))]
            for d in dirs:
                if self._entry(c, d, new_name) is not None:
                    raise AlreadyExists(f"{new_name!r} already exists in directory {self._dir_path(c, d)}")
            c.execute("UPDATE links SET name = ? WHERE entity = ? AND name = ?", (new_name, eid, old))
            c.execute("UPDATE entities SET name = ?, ctime_ns = ? WHERE id = ?", (new_name, _now(), eid))

    def rme(self, eid: int) -> None:
        """Delete the entity: its links, HKs, xattrs, row, and (after commit) its bytes."""
        with self.catalog.write() as c:
            self._need_entity(c, eid)
            self._delete_entity(c, eid)
        self._drop_bytes([eid])

    @staticmethod
    def _next_entity_id(c: sqlite3.Connection) -> int:
        """One more than any id an entity ever had (live or deleted).

        Ids are never reused: the bytes of a deleted entity are unlinked after its row's
        deletion commits, so a new entity taking the same id in between (another thread
        or process) would lose its fresh bytes file to that unlink."""
        return c.execute(
            "SELECT max(coalesce((SELECT max(id) FROM entities), 0), "
            "coalesce((SELECT value FROM counters WHERE name = 'entity_high'), 0)) + 1").fetchone()[0]

    @staticmethod
    def _delete_entity(c: sqlite3.Connection, eid: int) -> None:
        c.execute("INSERT INTO counters(name, value) VALUES ('entity_high', ?) "
                  "ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)", (eid,))
        c.execute("DELETE FROM links WHERE entity = ?", (eid,))
        c.execute("DELETE FROM entity_keywords WHERE entity = ?", (eid,))
        c.execute("DELETE FROM xattrs WHERE kind = 'file' AND id = ?", (eid,))
        c.execute("DELETE FROM devices WHERE entity = ?", (eid,))
        c.execute("DELETE FROM entities WHERE id = ?", (eid,))

    # ------------------------------------------------------------ resolution

    def _match(self, c: sqlite3.Connection, ns: int, hks: Sequence[HK | str],
               name: str | None, *, with_tags: bool = False, distinct: bool = True) -> tuple[str, list]:
        """A SELECT of the distinct ids of the files the list matches (with descendants);
        distinct=False: ids may repeat where a keyword's subtree drives (a caller that
        dedups itself spares SQLite the temporary B-tree, ~2/3 of the scan at 100k files).

        The most selective HK (counted up to a cap) drives: a range scan of its subtree's
        keyword ids (keywords.path) joined to the (keyword, entity) primary key. Every other
        HK is tested on the same row's tags string, so no candidate costs a random lookup.
        With a name, the (ns, name) index drives instead (match_ids_named: several names); with
        neither, the namespace is listed. with_tags adds a second column, the entity's tags
        (then ids may repeat)."""
        tagcol = (", (SELECT t.tags FROM entity_keywords t WHERE t.entity = e.id LIMIT 1)"
                  if with_tags else "")
        if has_operators(h for h in hks if not isinstance(h, str)):
            return self._match_query(c, ns, hks, name, with_tags=with_tags)
        hl = _hks(hks)
        for h in hl:
            self._need_kw(c, ns, h)
        paths = [_path(h) for h in hl]
        if name is not None:
            sql = f"SELECT e.id{tagcol} FROM entities e WHERE e.ns = ? AND e.name = ?"
            params: list = [ns, name]
            for p in paths:
                sql += (" AND EXISTS (SELECT 1 FROM entity_keywords x WHERE x.entity = e.id "
                        "AND instr(x.tags, ?) > 0)")
                params.append("," + p)
            return sql, params
        if not paths:
            return f"SELECT e.id{tagcol} FROM entities e WHERE e.ns = ?", [ns]
        if len(paths) > 1:
            est = [c.execute(
                "SELECT count(*) FROM (SELECT 1 FROM keywords k JOIN entity_keywords x ON x.keyword = k.id "
                "WHERE k.ns = ? AND k.path >= ? AND k.path < ? LIMIT ?)", (ns, p, p[:-1] + "0", _ESTIMATE_CAP)
            ).fetchone()[0] for p in paths]
            paths = [paths[i] for i in sorted(range(len(paths)), key=est.__getitem__)]
        p0 = paths[0]
        sql = (f"SELECT {'x.entity, x.tags' if with_tags else 'DISTINCT x.entity' if distinct else 'x.entity'} "
               "FROM keywords k JOIN entity_keywords x ON x.keyword = k.id "
               "WHERE k.ns = ? AND k.path >= ? AND k.path < ?")
        params = [ns, p0, p0[:-1] + "0"]
        for p in paths[1:]:
            sql += " AND instr(x.tags, ?) > 0"
            params.append("," + p)
        return sql, params

    def _match_query(self, c: sqlite3.Connection, ns: int, terms: Sequence[HK | str], name: str | None,
                     *, with_tags: bool) -> tuple[str, list]:
        """_match for a list with operators (@or, @not, @only, @untagged; hkfs.core.naming.Query).

        Same plan as for AND: the cheapest OR-group drives, one range scan per keyword of
        it (@only: one keyword id) joined to (keyword, entity), UNION-ed; everything else is
        tested on the row's tags string: ',/a/' for a keyword and its descendants,
        ',/a/,' for @only, instr() = 0 for @not. Without a positive group (only @not) the
        namespace's entities are scanned with their tags; @untagged scans directory links."""
        q = compile_query([parse_hk(h) if isinstance(h, str) else tuple(h) for h in terms])
        for a in [a for g in q.all_of for a in g] + list(q.none_of):
            self._need_kw(c, ns, _hks([a.hk])[0])
        if q.incomplete:
            return ("SELECT NULL, NULL WHERE 0" if with_tags else "SELECT NULL WHERE 0"), []

        def needle(a: Atom) -> str:
            return "," + _path(a.hk) + ("," if a.only else "")

        def cond(tags: str, groups: Sequence[Sequence[Atom]]) -> tuple[str, list]:
            sql, params = "", []
            for g in groups:
                sql += " AND (" + " OR ".join([f"instr({tags}, ?) > 0"] * len(g)) + ")"
                params += [needle(a) for a in g]
            for a in q.none_of:
                sql += f" AND instr({tags}, ?) = 0"
                params.append(needle(a))
            if q.untagged:
                sql += f" AND {tags} = ''"
            return sql, params

        if q.untagged and name is None:
            # an entity with no keyword always has a directory link (lost+found at least:
            # _settle; fsck.check reports any other), so the links drive, not all entities
            tagcol = ", ''" if with_tags else ""
            return (f"SELECT DISTINCT l.entity{tagcol} FROM links l "
                    "JOIN entities e ON e.id = l.entity WHERE e.ns = ? AND NOT EXISTS "
                    "(SELECT 1 FROM entity_keywords x WHERE x.entity = l.entity)"), [ns]
        if name is not None or not q.all_of:
            tags = "coalesce((SELECT t.tags FROM entity_keywords t WHERE t.entity = e.id LIMIT 1), '')"
            sql = f"SELECT e.id{', ' + tags if with_tags else ''} FROM entities e WHERE e.ns = ?"
            params: list = [ns]
            if name is not None:
                sql += " AND e.name = ?"
                params.append(name)
            more, mp = cond(tags, q.all_of)
            return sql + more, params + mp

        def span(a: Atom) -> tuple[str, str]:
            """The keywords.path range a drives over ('\x01' is below any component's first character)."""
            return (_path(a.hk), _path(a.hk) + "\x01") if a.only else _range(a.hk)

        def estimate(a: Atom) -> int:
            lo, hi = span(a)
            return c.execute(
                "SELECT count(*) FROM (SELECT 1 FROM keywords k JOIN entity_keywords x ON x.keyword = k.id "
                "WHERE k.ns = ? AND k.path >= ? AND k.path < ? LIMIT ?)", (ns, lo, hi, _ESTIMATE_CAP)).fetchone()[0]
        groups = list(q.all_of)
        if len(groups) > 1:
            groups.sort(key=lambda g: sum(map(estimate, g)))
        more, mp = cond("x.tags", groups[1:])
        parts, params = [], []
        for a in groups[0]:
            lo, hi = span(a)
            parts.append(f"SELECT x.entity{', x.tags' if with_tags else ''} FROM keywords k "
                         "JOIN entity_keywords x ON x.keyword = k.id "
                         f"WHERE k.ns = ? AND k.path >= ? AND k.path < ?{more}")
            params += [ns, lo, hi] + mp
        if len(parts) == 1 and not with_tags:
            parts[0] = parts[0].replace("SELECT x.entity", "SELECT DISTINCT x.entity", 1)
        return " UNION ".join(parts), params

    def match(self, ns: int, hks: Sequence[HK | str], name: str | None = None) -> list[EntityInfo]:
        """Files of namespace ns matching the list (with descendants), by id; unknown HK: NotFound."""
        with self.catalog.read() as c:
            sel, params = self._match(c, ns, hks, name, with_tags=True)
            tags = dict(c.execute(sel, params).fetchall())
            if not tags:
                return []
            ids, _ = self._match(c, ns, hks, name)
            nlinks = dict(c.execute(
                f"SELECT entity, count(*) FROM links WHERE entity IN ({ids}) GROUP BY entity", params))
            rows = c.execute(
                "SELECT e.id, e.ns, e.name, e.size, e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.ctime_ns "
                f"FROM entities e WHERE e.id IN ({ids}) ORDER BY e.id", params).fetchall()
        return [EntityInfo(*r, nlinks=nlinks.get(r[0], 0), hks=_sorted_hks(tags[r[0]])) for r in rows]

    def match_stats(self, ns: int, hks: Sequence[HK | str]) -> list[EntityStat]:
        """Like match without the HKs, in one query: what `ls -l` of a view needs."""
        with self.catalog.read() as c:
            ids, params = self._match(c, ns, hks, None)
            rows = c.execute(
                f"{_STAT_SELECT} WHERE e.id IN ({ids}) ORDER BY e.id", params).fetchall()
        return list(map(EntityStat._make, rows))

    def entity_stats(self, eids: Sequence[int]) -> list[EntityStat]:
        """match_stats for given entities (a piece of a view's listing), in id order; gone ones
        left out."""
        if not eids:
            return []
        with self.catalog.read() as c:
            rows = c.execute(
                f"{_STAT_SELECT} WHERE e.id IN ({','.join('?' * len(eids))}) ORDER BY e.id", list(eids)).fetchall()
        return list(map(EntityStat._make, rows))

    def entity_columns_between(self, lo: int, hi: int) -> EntityColumns | None:
        """The entities with lo <= id <= hi as columns, and, from the same snapshot, the entity
        of each of their HKs and of each of their directory links (an entity appears once per
        HK, once per link: its counts); None when there is no such entity.

        Rows in the order of the table's range scan, id order (a caller that relies on it
        checks). One row for the lot, where fetching a row per entity cost Python objects
        and a GIL round trip per row; the counts are range scans of the two entity indexes,
        counted by the caller (hkfs.mount.view_listing: numpy), not a lookup per entity nor
        a GROUP BY. Integers packed by hkfs_int64s() when the catalog's connections have it
        (hkfs.core.aggregates: no decimal text to write and parse), else as text."""
        packed = self.catalog.aggregates
        agg, empty = self._int_column()
        with self.catalog.read() as c:
            got = c.execute(_COLUMNS_PACKED if packed else _COLUMNS_TEXT, (lo, hi)).fetchone()
            if got[0] is None:
                return None
            tagged = c.execute(f"SELECT {agg}(entity) FROM entity_keywords WHERE entity BETWEEN ? AND ?",
                               (lo, hi)).fetchone()[0]
            linked = c.execute(f"SELECT {agg}(entity) FROM links WHERE entity BETWEEN ? AND ?", (lo, hi)).fetchone()[0]
        return EntityColumns(got[0] if packed else got[:-1], got[-1], tagged or empty, linked or empty)

    def _int_column(self) -> tuple[str, bytes | str]:
        """The aggregate that reads integers as one value, and its value for no row: packed
        (hkfs_int64s, hkfs.core.aggregates) when the catalog's connections have it, else text."""
        return ("hkfs_int64s", b"") if self.catalog.aggregates else ("group_concat", "")

    def shared_names(self, ns: int) -> set[str]:
        """The names that more than one entity of namespace ns bears (one scan of its name index:
        hkfs_repeated() compares each name with the one before, hkfs.core.aggregates; GROUP BY
        cost ~0.5 us a name, 50 ms at 100k files, on a view's first listing's critical path)."""
        with self.catalog.read() as c:
            if self.catalog.aggregates:
                try:
                    got = c.execute("SELECT hkfs_repeated(name) FROM entities WHERE ns = ?", (ns,)).fetchone()[0]
                    return set(got.split("/")) if got else set()
                except sqlite3.OperationalError as exc:      # the scan was not in name order
                    log.warning("shared names of namespace %d by GROUP BY: %s", ns, exc)
            return {r[0] for r in c.execute(
                "SELECT name FROM entities WHERE ns = ? GROUP BY name HAVING count(*) > 1", (ns,))}

    def ids_named(self, ns: int, names: Sequence[str]) -> list[tuple[str, int]]:
        """(name, id) of every entity of namespace ns bearing one of these names."""
        if not names:
            return []
        with self.catalog.read() as c:
            return c.execute(f"SELECT name, id FROM entities WHERE ns = ? AND name IN ({','.join('?' * len(names))})",
                             (ns, *names)).fetchall()

    def match_ids_column(self, ns: int, hks: Sequence[HK | str]) -> bytes | str:
        """match_ids (unsorted, and an id may repeat) as one value: native int64 packed by
        hkfs_int64s() when the catalog's connections have it (hkfs.core.aggregates), else
        text, the ids joined by ','; empty for none. A big view's ids in one row, with no
        Python object per file (hkfs.mount.views.view_ids sorts and dedups them)."""
        agg, empty = self._int_column()
        with self.catalog.read() as c:
            sel, params = self._match(c, ns, hks, None, distinct=False)
            got = c.execute(f"WITH m(id) AS ({sel}) SELECT {agg}(id) FROM m", params).fetchone()[0]
        return got or empty

    def match_ids(self, ns: int, hks: Sequence[HK | str], name: str | None = None) -> list[int]:
        """Like resolve, ids only (cheap: for counting and large views)."""
        with self.catalog.read() as c:
            sel, params = self._match(c, ns, hks, name)
            return sorted(r[0] for r in c.execute(sel, params))

    def match_ids_named(self, ns: int, hks: Sequence[HK | str], names: Sequence[str]) -> dict[str, list[int]]:
        """match_ids of each of several names, in one statement (one a name for a list with
        operators): a `FILE.query` lookup asks for its own name and FILE's."""
        if has_operators(h for h in hks if not isinstance(h, str)):
            return {n: self.match_ids(ns, hks, n) for n in names}
        # one statement, its own snapshot (no BEGIN/COMMIT, no keyword look-up before it): the
        # (ns, name) index drives, each HK is tested on the row's tags, and a keyword of the
        # list that does not exist comes back as a row (NULL, its path): NotFound, as _match
        paths = [_path(h) for h in _hks(hks)]
        sql = f"SELECT e.id, e.name FROM entities e WHERE e.ns = ? AND e.name IN ({','.join('?' * len(names))})"
        sql += " AND EXISTS (SELECT 1 FROM entity_keywords x WHERE x.entity = e.id AND instr(x.tags, ?) > 0)" \
            * len(paths)
        sql += " UNION ALL SELECT NULL, ? WHERE NOT EXISTS (SELECT 1 FROM keywords WHERE ns = ? AND path = ?)" \
            * len(paths)
        params = [ns, *names, *("," + p for p in paths)] + [x for p in paths for x in (p, ns, p)]
        out: dict[str, list[int]] = {n: [] for n in names}
        for eid, n in self.catalog.connection().execute(sql, params):
            if eid is None:
                raise NotFound(f"no keyword {format_hk(_hk_of_path(n))}")
            out[n].append(eid)
        return {n: sorted(ids) for n, ids in out.items()}

    def name_counts(self, ns: int, hks: Sequence[HK | str]) -> dict[str, int]:
        """For `ls ,`: name -> number of matching files with that name (sorted by name)."""
        with self.catalog.read() as c:
            sel, params = self._match(c, ns, hks, None)
            return dict(c.execute(f"SELECT e.name, count(*) FROM entities e WHERE e.id IN ({sel}) "
                                  "GROUP BY e.name ORDER BY e.name", params))

    def names_of(self, eids: Sequence[int]) -> dict[int, str]:
        """The file names of these entities (missing ones left out): a search's hits."""
        if not eids:
            return {}
        with self.catalog.read() as c:
            return dict(c.execute(f"SELECT id, name FROM entities WHERE id IN ({','.join('?' * len(eids))})",
                                  list(eids)))

    def names_counted(self, ns: int, eids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """names_of and name_counts_in_ns in one statement: each entity's name and how many
        entities of namespace ns bear it (missing ones left out): naming a search's hits."""
        if not eids:
            return {}
        c = self.catalog.connection()      # one statement: its own snapshot, no BEGIN/COMMIT around it
        return {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT e.id, e.name, (SELECT count(*) FROM entities f WHERE f.ns = ? AND f.name = e.name) "
            f"FROM entities e WHERE e.id IN ({','.join('?' * len(eids))})", (ns, *eids))}

    def ctimes(self, eids: Sequence[int], dirids: Sequence[int]) -> tuple[dict[int, int], dict[int, int]]:
        """The ctime_ns of these entities and directories (missing ones left out), now. Every
        change to a file's or directory's attributes moves its ctime (set_attrs, record_bytes,
        set_xattr, ...), so equal ctimes mean equal attributes. A statement each, outside any
        transaction (a commit between them is one the caller is told of again)."""
        c = self.catalog.connection()
        ents = dict(c.execute(f"SELECT id, ctime_ns FROM entities WHERE id IN ({','.join('?' * len(eids))})",
                              list(eids))) if eids else {}
        dirs = dict(c.execute(f"SELECT id, ctime_ns FROM dirs WHERE id IN ({','.join('?' * len(dirids))})",
                              list(dirids))) if dirids else {}
        return ents, dirs

    def name_counts_in_ns(self, ns: int, names: Sequence[str]) -> dict[str, int]:
        """How many entities of namespace ns bear each of these names (names no one bears left out)."""
        if not names:
            return {}
        with self.catalog.read() as c:
            return dict(c.execute("SELECT name, count(*) FROM entities WHERE ns = ? AND name IN "
                                  f"({','.join('?' * len(names))}) GROUP BY name", (ns, *names)))

    # ------------------------------------------------------------ directories

    def _need_dir(self, c: sqlite3.Connection, dirid: int) -> tuple:
        r = c.execute("SELECT id, parent, name, ns, owner_ns, mode, uid, gid, atime_ns, mtime_ns, ctime_ns "
                      "FROM dirs WHERE id = ?", (dirid,)).fetchone()
        if not r:
            raise NotFound(f"no directory {dirid}")
        return r

    @staticmethod
    def _entry(c: sqlite3.Connection, dirid: int, name: str) -> DirEntry | None:
        r = c.execute("SELECT id FROM dirs WHERE parent = ? AND name = ?", (dirid, name)).fetchone()
        if r:
            return DirEntry(name, "dir", r[0])
        r = c.execute("SELECT entity FROM links WHERE dir = ? AND name = ?", (dirid, name)).fetchone()
        return DirEntry(name, "file", r[0]) if r else None

    def _name_free(self, c: sqlite3.Connection, dirid: int, name: str) -> None:
        if self._entry(c, dirid, name) is not None:
            raise AlreadyExists(f"{name!r} already exists in {self._dir_path(c, dirid)}")

    def _dir_path(self, c: sqlite3.Connection, dirid: int) -> str:
        parts: list[str] = []
        cur: int | None = dirid
        while cur is not None:
            r = c.execute("SELECT parent, name FROM dirs WHERE id = ?", (cur,)).fetchone()
            if not r:
                break
            if r[0] is not None:
                parts.append(r[1])
            cur = r[0]
        return "/" + "/".join(reversed(parts))

    @staticmethod
    def _touch_dir(c: sqlite3.Connection, dirid: int) -> None:
        t = _now()
        c.execute("UPDATE dirs SET mtime_ns = ?, ctime_ns = ? WHERE id = ?", (t, t, dirid))

    def _mkdir(self, c: sqlite3.Connection, parent: int, name: str, mode: int, uid: int, gid: int) -> int:
        p = self._need_dir(c, parent)
        self._name_free(c, parent, name)
        t = _now()
        cur = c.execute(
            "INSERT INTO dirs(parent, name, ns, owner_ns, mode, uid, gid, atime_ns, mtime_ns, ctime_ns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (parent, name, p[3], p[4], mode & 0o7777, uid, gid, t, t, t))
        self._touch_dir(c, parent)
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def mkdir(self, parent: int, name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> int:
        """Make an ordinary directory; it inherits ns (and owner_ns) from its parent, and an empty DKL."""
        validate_name(name)
        with self.catalog.write() as c:
            return self._mkdir(c, parent, name, mode, uid, gid)

    def rmdir(self, dirid: int) -> None:
        """Remove an empty directory (NotEmpty if it holds links or subdirectories)."""
        with self.catalog.write() as c:
            d = self._need_dir(c, dirid)
            if d[1] is None:
                raise NotPermitted("a namespace's root directory cannot be removed")
            if (c.execute("SELECT 1 FROM dirs WHERE parent = ? LIMIT 1", (dirid,)).fetchone()
                    or c.execute("SELECT 1 FROM links WHERE dir = ? LIMIT 1", (dirid,)).fetchone()):
                raise NotEmpty(f"directory {self._dir_path(c, dirid)} is not empty")
            c.execute("DELETE FROM dir_keywords WHERE dir = ?", (dirid,))
            c.execute("DELETE FROM xattrs WHERE kind = 'dir' AND id = ?", (dirid,))
            c.execute("DELETE FROM dirs WHERE id = ?", (dirid,))
            self._touch_dir(c, d[1])

    def dir(self, dirid: int) -> DirInfo:
        with self.catalog.read() as c:
            return DirInfo(*self._need_dir(c, dirid), dkl=self._dkl(c, dirid))

    def dir_naming(self, dirid: int) -> tuple[int, tuple[HK, ...]]:
        """A directory's namespace and DKL: what its paths resolve by (no attributes)."""
        d = self.dir(dirid)
        return d.ns, tuple(d.dkl)

    def dir_perms(self) -> list[tuple[int, int | None, int, int, int]]:
        """Every directory as (id, parent, mode, uid, gid): what reaching a file takes (hkfs.mount.access)."""
        with self.catalog.read() as c:
            return c.execute("SELECT id, parent, mode, uid, gid FROM dirs").fetchall()

    def linked_only_in(self, dirids: Iterable[int]) -> set[int]:
        """Entities whose every directory link is in one of dirids (none when dirids is empty)."""
        ids = sorted(set(dirids))
        if not ids:
            return set()
        arg = json.dumps(ids)
        with self.catalog.read() as c:
            rows = c.execute("SELECT entity FROM links WHERE dir IN (SELECT value FROM json_each(?1)) "
                             "EXCEPT SELECT entity FROM links WHERE dir NOT IN (SELECT value FROM json_each(?1))",
                             (arg,))
            return {r[0] for r in rows}

    def subdir_count(self, dirid: int) -> int:
        """How many subdirectories a directory has (its link count is 2 + this, as on ext4)."""
        with self.catalog.read() as c:
            return c.execute("SELECT count(*) FROM dirs WHERE parent = ?", (dirid,)).fetchone()[0]

    def dir_path(self, dirid: int) -> str:
        """'/a/b' of a directory below its namespace root (for messages)."""
        with self.catalog.read() as c:
            self._need_dir(c, dirid)
            return self._dir_path(c, dirid)

    def set_dir_attrs(self, dirid: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None) -> None:
        """chmod/chown/utimens of a directory."""
        sets = {k: (int(v) & 0o7777 if k == "mode" else int(v)) for k, v in
                (("mode", mode), ("uid", uid), ("gid", gid), ("atime_ns", atime_ns), ("mtime_ns", mtime_ns))
                if v is not None}
        with self.catalog.write() as c:
            self._need_dir(c, dirid)
            if sets:
                sets["ctime_ns"] = _now()
                c.execute(f"UPDATE dirs SET {', '.join(k + ' = ?' for k in sets)} WHERE id = ?",
                          (*sets.values(), dirid))

    def lookup(self, dirid: int, name: str) -> DirEntry | None:
        with self.catalog.read() as c:
            self._need_dir(c, dirid)
            return self._entry(c, dirid, name)

    def lookup_entity(self, dirid: int, name: str) -> tuple[DirEntry | None, EntityInfo | None]:
        """lookup, and the file's entity when the name links one, in one transaction (the mount
        answers most LOOKUPs with both)."""
        with self.catalog.read() as c:
            self._need_dir(c, dirid)
            e = self._entry(c, dirid, name)
            return e, (self._entity(c, e.id) if e is not None and e.kind == "file" else None)

    def listdir(self, dirid: int) -> list[DirEntry]:
        """Subdirectories and file links, sorted by name."""
        with self.catalog.read() as c:
            self._need_dir(c, dirid)
            out = [DirEntry(n, "dir", i) for n, i in
                   c.execute("SELECT name, id FROM dirs WHERE parent = ?", (dirid,))]
            out += [DirEntry(n, "file", e, m) for n, e, m in
                    c.execute("SELECT l.name, l.entity, e.mode FROM links l "
                              "JOIN entities e ON e.id = l.entity WHERE l.dir = ?", (dirid,))]
        return sorted(out, key=lambda e: e.name)

    def links(self, eid: int) -> list[tuple[int, str]]:
        """Where an entity is linked: (dir id, name) pairs."""
        with self.catalog.read() as c:
            self._need_entity(c, eid)
            return [tuple(r) for r in c.execute(
                "SELECT dir, name FROM links WHERE entity = ? ORDER BY dir, name", (eid,))]

    def link(self, eid: int, dirid: int, name: str | None = None) -> None:
        """Link an entity into a directory (name defaults to the entity's file name)."""
        if name is not None:
            validate_name(name)
        with self.catalog.write() as c:
            self._need_entity(c, eid)
            self._need_dir(c, dirid)
            if name is None:
                name = c.execute("SELECT name FROM entities WHERE id = ?", (eid,)).fetchone()[0]
            self._name_free(c, dirid, name)
            c.execute("INSERT INTO links(dir, name, entity) VALUES (?, ?, ?)", (dirid, name, eid))
            self._touch_dir(c, dirid)
            self._touch_entity(c, eid)

    def unlink(self, dirid: int, name: str) -> None:
        """Paper rm: remove the link. If it was the last link and the entity has no HK,
        the entity is deleted (UNIX rm); never otherwise."""
        dead: list[int] = []
        with self.catalog.write() as c:
            self._need_dir(c, dirid)
            e = self._entry(c, dirid, name)
            if e is None:
                raise NotFound(f"no {name!r} in {self._dir_path(c, dirid)}")
            if e.kind == "dir":
                raise IsADirectory(f"{name!r} is a directory")
            c.execute("DELETE FROM links WHERE dir = ? AND name = ?", (dirid, name))
            self._touch_dir(c, dirid)
            if self._unreferenced(c, e.id):
                self._delete_entity(c, e.id)
                dead.append(e.id)
            else:
                self._touch_entity(c, e.id)
        self._drop_bytes(dead)

    @staticmethod
    def _unreferenced(c: sqlite3.Connection, eid: int) -> bool:
        return not (c.execute("SELECT 1 FROM entity_keywords WHERE entity = ? LIMIT 1", (eid,)).fetchone()
                    or c.execute("SELECT 1 FROM links WHERE entity = ? LIMIT 1", (eid,)).fetchone())

    def rename(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> None:
        """Move a link or subdirectory. Replaces an existing file link (its entity, if left with
        no HK and no link, is deleted as by rm) or an empty directory, as rename(2) does."""
        validate_name(dst_name)
        dead: list[int] = []
        with self.catalog.write() as c:
            self._need_dir(c, src_dir)
            self._need_dir(c, dst_dir)
            src = self._entry(c, src_dir, src_name)
            if src is None:
                raise NotFound(f"no {src_name!r} in {self._dir_path(c, src_dir)}")
            if src_dir == dst_dir and src_name == dst_name:
                return
            dst = self._entry(c, dst_dir, dst_name)
            if src.kind == "dir":
                cur: int | None = dst_dir
                while cur is not None:
                    if cur == src.id:
                        raise InvalidArgument("cannot move a directory into itself")
                    cur = c.execute("SELECT parent FROM dirs WHERE id = ?", (cur,)).fetchone()[0]
                if dst is not None:
                    if dst.kind == "file":
                        raise NotADirectory(f"{dst_name!r} is not a directory")
                    if (c.execute("SELECT 1 FROM dirs WHERE parent = ? LIMIT 1", (dst.id,)).fetchone()
                            or c.execute("SELECT 1 FROM links WHERE dir = ? LIMIT 1", (dst.id,)).fetchone()):
                        raise NotEmpty(f"directory {dst_name!r} is not empty")
                    c.execute("DELETE FROM dir_keywords WHERE dir = ?", (dst.id,))
                    c.execute("DELETE FROM xattrs WHERE kind = 'dir' AND id = ?", (dst.id,))
                    c.execute("DELETE FROM dirs WHERE id = ?", (dst.id,))
                c.execute("UPDATE dirs SET parent = ?, name = ?, ctime_ns = ? WHERE id = ?",
                          (dst_dir, dst_name, _now(), src.id))
            else:
                if dst is not None:
                    if dst.kind == "dir":
                        raise IsADirectory(f"{dst_name!r} is a directory")
                    if dst.id == src.id:  # two links to one entity: rename(2) does nothing
                        return
                    c.execute("DELETE FROM links WHERE dir = ? AND name = ?", (dst_dir, dst_name))
                    if self._unreferenced(c, dst.id):
                        self._delete_entity(c, dst.id)
                        dead.append(dst.id)
                c.execute("UPDATE links SET dir = ?, name = ? WHERE dir = ? AND name = ?",
                          (dst_dir, dst_name, src_dir, src_name))
                self._touch_entity(c, src.id)
            self._touch_dir(c, src_dir)
            if dst_dir != src_dir:
                self._touch_dir(c, dst_dir)
        self._drop_bytes(dead)

    def exchange(self, a_dir: int, a_name: str, b_dir: int, b_name: str) -> None:
        """renameat2(RENAME_EXCHANGE): two existing entries (file links or directories) swap
        places in one transaction; nothing is replaced or deleted."""
        with self.catalog.write() as c:
            self._need_dir(c, a_dir)
            self._need_dir(c, b_dir)
            a, b = self._entry(c, a_dir, a_name), self._entry(c, b_dir, b_name)
            if a is None or b is None:
                raise NotFound(f"no {a_name if a is None else b_name!r} to exchange with")
            if (a_dir, a_name) == (b_dir, b_name) or (a.kind == b.kind and a.id == b.id):
                return
            for entry, into in ((a, b_dir), (b, a_dir)):
                cur: int | None = into
                while entry.kind == "dir" and cur is not None:
                    if cur == entry.id:
                        raise InvalidArgument("cannot move a directory into itself")
                    cur = c.execute("SELECT parent FROM dirs WHERE id = ?", (cur,)).fetchone()[0]
            now = _now()

            def move(entry: DirEntry, frm: tuple[int, str], to: tuple[int, str]) -> None:
                if entry.kind == "dir":
                    c.execute("UPDATE dirs SET parent = ?, name = ?, ctime_ns = ? WHERE id = ?",
                              (*to, now, entry.id))
                else:
                    c.execute("UPDATE links SET dir = ?, name = ? WHERE dir = ? AND name = ?", (*to, *frm))
                    self._touch_entity(c, entry.id)
            parked = (a_dir, f"\0exchange{a.id}")          # NUL: no real name can be it
            move(a, (a_dir, a_name), parked)
            move(b, (b_dir, b_name), (a_dir, a_name))
            move(a, parked, (b_dir, b_name))
            self._touch_dir(c, a_dir)
            if b_dir != a_dir:
                self._touch_dir(c, b_dir)

    # ------------------------------------------------------------ DKL / CKL

    @staticmethod
    def _dkl(c: sqlite3.Connection, dirid: int) -> tuple[HK, ...]:
        """Split, not parsed: the store wrote each '//a/b' from a checked HK, and one naming a
        keyword made under older rules ('//@x', until fsck --repair renames it) must still read."""
        return tuple(tuple(r[0][2:].split("/")) for r in
                     c.execute("SELECT hk FROM dir_keywords WHERE dir = ? ORDER BY pos", (dirid,)))

    def _need_dkl_keywords(self, c: sqlite3.Connection, dirid: int, hks: Sequence[HK]) -> None:
        """A DKL may name only existing keywords of the directory's namespace."""
        ns = self._need_dir(c, dirid)[3]
        for h in hks:
            self._need_kw(c, ns, h)

    def _write_dkl(self, c: sqlite3.Connection, dirid: int, hks: Sequence[HK]) -> None:
        c.execute("DELETE FROM dir_keywords WHERE dir = ?", (dirid,))
        c.executemany("INSERT INTO dir_keywords(dir, pos, hk) VALUES (?, ?, ?)",
                      [(dirid, i, format_hk(h)) for i, h in enumerate(hks)])
        c.execute("UPDATE dirs SET ctime_ns = ? WHERE id = ?", (_now(), dirid))

    def akl(self, dirid: int, hks: Sequence[HK | str]) -> None:
        """Add HKs (of the directory's namespace) to its DKL; ones already there are kept once."""
        hl = _hks(hks)
        with self.catalog.write() as c:
            self._need_dkl_keywords(c, dirid, hl)
            dkl = list(self._dkl(c, dirid))
            self._write_dkl(c, dirid, dkl + [h for h in hl if h not in dkl])

    def rkl(self, dirid: int, hks: Sequence[HK | str]) -> None:
        """Remove HKs from the DKL; NotFound if one is not in it."""
        hl = _hks(hks)
        with self.catalog.write() as c:
            self._need_dir(c, dirid)
            dkl = list(self._dkl(c, dirid))
            for h in hl:
                if h not in dkl:
                    raise NotFound(f"{format_hk(h)} is not in the directory keyword list")
            self._write_dkl(c, dirid, [h for h in dkl if h not in hl])

    def set_dkl(self, dirid: int, hks: Sequence[HK | str]) -> None:
        """Replace the DKL (the user.hk.dkl xattr)."""
        hl = _hks(hks)
        with self.catalog.write() as c:
            self._need_dkl_keywords(c, dirid, hl)
            self._write_dkl(c, dirid, hl)

    def chns(self, dirid: int, user: str | int) -> None:
        """Make the directory's ',' refer to user's namespace. The DKL, which names keywords
        of the old namespace, is cleared."""
        with self.catalog.write() as c:
            d = self._need_dir(c, dirid)
            if not self._known_user(c, user):
                raise InvalidArgument(f"no such user {user!r}")
            ns = self._ns_id(c, user)
            if ns == d[3]:
                return
            c.execute("UPDATE dirs SET ns = ? WHERE id = ?", (ns, dirid))
            self._write_dkl(c, dirid, [])

    def ldf(self, dirid: int, hks: Sequence[HK | str] | None = None, name: str | None = None) -> list[int]:
        """Load: link every file matching hks (default: the DKL) into the directory.

        NameClash (listing the names) if two matches share a name, or a match's name is
        taken in the directory by something else; then nothing is linked. Files already
        linked there under their name are left as they are. Returns the matching ids."""
        with self.catalog.write() as c:
            d = self._need_dir(c, dirid)
            hl = list(hks) if hks is not None else list(self._dkl(c, dirid))
            if not hl and name is None:
                raise InvalidArgument("empty keyword list: nothing to load (add keywords with akl)")
            sel, params = self._match(c, d[3], hl, name)
            rows = c.execute(f"SELECT e.id, e.name FROM entities e WHERE e.id IN ({sel}) ORDER BY e.id",
                             params).fetchall()
            by_name: dict[str, list[int]] = {}
            for eid, n in rows:
                by_name.setdefault(n, []).append(eid)
            clash = {n for n, ids in by_name.items() if len(ids) > 1}
            todo = []
            for n, ids in by_name.items():
                if n in clash:
                    continue
                e = self._entry(c, dirid, n)
                if e is None:
                    todo.append((dirid, n, ids[0]))
                elif not (e.kind == "file" and e.id == ids[0]):
                    clash.add(n)
            if clash:
                names = sorted(clash)
                raise NameClash(f"files with the same file name: {', '.join(names)}", names)
            c.executemany("INSERT INTO links(dir, name, entity) VALUES (?, ?, ?)", todo)
            if todo:
                self._touch_dir(c, dirid)
            return [r[0] for r in rows]

    # ------------------------------------------------------------ xattrs

    def _need_object(self, c: sqlite3.Connection, kind: str, id: int) -> None:
        if kind == "file":
            self._need_entity(c, id)
        elif kind == "dir":
            self._need_dir(c, id)
        else:
            raise InvalidArgument(f"xattr kind must be 'file' or 'dir', not {kind!r}")

    def get_xattr(self, kind: str, id: int, name: str) -> bytes:
        """NotFound (the mount answers ENODATA) if the attribute is not set."""
        with self.catalog.read() as c:
            self._need_object(c, kind, id)
            r = c.execute("SELECT value FROM xattrs WHERE kind = ? AND id = ? AND name = ?",
                          (kind, id, name)).fetchone()
        if r is None:
            raise NotFound(f"no attribute {name}")
        return bytes(r[0])

    def xattr_value(self, kind: str, id: int, name: str) -> bytes | None:
        """get_xattr in one statement, its own snapshot (no BEGIN/COMMIT, no check that the
        object exists): None when unset. A first `cat FILE.query` reads FILE's embedding so,
        on this thread's connection (whose page cache the request's other reads share)."""
        r = self.catalog.connection().execute(
            "SELECT value FROM xattrs WHERE kind = ? AND id = ? AND name = ?", (kind, id, name)).fetchone()
        return None if r is None else bytes(r[0])

    def set_xattr(self, kind: str, id: int, name: str, value: bytes) -> None:
        """Set an attribute; like any inode change it moves the object's ctime (as on ext4)."""
        with self.catalog.write() as c:
            self._need_object(c, kind, id)
            c.execute("INSERT OR REPLACE INTO xattrs(kind, id, name, value) VALUES (?, ?, ?, ?)",
                      (kind, id, name, bytes(value)))
            self._xattr_changed(c, kind, id)

    def _xattr_changed(self, c: sqlite3.Connection, kind: str, id: int) -> None:
        """setxattr and removexattr change the inode's ctime (POSIX), not its mtime."""
        if kind == "file":
            self._touch_entity(c, id)
        else:
            c.execute("UPDATE dirs SET ctime_ns = ? WHERE id = ?", (_now(), id))

    def remove_xattr(self, kind: str, id: int, name: str) -> None:
        with self.catalog.write() as c:
            self._need_object(c, kind, id)
            if not c.execute("DELETE FROM xattrs WHERE kind = ? AND id = ? AND name = ?",
                             (kind, id, name)).rowcount:
                raise NotFound(f"no attribute {name}")
            self._xattr_changed(c, kind, id)

    def list_xattrs(self, kind: str, id: int) -> list[str]:
        with self.catalog.read() as c:
            self._need_object(c, kind, id)
            return [r[0] for r in c.execute(
                "SELECT name FROM xattrs WHERE kind = ? AND id = ? ORDER BY name", (kind, id))]
