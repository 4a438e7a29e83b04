"""Files removed while open: libfuse's hidden names for them and the attributes kept for them.

libfuse (without hard_remove) renames a file removed while open (rm, or a rename over it) to
`.fuse_hidden<node><counter>` in the same directory, asks for its attributes under that name
(fstat: the kernel sends no file handle), and unlinks that name at the last close. The
daemon takes the hidden rename as the removal itself (HKOperations._hide), so the catalog
never holds the hidden name; this remembers it, and the mode and owner the file had, for
as long as the file is open (an entity removed for good has no row to read them from).
"""

from __future__ import annotations

import os

__all__ = ["HIDDEN_PREFIX", "RemovedWhileOpen"]

HIDDEN_PREFIX = ".fuse_hidden"


class RemovedWhileOpen:
    """Hidden name -> entity, and entity -> (mode bits, uid, gid) while it stays open."""

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        self._kept: dict[int, tuple[int, int, int]] = {}

    @staticmethod
    def is_hidden_name(name: str) -> bool:
        return name.startswith(HIDDEN_PREFIX)

    def eid_of(self, path: str | None) -> int | None:
        """The entity a hidden path stands for; None for every other path (cheap when none)."""
        if not self._names or path is None:
            return None
        return self._names.get(path.rpartition("/")[2])

    def hides(self, eid: int) -> bool:
        """Whether libfuse holds eid under a hidden name (an open file removed by one of its names)."""
        return bool(self._names) and eid in self._names.values()

    def hide(self, name: str, eid: int, mode: int, uid: int, gid: int) -> None:
        self._names[name] = eid
        self._kept[eid] = (mode & 0o7777, uid, gid)

    def forget_name(self, path: str) -> bool:
        """libfuse's unlink of the hidden name at the last close; False if path is not one."""
        return self._names.pop(path.rpartition("/")[2], None) is not None

    def attrs(self, eid: int, st: os.stat_result) -> tuple[int, int, int]:
        """(mode bits, uid, gid) of a removed file: as kept, else its bytes file's."""
        return self._kept.get(eid) or (st.st_mode & 0o7777, st.st_uid, st.st_gid)

    def change(self, eid: int, st: os.stat_result, mode: int | None = None, uid: int | None = None,
               gid: int | None = None) -> None:
        """fchmod / fchown of a removed file."""
        m, u, g = self.attrs(eid, st)
        self._kept[eid] = (m if mode is None else mode & 0o7777, u if uid is None else uid,
                           g if gid is None else gid)

    def closed(self, eid: int) -> None:
        """Entity eid's last handle closed: nothing is kept for it any more."""
        self._kept.pop(eid, None)
