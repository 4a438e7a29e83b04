"""`.query` files through a real mount: brute-force equality, scope (views, DKL of directories),
changes visible to the next read, EINVAL for malformed queries, reads while another process writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

D = 6


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def save_npy(path: Path, rows: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, rows.astype(np.float32))


def set_embedding(path: Path, v: np.ndarray) -> None:
    os.setxattr(path, "user.hk.embedding", " ".join(f"{x:.9g}" for x in v).encode())


def expected(q: np.ndarray, items: dict[str, np.ndarray], k: int) -> list[str]:
    names = list(items)
    s = unit(np.stack([items[n] for n in names])) @ unit(q)
    order = np.argsort(-s, kind="stable")[:k]
    return [names[i] for i in order]


def hits(text: str) -> list[str]:
    lines = text.splitlines()
    for ln in lines:
        score, _, path = ln.partition("\t")
        float(score)
        assert path, ln
    return [ln.split("\t", 1)[1] for ln in lines]


def query_body(q: np.ndarray, k: int | None = None) -> str:
    return " ".join(f"{x:.9g}" for x in q) + (f"\nk={k}\n" if k else "\n")


@pytest.fixture
def photos(mount):
    """//photo, //animal/dog, //animal/cat; an .npy entry of 30 rows (photo+dog), one of 20 rows
    (photo+cat), and 12 text files with their own embedding (half photo+dog, half photo)."""
    m = mount.root
    for d in ("@/photo", "@/animal", "@/animal/dog", "@/animal/cat"):
        os.mkdir(m / d)
    rng = np.random.default_rng(3)
    items: dict[str, np.ndarray] = {}      # path under @/photo -> vector
    dogs = rng.normal(size=(30, D)).astype(np.float32)
    save_npy(m / "@/photo/@/animal/dog/dogs.npy", dogs)
    items.update({f"dogs.npy#{r}": dogs[r] for r in range(30)})
    cats = rng.normal(size=(20, D)).astype(np.float32)
    save_npy(m / "@/photo/@/animal/cat/cats.npy", cats)
    items.update({f"cats.npy#{r}": cats[r] for r in range(20)})
    for i in range(12):
        v = rng.normal(size=D).astype(np.float32)
        where = "@/photo/@/animal/dog" if i % 2 else "@/photo"
        (m / where / f"t{i}.txt").write_text(f"text {i}\n")
        set_embedding(m / where / f"t{i}.txt", v)
        items[f"t{i}.txt"] = v
    return mount, items, rng


def test_query_files_equal_brute_force(photos) -> None:
    mount, items, rng = photos
    m = mount.root
    for k in (1, 7, 62, 100):
        q = rng.normal(size=D).astype(np.float32)
        (m / "@/photo/q.query").write_text(query_body(q, k))
        out = mount.run("cat @/photo/q.query").stdout
        assert hits(out) == ["@/photo/" + p for p in expected(q, items, k)]
        scores = [float(ln.split("\t")[0]) for ln in out.splitlines()]
        assert scores == sorted(scores, reverse=True)
    # raw float32 bodies work too, and the stored query is listed like a file
    q = rng.normal(size=D).astype(np.float32)
    (m / "@/photo/raw.query").write_bytes(q.astype("<f4").tobytes())
    assert hits((m / "@/photo/raw.query").read_text()) == ["@/photo/" + p for p in expected(q, items, 10)]
    listing = mount.run("ls @/photo").stdout.split()
    assert "q.query" in listing and "raw.query" in listing
    assert not any(n.endswith(".npy.query") for n in listing)
    # stat size agrees with what a read returns
    size = os.stat(m / "@/photo/q.query").st_size
    assert size == len((m / "@/photo/q.query").read_bytes())


def test_scope_follows_view_and_directory_dkl(photos) -> None:
    mount, items, rng = photos
    m = mount.root
    q = rng.normal(size=D).astype(np.float32)
    body = query_body(q, 200)
    (m / "@/photo/q.query").write_text(body)
    (m / "@/photo/@/animal/dog/dq.query").write_text(body)    # (q.query would clash with ../q.query)
    all_hits = hits((m / "@/photo/q.query").read_text())
    dog_items = {p: v for p, v in items.items()
                 if p.startswith("dogs.npy") or (p.startswith("t") and int(p[1:].split(".")[0]) % 2)}
    dog_hits = hits((m / "@/photo/@/animal/dog/dq.query").read_text())
    assert all_hits == ["@/photo/" + p for p in expected(q, items, 200)]
    assert dog_hits == ["@/photo/@/animal/dog/" + p for p in expected(q, dog_items, 200)]
    assert len(dog_hits) == len(dog_items) < len(all_hits)
    # k hits however selective the view: 10 out of the 36 dog embeddings
    (m / "@/photo/@/animal/dog/k10.query").write_text(query_body(q, 10))
    assert len(hits((m / "@/photo/@/animal/dog/k10.query").read_text())) == 10
    # an ordinary directory: its own links, plus its DKL's matches as ',/NAME'
    mount.run("mkdir d && cp @/photo/@/animal/cat/cats.npy d/mine.npy")
    (m / "d/q.query").write_text(body)
    cat_rows = {f"mine.npy#{r}": v for r, v in enumerate(np.load(m / "d/mine.npy"))}
    assert hits((m / "d/q.query").read_text()) == ["d/" + p for p in expected(q, cat_rows, 200)]
    os.setxattr(m / "d", "user.hk.dkl", b"//animal/dog")
    with_dkl = {**cat_rows, **{",/" + p: v for p, v in dog_items.items()}}
    assert hits((m / "d/q.query").read_text()) == ["d/" + p for p in expected(q, with_dkl, 200)]


def test_file_query_virtual(photos) -> None:
    mount, items, rng = photos
    m = mount.root
    out = mount.run("cat @/photo/t3.txt.query").stdout
    me = items["t3.txt"]
    rest = {p: v for p, v in items.items() if p != "t3.txt"}
    assert hits(out) == ["@/photo/" + p for p in expected(me, rest, 10)]
    # scope: within the dog view only; a multi-row entry stands for the mean of its rows
    out = mount.run("cat @/animal/dog/dogs.npy.query").stdout
    dog_only = {p: v for p, v in items.items() if p.startswith("t") and int(p[1:].split(".")[0]) % 2}
    mean = unit(np.stack([items[f"dogs.npy#{r}"] for r in range(30)])).mean(axis=0)
    assert hits(out) == ["@/animal/dog/" + p for p in expected(mean, dog_only, 10)]
    r = mount.run("echo 1 2 3 4 5 6 > @/photo/t3.txt.query", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr        # virtual: read-only
    r = mount.run("cat @/photo/nothing.txt.query", check=False)
    assert r.returncode != 0 and "No such file" in r.stderr
    r = mount.run("cat @/photo/cats.npy.txt.query", check=False)
    assert r.returncode != 0 and "No such file" in r.stderr
    assert not any(n.endswith(".query") for n in mount.run("ls -a @/photo").stdout.split())
    assert os.stat(m / "@/photo/t3.txt.query").st_size == len((m / "@/photo/t3.txt.query").read_bytes())


def test_file_query_read_in_pieces_and_at_offsets(photos) -> None:
    """A result handle answers every READ with the bytes at its offset (libfuse is handed a copy
    of that part): small reads in turn, reads past the end, two handles at once, direct_io."""
    mount, _items, _rng = photos
    p = mount.root / "@/photo/t3.txt.query"
    whole = p.read_bytes()
    assert whole.count(b"\n") == 10
    fd, fd2 = os.open(p, os.O_RDONLY), os.open(p, os.O_RDONLY)    # (the second: direct_io)
    try:
        for f in (fd, fd2):
            assert b"".join(os.pread(f, 7, off) for off in range(0, len(whole), 7)) == whole
            assert os.pread(f, 100, len(whole) - 5) == whole[-5:]
            assert os.pread(f, 100, len(whole) + 10) == b""
        assert os.read(fd, 1 << 20) == whole and os.read(fd, 10) == b""
    finally:
        os.close(fd)
        os.close(fd2)


def test_writes_retags_deletes_show_in_next_read(photos) -> None:
    mount, items, rng = photos
    m = mount.root
    q = rng.normal(size=D).astype(np.float32)
    (m / "@/photo/q.query").write_text(query_body(q, 500))
    (m / "@/animal/cat/q.query").write_text(query_body(q, 500))
    # a new entry is searchable at once
    new = np.stack([q, -q]).astype(np.float32)
    save_npy(m / "@/photo/new.npy", new)
    items.update({"new.npy#0": new[0], "new.npy#1": new[1]})
    got = hits((m / "@/photo/q.query").read_text())
    assert got[0] == "@/photo/new.npy#0" and got == ["@/photo/" + p for p in expected(q, items, 500)]
    # retag: mv into the cat view adds //animal/cat; the cat query sees it
    assert "@/animal/cat/new.npy#0" not in hits((m / "@/animal/cat/q.query").read_text())
    mount.run("mv @/photo/new.npy @/photo/@/animal/cat/new.npy")
    assert hits((m / "@/animal/cat/q.query").read_text())[0] == "@/animal/cat/new.npy#0"
    # an own embedding changed with setfattr
    near = (q + 0.3 * rng.normal(size=D)).astype(np.float32)
    mount.run(f"setfattr -n user.hk.embedding -v '{' '.join(f'{x:.9g}' for x in near)}' @/photo/t0.txt")
    items["t0.txt"] = near
    got = hits((m / "@/photo/q.query").read_text())
    assert got == ["@/photo/" + p for p in expected(q, items, 500)]
    # rewriting an entry's bytes in place
    save_npy(m / "@/photo/new.npy", -new)
    items.update({"new.npy#0": -new[0], "new.npy#1": -new[1]})
    assert hits((m / "@/photo/q.query").read_text()) == ["@/photo/" + p for p in expected(q, items, 500)]
    # rm in a view detaches: gone from //animal/cat, still in //photo; hk rme deletes
    mount.run("rm @/animal/cat/new.npy")
    assert not any("new.npy" in h for h in hits((m / "@/animal/cat/q.query").read_text()))
    assert any("new.npy" in h for h in hits((m / "@/photo/q.query").read_text()))
    mount.run("cd @/photo && hk rme new.npy")
    del items["new.npy#0"], items["new.npy#1"]
    assert hits((m / "@/photo/q.query").read_text()) == ["@/photo/" + p for p in expected(q, items, 500)]


def test_malformed_queries_fail_with_einval(photos) -> None:
    mount, items, rng = photos
    # bash's own echo: the write itself fails for what is malformed whatever follows
    for body in ("1 2 x 4 5 6", "1 nan 2 3 4 5", "1 2 3 4 5 6\nk=0"):
        r = mount.run(f"echo '{body}' > @/photo/bad.query", check=False)
        assert r.returncode != 0 and "Invalid argument" in r.stderr, (body, r.stderr)
    # a wrong dimension is known only when the file is closed: close() fails with EINVAL
    # (bash ignores close errors of its redirections; /bin/echo, python, cp report it) ...
    r = mount.run("/bin/echo 1 2 3 > @/photo/bad3.query", check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r.stderr
    with pytest.raises(OSError) as ei:
        with open(mount.root / "@/photo/bad4.query", "w") as f:
            f.write("1 2 3\n")
    assert ei.value.errno == 22
    # ... and every read of such a stored query fails with EINVAL too
    r = mount.run("cat @/photo/bad4.query", check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    r = mount.run("hk query //photo --vector '1 2 3'", check=False)
    assert r.returncode != 0 and "dimension 3" in r.stderr and "dimension 6" in r.stderr
    r = mount.run("setfattr -n user.hk.embedding -v 'a b' @/photo/t0.txt", check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    # hk query prints what the .query file reads
    q = rng.normal(size=D).astype(np.float32)
    (mount.root / "@/photo/q.query").write_text(query_body(q, 5))
    a = (mount.root / "@/photo/q.query").read_text()
    b = mount.run(f"cd @/photo && hk query --vector '{' '.join(f'{x:.9g}' for x in q)}' -k 5").stdout
    assert a == b
    c = mount.run("hk query //photo --like @/photo/t3.txt").stdout
    assert c == mount.run("cat @/photo/t3.txt.query").stdout


def test_queries_answer_while_another_process_writes(photos) -> None:
    mount, items, rng = photos
    m = mount.root
    q = rng.normal(size=D).astype(np.float32)
    (m / "@/photo/q.query").write_text(query_body(q, 20))
    writer = subprocess.Popen([sys.executable, "-c", f"""
import numpy as np, os
rng = np.random.default_rng(11)
for i in range(40):
    x = rng.normal(size=(3, {D})).astype(np.float32)
    with open({str(m / '@/photo')!r} + f'/w{{i}}.npy', 'wb') as f:
        np.save(f, x)
    np.save({str(mount.store)!r} + f'/../w{{i}}.npy', x)
"""])
    reads = 0
    try:
        while writer.poll() is None or reads < 5:
            out = (m / "@/photo/q.query").read_text()
            assert len(hits(out)) == 20
            reads += 1
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    for i in range(40):
        x = np.load(mount.store.parent / f"w{i}.npy")
        items.update({f"w{i}.npy#{r}": x[r] for r in range(3)})
    deadline = time.monotonic() + 5
    want = ["@/photo/" + p for p in expected(q, items, 20)]
    while hits((m / "@/photo/q.query").read_text()) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hits((m / "@/photo/q.query").read_text()) == want


def test_entry_formats_and_raw_embedding_through_the_mount(mount) -> None:
    from vecindex.io import write_fvecs
    m = mount.root
    os.mkdir(m / "@/v")
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, D)).astype(np.float32), rng.normal(size=(3, D)).astype(np.float32)
    write_fvecs(m / "@/v/a.fvecs", a)
    b.astype("<f4").tofile(m / "@/v/b.f32")
    items = {f"a.fvecs#{r}": a[r] for r in range(4)}
    q = rng.normal(size=D).astype(np.float32)
    (m / "@/v/q.query").write_text(query_body(q, 50))
    assert hits((m / "@/v/q.query").read_text()) == ["@/v/" + p for p in expected(q, items, 50)]
    os.setxattr(m / "@/v/b.f32", "user.hk.dim", str(D).encode())     # now b.f32 is an entry
    items.update({f"b.f32#{r}": b[r] for r in range(3)})
    c = rng.normal(size=D).astype(np.float32)
    (m / "@/v/c.bin").write_bytes(b"x")
    os.setxattr(m / "@/v/c.bin", "user.hk.embedding", c.astype("<f4").tobytes())   # raw float32
    items["c.bin"] = c
    assert hits((m / "@/v/q.query").read_text()) == ["@/v/" + p for p in expected(q, items, 50)]
    with pytest.raises(OSError) as ei:
        os.setxattr(m / "@/v/b.f32", "user.hk.dim", b"zero")
    assert ei.value.errno == 22


def test_stored_query_body_survives_refused_writes_and_editors(photos) -> None:
    """Issue 11 item 5: a refused write keeps the previous body (vim saving the results it
    read, `k=abc`); the body is read and set through user.hk.query and `hk query --show`;
    `cp a.query b.query` copies the query."""
    mount, items, rng = photos
    q = rng.normal(size=D).astype(np.float32)
    body = query_body(q, 3)
    (mount.root / "@/photo/q.query").write_text(body)
    results = (mount.root / "@/photo/q.query").read_text()
    assert len(results.splitlines()) == 3
    env = {"BODY": body.rstrip("\n"), "RESULTS": results.rstrip("\n")}     # as $(...) gives them
    mount.run("""
        cd @/photo
        test "$(getfattr --only-values -n user.hk.query q.query)" = "$BODY"
        test "$(hk query --show q.query)" = "$BODY"
        # a bad option line: refused, not dropped; the body stays
        fails_with "Invalid argument" bash -c 'printf "1 2 3 4 5 6\\nk=abc\\n" > q.query'
        test "$(getfattr --only-values -n user.hk.query q.query)" = "$BODY"
        # vim edits the results it read: the write is refused, the body stays
        not vim -Es -N -u NONE -i NONE -c '%s/^/9/' -c 'wq' q.query
        test "$(getfattr --only-values -n user.hk.query q.query)" = "$BODY"
        test "$(cat q.query)" = "$RESULTS"
        # vim saves unchanged: accepted, the same query
        vim -Es -N -u NONE -i NONE -c 'wq' q.query
        test "$(getfattr --only-values -n user.hk.query q.query)" = "$BODY"
        test "$(cat q.query)" = "$RESULTS"
        # cp of a stored query copies the query (its results name it); of FILE.query, the
        # file's vector as a stored query
        cp q.query copy.query
        test "$(getfattr --only-values -n user.hk.query copy.query)" = "$BODY"
        test "$(cat copy.query)" = "$RESULTS"
        cp t2.txt.query like2.query
        test "$(head -1 like2.query | cut -f2)" = @/photo/t2.txt      # (a stored query keeps it)
        test "$(tail -n +2 like2.query | cut -f2)" = "$(head -9 t2.txt.query | cut -f2)"
        getfattr --only-values -n user.hk.query like2.query | grep -qx 'k=10'
        # setfattr user.hk.query replaces the body, only with a valid one
        setfattr -n user.hk.query -v "$(printf '1 1 1 1 1 1\\nk=2')" q.query
        test "$(cat q.query | wc -l)" = 2
        fails_with "Invalid argument" setfattr -n user.hk.query -v "1 2 3" q.query
        test "$(cat q.query | wc -l)" = 2
        fails_with "Invalid argument" getfattr -n user.hk.query t2.txt
        # a truncate that would leave a bad body is refused
        fails_with "Invalid argument" truncate -s 3 q.query
        test "$(cat q.query | wc -l)" = 2
        # appending an option line changes the query (the body, not the results, grows)
        printf '1 1 1 1 1 1\n' > q.query
        echo k=4 >> q.query
        test "$(cat q.query | wc -l)" = 4
        test "$(hk query --show q.query)" = "$(printf '1 1 1 1 1 1\nk=4')"
    """, env=env)


def test_queries_in_views_with_operators(photos) -> None:
    """FILE.query in an @not / @or / @only view answers over that view's files, named as it
    lists them (was EINVAL: the hits' names asked for the children of '@not/animal'), and
    `hk query` takes the same specs."""
    mount, items, _rng = photos
    me = items["t2.txt"]                                   # //photo only (even i)
    not_dog = {p: v for p, v in items.items() if p.startswith("t") and int(p[1:].split(".")[0]) % 2 == 0}
    rest = {p: v for p, v in not_dog.items() if p != "t2.txt"}
    want = ["@/photo/@/@not/animal/" + p for p in expected(me, rest, 5)]
    out = mount.run("cat @/photo/@/@not/animal/t2.txt.query").stdout
    assert hits(out) == want
    q = " ".join(f"{x:.9g}" for x in me)
    out = mount.run(f"hk query '//photo//@not/animal' --vector '{q}' -k 3").stdout
    assert hits(out) == ["@/photo/@/@not/animal/" + p for p in expected(me, not_dog, 3)]
    out = mount.run("cat @/animal/cat/@/@or/photo/t2.txt.query").stdout   # //animal/cat or //photo
    assert len(hits(out)) == 10 and all(h.startswith("@/animal/cat/@/@or/photo/") for h in hits(out))
    out = mount.run("cat @/@only/photo/t2.txt.query").stdout      # every file carries //photo itself
    assert hits(out) == ["@/@only/photo/" + p for p in expected(me, {p: v for p, v in items.items()
                                                                      if p != "t2.txt"}, 10)]



def test_file_query_grown_since_the_kernel_was_told_its_size_is_read_whole(mount) -> None:
    """The kernel may open a `.query` path without looking it up again (a reopen through
    /proc/self/fd; a commit the daemon has not seen yet), holding the size of an older result.
    A result that grew since is read whole (its handle is direct_io), never cut to the old size."""
    from hkfs.core.store import Store
    m = mount.root
    os.mkdir(m / "@/b")
    for i in range(1, 4):
        (m / f"@/b/f{i}").write_text(f"{i}\n")
        set_embedding(m / f"@/b/f{i}", np.array([i, 1, 0], np.float32))
    path = m / "@/b/f1.query"
    assert len(hits(path.read_text())) == 2              # looked up: the kernel holds its size
    held = os.open(path, os.O_PATH)                       # the inode, without a handle of ours
    try:
        long = "a-much-longer-name-than-any-other-file-here.txt"
        with Store.open(mount.store) as st:               # another process adds a near twin
            ns = st.namespace_id(os.getuid())
            f1 = st.match_ids(ns, ["//b"], "f1")[0]
            twin = st.create(ns, long, hks=["//b"], uid=os.getuid(), gid=os.getgid())
            st.set_xattr("file", twin, "user.hk.embedding", st.get_xattr("file", f1, "user.hk.embedding"))
        fd = os.open(f"/proc/self/fd/{held}", os.O_RDONLY)   # no lookup: the old size
        try:       # os.read, no fstat (cat's and open()'s fstat would ask for the size again)
            got = hits(b"".join(iter(lambda: os.read(fd, 1 << 16), b"")).decode())
        finally:
            os.close(fd)
        assert got[0] == f"@/b/{long}" and len(got) == 3, got
        assert hits(path.read_text()) == got              # looked up again: the same, page-cached
    finally:
        os.close(held)


def _catalog_descriptors(pid: int) -> int:
    """How many descriptors of process pid name the store's catalog (one per SQLite connection)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").endswith("/catalog.sqlite")
        except OSError:
            pass              # closed meanwhile
    return n


def test_requests_share_the_connection_given_back_last(mount_factory) -> None:
    """libfuse hands each request to the worker thread that has waited longest, so one `cat
    FILE.query` (lookup, open, read, release) goes round its threads: the catalog lends each
    request the connection given back last (Catalog.lend) instead of each thread opening its
    own, whose page cache would be ~10 requests old. Read one at a time (a result's release,
    which may overlap the next lookup, reads no catalog), the requests add no connection, not
    one per worker thread that served them."""
    def fill(store: Path) -> None:
        from hkfs.core.store import Store
        from hkfs.query.embeddings import EMBEDDING_ATTR
        rng = np.random.default_rng(8)
        with Store.open(store) as st:
            ns = st.namespace_id(os.getuid())
            st.mkkw(ns, "//photo")
            for i in range(12):
                eid = st.create(ns, f"t{i}.txt", hks=["//photo"], uid=os.getuid(), gid=os.getgid())
                st.set_xattr("file", eid, EMBEDDING_ATTR, rng.normal(size=D).astype("<f4").tobytes())

    mount = mount_factory(fill=fill)
    pid = mount.proc.pid
    files = [mount.root / "@/photo" / f"t{i}.txt.query" for i in range(12)]
    assert files[0].read_bytes()                         # the index, the scope; one connection lent
    before = _catalog_descriptors(pid)
    for _ in range(4):
        for f in files:
            assert f.read_bytes()                        # a FILE.query read: 4 requests
            os.stat(f.with_suffix(""))                   # and the file's own attributes
    workers = len(os.listdir(f"/proc/{pid}/task"))
    assert _catalog_descriptors(pid) <= before, (before, _catalog_descriptors(pid), workers)
