"""Pending single-row sources spilled to a file (issue 12 goal 6: a daemon seeing a million
embeddings it never indexed stays bounded): the same hits as brute force before, during and
after builds, a killed process leaves nothing behind and the next one rebuilds, the catalog's
memory per new source, and the base built in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from hkfs.core.store import Store
from hkfs.query import build_child
from hkfs.query import embeddings as emb
from hkfs.query.embeddings import DIM_ATTR, EMBEDDING_ATTR, EmbeddingCatalog, sorted_ids

D = 8
REPO = Path(__file__).resolve().parents[1]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute(q: np.ndarray, items: dict[tuple[int, int | None], np.ndarray], k: int,
          keep=lambda key: True) -> list[tuple[int, int | None]]:
    keys = [kk for kk in items if keep(kk)]
    s = unit(np.stack([items[kk] for kk in keys])) @ unit(q)
    return [keys[i] for i in np.argsort(-s, kind="stable")[:k]]


def got(hits) -> list[tuple[int, int | None]]:
    return [(h.eid, h.row) for h in hits]


def fill(st: Store, n: int, rng: np.random.Generator) -> tuple[int, dict]:
    """n files with their own embedding (every other one tagged //even), a 30-row entry and a one-row .f32."""
    ns = st.namespace_id("alice")
    st.mkkw(ns, "//even", parents=True)
    st.mkkw(ns, "//all", parents=True)
    items: dict[tuple[int, int | None], np.ndarray] = {}
    with st.catalog.write():
        for i in range(n):
            eid = st.create(ns, f"f{i}.txt", hks=["//all", "//even"] if i % 2 == 0 else ["//all"], uid=0, gid=0)
            v = rng.normal(size=D).astype(np.float32)
            st.set_xattr("file", eid, EMBEDDING_ATTR, v.tobytes())
            items[(eid, None)] = v
    for name, rows in (("many.npy", rng.normal(size=(30, D))), ("one.f32", rng.normal(size=(1, D)))):
        eid = st.create(ns, name, hks=["//all", "//even"], uid=0, gid=0)
        p = st.entity_path(eid)
        if name.endswith(".npy"):
            with open(p, "wb") as f:
                np.save(f, rows.astype(np.float32))
        else:
            rows.astype("<f4").tofile(p)
            st.set_xattr("file", eid, DIM_ATTR, str(D).encode())
        info = p.stat()
        st.set_attrs(eid, size=info.st_size, mtime_ns=info.st_mtime_ns + 1)
        items.update({(eid, r if len(rows) > 1 else None): rows[r].astype(np.float32) for r in range(len(rows))})
    return ns, items


@contextmanager
def catalog(tmp_path: Path, n: int, seed: int) -> Iterator[tuple]:
    """A store of fill(n) and a writable catalog that has read it: (st, ns, items, cat, rng)."""
    rng = np.random.default_rng(seed)
    with Store.open(tmp_path / "store") as st:
        ns, items = fill(st, n, rng)
        cat = EmbeddingCatalog(st)
        try:
            cat.refresh(ns)
            yield st, ns, items, cat, rng
        finally:
            cat.stop()


def check(cat: EmbeddingCatalog, st: Store, ns: int, items: dict, rng: np.random.Generator, tag: str) -> None:
    even = sorted_ids(st.match_ids(ns, ["//even"]))
    evens = set(even.tolist())
    for t in range(4):
        q = rng.normal(size=D).astype(np.float32)
        scope = even if t % 2 else None
        exclude = int(even[t]) if t >= 2 else None
        for k in (1, 5, 40):
            want = brute(q, items, k, lambda kk, s=scope, x=exclude: (s is None or kk[0] in evens) and kk[0] != x)
            hits = cat.search(ns, q, k, scope=scope, scope_token=("even", tag) if scope is not None else None,
                              exclude=exclude)
            assert got(hits) == want, (tag, t, k)


def test_spilled_rows_give_the_same_hits(monkeypatch, tmp_path: Path) -> None:
    """Single-row sources live in the spill file (read SPILL_READ rows at a time), the entry of
    several rows stays a pending object; changes, removals, a build with changes made while it
    runs (their rows move to a fresh spill file), all answer as brute force."""
    monkeypatch.setattr(emb, "SPILL_READ", 7)
    monkeypatch.setattr(emb, "LOAD_CHUNK", 13)
    with catalog(tmp_path, 300, 3) as (st, ns, items, cat, rng):
        sh = cat._shards[(ns, D)]
        assert len(sh.spilled) == 301 and len(sh.pending) == 1
        assert cat.stats()[f"ns{ns}-d{D}"]["pending_rows"] == 331
        check(cat, st, ns, items, rng, "first")
        own = [kk[0] for kk in items if kk[1] is None][:300]
        for eid in own[:20]:                       # changed, then removed
            v = rng.normal(size=D).astype(np.float32)
            st.set_xattr("file", eid, EMBEDDING_ATTR, v.tobytes())
            items[(eid, None)] = v
        for eid in own[20:30]:
            st.rme(eid)
            del items[(eid, None)]
        cat.refresh(ns)
        assert len(cat._shards[(ns, D)].spilled) == 291
        check(cat, st, ns, items, rng, "changed")

        built = emb._build_base

        def build_and_change(*a, **kw):      # commits while the base builds
            for eid in own[30:35]:
                v = rng.normal(size=D).astype(np.float32)
                st.set_xattr("file", eid, EMBEDDING_ATTR, v.tobytes())
                items[(eid, None)] = v
            cat.refresh(ns)
            return built(*a, **kw)

        monkeypatch.setattr(emb, "_build_base", build_and_change)
        old_file = cat._shards[(ns, D)].spill
        cat.rebuild(ns, D)
        sh = cat._shards[(ns, D)]
        assert len(sh.spilled) == 5 and sh.spill is not old_file and sh.spilled.file is sh.spill
        check(cat, st, ns, items, rng, "during")
        monkeypatch.setattr(emb, "_build_base", built)
        cat.rebuild(ns, D)
        sh = cat._shards[(ns, D)]
        assert len(sh.spilled) == 0 and sh.spill is None
        assert cat.stats()[f"ns{ns}-d{D}"]["pending_rows"] == 0
        check(cat, st, ns, items, rng, "built")
        assert not list((tmp_path / "store" / "vectors").glob("spill*")), "spill files are unlinked"


def test_base_built_in_a_child_process(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(emb, "BUILD_CHILD_BYTES", 0)
    ran = []
    real = build_child.build_in_child
    monkeypatch.setattr(build_child, "build_in_child", lambda *a: ran.append(a) or real(*a))
    with catalog(tmp_path, 200, 4) as (st, ns, items, cat, rng):
        cat.rebuild(ns, D)
        assert len(ran) == 1 and cat.stats()[f"ns{ns}-d{D}"]["base_rows"] == len(items)
        check(cat, st, ns, items, rng, "child")
        gdir = next((tmp_path / "store" / "vectors" / f"ns{ns}-d{D}").glob("gen-*"))
        assert sorted(p.name for p in gdir.iterdir()) == ["index", "keys.npy"]


def test_a_failed_child_build_keeps_the_old_state(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(emb, "BUILD_CHILD_BYTES", 0)
    with catalog(tmp_path, 50, 6) as (st, ns, items, cat, rng):
        monkeypatch.setattr(emb, "METRIC", "no-such-metric")
        with pytest.raises(RuntimeError, match="child process"):
            cat.rebuild(ns, D)
        monkeypatch.setattr(emb, "METRIC", "cosine")
        assert cat.stats()[f"ns{ns}-d{D}"]["base_rows"] == 0
        check(cat, st, ns, items, rng, "failed")


KILLED = textwrap.dedent("""
    import os, signal, sys
    from hkfs.core.store import Store
    from hkfs.query import embeddings as emb
    where, path, ns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if where == "mid-spill":
        real = emb._SpillFile.append
        def append(self, row):
            if self.n == 150:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, row)
        emb._SpillFile.append = append
    st = Store.open(path)
    cat = emb.EmbeddingCatalog(st)
    cat.refresh(ns)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("where", ["mid-spill", "before-build"])
def test_killed_process_loses_nothing_and_the_next_rebuilds(tmp_path: Path, where: str) -> None:
    """A daemon killed while it spills new rows, or after (sources cache written, no base
    yet): nothing of it stays in STORE/vectors but that cache, and the next catalog answers
    as brute force and builds the base."""
    rng = np.random.default_rng(5)
    path = tmp_path / "store"
    with Store.open(path) as st:
        ns, items = fill(st, 400, rng)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", KILLED, where, str(path), str(ns)], env=env,
                          capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    vectors = path / "vectors"
    left = sorted(p.name for p in vectors.iterdir()) if vectors.exists() else []
    assert left == ([] if where == "mid-spill" else [f"sources-ns{ns}.npz"]), left
    with Store.open(path) as st:
        cat = EmbeddingCatalog(st)
        try:
            cat.refresh(ns)
            check(cat, st, ns, items, rng, "after kill")
            cat.start()
            assert cat.wait_idle()
            s = cat.stats()[f"ns{ns}-d{D}"]
            assert (s["base_rows"], s["pending_rows"]) == (len(items), 0)
            check(cat, st, ns, items, rng, "rebuilt")
        finally:
            cat.stop()


def test_new_sources_cost_their_columns_not_objects(tmp_path: Path) -> None:
    """Reading 20,000 new own embeddings (64-d) into the catalog: Python memory grows by a few
    dozen bytes a source (columns), not the ~1 KB of a pending object with its rows each."""
    n, d = 20_000, 64
    rng = np.random.default_rng(8)
    with Store.open(tmp_path / "store") as st:
        ns = st.namespace_id("alice")
        with st.catalog.write():
            for i in range(n):
                eid = st.create(ns, f"f{i}.txt", uid=0, gid=0)
                st.set_xattr("file", eid, EMBEDDING_ATTR, rng.normal(size=d).astype(np.float32).tobytes())
        cat = EmbeddingCatalog(st, writable=False)
        try:
            tracemalloc.start()
            try:
                cat.refresh(ns)
                cur, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert cat.stats()[f"ns{ns}-d{d}"]["pending_rows"] == n
            hits = cat.search(ns, rng.normal(size=d).astype(np.float32), 10)
            assert len(hits) == 10
        finally:
            cat.stop()
    assert cur < n * 200, f"{cur / n:.0f} bytes a source held"
    assert peak < n * 400 + (4 << 20), f"{peak / n:.0f} bytes a source at the peak"


ORPHAN = textwrap.dedent("""
    import os, subprocess, sys, time
    env = dict(os.environ, HKFS_BUILD_PARENT=str(os.getpid()))
    code = ("import os, time; from hkfs.query.build_child import die_with_parent; "
            "die_with_parent(int(os.environ['HKFS_BUILD_PARENT'])); print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    print(child.pid, flush=True)
    time.sleep(60)
""")


def test_a_build_child_dies_with_its_daemon(tmp_path: Path) -> None:
    """A daemon killed while its worker waits for a build in a child leaves no child behind."""
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    pid = 0
    try:
        pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid), "the build child outlived its daemon"
    finally:
        parent.kill()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)               # never leave it behind, even on failure


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
