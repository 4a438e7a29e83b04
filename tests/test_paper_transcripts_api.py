"""The paper's Figs. 1 and 2 replayed on the Store API (no FUSE, no CLI)."""

from __future__ import annotations

import pytest

from hkfs.core.errors import NameClash
from hkfs.core.fsck import check
from hkfs.core.naming import parse_hk, parse_hk_list
from hkfs.core.store import Store

TEX = ["main.aux", "main.dvi", "main.log", "main.tex"]


@pytest.fixture
def tada(tmp_path):
    """User tada's namespace: three LaTeX projects in ordinary directories, as before Fig. 1."""
    s = Store.open(tmp_path / "store")
    ns = s.namespace_id("tada")
    for hk in ("//workshop", "//SIG/DPS", "//society/IPSJ", "//SIG/OS"):
        s.mkkw(ns, parse_hk(hk), parents=True)
    root = s.root_dir(ns)
    for project in ("dps", "os", "ipsj-conf"):
        d = s.mkdir(root, project)
        for name in TEX:
            eid = s.create(ns, name, directory=d)
            s.entity_path(eid).write_text(f"{project}/{name}")
    # The two projects other than dps are already tagged //workshop.
    for project in ("os", "ipsj-conf"):
        d = s.lookup(root, project).id
        for e in s.listdir(d):
            s.atkw(e.id, parse_hk_list("//workshop"))
    yield s, ns, root
    s.close()


def test_fig1_attach_then_remove_directory(tada) -> None:
    s, ns, root = tada
    dps = s.lookup(root, "dps").id                      # cd dps
    assert [e.name for e in s.listdir(dps)] == TEX      # ls
    files = [e.id for e in s.listdir(dps)]
    for eid in files:                                   # atkw //society/IPSJ *
        s.atkw(eid, parse_hk_list("//society/IPSJ"))
    for eid in files:                                   # atkw //SIG/DPS//workshop *
        s.atkw(eid, parse_hk_list("//SIG/DPS//workshop"))
    for name in TEX:                                    # rm *
        s.unlink(dps, name)
    assert s.listdir(dps) == []
    s.rmdir(dps)                                        # cd .. ; rmdir dps
    assert s.lookup(root, "dps") is None
    # "the files are not lost, since they already carry HKs"
    for eid in files:
        e = s.entity(eid)
        assert e.nlinks == 0
        assert set(e.hks) == {("society", "IPSJ"), ("SIG", "DPS"), ("workshop",)}
        assert s.entity_path(eid).read_text().startswith("dps/")
    assert [p for p in check(s) if p.kind != "stale-size"] == []   # bytes written without record_bytes


def test_fig2_load_files(tada) -> None:
    s, ns, root = tada
    test_fig1_attach_then_remove_directory(tada)
    work = s.mkdir(root, "work")                        # mkdir work ; cd work
    s.akl(work, parse_hk_list("//workshop"))            # akl //workshop
    assert s.listdir(work) == []                        # ls (the directory is empty)
    ckl = s.dir(work).dkl
    assert ckl == (("workshop",),)
    assert s.name_counts(ns, ckl) == {n: 3 for n in TEX}   # ls , -> main.aux(3) ...
    with pytest.raises(NameClash) as ei:                # ldf -> Error: files with the same filename.
        s.ldf(work)
    assert ei.value.names == TEX
    assert s.listdir(work) == []                        # nothing was loaded
    s.akl(work, parse_hk_list("//SIG/DPS"))             # akl //SIG/DPS
    ckl = s.dir(work).dkl
    assert s.name_counts(ns, ckl) == {n: 1 for n in TEX}   # ls , -> main.aux main.dvi ...
    loaded = s.ldf(work)                                # ldf
    assert len(loaded) == 4
    entries = s.listdir(work)                           # ls
    assert [e.name for e in entries] == TEX
    assert all(s.entity_path(e.id).read_text() == f"dps/{e.name}" for e in entries)
    assert [p for p in check(s) if p.kind != "stale-size"] == []   # bytes written without record_bytes
