"""Views never show a user more than the directories do (issue 11, docs/mount.md "Users apart").

A file with directory links is reached through a view only by a user who could reach it
through one of those links: search permission on every directory from its namespace's
root down. A file with no directory link (keywords only) is governed by its own mode.
The rule is computed per caller from the directories' modes; it is pure, the mount
(hkfs.fuse.operations) asks it only for other users of a shared (allow_other) mount.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable

__all__ = ["DirPerm", "blocked_dirs", "caller_groups", "permitted"]

# (directory id, parent id or None, mode, uid, gid), as Store.dir_perms gives them
DirPerm = tuple[int, "int | None", int, int, int]


def permitted(mode: int, uid: int, gid: int, caller: int, groups: frozenset[int], want: int) -> bool:
    """Whether the caller may do `want` (R_OK 4 | W_OK 2 | X_OK 1) to an inode of that mode
    and owner, as the kernel's generic_permission decides: root may read and write anything
    and execute a file with any execute bit (search any directory); others by the owner's,
    the group's or the other bits, whichever class they fall in first."""
    if caller == 0:
        return not want & 1 or stat.S_ISDIR(mode) or bool(mode & 0o111)
    bits = mode >> 6 if caller == uid else mode >> 3 if gid in groups else mode
    return want & bits & 7 == want


def _searchable(mode: int, uid: int, gid: int, caller: int, groups: frozenset[int]) -> bool:
    return permitted(stat.S_IFDIR | mode, uid, gid, caller, groups, 1)


def blocked_dirs(dirs: Iterable[DirPerm], caller: int, groups: frozenset[int]) -> set[int]:
    """Directories the caller cannot reach: one on the way down from a root lacks search permission."""
    rows = {d[0]: d for d in dirs}
    blocked: dict[int, bool] = {}
    for start in rows:
        chain, cur, verdict = [], start, False
        while cur is not None and cur not in blocked:    # a loop, not recursion: trees may be deep
            chain.append(cur)
            row = rows.get(cur)
            if row is None:
                break
            cur = row[1]
        else:
            verdict = blocked[cur] if cur is not None else False
        for d in reversed(chain):                        # from the top down
            _id, _parent, mode, uid, gid = rows[d]
            verdict = verdict or not _searchable(mode, uid, gid, caller, groups)
            blocked[d] = verdict
    return {d for d, b in blocked.items() if b}


def caller_groups(pid: int, gid: int) -> frozenset[int]:
    """The calling process's groups (its gid and supplementary groups, from /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset([gid, *(int(g) for g in line.split()[1:])])
    except (OSError, ValueError):
        pass
    return frozenset([gid])
