#!/usr/bin/env python3
"""Benchmark the hkfs mount against the backing disk, in one run.

Measures, through the default mount (what `hk mount` gives: libfuse 3, kernel
entry/attr caches on and dropped by the daemon on every change) and directly on
the disk that holds the store: sequential write and cold read of a large file
(MB/s), small-file create / stat / unlink (ops/s), repeated stat of one file in
a view and in an ordinary directory, `ls -l` of a view holding many files (the
first listing after mount, and again) and plain `ls` of it. Comparison rows: the
previous default (libfuse 2, caches off), a do-nothing mfusepy file system (the
floor with caches off), and the worst case for the invalidation (a change made
through another path before every stat). Prints a table and writes
docs/bench/mount.md.

    python scripts/bench_mount.py                 # 1 GiB file, 100k-file view (~5 min)
    python scripts/bench_mount.py --quick         # 128 MiB, 10k files: a smoke run
    python scripts/bench_mount.py --only view     # just the stat / ls rows
    python scripts/bench_mount.py --only read --read-ahead-kb 1024   # cold-read experiments
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from hkfs.core.store import ENTITIES, Store  # noqa: E402
from hkfs.fuse.daemon import LOG_NAME, mount, parse_options, umount  # noqa: E402

CHUNK = 1 << 20
Row = tuple[str, str, float, float, str]     # what, unit, mount, disk, note


def drop_caches() -> bool:
    """Drop the page cache, dentries and inodes so reads come from the disk (root only)."""
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


def small_files(d: Path, n: int, pid: int | None = None) -> list[tuple[float, float]]:
    """create, stat, stat again, unlink of n small files: [(ops/s, daemon CPU us/op or nan)]."""
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
    out = []
    for fn in (create, stat_all, stat_all, unlink):
        c0 = proc_cpu(pid) if pid else 0.0
        rate = n / timed(fn)
        out.append((rate, (proc_cpu(pid) - c0) / n * 1e6 if pid else float("nan")))
    return out


def stat_rate(path: Path, n: int) -> float:
    def go() -> None:
        for _ in range(n):
            os.stat(path)
    return n / timed(go)


def changed_stat_rate(path: Path, alias: Path, n: int) -> tuple[float, float, int]:
    """n times: utime through `alias`, then stat `path` (the same file). Returns stat/s (the
    stats' time only), pairs/s, and how many stats missed the new mtime (must be 0)."""
    stale = 0
    in_stat = 0.0
    base = 1_000_000_000 * 1_000_000_000
    clock = time.perf_counter

    def go() -> None:
        nonlocal stale, in_stat
        for i in range(n):
            t = base + i * 1000
            os.utime(alias, ns=(t, t))
            t0 = clock()
            st = os.stat(path)
            in_stat += clock() - t0
            if st.st_mtime_ns != t:
                stale += 1
    total = timed(go)
    return n / in_stat, n / total, stale


def ls(d: Path, *flags: str) -> float:
    # from inside the view, as a user would (cd ~/hk/@/photo && ls -l)
    return timed(lambda: subprocess.run(["ls", *flags], cwd=d, stdout=subprocess.DEVNULL, check=True))


def ls_cpu(d: Path, *flags: str) -> tuple[float, float]:
    """ls's wall time and its own CPU seconds (user + system: the kernel's work on the listing
    it receives is done in ls's system time), which the daemon's CPU does not include."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = ls(d, *flags)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return t, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def find(d: Path) -> float:
    """`find` in a view (its files and the keyword directories under it, two levels)."""
    return timed(lambda: subprocess.run(["find", ".", "-maxdepth", "2"], cwd=d, stdout=subprocess.DEVNULL,
                                        check=True))


def daemon_pid(store: Path) -> int:
    return int((store / "daemon.pid").read_text().split()[0])


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far: unlike wall time,
    barely affected by other jobs on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB: its resident memory now, and the peak so far."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            got[key] = int(val.split()[0]) / 1024
    return got.get("VmRSS", 0.0), got.get("VmHWM", 0.0)


class Cpu:
    """Daemon CPU per operation of the work done inside `with Cpu(pid, n) as c:` (c.us after),
    its CPU seconds in all (c.s) and its memory after (c.mem: 'RSS x MiB, peak y MiB')."""

    def __init__(self, pid: int, n: int) -> None:
        self.pid, self.n, self.us, self.s, self.mem = pid, n, 0.0, 0.0, ""

    def __enter__(self) -> Cpu:
        self.c0 = proc_cpu(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = proc_cpu(self.pid) - self.c0
        self.us = self.s / self.n * 1e6
        rss, hwm = proc_mem(self.pid)
        self.mem = f"daemon RSS {rss:.0f} MiB, peak {hwm:.0f} MiB"


def mount_info(store: Path, pid: int) -> tuple[str, str]:
    """(which libfuse the daemon loaded, what it logged about the kernel caches)."""
    lib = "?"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            m = re.search(r"/(libfuse3?\.so[.\d]*)$", line)
            if m:
                lib = m.group(1)
                break
    caches = "?"
    lines = (store / LOG_NAME).read_text(errors="replace").splitlines()
    start = max((i for i, ln in enumerate(lines) if f"(pid {pid})" in ln), default=0)
    for line in lines[start:]:
        if "kernel caches on" in line or "stay off" in line:
            caches = line.split(": ", 1)[1] if ": " in line else line
    return lib, caches


def bdi_read_ahead(mnt: Path) -> Path:
    """/sys/class/bdi/MAJOR:MINOR/read_ahead_kb of the mount (the kernel's readahead window)."""
    dev = os.stat(mnt).st_dev
    return Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")


@contextlib.contextmanager
def mounted(store: Path, mnt: Path, *, libfuse: str | None = None,
            options: dict[str, object] | None = None) -> Iterator[int]:
    """Mount (libfuse: FUSE_LIBRARY_NAME for the forked daemon, which inherits our environment)."""
    old = os.environ.get("FUSE_LIBRARY_NAME")
    if libfuse:
        os.environ["FUSE_LIBRARY_NAME"] = libfuse
    try:
        mount(store, mnt, options=options)
    finally:
        if libfuse:
            if old is None:
                del os.environ["FUSE_LIBRARY_NAME"]
            else:
                os.environ["FUSE_LIBRARY_NAME"] = old
    try:
        yield daemon_pid(store)
    finally:
        umount(mnt)


def fmt_range(vals: list[float]) -> str:
    return f"{min(vals):,.0f}-{max(vals):,.0f}" if len(vals) > 1 else ""


def dont_need(path: Path) -> None:
    """Drop one file's pages from the page cache (here: the mount's copy, not the backing file's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_rows(pid: int, store: Path, mnt_file: Path, disk_file: Path, args: argparse.Namespace,
              cold: bool) -> list[Row]:
    """Cold reads, mount and disk alternately, args.read_repeats times each (median, range in the
    note); then the FUSE transport alone: the backing file cached, the mount's pages dropped."""
    r_m: list[float] = []
    r_d: list[float] = []
    cpu: list[float] = []
    gib = args.size_mib / 1024
    for _ in range(args.read_repeats):
        drop_caches()
        c0 = proc_cpu(pid)
        r_m.append(read_big(mnt_file, args.size_mib))
        cpu.append((proc_cpu(pid) - c0) / gib)
        drop_caches()
        r_d.append(read_big(disk_file, args.size_mib))
    note = "cold cache" if cold else "warm page cache (not root)"
    if len(r_m) > 1:
        note += f"; median of {len(r_m)}, mount {fmt_range(r_m)}, disk {fmt_range(r_d)}"
    ra = f"; read_ahead_kb {args.read_ahead_kb_now}" if args.read_ahead_kb_now else ""
    rows: list[Row] = [(f"read {args.size_mib} MiB", "MB/s", statistics.median(r_m), statistics.median(r_d),
                        f"{note}; daemon CPU {statistics.median(cpu):.2f} s/GiB{ra}")]
    size = mnt_file.stat().st_size
    backing = next((p for p in (store / ENTITIES).rglob("*") if p.is_file() and p.stat().st_size == size), None)
    if backing is not None:
        read_big(backing, args.size_mib)        # the backing file into the page cache
        read_big(disk_file, args.size_mib)
        w_m, w_d, cpu = [], [], []
        for _ in range(args.read_repeats):
            dont_need(mnt_file)
            c0 = proc_cpu(pid)
            w_m.append(read_big(mnt_file, args.size_mib))
            cpu.append((proc_cpu(pid) - c0) / gib)
            w_d.append(read_big(disk_file, args.size_mib))
        rows.append((f"read {args.size_mib} MiB, backing file cached", "MB/s", statistics.median(w_m),
                     statistics.median(w_d), f"the FUSE transport alone; median of {len(w_m)}, mount "
                     f"{fmt_range(w_m)}; daemon CPU {statistics.median(cpu):.2f} s/GiB{ra}"))
    return rows


def big_file_rows(pid: int, store: Path, mnt: Path, disk: Path, args: argparse.Namespace,
                  cold: bool) -> list[Row]:
    (mnt / "d").mkdir(exist_ok=True)
    (disk / "d").mkdir(exist_ok=True)
    w_m = write_big(mnt / "d" / "big", args.size_mib)
    w_d = write_big(disk / "d" / "big", args.size_mib)
    rows: list[Row] = [(f"write {args.size_mib} MiB + fsync", "MB/s", w_m, w_d, "")]
    rows += read_rows(pid, store, mnt / "d" / "big", disk / "d" / "big", args, cold)
    os.unlink(mnt / "d" / "big")
    os.unlink(disk / "d" / "big")
    return rows


def view_rows(pid: int, mnt: Path, disk: Path, args: argparse.Namespace, note: str,
              suffix: str = "", cold_ls: bool = True, plain_ls: bool = True) -> list[Row]:
    """ls -l of the view (first after mount, then again), plain ls, stat of a file in the view
    and in an ordinary dir, and stat after a change through an alias, on the current mount."""
    n = args.view_files
    view_m, view_d = mnt / "@" / "bench", disk / "view"
    rows: list[Row] = []
    d_ls = ls(view_d, "-l")
    if cold_ls:
        with Cpu(pid, n) as c:
            t, ls_s = ls_cpu(view_m, "-l")
        rows.append((f"ls -l of a {n}-file view, first after mount" + suffix, "s", t, d_ls,
                     f"{note}; daemon CPU {c.us:.1f} us/file ({c.s:.2f} s); ls CPU {ls_s:.2f} s; {c.mem}"))
    with Cpu(pid, n) as c:
        t, ls_s = ls_cpu(view_m, "-l")
    rows.append((f"ls -l of a {n}-file view" + (", again" if cold_ls else "") + suffix, "s", t, d_ls,
                 f"{note}; daemon CPU {c.us:.1f} us/file ({c.s:.2f} s); ls CPU {ls_s:.2f} s; {c.mem}"))
    if plain_ls:
        with Cpu(pid, n) as c:
            t = ls(view_m)
        rows.append((f"ls of a {n}-file view" + suffix, "s", t, ls(view_d),
                     f"{note}; daemon CPU {c.us:.1f} us/file; {c.mem}"))
        with Cpu(pid, n) as c:
            t = find(view_m)
        rows.append((f"find in a {n}-file view" + suffix, "s", t, find(view_d),
                     f"{note}; daemon CPU {c.us:.1f} us/file; {c.mem}"))
    with Cpu(pid, args.stats) as c:
        s = stat_rate(view_m / "f000001", args.stats)
    rows.append(("stat one file in a view" + suffix, "ops/s", s, stat_rate(view_d / "f000001", args.stats),
                 f"{note}; daemon CPU {c.us:.1f} us/stat"))
    (mnt / "d").mkdir(exist_ok=True)
    (mnt / "d" / "one").write_bytes(b"1")
    (disk / "d").mkdir(exist_ok=True)
    (disk / "d" / "one").write_bytes(b"1")
    with Cpu(pid, args.stats) as c:
        s = stat_rate(mnt / "d" / "one", args.stats)
    rows.append(("stat one file in an ordinary dir" + suffix, "ops/s", s,
                 stat_rate(disk / "d" / "one", args.stats), f"{note}; daemon CPU {c.us:.1f} us/stat"))
    # the invalidation's worst case: every stat follows a change made through another path
    with Cpu(pid, args.pairs) as c:
        s, p, stale = changed_stat_rate(view_m / "f000001", mnt / "@" / "alt" / "f000001", args.pairs)
    s_d, p_d, stale_d = changed_stat_rate(view_d / "f000001", disk / "alt" / "f000001", args.pairs)
    rows.append(("stat of a view file, each after a utime of it via another view" + suffix, "ops/s", s, s_d,
                 f"{note}; stats' time only; pairs/s {p:,.0f} (disk {p_d:,.0f}); stale stats {stale} "
                 f"(disk {stale_d}); daemon CPU {c.us:.0f} us/pair"))
    return rows


def small_rows(pid: int, mnt: Path, disk: Path, args: argparse.Namespace) -> list[Row]:
    m = small_files(mnt / "d" / "small", args.small, pid)
    d = small_files(disk / "d" / "small", args.small)
    n = args.small
    what = (f"create {n} small files", f"stat {n} small files, just created", f"stat {n} small files, again",
            f"unlink {n} small files")
    notes = ("open+write 100 B+close", "a GETATTR each: a write makes the kernel drop that inode's size and times",
             "", "")
    return [(w, "ops/s", m[i][0], d[i][0], (nt + "; " if nt else "") + f"daemon CPU {m[i][1]:.0f} us/op")
            for i, (w, nt) in enumerate(zip(what, notes, strict=True))]


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


def null_fs_row(mnt: Path, disk: Path, args: argparse.Namespace) -> Row:
    env = dict(os.environ, FUSE_LIBRARY_NAME="fuse")
    proc = subprocess.Popen([sys.executable, "-c", NULL_FS, str(mnt)], stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the do-nothing file system did not mount")
            time.sleep(0.05)
        with Cpu(proc.pid, args.stats) as c:
            rate = stat_rate(mnt / "@" / "bench" / "f000001", args.stats)
        return ("stat one file, do-nothing mfusepy file system", "ops/s", rate,
                stat_rate(disk / "view" / "f000001", args.stats),
                f"the floor with caches off: libfuse 2, timeouts 0; daemon CPU {c.us:.0f} us/stat")
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], stderr=subprocess.DEVNULL)
        proc.wait(timeout=30)


def make_view(store: Path, disk: Path, n: int) -> float:
    """N entities tagged `bench` made straight in the store (as an import would), f000001 also
    tagged `alt`; on the disk N files in view/, f000001 hard-linked as alt/f000001."""
    with Store.open(store, create=True) as st:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, ("bench",))
        st.mkkw(ns, ("alt",))
        t = timed(lambda: st.bulk_create(ns, [(f"f{i:06d}", [("bench",), ("alt",)] if i == 1 else [("bench",)])
                                              for i in range(n)]))
    (disk / "view").mkdir()
    for i in range(n):
        (disk / "view" / f"f{i:06d}").touch()
    (disk / "alt").mkdir()
    os.link(disk / "view" / "f000001", disk / "alt" / "f000001")
    return t


def make_big_store(store: Path, n: int, embedded: int) -> float:
    """n files tagged `bench` (Store.bulk_create), the first `embedded` of them (seed 3,
    d=64 normal vectors) with their own embedding: the 1M-file store of issue 12's memory goal."""
    from hkfs.query.embeddings import EMBEDDING_ATTR
    t = time.perf_counter()
    with Store.open(store, create=True) as st:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, ("bench",))
        ids = st.bulk_create(ns, [(f"f{i:07d}", [("bench",)]) for i in range(n)])
        vecs = np.random.default_rng(3).normal(size=(embedded, 64)).astype(np.float32)
        with st.catalog.write():
            for eid, v in zip(ids[:embedded], vecs, strict=True):
                st.set_xattr("file", eid, EMBEDDING_ATTR, v.tobytes())
    return time.perf_counter() - t


def big_store(base: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The --big store and its disk peer (n empty files): made under the run's temp dir, or with
    --big-dir made there once and reused by later runs (building 1M files takes minutes).

    A reused store is the one make_big_store made (the bench only reads it); the query index
    and sources cache the last run's daemon built are removed, so FILE.query reads are first
    reads again, unless --big-index: then the index is built here (in this process, as
    scripts/bench_query.py does) before the first mount and kept, and the daemon opens it.
    args.t_big: the build time (0 when reused, and args.big_reused set)."""
    n = args.big
    root = Path(args.big_dir) if args.big_dir else base
    store, disk = root / f"big-store-{n}-{args.big_embedded}", root / f"big-disk-{n}"
    done = root / f"big-done-{n}-{args.big_embedded}"
    args.big_reused = done.exists()
    if args.big_reused:
        if not args.big_index:
            shutil.rmtree(store / "vectors", ignore_errors=True)
        elif not (store / "vectors").is_dir():
            build_big_index(store)
        args.t_big = 0.0
        return store, disk
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(disk, ignore_errors=True)
    disk.mkdir()
    args.t_big = make_big_store(store, n, args.big_embedded)
    if args.big_index:
        build_big_index(store)
    for i in range(n):
        (disk / f"f{i:07d}").touch()
    done.touch()
    return store, disk


def build_big_index(store: Path) -> None:
    """--big-index: read the --big store's embeddings and build their index here, once, as the
    daemon's worker would (STORE/vectors, kept by later runs)."""
    from hkfs.query.embeddings import EmbeddingCatalog
    with Store.open(store) as st:
        ns = st.namespace_id(os.getuid())
        cat = EmbeddingCatalog(st)
        try:
            cat.refresh(ns)
            for d in sorted(cat.dims(ns)):
                cat.rebuild(ns, d)
        finally:
            cat.stop()


def mem_split(store: Path, pid: int) -> str:
    """Where the daemon's memory is now, from its own report (SIGUSR2: hkfs.fuse.memstats)."""
    from hkfs.fuse.memstats import MEMSTATS_NAME
    path = store / MEMSTATS_NAME
    before = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not (path.exists() and path.stat().st_mtime_ns != before):
        if time.monotonic() > deadline:
            return "no memory report"
        time.sleep(0.05)
    d = json.loads(path.read_text())
    mib = 1 << 20
    b = d.get("budget", {})
    return (f"SQLite {d['sqlite'].get('used', 0) / mib:.0f} MiB in {d.get('catalog_connections')} connections, "
            f"libfuse nodes {d.get('libfuse_nodes')} (kernel FUSE inodes {d.get('kernel_fuse_inodes')}), "
            f"malloc in use {d['malloc'].get('in_use', 0) / mib:.0f} MiB + free kept "
            f"{d['malloc'].get('free_kept', 0) / mib:.0f} MiB, Python blocks {d['python']['allocated_blocks']:,}, "
            f"read memo {d.get('read_memo')}, entries dropped {b.get('dropped')}")


# the daemon's bounds off (hkfs.fuse.node_budget, hkfs.fuse.native_memory): the peer rows
UNBOUNDED = {"HKFS_NODE_BUDGET": "0", "HKFS_SQLITE_HEAP_MIB": "0"}


def big_rows(base: Path, args: argparse.Namespace, bounded: bool = True) -> list[Row]:
    """Issue 12's memory goal: the daemon's RSS (now, and its peak VmHWM) while it lists, finds
    and queries a store of args.big files; the disk column is the same work on as many empty files.
    bounded=False: the same with the node budget and SQLite's heap limit off (rows end in ", unbounded")."""
    n, mnt = args.big, base / "big-mnt"
    mnt.mkdir(exist_ok=True)
    store, disk = big_store(base, args)
    sfx = "" if bounded else ", unbounded"
    rows: list[Row] = []
    d_ls = ls(disk, "-l")        # before: between the two listings it would age the kept one
    saved = {k: os.environ.get(k) for k in UNBOUNDED}
    if not bounded:
        os.environ.update(UNBOUNDED)        # the forked daemon inherits them
    try:
        ctx = mounted(store, mnt)
        pid = ctx.__enter__()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        rss0 = proc_mem(pid)
        for what in ("first after mount", "again"):
            with Cpu(pid, n) as c:
                t = ls(mnt / "@" / "bench", "-l")
            rows.append((f"ls -l of a {n}-file view, {what}{sfx}", "s", t, d_ls,
                         f"daemon CPU {c.s:.2f} s; {c.mem}; RSS after mount {rss0[0]:.0f} MiB; "
                         f"{mem_split(store, pid)}"))
        with Cpu(pid, n) as c:
            t = timed(lambda: subprocess.run(["find", str(mnt / "@")], stdout=subprocess.DEVNULL, check=True))
        rows.append((f"find MNT/@ of a {n}-file store{sfx}", "s", t,
                     timed(lambda: subprocess.run(["find", str(disk)], stdout=subprocess.DEVNULL, check=True)),
                     f"daemon CPU {c.s:.2f} s; {c.mem}; {mem_split(store, pid)}"))
        reads = 150
        with Store.open(store) as st:
            ns = st.namespace_id(os.getuid())
            pick = np.random.default_rng(11).choice(args.big_embedded, size=reads, replace=False) \
                if args.big_embedded >= reads else []
            names = [f"f{int(i):07d}" for i in pick]
            del ns
        with Cpu(pid, reads) as c:
            t = timed(lambda: [(mnt / "@" / "bench" / f"{nm}.query").read_bytes() for nm in names])
        built = "the index built before mounting" if args.big_index else \
            "the index built by the daemon's worker meanwhile"
        rows.append((f"{reads} FILE.query reads in the {n}-file store ({args.big_embedded} embedded){sfx}", "s",
                     t, float("nan"), f"first reads ({built}); "
                     f"daemon CPU {c.s / reads * 1e3:.1f} ms/read; {c.mem}; {mem_split(store, pid)}"))
    finally:
        ctx.__exit__(None, None, None)
    if not args.big_index:
        shutil.rmtree(store / "vectors", ignore_errors=True)     # the peer's reads are first reads too
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="work directory on the disk to test (default: a temp dir "
                    "under /var/tmp); it is removed afterwards")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--read-repeats", type=int, default=3, help="cold reads of the big file, each side")
    ap.add_argument("--small", type=int, default=2000, help="small files to create/stat/unlink")
    ap.add_argument("--stats", type=int, default=20000, help="repeated stat calls")
    ap.add_argument("--pairs", type=int, default=2000, help="utime+stat pairs (invalidation worst case)")
    ap.add_argument("--view-files", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="128 MiB and 10k files")
    ap.add_argument("--only", choices=("all", "view", "read"), default="all",
                    help="view: the stat/ls rows only; read: the big-file rows only (prints, writes no "
                    "report unless --out)")
    ap.add_argument("-o", dest="mount_options", default="", help="extra mount options for the default mount")
    ap.add_argument("--read-ahead-kb", type=int, default=None,
                    help="write this to the mount's /sys/class/bdi/*/read_ahead_kb after mounting (root)")
    ap.add_argument("--no-libfuse2", dest="libfuse2", action="store_false",
                    help="skip the libfuse 2 comparison rows")
    ap.add_argument("--out", default=None, help="report path (default docs/bench/mount.md for a full run)")
    ap.add_argument("--big", type=int, default=0, help="also list, find and query a store of this many "
                    "files (issue 12's memory goal: 1000000; ~5 min more)")
    ap.add_argument("--big-embedded", type=int, default=20_000, help="files of the --big store with "
                    "their own embedding")
    ap.add_argument("--big-peer", action="store_true", help="repeat the --big rows with the daemon's "
                    "memory bounds off (node budget, SQLite heap limit): the before, in the same run")
    ap.add_argument("--big-index", action="store_true", help="build the --big store's embedding index "
                    "before mounting, and keep it (with --big-dir, across runs): the daemon then lists, "
                    "finds and queries a store whose files all may carry an embedding (--big-embedded "
                    "1000000) without first building the index itself")
    ap.add_argument("--big-dir", default=None, help="keep the --big store and its disk peer in this "
                    "directory (made on the first run, reused after; not removed)")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.view_files, args.small, args.stats, args.pairs = 128, 10_000, 1000, 5000, 500
    if args.out is None and args.only == "all":
        args.out = str(ROOT / "docs" / "bench" / "mount.md")
    views, reads = args.only in ("all", "view"), args.only in ("all", "read")

    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="hkfs-bench-", dir=args.dir or "/var/tmp"))
    store, mnt, disk = base / "store", base / "mnt", base / "disk"
    mnt.mkdir()
    disk.mkdir()
    rows: list[Row] = []
    info: dict[str, str] = {}
    t_bulk = 0.0
    cold = drop_caches()
    try:
        t_bulk = make_view(store, disk, args.view_files if views else 2)
        with mounted(store, mnt, options=parse_options(args.mount_options)) as pid:
            lib, caches = mount_info(store, pid)
            ra = bdi_read_ahead(mnt)
            info["default"] = f"{lib}, {caches}"
            info["read_ahead_kb"] = ra.read_text().strip() if ra.exists() else "?"
            args.read_ahead_kb_now = None
            if args.read_ahead_kb is not None:
                ra.write_text(f"{args.read_ahead_kb}\n")
                args.read_ahead_kb_now = ra.read_text().strip()
            print(f"default mount: {info['default']}; {ra} = {info['read_ahead_kb']}", flush=True)
            note = "default mount"
            if views:
                rows += view_rows(pid, mnt, disk, args, note)
            if reads:
                rows += big_file_rows(pid, store, mnt, disk, args, cold)
            if args.only == "all":
                rows += small_rows(pid, mnt, disk, args)
        if views and args.libfuse2:
            with mounted(store, mnt, libfuse="fuse") as pid:
                lib, caches = mount_info(store, pid)
                info["libfuse2"] = f"{lib}, {caches}"
                print(f"comparison mount: {info['libfuse2']}", flush=True)
                rows += view_rows(pid, mnt, disk, args, "libfuse 2, caches off", suffix=", libfuse 2",
                                  cold_ls=False, plain_ls=False)
        if views:
            rows.append(null_fs_row(mnt, disk, args))
        if args.big:
            rows += big_rows(base, args)
            if args.big_peer:
                rows += big_rows(base, args, bounded=False)
    finally:
        with contextlib.suppress(OSError):
            if os.path.ismount(mnt):
                subprocess.run(["fusermount", "-u", "-z", str(mnt)])
        shutil.rmtree(base, ignore_errors=True)

    args.load = (load_before, os.getloadavg()[0])
    lines = report(rows, args, t_bulk, info)
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n" + kept_section(out))
        print(f"\nwrote {out}")


KEEP = "## Cold large-file read: analysis"   # hand-written, kept across runs


def kept_section(out: Path) -> str:
    """The hand-written analysis at the end of the previous report (from KEEP to the end)."""
    with contextlib.suppress(OSError):
        text = out.read_text()
        if KEEP in text:
            return "\n" + text[text.index(KEEP):]
    return ""


def report(rows: list[Row], args: argparse.Namespace, t_bulk: float, info: dict[str, str]) -> list[str]:
    def fmt(v: float, unit: str) -> str:
        return f"{v:.2f}" if unit == "s" else f"{v:,.0f}"
    cmd = "python scripts/bench_mount.py" + (" --quick" if args.quick else "") + \
        ("" if args.only == "all" else f" --only {args.only}") + \
        ("" if args.quick or args.view_files == 100_000 else f" --view-files {args.view_files}") + \
        ("" if args.quick or args.size_mib == 1024 else f" --size-mib {args.size_mib}") + \
        ("" if args.libfuse2 else " --no-libfuse2") + \
        ("" if args.read_repeats == 3 else f" --read-repeats {args.read_repeats}") + \
        (f" --big {args.big}" if args.big else "") + (" --big-peer" if args.big and args.big_peer else "") + \
        (f" --big-embedded {args.big_embedded}" if args.big and args.big_embedded != 20_000 else "") + \
        (" --big-index" if args.big and args.big_index else "")
    out = [
        "# Mount vs. backing disk",
        "",
        f"Made by `{cmd}` on {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, kernel {platform.release()}. The mount and the disk rows "
        "run in the same process on the same file system. "
        f"Load average {args.load[0]:.1f} before, {args.load[1]:.1f} after (other jobs share "
        "the machine; repeated runs vary by up to 2x).",
        "",
        f"- default mount (rows without a suffix): {info.get('default', '?')}; "
        f"fuse read_ahead_kb {info.get('read_ahead_kb', '?')}",
    ]
    if "libfuse2" in info:
        out.append(f"- comparison mount (rows ending \", libfuse 2\", the previous default): {info['libfuse2']}")
    out += [
        "",
        "| work | unit | mount | disk | mount/disk | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for what, unit, m, d, note in rows:
        if d != d:                          # NaN: no disk peer for this row
            out.append(f"| {what} | {unit} | {fmt(m, unit)} | - | - | {note} |")
            continue
        ratio = (d / m) if unit == "s" else (m / d)
        out.append(f"| {what} | {unit} | {fmt(m, unit)} | {fmt(d, unit)} | {ratio:.2f} | {note} |")
    out += [
        "",
        "mount/disk is the mount's share of the disk's speed (for times: disk time / mount time). "
        f"The view was set up with `Store.bulk_create` ({t_bulk:.1f} s); on the disk it is a directory "
        "of as many empty files, whose dentries are warm for every disk row. Daemon CPU is user + "
        "system time of the daemon process per operation, which other jobs on the machine affect far "
        "less than the wall-clock rates.",
    ]
    if args.big:
        out += ["", f"The {args.big}-file store was made with `Store.bulk_create` and {args.big_embedded} "
                f"embedding xattrs ({'reused from --big-dir' if args.big_reused else f'{args.t_big:.0f} s'}; vectors seed 3, query files picked with seed 11); "
                "its rows come last, on a mount of their own. Daemon RSS is VmRSS after the row, "
                "peak its VmHWM since mounting."]
    out += goals(rows, args)
    out += EXPLAIN
    return out


def goals(rows: list[Row], args: argparse.Namespace) -> list[str]:
    """Issue 3's goals, judged on this run's rows (default mount; the fallback beside)."""
    by = {what: (m, d) for what, _unit, m, d, _note in rows}

    def find(prefix: str, suffix: str = "") -> tuple[float, float] | None:
        return next((v for k, v in by.items() if k.startswith(prefix) and k.endswith(suffix)
                     and ("libfuse 2" in k) == ("libfuse 2" in suffix)), None)

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"
    out = ["", "## Goals (issues 3 and 12) in this run", ""]
    for label, prefix in (("write", "write "), ("read (cold)", "read ")):
        r = find(prefix)
        if r:
            out.append(f"- large-file {label} >= 50% of the disk: {r[0] / r[1]:.0%}, {met(r[0] / r[1] >= 0.5)}")
    s = find("stat one file in a view")
    if s:
        line = f"- `stat` >= 20k/s through the mount: {s[0]:,.0f}/s repeated on one file, {met(s[0] >= 20_000)}"
        first = find(f"stat {args.small} small files, just")
        if first:
            line += f"; {first[0]:,.0f}/s on {args.small} files just written (a GETATTR each), {met(first[0] >= 20_000)}"
        fb = find("stat one file in a view", ", libfuse 2")
        if fb:
            line += f" (fallback, caches off: {fb[0]:,.0f}/s, {met(fb[0] >= 20_000)})"
        out.append(line)
    ls1 = find(f"ls -l of a {args.view_files}-file view, first")
    if ls1:
        scale = "" if args.view_files == 100_000 else f" (this run has {args.view_files} files: not the goal's size)"
        line = f"- `ls -l` of a 100k-file view <= 2 s: {ls1[0]:.2f} s first after mount, {met(ls1[0] <= 2)}{scale}"
        again = find(f"ls -l of a {args.view_files}-file view, again")
        if again:
            line += f"; {again[0]:.2f} s again, {met(again[0] <= 2)}"
        fb = find(f"ls -l of a {args.view_files}-file view", ", libfuse 2")
        if fb:
            line += f" (fallback, caches off: {fb[0]:.2f} s, {met(fb[0] <= 2)})"
        out.append(line)
        # issue 12 goal 6: <= 1 s first, the second served by the kernel (daemon CPU near 0)
        cpu = [r[4] for r in rows if r[0] == f"ls -l of a {args.view_files}-file view, again"]
        m = re.search(r"daemon CPU [\d.]+ us/file \(([\d.]+) s\)", cpu[0]) if cpu else None
        out.append(f"- `ls -l` of a 100k-file view <= 1 s first (issue 12): {ls1[0]:.2f} s, {met(ls1[0] <= 1)}"
                   + (f"; second served by the kernel (daemon CPU near 0): {m.group(1)} s of daemon CPU, "
                      f"{met(float(m.group(1)) < 0.05)}" if m else "") + scale)
    all_big = [r for r in rows if args.big and f"{args.big}" in r[0]]
    big = [r for r in all_big if not r[0].endswith(", unbounded")]
    bpeaks = [float(x) for r in big for x in re.findall(r"peak (\d+) MiB", r[4])]
    upeaks = [float(x) for r in all_big if r not in big for x in re.findall(r"peak (\d+) MiB", r[4])]
    if bpeaks:
        out.append(f"- daemon RSS < 256 MiB while listing, finding and querying a {args.big}-file store "
                   f"(issue 12): peak {max(bpeaks):.0f} MiB, {met(max(bpeaks) < 256)}"
                   + (f" (bounds off, the peer rows: {max(upeaks):.0f} MiB)" if upeaks else ""))
        again = [r for r in big if r[0].endswith("again")]
        m2 = re.search(r"daemon CPU ([\d.]+) s", again[0][4]) if again else None
        if m2:
            out.append(f"- second `ls -l` of the {args.big}-file view served by the kernel: {again[0][2]:.2f} s, "
                       f"{m2.group(1)} s of daemon CPU, {met(float(m2.group(1)) < 0.05)}")
    peaks = [float(x) for r in rows if r not in all_big for x in re.findall(r"peak (\d+) MiB", r[4])]
    if peaks:
        out.append(f"- daemon RSS < 256 MiB while listing and finding a {args.view_files}-file view "
                   f"(issue 12): peak {max(peaks):.0f} MiB, {met(max(peaks) < 256)}")
    return out


KEPT_NOTE = ("A kept listing is page cache of the directory: `drop_caches` (the cold-read rows of any "
             "bench_mount run on the machine do it) or memory pressure drops it, and the next listing "
             "is the daemon's again; so do 50 s (5/6 of the entry timeout) since the daemon last "
             "listed the view, whose entries are then about to time out.")

EXPLAIN = [
    "",
    "## Reading the figures",
    "",
    "**What is cached, and when it is dropped.** On the default mount the daemon sets the kernel's "
    "entry and attribute timeouts to 60 s once the kernel accepts FUSE_NOTIFY_INC_EPOCH (Linux "
    "6.16+) on its /dev/fuse descriptor (hkfs/fuse/kernel_cache.py; the daemon log says \"kernel caches "
    "on\"). It sends that message after every operation through the mount that may leave another "
    "cached path stale (before replying; a change to a file reached only through its one "
    "directory link needs none, see docs/mount.md), when a process that wrote the catalog itself pokes it (getxattr "
    "`user.hk.sync`, which the hk CLI does), and when its watcher sees the catalog's "
    "`data_version` move (a writer that did not poke; within 50 ms). The message makes every "
    "dentry of the mount stale at once, so the next path walk asks the daemon again: a `stat` "
    "that follows a change is as expensive as with caches off, one that follows nothing is "
    "answered by the kernel alone (daemon CPU ~0 per stat). Repeated `stat`s and the second "
    "`ls -l` are therefore kernel-speed figures, not hkfs ones; the daemon's own cost shows in "
    "the first listing, in the utime-then-stat row and in the small-file rows: creating, writing "
    "and removing files in a directory moves no epoch, but a write makes the kernel itself drop "
    "that inode's size and times, so the `stat` of each file just written is one GETATTR (the "
    "\"just created\" row) and only the second pass is answered from the cache.",
    "",
    "**Listings.** On libfuse 3 a listing is READDIRPLUS: each name comes with its attributes "
    "and the kernel registers the entry, so `ls -l` costs no LOOKUP or GETATTR per file "
    "(with libfuse 2 and timeouts 0 it is two requests per file). Plain `ls` reads the same "
    "READDIRPLUS listing (READDIRPLUS_AUTO is off) and so costs about the same as `ls -l`. "
    "The kernel keeps the listing of `@` and of every view (FOPEN_CACHE_DIR, "
    "hkfs/fuse/dir_cache.py) until a change drops it, so a second listing within the entry "
    "timeout costs the daemon one OPENDIR (the \"again\" rows: daemon CPU ~0); the "
    "first one reads the view a piece at a time (hkfs/mount/view_listing.py), keeping 8 bytes "
    "a file. libfuse's high-level API holds a node (~140 bytes) for every inode the kernel "
    "keeps, i.e. for every listed file, until the kernel forgets it; the daemon drops the "
    "oldest entries past 200k listed files (hkfs/fuse/node_budget.py), so a view bigger than "
    "that is looked up name by name on `ls -l` (the 1M rows' daemon CPU). " + KEPT_NOTE,
    "",
    "**The worst case.** The utime-then-stat row changes the file through one view "
    "(`@/alt/f000001`) and stats it through another (`@/bench/f000001`) each time: every "
    "utime is a catalog commit plus an invalidation, and every stat then walks the path "
    "through the daemon again. \"stale stats\" counts stats that did not show the new mtime "
    "(must be 0). The same row on libfuse 2 (caches off) is what this pattern cost before.",
    "",
    "**The fallback.** On a kernel without FUSE_NOTIFY_INC_EPOCH (before 6.16), or when "
    "libfuse 2 is loaded (FUSE_LIBRARY_NAME=fuse; its session descriptor is out of reach of "
    "the high-level API), the timeouts stay 0 (\"kernel caches stay off\" in the log) and the "
    "rows ending \", libfuse 2\" apply: every path component of every call is a round trip "
    "(a `stat` of `@/bench/f000001` is 3 LOOKUPs and a GETATTR, `ls -l` 2 requests per file). "
    "The do-nothing row is the same `stat` answered from constants by a 12-line mfusepy file "
    "system with caches off: the floor that mfusepy, libfuse and the kernel set, whatever hkfs "
    "does.",
    "",
    "**Large files** do not pass through Python: `read_buf`/`write_buf` hand libfuse the entity "
    "file's descriptor and libfuse moves the bytes; per request one small Python call is left. "
    "The \"cold\" disk reads come from the host's cache (the VM's disk is virtual), so the disk "
    "side is a hard and noisy target; the read row is the median of several cold reads, mount "
    "and disk alternately, with page cache, dentries and inodes dropped before each. The "
    "\"backing file cached\" row reads with the entity file in the page cache and only the "
    "mount's pages dropped: the cost of the FUSE transport alone. See the analysis below.",
]


if __name__ == "__main__":
    main()
