"""hk mount / hk umount: backgrounding, readiness, clear one-line failures; refused names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HK_CMD, Mount, MountFactory, daemon_loads_libfuse3, fuse_usable, stop_mount

pytestmark = pytest.mark.mount


def hk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(HK_CMD + list(args), capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, **(env or {})))


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def need_fuse() -> None:
    if not fuse_usable():
        pytest.skip("FUSE is not available")


def test_background_mount_and_umount(tmp_path: Path, need_fuse: None) -> None:
    store, mnt = tmp_path / "new-store", tmp_path / "mnt"
    mnt.mkdir()
    r = hk("mount", str(store), str(mnt))
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)                     # ready when hk mount returns
        assert (store / "catalog.sqlite").exists()      # a missing store is created empty
        pid = int((store / "daemon.pid").read_text())
        (mnt / "f.txt").write_text("kept\n")
        line = one_error_line(hk("mount", str(store), str(tmp_path / "other")))
        assert "does not exist" in line
        (tmp_path / "other").mkdir()
        line = one_error_line(hk("mount", str(store), str(tmp_path / "other")))
        assert "locked" in line                          # a second daemon on the same store
        line = one_error_line(hk("mount", str(tmp_path / "s2"), str(mnt)))
        assert "busy" in line
    finally:
        r2 = hk("umount", str(mnt))
        if os.path.ismount(mnt):
            subprocess.run(["fusermount", "-u", "-z", str(mnt)])
    assert r2.returncode == 0, r2.stderr
    assert not os.path.ismount(mnt)
    assert not (store / "daemon.pid").exists()          # the daemon finished before umount returned
    # The process itself is gone (or a zombie awaiting init) a moment later; polled, since on a
    # loaded machine the interpreter's own shutdown after removing daemon.pid can take a while.
    with pytest.raises(ProcessLookupError):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        raise ProcessLookupError
            except FileNotFoundError as exc:           # reaped between kill() and open()
                raise ProcessLookupError from exc
            time.sleep(0.05)
    log = (store / "daemon.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log
    assert "max threads" not in log                    # libfuse 3.14's complaint on every mount
    assert "unmounted" in log
    # remount: the file is still there
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    assert hk("mount", str(store), str(mnt2)).returncode == 0
    try:
        assert (mnt2 / "f.txt").read_text() == "kept\n"
    finally:
        assert hk("umount", str(mnt2)).returncode == 0


def test_mount_failures_are_one_clear_line(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "not a directory" in one_error_line(hk("mount", str(tmp_path / "s"), str(afile)))
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    line = one_error_line(hk("mount", str(tmp_path / "s"), str(tmp_path), env={"PATH": str(empty_bin)}))
    assert "FUSE is unavailable" in line
    assert "not an hkfs mount" in one_error_line(hk("umount", str(tmp_path)))


def test_umount_of_a_busy_mount_is_one_line(mount: Mount) -> None:
    holder = subprocess.Popen(["sleep", "600"], cwd=mount.root)   # keeps the mount busy (killed below)
    try:
        line = one_error_line(hk("umount", str(mount.root)))
        assert "cannot unmount" in line and "busy" in line.lower()
        assert os.path.ismount(mount.root)
    finally:
        holder.kill()
        holder.wait()


def test_refused_names(mount: Mount) -> None:
    long = "a" * 256
    r = mount.run(f"""
        mkdir @/ok d
        fails_with 'too long' touch d/{long}
        fails_with 'too long' mkdir @/{long}
        fails_with 'too long' mkdir d/{long}
        fails_with 'Invalid argument' mkdir $'@/bad\x01kw'
        fails_with 'Invalid argument' mkdir '@/a,b'
        fails_with 'Invalid argument' setfattr -n user.hk.keywords -v '//ok//..' d
        mkdir d/x
        fails_with 'Invalid argument' setfattr -n user.hk.dkl -v '//ok/../x' d/x
        fails_with 'Invalid argument' setfattr -n user.hk.dkl -v '//ok//a,b' d/x
        fails_with 'No such file' setfattr -n user.hk.dkl -v '//nokw' d/x
        fails_with 'File exists' mkdir d/@
        fails_with 'Directory not empty' rmdir d
        echo x > @/ok/f
        fails_with 'Directory not empty' rmdir @/ok
        fails_with 'Is a directory' rm -f @/ok
        fails_with 'Operation not permitted' mv @/ok d       # a keyword does not become a directory
        fails_with 'No such file' cat @/ok/nothing
        echo done
    """)
    assert "done" in r.stdout


def test_a_file_name_with_a_newline_stays_on_its_log_line(mount: Mount) -> None:
    """File names may hold newlines (stress-ng's filename stressor makes them): the daemon's log
    line about such a file (here its move to lost+found, after `rm` in its only view) escapes
    them, so no name can write a line of its own, e.g. a made-up ERROR, into daemon.log."""
    mount.run("""
        mkdir @/names
        echo x > $'@/names/a\nFAKE-LINE from a name'
        rm $'@/names/a\nFAKE-LINE from a name'
        ls lost+found/a*
    """)
    lines = mount.log.read_text().splitlines()
    assert not [ln for ln in lines if ln.startswith("FAKE-LINE")]
    assert [ln for ln in lines if "lost+found/a\\nFAKE-LINE from a name" in ln]


def test_default_permissions_enforced(mount_factory: MountFactory) -> None:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    m = mount_factory(options="allow_other,default_permissions")
    m.run("""
        mkdir pub; chmod 755 pub
        echo secret > pub/s; chmod 600 pub/s
        echo open > pub/o; chmod 644 pub/o
        mkdir @/k; echo tagged > @/k/t; chmod 600 @/k/t
    """)
    r = m.run("cat pub/o; fails_with 'Permission denied' cat pub/s;"
              "fails_with 'Permission denied' cat @/k/t; fails_with 'Permission denied' touch pub/new", user=65534, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "open"


def test_fixture_always_unmounts(tmp_path: Path, need_fuse: None) -> None:
    from conftest import start_mount
    m = start_mount(tmp_path / "s", tmp_path / "m")
    stop_mount(m)
    assert not os.path.ismount(tmp_path / "m")
    assert m.proc is not None and m.proc.returncode == 0
    assert sys.executable


def _demo_hints(out: str) -> list[str]:
    """The commands `hk demo` suggests (the lines after 'Try:', comment cut off)."""
    lines = out.split("Try:", 1)[1].split("Unmount with:", 1)[0].splitlines()
    return [ln.split("  #", 1)[0].strip() for ln in lines if ln.strip()]


def test_demo_mounts_the_paper_example(tmp_path: Path, need_fuse: None) -> None:
    store, mnt = tmp_path / "demo-store", tmp_path / "demo-mnt"
    r = subprocess.run(HK_CMD + ["demo"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    try:
        assert r.returncode == 0, r.stderr
        assert str(mnt) in r.stdout and "hk umount demo-mnt" in r.stdout
        assert "make umount" not in r.stdout                # outside the checkout there is no Makefile
        dps = sorted(os.listdir(mnt / "@" / "workshop" / "@" / "SIG" / "DPS"))
        assert dps == ["main.aux", "main.dvi", "main.log", "main.tex"]
        shared = [n for n in os.listdir(mnt / "@" / "workshop") if n.startswith("main~")]
        assert len(shared) == 12                        # three projects, four shared names
        assert sorted(os.listdir(mnt / "work" / ",")) == dps
        r2 = subprocess.run(HK_CMD + ["demo"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert r2.returncode == 0 and "already mounted" in r2.stdout
        # Every hint works, on the first run and again on the next (mkdir of an existing keyword).
        for out in (r.stdout, r2.stdout):
            for cmd in _demo_hints(out):
                run = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True,
                                     timeout=180)
                assert run.returncode == 0, (cmd, run.stderr)
    finally:
        assert hk("umount", str(mnt)).returncode == 0
    assert not os.path.ismount(mnt)
    assert store.is_dir()


def test_fixture_reports_daemon_errors(tmp_path: Path) -> None:
    m = Mount(tmp_path / "mnt", tmp_path)
    (tmp_path / "daemon.log").write_text(
        "2026-01-01 00:00:00,000 1 INFO hkfs.fuse.daemon: mounting\n"
        "2026-01-01 00:00:00,000 1 ERROR hkfs.fuse.operations: unexpected error in getattr\n"
        "Traceback (most recent call last):\n")
    assert len(m.log_problems()) == 2
    m.expected_log += ["unexpected error in getattr", "Traceback"]
    assert m.log_problems() == []


def test_nonempty_mountpoint_refused_in_one_line(tmp_path: Path, need_fuse: None) -> None:
    mnt = tmp_path / "full"
    mnt.mkdir()
    (mnt / "x").write_text("x")       # mounting would hide it
    line = one_error_line(hk("mount", str(tmp_path / "s"), str(mnt)))
    assert "not empty" in line and "-o nonempty" in line
    assert not os.path.ismount(mnt)
    r = hk("mount", "-o", "nonempty", str(tmp_path / "s"), str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        assert os.listdir(mnt) == ["@"]
    finally:
        assert hk("umount", str(mnt)).returncode == 0
    assert (mnt / "x").read_text() == "x"


def test_libfuse_refusal_is_one_line(tmp_path: Path, need_fuse: None) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = hk("mount", "-o", "no_such_fuse_option", str(tmp_path / "s"), str(mnt))
    line = one_error_line(r)
    assert "cannot mount" in line and "no_such_fuse_option" in line
    assert not os.path.ismount(mnt)


def test_killed_daemon_while_writing_keeps_the_bytes(mount_factory: MountFactory) -> None:
    """SIGKILL between a write and its flush: the catalog still has the old size, and the mount
    lists closed files with the catalog's size, so the next daemon records the bytes' size."""
    m = mount_factory()
    (m.root / "d").mkdir()
    fd = os.open(m.root / "d" / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 5000)       # reaches the bytes file; no flush, so no catalog update
        assert m.proc is not None
        m.proc.kill()
        m.proc.wait(timeout=30)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass                        # the file system is gone (ENOTCONN)
    stop_mount(m)
    m2 = mount_factory(store=m.store)
    assert (m2.root / "d" / "f").stat().st_size == 5000
    assert (m2.root / "d" / "f").read_bytes() == b"x" * 5000
    assert "did not stop cleanly: 1 file size(s) recorded" in m2.log.read_text()


def test_libfuse_failing_after_init_is_reported_at_once(tmp_path: Path, need_fuse: None) -> None:
    """libfuse 3 accepts max_read as an option, then aborts once init has run: the caller
    gets libfuse's reason in one line instead of waiting for a mount that never comes."""
    if not daemon_loads_libfuse3():
        pytest.skip("libfuse 2 takes max_read as it is")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    line = one_error_line(hk("mount", "-o", "max_read=1048576", str(tmp_path / "s"), str(mnt)))
    assert "cannot mount" in line and ("read size" in line or "daemon exited" in line)
    assert not os.path.ismount(mnt)
