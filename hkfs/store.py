"""The store: the paper's operations as a Python API over the SQLite catalog
and the entity files (STORE/entities/<id>).

Every public method is one transaction (BEGIN IMMEDIATE for writes), so a crash
between two calls leaves the catalog consistent. Bytes are created before the
row that names them is committed and deleted only after the row's deletion is
committed: a crash can leave an orphan file (fsck removes it), never a row
without bytes. Safe from many threads (a connection per thread, WAL).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .naming import HK

__all__ = ["Store", "EntityInfo", "DirInfo", "DirEntry", "LOST_FOUND"]

LOST_FOUND = "lost+found"


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


class Store:
    """A store directory: catalog.sqlite, entities/, lock."""

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> Store:
        """Open (and with create, make) the store at path; migrates an older catalog."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def lock(self) -> None:
        """Exclusive flock on STORE/lock; StoreLocked if another process holds it."""
        raise NotImplementedError

    def unlock(self) -> None:
        raise NotImplementedError

    def entity_path(self, eid: int) -> Path:
        """STORE/entities/<eid>, opened directly by the mount for read/write."""
        raise NotImplementedError

    def namespace_id(self, user: str | int) -> int:
        """The namespace of a user name or uid, created on first use."""
        raise NotImplementedError

    def namespace_user(self, ns: int) -> str:
        raise NotImplementedError

    def root_dir(self, ns: int) -> int:
        """The namespace's top directory (created on first use)."""
        raise NotImplementedError

    # keywords
    def mkkw(self, ns: int, hk: HK, *, parents: bool = False) -> int:
        raise NotImplementedError

    def rmkw(self, ns: int, hk: HK) -> None:
        """KeywordInUse if a file carries it or it has child keywords."""
        raise NotImplementedError

    def keyword_exists(self, ns: int, hk: HK) -> bool:
        raise NotImplementedError

    def keyword_children(self, ns: int, hk: HK) -> list[str]:
        raise NotImplementedError

    def keywords(self, ns: int) -> list[HK]:
        raise NotImplementedError

    def keyword_counts(self, ns: int, hk: HK = ()) -> list[tuple[HK, int]]:
        raise NotImplementedError

    # entities
    def create(self, ns: int, name: str, *, hks: Sequence[HK] = (), directory: int | None = None,
               mode: int = 0o644, uid: int = 0, gid: int = 0) -> int:
        raise NotImplementedError

    def bulk_create(self, ns: int, items: Iterable[tuple[str, Sequence[HK]]], *, mode: int = 0o644,
                    uid: int = 0, gid: int = 0, make_files: bool = True) -> list[int]:
        """Create many tagged entities in one transaction (imports, benchmarks)."""
        raise NotImplementedError

    def entity(self, eid: int) -> EntityInfo:
        raise NotImplementedError

    def set_attrs(self, eid: int, *, size: int | None = None, mode: int | None = None,
                  uid: int | None = None, gid: int | None = None, atime_ns: int | None = None,
                  mtime_ns: int | None = None) -> None:
        raise NotImplementedError

    def atkw(self, eid: int, hks: Sequence[HK], *, create: bool = False) -> None:
        raise NotImplementedError

    def dtkw(self, eid: int, hks: Sequence[HK]) -> None:
        raise NotImplementedError

    def set_hks(self, eid: int, hks: Sequence[HK], *, create: bool = False) -> None:
        raise NotImplementedError

    def chfn(self, eid: int, new_name: str) -> None:
        raise NotImplementedError

    def rme(self, eid: int) -> None:
        raise NotImplementedError

    def resolve(self, ns: int, hks: Sequence[HK], name: str | None = None) -> list[EntityInfo]:
        raise NotImplementedError

    def name_counts(self, ns: int, hks: Sequence[HK]) -> dict[str, int]:
        raise NotImplementedError

    # directories
    def mkdir(self, parent: int, name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> int:
        raise NotImplementedError

    def rmdir(self, dirid: int) -> None:
        raise NotImplementedError

    def dir(self, dirid: int) -> DirInfo:
        raise NotImplementedError

    def lookup(self, dirid: int, name: str) -> DirEntry | None:
        raise NotImplementedError

    def listdir(self, dirid: int) -> list[DirEntry]:
        raise NotImplementedError

    def link(self, eid: int, dirid: int, name: str | None = None) -> None:
        raise NotImplementedError

    def unlink(self, dirid: int, name: str) -> None:
        raise NotImplementedError

    def rename(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> None:
        raise NotImplementedError

    def akl(self, dirid: int, hks: Sequence[HK]) -> None:
        raise NotImplementedError

    def rkl(self, dirid: int, hks: Sequence[HK]) -> None:
        raise NotImplementedError

    def set_dkl(self, dirid: int, hks: Sequence[HK]) -> None:
        raise NotImplementedError

    def chns(self, dirid: int, user: str | int) -> None:
        raise NotImplementedError

    def ldf(self, dirid: int, hks: Sequence[HK] | None = None, name: str | None = None) -> list[int]:
        raise NotImplementedError

    # xattrs
    def get_xattr(self, kind: str, id: int, name: str) -> bytes:
        raise NotImplementedError

    def set_xattr(self, kind: str, id: int, name: str, value: bytes) -> None:
        raise NotImplementedError

    def remove_xattr(self, kind: str, id: int, name: str) -> None:
        raise NotImplementedError

    def list_xattrs(self, kind: str, id: int) -> list[str]:
        raise NotImplementedError
