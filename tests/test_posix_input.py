"""Bad input through the mount and the CLI (issue 11): a clear errno or message, nothing lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import Mount


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args)
    return exc.value.errno


@pytest.mark.mount
def test_non_utf8_names_and_attributes_are_refused_with_eilseq(mount: Mount) -> None:
    """The catalog keeps names as text: a name, xattr name or hkfs attribute value that is not
    UTF-8 is refused (EILSEQ), never EIO with a traceback in daemon.log."""
    root = os.fsencode(mount.root)
    (mount.root / "@" / "kw").mkdir()
    (mount.root / "f").write_bytes(b"keep")
    for where in (root, root + b"/@/kw"):
        bad = where + b"/bad\xff.txt"
        assert _errno(open, bad, "wb") == errno.EILSEQ
        assert _errno(os.mkdir, bad) == errno.EILSEQ
        assert _errno(os.symlink, b"x", bad) == errno.EILSEQ
        assert _errno(os.stat, bad) == errno.EILSEQ
        assert _errno(os.rename, root + b"/f", bad) == errno.EILSEQ
    f = mount.root / "f"
    assert _errno(os.setxattr, f, b"user.bad\xff", b"v") == errno.EILSEQ
    assert _errno(os.setxattr, f, "user.hk.keywords", b"//a\xff") == errno.EILSEQ
    assert _errno(os.setxattr, mount.root, "user.hk.ns", b"\xff") == errno.EILSEQ
    os.setxattr(f, "user.plain", b"\xff\xfe")              # a plain xattr value is bytes: kept
    assert os.getxattr(f, "user.plain") == b"\xff\xfe"
    assert f.read_bytes() == b"keep" and sorted(os.listdir(mount.root)) == ["@", "f"]
    assert not [ln for ln in mount.log.read_text().splitlines() if " ERROR " in ln or "Traceback" in ln]


@pytest.mark.mount
def test_comma_names_in_a_directory_without_keywords_are_einval(mount: Mount) -> None:
    """',NAME' is path syntax: in a directory with no keyword list nothing can be made there
    (it used to land in lost+found)."""
    root = mount.root
    (root / "f").write_bytes(b"x")
    assert _errno(lambda: open(root / ",new", "wb")) == errno.EINVAL
    assert _errno(os.mkdir, root / ",d") == errno.EINVAL
    assert _errno(os.symlink, "f", root / ",s") == errno.EINVAL
    assert _errno(os.link, root / "f", root / ",l") == errno.EINVAL
    assert _errno(os.rename, root / "f", root / ",r") == errno.EINVAL
    assert sorted(os.listdir(root)) == ["@", "f"]


@pytest.mark.mount
def test_chns_to_a_user_that_does_not_exist_is_refused(mount: Mount) -> None:
    mount.run("""
        mkdir d; cd d
        fails_with "no such user" hk chns nosuchuser-hkfs
        not setfattr -n user.hk.ns -v nosuchuser-hkfs . 2>/dev/null
        test "$(getfattr --only-values -n user.hk.ns .)" = root
        hk chns root
    """)


def test_store_chns_refuses_unknown_users(tmp_path: Path) -> None:
    from hkfs.core.errors import InvalidArgument
    from hkfs.core.store import Store
    with Store.open(tmp_path / "s") as s:
        ns = s.namespace_id(os.getuid())
        root = s.root_dir(ns)
        with pytest.raises(InvalidArgument, match="no such user"):
            s.chns(root, "nosuchuser-hkfs")
        assert [u for _, u in s.namespaces()] == [s.namespace_user(ns)]
        s.namespace_id("dave")              # a namespace made by name may be chns'd to
        s.chns(root, "dave")


def test_mount_of_a_damaged_catalog_says_why(tmp_path: Path) -> None:
    """`hk mount` of a store whose catalog is garbage says so at once (it said "did not report
    within 30s"); a dropped table is named, and hk fsck --repair makes it again."""
    import sqlite3
    import subprocess
    import sys

    from conftest import fuse_usable
    if not fuse_usable():
        pytest.skip("FUSE is not available")
    from hkfs.core.store import Store
    hk = [sys.executable, "-c", "from hkfs.cli.main import main; main()"]
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    Store.open(store).close()
    (store / "catalog.sqlite").write_bytes(b"this is not a database" * 500)
    for extra in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (store / extra).unlink(missing_ok=True)
    r = subprocess.run(hk + ["mount", str(store), str(mnt)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "catalog is damaged (file is not a database)" in r.stderr, r.stderr
    assert "did not report" not in r.stderr and not os.path.ismount(mnt)

    (store / "catalog.sqlite").unlink()
    Store.open(store).close()
    with sqlite3.connect(store / "catalog.sqlite") as c:
        c.execute("DROP TABLE xattrs")
    r = subprocess.run(hk + ["mount", str(store), str(mnt)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "table(s) xattrs missing" in r.stderr, r.stderr
    r = subprocess.run(hk + ["fsck", str(store)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "table(s) xattrs missing" in r.stderr
    r = subprocess.run(hk + ["fsck", "--repair", str(store)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with Store.open(store) as s:
        assert s.list_xattrs("dir", s.root_dir(s.namespace_id(os.getuid()))) == []


@pytest.mark.mount
def test_umount_and_mount_clean_up_a_dead_mount(mount_factory) -> None:
    """A daemon killed (kill -9) leaves a mount point that fails with ENOTCONN: hk umount and
    hk mount detach it (lazy unmount) and say so, instead of "not readable"."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import _mounted
    hk = [sys.executable, "-c", "from hkfs.cli.main import main; main()"]
    for cmd in ("umount", "mount"):
        m = mount_factory()
        (m.root / "f").write_text("kept")
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait()
        with pytest.raises(OSError) as exc:
            os.listdir(m.root)
        assert exc.value.errno == errno.ENOTCONN
        args = [cmd, str(m.root)] if cmd == "umount" else [cmd, str(m.store), str(m.root)]
        r = subprocess.run(hk + args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "was a dead mount (its daemon had stopped): detached it (lazy unmount)" in r.stdout + r.stderr
        if cmd == "mount":
            assert (m.root / "f").read_text() == "kept"         # mounted again, nothing lost
            m.proc = None                                        # the fixture unmounts it
            for _ in range(100):
                if _mounted(m.root):
                    break
                time.sleep(0.05)
        else:
            assert not _mounted(m.root)


def test_hk_in_another_users_store_says_it_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's `hk` in a shared mount cannot open the private store: it says so (it said
    "no hkfs store"). Simulated: root can search any directory."""
    from hkfs.cli import context
    from hkfs.core.errors import PermissionDenied
    from hkfs.core.store import Store
    Store.open(tmp_path / "s").close()
    real = os.access
    monkeypatch.setattr(context.os, "access", lambda p, m: False if Path(p) == tmp_path / "s" else real(p, m))
    with pytest.raises(PermissionDenied, match="private to its owner"):
        context._open_store(tmp_path / "s")


@pytest.mark.mount
def test_a_table_dropped_under_a_mount_is_named_in_the_log(mount: Mount) -> None:
    """A table dropped behind the daemon's back: the calls that need it fail with EIO and the
    log says which table and what to do, in one line (no traceback); the rest keeps working."""
    import sqlite3
    (mount.root / "f").write_text("x")
    os.setxattr(mount.root / "f", "user.a", b"1")
    with sqlite3.connect(mount.store / "catalog.sqlite") as c:
        c.execute("DROP TABLE xattrs")
    mount.expected_log.append("the catalog is damaged (no such table: xattrs); unmount and run hk fsck")
    assert _errno(os.getxattr, mount.root / "f", "user.a") == errno.EIO
    assert (mount.root / "f").read_text() == "x"
    log = mount.log.read_text()
    assert "the catalog is damaged (no such table: xattrs); unmount and run hk fsck" in log
    assert "Traceback" not in log
