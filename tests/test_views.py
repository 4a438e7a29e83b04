"""The mount path grammar (hkfs/mount/paths.py, views.py) without FUSE: parsing, clash names, resolution on a fake store."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hkfs.core.errors import NotADirectory, NotFound
from hkfs.core.naming import list_matches
from hkfs.mount.paths import MountPath, clash_name, listed_name, parse, split_clash_name
from hkfs.mount.views import (
    DirLoc,
    KeySpaceLoc,
    LinkLoc,
    NewKeyLoc,
    Resolver,
    ViewFileLoc,
    ViewLoc,
    attach_set,
    detach_set,
)


def test_parse_ordinary() -> None:
    assert parse("/") == MountPath(())
    assert parse("/a/b/c.txt") == MountPath(("a", "b", "c.txt"))


def test_parse_keyword_space_and_views() -> None:
    assert parse("/@") == MountPath((), True, adding=True)
    mp = parse("/d/@/photo/2000")
    assert mp.dir_parts == ("d",) and mp.hks == (("photo", "2000"),) and mp.tail_ambiguous
    mp = parse("/@/photo/@/animal/dog/fig1.jpg")
    assert mp.hks == (("photo",), ("animal", "dog", "fig1.jpg"))
    assert mp.without_tail().hks == (("photo",), ("animal", "dog"))
    mp = parse("/@/photo/@")
    assert mp.adding and mp.hks == (("photo",),) and not mp.tail_ambiguous


def test_parse_comma_forms() -> None:
    assert parse("/d/,") == MountPath(("d",), True, relative=True)
    mp = parse("/d/,main.tex")
    assert mp.relative and mp.name == "main.tex" and not mp.tail_ambiguous
    mp = parse("/d/,/@/c/@/d")
    assert mp.relative and mp.hks == (("c",), ("d",))
    mp = parse("/d/,/x")
    assert mp.ext == ("x",) and mp.tail_ambiguous
    mp = parse("/@/photo/,fig1.jpg")
    assert mp.hks == (("photo",),) and mp.name == "fig1.jpg"


@pytest.mark.parametrize("bad, exc", [
    ("/@/@", NotFound), ("/d/,x/y", NotADirectory), ("/@/a/,b/c", NotADirectory),
    ("/@/,x", NotFound), ("/@/a/,", NotFound),
])
def test_parse_errors(bad: str, exc: type) -> None:
    with pytest.raises(exc):
        parse(bad)


@pytest.mark.parametrize("name, eid, listed", [
    ("main.tex", 12, "main~12.tex"), ("Makefile", 3, "Makefile~3"), (".bashrc", 7, ".bashrc~7"),
    ("a.tar.gz", 9, "a.tar~9.gz"), ("x~3", 4, "x~3~4"), ("x.a~b", 5, "x~5.a~b"),
])
def test_clash_names_round_trip(name: str, eid: int, listed: str) -> None:
    assert clash_name(name, eid) == listed
    assert split_clash_name(listed) == (name, eid)


def test_split_clash_name_rejects() -> None:
    assert split_clash_name("main.tex") is None
    assert split_clash_name("a~0.txt") is None
    assert split_clash_name("~5") is None


def test_attach_and_detach_sets() -> None:
    carried = [("photo", "2000"), ("animal", "dog"), ("misc",)]
    assert detach_set(carried, [("photo",), ("animal", "dog")]) == [("photo", "2000"), ("animal", "dog")]
    assert attach_set(carried, [("photo",), ("animal", "cat")]) == [("animal", "cat")]


# --- resolution on a fake store -----------------------------------------------------------

@dataclass
class FEnt:
    id: int
    ns: int
    name: str
    hks: tuple


@dataclass
class FDir:
    id: int
    ns: int
    dkl: tuple


@dataclass
class FEntry:
    name: str
    kind: str
    id: int


class FakeStore:
    def __init__(self) -> None:
        self.kws = {("photo",), ("photo", "2000"), ("animal",), ("animal", "dog"), ("paper",)}
        self.ents = {
            1: FEnt(1, 1, "fig1.jpg", (("photo", "2000"), ("animal", "dog"))),
            2: FEnt(2, 1, "main.tex", (("paper",),)),
            3: FEnt(3, 1, "main.tex", (("paper",), ("photo",))),
            4: FEnt(4, 1, "2000", (("photo",),)),
        }
        self.dirs = {10: FDir(10, 1, ()), 11: FDir(11, 1, (("photo",),))}
        self.entries = {(10, "work"): FEntry("work", "dir", 11), (11, "notes"): FEntry("notes", "file", 2)}

    def root_dir(self, ns: int) -> int:
        return 10

    def dir(self, dirid: int) -> FDir:
        return self.dirs[dirid]

    def dir_naming(self, dirid: int) -> tuple[int, tuple]:
        d = self.dirs[dirid]
        return d.ns, tuple(d.dkl)

    def lookup(self, dirid: int, name: str) -> FEntry | None:
        return self.entries.get((dirid, name))

    def keyword_exists(self, ns: int, hk: tuple) -> bool:
        return hk in self.kws

    def match(self, ns: int, hks, name=None) -> list[FEnt]:
        return [e for e in self.ents.values()
                if list_matches(hks, e.hks) and (name is None or e.name == name)]

    def entity(self, eid: int) -> FEnt:
        if eid not in self.ents:
            raise NotFound(str(eid))
        return self.ents[eid]


@pytest.fixture
def res() -> Resolver:
    return Resolver(FakeStore(), 1)


def test_resolve_ordinary(res: Resolver) -> None:
    assert res.resolve("/") == DirLoc(10)
    assert res.resolve("/work") == DirLoc(11)
    assert res.resolve("/work/notes") == LinkLoc(11, "notes", 2)
    assert res.resolve("/work/new") == LinkLoc(11, "new", None)
    with pytest.raises(NotFound):
        res.resolve("/nope/x")
    with pytest.raises(NotADirectory):
        res.resolve("/work/notes/x")


def test_resolve_views(res: Resolver) -> None:
    assert res.resolve("/@") == KeySpaceLoc(1, (), 10)
    assert res.resolve("/@/photo") == ViewLoc(1, (("photo",),), 10, keyword=True)
    # the keyword wins over the file named 2000; ',2000' reaches the file
    assert res.resolve("/@/photo/2000") == ViewLoc(1, (("photo", "2000"),), 10, keyword=True)
    loc = res.resolve("/@/photo/,2000")
    assert isinstance(loc, ViewFileLoc) and loc.eid == 4
    loc = res.resolve("/@/photo/@/animal/dog/fig1.jpg")
    assert isinstance(loc, ViewFileLoc) and loc.eid == 1 and loc.view.hks == (("photo",), ("animal", "dog"))


def test_resolve_missing_and_mismatch(res: Resolver) -> None:
    loc = res.resolve("/@/animal/new.txt")
    assert isinstance(loc, ViewFileLoc) and loc.eid is None and loc.name == "new.txt"
    assert res.resolve("/@/newkw") == NewKeyLoc(KeySpaceLoc(1, (), 10), "newkw")
    with pytest.raises(NotFound):
        res.resolve("/@/nokw/x")
    # main.tex is shared in //paper: only the clash names open it
    with pytest.raises(NotFound):
        res.resolve("/@/paper/main.tex")
    assert res.resolve("/@/paper/main~3.tex").eid == 3          # type: ignore[union-attr]
    # entity 2 does not carry //photo: the clash name names nothing there
    assert res.resolve("/@/photo/main~2.tex").eid is None       # type: ignore[union-attr]


def test_resolve_comma_views(res: Resolver) -> None:
    assert res.resolve("/work/,") == ViewLoc(1, (("photo",),), 11)
    assert res.resolve("/work/,/2000") == ViewLoc(1, (("photo", "2000"),), 11, keyword=True)
    assert res.resolve("/work/,fig1.jpg").eid == 1              # type: ignore[union-attr]
    assert res.resolve("/work/,/@/animal") == ViewLoc(1, (("photo",), ("animal",)), 11, keyword=True)


def test_listed_name_rule() -> None:
    assert listed_name("main.tex", 12, shared=True, keyword=True) == "main~12.tex"    # a clash wins
    assert listed_name("sub", 3, shared=False, keyword=True) == ",sub"
    assert listed_name("main.tex", 12, shared=False, keyword=False) == "main.tex"


def _outcome(fn):  # type: ignore[no-untyped-def]
    try:
        loc = fn()
    except (NotFound, NotADirectory) as exc:
        return type(exc)
    if isinstance(loc, ViewFileLoc):      # (the view it was found in: its HKs, not how it was named)
        return ViewFileLoc, loc.eid, loc.name, loc.listed, loc.view.hks
    return loc


@pytest.mark.parametrize("parent", ["/@/photo", "/@/animal", "/@/photo/@/animal/dog", "/@/paper",
                                    "/work/@/photo", "/@/photo/2000"])
@pytest.mark.parametrize("name", ["2000", "dog", "fig1.jpg", "main.tex", "main~3.tex", "main~2.tex",
                                  "new.txt", "x.query"])
def test_tail_in_is_resolve_of_the_path(res: Resolver, parent: str, name: str) -> None:
    """A name looked up in a view already resolved (a FILE.query read) gives what resolving the
    whole path gives: a child keyword wins over a file, clash names, shared and missing names."""
    mp = parse(parent)
    assert Resolver.extends_by_tail(mp)
    view = res.resolve(parent)
    assert isinstance(view, ViewLoc)
    assert _outcome(lambda: res.tail_in(view, name)) == _outcome(lambda: res.resolve(f"{parent}/{name}"))


def test_extends_by_tail_only_for_keyword_paths() -> None:
    for path in ["/@", "/@/photo/@", "/work/,", "/work/,/2000", "/@/photo/,fig1.jpg", "/work"]:
        assert not Resolver.extends_by_tail(parse(path)), path
