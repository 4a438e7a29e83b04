#!/usr/bin/env python
"""Benchmark `.query` files: reading `q.query` through the mount vs the same search in-process.

Stores tagged //bench, d=64 clustered float32 vectors:
  entry  --rows (1M) embeddings held in ONE .npy entry (results are `path#row`)
  files  --files (100k and 1M) files, each carrying its own embedding (user.hk.embedding)

For each, the store is filled through the Store API, the daemon's EmbeddingCatalog
builds (trains) the vecindex index once (persisted under STORE/vectors, timed), the
store is mounted with `hk mount -f`, and --queries stored queries `qN.query` (k=10)
are written into @/bench. Then, in one run:
  in-process   vecindex.IVFIndex.open(<that index>).search(q, k=10)  (same index, same nprobe)
  mount read   open + read-to-EOF + close of @/bench/qN.query from this process (FUSE round trips:
               lookup, open, read, release; the query is evaluated afresh on open; the read
               at EOF is the kernel's when it holds the result's size, hkfs/mount/queryfs.py)
  cat          `cat @/bench/qN.query` as a subprocess (adds fork+exec of cat, for reference)
and for the files cases: FILE.query (first read of each file, a repeat, a first read after an
unrelated commit by another process) beside the raw search of the file's vector, and
`hk query --like FILE`. Goal (issue 12 goal 5): a read <= 2 x raw search + 1 ms. Also checked:
the mount returns the same hits as the in-process search. Writes docs/bench/query.md.

    python scripts/bench_query.py                 # 1M-row entry, 100k and 1M files
    python scripts/bench_query.py --rows 0 --files 100000
    python scripts/bench_query.py --quick         # 100k rows / 10k files, a minute or two
    python scripts/bench_query.py --rows 0 --files 100000 --stores /tmp/bq --baseline ../main
        # the same stores (kept in /tmp/bq, reused by the next run) served by another checkout's
        # daemon first, then by this one's, back to back: an A/B in one run

With --baseline, only the daemon (and `hk query`) run the other checkout's code (PYTHONPATH);
this process (filling stores, the raw search) runs this checkout's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_mount import proc_mem  # noqa: E402  (scripts/ is on sys.path when run as a script)

from hkfs.core.store import Store  # noqa: E402
from hkfs.query.embeddings import EMBEDDING_ATTR, ROW_BITS, EmbeddingCatalog  # noqa: E402
from vecindex import IVFIndex  # noqa: E402

DOCS = ROOT / "docs" / "bench"
HK = [sys.executable, "-c", "from hkfs.cli.main import main; main()"]
DIM = 64
K = 10


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(16, n // 1000), d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for a in range(0, n, 262144):
        m = min(262144, n - a)
        out[a:a + m] = centers[rng.integers(0, len(centers), m)] + 0.35 * rng.normal(size=(m, d))
    return out


def fill_entry(store: Path, n: int) -> tuple[int, float]:
    with Store.open(store) as st:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, "//bench", parents=True)
        eid = st.create(ns, "vectors.npy", hks=["//bench"], uid=os.getuid(), gid=os.getgid())
        x = clustered(n, DIM, 1)
        with open(st.entity_path(eid), "wb") as f:
            np.save(f, x)
        st.set_attrs(eid, size=st.entity_path(eid).stat().st_size)
        return ns, build(st, ns)


def fill_files(store: Path, n: int) -> tuple[int, float]:
    with Store.open(store) as st:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, "//bench", parents=True)
        ids = st.bulk_create(ns, [(f"f{i:06d}.txt", ["//bench"]) for i in range(n)],
                             uid=os.getuid(), gid=os.getgid())
        x = clustered(n, DIM, 2)
        t = time.perf_counter()
        for a in range(0, n, 10_000):           # one transaction per 10k attributes
            with st.catalog.write():
                for eid, v in zip(ids[a:a + 10_000], x[a:a + 10_000], strict=True):
                    st.set_xattr("file", eid, EMBEDDING_ATTR, v.astype("<f4").tobytes())
        print(f"  set {n} embedding xattrs in {time.perf_counter() - t:.1f}s", flush=True)
        return ns, build(st, ns)


def build(st: Store, ns: int) -> float:
    """What the daemon does on first sight of the embeddings: read them, train and save the index."""
    t = time.perf_counter()
    cat = EmbeddingCatalog(st)
    cat.refresh(ns)
    cat.rebuild(ns, DIM)
    cat.stop()
    return time.perf_counter() - t


# The environment of the daemon and `hk query` (--baseline: PYTHONPATH of another checkout).
CHILD_ENV: dict[str, str] | None = None


def mount(store: Path, mnt: Path) -> subprocess.Popen:
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(HK + ["mount", "-f", str(store), str(mnt)], env=CHILD_ENV, cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    end = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"mount failed; see {store / 'daemon.log'}")
        time.sleep(0.05)
    return proc


def unmount(mnt: Path, proc: subprocess.Popen) -> None:
    fm = shutil.which("fusermount") or shutil.which("fusermount3") or "fusermount"
    for _ in range(100):
        if subprocess.run([fm, "-u", str(mnt)], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()


def cpu_ms(pid: int) -> float:
    """CPU time the process's threads have used, in ms (schedstat: nanoseconds, not ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass                      # a thread that ended meanwhile
    return total / 1e6


def ms(xs: list[float]) -> tuple[float, float]:
    return statistics.median(xs) * 1e3, float(np.percentile(xs, 90)) * 1e3


def read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def run_case(name: str, store: Path, mnt: Path, ns: int, nq: int, rounds: int, *,
             files: bool = False) -> dict:
    """Time the raw search and reads through the mount (see the module doc) for one store."""
    sdir = store / "vectors" / f"ns{ns}-d{DIM}"
    import json
    index = IVFIndex.open(sdir / json.loads((sdir / "manifest.json").read_text())["index"])
    rng = np.random.default_rng(9)
    queries = rng.normal(size=(nq, DIM)).astype(np.float32)
    own = _own_vectors(store, ns, nq * (rounds + 3)) if files else []
    out: dict = {"case": name}
    proc = mount(store, mnt)
    try:
        bench = mnt / "@" / "bench"
        for i, q in enumerate(queries):
            (bench / f"q{i}.query").write_text(" ".join(f"{x:.9g}" for x in q) + f"\nk={K}\n")
        # warm both sides (page cache of the index files, the daemon's scope cache)
        for i, q in enumerate(queries[: min(5, nq)]):
            index.search(q.reshape(1, -1), k=K)
            read_all(str(bench / f"q{i}.query"))
        (bench / "plain.txt").write_bytes(b"x" * 400)       # an ordinary file of a result's size
        t_in, t_mnt, t_plain = [], [], []
        cpu: list[float] = []           # the daemon's CPU per stored read, per block
        agree = 0
        # Blocks, not interleaving: each side runs its queries back to back (warm caches),
        # the blocks alternate `rounds` times.
        for _ in range(rounds):
            want = []
            for q in queries:
                t = time.perf_counter()
                s, ids = index.search(q.reshape(1, -1), k=K)
                t_in.append(time.perf_counter() - t)
                want.append([_label(int(x)) for x in ids[0]])
            c0 = cpu_ms(proc.pid)
            for i in range(nq):
                t = time.perf_counter()
                got = read_all(str(bench / f"q{i}.query"))
                t_mnt.append(time.perf_counter() - t)
                rows = [ln.split("\t")[1] for ln in got.decode().splitlines()]
                agree += sum(a.endswith(b) for a, b in zip(rows, want[i], strict=False)) == K
            cpu.append((cpu_ms(proc.pid) - c0) / nq)
            for _i in range(nq):
                t = time.perf_counter()
                read_all(str(bench / "plain.txt"))
                t_plain.append(time.perf_counter() - t)
        t_cat = []
        for i in range(min(nq, 30)):
            t = time.perf_counter()
            subprocess.run(["cat", str(bench / f"q{i}.query")], stdout=subprocess.DEVNULL, check=True)
            t_cat.append(time.perf_counter() - t)
        out.update({"in": ms(t_in), "mnt": ms(t_mnt), "cat": ms(t_cat), "plain": ms(t_plain),
                    "agree": agree / (rounds * nq), "cpu": statistics.median(cpu)})
        if files:
            out.update(file_queries(store, bench, index, ns, own, nq, proc.pid))
            out["hk"], out["hk_rss"] = hk_query(mnt, own[:5])
        out["mem"] = proc_mem(proc.pid)
    finally:
        unmount(mnt, proc)
    info = index.info()
    out.update({"rows": info["rows"], "nlist": info["nlist"], "nprobe": info["default_nprobe"]})
    return out


def _own_vectors(store: Path, ns: int, n: int) -> list[tuple[int, str, np.ndarray]]:
    """n files of //bench (spread over the store) with their own embedding: (id, name, vector)."""
    from hkfs.query.embeddings import parse_embedding
    with Store.open(store) as st, st.catalog.read() as c:
        # the files fill_files made (a kept store's view also holds the bench's qN.query, plain.txt)
        ids = [r[0] for r in c.execute("SELECT id FROM entities WHERE ns = ? AND name GLOB "
                                       "'f[0-9][0-9][0-9][0-9][0-9][0-9].txt' ORDER BY id", (ns,))]
        pick = np.random.default_rng(11).choice(len(ids), size=min(n, len(ids)), replace=False)
        got = []
        for i in pick:
            eid = ids[int(i)]
            got.append((eid, st.entity(eid).name, parse_embedding(st.get_xattr("file", eid, EMBEDDING_ATTR))))
        return got


def file_queries(store: Path, bench: Path, index: IVFIndex, ns: int,
                 own: list[tuple[int, str, np.ndarray]], nq: int, pid: int) -> dict:
    """FILE.query reads: the raw search of the file's vector beside each, the first read of each
    file, a repeat, and a first read right after an unrelated commit by another process."""
    from hkfs.query.embeddings import _unit
    groups = [own[i * nq:(i + 1) * nq] for i in range(3)]
    t_raw, t_first, t_repeat, t_after = [], [], [], []
    c_raw = time.thread_time()
    for _eid, _fname, v in groups[0] + groups[1]:
        q = _unit(v).reshape(1, -1)
        t = time.perf_counter()
        index.search(q, k=K + 1)                      # FILE.query asks for one more: itself
        t_raw.append(time.perf_counter() - t)
    raw_cpu = (time.thread_time() - c_raw) * 1e3 / len(t_raw)
    c_first, c_repeat, c_after = [], [], []      # the daemon's CPU per read, ms
    for _eid, fname, _v in groups[0]:
        p = str(bench / f"{fname}.query")
        for times, cpus in ((t_first, c_first), (t_repeat, c_repeat)):
            c = cpu_ms(pid)
            t = time.perf_counter()
            read_all(p)
            times.append(time.perf_counter() - t)
            cpus.append(cpu_ms(pid) - c)
    cpu = (sum(c_first) + sum(c_repeat)) / (2 * len(groups[0]))
    with Store.open(store) as st:
        other = groups[2][0][0]
        for i, (_eid, fname, _v) in enumerate(groups[1]):
            # another process commits something unrelated (a note on another file); its commit
            # hook pokes the daemon, which drops the kernel's caches (the poke's CPU is counted)
            c = cpu_ms(pid)
            st.set_xattr("file", other, "user.note", str(i).encode())
            p = str(bench / f"{fname}.query")
            t = time.perf_counter()
            read_all(p)
            t_after.append(time.perf_counter() - t)
            c_after.append(cpu_ms(pid) - c)
    return {"raw": ms(t_raw), "first": ms(t_first), "repeat": ms(t_repeat), "after": ms(t_after),
            "file_cpu": cpu, "raw_cpu": raw_cpu, "cpu_first": statistics.median(c_first),
            "cpu_repeat": statistics.median(c_repeat), "cpu_after": statistics.median(c_after)}


# `hk` that writes its own peak RSS (VmHWM, kB) last on stderr: wait4's ru_maxrss would count
# the memory of this (big) benchmark process the child was forked from. -P as in the installed
# `hk` script: `python -c` puts the cwd (here a view of the mount) first on sys.path, and the
# first import then lists that whole view through FUSE (~20 s and ~800 MiB of daemon at 1M files).
HK_PEAK = [sys.executable, "-P", "-c", "import atexit, sys\n"
           "atexit.register(lambda: sys.stderr.write('\\nVmHWM ' + [ln for ln in open('/proc/self/status') "
           "if ln.startswith('VmHWM')][0].split()[1] + '\\n'))\n"
           "from hkfs.cli.main import main; main()"]


def hk_query(mnt: Path, own: list[tuple[int, str, np.ndarray]]) -> tuple[tuple[float, float], float]:
    """`hk query --like FILE` in @/bench as a subprocess (a fresh Python each time): wall time,
    and the largest peak RSS (MiB, the process's own VmHWM) of those processes."""
    ts, peak = [], 0.0
    for _eid, fname, _v in own:
        t = time.perf_counter()
        p = subprocess.run(HK_PEAK + ["query", "--like", fname], cwd=mnt / "@" / "bench", env=CHILD_ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, text=True)
        ts.append(time.perf_counter() - t)
        peak = max(peak, int(p.stderr.split()[-1]) / 1024)
    return ms(ts), peak


_NAMES: dict[int, str] = {}


def _label(ident: int) -> str:
    """The tail of a hit's path for an index id: '#row' of the entry or the file's name."""
    eid, row = ident >> ROW_BITS, ident & ((1 << ROW_BITS) - 1)
    if row == (1 << ROW_BITS) - 1:
        return _NAMES.get(eid, f"/{eid}")
    return f"#{row}"


LOAD0 = os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the one-entry case (0: skip it)")
    ap.add_argument("--files", type=int, nargs="+", default=[100_000, 1_000_000],
                    help="sizes of the files-with-own-embedding cases")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100k rows, 10k files, 30 queries")
    ap.add_argument("--work", type=Path, default=None, help="Where the stores go (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="Do not write docs/bench/query.md")
    ap.add_argument("--out", type=Path, default=DOCS / "query.md", help="Where the report goes")
    ap.add_argument("--stores", type=Path, default=None,
                    help="Keep the stores here and reuse them when present (same sizes and seeds)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="Another checkout (e.g. main's): each case is also served by its daemon, first")
    ap.add_argument("--repeat", type=int, default=1,
                    help="With --baseline: serve each case this many times by each code, alternating")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.files, a.queries = 100_000, [10_000], 30
    work = Path(tempfile.mkdtemp(prefix="bench-query-", dir=a.work))
    keep = a.stores
    codes: list[tuple[str, dict[str, str] | None]] = [("this", None)]
    if a.baseline is not None:
        base_env = dict(os.environ, PYTHONPATH=str(a.baseline.resolve()))
        codes.insert(0, (f"baseline ({_head(a.baseline)})", base_env))
        codes[1] = (f"this ({_head(ROOT)})", None)
        codes *= max(1, a.repeat)
    global CHILD_ENV
    results, builds = [], {}

    def serve(name: str, store: Path, mnt: Path, ns: int, files: bool) -> None:
        global CHILD_ENV
        for code, env in codes:
            CHILD_ENV = env
            r = run_case(name, store, mnt, ns, a.queries, a.rounds, files=files)
            r["code"] = code
            results.append(r)
            print(r, flush=True)
        CHILD_ENV = None

    try:
        if a.rows:
            print(f"entry: {a.rows} rows x {DIM} in one .npy", flush=True)
            s = (keep / f"entry{a.rows}") if keep else work / "s1"
            ns, builds["entry"] = _reuse(s) or fill_entry(s, a.rows)
            print(f"  index built in {builds['entry']:.1f}s", flush=True)
            serve("one .npy entry", s, work / "m1", ns, False)
            if not keep:
                shutil.rmtree(s, ignore_errors=True)
            elif not (s / "built").exists():
                (s / "built").write_text(f"{ns} {builds['entry']:.1f}\n")
        for n in a.files:
            print(f"files: {n} files with their own embedding", flush=True)
            s, m = (keep / f"files{n}") if keep else work / f"f{n}", work / f"m{n}"
            ns, builds[f"{n:,} files"] = _reuse(s) or fill_files(s, n)
            print(f"  index built in {builds[f'{n:,} files']:.1f}s", flush=True)
            with Store.open(s) as st:
                _NAMES.update({e.id: e.name for e in st.match(ns, ["//bench"])})
            serve(f"{n:,} files with own embedding", s, m, ns, True)
            _NAMES.clear()
            if not keep:
                shutil.rmtree(s, ignore_errors=True)
            elif not (s / "built").exists():
                (s / "built").write_text(f"{ns} {builds[f'{n:,} files']:.1f}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(results, builds, a)
    print(table)
    if not a.no_write:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(table)
        print(f"wrote {a.out}")


def _reuse(store: Path) -> tuple[int, float] | None:
    """(namespace, build seconds) of a store kept by an earlier --stores run, else None."""
    try:
        ns, secs = (store / "built").read_text().split()
        return int(ns), float(secs)
    except (OSError, ValueError):
        shutil.rmtree(store, ignore_errors=True)      # half-made: made again
        return None


def _head(tree: Path) -> str:
    """The checkout's branch and commit, for the report."""
    got = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h"], capture_output=True, text=True)
    br = subprocess.run(["git", "-C", str(tree), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True)
    if got.returncode:                 # not a git checkout (an exported tree): its directory
        return tree.resolve().name
    return f"{br.stdout.strip()} {got.stdout.strip()}"


def _cell(x: tuple[float, float]) -> str:
    return f"{x[0]:.2f} ({x[1]:.2f})"


def render(results: list[dict], builds: dict[str, float], a: argparse.Namespace) -> str:
    cmd = "python scripts/bench_query.py" + (" --quick" if a.quick else
                                              f" --rows {a.rows} --files {' '.join(map(str, a.files))}")
    cmd += f" --baseline {a.baseline}" if a.baseline is not None else ""
    lines = [
        "# `.query` latency: through the mount vs in-process vecindex",
        "",
        f"Written by `{cmd} --queries {a.queries} --rounds {a.rounds}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} cores shared with other work; load average {LOAD0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end). d={DIM} clustered float32 (seed 1 for the entry, "
        "2 for the files), queries seed 9, files picked with seed 11; k=10, cosine. "
        "Medians (p90) in ms.",
        "",
        "- **raw search**: `IVFIndex.search` on the very index the daemon uses (same nprobe), in this "
        "process: the peer every goal is measured against.",
        "- **stored read**: open + read to EOF + close of `@/bench/qN.query` (FUSE lookup, open "
        "(the query is evaluated here, afresh), read, release; the read at EOF is answered by the kernel "
        "when it holds the result's size).",
        "- **FILE.query first**: the first read of `@/bench/FILE.query` for each of --queries files "
        "(never read before); **repeat**: the same file again; **after commit**: the first read of "
        "another file right after another process committed an unrelated change (a `user.note` "
        "xattr on another file: the daemon drops the kernel's caches, the catalog version moves). "
        "The raw search beside it is the file's own vector, k=11.",
        "- **plain file**: open + read + close of an ordinary 400-byte file in the same view: the "
        "FUSE floor any read through this mount pays (Python daemon, kernel round trips).",
        "- **daemon CPU: first / repeat / after**: the daemon's CPU per FILE.query read of each kind "
        "(median of the reads; \"after\" includes answering the other process's poke).",
        "- **cat**: the stored read through `cat` in a subprocess (adds fork+exec); **hk query**: "
        "`hk query --like FILE` in the view, a fresh Python process each time (wall ms; its peak RSS "
        "is its own VmHWM).",
        "- **goal** (issue 12 goal 5): a read <= 2 x raw search + 1 ms. On a loaded machine the wall "
        "times of both sides stretch unevenly (a read through the mount is several requests, each "
        "waiting for a CPU), so the same goal is also checked in CPU time: the daemon's CPU per "
        "FILE.query read (first and repeat) against 2 x the raw search's CPU (thread time) + 1 ms.",
        "",
        "- **daemon CPU**: the daemon's CPU time (all threads, /proc/PID/task/*/schedstat) per read, "
        "median over the blocks: what a read costs the daemon whatever the machine's load does to "
        "the wall time.",
        "",
        "- **daemon RSS**: the daemon's resident memory after all the reads of the case, and its "
        "peak (VmRSS, VmHWM).",
        "",
        "| case | code | embeddings | nlist | nprobe | raw search | stored read | goal | met | daemon CPU "
        "| plain file | cat | same hits | daemon RSS (peak), MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        goal = 2 * r["in"][0] + 1
        lines.append(
            f"| {r['case']} | {r.get('code', 'this')} | {r['rows']:,} | {r['nlist']} | {r['nprobe']} | {_cell(r['in'])} | "
            f"{_cell(r['mnt'])} | {goal:.2f} | {'yes' if r['mnt'][0] <= goal else 'NO'} | "
            f"{r['cpu']:.2f} | {r['plain'][0]:.2f} | {r['cat'][0]:.2f} | {100 * r['agree']:.0f}% | "
            f"{r['mem'][0]:.0f} ({r['mem'][1]:.0f}) |")
    files = [r for r in results if "first" in r]
    if files:
        lines += ["", "| case | code | raw search (k=11) | FILE.query first | repeat | after commit | goal | met "
                  "| raw search CPU | daemon CPU per read | CPU goal | met | daemon CPU: first / repeat / after "
                  "| hk query | hk query peak RSS, MiB |",
                  "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|"]
        for r in files:
            goal = 2 * r["raw"][0] + 1
            met = all(r[x][0] <= goal for x in ("first", "repeat", "after"))
            lines.append(f"| {r['case']} | {r.get('code', 'this')} | {_cell(r['raw'])} | {_cell(r['first'])} | {_cell(r['repeat'])} | "
                         f"{_cell(r['after'])} | {goal:.2f} | {'yes' if met else 'NO'} | {r['raw_cpu']:.2f} | "
                         f"{r['file_cpu']:.2f} | {2 * r['raw_cpu'] + 1:.2f} | "
                         f"{'yes' if r['file_cpu'] <= 2 * r['raw_cpu'] + 1 else 'NO'} | "
                         f"{r['cpu_first']:.2f} / {r['cpu_repeat']:.2f} / {r['cpu_after']:.2f} | {r['hk'][0]:.0f} | "
                         f"{r['hk_rss']:.0f} |")
    lines += ["", "Index build (read the embeddings, train the lists, write the index), done once by the "
              "daemon's background worker and persisted under STORE/vectors:", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in builds.items()]
    lines += ["", "\"same hits\": share of stored queries whose k paths through the mount equal the "
              "in-process ids, in order.", "",
              "Reading the tables: a read through the mount pays the FUSE floor of this Python daemon "
              "(the plain-file column) plus the evaluation: for FILE.query, resolve the path, take "
              "the file's vector, search, name the hits. Scopes and the index's view of the "
              "embeddings are kept per catalog generation (hkfs/core/changes.py), so a commit that "
              "renames, tags or embeds nothing costs no rescan; a commit that does (a file created "
              "or tagged anywhere in the namespace) costs one scan of the view on the next read "
              "(docs/query.md). `hk query` is dominated by starting Python and opening the store. "
              "The machine is shared (other test suites and benchmarks run beside); medians move "
              "by a few tenths of a ms between runs under such load.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
