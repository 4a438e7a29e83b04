#!/usr/bin/env python
"""Benchmark `.query` files: reading `q.query` through the mount vs the same search in-process.

Two stores, both tagged //bench, d=64 clustered float32 vectors:
  entry  --rows (1M) embeddings held in ONE .npy entry (results are `path#row`)
  files  --files (100k) files, each carrying its own embedding (user.hk.embedding)

For each, the store is filled through the Store API, the daemon's EmbeddingCatalog
builds (trains) the vecindex index once (persisted under STORE/vectors, timed), the
store is mounted with `hk mount -f`, and --queries stored queries `qN.query` (k=10)
are written into @/bench. Then, in one run:
  in-process   vecindex.IVFIndex.open(<that index>).search(q, k=10)  (same index, same nprobe)
  mount read   open + read-to-EOF + close of @/bench/qN.query from this process (FUSE round trips:
               lookup, open, read, flush, release; the query is evaluated afresh on open)
  cat          `cat @/bench/qN.query` as a subprocess (adds fork+exec of cat, for reference)
Goal (issue 6): mount read <= 2 x in-process + 1 ms. Also checked: the mount returns the
same hits as the in-process search. Writes docs/bench/query.md.

    python scripts/bench_query.py                 # 1M-row entry and 100k files
    python scripts/bench_query.py --quick         # 100k rows / 10k files, a minute or two
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
        for eid, v in zip(ids, x, strict=True):
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


def mount(store: Path, mnt: Path) -> subprocess.Popen:
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(HK + ["mount", "-f", str(store), str(mnt)],
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


def run_case(name: str, store: Path, mnt: Path, ns: int, nq: int, rounds: int) -> dict:
    sdir = store / "vectors" / f"ns{ns}-d{DIM}"
    import json
    index = IVFIndex.open(sdir / json.loads((sdir / "manifest.json").read_text())["index"])
    rng = np.random.default_rng(9)
    queries = rng.normal(size=(nq, DIM)).astype(np.float32)
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
        t_in, t_mnt, t_cat, t_plain = [], [], [], []
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
            for i in range(nq):
                t = time.perf_counter()
                out = read_all(str(bench / f"q{i}.query"))
                t_mnt.append(time.perf_counter() - t)
                rows = [ln.split("\t")[1] for ln in out.decode().splitlines()]
                agree += sum(a.endswith(b) for a, b in zip(rows, want[i], strict=False)) == K
            for _i in range(nq):
                t = time.perf_counter()
                read_all(str(bench / "plain.txt"))
                t_plain.append(time.perf_counter() - t)
        for i in range(min(nq, 50)):
            t = time.perf_counter()
            subprocess.run(["cat", str(bench / f"q{i}.query")], stdout=subprocess.DEVNULL, check=True)
            t_cat.append(time.perf_counter() - t)
    finally:
        unmount(mnt, proc)
    info = index.info()
    return {"case": name, "rows": info["rows"], "nlist": info["nlist"], "nprobe": info["default_nprobe"],
            "in": ms(t_in), "mnt": ms(t_mnt), "cat": ms(t_cat), "plain": ms(t_plain),
            "agree": agree / (rounds * nq)}


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
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100k rows, 10k files, 30 queries")
    ap.add_argument("--work", type=Path, default=None, help="Where the stores go (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="Do not write docs/bench/query.md")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.files, a.queries = 100_000, 10_000, 30
    work = Path(tempfile.mkdtemp(prefix="bench-query-", dir=a.work))
    results, builds = [], {}
    try:
        print(f"entry: {a.rows} rows x {DIM} in one .npy", flush=True)
        ns, builds["entry"] = fill_entry(work / "s1", a.rows)
        print(f"  index built in {builds['entry']:.1f}s", flush=True)
        results.append(run_case("one .npy entry", work / "s1", work / "m1", ns, a.queries, a.rounds))
        print(results[-1], flush=True)
        print(f"files: {a.files} files with their own embedding", flush=True)
        ns, builds["files"] = fill_files(work / "s2", a.files)
        print(f"  index built in {builds['files']:.1f}s", flush=True)
        with Store.open(work / "s2") as st:
            _NAMES.update({e.id: e.name for e in st.match(ns, ["//bench"])})
        results.append(run_case("files with own embedding", work / "s2", work / "m2", ns, a.queries, a.rounds))
        print(results[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(results, builds, a)
    print(table)
    if not a.no_write:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "query.md").write_text(table)
        print(f"wrote {DOCS / 'query.md'}")


def render(results: list[dict], builds: dict[str, float], a: argparse.Namespace) -> str:
    lines = [
        "# `.query` latency: through the mount vs in-process vecindex",
        "",
        f"Written by `python scripts/bench_query.py{' --quick' if a.quick else ''}` "
        f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average at the end "
        f"{os.getloadavg()[0]:.1f}). d={DIM} clustered float32, "
        f"k={K}, cosine, {a.queries} stored queries, {a.rounds} rounds of alternating blocks "
        "(all in-process searches, then all mount reads, then the plain-file reads); medians (p90) in ms.",
        "",
        "- **in-process**: `IVFIndex.search` on the very index the daemon uses (same nprobe).",
        "- **mount read**: open + read to EOF + close of `@/bench/qN.query` (FUSE lookup, open "
        "(the query is evaluated here, afresh), read, flush, release).",
        "- **plain file**: open + read + close of an ordinary 400-byte file in the same view: the "
        "FUSE floor any read through this mount pays (Python daemon, kernel round trips).",
        "- **cat**: the same through `cat` in a subprocess (adds fork+exec).",
        "- **goal**: mount read <= 2 x in-process + 1 ms.",
        "",
        "| case | embeddings | nlist | nprobe | in-process | mount read | ratio | goal (ms) | met "
        "| plain file | cat | same hits |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        goal = 2 * r["in"][0] + 1
        lines.append(
            f"| {r['case']} | {r['rows']:,} | {r['nlist']} | {r['nprobe']} | "
            f"{r['in'][0]:.2f} ({r['in'][1]:.2f}) | {r['mnt'][0]:.2f} ({r['mnt'][1]:.2f}) | "
            f"{r['mnt'][0] / r['in'][0]:.2f} | {goal:.2f} | {'yes' if r['mnt'][0] <= goal else 'NO'} | "
            f"{r['plain'][0]:.2f} | {r['cat'][0]:.2f} | {100 * r['agree']:.0f}% |")
    lines += ["", "Index build (read the embeddings, train the lists, write the index), done once by the "
              "daemon's background worker and persisted under STORE/vectors:", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in builds.items()]
    lines += ["", "\"same hits\": share of queries whose k paths through the mount equal the in-process "
              "ids, in order.", "",
              "Reading the table: a read through the mount pays the FUSE floor of this Python daemon "
              "(the plain-file column: lookup, open, read, flush, release) plus the evaluation "
              "(parse the stored body, check the catalog version, search, name the hits, about "
              "0.3-0.5 ms of Python beyond the search). With a search of a few ms (the 1M-row entry) "
              "that fits the goal; with sub-millisecond searches the floor alone is close to "
              "2 x search + 1 ms. The machine is shared (other test suites and benchmarks run beside); "
              f"the load average was {LOAD0:.1f} at the start and is given at the top for the end, and "
              "medians move by a few ms between runs under such load.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
