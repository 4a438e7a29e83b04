"""Users apart on a shared mount (issue 11): the mount run as root with allow_other, a second
user (made with useradd for the session) trying what it must not do, with real tools.

Skipped only where a user cannot be made (not root, no useradd/setpriv, no FUSE)."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import Mount, fuse_usable, start_mount, stop_mount

pytestmark = pytest.mark.mount

USER = "hkfs-second"
T = TypeVar("T")


@pytest.fixture(scope="session")
def second_uid() -> Iterator[int]:
    if os.geteuid() != 0 or not (shutil.which("useradd") and shutil.which("setpriv")):
        pytest.skip("a second user needs root, useradd and setpriv")
    made = subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", USER],
                          capture_output=True, text=True)
    if made.returncode not in (0, 9):          # 9: the user exists (an earlier run)
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    import pwd
    uid = pwd.getpwnam(USER).pw_uid
    try:
        yield uid
    finally:
        if made.returncode == 0:
            subprocess.run(["userdel", "-f", USER], capture_output=True)


def run_as(uid: int, fn: Callable[[], T]) -> T:
    """fn() as user uid (and its group, no others), in a forked child that drops to it after
    every import; the result comes back pickled, an exception as a failed assertion."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            res: tuple = ("ok", fn())
        except BaseException as exc:          # noqa: BLE001 - reported to the parent
            res = ("error", repr(exc))
        try:
            with os.fdopen(w, "wb") as f:
                pickle.dump(res, f)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    os.waitpid(pid, 0)
    status, val = pickle.loads(got)
    assert status == "ok", f"as uid {uid}: {val}"
    return val


def _shared_mount(tmp_path: Path, options: str) -> Iterator[Mount]:
    if not fuse_usable():
        pytest.skip("FUSE is not available")
    # the second user must reach the mount point: not under pytest's private (0700) tmp_path
    base = Path(tempfile.mkdtemp(prefix="hkfs-shared-", dir="/tmp"))
    base.chmod(0o755)
    m = start_mount(tmp_path / "store", base / "mnt", options)
    m.root.chmod(0o755)
    try:
        yield m
    finally:
        stop_mount(m)
        shutil.rmtree(base, ignore_errors=True)
        problems = m.log_problems()
        assert not problems, "\n".join(problems)


@pytest.fixture
def shared(tmp_path: Path, second_uid: int) -> Iterator[Mount]:
    yield from _shared_mount(tmp_path, "allow_other,default_permissions")


@pytest.fixture
def shared_without_default_permissions(tmp_path: Path, second_uid: int) -> Iterator[Mount]:
    yield from _shared_mount(tmp_path, "allow_other")


def test_views_do_not_bypass_a_private_directory(shared: Mount, second_uid: int) -> None:
    """root's file linked only in root's 0700 directory and tagged //k: the second user sees
    neither it in @/k nor can open it there; a file with no directory link is governed by its
    own mode; files in a searchable directory stay visible."""
    shared.run("""
        mkdir -p @/k priv pub; chmod 700 priv; chmod 755 pub
        echo secret > priv/secret; chmod 644 priv/secret; ln priv/secret @/k/
        echo open > pub/open; chmod 644 pub/open; ln pub/open @/k/
        echo tagged > @/k/loose; chmod 644 @/k/loose
        echo both > priv/both; chmod 644 priv/both; ln priv/both pub/both; ln priv/both @/k/
        test "$(ls @/k | tr '\\n' ' ')" = "both loose open secret "
    """)
    shared.run("""
        test "$(ls @/k | tr '\\n' ' ')" = "both loose open "
        not cat @/k/secret 2>/dev/null
        not cat priv/secret 2>/dev/null
        test "$(cat @/k/open)" = open; test "$(cat @/k/loose)" = tagged; test "$(cat @/k/both)" = both
    """, user=second_uid)


def test_the_store_is_private_to_its_owner(shared: Mount, second_uid: int) -> None:
    assert stat.S_IMODE(shared.store.stat().st_mode) == 0o700
    assert stat.S_IMODE((shared.store / "catalog.sqlite").stat().st_mode) == 0o600
    shared.run(f"not cat {shared.store}/catalog.sqlite 2>/dev/null; not ls {shared.store} 2>/dev/null",
               user=second_uid)


def test_allow_other_alone_still_checks_permissions(shared_without_default_permissions: Mount,
                                                   second_uid: int) -> None:
    """The daemon checks no permissions itself, so allow_other turns default_permissions on:
    root's 0600 file stays root's."""
    m = shared_without_default_permissions
    m.run("echo mine > private; chmod 600 private; echo shared > open; chmod 644 open")
    m.run("""
        not cat private 2>/dev/null
        test "$(cat open)" = shared
        not sh -c 'echo x >> open' 2>/dev/null
        not rm open 2>/dev/null
    """, user=second_uid)
    assert (m.root / "private").read_text() == "mine\n" and (m.root / "open").read_text() == "shared\n"


def test_a_shared_directory_behaves_as_on_ext4(shared: Mount, second_uid: int) -> None:
    """Files the second user makes are theirs; the sticky bit keeps root's files from them;
    they cannot chmod, chown or rename root's files, nor write into root's directories."""
    shared.run("mkdir -m 1777 tmp; echo root > tmp/roots; chmod 666 tmp/roots; mkdir -m 755 ro")
    shared.run(f"""
        echo mine > tmp/mine; test "$(stat -c %u:%g tmp/mine)" = {second_uid}:{second_uid}
        mkdir tmp/mydir; test "$(stat -c %u tmp/mydir)" = {second_uid}
        ln -s mine tmp/mylink; test "$(stat -c %u tmp/mylink)" = {second_uid}
        echo more >> tmp/roots                       # mode 666: writable
        not rm tmp/roots 2>/dev/null                 # sticky: not theirs to remove
        not mv tmp/roots tmp/stolen 2>/dev/null
        not chmod 600 tmp/roots 2>/dev/null
        not chown {second_uid} tmp/roots 2>/dev/null
        not touch ro/new 2>/dev/null
        not mkdir @/newkw 2>/dev/null                # the keyword space is the mounting user's
        rm tmp/mine; rmdir tmp/mydir; rm tmp/mylink
    """, user=second_uid)
    assert (shared.root / "tmp" / "roots").read_text() == "root\nmore\n"
    assert sorted(os.listdir(shared.root / "tmp")) == ["roots"]


def test_a_rename_over_a_users_file_keeps_the_source_owner_and_mode(shared: Mount, second_uid: int) -> None:
    """Issue 11 item 3: root's 0600 file renamed by the second user over that user's own file
    is root's file there (owner and mode), not the user's inode holding root's bytes."""
    shared.run("mkdir s; chmod 777 s; echo secret > s/rootfile; chmod 600 s/rootfile")
    shared.run("""
        echo mine > s/mine
        mv s/rootfile s/mine
        test "$(stat -c %u:%a s/mine)" = 0:600
        not cat s/mine 2>/dev/null
    """, user=second_uid)
    assert (shared.root / "s" / "mine").read_text() == "secret\n"
