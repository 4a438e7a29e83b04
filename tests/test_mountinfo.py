"""hkfs.fuse.mountinfo: finding the store behind a path from /proc/mounts (no FUSE needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hkfs.fuse import mountinfo
from hkfs.fuse.mountinfo import find_mount, fsname_for, hk_mounts

PROC = """\
/dev/vda / ext4 rw,relatime 0 0
hkfs:/data/store /home/u/hk fuse.hkfs rw,nosuid,nodev 0 0
hkfs:/data/my\\040store /home/u/hk/inner fuse.hkfs rw 0 0
sshfs#x /home/u/remote fuse.sshfs rw 0 0
"""


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "mounts"
    p.write_text(PROC)
    monkeypatch.setattr(mountinfo, "_PROC_MOUNTS", str(p))
    return p


def test_fsname_escapes_option_syntax() -> None:
    assert fsname_for("/a/b") == "hkfs:/a/b"
    assert fsname_for("/a,b") == "hkfs:/a\\,b"


def test_hk_mounts_and_find(proc: Path) -> None:
    assert hk_mounts(str(proc)) == [(Path("/home/u/hk"), Path("/data/store")),
                                     (Path("/home/u/hk/inner"), Path("/data/my store"))]
    assert find_mount("/home/u/hk/@/photo") == (Path("/home/u/hk"), Path("/data/store"))
    assert find_mount("/home/u/hk/inner/x") == (Path("/home/u/hk/inner"), Path("/data/my store"))
    assert find_mount("/home/u/hkx") is None
    assert find_mount("/home/u/remote/a") is None
