"""pjdfstest-style table of POSIX cases, each run in an ordinary directory of a real mount and
in a plain directory (ext4: the oracle), as root and, where permissions matter, as a second
user (issue 11: "every POSIX-suite case that ext4 passes, in ordinary directories").

A case is a function of a fresh empty directory that returns what it observed (errno names,
modes, link counts, which times moved); the test compares the mount's observation with the
plain directory's. Each case is small and says what pjdfstest area it stands for. Where
hkfs differs on purpose (docs/mount.md, "Where it differs") the case leaves that field out;
a divergence not fixed yet is a strict xfail naming it, so it shows up once fixed.

The random sequences are tests/test_state_machine.py; this table covers what random
sequences over a few names rarely reach (open flags, long names, times, xattrs, users).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import daemon_loads_libfuse3, fuse_usable, start_mount, stop_mount
from test_posix import RENAME_EXCHANGE, RENAME_NOREPLACE, _libc, renameat2
from test_second_user import run_as

pytestmark = pytest.mark.mount
FUSE3 = daemon_loads_libfuse3()

Obs = object
Case = Callable[["Ctx"], Obs]
ROOT_CASES: dict[str, Case] = {}
USER_CASES: dict[str, Case] = {}
XFAIL: dict[str, str] = {}          # case name -> the divergence it pins (strict xfail)


def case(table: dict[str, Case], xfail: str | None = None) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        table[fn.__name__] = fn
        if xfail:
            XFAIL[fn.__name__] = xfail
        return fn
    return register


def E(fn: Callable[..., object], *args: object, **kw: object) -> object:
    """fn's result, or the errno name it failed with (what both sides must agree on)."""
    try:
        out = fn(*args, **kw)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, exc.errno) if exc.errno else type(exc).__name__
    return "ok" if out is None else out


def kind(p: Path) -> str:
    try:
        m = os.lstat(p).st_mode
    except FileNotFoundError:
        return "-"
    return {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
            stat.S_IFSOCK: "s", stat.S_IFCHR: "c", stat.S_IFBLK: "b"}[stat.S_IFMT(m)]


def st(p: Path, follow: bool = False) -> tuple:
    """Type, permission bits (with setuid/setgid/sticky), link count, owner, group, size
    (not of directories: see st_size cases)."""
    s = os.stat(p) if follow else os.lstat(p)
    return (kind(p) if not follow else stat.S_IFMT(s.st_mode), oct(stat.S_IMODE(s.st_mode)), s.st_nlink,
            s.st_uid, s.st_gid, None if stat.S_ISDIR(s.st_mode) else s.st_size)


def moved(p: str, op: Callable[[], object], follow: bool = False, after: str | None = None) -> tuple[object, str]:
    """op's result and which of p's times it moved: 'a', 'm', 'c' (p is looked up as `after`
    once op ran, if given). atime and mtime are set in the past first; ctime is compared
    across a pause longer than the clock's tick."""
    os.utime(p, ns=(10**18, 10**18), follow_symlinks=follow)
    before = os.stat(p, follow_symlinks=follow)
    time.sleep(0.03)
    out = E(op)
    after = os.stat(after or p, follow_symlinks=follow)
    return out, "".join(c for c, f in (("a", "st_atime_ns"), ("m", "st_mtime_ns"), ("c", "st_ctime_ns"))
                        if getattr(before, f) != getattr(after, f))


def file_dir_link(c: Ctx) -> None:
    """What many cases start from: a file f, a directory d and a symlink l -> f."""
    write(c / "f")
    os.mkdir(c / "d")
    os.symlink("f", c / "l")


def write(p: Path, data: bytes = b"x", flags: int = os.O_CREAT | os.O_WRONLY | os.O_TRUNC,
          mode: int = 0o644) -> None:
    fd = os.open(p, flags, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(p: str | Path) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def user_xattrs(p: Path, follow: bool = True) -> list[str]:
    """listxattr without hkfs' own user.hk.* (differs on purpose: docs/mount.md)."""
    return sorted(n for n in os.listxattr(p, follow_symlinks=follow) if not n.startswith("user.hk."))


class Ctx:
    """One case's fresh directory `d` (mode 0777 for the second user's cases) and how to run
    a function as the second user (a forked child that drops to that uid; its result is
    pickled back)."""

    def __init__(self, d: Path, uid: int | None) -> None:
        self.d, self.uid = d, uid

    def __truediv__(self, rel: str) -> str:
        """A raw path string: pathlib would drop the `.` components and trailing slashes the
        cases test."""
        return f"{self.d}/{rel}"

    def as_user(self, fn: Callable[[], object]) -> object:
        assert self.uid is not None
        return run_as(self.uid, fn)


# ====================================================================== open

@case(ROOT_CASES)
def open_excl(c: Ctx) -> Obs:
    write(c / "f")
    os.mkdir(c / "d")
    os.symlink("nowhere", c / "dangling")
    os.symlink("f", c / "lf")
    x = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    return [E(lambda n=n: os.close(os.open(c / n, x, 0o600))) for n in ("f", "d", "dangling", "lf", "new")] \
        + [kind(c / "new"), kind(c / "nowhere")]


@case(ROOT_CASES)
def open_creat_through_a_dangling_symlink(c: Ctx) -> Obs:
    os.symlink("target", c / "link")
    r = E(lambda: write(c / "link", b"via link", os.O_CREAT | os.O_WRONLY, 0o640))
    return [r, kind(c / "target"), st(c / "target"), read(c / "target")]


@case(ROOT_CASES)
def open_directory_flags(c: Ctx) -> Obs:
    os.mkdir(c / "d")
    write(c / "f")
    os.symlink("d", c / "ld")
    tries = [("d", os.O_WRONLY), ("d", os.O_RDWR), ("d", os.O_CREAT | os.O_RDONLY), ("d", os.O_RDONLY),
             ("f", os.O_RDONLY | os.O_DIRECTORY), ("d", os.O_RDONLY | os.O_DIRECTORY),
             ("ld", os.O_RDONLY | os.O_DIRECTORY), ("ld", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW),
             ("f/x", os.O_RDONLY), ("f/x", os.O_CREAT | os.O_WRONLY), ("none/x", os.O_CREAT | os.O_WRONLY),
             ("d/", os.O_RDONLY), ("f/", os.O_RDONLY), ("none", os.O_RDONLY)]
    return [E(lambda p=p, fl=fl: os.close(os.open(c / p, fl, 0o644))) for p, fl in tries]


@case(ROOT_CASES)
def open_nofollow(c: Ctx) -> Obs:
    write(c / "f")
    os.symlink("f", c / "l")
    os.symlink("l2", c / "l1")
    os.symlink("l1", c / "l2")
    fl = os.O_RDONLY | os.O_NOFOLLOW
    out = [E(lambda p=p: os.close(os.open(c / p, fl))) for p in ("f", "l", "l1")]
    out.append(E(lambda: os.close(os.open(c / "l1", os.O_RDONLY))))      # a loop: ELOOP
    out.append(E(lambda: os.close(os.open(c / "l", os.O_PATH | os.O_NOFOLLOW))))
    return out


@case(ROOT_CASES)
def open_trunc_and_append(c: Ctx) -> Obs:
    write(c / "f", b"0123456789")
    t = moved(c / "f", lambda: os.close(os.open(c / "f", os.O_WRONLY | os.O_TRUNC)))
    write(c / "g", b"0123456789")
    t0 = moved(c / "g", lambda: os.close(os.open(c / "g", os.O_RDONLY | os.O_TRUNC)))  # Linux truncates
    empty = c / "e"
    write(empty, b"")
    te = moved(empty, lambda: os.close(os.open(empty, os.O_WRONLY | os.O_TRUNC)))
    write(c / "a", b"abc")
    fd = os.open(c / "a", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"def")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"ghi")
        os.pwrite(fd, b"X", 0)        # Linux: pwrite with O_APPEND appends
        pos = os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)
    return [t, st(c / "f"), t0, st(c / "g"), te, read(c / "a"), pos]


@case(ROOT_CASES)
def open_creat_modes(c: Ctx) -> Obs:
    old = os.umask(0o022)
    try:
        out = []
        for i, mode in enumerate((0o777, 0o644, 0, 0o4755, 0o2755, 0o1777, 0o7777)):
            p = c / f"f{i}"
            fd = os.open(p, os.O_CREAT | os.O_RDWR, mode)
            try:
                out.append((E(os.write, fd, b"ok"), st(p)))
            finally:
                os.close(fd)
        os.mkdir(c / "d", 0o777)
        os.mkdir(c / "s", 0o1777)
        os.mkdir(c / "g", 0o2755)
        os.mkdir(c / "z", 0)
        out += [st(c / n) for n in ("d", "s", "g", "z")]
    finally:
        os.umask(old)
    return out


@case(ROOT_CASES)
def open_eexist_and_enoent_names(c: Ctx) -> Obs:
    write(c / "f")
    return [E(os.open, "", os.O_RDONLY), E(lambda: os.close(os.open(c / "f/.", os.O_RDONLY))),
            E(lambda: os.close(os.open(c / ".", os.O_RDONLY))),
            E(lambda: os.close(os.open(c / "..", os.O_RDONLY | os.O_DIRECTORY)))]


# ====================================================================== names: length

@case(ROOT_CASES)
def name_max(c: Ctx) -> Obs:
    """NAME_MAX is 255 bytes (UTF-8 bytes, not characters): ENAMETOOLONG past it, for every call."""
    names = ("x" * 255, "y" * 256, "é" * 127 + "z", "é" * 127 + "zz")     # 255, 256, 255, 256 bytes
    out = []
    for name in names:
        base = name[:-1]
        out.append([E(write, c / (base + "f")), E(os.mkdir, c / (base + "d")), E(os.symlink, "t", c / (base + "l")),
                    E(os.mkfifo, c / (base + "p")), E(os.stat, c / (base + "n")), E(os.unlink, c / (base + "n"))])
    write(c / "src")
    out.append(E(os.rename, c / "src", c / ("y" * 256)))
    out.append(E(os.link, c / "src", c / ("y" * 256)))
    out.append(E(os.rename, c / "src", c / ("r" * 255)))
    out.append(E(os.setxattr, c / ("r" * 255), "user.a", b"1"))
    out.append(sorted(len(n.encode()) for n in os.listdir(c.d)))
    return out


@case(ROOT_CASES)
def path_max(c: Ctx) -> Obs:
    """A path of many components: ENAMETOOLONG past PATH_MAX, from the kernel."""
    comp = "p" * 200
    d = c.d
    made = 0
    for _ in range(25):             # 25 * 201 > 4096
        r = E(os.mkdir, d / comp)
        if r != "ok":
            break
        d = d / comp
        made += 1
    return [made, E(os.stat, str(c.d) + ("/" + comp) * 22) if made >= 22 else None,
            E(os.open, str(c.d) + ("/" + comp) * 21 + "/" + "q" * 100, os.O_CREAT | os.O_WRONLY)
            if made >= 21 else None]


# ====================================================================== link

@case(ROOT_CASES)
def link_errors(c: Ctx) -> Obs:
    write(c / "f")
    write(c / "g")
    os.mkdir(c / "d")
    os.symlink("f", c / "l")
    return [E(os.link, c / "d", c / "d2"), E(os.link, c / "f", c / "g"), E(os.link, c / "f", c / "d"),
            E(os.link, c / "none", c / "x"), E(os.link, c / "f", c / "none/x"), E(os.link, c / "f", c / "g/x"),
            E(os.link, c / "l", c / "hl", follow_symlinks=False), kind(c / "hl"), st(c / "l"),
            E(os.link, c / "l", c / "hf", follow_symlinks=True), kind(c / "hf"), st(c / "f")]


@case(ROOT_CASES)
def link_times(c: Ctx) -> Obs:
    """link moves the file's ctime and the directory's mtime and ctime, not the file's mtime."""
    write(c / "f")
    os.mkdir(c / "d")
    t_file = moved(c / "f", lambda: os.link(c / "f", c / "d/g"))
    t_dir = moved(c / "d", lambda: os.link(c / "f", c / "d/h"))
    return [t_file, t_dir, st(c / "f")]


# ====================================================================== unlink

@case(ROOT_CASES)
def unlink_errors_and_times(c: Ctx) -> Obs:
    write(c / "f")
    os.link(c / "f", c / "g")
    os.mkdir(c / "d")
    os.symlink("f", c / "l")
    errs = [E(os.unlink, c / "d"), E(os.unlink, c / "none"), E(os.unlink, c / "f/x"), E(os.unlink, c / "d/")]
    t_link = moved(c / "f", lambda: os.unlink(c / "l"))      # the symlink, not its target
    t_other = moved(c / "f", lambda: os.unlink(c / "g"))     # another name: the file's ctime
    write(c / "d/x")
    t_dir = moved(c / "d", lambda: os.unlink(c / "d/x"))
    return [errs, t_link, t_other, t_dir, st(c / "f"), sorted(os.listdir(c.d))]


# ====================================================================== mkdir, rmdir

@case(ROOT_CASES)
def mkdir_errors_and_counts(c: Ctx) -> Obs:
    write(c / "f")
    os.symlink("nowhere", c / "l")
    os.mkdir(c / "d")
    errs = [E(os.mkdir, c / n) for n in ("f", "l", "d", "none/x", "f/x", "d/")]
    t = moved(c / "d", lambda: os.mkdir(c / "d/sub"))
    return [errs, t, st(c / "d"), st(c / "d/sub")]


@case(ROOT_CASES)
def rmdir_errors_and_counts(c: Ctx) -> Obs:
    os.mkdir(c / "d")
    os.mkdir(c / "d/sub")
    write(c / "d/sub/f")
    write(c / "f")
    os.symlink("d", c / "ld")
    errs = [E(os.rmdir, c / "d"), E(os.rmdir, c / "d/sub"), E(os.rmdir, c / "f"), E(os.rmdir, c / "ld"),
            E(os.rmdir, c / "none"), E(os.rmdir, c / "d/."), E(os.rmdir, c / "d/sub/.."),
            E(os.rmdir, c / "f/x")]
    os.unlink(c / "d/sub/f")
    t = moved(c / "d", lambda: os.rmdir(c / "d/sub"))
    return [errs, t, st(c / "d")]


@case(ROOT_CASES)
def setgid_directory_inherits_group(c: Ctx) -> Obs:
    os.mkdir(c / "g")
    os.chown(c / "g", 0, 4321)
    os.chmod(c / "g", 0o2775)
    write(c / "g/f")
    os.mkdir(c / "g/sub", 0o755)
    os.mkfifo(c / "g/p")
    os.symlink("f", c / "g/l")
    return [st(c / f"g/{n}") for n in ("f", "sub", "p", "l")]


# ====================================================================== rename

@case(ROOT_CASES)
def rename_directory_cases(c: Ctx) -> Obs:
    os.makedirs(c / "a/b")
    os.makedirs(c / "full/x")
    os.mkdir(c / "empty")
    write(c / "f")
    return [E(os.rename, c / "a", c / "a/b/c"), E(os.rename, c / "a", c / "a/b"),
            E(os.rename, c / "a", c / "full"), E(os.rename, c / "f", c / "empty"),
            E(os.rename, c / "a", c / "f"), E(os.rename, c / "a", c / "f/x"), E(os.rename, c / "none", c / "x"),
            E(os.rename, c / "a/.", c / "z"), E(os.rename, c / "a", c / "a/b/.."),
            E(os.rename, c / "a", c / "a"), E(os.rename, c / "a", c / "empty"),
            st(c / "empty"), kind(c / "a"), st(c.d), sorted(os.listdir(c / "empty"))]


@case(ROOT_CASES)
def rename_between_hard_links_of_one_file(c: Ctx) -> Obs:
    """POSIX: old and new naming the same file: rename does nothing, both names stay."""
    write(c / "f", b"one")
    os.link(c / "f", c / "g")
    r = E(os.rename, c / "f", c / "g")
    return [r, sorted(os.listdir(c.d)), st(c / "g")]


@case(ROOT_CASES)
def rename_times(c: Ctx) -> Obs:
    os.mkdir(c / "src")
    os.mkdir(c / "dst")
    write(c / "src/f")
    t_file = moved(c / "src/f", lambda: os.rename(c / "src/f", c / "src/g"), after=c / "src/g")
    t_src = moved(c / "src", lambda: os.rename(c / "src/g", c / "dst/g"))
    write(c / "src/h")
    t_dst = moved(c / "dst", lambda: os.rename(c / "src/h", c / "dst/h"))
    write(c / "dst/i")
    t_over = moved(c / "dst", lambda: os.rename(c / "dst/h", c / "dst/i"))
    os.mkdir(c / "src/sub")
    t_moved_dir = moved(c / "src/sub", lambda: os.rename(c / "src/sub", c / "dst/sub"), after=c / "dst/sub")
    return [t_file, t_src, t_dst, t_over, t_moved_dir, st(c / "src"), st(c / "dst")]


@case(ROOT_CASES)
def rename_symlink_and_special_files(c: Ctx) -> Obs:
    write(c / "f", b"target")
    os.symlink("f", c / "l")
    os.mkfifo(c / "p")
    os.rename(c / "l", c / "l2")
    os.rename(c / "p", c / "p2")
    os.mkdir(c / "d")
    return [kind(c / "l2"), os.readlink(c / "l2"), kind(c / "p2"), E(os.rename, c / "p2", c / "d"),
            E(os.rename, c / "l2", c / "d"), E(os.rename, c / "l2", c / "f"), kind(c / "f"), os.readlink(c / "f")]


@case(ROOT_CASES)
def renameat2_flags(c: Ctx) -> Obs:
    if not FUSE3:
        return "libfuse 2 passes no renameat2 flags"
    write(c / "a", b"A")
    os.mkdir(c / "d")
    write(c / "d/x", b"X")
    return [E(renameat2, c / "a", c / "d", RENAME_NOREPLACE), E(renameat2, c / "a", c / "none", RENAME_EXCHANGE),
            E(renameat2, c / "a", c / "d", RENAME_EXCHANGE), kind(c / "a"), kind(c / "d"),
            E(renameat2, c / "a", c / "a/x", RENAME_EXCHANGE),
            E(renameat2, c / "d", c / "a", RENAME_NOREPLACE | RENAME_EXCHANGE),
            read(c / "d"), sorted(os.listdir(c / "a"))]


# ====================================================================== symlink

@case(ROOT_CASES)
def symlink_cases(c: Ctx) -> Obs:
    write(c / "f")
    os.mkdir(c / "d")
    long_ok, too_long = "t" * 4095, "t" * 4096
    out = [E(os.symlink, "x", c / n) for n in ("f", "d", "none/x", "f/x")]
    out += [E(os.symlink, long_ok, c / "long"), E(os.readlink, c / "long") == long_ok,
            E(os.symlink, too_long, c / "toolong"), E(os.symlink, "", c / "empty")]
    os.symlink("d/../f", c / "rel")
    os.symlink("é" * 100, c / "utf")
    out += [st(c / "rel"), st(c / "utf"), st(c / "long"), E(os.readlink, c / "f"), E(os.readlink, c / "d"),
            st(c / "rel", follow=True)]
    return out


@case(ROOT_CASES)
def symlink_times_and_owner(c: Ctx) -> Obs:
    os.mkdir(c / "d")
    t_dir = moved(c / "d", lambda: os.symlink("x", c / "d/l"))
    os.chown(c / "d/l", 1234, 5678, follow_symlinks=False)
    write(c / "f")
    os.symlink("f", c / "lf")
    os.chown(c / "lf", 4321, 8765, follow_symlinks=False)
    return [t_dir, st(c / "d/l"), st(c / "lf"), st(c / "f")]


# ====================================================================== chmod, chown

@case(ROOT_CASES)
def chmod_cases(c: Ctx) -> Obs:
    file_dir_link(c)
    os.mkfifo(c / "p")
    out = []
    for n in ("f", "d", "p"):
        for mode in (0o7777, 0o4700, 0o2070, 0o1007, 0):
            os.chmod(c / n, mode)
            out.append(st(c / n))
    os.chmod(c / "l", 0o640)                      # follows the link
    out += [st(c / "l"), st(c / "f")]
    out.append(moved(c / "f", lambda: os.chmod(c / "f", 0o600)))
    out.append(moved(c / "d", lambda: os.chmod(c / "d", 0o755)))
    out.append(E(os.chmod, c / "none", 0o600))
    return out


@case(ROOT_CASES)
def chown_cases(c: Ctx) -> Obs:
    file_dir_link(c)
    out = []
    os.chown(c / "f", 1000, 2000)
    out.append(st(c / "f"))
    os.chown(c / "f", -1, 3000)
    out.append(st(c / "f"))
    os.chown(c / "f", 4000, -1)
    out.append(st(c / "f"))
    os.chown(c / "l", 5, 6)                       # follows
    out += [st(c / "f"), st(c / "l")]
    os.chown(c / "l", 7, 8, follow_symlinks=False)
    out += [st(c / "f"), st(c / "l")]
    os.chown(c / "d", 9, 10)
    out.append(st(c / "d"))
    out.append(moved(c / "f", lambda: os.chown(c / "f", 11, 12)))
    return out


@case(ROOT_CASES, xfail="chown(-1, -1) does not move ctime: the kernel sends a ctime-only SETATTR, "
                        "which libfuse's high-level API drops (it calls chown only for a uid or gid)")
def chown_to_nobody_moves_ctime(c: Ctx) -> Obs:
    write(c / "f")
    return moved(c / "f", lambda: os.chown(c / "f", -1, -1))


@case(ROOT_CASES)
def chown_clears_setuid_and_setgid(c: Ctx) -> Obs:
    out = []
    for i, mode in enumerate((0o4755, 0o2755, 0o6755, 0o6644, 0o2745, 0o6777)):
        p = c / f"f{i}"
        write(p)
        os.chmod(p, mode)
        os.chown(p, 1000, 1000)
        out.append(st(p))
    os.mkdir(c / "d")
    os.chmod(c / "d", 0o6755)
    os.chown(c / "d", 1000, 1000)
    out.append(st(c / "d"))
    return out


@case(ROOT_CASES)
def write_and_truncate_as_root_keep_setuid(c: Ctx) -> Obs:
    """Root (CAP_FSETID) writing a setuid file: the bits stay, on ext4."""
    write(c / "f")
    os.chmod(c / "f", 0o6755)
    write(c / "f", b"more", os.O_WRONLY | os.O_APPEND)
    os.truncate(c / "f", 2)
    return st(c / "f")


# ====================================================================== truncate, write

@case(ROOT_CASES)
def truncate_cases(c: Ctx) -> Obs:
    write(c / "f", b"0123456789")
    os.mkdir(c / "d")
    out = [E(os.truncate, c / "d", 0), E(os.truncate, c / "f", -1), E(os.truncate, c / "none", 0),
           E(os.truncate, c / "f/x", 0)]
    out.append(moved(c / "f", lambda: os.truncate(c / "f", 20)))
    out.append(read(c / "f"))
    out.append(moved(c / "f", lambda: os.truncate(c / "f", 20)))    # the same size
    out.append(moved(c / "f", lambda: os.truncate(c / "f", 3)))
    out.append(read(c / "f"))
    fd = os.open(c / "f", os.O_RDONLY)
    try:
        out.append(E(os.ftruncate, fd, 0))
    finally:
        os.close(fd)
    fd = os.open(c / "f", os.O_RDWR)
    try:
        out.append(moved(c / "f", lambda: os.ftruncate(fd, 1)))
        out.append(os.pread(fd, 10, 0))
    finally:
        os.close(fd)
    out.append(E(os.truncate, c / "f", 1 << 62))
    return out


@case(ROOT_CASES)
def write_times_and_sizes(c: Ctx) -> Obs:
    write(c / "f", b"")
    fd = os.open(c / "f", os.O_RDWR)
    try:
        t_write = moved(c / "f", lambda: os.write(fd, b"abc"))
        t_empty = moved(c / "f", lambda: os.write(fd, b""))
        t_read = moved(c / "f", lambda: os.pread(fd, 3, 0))        # noatime on hkfs: not compared
        t_hole = moved(c / "f", lambda: os.pwrite(fd, b"z", 100))
        body = os.pread(fd, 200, 0)
    finally:
        os.close(fd)
    os.mkdir(c / "d")
    t_dir = moved(c / "d", lambda: write(c / "d/new"))
    return [t_write, t_empty, t_read[0], t_hole, body, st(c / "f"), t_dir]


@case(ROOT_CASES)
def fallocate_cases(c: Ctx) -> Obs:
    write(c / "f", b"abc")
    out = []
    fd = os.open(c / "f", os.O_RDONLY)
    try:
        out.append(E(os.posix_fallocate, fd, 0, 10))
    finally:
        os.close(fd)
    fd = os.open(c / "f", os.O_RDWR)
    try:
        out.append(E(os.posix_fallocate, fd, 0, 0))
        out.append(E(os.posix_fallocate, fd, -1, 10))
        out.append(moved(c / "f", lambda: os.posix_fallocate(fd, 0, 4096)))
        out.append(os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return out


# ====================================================================== utimensat

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def utimensat(p: Path, atime: tuple[int, int], mtime: tuple[int, int], nofollow: bool = False) -> None:
    """utimensat(2) with raw timespecs (os.utime cannot pass UTIME_NOW/UTIME_OMIT)."""
    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
    ts = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if _libc.utimensat(-100, os.fsencode(p), ts, 0x100 if nofollow else 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(p))


@case(ROOT_CASES, xfail=None if FUSE3 else "libfuse 2 (the fallback) hands UTIME_OMIT and UTIME_NOW "
                                              "to the file system as times: one omitted time changes the other")
def utimensat_cases(c: Ctx) -> Obs:
    write(c / "f")
    os.symlink("f", c / "l")
    os.mkdir(c / "d")
    out = []
    for a, m in (((1, 123456789), (2, 987654321)), ((0, 0), (0, 0)), ((-1, 5), (-100, 0)),
                 ((2**33, 1), (2**33 + 1, 999999999))):
        out.append(E(utimensat, c / "f", a, m))
        s = os.stat(c / "f")
        out.append((s.st_atime_ns, s.st_mtime_ns))
    utimensat(c / "f", (5, 5), (6, 6))
    out.append(moved(c / "f", lambda: utimensat(c / "f", (0, UTIME_OMIT), (0, UTIME_OMIT))))
    utimensat(c / "f", (5, 5), (6, 6))
    out.append(E(utimensat, c / "f", (0, UTIME_OMIT), (7, 7)))
    s = os.stat(c / "f")
    out.append((s.st_atime_ns, s.st_mtime_ns))
    out.append(E(utimensat, c / "f", (8, 8), (0, UTIME_OMIT)))
    s = os.stat(c / "f")
    out.append((s.st_atime_ns, s.st_mtime_ns))
    before = time.time_ns()
    utimensat(c / "f", (0, UTIME_NOW), (0, UTIME_OMIT))
    s = os.stat(c / "f")
    out.append((s.st_atime_ns >= before - 10**8, s.st_mtime_ns))
    out.append(E(utimensat, c / "f", (0, 1_000_000_000), (0, 0)))          # tv_nsec out of range
    out.append(E(utimensat, c / "l", (11, 0), (12, 0), nofollow=True))      # the link's own times
    out += [(os.lstat(c / "l").st_mtime_ns, os.stat(c / "l").st_mtime_ns)]
    out.append(E(os.utime, c / "d", ns=(13, 14)))
    out.append(os.stat(c / "d").st_mtime_ns)
    out.append(E(os.utime, c / "none", ns=(1, 1)))
    return out


# ====================================================================== stat fields

@case(ROOT_CASES)
def st_size_of_symlinks_and_fifos(c: Ctx) -> Obs:
    for i, target in enumerate(("a", "é", "x" * 300, "../../" * 10)):
        os.symlink(target, c / f"l{i}")
    os.mkfifo(c / "p")
    return sorted((n, os.lstat(c / n).st_size) for n in os.listdir(c.d))


@case(ROOT_CASES)
def st_ino_stays_across_rename_and_link(c: Ctx) -> Obs:
    write(c / "f")
    os.mkdir(c / "d")
    i = os.stat(c / "f").st_ino
    os.rename(c / "f", c / "g")
    os.link(c / "g", c / "d/h")
    di = os.stat(c / "d").st_ino
    os.rename(c / "d", c / "e")
    return [os.stat(c / "g").st_ino == i, os.stat(c / "e/h").st_ino == i, os.stat(c / "e").st_ino == di,
            len({os.lstat(c / n).st_ino for n in ("g", "e")})]


# ====================================================================== readdir

@case(ROOT_CASES)
def readdir_after_many_creates_and_deletes(c: Ctx) -> Obs:
    names = [f"n{i:03d}" for i in range(300)]
    for n in names:
        write(c / n, b"")
    for n in names[::3]:
        os.unlink(c / n)
    for n in names[::7]:
        E(os.mkdir, c / (n + "d"))
    entries = sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                     for e in os.scandir(c.d))
    # removing every entry while listing: nothing listed twice, nothing skipped
    seen = []
    with os.scandir(c.d) as it:
        for e in it:
            seen.append(e.name)
            (os.rmdir if e.is_dir(follow_symlinks=False) else os.unlink)(e.path)
    return [entries, len(seen), len(set(seen)), os.listdir(c.d), st(c.d)]


@case(ROOT_CASES)
def readdir_types(c: Ctx) -> Obs:
    file_dir_link(c)
    os.mkfifo(c / "p")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(c / "s"))
    finally:
        s.close()
    return sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False),
                   e.is_symlink(), stat.S_IFMT(e.stat(follow_symlinks=False).st_mode)) for e in os.scandir(c.d))


# ====================================================================== fifos, sockets, mknod

@case(ROOT_CASES)
def fifo_and_socket_cases(c: Ctx) -> Obs:
    os.mkfifo(c / "p", 0o600)
    out = [E(os.mkfifo, c / "p"), E(os.open, c / "p", os.O_WRONLY | os.O_NONBLOCK), st(c / "p")]
    r = os.open(c / "p", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(c / "p", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(w, b"hi")
        out.append(os.read(r, 10))
        out.append(st(c / "p"))       # a FIFO's size stays 0
    finally:
        os.close(w)
        os.close(r)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(c / "s"))
        s2 = socket.socket(socket.AF_UNIX)
        try:
            out.append(E(s2.bind, str(c / "s")))
        finally:
            s2.close()
    finally:
        s.close()
    out.append(st(c / "s")[:3])
    out.append(E(os.mknod, c / "r", stat.S_IFREG | 0o600))
    out.append(st(c / "r"))
    out.append(E(os.mknod, c / "dd", stat.S_IFDIR | 0o755))
    out.append(E(os.mknod, c / "c", stat.S_IFCHR | 0o600, os.makedev(1, 3)))
    out.append((st(c / "c"), os.lstat(c / "c").st_rdev == os.makedev(1, 3)))
    out.append(E(os.truncate, c / "p", 0))
    return out


# ====================================================================== xattrs

@case(ROOT_CASES)
def xattr_cases(c: Ctx) -> Obs:
    file_dir_link(c)
    f = c / "f"
    out = [E(os.getxattr, f, "user.a"), E(os.removexattr, f, "user.a"),
           E(os.setxattr, f, "user.a", b"1", os.XATTR_REPLACE), E(os.setxattr, f, "user.a", b"1", os.XATTR_CREATE),
           E(os.setxattr, f, "user.a", b"2", os.XATTR_CREATE), E(os.setxattr, f, "user.a", b"3", os.XATTR_REPLACE),
           E(os.getxattr, f, "user.a"), E(os.setxattr, f, "user.e", b""), E(os.getxattr, f, "user.e"),
           E(os.setxattr, f, "user.b", bytes(range(256)) * 4), E(os.getxattr, f, "user.b") == bytes(range(256)) * 4,
           user_xattrs(f), E(os.removexattr, f, "user.a"), user_xattrs(f),
           E(os.setxattr, f, "user." + "n" * 250, b"v"), E(os.setxattr, f, "user." + "n" * 251, b"v"),
           E(os.setxattr, f, "nosuchns.a", b"v"), E(os.setxattr, f, "user.", b"v"),
           E(os.getxattr, f, "user."), E(os.removexattr, f, "user."),
           E(os.setxattr, f, "user.toobig", b"v" * 65537)]
    # a value of up to 64 KiB (the VFS limit) is kept; ext4 without ea_inode takes one block (ENOSPC)
    out += [E(os.setxattr, c / "d", "user.d", b"dir"), E(os.getxattr, c / "d", "user.d"), user_xattrs(c / "d"),
            E(os.setxattr, c / "l", "user.l", b"x", follow_symlinks=False),       # EPERM on a symlink
            E(os.getxattr, c / "l", "user.l", follow_symlinks=False),
            E(os.setxattr, c / "l", "user.via", b"y"), E(os.getxattr, f, "user.via")]
    out.append(moved(f, lambda: os.setxattr(f, "user.t", b"t")))
    out.append(moved(f, lambda: os.removexattr(f, "user.t")))
    return out


@case(ROOT_CASES)
def xattrs_follow_the_file(c: Ctx) -> Obs:
    write(c / "f")
    os.setxattr(c / "f", "user.k", b"v")
    os.link(c / "f", c / "g")
    os.rename(c / "f", c / "h")
    write(c / "x")
    os.setxattr(c / "x", "user.x", b"x")
    os.rename(c / "x", c / "g2")
    os.rename(c / "g2", c / "h")                 # over h: h is x now
    return [user_xattrs(c / "g"), E(os.getxattr, c / "g", "user.k"), user_xattrs(c / "h")]


# ====================================================================== the second user

def _user_dir(c: Ctx, mode: int = 0o1777) -> Path:
    os.chmod(c.d, mode)
    return c.d


@case(USER_CASES)
def sticky_directory(c: Ctx) -> Obs:
    _user_dir(c, 0o1777)
    write(c / "roots", b"r")
    os.chmod(c / "roots", 0o666)
    os.mkdir(c / "rootdir", 0o777)
    os.chmod(c / "rootdir", 0o777)

    def user() -> object:
        write(c / "mine", b"m")
        return [E(os.unlink, c / "roots"), E(os.rename, c / "roots", c / "x"), E(os.rmdir, c / "rootdir"),
                E(os.rename, c / "mine", c / "roots"), E(os.rename, c / "rootdir", c / "rd2"),
                E(write, c / "roots", b"w", os.O_WRONLY | os.O_APPEND), E(os.unlink, c / "mine"),
                E(os.link, c / "roots", c / "stolen")]        # protected_hardlinks
    out = c.as_user(user)
    return [out, sorted(os.listdir(c.d)), read(c / "roots")]


@case(USER_CASES)
def permissions_of_a_private_file_and_directory(c: Ctx) -> Obs:
    _user_dir(c, 0o755)
    write(c / "secret", b"s")
    os.chmod(c / "secret", 0o600)
    write(c / "ro", b"r")
    os.chmod(c / "ro", 0o644)
    os.mkdir(c / "priv", 0o700)
    write(c / "priv/f")
    os.chmod(c / "priv/f", 0o666)
    os.mkdir(c / "noexec", 0o744)
    os.chmod(c / "noexec", 0o744)
    write(c / "noexec/f")

    def user() -> object:
        return [E(os.open, c / "secret", os.O_RDONLY), E(os.open, c / "ro", os.O_WRONLY),
                E(os.truncate, c / "ro", 0), E(os.chmod, c / "ro", 0o666), E(os.chown, c / "ro", c.uid, -1),
                E(os.utime, c / "ro", ns=(1, 1)), E(os.utime, c / "ro"), E(write, c / "new"),
                E(os.unlink, c / "ro"), E(os.mkdir, c / "x"), E(os.stat, c / "priv/f"),
                E(os.listdir, c / "priv"), sorted(E(os.listdir, c / "noexec")),     # r without x: names only
                E(os.stat, c / "noexec/f"), E(os.setxattr, c / "ro", "user.a", b"1"),
                E(os.getxattr, c / "ro", "user.none"), E(os.access, c / "ro", os.W_OK),
                E(os.open, c / "ro", os.O_RDONLY | os.O_TRUNC)]
    return c.as_user(user)


@case(USER_CASES)
def write_by_another_user_clears_setuid(c: Ctx) -> Obs:
    _user_dir(c, 0o777)
    modes = (0o4777, 0o6777, 0o2777, 0o4766)
    for i, mode in enumerate(modes):
        write(c / f"f{i}")
        os.chmod(c / f"f{i}", mode)

    def user() -> object:
        return [E(write, c / f"f{i}", b"w", os.O_WRONLY | os.O_APPEND) for i in range(len(modes))] \
            + [E(os.truncate, c / "f0", 0)]
    return [c.as_user(user)] + [st(c / f"f{i}") for i in range(len(modes))]


@case(USER_CASES, xfail="a write by a user outside the file's group keeps S_ISGID when the group "
                        "cannot execute: Linux's FUSE module drops S_ISGID only with S_IXGRP (its "
                        "own rule, fs/fuse/dir.c fuse_setattr); ext4 drops it for any non-member")
def write_by_another_user_clears_setgid_without_group_exec(c: Ctx) -> Obs:
    _user_dir(c, 0o777)
    write(c / "f")
    os.chmod(c / "f", 0o2767)
    return [c.as_user(lambda: E(write, c / "f", b"w", os.O_WRONLY | os.O_APPEND)), st(c / "f")]


@case(USER_CASES)
def owner_chmod_and_chown_rules(c: Ctx) -> Obs:
    _user_dir(c, 0o777)

    def user() -> object:
        write(c / "mine")
        os.mkdir(c / "mydir")
        return [E(os.chmod, c / "mine", 0o4755), st(c / "mine"), E(os.chmod, c / "mine", 0o2755), st(c / "mine"),
                E(os.chmod, c / "mydir", 0o3777), st(c / "mydir"), E(os.chown, c / "mine", 0, -1),
                E(os.chown, c / "mine", -1, 0), E(os.chmod, c / "mine", 0o6755), st(c / "mine"),
                E(os.chown, c / "mine", c.uid, c.uid), st(c / "mine"),
                E(os.chown, c / "mine", -1, -1), E(os.utime, c / "mine", ns=(5, 6)),
                os.stat(c / "mine").st_mtime_ns, E(os.setxattr, c / "mine", "user.m", b"m"),
                E(os.getxattr, c / "mine", "user.m"), E(os.mkfifo, c / "myfifo"), st(c / "myfifo")]
    return c.as_user(user)


@case(USER_CASES)
def setgid_directory_as_a_user(c: Ctx) -> Obs:
    _user_dir(c, 0o777)
    os.mkdir(c / "g")
    os.chown(c / "g", 0, 4321)
    os.chmod(c / "g", 0o2777)

    def user() -> object:
        write(c / "g/f")
        os.mkdir(c / "g/sub")
        os.mkfifo(c / "g/p")
        return [st(c / "g/f"), st(c / "g/sub"), st(c / "g/p")]
    return c.as_user(user)


@case(USER_CASES)
def chmod_setgid_by_a_user_outside_the_group(c: Ctx) -> Obs:
    """chmod g+s of a file whose group the owner is not in: S_ISGID dropped silently (POSIX;
    the kernel's setattr_prepare does it with default_permissions)."""
    _user_dir(c, 0o777)

    def user() -> object:
        write(c / "f")
        os.mkdir(c / "d")
        return [E(os.chmod, c / "f", 0o2755), st(c / "f"), E(os.chmod, c / "d", 0o2755), st(c / "d")]
    out = c.as_user(user)
    os.chown(c / "f", -1, 4321)           # a group the user is not in
    out.append(c.as_user(lambda: (E(os.chmod, c / "f", 0o2755), st(c / "f"))))
    return out


@case(USER_CASES)
def times_by_a_user_with_write_permission(c: Ctx) -> Obs:
    """utimensat: a non-owner who may write can set both times to now, nothing else (EPERM)."""
    _user_dir(c, 0o755)
    write(c / "w")
    os.chmod(c / "w", 0o666)

    def user() -> object:
        return [E(os.utime, c / "w"), E(utimensat, c / "w", (0, UTIME_NOW), (0, UTIME_NOW)),
                E(utimensat, c / "w", (0, UTIME_OMIT), (0, UTIME_NOW)), E(os.utime, c / "w", ns=(1, 1)),
                E(os.chmod, c / "w", 0o600), E(os.truncate, c / "w", 0), E(os.setxattr, c / "w", "user.a", b"1")]
    return [c.as_user(user), st(c / "w"), user_xattrs(c / "w")]


@case(USER_CASES)
def renames_needing_write_permission(c: Ctx) -> Obs:
    """Moving a directory to another parent needs write permission on it (its `..` changes);
    renaming within a parent does not; a read-only parent refuses both."""
    _user_dir(c, 0o777)
    os.mkdir(c / "a", 0o777)
    os.chmod(c / "a", 0o777)
    os.mkdir(c / "b", 0o777)
    os.chmod(c / "b", 0o777)
    os.mkdir(c / "a/rootdir", 0o755)
    os.mkdir(c / "ro", 0o755)
    write(c / "ro/f")
    write(c / "a/rootfile")

    def user() -> object:
        return [E(os.rename, c / "a/rootdir", c / "b/rootdir"), E(os.rename, c / "a/rootdir", c / "a/renamed"),
                E(os.rename, c / "ro/f", c / "a/f"), E(os.rename, c / "a/rootfile", c / "ro/x"),
                E(os.rename, c / "a/rootfile", c / "b/rootfile"), E(os.mknod, c / "a/dev", stat.S_IFCHR | 0o600, 0),
                E(os.symlink, "x", c / "ro/l"), E(os.link, c / "a/rootfile", c / "ro/h")]
    return [c.as_user(user), sorted(os.listdir(c / "a")), sorted(os.listdir(c / "b"))]


@case(USER_CASES)
def xattrs_of_a_sticky_directory(c: Ctx) -> Obs:
    """user.* attributes of a sticky directory (and of files in it) are its owner's to set:
    EPERM for another user even with write permission (Linux's xattr_permission)."""
    _user_dir(c, 0o1777)
    write(c / "f")
    os.chmod(c / "f", 0o666)

    def user() -> object:
        return [E(os.setxattr, c.d, "user.a", b"1"), E(os.setxattr, c / "f", "user.b", b"2"),
                E(os.getxattr, c.d, "user.a"), user_xattrs(c.d)]
    return c.as_user(user)


@case(ROOT_CASES)
def access_as_root(c: Ctx) -> Obs:
    """Root reads and writes any file, but executes only one with some execute bit."""
    out = []
    for mode in (0, 0o644, 0o100, 0o001, 0o010):
        p = c / f"f{mode:o}"
        write(p, b"#!/bin/sh\n")
        os.chmod(p, mode)
        out.append([os.access(p, m) for m in (os.R_OK, os.W_OK, os.X_OK)] + [E(lambda p=p: read(p))])
    os.mkdir(c / "d", 0)
    out.append([os.access(c / "d", m) for m in (os.R_OK, os.W_OK, os.X_OK)] + [E(os.listdir, c / "d")])
    return out


@case(ROOT_CASES)
def st_blocks_follow_the_size(c: Ctx) -> Obs:
    """st_blocks (hkfs computes it from the size, docs/mount.md): 0 for an empty file, enough
    512-byte blocks for the bytes of a written one (what du and cp --sparse need)."""
    out = []
    for n in (0, 1, 4096, 100000):
        write(c / f"f{n}", b"x" * n)
        s = os.stat(c / f"f{n}")
        out.append((s.st_blocks == 0, s.st_blocks * 512 >= n, s.st_blksize >= 512))
    return out


@case(ROOT_CASES)
def open_descriptors_across_renames_and_chmod(c: Ctx) -> Obs:
    """An open descriptor follows its file: through a rename of it and of its directory, a
    chmod to 0 (the descriptor keeps its access) and an unlink."""
    os.mkdir(c / "d")
    write(c / "d/f", b"abc")
    fd = os.open(c / "d/f", os.O_RDWR)
    try:
        os.rename(c / "d/f", c / "d/g")
        os.rename(c / "d", c / "e")
        os.chmod(c / "e/g", 0)
        os.pwrite(fd, b"Z", 1)
        os.unlink(c / "e/g")
        s = os.fstat(fd)
        return [os.pread(fd, 10, 0), s.st_nlink, oct(stat.S_IMODE(s.st_mode)), sorted(os.listdir(c / "e"))]
    finally:
        os.close(fd)


@case(ROOT_CASES)
def directory_link_counts(c: Ctx) -> Obs:
    """st_nlink of a directory: 2 + its subdirectories, through mkdir, rename across parents,
    rename over an empty directory, rmdir."""
    os.makedirs(c / "a/x")
    os.makedirs(c / "a/y")
    os.mkdir(c / "b")
    os.mkdir(c / "b/z")
    out = [st(c / "a")[2], st(c / "b")[2], st(c.d)[2]]
    os.rename(c / "a/x", c / "b/x")
    out += [st(c / "a")[2], st(c / "b")[2]]
    os.rename(c / "a/y", c / "b/z")          # over an empty directory
    out += [st(c / "a")[2], st(c / "b")[2]]
    os.rename(c / "b", c / "a/b")
    out += [st(c / "a")[2], st(c.d)[2]]
    os.rmdir(c / "a/b/x")
    out += [st(c / "a/b")[2]]
    return out


@contextlib.contextmanager
def removed_while_in_use(c: Ctx) -> Iterator[int]:
    """A directory d removed while open (the descriptor yielded) and the working directory."""
    os.mkdir(c / "d")
    fd = os.open(c / "d", os.O_RDONLY | os.O_DIRECTORY)
    cwd = os.getcwd()
    try:
        os.chdir(c / "d")
        os.rmdir(c / "d")
        yield fd
    finally:
        os.chdir(cwd)
        os.close(fd)


@case(ROOT_CASES)
def removed_directory_in_use(c: Ctx) -> Obs:
    """A directory removed while open or the working directory: empty, nothing can be made in it."""
    with removed_while_in_use(c):
        return [E(os.mkdir, "x"), E(write, "f"), E(os.symlink, "t", "l"), E(os.mkfifo, "p")]


@case(ROOT_CASES, xfail="fstat and readdir of a directory removed while open (and stat of a removed "
                        "working directory) are ESTALE: libfuse's high-level API has no path left "
                        "for it (hard_remove=False hides only files); ext4 answers nlink 0 and [] ")
def fstat_of_a_removed_directory(c: Ctx) -> Obs:
    with removed_while_in_use(c) as fd:
        return [E(lambda: os.fstat(fd).st_nlink), E(lambda: os.stat(".").st_nlink), E(os.listdir, fd)]


@case(ROOT_CASES)
def running_executable(c: Ctx) -> Obs:
    """A program running from the file system: writing its file is ETXTBSY (or allowed, as the
    kernel decides); removing or renaming its name is fine."""
    import subprocess
    exe = c / "sleeper"
    with open("/bin/sleep", "rb") as src:
        write(exe, src.read(), mode=0o755)
    os.chmod(exe, 0o755)
    proc = subprocess.Popen([exe, "30"])
    try:
        time.sleep(0.2)          # only so that the exec has happened: both sides wait alike
        return [E(lambda: os.close(os.open(exe, os.O_WRONLY))),
                E(os.truncate, exe, 0), E(os.rename, exe, c / "moved"), E(os.unlink, c / "moved")]
    finally:
        proc.kill()
        proc.wait()


# ====================================================================== paths, tmpfiles, data paths

@case(ROOT_CASES)
def trailing_slashes(c: Ctx) -> Obs:
    write(c / "f")
    os.mkdir(c / "d")
    return [E(os.stat, c / "f/"), E(os.open, c / "d/", os.O_CREAT | os.O_WRONLY), E(os.mkdir, c / "x/"),
            E(os.rename, c / "f", c / "g/"), E(os.symlink, "t", c / "l/"), E(os.link, c / "f", c / "h/"),
            E(os.unlink, c / "f/"), E(os.rmdir, c / "x/"), E(os.rename, c / "d/", c / "e"),
            E(os.rename, c / "e", c / "d2/"), E(os.mkfifo, c / "p/"), sorted(os.listdir(c.d))]


@case(ROOT_CASES)
def data_paths(c: Ctx) -> Obs:
    """copy_file_range, SEEK_DATA/SEEK_HOLE of a file without holes, a shared mmap, flock."""
    import fcntl
    import mmap
    write(c / "src", b"0123456789" * 100)
    write(c / "dst", b"")
    out = []
    s_fd, d_fd = os.open(c / "src", os.O_RDONLY), os.open(c / "dst", os.O_RDWR)
    try:
        n = 0
        while n < 1000:
            got = os.copy_file_range(s_fd, d_fd, 1000 - n)
            if not got:
                break
            n += got
        out += [n, os.pread(d_fd, 2000, 0) == read(c / "src"),
                os.lseek(s_fd, 0, os.SEEK_DATA), os.lseek(s_fd, 0, os.SEEK_HOLE), E(os.lseek, s_fd, 1000, os.SEEK_DATA)]
        m = mmap.mmap(d_fd, 1000)
        m[0:5] = b"HELLO"
        m.flush()
        m.close()
    finally:
        os.close(s_fd)
        os.close(d_fd)
    out.append(read(c / "dst")[:12])
    a, b = os.open(c / "src", os.O_RDONLY), os.open(c / "src", os.O_RDONLY)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out.append(E(fcntl.flock, b, fcntl.LOCK_EX | fcntl.LOCK_NB))
        fcntl.flock(a, fcntl.LOCK_UN)
        out.append(E(fcntl.flock, b, fcntl.LOCK_SH | fcntl.LOCK_NB))
    finally:
        os.close(a)
        os.close(b)
    return out


@case(ROOT_CASES, xfail="open(O_TMPFILE) is EOPNOTSUPP: libfuse's high-level API has no tmpfile "
                        "operation (tools fall back to a named temp file, as on any file system "
                        "without O_TMPFILE)")
def o_tmpfile(c: Ctx) -> Obs:
    """open(dir, O_TMPFILE): an unnamed file, linked in later with linkat (AT_EMPTY_PATH through /proc)."""
    try:
        fd = os.open(c.d, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    try:
        os.write(fd, b"tmp")
        # os.link calls link(2), which does not follow /proc's link
        if _libc.linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, os.fsencode(c / "named"), 0x400) != 0:
            return ["linkat", errno.errorcode[ctypes.get_errno()]]
        return [read(c / "named"), sorted(os.listdir(c.d))]
    finally:
        os.close(fd)


# ====================================================================== files removed while open

@case(ROOT_CASES)
def ftruncate_of_a_file_removed_while_open(c: Ctx) -> Obs:
    """ftruncate through a descriptor of a removed file, with and without an fchmod first
    (ENOENT once, with the bytes truncated all the same)."""
    out = []
    for pre in (None, 0o600, 0):
        write(c / "f", b"hello")
        fd = os.open(c / "f", os.O_RDWR)
        try:
            os.unlink(c / "f")
            if pre is not None:
                os.fchmod(fd, pre)
            out.append([E(os.ftruncate, fd, 2), os.fstat(fd).st_size, os.pread(fd, 9, 0), E(os.ftruncate, fd, 7),
                        os.pread(fd, 9, 0)])
        finally:
            os.close(fd)
    return out


@case(ROOT_CASES)
def fstat_of_an_open_file_unlinked_beside_another_link(c: Ctx) -> Obs:
    write(c / "g", b"hello")
    os.link(c / "g", c / "h")
    fd = os.open(c / "g", os.O_RDWR)
    try:
        os.unlink(c / "g")
        os.pwrite(fd, b"J", 0)
        return [os.fstat(fd).st_nlink, os.stat(c / "h").st_nlink, read(c / "h")]
    finally:
        os.close(fd)


# ====================================================================== the runner

def _roots(tmp_path_factory: pytest.TempPathFactory, options: str) -> Iterator[tuple[Path, Path]]:
    """A mount and a plain directory, both under a 0755 directory in /tmp (a second user
    must reach them: pytest's tmp_path is private)."""
    if not fuse_usable():
        pytest.skip("FUSE is not available")
    base = Path(tempfile.mkdtemp(prefix="hkfs-oracle-", dir="/tmp"))
    base.chmod(0o755)
    m = start_mount(tmp_path_factory.mktemp("oracle") / "store", base / "mnt", options)
    m.root.chmod(0o755)
    plain = base / "plain"
    plain.mkdir(mode=0o755)
    try:
        yield m.root, plain
    finally:
        stop_mount(m)
        shutil.rmtree(base, ignore_errors=True)
        problems = m.log_problems()
        assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def private_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """`hk mount` as it is by default: no options (the daemon checks no permissions; only
    the mounting user reaches the mount)."""
    yield from _roots(tmp_path_factory, "")


@pytest.fixture(scope="module")
def shared_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A shared mount: allow_other,default_permissions (the kernel checks every access)."""
    if os.geteuid() != 0:
        pytest.skip("allow_other needs root here")
    yield from _roots(tmp_path_factory, "allow_other,default_permissions")


def _params(table: dict[str, Case]) -> list:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=XFAIL[name]) if name in XFAIL else ())
            for name in table]


def _compare(table: dict[str, Case], name: str, roots: tuple[Path, Path], uid: int | None) -> None:
    got = []
    for root in roots:
        d = root / name
        d.mkdir()
        got.append(table[name](Ctx(d, uid)))
    hk, plain = got
    assert hk == plain, f"{name}:\n mount {hk}\n ext4  {plain}"


@pytest.mark.parametrize("name", _params(ROOT_CASES))
@pytest.mark.parametrize("mount_kind", ["private", "shared"])
def test_as_root(name: str, mount_kind: str, request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        pytest.skip("the table's root cases chown and chmod to any owner")
    _compare(ROOT_CASES, name, request.getfixturevalue(f"{mount_kind}_roots"), None)


@pytest.mark.parametrize("name", _params(USER_CASES))
def test_as_a_second_user(name: str, shared_roots: tuple[Path, Path], second_uid: int) -> None:  # noqa: F811
    _compare(USER_CASES, name, shared_roots, second_uid)


def test_permitted_follows_the_kernels_rules() -> None:
    """hkfs.mount.access.permitted, which answers access(2) on a mount without
    default_permissions (private_roots' access_as_root checks it through a mount)."""
    from hkfs.mount.access import permitted
    f, d, none = stat.S_IFREG, stat.S_IFDIR, frozenset[int]()
    assert permitted(f | 0o644, 5, 5, 0, none, os.R_OK | os.W_OK) and not permitted(f | 0o644, 5, 5, 0, none, os.X_OK)
    assert permitted(f | 0o001, 5, 5, 0, none, os.X_OK) and permitted(d, 5, 5, 0, none, os.X_OK)
    assert permitted(f | 0o600, 7, 8, 7, none, os.R_OK | os.W_OK) and not permitted(f | 0o600, 7, 8, 7, none, os.X_OK)
    assert not permitted(f | 0o077, 7, 8, 7, frozenset({8}), os.R_OK)       # the owner's bits only
    assert permitted(f | 0o040, 7, 8, 9, frozenset({8}), os.R_OK) and not permitted(f | 0o040, 7, 8, 9, none, os.R_OK)
    assert permitted(f | 0o004, 7, 8, 9, none, os.R_OK) and not permitted(f | 0o006, 7, 8, 9, none, os.R_OK | os.X_OK)


from test_second_user import second_uid  # noqa: E402,F401 - the session fixture (useradd)
