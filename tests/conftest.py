"""Shared fixtures. `mount` mounts a real hkfs FUSE file system on tmp_path.

The daemon runs as `hk mount -f` in a subprocess. The fixture polls
os.path.ismount, fails fast if the daemon died, always unmounts (fusermount -u,
then terminate, then kill) even when the test failed, checks that nothing is
left in /proc/mounts, and fails the test when STORE/daemon.log holds an
unexpected ERROR, CRITICAL or Traceback line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, settings

# Property tests must not fail on timing: on a loaded 2-core CI box one example can take more
# than Hypothesis' 200 ms deadline (reported as a failure, or as "Unreliable test timings" when
# the replay is fast) or trip the too_slow health check. The default is Hypothesis' own "ci"
# profile (no deadline, too_slow off, derandomized: the same examples on every run, so a CI run
# cannot fail on an example no earlier run saw); HYPOTHESIS_PROFILE=explore draws fresh
# random examples, for hunting bugs locally.
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HK_CMD = [sys.executable, "-c", "from hkfs.cli.main import main; main()"]
MOUNT_TIMEOUT = 60.0        # generous: the daemon's start-up (imports) is slow on a loaded 2-core CI box


def daemon_loads_libfuse3() -> bool:
    """Whether a daemon started from this environment loads libfuse 3 (hkfs.fuse.daemon's choice:
    libfuse 3 unless FUSE_LIBRARY_NAME / FUSE_LIBRARY_PATH name another library)."""
    import ctypes.util
    name = os.environ.get("FUSE_LIBRARY_NAME")
    path = os.environ.get("FUSE_LIBRARY_PATH")
    if path:
        return "fuse3" in os.path.basename(path)
    if name:
        return name == "fuse3"
    return ctypes.util.find_library("fuse3") is not None


def fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and bool(shutil.which("fusermount") or shutil.which("fusermount3"))


def _mounted(mnt: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return any(line.split()[1] == str(mnt) for line in f if len(line.split()) > 1)


@dataclass
class Mount:
    """A live mount: `root` is the mount point, `store` the store directory behind it."""

    root: Path
    store: Path
    proc: subprocess.Popen | None = None
    expected_log: list[str] = field(default_factory=list)   # substrings of ERROR lines a test expects

    @property
    def log(self) -> Path:
        return self.store / "daemon.log"

    def run(self, script: str, *, check: bool = True, cwd: Path | None = None,
            timeout: float = 300, env: dict[str, str] | None = None,
            user: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run a bash script (set -euo pipefail) in the mount root; $M is the mount, $S the store,
        `hk` and "$PY" run this checkout's interpreter (never a python3 found on PATH). With check,
        a non-zero exit fails the test with its output."""
        full_env = dict(os.environ, M=str(self.root), S=str(self.store), PY=sys.executable, LC_ALL="C.UTF-8")
        full_env.update(env or {})
        prologue = ("set -euo pipefail\ntrap 'echo \"FAILED line $LINENO: $BASH_COMMAND\" >&2' ERR\n"
                    + _FAILS_WITH +
                    f"hk() {{ {' '.join(_q(a) for a in HK_CMD)} \"$@\"; }}\n")
        cmd = ["bash", "-c", prologue + script]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + cmd
        proc = subprocess.run(cmd, cwd=cwd or self.root, env=full_env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"script failed ({proc.returncode}):\n{script}\n--- stdout\n{proc.stdout}"
                        f"\n--- stderr\n{proc.stderr}\n--- daemon.log tail\n{self.log_tail()}")
        return proc

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no daemon.log)"

    def log_problems(self) -> list[str]:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        bad = [ln for ln in lines if any(k in ln for k in (" ERROR ", " CRITICAL ", "Traceback"))]
        return [ln for ln in bad if not any(e in ln for e in self.expected_log)]


# fails_with MESSAGE CMD...: CMD must fail and say MESSAGE (e.g. its strerror).
# `! cmd` never fails a `set -e` script (bash ignores errexit for a negated command), so
# negative checks use `not cmd` (or `fails_with TEXT cmd`).
_FAILS_WITH = r"""fails_with() { local want=$1 out; shift
  if out=$("$@" 2>&1); then echo "unexpected success: $*" >&2; return 1; fi
  [[ $out == *"$want"* ]] || { echo "wanted '$want' from $*, got: $out" >&2; return 1; }; }
not() { if "$@"; then echo "unexpected success: $*" >&2; return 1; fi; }
"""


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def start_mount(store: Path, mnt: Path, options: str = "") -> Mount:
    mnt.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    cmd = HK_CMD + ["mount", "-f", str(store), str(mnt)] + (["-o", options] if options else [])
    errf = open(store / "daemon.stderr", "wb")   # noqa: SIM115 - lives as long as the daemon
    # Same session and group as pytest: scheduled with the test (autogroups), and a Ctrl-C
    # of the test run also stops the daemon (libfuse unmounts on SIGINT).
    proc = subprocess.Popen(cmd, stdout=errf, stderr=subprocess.STDOUT)
    errf.close()
    m = Mount(mnt, store, proc)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            out = (store / "daemon.stderr").read_bytes().decode(errors="replace")
            pytest.fail(f"hk mount -f exited with {proc.returncode} before mounting:\n{out}")
        if time.monotonic() > deadline:
            stop_mount(m)
            pytest.fail(f"{mnt} not mounted after {MOUNT_TIMEOUT}s:\n{m.log_tail()}")
        time.sleep(0.02)
    return m


def stop_mount(m: Mount) -> None:
    """fusermount -u (retrying while busy), then terminate, then kill; never leaves a mount behind."""
    fm = shutil.which("fusermount") or shutil.which("fusermount3") or "fusermount"
    for _ in range(50):
        if not _mounted(m.root):
            break
        if subprocess.run([fm, "-u", str(m.root)], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    if _mounted(m.root):
        subprocess.run([fm, "-u", "-z", str(m.root)], capture_output=True)
    if m.proc is not None:
        try:
            m.proc.wait(timeout=60)     # a clean shutdown under load; terminate/kill only if stuck
        except subprocess.TimeoutExpired:
            m.proc.terminate()
            try:
                m.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
    assert not _mounted(m.root), f"{m.root} still mounted"


MountFactory = Callable[..., Mount]


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    """mount_factory(options='', store=None, fill=None) -> Mount; all unmounted at the end."""
    if not fuse_usable():
        pytest.skip("FUSE is not available (/dev/fuse or fusermount missing)")
    mounts: list[Mount] = []
    counter = [0]

    def make(options: str = "", store: Path | None = None,
             fill: Callable[[Path], None] | None = None) -> Mount:
        counter[0] += 1
        store = store or tmp_path / f"store{counter[0]}"
        if fill is not None:
            fill(store)
        m = start_mount(store, tmp_path / f"mnt{counter[0]}", options)
        mounts.append(m)
        return m

    failures: list[str] = []
    try:
        yield make
    finally:
        for m in mounts:
            try:
                stop_mount(m)
            except AssertionError as exc:
                failures.append(str(exc))
        for m in mounts:
            problems = m.log_problems()
            if problems:
                failures.append(f"{m.log} has unexpected errors:\n" + "\n".join(problems[:20]))
    if failures:
        pytest.fail("\n".join(failures))


@pytest.fixture
def mount(mount_factory: MountFactory) -> Mount:
    """A fresh empty store mounted on tmp_path/mnt1."""
    return mount_factory()


@pytest.fixture
def demo_mount(mount_factory: MountFactory) -> Mount:
    """The demo store (hkfs.demo.data) mounted."""
    def fill(store: Path) -> None:
        from hkfs.core.store import Store
        from hkfs.demo.data import fill_demo
        with Store.open(store) as st:
            fill_demo(st)
    return mount_factory(fill=fill)


# ---------------------------------------------------------------- nothing left behind

def _mounts_under(base: Path) -> list[str]:
    prefix = str(base).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f if len(line.split()) > 1]
    return [p for p in points if p.startswith(prefix)]


def _daemons_under(base: Path) -> list[psutil.Process]:
    """hk daemons (`hk mount`, background or -f, and `hk demo`) whose store or mount point is under base."""
    # A path-component prefix: run pytest-21 must not take run pytest-212's daemons for its own
    # (two suites at once on one machine killed each other's mounts: ECONNABORTED).
    prefix = str(base).rstrip("/") + "/"
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if ("mount" in cmd or "demo" in cmd) and any(prefix in a for a in cmd) \
                and any("hkfs" in a for a in cmd) and p.pid != os.getpid():
            found.append(p)
    return found


@pytest.fixture(autouse=True)
def _no_mount_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After every test (its own fixtures already torn down): no FUSE mount under this run's
    temporary directory. One left is detached (fusermount -u -z) and fails the test that left it."""
    yield
    left = _mounts_under(tmp_path_factory.getbasetemp())
    if left:
        fm = shutil.which("fusermount") or shutil.which("fusermount3") or "fusermount"
        for p in left:
            subprocess.run([fm, "-u", "-z", p], capture_output=True)
        pytest.fail("test left FUSE mounts behind (now detached): " + ", ".join(left))


@pytest.fixture(autouse=True, scope="session")
def _no_daemon_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the run no hk daemon of this run is alive: each gets up to 60 s to finish
    its shutdown, then is killed, and the run errors with their command lines."""
    yield
    base = tmp_path_factory.getbasetemp()
    deadline = time.monotonic() + 60
    while (alive := _daemons_under(base)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive:
        cmds = []
        for p in alive:
            try:
                cmds.append(" ".join(p.cmdline()))
                p.kill()
            except psutil.Error:
                pass
        if cmds:
            pytest.fail("hk daemons left running after the tests (killed): " + "; ".join(cmds))
