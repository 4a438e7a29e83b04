"""The kernel's entry and attribute caches are on, and a change is still seen by the very next command.

The mount lets the kernel keep entries and attributes for 60 s (hkfs.fuse.kernel_cache) and
drops them on every change: its own operations, a poke from a process that committed to
the catalog itself (the hk CLI, the Python API: hkfs.fuse.daemon_notify), and a watcher for
writers that do not poke. Each check here runs in the same script as the change, or in
the next command, and most first put the old state into the kernel's caches (listed,
stat'ed, or looked up and found missing). Listings come by READDIRPLUS: their attributes
must equal getattr's, and `ls -l` must need no LOOKUP per file. Without FUSE (at the
end): the attribute packer, the poke, and Catalog.on_commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    HK_CMD,
    MOUNT_TIMEOUT,
    Mount,
    MountFactory,
    daemon_loads_libfuse3,
    fuse_usable,
    stop_mount,
)
from hypothesis import given
from hypothesis import strategies as st

from hkfs.core.catalog import Catalog
from hkfs.mount.model import DIR_BLKSIZE

ON = "kernel caches on: entry/attr timeouts 60s"
OFF = "caches stay off"
SYNC = "user.hk.sync"


def _kernel_has_inc_epoch() -> bool:
    """FUSE_NOTIFY_INC_EPOCH came with Linux 6.16."""
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (6, 16)


def _has_lib(name: str) -> bool:
    import ctypes.util
    return ctypes.util.find_library(name) is not None


def cache_state(m: Mount) -> str:
    """'on' or 'off', from the daemon's log (written in libfuse's init, before the first reply)."""
    os.stat(m.root)                       # the kernel's INIT is answered before this returns
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = m.log.read_text(errors="replace") if m.log.exists() else ""
        if ON in log:
            return "on"
        if OFF in log:
            return "off"
        time.sleep(0.05)
    pytest.fail(f"the daemon log says nothing about the kernel caches:\n{m.log_tail()}")


def need_caches(m: Mount) -> Mount:
    if cache_state(m) != "on":
        line = next((ln for ln in m.log.read_text().splitlines() if OFF in ln), "")
        pytest.skip(f"kernel caches are off on this machine (older kernel or libfuse 2): {line}")
    return m


@pytest.fixture
def cmount(mount: Mount) -> Mount:
    """An empty store mounted with the kernel caches on (skipped where they stay off)."""
    return need_caches(mount)


def sync_count(root: Path) -> int:
    return int(os.getxattr(root, SYNC))


@contextlib.contextmanager
def own_daemon(store: Path, mnt: Path, *, env: dict[str, str] | None = None,
               debug: bool = False) -> Iterator[Mount]:
    """`hk mount -f` started here (as conftest does) for what the fixtures cannot pass:
    an environment (FUSE_LIBRARY_NAME) or -d. Always unmounted; its log checked for errors."""
    if not fuse_usable():
        pytest.skip("FUSE is not available (/dev/fuse or fusermount missing)")
    mnt.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    cmd = HK_CMD + ["mount", "-f"] + (["-d"] if debug else []) + [str(store), str(mnt)]
    errf = open(store / "daemon.stderr", "wb")   # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(cmd, stdout=errf, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))
    errf.close()
    m = Mount(mnt, store, proc)
    if debug:       # mfusepy's -d logs a traceback for every errno answered (ENOTSUP for ACLs)
        m.expected_log.append("Traceback (most recent call last):")
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                pytest.fail(f"hk mount -f exited with {proc.returncode}:\n"
                            + (store / "daemon.stderr").read_text(errors="replace"))
            if time.monotonic() > deadline:
                pytest.fail(f"{mnt} not mounted after {MOUNT_TIMEOUT}s")
            time.sleep(0.02)
        yield m
    finally:
        stop_mount(m)
    assert m.log_problems() == []


pytestmark = pytest.mark.mount


# ---------------------------------------------------------------- 1. the caches are on

def test_log_says_kernel_caches_are_on(mount: Mount) -> None:
    state = cache_state(mount)
    if state == "off" and not (_kernel_has_inc_epoch() and _has_lib("fuse3") and daemon_loads_libfuse3()):
        pytest.skip(f"kernel {platform.release()} or libfuse 2 (FUSE_LIBRARY_NAME): caches stay off, as designed")
    assert state == "on", ("this kernel has FUSE_NOTIFY_INC_EPOCH and libfuse 3 is installed, "
                           f"yet the caches are off:\n{mount.log_tail()}")


# ---------------------------------------------------------------- 2. hk CLI changes

def test_hk_cli_changes_are_seen_by_the_next_command(cmount: Mount) -> None:
    cmount.run("""
        mkdir @/proj @/other d
        echo hello > @/proj/a.txt
        echo bee > d/b.txt
        # into the kernel's caches: listings, attributes, and misses (negative lookups)
        ls -l @/proj @/other d >/dev/null; stat @/proj/a.txt d/b.txt >/dev/null
        not test -e @/proj/sub; not test -e @/other/a.txt; not test -e @/other/b.txt
        cd d

        hk mkkw //proj/sub
        test -d "$M/@/proj/sub"
        test "$(ls "$M/@/proj")" = "$(printf 'a.txt\\nsub')"

        hk atkw //other b.txt
        test "$(ls "$M/@/other")" = b.txt
        test "$(stat -c %s "$M/@/other/b.txt")" = 4
        test "$(getfattr --only-values -n user.hk.keywords b.txt)" = //other

        hk atkw //other "$M/@/proj/a.txt"
        test -e "$M/@/other/a.txt"
        test "$(getfattr --only-values -n user.hk.keywords "$M/@/other/a.txt")" = //other//proj
        stat "$M/@/proj/a.txt" >/dev/null                       # cached again, then detached
        hk dtkw //proj "$M/@/other/a.txt"
        not test -e "$M/@/proj/a.txt"
        test "$(ls "$M/@/proj")" = sub
        test "$(getfattr --only-values -n user.hk.keywords "$M/@/other/a.txt")" = //other

        hk chfn b.txt c.txt                                     # the link follows the name
        not test -e b.txt; not test -e "$M/@/other/b.txt"
        test "$(cat c.txt)" = bee
        test "$(ls "$M/@/other")" = "$(printf 'a.txt\\nc.txt')"
        test "$(stat -c %s "$M/@/other/c.txt")" = 4

        hk rm c.txt                                             # the link goes; //other keeps it
        not test -e c.txt
        test -z "$(ls)"
        test -e "$M/@/other/c.txt"

        hk rme "$M/@/other/c.txt"                               # the entity goes everywhere
        not test -e "$M/@/other/c.txt"
        test "$(ls "$M/@/other")" = a.txt
        fails_with "No such file" stat "$M/@/other/c.txt"

        hk akl //other                                          # d's DKL: ',' of d changes
        test "$(ls ,)" = a.txt; test -e ,a.txt; stat ,/a.txt >/dev/null
        hk rkl //other; hk akl //proj                           # ',' is //proj now: a.txt left it
        not test -e ,a.txt; not test -e ,/a.txt; test -z "$(ls , | grep -x a.txt)"
        hk rkl //proj                                           # (an empty DKL lists everything)

        echo two > "$M/@/proj/sub/a.txt"                        # a second a.txt, under //proj
        stat "$M/@/other/a.txt" >/dev/null
        hk atkw //other "$M/@/proj/sub/a.txt"                  # now they clash in //other
        not test -e "$M/@/other/a.txt"
        test "$(ls "$M/@/other" | grep -c '^a~[0-9]*\\.txt$')" = 2
        test -e "$M/@/proj/sub/a.txt"                           # alone there: plain name

        hk mkkw //gone; test -d "$M/@/gone"; ls "$M/@" | grep -qx gone
        hk rmkw //gone
        not test -e "$M/@/gone"; test -z "$(ls "$M/@" | grep -x gone)"
    """)


# ---------------------------------------------------------------- 3. aliases

def test_aliases_see_each_others_changes(cmount: Mount) -> None:
    cmount.run("""
        mkdir @/a @/b @/c d
        printf 123 > @/a/f
        ln @/a/f @/b/ && ln @/a/f d/f
        for p in @/a/f @/b/f d/f; do test "$(stat -c %s "$p")" = 3; done   # all three cached
        ls -l @/a @/b @/c d >/dev/null

        echo more >> @/b/f                                      # write through one alias
        for p in @/a/f @/b/f d/f; do test "$(stat -c %s "$p")" = 8; done
        test "$(ls -ln d | awk '$NF == "f" {print $5}')" = 8
        printf 12 > d/f                                         # truncate + write through another
        for p in @/a/f @/b/f d/f; do test "$(stat -c %s "$p")" = 2; test "$(cat "$p")" = 12; done
        truncate -s 100 @/a/f
        test "$(stat -c %s @/b/f)" = 100; test "$(wc -c < d/f)" = 100

        chmod 600 d/f
        for p in @/a/f @/b/f d/f; do test "$(stat -c %a "$p")" = 600; done
        touch -d @1000000000 @/b/f
        for p in @/a/f @/b/f d/f; do test "$(stat -c %Y "$p")" = 1000000000; done
        setfattr -n user.hk.keywords -v //a//b//c d/f           # retag by xattr
        test -e @/c/f; test "$(ls @/c)" = f

        mkdir @/x
        mv @/c/f @/x/                                           # retag: //c -> //x
        not test -e @/c/f
        test -z "$(ls @/c)"
        test "$(getfattr --only-values -n user.hk.keywords d/f)" = //a//b//x
        mkdir @/e
        mv @/b/f @/e/                                           # retag: //b -> //e
        fails_with "No such file" stat @/b/f
        test -z "$(ls @/b)"
        test "$(ls @/e)" = f
        test "$(stat -c %s @/e/f)" = 100
        test "$(getfattr --only-values -n user.hk.keywords @/a/f)" = //a//e//x
        rm @/a/f @/e/f @/x/f                                    # detach all: only d/f is left
        not test -e @/a/f; not test -e @/e/f; not test -e @/x/f
        test -z "$(ls @/a)$(ls @/e)$(ls @/x)"
        test "$(cat d/f)" = 12
        setfattr -n user.hk.keywords -v //a d/f
        test "$(stat -c %h @/a/f)" = 2                          # link + HK are counted: cached at 2
        mkdir d2 && ln d/f d2/f
        test "$(stat -c %h @/a/f)" = 3; test "$(stat -c %h d/f)" = 3
        (cd d2 && hk rm f)                                      # by the CLI: the poke
        test "$(stat -c %h @/a/f)" = 2; test "$(stat -c %h d/f)" = 2
    """)


def test_open_descriptor_sees_a_change_through_another_alias(cmount: Mount) -> None:
    """A descriptor opened through one path (the shell's fd 3, tail -f) keeps the kernel's
    node of that path, which no path walk refreshes: its size, mode and pages must follow."""
    cmount.run("""
        mkdir @/a d
        printf 'one\\n' > @/a/log
        ln @/a/log d/log
        exec 3<@/a/log
        pread() { "$PY" -c "import os, sys; sys.stdout.write(os.pread(3, 100, 0).decode())"; }
        test "$(pread)" = one                                   # its pages are cached now
        printf 'two\\n' >> d/log                               # through the other alias
        test "$(stat -c %s d/log)" = 8
        test "$(stat -L -c %s /proc/self/fd/3)" = 8             # fstat of the open file
        test "$(cat <&3)" = "$(printf 'one\\ntwo')"            # read(2) up to the new end
        printf ONE | dd of=d/log conv=notrunc status=none       # same size, other bytes
        test "$(pread)" = "$(printf 'ONE\\ntwo')"
        chmod 640 d/log
        test "$(stat -L -c %a /proc/self/fd/3)" = 640
        touch -d @1500000000 "$M/@/a/log"                       # (its own path: walked, fresh)
        truncate -s 2 d/log
        test "$(stat -L -c '%s %Y' /proc/self/fd/3)" = "2 $(stat -c %Y d/log)"
        exec 3<&-
    """)


def test_open_view_descriptor_outlives_invalidations(cmount: Mount) -> None:
    """Opened through a view, then several invalidations (the daemon's note that the file
    was reached through a view ages), then changed through its only directory link."""
    cmount.run("""
        mkdir @/k d && printf 1 > d/f && setfattr -n user.hk.keywords -v //k d/f
        exec 3<@/k/f
        test "$(stat -L -c %s /proc/self/fd/3)" = 1
        for i in 1 2 3 4; do mkdir "@/x$i"; getfattr -n user.hk.sync "$M" >/dev/null; done
        printf 234 >> d/f
        test "$(stat -L -c %s /proc/self/fd/3)" = 4
        chmod 604 d/f
        test "$(stat -L -c %a /proc/self/fd/3)" = 604
        exec 3<&-
    """)


def test_tail_f_follows_appends_through_another_alias(cmount: Mount) -> None:
    cmount.run("""
        mkdir @/a d
        echo first > @/a/log
        ln @/a/log d/log
        tail -f -s 0.05 @/a/log > "$OUT" 2>&1 & pid=$!
        trap 'kill $pid 2>/dev/null || true' EXIT
        for i in $(seq 200); do grep -q first "$OUT" && break; sleep 0.05; done
        echo second >> d/log
        for i in $(seq 200); do grep -q second "$OUT" && break; sleep 0.05; done
        grep -q second "$OUT"
    """, env={"OUT": str(cmount.store.parent / "tail.out")})


# ---------------------------------------------------------------- 4. the Python API

def _prime(m: Mount) -> None:
    """Put a view's listing, a file's attributes and a miss into the kernel's caches."""
    m.run("""
        ls -l @/v d >/dev/null
        stat @/v/f >/dev/null
        not test -e @/w
        not test -e @/v/@/w/f
        getfattr -d @/v/f >/dev/null
    """)


def _api_setup(m: Mount) -> None:
    m.run("mkdir @/v d && echo x > @/v/f")
    _prime(m)


def _api_change(m: Mount, tag: str) -> None:
    from hkfs.core.store import Store
    with Store.open(m.store) as st:
        ns = st.namespace_id(os.getuid())
        eid = st.match(ns, [("v",)], "f")[0].id
        with st.catalog.write():      # one commit: the check follows its poke within a millisecond
            st.mkkw(ns, ("w",))
            st.atkw(eid, [("w",)])
            st.set_xattr("file", eid, "user.note", tag.encode())
            st.set_attrs(eid, mode=0o600)


def _api_change_seen(m: Mount, tag: str) -> bool:
    r = m.root
    try:
        return (os.stat(r / "@/v/f").st_mode & 0o777 == 0o600     # the cached attributes first
                and os.path.isdir(r / "@/w") and os.path.exists(r / "@/v/@/w/f")
                and os.listdir(r / "@/w") == ["f"]
                and os.getxattr(r / "@/v/f", "user.note") == tag.encode())
    except OSError:
        return False


def test_python_api_change_is_seen_at_once(cmount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    """The committing process pokes the daemon: the next call, even in this process, sees it."""
    import hkfs.core.changes
    _api_setup(cmount)
    before = sync_count(cmount.root)                # (itself a poke: prime the caches again)
    _prime(cmount)
    from hkfs.fuse.daemon_notify import notify_daemon as poke
    assert hkfs.core.changes._COMMIT_HOOKS == [poke]  # registered by importing hkfs
    seen: list[bool] = []

    def poke_then_look(store: Path) -> None:        # the very next calls after the poke
        poke(store)
        seen.append(_api_change_seen(cmount, "poked"))
    monkeypatch.setattr(hkfs.core.changes, "_COMMIT_HOOKS", [poke_then_look])
    _api_change(cmount, "poked")
    monkeypatch.undo()
    assert seen and seen[-1], seen
    cmount.run("""
        test "$(ls @/w)" = f
        test "$(getfattr --only-values -n user.note @/v/f)" = poked
        test "$(getfattr --only-values -n user.hk.keywords @/w/f)" = //v//w
        test "$(stat -c %a @/v/f)" = 600
    """)
    assert sync_count(cmount.root) > before + 1     # pokes were answered (and this one too)


def test_writer_that_does_not_poke_is_seen_by_the_watcher(cmount: Mount,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import hkfs.core.changes
    _api_setup(cmount)
    calls: list[object] = []
    monkeypatch.setattr(hkfs.core.changes, "_COMMIT_HOOKS", [lambda store: calls.append(store)])
    _api_change(cmount, "silent")
    assert calls                                    # the hook ran, and did nothing
    deadline = time.monotonic() + 10
    while not _api_change_seen(cmount, "silent"):
        assert time.monotonic() < deadline, "a commit without a poke never became visible"
        time.sleep(0.02)
    cmount.run('test "$(ls @/w)" = f; test "$(getfattr --only-values -n user.note @/w/f)" = silent')


def _store_behind_a_symlink(tmp_path: Path, mount_factory: MountFactory) -> tuple[Mount, Path]:
    """A store mounted by a path through a symlink; returns the mount and the real path."""
    real = tmp_path / "real"
    (real / "store").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    return need_caches(mount_factory(store=tmp_path / "link" / "store")), real / "store"


def _pokes(m: Mount, store: Path) -> int:
    """How many invalidations notify_daemon(store) made: the sync counter's step minus our
    own read (no commit in between, so the watcher has nothing to report)."""
    from hkfs.fuse.daemon_notify import notify_daemon
    before = sync_count(m.root)
    notify_daemon(store)
    return sync_count(m.root) - before - 1


def test_poke_reaches_the_daemon_by_the_mounted_spelling(tmp_path: Path,
                                                         mount_factory: MountFactory) -> None:
    m, _real = _store_behind_a_symlink(tmp_path, mount_factory)
    assert _pokes(m, tmp_path / "link" / "store") == 1
    assert _pokes(m, Path(str(tmp_path / "link" / "store") + "/")) == 1


def test_poke_reaches_the_daemon_by_another_spelling(tmp_path: Path,
                                                     mount_factory: MountFactory) -> None:
    """The real path behind the mount's symlinked spelling, or one with '..' (`hk --store`)."""
    m, real = _store_behind_a_symlink(tmp_path, mount_factory)
    assert _pokes(m, real) == 1
    assert _pokes(m, Path(str(real / ".." / "store"))) == 1


def _api_touch(m: Mount, *, note: str | None = None, mode: int | None = None, dir_mode: int | None = None,
               path: str = "d/f") -> None:
    """Another process changes attributes only (files_gen stays): a note (the file's ctime),
    a file's mode, its directory's mode. Its commit pokes the daemon."""
    from hkfs.core.store import Store
    with Store.open(m.store) as st:
        dirid = st.root_dir(st.namespace_id(os.getuid()))
        *dirs, name = path.split("/")
        for d in dirs:
            dirid = st.lookup(dirid, d).id
        eid = st.lookup(dirid, name).id
        if note is not None:
            st.set_xattr("file", eid, "user.note", note.encode())
        if mode is not None:
            st.set_attrs(eid, mode=mode)
        if dir_mode is not None:
            st.set_dir_attrs(dirid, mode=dir_mode)


def test_attribute_changes_elsewhere_are_seen_without_new_names(cmount: Mount) -> None:
    """A commit elsewhere that names nothing anew keeps the kernel's entries only while no file
    or directory it was given attributes of changed (KernelCache.unchanged): a stat through
    every path, a listing's attributes and a directory's are all seen changed at once."""
    cmount.run("mkdir @/v d && echo x > d/f && setfattr -n user.hk.keywords -v //v d/f")
    _api_touch(cmount, note="warm")                   # the daemon's own commits before: one epoch
    root = cmount.root
    before = os.stat(root / "d/f").st_ctime_ns
    _api_touch(cmount, note="1")                      # a stat'ed file's ctime moved
    assert os.stat(root / "d/f").st_ctime_ns != before
    os.stat(root / "@/v/f")
    _api_touch(cmount, mode=0o600)                    # ... its mode, seen through a view
    assert stat.S_IMODE(os.stat(root / "@/v/f").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(root / "d/f").st_mode) == 0o600
    os.stat(root / "d")
    _api_touch(cmount, dir_mode=0o700)                # a stat'ed directory's mode
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o700
    cmount.run("ls -l @/v >/dev/null")                # READDIRPLUS: every listed file counts
    _api_touch(cmount, mode=0o640)
    assert stat.S_IMODE(os.stat(root / "@/v/f").st_mode) == 0o640
    cmount.run('test "$(stat -c %a @/v/f d/f)" = "$(printf "640\n640")"')


def test_commit_elsewhere_that_changes_nothing_held_costs_no_lookup(tmp_path: Path) -> None:
    """`cat VIEW/FILE.query` after another process set a note on a file the kernel holds nothing
    of: no invalidation, so the path walk needs no LOOKUP of `@` or the view again."""
    with own_daemon(tmp_path / "s", tmp_path / "m", debug=True) as m:
        need_caches(m)
        m.run("""
            mkdir @/b && for i in 1 2 3 4; do echo $i > @/b/f$i; setfattr -n user.hk.embedding -v "$i 1 0" @/b/f$i; done
        """)
        err = m.store / "daemon.stderr"
        from hkfs.core.store import Store

        def note_elsewhere(value: str) -> None:
            with Store.open(m.store) as st:
                ns = st.namespace_id(os.getuid())
                st.set_xattr("file", st.match(ns, [("b",)], "f4")[0].id, "user.note", value.encode())

        note_elsewhere("warm")            # after the daemon's own commits: one invalidation
        assert len(m.run("cat @/b/f1.query").stdout.splitlines()) == 3
        note_elsewhere("1")
        start = err.stat().st_size
        assert len(m.run("cat @/b/f2.query").stdout.splitlines()) == 3
        with open(err, "rb") as f:
            f.seek(start)
            looked = re.findall(rb"^LOOKUP (\S+)", f.read(), re.M)
        assert looked == [b"/@/b/f2.query"], looked


# ---------------------------------------------------------------- 5. READDIRPLUS == getattr

LS_LINE = re.compile(r"^(\S+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)\.(\d{9}) (.*)$")


def _ls_ln(m: Mount, rel: str) -> dict[str, tuple[int, int, int, int, int, int]]:
    """name -> (mode string hash-free: type+perm bits, nlink, uid, gid, size, mtime_ns) per `ls -ln`."""
    out = m.run(f"ls -lnA --time-style=+%s.%N {rel}").stdout.splitlines()
    got = {}
    for line in out[1:]:                                # the 'total' line first
        mo = LS_LINE.match(line)
        assert mo, line
        perms, nlink, uid, gid, size, sec, nsec, name = mo.groups()
        if perms.startswith("l"):
            name = name.split(" -> ")[0]
        got[name] = (_mode_of(perms), int(nlink), int(uid), int(gid), int(size),
                     int(sec) * 1_000_000_000 + int(nsec))
    return got


def _mode_of(perms: str) -> int:
    kind = {"-": 0o100000, "d": 0o040000, "l": 0o120000}[perms[0]]
    bits = 0
    for ch in perms[1:10]:
        bits = (bits << 1) | (ch != "-")
    return kind | bits


def _lstat_row(p: Path) -> tuple[int, int, int, int, int, int]:
    s = os.lstat(p)
    return (s.st_mode, s.st_nlink, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns)


def _fill_listing_store(store: Path, mnt: Path) -> None:
    """Files of every kind in a view and a directory, made through a first mount."""
    with own_daemon(store, mnt) as m:
        m.run("""
            mkdir -p @/v/k1 @/v/k2 d/sub
            for where in @/v d; do
                : > "$where/empty"
                printf x > "$where/one byte"
                head -c 4097 /dev/zero > "$where/ünïcødé 文件.txt"
                head -c 200000 /dev/urandom > "$where/big.bin"
                ln -s "one byte" "$where/link"
                chmod 600 "$where/empty"
                setfattr -n user.hk.embedding -v "1 0 0" "$where/one byte"
                setfattr -n user.hk.embedding -v "0 1 0" "$where/empty"
                printf '1 0.5 0\\nk=2\\n' > "$where/near.query"
            done
            ln @/v/big.bin d/shared.bin                          # a view file linked in d too
            touch -d @1234567890.123456789 @/v/empty
            echo kw > @/v/k1/inkw.txt
        """)


def test_readdirplus_attributes_equal_getattr(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _fill_listing_store(store, tmp_path / "mnt0")
    # a second daemon, fresh kernel caches: the listing's attributes are READDIRPLUS's own
    with own_daemon(store, tmp_path / "mnt1", debug=True) as m:
        need_caches(m)
        requests = store / "daemon.stderr"
        for rel in ("@/v", "d"):
            start = requests.stat().st_size
            listed = _ls_ln(m, rel)
            with open(requests, "rb") as f:
                f.seek(start)
                lookups = re.findall(rb"^LOOKUP (/.*)$", f.read(), re.M)
            names = set(listed)
            expect = {"empty", "one byte", "ünïcødé 文件.txt", "big.bin", "link", "near.query"}
            expect |= {"k1", "k2", "inkw.txt"} if rel == "@/v" else {"sub", "shared.bin"}
            assert names == expect
            # ls -l asked for no file by name: the listing carried the attributes (not for
            # stored queries, whose size is their result's and is looked up)
            looked = {os.path.basename(p.decode()) for p in lookups
                      if p.decode().startswith(f"/{rel}/")}
            assert looked <= {"near.query"}, looked

            # readdir's d_ino (`ls -i` statx'es each name, so it is the attributes' st_ino)
            with os.scandir(m.root / rel) as it:
                inodes = {e.name: e.inode() for e in it}
            ls_i = dict(reversed(line.strip().split(" ", 1))
                        for line in m.run(f"ls -iA {rel}").stdout.splitlines())
            os.getxattr(m.root, SYNC)                   # drop the cache: lstat below LOOKUPs
            view_mtime = os.lstat(m.root / rel).st_mtime_ns
            for name, row in listed.items():
                p = m.root / rel / name
                now = _lstat_row(p)
                if rel == "@/v" and name in ("k1", "k2"):
                    # a keyword directory's times are the views' (MountModel.virtual_attrs), which
                    # a drop moves when it finds a listed directory still open (`ls`'s RELEASEDIR
                    # may come after the drop; hkfs.fuse.dir_cache): the same as its view's now
                    assert now[:5] == row[:5] and now[5] == view_mtime >= row[5], name
                else:
                    assert row == now, name
                assert inodes[name] == int(ls_i[name]) == os.lstat(p).st_ino, name
            assert listed["near.query"][4] == len((m.root / rel / "near.query").read_bytes()) > 0
            assert listed["link"][4] == len("one byte")
        # and the other way round: stat first, then the listing must not change a thing
        for rel in ("@/v", "d"):
            os.getxattr(m.root, SYNC)
            before = {n: _lstat_row(m.root / rel / n) for n in os.listdir(m.root / rel)}
            assert _ls_ln(m, rel) == before
        assert (m.root / "@/v/empty").stat().st_mtime_ns == 1234567890123456789


# ---------------------------------------------------------------- 6. a large view

BIG = 3000


def _fill_big(store: Path) -> None:
    from hkfs.core.store import Store
    with Store.open(store) as st:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, ("big",))
        ids = st.bulk_create(ns, [(f"f{i:05d}", [("big",)]) for i in range(BIG)])
        with st.catalog.write():                    # one commit for all the sizes
            for i, eid in enumerate(ids):
                if i % 13:
                    st.entity_path(eid).write_bytes(b"x" * (i % 13))
                    st.record_bytes(eid)


def test_large_view_listed_in_many_chunks(mount_factory: MountFactory) -> None:
    m = need_caches(mount_factory(fill=_fill_big))
    want = {f"f{i:05d}": i % 13 for i in range(BIG)}
    out = m.run("cd @/big && ls -ln && ls -U | wc -l").stdout.splitlines()
    assert out[0].startswith("total ")
    rows = [ln.split() for ln in out[1:-1]]
    names = [r[-1] for r in rows]
    assert len(names) == BIG == len(set(names)) == int(out[-1])
    assert {r[-1]: int(r[4]) for r in rows} == want

    # a listing is the entries of its opendir: changes made while it is read (between
    # the kernel's READDIRPLUS chunks) neither repeat nor skip the other names
    seen: list[str] = []
    with os.scandir(m.root / "@/big") as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 100:
                os.unlink(m.root / "@/big/f00003")          # detached: leaves the view
                (m.root / "@/big/a-new").write_text("new\n")
    assert len(seen) == len(set(seen))
    assert set(want) - {"f00003"} <= set(seen) <= set(want) | {"a-new"}

    m.run("""
        cd @/big
        echo hello > f-new; rm f00010 f00011; mkdir ../../d; mv f00012 ../../d/
        printf 1234567 >> f00001
    """)
    want.update({"f-new": 6, "a-new": 4, "f00001": 8})
    for gone in ("f00003", "f00010", "f00011", "f00012"):
        del want[gone]
    out = m.run("cd @/big && ls -ln && ls -U | wc -l").stdout.splitlines()
    rows = [ln.split() for ln in out[1:-1]]
    assert len(rows) == len(want) == int(out[-1])
    assert {r[-1]: int(r[4]) for r in rows} == want


def test_large_view_listed_in_few_requests(tmp_path: Path) -> None:
    # a directory's st_blksize sizes readdir(3)'s buffer, and (Linux 6.16+) the kernel asks
    # READDIRPLUS for as much: 3000 entries fit one 1 MiB request (with 4096: 15 of 32 KiB)
    store = tmp_path / "s"
    store.mkdir()
    _fill_big(store)
    with own_daemon(store, tmp_path / "m", debug=True) as m:
        need_caches(m)
        m.run("mkdir d")
        assert os.stat(m.root / "@/big").st_blksize == os.stat(m.root / "d").st_blksize == DIR_BLKSIZE
        err = m.store / "daemon.stderr"
        start = err.stat().st_size
        assert len(m.run("ls -l @/big").stdout.splitlines()) == BIG + 1
        with open(err, "rb") as f:
            f.seek(start)
            requests = re.findall(rb"^readdirplus\[\d+\] from \d+\n", f.read(), re.M)
        assert 1 <= len(requests) <= 2                     # the entries, then the end


# ---------------------------------------------------------------- 6b. listings the kernel keeps

def test_log_says_view_listings_are_cached(cmount: Mount) -> None:
    cmount.run("ls @ >/dev/null")
    assert "view listings cached by the kernel" in cmount.log.read_text()


def _readdirs(err: Path, start: int) -> list[str]:
    """The READDIRPLUS requests the daemon logged (-d) after byte `start`, by path."""
    with open(err, "rb") as f:
        f.seek(start)
        return [p.decode() for p in re.findall(rb"^readdirplus\[\d+\] from 0\n", f.read(), re.M)]


def test_second_listing_of_a_view_is_served_by_the_kernel(tmp_path: Path) -> None:
    with own_daemon(tmp_path / "s", tmp_path / "m", debug=True) as m:
        need_caches(m)
        m.run("mkdir @/k d && printf 1 > @/k/a && printf 2 > d/b && ls -l @/k >/dev/null")
        err = m.store / "daemon.stderr"
        start = err.stat().st_size
        assert m.run("ls @/k").stdout.split() == ["a"]
        assert _readdirs(err, start) == []                  # from the kernel's copy
        m.run('hk atkw //k "$M/d/b"')                      # another process: dropped
        start = err.stat().st_size
        assert m.run("ls @/k").stdout.split() == ["a", "b"]
        assert len(_readdirs(err, start)) == 1


def test_listing_of_the_working_directory_follows_the_hk_cli(cmount: Mount) -> None:
    # the shell's cwd keeps the view's inode (and so its kept listing) across invalidations
    cmount.run("""
        mkdir @/k d && echo x > d/f
        cd @/k
        test -z "$(ls)" && test -z "$(ls)"
        hk atkw //k "$M/d/f"
        test "$(ls)" = f
        hk chfn "$M/d/f" g
        test "$(ls)" = g
        hk dtkw //k "$M/d/g"
        test -z "$(ls)"
    """)


def test_listing_of_the_working_directory_follows_changes_through_other_paths(cmount: Mount) -> None:
    cmount.run("""
        files() { ls -p | grep -v / | tr '\\n' ' '; }  # keywords are listed too: left out
        mkdir @/k @/j d
        cd d/,                                  # d's DKL is empty: every file of the namespace
        test -z "$(files)" && test -z "$(files)"
        printf 1 > "$M/d/f"                     # a unique name, made through d: no epoch
        test "$(files)" = "f "
        cd "$M/@/k"
        test -z "$(files)" && test -z "$(files)"
        echo y > "$M/@/j/g"
        setfattr -n user.hk.keywords -v //j//k "$M/@/j/g"
        test "$(files)" = "g "
        mv "$M/@/j/g" "$M/@/j/h"
        test "$(files)" = "h "
        rm "$M/@/j/h"                            # detaches //j only
        test "$(files)" = "h "
        setfattr -n user.hk.keywords -v //j "$M/@/k/h"
        test -z "$(files)"
        cd "$M/d/,"
        test "$(files)" = "f h "
        rm "$M/d/f"                              # its only home: gone
        test "$(files)" = "h "
    """)


def test_query_results_are_closed_without_a_flush(tmp_path: Path) -> None:
    """A read-only `.query` handle is opened FOPEN_NOFLUSH: its close costs no FLUSH request
    (a stored query's body written through a handle is still checked at close)."""
    with own_daemon(tmp_path / "s", tmp_path / "m", debug=True) as m:
        m.run("""
            mkdir @/b && for i in 1 2 3; do echo $i > @/b/f$i; setfattr -n user.hk.embedding -v "$i 1 0" @/b/f$i; done
            printf '1 0 0\nk=2\n' > @/b/near.query
        """)
        err = m.store / "daemon.stderr"
        start = err.stat().st_size
        assert len(m.run("cat @/b/f1.query @/b/near.query").stdout.splitlines()) >= 3
        with open(err, "rb") as f:
            f.seek(start)
            ops = re.findall(rb"opcode: ([A-Z_]+)", f.read())
        assert ops.count(b"OPEN") == 2 and b"FLUSH" not in ops
        m.run("""fails_with "Invalid argument" bash -c 'printf "1 0 0\\nk=abc\\n" > @/b/near.query'""")
        assert m.run("cat @/b/near.query").stdout.count("\t") >= 2


def test_query_result_read_at_eof_is_answered_by_the_kernel(tmp_path: Path) -> None:
    """A `.query` result whose size the kernel was told at lookup is read through the page cache:
    `cat` costs lookup, open, one READ, release (the read at EOF never reaches the daemon);
    the same after a change elsewhere, which the next lookup tells the kernel."""
    with own_daemon(tmp_path / "s", tmp_path / "m", debug=True) as m:
        need_caches(m)
        m.run("""
            mkdir @/b && for i in 1 2 3 4; do echo $i > @/b/f$i; setfattr -n user.hk.embedding -v "$i 1 0" @/b/f$i; done
        """)
        err = m.store / "daemon.stderr"

        def ops_of(script: str) -> list[bytes]:
            start = err.stat().st_size
            m.run(script)
            with open(err, "rb") as f:
                f.seek(start)
                return re.findall(rb"opcode: ([A-Z_]+)", f.read())

        for _ in range(2):                          # a first read, then a repeat
            ops = ops_of("test $(cat @/b/f1.query | wc -l) = 3")
            assert ops.count(b"OPEN") == 1 and ops.count(b"READ") == 1, ops
        ops = ops_of('hk atkw //b "$M/@/b/f1" && echo 5 > @/b/f5 && setfattr -n user.hk.embedding -v "5 1 0" @/b/f5')
        ops = ops_of("test $(cat @/b/f1.query | wc -l) = 4")   # grew: told at the lookup
        assert ops.count(b"READ") == 1, ops


# ---------------------------------------------------------------- 7. the sync counter

def test_sync_xattr_counts_invalidations(cmount: Mount) -> None:
    out = cmount.run("""
        getfattr --only-values -n user.hk.sync "$M"; echo
        getfattr --only-values -n user.hk.sync "$M"; echo
        mkdir @/x
        getfattr --only-values -n user.hk.sync "$M"; echo
        hk mkkw //y
        getfattr --only-values -n user.hk.sync "$M"; echo
    """).stdout.split()
    n = [int(x) for x in out]
    assert n[0] >= 1 and n[0] < n[1] < n[2] < n[3]
    assert n[2] >= n[1] + 2                       # mkdir invalidated, then the poke
    assert n[3] >= n[2] + 2                       # hk mkkw's poke, then ours



def test_new_shared_name_drops_the_caches_only_when_a_view_held_the_other(cmount: Mount) -> None:
    """Creating a name that other files bear turns their plain names in views into STEM~ID:
    the caches are dropped when the kernel was given one of them under a view path (it must
    not keep `@/@untagged/g` -> the first g), and kept otherwise (`make` writing a Makefile,
    or `__init__.py`, in one directory made every process walk every path again)."""
    out = cmount.run("""
        sync_n() { getfattr --only-values -n user.hk.sync "$M"; echo; }
        mkdir a b c
        echo 1 > a/g
        sync_n; sync_n                                            # (what the pokes alone add)
        cat @/@untagged/g >/dev/null                              # the kernel holds @untagged/g
        echo 2 > b/g                                              # g is shared now: dropped
        sync_n
        not test -e @/@untagged/g
        test "$(ls @/@untagged | grep -c '^g~')" = 2
        test "$(cat a/g b/g)" = "$(printf '1\\n2')"
        sync_n
        echo 3 > a/h; echo 4 > b/h; echo 5 > c/h                  # never looked up in a view: kept
        sync_n
        test "$(cat a/h b/h c/h)" = "$(printf '3\\n4\\n5')"
        test "$(ls @/@untagged | grep -c '^h~')" = 3
    """).stdout.split()
    n = [int(x) for x in out]
    poke = n[1] - n[0]               # getfattr asks twice (the size, then the value)
    assert n[2] > n[1] + poke        # the create's epoch as well
    assert n[4] == n[3] + poke       # the pokes alone: two creates of a shared name dropped nothing

# ---------------------------------------------------------------- 8. libfuse 2

def test_libfuse2_keeps_caches_off_and_works(tmp_path: Path) -> None:
    if not _has_lib("fuse"):
        pytest.skip("libfuse 2 is not installed")
    with own_daemon(tmp_path / "s", tmp_path / "m", env={"FUSE_LIBRARY_NAME": "fuse"}) as m:
        assert cache_state(m) == "off"
        assert "libfuse 2: kernel caches stay off" in m.log.read_text()
        m.run("""
            mkdir @/a @/b d
            echo hi > @/a/f && ls -l @/a >/dev/null
            test "$(ls @/a)" = f
            test "$(stat -c %s @/a/f)" = 3
            ln @/a/f d/f && echo more >> d/f
            test "$(stat -c %s @/a/f)" = 8
            mv @/a/f @/b/
            not test -e @/a/f; test "$(ls @/b)" = f
            hk atkw //a "$M/d/f"
            test "$(ls @/a)" = f
            test "$(getfattr --only-values -n user.hk.keywords d/f)" = //a//b
        """)


# ---------------------------------------------------------------- 9. without FUSE

_U32 = st.integers(0, 2**32 - 1)
_I63 = st.integers(0, 2**63 - 1)
_NS = st.integers(-(2**62), 2**62)


@given(st.fixed_dictionaries({
    "st_ino": _I63, "st_nlink": _I63, "st_mode": _U32, "st_uid": _U32, "st_gid": _U32,
    "st_size": _I63, "st_blksize": _I63, "st_blocks": _I63,
    "st_atime": _NS, "st_mtime": _NS, "st_ctime": _NS}))
def test_stat_packer_equals_set_st_attrs(attrs: dict[str, int]) -> None:
    """A piece's attributes packed as an array of struct stat (numpy, per column) are, entry by
    entry, what mfusepy's set_st_attrs writes into a zeroed c_stat (the path before packing)."""
    import mfusepy
    import numpy as np

    from hkfs.fuse.glue import STAT_KEYS, StatPacker
    packer = StatPacker(mfusepy.c_stat)
    want = mfusepy.c_stat()
    mfusepy.set_st_attrs(want, attrs, use_ns=True)
    zero = mfusepy.c_stat()
    row = [attrs[k] for k in STAT_KEYS]
    packed = packer.pack_rows(np.array([[0] * len(row), row, row], np.int64))
    assert packed.itemsize == ctypes.sizeof(mfusepy.c_stat)
    raw = packed.tobytes()
    size = packed.itemsize
    assert raw[:size] == bytes(zero)
    assert raw[size:2 * size] == bytes(want) and raw[2 * size:] == bytes(want)
    got = mfusepy.c_stat()                             # one stat from a dict (LOOKUP, GETATTR)
    packer.pack(got, attrs)
    assert bytes(got) == bytes(want)
    # over a used buffer: every field up to ctime is rewritten
    used = mfusepy.c_stat.from_buffer_copy(b"\xa5" * ctypes.sizeof(mfusepy.c_stat))
    packer.pack(used, attrs)
    end = mfusepy.c_stat.st_ctimespec.offset + mfusepy.c_stat.st_ctimespec.size
    assert bytes(used)[:end] == bytes(want)[:end]


def test_notify_daemon_without_a_daemon_does_nothing(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import hkfs.fuse.daemon_notify as dn
    from hkfs.core.store import Store

    def boom(*a: object) -> None:
        raise AssertionError("looked for a mount without a daemon.pid")
    monkeypatch.setattr(dn, "hk_mounts", boom)
    monkeypatch.setattr(dn.os, "getxattr", boom)
    dn.notify_daemon(tmp_path / "nothing-here")
    with Store.open(tmp_path / "s") as s:            # commits call it: nothing happens
        s.mkkw(s.namespace_id(0), ("k",))
    # a stale daemon.pid (no mount of the store): looked up, nobody poked
    monkeypatch.setattr(dn, "hk_mounts", lambda: [])
    (tmp_path / "s" / "daemon.pid").write_text("999999\n")
    dn.notify_daemon(tmp_path / "s")


def test_poke_finds_a_mount_that_appeared_after_the_pid_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon writes daemon.pid before it mounts: a long-lived process that committed in
    between must not remember 'no mount' for that daemon."""
    import hkfs.fuse.daemon_notify as dn
    store, mnt = tmp_path / "s", tmp_path / "m"
    store.mkdir()
    (store / "daemon.pid").write_text("1\n")          # the daemon is starting: not mounted yet
    mounts: list[tuple[Path, Path]] = []
    poked: list[str] = []
    monkeypatch.setattr(dn, "hk_mounts", lambda: list(mounts))
    monkeypatch.setattr(dn.os, "getxattr", lambda path, name: poked.append(str(path)) or b"1")
    dn.notify_daemon(store)
    assert poked == []
    mounts.append((mnt, store))                        # now it serves the store
    dn.notify_daemon(store)
    assert poked == [str(mnt)]


def test_the_daemon_does_not_poke_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hkfs.core.changes
    from hkfs.core.store import Store
    calls: list[Path] = []
    monkeypatch.setattr(hkfs.core.changes, "_COMMIT_HOOKS", [calls.append])
    with Store.open(tmp_path / "s") as s:
        s.mkkw(s.namespace_id(0), ("a",))
        assert calls == [s.root] * len(calls) and calls
        n = len(calls)
        s.lock()                                     # as the mounting daemon holds it
        s.mkkw(s.namespace_id(0), ("b",))
        assert len(calls) == n


def _counted(path: Path) -> tuple[Catalog, Callable[[], int]]:
    cat = Catalog(path)
    hits = [0]
    cat.on_commit = lambda: hits.__setitem__(0, hits[0] + 1)
    return cat, lambda: hits[0]


def test_on_commit_once_per_outermost_write(tmp_path: Path) -> None:
    cat, n = _counted(tmp_path / "c.sqlite")
    try:
        with cat.write() as c:
            c.execute("CREATE TABLE t (x)")
        assert n() == 1
        with cat.read() as c:
            c.execute("SELECT * FROM t").fetchall()
        assert n() == 1                                  # reads never
        with cat.write() as c:                           # nested writes: once, at the end
            c.execute("INSERT INTO t VALUES (1)")
            with cat.write() as c2:
                c2.execute("INSERT INTO t VALUES (2)")
                with cat.read():
                    pass
            assert n() == 1
        assert n() == 2
        with pytest.raises(ZeroDivisionError), cat.write() as c:
            c.execute("INSERT INTO t VALUES (3)")
            raise ZeroDivisionError
        assert n() == 2                                  # rolled back: not called
        with pytest.raises(ZeroDivisionError), cat.write() as c:
            with cat.write() as c2:
                c2.execute("INSERT INTO t VALUES (4)")
            raise ZeroDivisionError
        assert n() == 2
        with cat.write(foreign_keys=False) as c:
            c.execute("INSERT INTO t VALUES (5)")
        assert n() == 3
        with cat.read() as c:
            assert sorted(r[0] for r in c.execute("SELECT x FROM t")) == [1, 2, 5]
    finally:
        cat.close()



def test_viewed_entities_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past VIEWED_MAX entities noted as viewed (a big view listed), every entity counts as
    viewed until two invalidations later: no set of a million ids, no change missed."""
    from hkfs.core.changes import ChangeFeed
    from hkfs.core.store import Store
    from hkfs.fuse import kernel_cache

    monkeypatch.setattr(kernel_cache, "VIEWED_MAX", 3)
    with Store.open(tmp_path / "s") as st:
        kc = kernel_cache.KernelCache(ChangeFeed(st.catalog.path))
        kc._fd = -1                     # "caches on" without a mount: the epoch write fails, logged
        for eid in range(1, 6):
            kc.note_viewed(eid)
        assert len(kc.viewed) == 0 and kc.was_viewed(999)
        kc.invalidate()
        assert kc.was_viewed(999)      # noted just before the invalidation: still counts
        kc.invalidate()
        assert not kc.was_viewed(999)
        kc.note_viewed(7)
        assert kc.was_viewed(7) and not kc.was_viewed(8)
        kc.note_viewed_all([8, 9])                  # a listing piece's files at once
        assert kc.was_viewed(8) and kc.was_viewed(9) and not kc.was_viewed(10)
        kc.note_viewed_all([10, 11])                # past VIEWED_MAX: everything
        assert len(kc.viewed) == 0 and kc.was_viewed(999)
        kc.changes.close()


def test_unchanged_checks_what_the_kernel_was_given(tmp_path: Path) -> None:
    """KernelCache.unchanged without a mount: a foreign commit keeps the caches only when the
    generations stand, no getattr is under way, no listing was given, and every file and
    directory noted since the invalidation before last has its ctime still."""
    from hkfs.core.changes import ChangeFeed
    from hkfs.core.store import Store
    from hkfs.fuse import kernel_cache

    with Store.open(tmp_path / "s") as st, Store.open(tmp_path / "s") as other:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, ("v",))
        a = st.create(ns, "a", hks=[("v",)], uid=0, gid=0)
        b = st.create(ns, "b", hks=[("v",)], uid=0, gid=0)
        root = st.root_dir(ns)
        kc = kernel_cache.KernelCache(ChangeFeed(st.catalog.path))
        kc._fd = -1                     # "caches on" without a mount: the epoch write fails, logged
        kc.ctimes = st.ctimes
        kc.invalidate()
        assert kc.unchanged()                                  # nothing given yet
        kc.note_attrs((a << 2) | 1, st.entity(a).ctime_ns)
        kc.note_attrs((root << 2) | 2, st.dir(root).ctime_ns)
        kc.note_attrs(12345 << 2 | 3, 1)                       # a view or .query file: not noted
        other.set_xattr("file", b, "user.note", b"x")          # a file the kernel holds nothing of
        assert kc.unchanged()
        other.set_xattr("file", a, "user.note", b"x")          # one it holds: its ctime moved
        assert not kc.unchanged()
        kc.invalidate()
        assert not kc.unchanged()                              # noted just before: still checked
        kc.invalidate()
        assert kc.unchanged()
        kc.note_attrs((root << 2) | 2, st.dir(root).ctime_ns)
        other.set_dir_attrs(root, mode=0o700)
        assert not kc.unchanged()
        kc.invalidate()
        kc.invalidate()
        other.mkkw(ns, ("w",))                                 # a name anew: files_gen moved
        assert not kc.unchanged()
        kc.invalidate()
        with kc.handing():                                     # a getattr under way
            assert not kc.unchanged()
        assert kc.unchanged()
        kc.note_listing()                                      # READDIRPLUS: every file
        assert not kc.unchanged()
        kc.always = lambda: True                               # a shared mount
        kc.invalidate()
        kc.invalidate()
        assert not kc.unchanged()
        kc.changes.close()
