"""What one `.query` read costs the daemon and what a commit elsewhere drops, without FUSE:
SQL statements of a FILE.query read (HKOperations called directly), the resolution memo kept
across a commit that names nothing anew, and when a result handle may be page-cached."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mfusepy")

from hkfs.core.store import Store  # noqa: E402
from hkfs.fuse.operations import HKOperations  # noqa: E402
from hkfs.mount.cached_reads import CachedReads  # noqa: E402
from hkfs.query.embeddings import EMBEDDING_ATTR  # noqa: E402

D = 4


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[HKOperations]:
    """A store with //b holding f0..f19, each with its own embedding; the operations over it."""
    st = Store.open(tmp_path / "store")
    ns = st.namespace_id(os.getuid())
    st.mkkw(ns, "//b")
    rng = np.random.default_rng(5)
    for i in range(20):
        eid = st.create(ns, f"f{i}.txt", hks=["//b"], uid=0, gid=0)
        st.set_xattr("file", eid, EMBEDDING_ATTR, rng.normal(size=D).astype("<f4").tobytes())
    o = HKOperations(st)
    yield o
    o.destroy("/")
    st.close()


def read(ops: HKOperations, path: str) -> bytes:
    """What `cat` makes the daemon do: lookup (getattr), open, read, release (the mount reads
    through read_buf, which hands libfuse the handle's descriptor: the layer's read here)."""
    ops.getattr(path)
    fh = ops.open(path, os.O_RDONLY)
    try:
        return ops.queries.read(fh, 1 << 16, 0)
    finally:
        ops.release(path, fh)


def traced(ops: HKOperations) -> Counter[str]:
    """Count the statements of every connection a read uses (this thread's catalog connection,
    the change feed's, the embedding catalog's), by their first word(s)."""
    seen: Counter[str] = Counter()

    def note(sql: str) -> None:
        words = sql.split()
        seen[" ".join(words[:2]) if words[0] == "PRAGMA" else words[0]] += 1

    for conn in (ops.store.catalog.connection(), ops.changes._conn,
                 ops.queries.catalog._connection()):
        assert conn is not None
        conn.set_trace_callback(note)
    return seen


def test_first_file_query_read_checks_the_version_once_a_request(ops: HKOperations) -> None:
    read(ops, "/@/b/f0.txt.query")                 # the index, the scope: built once
    seen = traced(ops)
    out = read(ops, "/@/b/f1.txt.query")
    assert len(out.decode().splitlines()) == 10     # k=10 of the 19 others
    # getattr and open: the memo pin, whose generations the query layer holds too; release: none
    assert seen["PRAGMA data_version"] <= 2
    # the file's vector: a statement; the two names in the view (the query's and the file's, in
    # one statement) and the names of its hits: a transaction each
    assert seen["BEGIN"] <= 2
    assert sum(seen.values()) <= 12


def test_first_read_after_an_unrelated_commit_reads_no_directory_row(ops: HKOperations,
                                                                     tmp_path: Path) -> None:
    """A note set by another process moves data_version only: the path walk's directory (its
    namespace and DKL, kept per files_gen) is not read again; the generations are, once."""
    read(ops, "/@/b/f0.txt.query")
    with Store.open(tmp_path / "store") as other:
        other.set_xattr("file", other.match_ids(ops.model.ns, ["//b"])[0], "user.note", b"x")
    seen = traced(ops)
    assert len(read(ops, "/@/b/f1.txt.query").decode().splitlines()) == 10
    assert seen["SELECT"] <= 5             # counters, the keyword, the two names, the vector, the hits' names
    assert seen["BEGIN"] <= 1
    assert sum(seen.values()) <= 9


def test_unrelated_commit_keeps_resolution_memoised(ops: HKOperations, tmp_path: Path) -> None:
    reads: CachedReads = ops.reads
    ns = ops.model.ns
    assert reads.keyword_children(ns, ()) == {"b": None}
    kept = reads.structure()
    with Store.open(tmp_path / "store") as other:     # another process's connection
        eid = other.match_ids(ns, ["//b"])[0]
        other.set_xattr("file", eid, "user.note", b"x")  # moves data_version, not files_gen
        assert reads.structure() is kept
        seen = traced(ops)
        assert reads.keyword_children(ns, ()) == {"b": None}
        assert "SELECT" not in seen
        other.mkkw(ns, "//c")                            # names something: files_gen moves
    assert reads.structure() is not kept
    assert reads.keyword_children(ns, ()) == {"b": None, "c": None}


def test_result_handle_page_cached_only_when_the_kernel_holds_its_size(ops: HKOperations,
                                                                      tmp_path: Path) -> None:
    q = ops.queries
    path = "/@/b/f2.txt.query"
    fh = q.open(path, os.O_RDONLY)                  # no size told yet: direct_io
    assert fh is not None and not q.cached(fh)
    q.release(fh)
    size = q.getattr(path)["st_size"]
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and q.cached(fh)
    second = q.open(path, os.O_RDONLY)              # the page cache is the inode's: one handle only
    assert second is not None and not q.cached(second)
    q.release(second)
    q.release(fh)
    # another process adds a near twin with a long name: a longer result than the size told
    with Store.open(tmp_path / "store") as other:
        ns = ops.model.ns
        mine = other.match_ids(ns, ["//b"], "f2.txt")[0]
        twin = other.create(ns, "a-much-longer-name-than-the-others.txt", hks=["//b"], uid=0, gid=0)
        other.set_xattr("file", twin, EMBEDDING_ATTR, other.get_xattr("file", mine, EMBEDDING_ATTR))
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and not q.cached(fh)      # the kernel would cut it at the old size
    data = q.read(fh, 1 << 16, 0)
    assert len(data) > size and data.decode().splitlines()[0].endswith("a-much-longer-name-than-the-others.txt")
    q.release(fh)


def test_overlapping_getattrs_leave_the_size_unknown(ops: HKOperations,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    q = ops.queries
    path = "/@/b/f3.txt.query"
    inner = q._getattr
    nested = [True]

    def overlapped(p: str, fh: int | None) -> object:
        if nested and p == path:
            nested.clear()
            q.getattr(p)          # a second getattr of the path while this one is under way
        return inner(p, fh)

    monkeypatch.setattr(q, "_getattr", overlapped)
    q.getattr(path)
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and not q.cached(fh)      # which reply the kernel kept is unknown
    q.release(fh)
    q.getattr(path)                                 # told again, alone
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and q.cached(fh)
    q.release(fh)


def test_a_body_written_leaves_the_size_untold(ops: HKOperations) -> None:
    """Writes through a stored query's staging handle move the kernel's size: no result handle
    is page-cached while one is open, nor after it, until a lookup tells the size again."""
    q = ops.queries
    path = "/@/b/near.query"
    fh = ops.create(path, 0o644, os.O_WRONLY)
    ops.write(path, b"1 0 0 0\nk=3\n", 0, fh)
    ops.flush(path, fh)
    ops.release(path, fh)
    q.getattr(path)
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and q.cached(fh)
    q.release(fh)
    writer = q.open(path, os.O_WRONLY | os.O_TRUNC)
    assert writer is not None
    q.getattr(path)                                   # while a body is being written
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and not q.cached(fh)
    q.release(fh)
    q.write(writer, b"0 1 0 0\nk=3\n", 0)
    q.flush(writer)
    q.release(writer)
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and not q.cached(fh)        # not told since the write
    q.release(fh)
    q.getattr(path)
    fh = q.open(path, os.O_RDONLY)
    assert fh is not None and q.cached(fh)
    q.release(fh)
