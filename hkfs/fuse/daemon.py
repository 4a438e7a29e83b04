"""Mount and unmount: the store lock, backgrounding, the daemon's log and pid file.

`mount()` checks what it can before forking (FUSE present, mount point a free
directory), then forks a daemon that opens and locks the store, mounts, and
reports "ready" (from Operations.init, once the kernel talks to it) or the
reason it failed through a pipe; the caller returns only then. The daemon
logs to STORE/daemon.log (the tests fail on ERROR lines there) and writes its
pid to STORE/daemon.pid so `umount()` can wait until it has finished writing.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..core.errors import HKError, StoreLocked
from .mountinfo import PID_NAME, SUBTYPE, find_mount, fsname_for

__all__ = ["MountError", "mount", "umount", "run_daemon", "parse_options", "check_fuse",
           "check_mountpoint", "clear_dead_mount", "LOG_NAME", "PID_NAME"]

log = logging.getLogger(__name__)

LOG_NAME = "daemon.log"
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# Control characters a message may carry (file names may hold any byte but / and NUL), as escapes.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f]} | {0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t"}


class OneLineFormatter(logging.Formatter):
    """Each record's message on one line: a file named "x\\n<time> <pid> ERROR ..." (stress-ng's
    filename stressor makes such names) must not write a line of its own into daemon.log, which
    people and the tests read line by line. Tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)


# Kernel caches off until the daemon knows it can drop them on every change
# (hkfs.fuse.kernel_cache turns them on from libfuse's init); with them off a change by
# any process is visible to the very next command at the cost in docs/bench/mount.md.
DEFAULT_OPTIONS: dict[str, object] = {
    "entry_timeout": 0,
    "attr_timeout": 0,
    "negative_timeout": 0,
    "use_ino": True,
    # libfuse hides a file removed while open by a rename to .fuse_hidden*, which the daemon
    # takes as the removal itself (HKOperations._hide): with hard_remove, libfuse would have
    # no path left for it and fstat would fail with ESTALE.
    "hard_remove": False,
    "big_writes": True,
    "max_write": 131072,
    "max_read": 131072,
}


# Given by the user, these timeouts are kept as they are (kernel caches not managed).
USER_TIMEOUTS = ("entry_timeout", "attr_timeout")

# libfuse 3 refuses these (big writes are always on; max_write and max_read are negotiated in init).
LIBFUSE2_ONLY = ("big_writes", "max_write", "max_read")

# libfuse 3.14's fuse_main_real hands the idle-thread default (UINT_MAX) to the max-threads
# setter, which logs "Ignoring invalid max threads value 4294967295" on every mount (libfuse
# issue 1003) and keeps its default of 10 threads. Naming that same 10 says nothing new.
LIBFUSE3_ONLY: dict[str, object] = {"max_idle_threads": 10}


def _choose_libfuse() -> None:
    """libfuse 3 unless the user named a library: READDIRPLUS and cache invalidation need it.

    mfusepy loads the library named by FUSE_LIBRARY_PATH / FUSE_LIBRARY_NAME, else
    libfuse 2 when both are installed."""
    if os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME"):
        return
    if ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"


def _libfuse_major() -> int:
    """2 or 3: which libfuse mfusepy loaded (FUSE_LIBRARY_NAME / FUSE_LIBRARY_PATH pick it)."""
    _choose_libfuse()
    import mfusepy  # only in the daemon: the CLI need not load libfuse
    return int(mfusepy.fuse_version_major)


class MountError(HKError):
    """A mount or unmount that cannot be done; the message is the one line the user sees."""


def parse_options(text: str | None) -> dict[str, object]:
    """'allow_other,default_permissions,max_write=65536' -> {'allow_other': True, ...}."""
    out: dict[str, object] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        out[key] = value if eq else True
    return out


def fusermount() -> str | None:
    """The fusermount binary (libfuse 2's, else fuse3's; both unmount any FUSE mount)."""
    return shutil.which("fusermount") or shutil.which("fusermount3")


def check_fuse() -> None:
    """MountError unless /dev/fuse, fusermount and libfuse are all present."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is unavailable: /dev/fuse does not exist (load the fuse module)")
    if fusermount() is None:
        raise MountError("FUSE is unavailable: no fusermount in PATH (install fuse3)")
    if not (os.environ.get("FUSE_LIBRARY_PATH") or ctypes.util.find_library("fuse")
            or ctypes.util.find_library("fuse3")):
        raise MountError("FUSE is unavailable: libfuse not found (install libfuse2 or libfuse3-3)")


def check_mountpoint(mountpoint: Path, *, nonempty: bool = False) -> None:
    """MountError unless the mount point is an existing directory that nothing is mounted on.

    A non-empty one is refused too (its files would be hidden while mounted) unless
    `nonempty` (`-o nonempty`, which libfuse 2 knew and libfuse 3 dropped)."""
    if not mountpoint.exists():
        raise MountError(f"mount point {mountpoint} does not exist")
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mount point {mountpoint} is busy: something is already mounted there")
    if not nonempty:
        with os.scandir(mountpoint) as it:
            if next(it, None) is not None:
                raise MountError(f"mount point {mountpoint} is not empty (-o nonempty mounts over its files)")


def clear_dead_mount(mountpoint: str | os.PathLike[str]) -> str | None:
    """Detach an hkfs mount whose daemon is gone (killed: every access fails with ENOTCONN).

    Returns what was done, for the user, or None when there is no dead hkfs mount there.
    A lazy unmount (fusermount -u -z): processes still inside it keep failing until they leave."""
    mnt = Path(os.path.abspath(mountpoint))
    found = find_mount(mnt)
    if found is None or found[0] != mnt:
        return None
    pid = None
    with contextlib.suppress(OSError, ValueError):
        pid = int((found[1] / PID_NAME).read_text().strip())
    if pid is not None and _alive(pid):
        return None            # its daemon runs (a busy one must not be asked: it may be slow)
    try:
        os.statvfs(mnt)        # always asks the daemon (stat may be answered from the kernel's cache)
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
            return None
    fm = fusermount()
    if fm is None:
        raise MountError(f"{mnt}: its daemon is gone, and there is no fusermount to detach it (install fuse3)")
    proc = subprocess.run([fm, "-u", "-z", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["fusermount failed"])[-1]
        raise MountError(f"{mnt}: its daemon is gone, and it cannot be detached: {why}")
    log.info("detached the dead mount %s (store %s): its daemon had stopped", mnt, found[1])
    return f"{mnt} was a dead mount (its daemon had stopped): detached it (lazy unmount)"


def make_private(store: Path) -> None:
    """The store directory 0700 and its catalog 0600: the catalog holds every name, mode and
    owner of every file, and entities/ every file's bytes, whatever the mount's permissions say.
    Only a store the daemon's user owns is changed."""
    for path, mode in ((store, 0o700), (store / "catalog.sqlite", 0o600),
                       (store / "catalog.sqlite-wal", 0o600), (store / "catalog.sqlite-shm", 0o600)):
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
                os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
                log.info("made %s private (mode %o)", path, stat.S_IMODE(st.st_mode) & mode)


def _lock_holder(store: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int((store / PID_NAME).read_text().strip())})"
    return ""


def _probe_lock(store: Path) -> None:
    """Fail early when another daemon holds STORE/lock (the daemon takes the lock for real)."""
    lock = store / "lock"
    if not lock.exists():
        return
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise MountError(f"store {store} is locked by another daemon{_lock_holder(store)}") from None
    finally:
        os.close(fd)


def _setup_daemon_logging(store: Path, *, to_stderr: bool, level: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fh = logging.FileHandler(store / LOG_NAME, encoding="utf-8")
    fh.setFormatter(OneLineFormatter(LOG_FORMAT))
    root.addHandler(fh)
    if to_stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(sh)
    root.setLevel(level)
    logging.captureWarnings(True)


def fuse_options(store: Path, user_options: dict[str, object]) -> dict[str, object]:
    opts = dict(DEFAULT_OPTIONS)
    fuse3 = _libfuse_major() >= 3
    if fuse3:
        for key in LIBFUSE2_ONLY:
            opts.pop(key, None)
        opts.update(LIBFUSE3_ONLY)
    opts.update(user_options)
    if opts.get("allow_other") and not opts.get("default_permissions"):
        # the daemon checks no permissions itself: other users let in must be checked by the kernel
        opts["default_permissions"] = True
        log.info("allow_other: default_permissions turned on (the kernel checks every user's access)")
    if fuse3:
        opts.pop("nonempty", None)    # checked by check_mountpoint; libfuse 3 mounts anyway
    opts["fsname"] = fsname_for(store)
    opts["subtype"] = SUBTYPE
    return opts


def run_daemon(store: Path, mountpoint: Path, user_options: dict[str, object], *,
               ready: Callable[[str], None] | None = None, debug: bool = False) -> int:
    """Open and lock the store, mount, serve until unmounted; returns the exit status.

    `ready("ok")` is called once the kernel has initialised the file system,
    `ready("error: ...")` when it could not be mounted.
    """
    # The store before FUSE: a locked store fails without touching the mount point.
    from ..core.store import Store
    from .native_memory import bound

    report = ready or (lambda _msg: None)
    bound()       # SQLite's caches and malloc's arenas, before any thread starts
    try:
        st = Store.open(store, create=True)
    except HKError as exc:
        report(f"error: cannot open store {store}: {exc}")
        return 1
    except sqlite3.DatabaseError as exc:
        report(f"error: cannot open store {store}: its catalog is damaged ({exc}); "
               f"see hk fsck, or restore {store / 'catalog.sqlite'} from a backup")
        log.error("cannot open the catalog: %s", exc)
        return 1
    except OSError as exc:
        report(f"error: cannot open store {store}: {exc.strerror or exc}")
        return 1
    try:
        st.lock()
    except StoreLocked:
        st.close()
        report(f"error: store {store} is locked by another daemon{_lock_holder(store)}")
        return 1
    make_private(store)
    pid_file = store / PID_NAME
    if pid_file.exists():
        # We hold the lock, so the daemon that wrote it is gone without cleaning up: files it
        # was writing may be longer than the catalog says (the mount lists the catalog's size).
        from ..core.fsck import repair_sizes
        fixed = repair_sizes(st)
        log.warning("the last daemon did not stop cleanly: %d file size(s) recorded from their bytes%s",
                    len(fixed), "" if not fixed else " (" + "; ".join(fixed[:5]) + ")")
    pid_file.write_text(f"{os.getpid()}\n")
    status = 0
    try:
        options = fuse_options(store, user_options)   # picks the libfuse before mfusepy loads one
        from .operations import serve  # the adapter: imports mfusepy
        log.info("mounting %s on %s (pid %d)", store, mountpoint, os.getpid())
        serve(st, mountpoint, options, on_ready=lambda: report("ok"),
              debug=debug, keep_timeouts=any(k in user_options for k in USER_TIMEOUTS))
        log.info("unmounted %s", mountpoint)
    except RuntimeError as exc:
        # libfuse printed the reason on stderr (our log); hand its last line to the user.
        status = 1
        report(f"error: cannot mount on {mountpoint}: {_last_fuse_line(store) or exc}")
        log.warning("mount failed: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            pid_file.unlink()
        st.close()
    return status


def _last_fuse_line(store: Path, pid: int | None = None) -> str:
    """The first complaint libfuse wrote (to the daemon's stderr, the log) since daemon `pid`
    (default: this process) started."""
    with contextlib.suppress(OSError):
        lines = (store / LOG_NAME).read_text(errors="replace").splitlines()
        me = os.getpid() if pid is None else pid
        start = max((i for i, ln in enumerate(lines) if f"(pid {me})" in ln), default=0)
        for line in lines[start:]:
            if line.startswith(("fuse:", "fusermount")):
                return line
    return ""


def mount(store: str | os.PathLike[str], mountpoint: str | os.PathLike[str], *,
          options: dict[str, object] | None = None, foreground: bool = False,
          debug: bool = False, timeout: float = 30.0) -> int:
    """Mount `store` (created empty when missing) on `mountpoint`.

    In the background (default) returns the daemon's pid once the mount is
    ready; in the foreground serves until unmounted and returns the exit status.
    """
    store_p = Path(os.path.abspath(store))
    mnt = Path(os.path.abspath(mountpoint))
    check_fuse()
    opts = dict(options or {})
    check_mountpoint(mnt, nonempty=bool(opts.get("nonempty")))
    if store_p.exists() and not store_p.is_dir():
        raise MountError(f"store {store_p} is not a directory")
    store_p.mkdir(parents=True, exist_ok=True)
    _probe_lock(store_p)
    if foreground:
        _setup_daemon_logging(store_p, to_stderr=True, level=logging.DEBUG if debug else logging.INFO)
        return run_daemon(store_p, mnt, opts, debug=debug)

    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(rfd)
        code = 1
        try:
            # Its own process group (terminal signals do not reach it) but the caller's
            # session: with the kernel's autogroup scheduling a new session would be a
            # scheduling group of its own, and every request's round trip between the
            # user's command and the daemon then waits behind other sessions under load
            # (measured 3-5x fewer stat/s on a busy machine).
            os.setpgid(0, 0)
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDWR)
            logfd = os.open(store_p / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(null, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)   # libfuse writes its complaints to stderr: keep them in the log
            os.close(null)
            os.close(logfd)
            _setup_daemon_logging(store_p, to_stderr=False,
                                  level=logging.DEBUG if debug else logging.INFO)
            sent = False

            def ready(msg: str) -> None:
                nonlocal sent
                if not sent:
                    sent = True
                    with contextlib.suppress(OSError):
                        os.write(wfd, msg.encode("utf-8", "replace") + b"\n")
                        os.close(wfd)

            code = run_daemon(store_p, mnt, opts, ready=ready, debug=debug)
            if not sent:
                ready("error: the daemon stopped before the mount was ready")
        except BaseException:  # noqa: BLE001 - the daemon must never return into the caller's code
            logging.getLogger(__name__).exception("daemon failed")
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(wfd)
    msg = _read_report(rfd, timeout)
    if msg != "ok":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not msg:
            status = os.waitpid(pid, os.WNOHANG)[0] if _alive(pid) is False else 0
            msg = (f"the daemon stopped before the mount was ready ({_last_error(store_p, pid)})"
                   if status or not _alive(pid) else
                   f"the daemon did not report within {timeout:.0f}s; see {store_p / LOG_NAME}")
        raise MountError(msg.removeprefix("error: "))
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if not _alive(pid):     # libfuse gave up after init (e.g. options it accepted, then refused)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            why = _last_fuse_line(store_p, pid) or f"the daemon exited; see {store_p / LOG_NAME}"
            raise MountError(f"cannot mount on {mnt}: {why}")
        if time.monotonic() > deadline:
            raise MountError(f"{mnt} is not mounted after {timeout:.0f}s; see {store_p / LOG_NAME}")
        time.sleep(0.01)
    return pid


def _last_error(store: Path, pid: int) -> str:
    """The last line of daemon `pid`'s traceback or ERROR in the log (the cause), else where to look."""
    with contextlib.suppress(OSError):
        lines = (store / LOG_NAME).read_text(errors="replace").splitlines()
        start = max((i for i, ln in enumerate(lines) if f" {pid} " in ln), default=len(lines))
        tail = [ln for ln in lines[start:] if ln.strip()]
        if tail:
            return tail[-1].strip()
    return f"see {store / LOG_NAME}"


def _read_report(fd: int, timeout: float) -> str:
    import select
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(fd)
    return buf.decode("utf-8", "replace").strip()


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie nobody reaps counts as finished)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def umount(mountpoint: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
    """Unmount an hkfs mount and wait until its daemon has finished writing and exited."""
    mnt = Path(os.path.abspath(mountpoint))
    found = find_mount(mnt)
    if found is None or found[0] != mnt:
        raise MountError(f"{mnt} is not an hkfs mount point")
    store = found[1]
    pid = None
    with contextlib.suppress(OSError, ValueError):
        pid = int((store / PID_NAME).read_text().strip())
    fm = fusermount()
    if fm is None:
        raise MountError("no fusermount in PATH (install fuse3)")
    proc = subprocess.run([fm, "-u", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["fusermount failed"])[-1]
        raise MountError(f"cannot unmount {mnt}: {why}")
    deadline = time.monotonic() + timeout
    while pid is not None and _alive(pid):
        if time.monotonic() > deadline:
            raise MountError(f"unmounted {mnt}, but daemon pid {pid} is still running after {timeout:.0f}s")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
