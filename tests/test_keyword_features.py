"""Keyword housekeeping (move, rename, merge) and query operators (@or, @not, @only,
@untagged) in the core and the CLI, without FUSE (issue 13). The mount side is in
tests/test_mount_tag_features.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from hkfs.cli.main import cli
from hkfs.core.errors import AlreadyExists, HKSyntaxError, InvalidArgument, NotFound
from hkfs.core.fsck import check
from hkfs.core.naming import compile_query, format_spec, list_matches, parse_hk, parse_spec
from hkfs.core.store import Store


@pytest.fixture
def st(tmp_path: Path):
    with Store.open(tmp_path / "store") as s:
        yield s


def _ns(s: Store) -> int:
    return s.namespace_id(os.geteuid())


# ------------------------------------------------------------------ move / rename / merge

def test_move_keyword_keeps_children_files_and_dkls(st: Store) -> None:
    ns = _ns(st)
    st.mkkw(ns, "//animal/dgo/poodle", parents=True)
    st.mkkw(ns, "//pet")
    f = st.create(ns, "f.jpg", hks=["//animal/dgo", "//pet"])
    p = st.create(ns, "p.jpg", hks=["//animal/dgo/poodle"])
    d = st.mkdir(st.root_dir(ns), "work")
    st.set_dkl(d, ["//pet", "//animal/dgo/poodle", "//animal"])
    kid = st.keywords(ns).index(("animal", "dgo"))
    st.move_keyword(ns, "//animal/dgo", "//pet/dog")
    assert st.keywords(ns) == [("animal",), ("pet",), ("pet", "dog"), ("pet", "dog", "poodle")]
    assert st.entity(f).hks == (("pet",), ("pet", "dog"))
    assert st.entity(p).hks == (("pet", "dog", "poodle"),)
    assert st.dir(d).dkl == (("pet",), ("pet", "dog", "poodle"), ("animal",))
    assert [e.name for e in st.match(ns, ["//pet/dog"])] == ["f.jpg", "p.jpg"]
    assert st.match(ns, ["//animal"]) == []
    assert check(st) == []
    assert kid is not None


def test_move_keyword_errors(st: Store) -> None:
    ns = _ns(st)
    st.mkkw(ns, "//a/b", parents=True)
    st.mkkw(ns, "//c")
    with pytest.raises(InvalidArgument, match="under itself"):
        st.move_keyword(ns, "//a", "//a/b/x")
    with pytest.raises(InvalidArgument, match="under itself"):
        st.move_keyword(ns, "//a", "//a")
    with pytest.raises(AlreadyExists, match="mergekw"):
        st.move_keyword(ns, "//a/b", "//c")
    with pytest.raises(NotFound, match="parent keyword //x"):
        st.move_keyword(ns, "//a/b", "//x/y")
    with pytest.raises(NotFound, match="no keyword //nope"):
        st.move_keyword(ns, "//nope", "//z")
    with pytest.raises(NotFound, match="to merge into"):
        st.move_keyword(ns, "//a/b", "//z", merge=True)
    with pytest.raises(HKSyntaxError):
        st.move_keyword(ns, "//a/b", "//@not")
    st.move_keyword(ns, "//a/b", "//x/y", parents=True)
    assert st.keywords(ns) == [("a",), ("c",), ("x",), ("x", "y")]


def test_merge_keyword_merges_namesake_children(st: Store) -> None:
    ns = _ns(st)
    for k in ("//pics/cats/tabby", "//pics/dogs", "//photo/cats"):
        st.mkkw(ns, k, parents=True)
    both = st.create(ns, "both.jpg", hks=["//pics", "//photo"])
    tabby = st.create(ns, "t.jpg", hks=["//pics/cats/tabby", "//photo/cats"])
    dog = st.create(ns, "d.jpg", hks=["//pics/dogs"])
    st.move_keyword(ns, "//pics", "//photo", merge=True)
    assert st.keywords(ns) == [("photo",), ("photo", "cats"), ("photo", "cats", "tabby"), ("photo", "dogs")]
    assert st.entity(both).hks == (("photo",),)
    assert st.entity(tabby).hks == (("photo", "cats"), ("photo", "cats", "tabby"))
    assert st.entity(dog).hks == (("photo", "dogs"),)
    assert check(st) == []


def test_replace_empty_and_namespaces(st: Store) -> None:
    ns, other = _ns(st), st.namespace_id("someone-else")
    st.mkkw(ns, "//a")
    st.mkkw(ns, "//empty")
    st.mkkw(other, "//a")
    o = st.create(other, "o.txt", hks=["//a"])
    st.create(ns, "f.txt", hks=["//a"])
    st.move_keyword(ns, "//a", "//empty", replace_empty=True)     # rename(2) over an empty directory
    assert st.keywords(ns) == [("empty",)]
    assert st.keywords(other) == [("a",)]                         # another namespace is untouched
    assert st.entity(o).hks == (("a",),)
    st.mkkw(ns, "//full")
    st.create(ns, "g.txt", hks=["//full"])
    with pytest.raises(AlreadyExists):
        st.move_keyword(ns, "//empty", "//full", replace_empty=True)


# ------------------------------------------------------------------ operators

@pytest.mark.parametrize(("spec", "why"), [
    ("//@or/a", "needs an HK before"),
    ("//a//@not/b//@or/c", "cannot join"),
    ("//a//@not/@or/b", "order"),
    ("//@untagged//a", "stands alone"),
    ("//a//@not", "needs a keyword"),
    ("//@bogus/a", "reserved"),
])
def test_operator_grammar_errors(spec: str, why: str) -> None:
    with pytest.raises(HKSyntaxError, match=why):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["//a//@or/b,x", ",//@not/a", "//@only/a/b//@or/@only/c", "//@untagged,f"])
def test_operator_specs_round_trip(spec: str) -> None:
    assert format_spec(parse_spec(spec)) == spec


def test_keyword_components_cannot_start_with_at() -> None:
    with pytest.raises(HKSyntaxError, match="reserved for operators"):
        parse_hk("//@or")
    with pytest.raises(HKSyntaxError):
        parse_hk("//a/@x")


def test_query_matches_the_reference_on_random_files(st: Store) -> None:
    """The store's SQL for every operator against naming.list_matches, on random tags."""
    ns = _ns(st)
    kws = ["//a", "//a/x", "//a/y", "//b", "//b/z", "//c"]
    for k in kws:
        st.mkkw(ns, k, parents=True)
    rnd = random.Random(13)
    ids = [st.create(ns, f"f{i % 7}" if i % 5 else f"d{i}", hks=rnd.sample(kws, rnd.randint(0, 3)),
                     directory=st.root_dir(ns) if i % 5 == 0 else None) for i in range(60)]
    hks = {i: st.entity(i).hks for i in ids}
    specs = ["//a//@or/b", "//a/x//@or/c//@not/b", "//@not/a", "//@only/a", "//@only/a//@or/@only/b",
             "//@untagged", "//b//@not/@only/b", "//a//@or/b//c//@or/a/y", "//a//@or/b,f3", "//@untagged,d10",
             "//@not/c,f1"]
    for text in specs:
        spec = parse_spec(text)
        want = sorted(i for i in ids if list_matches(spec.hks, hks[i])
                      and (spec.name is None or st.entity(i).name == spec.name))
        assert st.match_ids(ns, spec.hks, spec.name) == want, text
        assert [e.id for e in st.match(ns, spec.hks, spec.name)] == want, text
        if spec.name is None:
            assert [e.id for e in st.match_stats(ns, spec.hks)] == want, text
    assert compile_query(parse_spec("//a//@not/b").hks).none_of[0].hk == ("b",)


# ------------------------------------------------------------------ CLI

def _hk(store: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [args[0], "--store", str(store), *args[1:]])
    return r.exit_code, r.output


def test_cli_mvkw_mergekw_and_operator_specs(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Store.open(path) as s:
        ns = _ns(s)
        s.mkkw(ns, "//animal/dgo", parents=True)
        s.mkkw(ns, "//photo")
        s.create(ns, "dog.jpg", hks=["//animal/dgo", "//photo"])
        s.create(ns, "tree.jpg", hks=["//photo"])
        s.create(ns, "loose.txt", directory=s.root_dir(ns))
    assert _hk(path, "mvkw", "//animal/dgo", "//animal/dog") == (0, "")
    assert _hk(path, "ls", "//animal/dog") == (0, "dog.jpg\n")
    code, out = _hk(path, "mvkw", "//photo", "//animal")
    assert code == 1 and out == "Error: keyword //animal exists (hk mergekw //photo //animal merges them)\n"
    code, out = _hk(path, "mvkw", "//animal", "//animal/dog/x")
    assert code == 1 and "under itself" in out
    assert _hk(path, "ls", "//photo//@not/animal") == (0, "tree.jpg\n")
    assert _hk(path, "ls", "//animal//@or/photo") == (0, "dog.jpg tree.jpg\n")
    assert _hk(path, "ls", "//@untagged") == (0, "loose.txt\n")
    assert _hk(path, "ls", "//@only/animal") == (0, "")
    assert _hk(path, "mergekw", "//photo", "//animal") == (0, "")
    assert _hk(path, "ls", "//@only/animal") == (0, "dog.jpg tree.jpg\n")
    code, out = _hk(path, "mkkw", "//@x")
    assert code == 1 and "reserved for operators" in out
