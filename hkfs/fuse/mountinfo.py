"""Which hkfs mount a path is in, read from /proc/self/mounts.

The daemon mounts with `fsname=hkfs:<absolute store path>`, so any process
(the `hk` CLI run inside a mount, the tests) finds the store behind a path
and opens it itself; nothing is asked of the daemon.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["FSNAME_PREFIX", "SUBTYPE", "PID_NAME", "fsname_for", "hk_mounts", "find_mount"]

FSNAME_PREFIX = "hkfs:"
SUBTYPE = "hkfs"
PID_NAME = "daemon.pid"     # STORE/daemon.pid: written by the daemon while it serves the store
_PROC_MOUNTS = "/proc/self/mounts"
_OCTAL = re.compile(r"\\([0-7]{3})")


def fsname_for(store: str | os.PathLike[str]) -> str:
    """The fsname mount option for a store; ',' and '\\' escaped for libfuse's option parser."""
    text = FSNAME_PREFIX + os.path.abspath(store)
    return text.replace("\\", "\\\\").replace(",", "\\,")


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def hk_mounts(proc_mounts: str | None = None) -> list[tuple[Path, Path]]:
    """All hkfs mounts as (mountpoint, store), in mount order."""
    out: list[tuple[Path, Path]] = []
    try:
        with open(proc_mounts or _PROC_MOUNTS, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or not fields[2].startswith("fuse"):
            continue
        src = _unescape(fields[0])
        if src.startswith(FSNAME_PREFIX):
            out.append((Path(_unescape(fields[1])), Path(src[len(FSNAME_PREFIX):])))
    return out


def find_mount(path: str | os.PathLike[str]) -> tuple[Path, Path] | None:
    """(mountpoint, store) of the hkfs mount that holds `path` (the innermost one), or None.

    The path is made absolute lexically (no symlink or '@' resolution inside the
    mount is needed: only the prefix matters).
    """
    p = os.path.abspath(path)
    best: tuple[Path, Path] | None = None
    for mnt, store in hk_mounts():
        m = str(mnt)
        if (p == m or p.startswith(m.rstrip("/") + "/")) and (best is None or len(m) >= len(str(best[0]))):
            best = (mnt, store)
    return best
