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


# ---------------------------------------------------------------------- hk as the second user

def hk_as(uid: int, cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run `hk ARGS` in-process as user `uid` in `cwd`: exit status, stdout, stderr.

    The interpreter lives below a 0700 directory, so another user cannot exec it: a forked
    child drops to the user and runs the click CLI. Every module the commands import lazily
    is imported first (the child could not read it)."""
    import json

    from click.testing import CliRunner

    import hkfs.cli.through_mount  # noqa: F401
    import hkfs.mount.queryfs  # noqa: F401
    import hkfs.query.embeddings  # noqa: F401
    import hkfs.query.queryfiles  # noqa: F401
    from hkfs.cli.main import cli

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: never returns into pytest
        code = 70
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.chdir(cwd)
            res = CliRunner().invoke(cli, list(args), prog_name="hk")
            err = res.stderr
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                import traceback
                err += "".join(traceback.format_exception(res.exception))
            with os.fdopen(w, "w") as f:
                json.dump([res.exit_code, res.stdout, err], f)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    code, out, err = json.loads(data)
    return code, out, err


def hk_ok(uid: int, cwd: Path, *args: str) -> str:
    code, out, err = hk_as(uid, cwd, *args)
    assert code == 0 and "Traceback" not in err, f"hk {' '.join(args)} as {uid}: {code}\n{out}\n{err}"
    return out


def hk_fails(uid: int, cwd: Path, *args: str) -> str:
    code, out, err = hk_as(uid, cwd, *args)
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1, \
        f"hk {' '.join(args)} as {uid}: {code}\n{out}\n{err}"
    return err


@pytest.fixture
def tagged(shared: Mount) -> Mount:
    """root's files tagged //k: one only in root's 0700 directory, one in a searchable one,
    one linked in both, one with keywords only; pub's DKL is //k."""
    shared.run("""
        mkdir -p @/k/sub priv pub; chmod 700 priv; chmod 755 pub
        echo secret > priv/secret; chmod 644 priv/secret; ln priv/secret @/k/
        echo open > pub/open; chmod 644 pub/open; ln pub/open @/k/
        echo tagged > @/k/loose; chmod 644 @/k/loose
        echo both > priv/both; chmod 644 priv/both; ln priv/both pub/both; ln priv/both @/k/
        echo mine > pub/notes; chmod 600 pub/notes
        setfattr -n user.hk.dkl -v //k pub
    """)
    return shared


def test_hk_read_commands_answer_other_users_through_the_mount(tagged: Mount, second_uid: int) -> None:
    """The second user cannot open the store; hk ls/path/kw/info/prompt/completion answer what
    the mount shows that user: root's file reachable only through root's 0700 directory is
    not there (root's own hk, straight from the store, shows it)."""
    m, uid = tagged, second_uid
    k, pub = m.root / "@" / "k", m.root / "pub"
    assert hk_ok(0, k, "ls") == "both loose open secret\n"
    assert hk_ok(uid, k, "ls") == hk_ok(uid, k, "ls", "-1").replace("\n", " ").strip() + "\n"
    assert hk_ok(uid, k, "ls", "-1").split() == ["both", "loose", "open"]
    assert hk_ok(uid, pub, "ls", ",").split() == ["both", "loose", "open"]
    assert hk_ok(uid, m.root, "ls", "//k").split() == ["both", "loose", "open"]
    assert hk_ok(uid, m.root, "ls", "//k,open").split() == ["open"]
    assert "no file matches" in hk_fails(uid, m.root, "ls", "//k,secret")
    assert hk_ok(uid, pub, "ls").split() == sorted(os.listdir(pub)) == ["both", "notes", "open"]
    assert hk_ok(uid, m.root, "ls") == hk_ok(0, m.root, "ls") == "priv pub\n"
    for args in (["pub"], ["pub/open"], ["@"]):
        assert hk_ok(uid, m.root, "ls", *args) == hk_ok(0, m.root, "ls", *args)
    assert hk_ok(uid, m.root, "ls", "@/k") == "both loose open\n"
    assert hk_ok(uid, m.root / "@", "ls") == "k\n"
    seen = m.run("ls @/k", user=uid).stdout.split()
    assert [n for n in seen if n != "sub"] == ["both", "loose", "open"]

    assert hk_ok(uid, pub, "path", "//k,open", ",both", "notes") == \
        f"{m.root}/@/k/open\n{m.root}/pub/,both\n{m.root}/pub/notes\n"
    assert hk_ok(uid, pub, "path", "//k,open") == hk_ok(0, pub, "path", "//k,open")
    assert "no keyword //nope" in hk_fails(uid, pub, "path", "//nope,x")

    assert hk_ok(0, m.root, "kw") == "//k (4)\n  /sub (0)\n"
    assert hk_ok(uid, m.root, "kw") == "//k (3)\n  /sub (0)\n"
    assert hk_ok(uid, m.root, "kw", "//k/sub") == "//k/sub (0)\n"

    mine = hk_ok(uid, pub, "info", "open")
    assert mine == hk_ok(0, pub, "info", "open")
    assert "keywords:  //k\n" in mine and f"links:     {m.root}/pub/open\n" in mine
    both_root, both_user = hk_ok(0, pub, "info", "both"), hk_ok(uid, pub, "info", "both")
    assert f"{m.root}/priv/both" in both_root and f"{m.root}/pub/both" in both_root
    assert f"{m.root}/priv/both" not in both_user and f"links:     {m.root}/pub/both\n" in both_user
    assert hk_ok(uid, m.root, "info", "//k,loose") == hk_ok(0, m.root, "info", "//k,loose")
    assert "secret" not in hk_ok(uid, m.root, "info", "//k")
    assert "no file matches" in hk_fails(uid, m.root, "info", "//k,secret")
    assert "permission denied" in hk_fails(uid, m.root, "info", "priv/secret")
    assert "permission denied" in hk_fails(uid, pub, "info", "notes")        # 0600: not readable

    assert hk_ok(uid, pub, "prompt") == "//k\n"
    assert hk_ok(uid, k / "sub", "prompt") == "//k/sub\n"
    assert hk_ok(uid, pub, "complete", "//") == hk_ok(0, pub, "complete", "//") == "//k\n"


def test_hk_query_answers_other_users_through_the_mount(tagged: Mount, second_uid: int) -> None:
    """hk query --like / --show and hk embed --show through the mount; neither they nor the
    `.query` files they read name root's file that only root's 0700 directory reaches."""
    m, uid = tagged, second_uid
    m.run("""
        setfattr -n user.hk.embedding -v "1 0" @/k/open
        setfattr -n user.hk.embedding -v "1 0.1" @/k/loose
        setfattr -n user.hk.embedding -v "1 0.05" priv/secret
        printf '1 0\\nk=5\\n' > @/k/near.query; chmod 644 @/k/near.query
    """)
    k = m.root / "@" / "k"
    assert hk_ok(uid, k, "query", "--show", "near.query") == "1 0\nk=5\n" == hk_ok(0, k, "query", "--show", "near.query")
    assert hk_ok(0, k, "query", "--like", "open").split()[1::2] == ["@/k/secret", "@/k/loose"]
    assert hk_ok(uid, k, "query", "--like", "open").split()[1::2] == ["@/k/loose"]
    assert m.run("cat @/k/near.query", user=uid).stdout.split()[1::2] == ["@/k/open", "@/k/loose"]
    assert "@/k/secret" in m.run("cat @/k/near.query").stdout
    m.run("not cat @/k/secret.query 2>/dev/null; test -n \"$(cat @/k/loose.query)\"", user=uid)
    assert "--like" in hk_fails(uid, k, "query", "--vector", "1 0")
    assert hk_ok(uid, k, "embed", "open", "--show") == hk_ok(0, k, "embed", "open", "--show") == "1 0\n"


def test_hk_write_commands_tell_other_users_what_works(tagged: Mount, second_uid: int) -> None:
    m, uid = tagged, second_uid
    pub = m.root / "pub"
    for args in (["mkkw", "//x"], ["atkw", "//k", "open"], ["akl", "//k"], ["rme", "open"],
                 ["embed", "open", "--vector", "1 0"], ["mvkw", "//k", "//y"], ["ldf"]):
        err = hk_fails(uid, pub, *args)
        assert f"hk {args[0]} changes the store, which is root's alone" in err, err
        assert "hk ls, path, kw, info, query" in err
    assert "rm FILE in an ordinary directory of the mount" in hk_fails(uid, pub, "rm", "open")
    assert "--user needs the store" in hk_fails(uid, pub, "ls", "--store", str(m.store), "--user", "root")
    assert hk_ok(uid, Path("/"), "ls", "--store", str(m.store)) == "priv pub\n"
    assert (pub / "open").read_text() == "open\n"
    assert m.run("getfattr --only-values -n user.hk.keywords pub/open").stdout == "//k"
