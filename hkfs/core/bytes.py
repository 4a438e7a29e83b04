"""Byte operations on entity files besides read/write, each in a crash-safe order.

The mount reads and writes STORE/entities/<id> through its own descriptors; what
else touches those files lives here, next to the catalog rows that describe them.
The rule for every operation (docs/store.md, "Crash order of byte operations"):
the bytes change first, the catalog row after, and no state in between may leave
two entities sharing one bytes file. A crash between the two steps leaves a row
whose size or times are stale (fsck's stale-size) or, for a save, a row with no
bytes (fsck's missing-bytes repair removes it, which is what the save was doing).
"""

from __future__ import annotations

import os

from .store import Store

__all__ = ["replace_bytes", "truncate", "set_times", "write_symlink", "read_symlink"]


def replace_bytes(store: Store, src: int, dst: int) -> None:
    """An editor save: entity `dst` takes the bytes and permissions of entity `src`, which goes.

    1. rename(entities/SRC, entities/DST): one atomic step; before it DST holds the
       old bytes and SRC the new, after it DST holds the new and SRC has none. The
       two are never hard links of one file (a crash there would let a later write
       through the temp name change the saved document).
    2. One transaction: DST's size, mode and mtime; SRC's row and names deleted.
    Descriptors open on SRC keep writing the same file, now DST's bytes."""
    dp = store.entity_path(dst)
    os.rename(store.entity_path(src), dp)
    st = os.stat(dp)
    store.replace_entity(src, dst, size=st.st_size, mtime_ns=st.st_mtime_ns)


def truncate(store: Store, eid: int, length: int, fd: int | None = None) -> None:
    """Set the file's length (through `fd` when the caller has it open), then record it."""
    if fd is not None:
        os.ftruncate(fd, length)
    else:
        os.truncate(store.entity_path(eid), length)
    store.record_bytes(eid)


def set_times(store: Store, eid: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """utimens: the bytes file's times (None keeps one), then the catalog's."""
    p = store.entity_path(eid)
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns if atime_ns is None else atime_ns,
                    st.st_mtime_ns if mtime_ns is None else mtime_ns))
    store.set_attrs(eid, atime_ns=atime_ns, mtime_ns=mtime_ns)


def write_symlink(store: Store, eid: int, target: str) -> None:
    """A symlink entity's bytes are its target (file names may hold any byte: surrogateescape)."""
    with open(store.entity_path(eid), "wb") as f:
        f.write(target.encode("utf-8", "surrogateescape"))
    store.record_bytes(eid)


def read_symlink(store: Store, eid: int) -> str:
    return store.entity_path(eid).read_bytes().decode("utf-8", "surrogateescape")
