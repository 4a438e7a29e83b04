#!/usr/bin/env python3
"""Benchmark the hkfs mount against the backing disk, in one run.

Measures, through the mount and directly on the disk that holds the store:
sequential write and read of a large file (MB/s), small-file create / stat /
unlink (ops/s), repeated stat of one file (ops/s), and `ls -l` of a view
holding many files (vs. `ls -l` of a directory holding as many files).
The mount runs with the kernel caches off (entry/attr/negative timeouts 0,
the default); the stat and ls rows are repeated with 1 s timeouts to show
what the caches would buy. Prints a table and writes docs/bench/mount.md.

    python scripts/bench_mount.py                 # 1 GiB file, 100k-file view
    python scripts/bench_mount.py --quick         # 128 MiB, 10k files: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hkfs.daemon import mount, umount  # noqa: E402
from hkfs.store import Store  # noqa: E402

CHUNK = 1 << 20


def drop_caches() -> bool:
    """Drop the page cache so reads come from the disk (root only); False when not possible."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def write_big(path: Path, mib: int) -> float:
    buf = os.urandom(CHUNK)

    def go() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(mib):
                os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)
    return mib / timed(go)


def read_big(path: Path, mib: int) -> float:
    buf = bytearray(CHUNK)      # one buffer, as dd uses: no 1 MiB allocation per read

    def go() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while os.readv(fd, [buf]):
                pass
        finally:
            os.close(fd)
    return mib / timed(go)


def small_files(d: Path, n: int) -> tuple[float, float, float]:
    d.mkdir(exist_ok=True)
    names = [d / f"s{i:06d}" for i in range(n)]
    data = b"x" * 100

    def create() -> None:
        for p in names:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)

    def stat_all() -> None:
        for p in names:
            os.stat(p)

    def unlink() -> None:
        for p in names:
            os.unlink(p)
    return n / timed(create), n / timed(stat_all), n / timed(unlink)


def stat_rate(path: Path, n: int) -> float:
    def go() -> None:
        for _ in range(n):
            os.stat(path)
    return n / timed(go)


def ls_l(d: Path) -> float:
    # from inside the view, as a user would (cd ~/hk/@/photo && ls -l): one lookup per file
    return timed(lambda: subprocess.run(["ls", "-l"], cwd=d, stdout=subprocess.DEVNULL, check=True))


def daemon_cpu(store: Path) -> float:
    """CPU seconds (user + system) the mount's daemon has used so far: unlike wall time,
    barely affected by other jobs on the machine."""
    pid = int((store / "daemon.pid").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def view_rows(store: Path, mnt: Path, vdir: Path, args: argparse.Namespace, note: str,
              suffix: str = "") -> list[tuple[str, str, float, float, str]]:
    """stat of one file in the view, and ls -l of the whole view, on the current mount."""
    c0 = daemon_cpu(store)
    s_m = stat_rate(mnt / "@" / "bench" / "f000001", args.stats)
    c1 = daemon_cpu(store)
    l_m = ls_l(mnt / "@" / "bench")
    c2 = daemon_cpu(store)
    cpu_stat = (c1 - c0) / args.stats * 1e6
    cpu_ls = (c2 - c1) / args.view_files * 1e6
    return [
        ("stat one file in a view" + suffix, "ops/s", s_m, stat_rate(vdir / "f000001", args.stats),
         f"{note}; daemon CPU {cpu_stat:.0f} us/stat"),
        (f"ls -l of a {args.view_files}-file view" + suffix, "s", l_m, ls_l(vdir),
         f"{note}; daemon CPU {cpu_ls:.0f} us/file"),
    ]


# The floor: a do-nothing mfusepy file system answering the same stat from constants, so the
# difference to the hkfs row is what hkfs itself costs per call.
NULL_FS = """
import stat, sys
from mfusepy import FUSE, FuseOSError, Operations
class Null(Operations):
    use_ns = True
    def getattr(self, path, fh=None):
        if path in ("/", "/@", "/@/bench"):
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_ino": len(path) + 1}
        if path == "/@/bench/f000001":
            return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": 1, "st_ino": 9}
        raise FuseOSError(2)
FUSE(Null(), sys.argv[1], foreground=True, entry_timeout=0, attr_timeout=0, negative_timeout=0, use_ino=True)
"""


def null_fs_row(mnt: Path, vdir: Path, args: argparse.Namespace) -> tuple[str, str, float, float, str]:
    proc = subprocess.Popen([sys.executable, "-c", NULL_FS, str(mnt)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the do-nothing file system did not mount")
            time.sleep(0.05)
        stat_of = mnt / "@" / "bench" / "f000001"
        def fields() -> list[str]:
            return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        c0 = sum(int(x) for x in fields()[11:13])
        rate = stat_rate(stat_of, args.stats)
        cpu = (sum(int(x) for x in fields()[11:13]) - c0) / os.sysconf("SC_CLK_TCK") / args.stats * 1e6
        return ("stat one file, do-nothing mfusepy file system", "ops/s", rate,
                stat_rate(vdir / "f000001", args.stats), f"the floor: timeouts 0; daemon CPU {cpu:.0f} us/stat")
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], stderr=subprocess.DEVNULL)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="work directory on the disk to test (default: a temp dir "
                    "under /var/tmp); it is removed afterwards")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=2000, help="small files to create/stat/unlink")
    ap.add_argument("--stats", type=int, default=20000, help="repeated stat calls")
    ap.add_argument("--view-files", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="128 MiB and 10k files")
    ap.add_argument("--no-fuse3", dest="fuse3", action="store_false",
                    help="skip the libfuse 3 rows (needs libfuse3-3)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "mount.md"))
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.view_files, args.small, args.stats = 128, 10_000, 1000, 5000

    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="hkfs-bench-", dir=args.dir or "/var/tmp"))
    store, mnt, disk = base / "store", base / "mnt", base / "disk"
    mnt.mkdir()
    disk.mkdir()
    rows: list[tuple[str, str, float, float, str]] = []   # what, unit, mount, disk, note
    cold = drop_caches()
    try:
        # the view: N tagged entities made straight in the store (as an import would)
        with Store.open(store) as st:
            ns = st.namespace_id(os.getuid())
            st.mkkw(ns, ("bench",))
            t_bulk = timed(lambda: st.bulk_create(ns, [(f"f{i:06d}", [("bench",)])
                                                        for i in range(args.view_files)]))
        vdir = disk / "view"
        vdir.mkdir()
        for i in range(args.view_files):
            (vdir / f"f{i:06d}").touch()

        mount(store, mnt)
        try:
            (mnt / "d").mkdir()
            (disk / "d").mkdir()
            w_m = write_big(mnt / "d" / "big", args.size_mib)
            w_d = write_big(disk / "d" / "big", args.size_mib)
            drop_caches()
            r_m = read_big(mnt / "d" / "big", args.size_mib)
            drop_caches()
            r_d = read_big(disk / "d" / "big", args.size_mib)
            note = "cold cache" if cold else "warm page cache (not root)"
            rows.append((f"write {args.size_mib} MiB + fsync", "MB/s", w_m, w_d, ""))
            rows.append((f"read {args.size_mib} MiB", "MB/s", r_m, r_d, note))
            os.unlink(mnt / "d" / "big")
            os.unlink(disk / "d" / "big")
            c_m, s_m, u_m = small_files(mnt / "d" / "small", args.small)
            c_d, s_d, u_d = small_files(disk / "d" / "small", args.small)
            rows.append((f"create {args.small} small files", "ops/s", c_m, c_d, "open+write 100 B+close"))
            rows.append((f"stat {args.small} small files", "ops/s", s_m, s_d, ""))
            rows.append((f"unlink {args.small} small files", "ops/s", u_m, u_d, ""))
            (mnt / "d" / "one").write_bytes(b"1")
            (disk / "d" / "one").write_bytes(b"1")
            rows.append(("stat one file (ordinary dir)", "ops/s", stat_rate(mnt / "d" / "one", args.stats),
                         stat_rate(disk / "d" / "one", args.stats), "timeouts 0"))
            rows += view_rows(store, mnt, vdir, args, "timeouts 0")
        finally:
            umount(mnt)
        rows.append(null_fs_row(mnt, vdir, args))
        # The same rows on libfuse 3 (mfusepy loads the library named by FUSE_LIBRARY_NAME).
        if args.fuse3:
            os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
            try:
                mount(store, mnt)
            finally:
                del os.environ["FUSE_LIBRARY_NAME"]
            try:
                rows += view_rows(store, mnt, vdir, args, "timeouts 0, libfuse 3", suffix=", libfuse 3")
            finally:
                umount(mnt)
        # With the kernel caches on for 1 ms and for 1 s: what timeouts 0 cost.
        for t, label in ((0.001, "1 ms"), (1, "1 s")):
            mount(store, mnt, options={"entry_timeout": t, "attr_timeout": t, "negative_timeout": t})
            try:
                rows += view_rows(store, mnt, vdir, args, f"entry/attr_timeout={t}", suffix=f", {label} caches")
            finally:
                umount(mnt)
    finally:
        with contextlib.suppress(OSError):
            if os.path.ismount(mnt):
                subprocess.run(["fusermount", "-u", "-z", str(mnt)])
        shutil.rmtree(base, ignore_errors=True)

    args.load = (load_before, os.getloadavg()[0])
    lines = report(rows, args, t_bulk)
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out}")


def report(rows: list[tuple[str, str, float, float, str]], args: argparse.Namespace, t_bulk: float) -> list[str]:
    def fmt(v: float, unit: str) -> str:
        return f"{v:.2f}" if unit == "s" else f"{v:,.0f}"
    out = [
        "# Mount vs. backing disk",
        "",
        "Made by `python scripts/bench_mount.py" + (" --quick" if args.quick else "") + "` on "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, kernel {platform.release()}. The mount and the disk rows "
        "run in the same process on the same file system; the mount has the kernel's entry, "
        "attribute and negative caches off (timeouts 0) unless the row says otherwise. "
        f"Load average {args.load[0]:.1f} before, {args.load[1]:.1f} after (other jobs share "
        "the machine; repeated runs vary by up to 2x).",
        "",
        "| work | unit | mount | disk | mount/disk | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for what, unit, m, d, note in rows:
        ratio = (d / m) if unit == "s" else (m / d)
        out.append(f"| {what} | {unit} | {fmt(m, unit)} | {fmt(d, unit)} | {ratio:.2f} | {note} |")
    out += [
        "",
        f"mount/disk is the mount's share of the disk's speed (for times: disk time / mount time). "
        f"Setting up the {args.view_files}-file view with `Store.bulk_create` took {t_bulk:.1f} s.",
        "",
        "With timeouts 0 the kernel asks the daemon for every path component on every call: a "
        "`stat` of `@/bench/f000001` is 4 requests (3 LOOKUPs and a GETATTR) and `ls -l` is 2 "
        "per file (LOOKUP, GETATTR; counted with strace on the daemon's /dev/fuse replies). "
        "The do-nothing row is the same `stat` answered from constants by a 12-line mfusepy file "
        "system: the floor that mfusepy, libfuse and the kernel set, whatever hkfs does. "
        "Daemon CPU is user + system time of the daemon process per operation, which other "
        "jobs on the machine affect far less than the wall-clock rates.",
        "",
        "Goals (issue 3): large-file read and write >= 50% of the disk; `stat` >= 20k/s through "
        "the mount; `ls -l` of a 100k-file view <= 2 s. See docs/mount.md (Speed) for what the "
        "numbers mean and which goals are met.",
    ]
    return out


if __name__ == "__main__":
    main()
