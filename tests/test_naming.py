"""The HK / file-spec grammar: every form, every error with its position, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hkfs.core.errors import HKSyntaxError, NameTooLong
from hkfs.core.naming import (
    FileSpec,
    format_hk,
    format_hk_list,
    format_spec,
    hk_matches,
    list_matches,
    parse_hk,
    parse_hk_list,
    parse_spec,
    resolve_relative,
    validate_component,
)


@pytest.mark.parametrize("text, spec", [
    ("//photo//people//animal/dog,fig1.jpg",
     FileSpec(False, (("photo",), ("people",), ("animal", "dog")), "fig1.jpg", False)),
    ("//sports//photo", FileSpec(False, (("sports",), ("photo",)), None, False)),
    (",", FileSpec(True, (), None, False)),
    (",//c//d", FileSpec(True, (("c",), ("d",)), None, False)),
    (",//c,x.tex", FileSpec(True, (("c",),), "x.tex", False)),
    (",main.tex", FileSpec(True, (), "main.tex", False)),
    ("main.tex", FileSpec(False, (), "main.tex", True)),
    ("//a,b,c.txt", FileSpec(False, (("a",),), "b,c.txt", False)),
    ("//日本/京都,写真.jpg", FileSpec(False, (("日本", "京都"),), "写真.jpg", False)),
])
def test_parse_every_form(text: str, spec: FileSpec) -> None:
    assert parse_spec(text) == spec
    assert format_spec(spec) == text


@pytest.mark.parametrize("text, position, words", [
    ("", 0, "empty"),
    ("/a", 0, "//"),
    ("//", 2, "empty keyword component"),
    ("//a//", 5, "empty keyword component"),
    ("//a/", 3, "ends with '/'"),
    ("//a///b", 5, "empty"),
    ("//a/./b", 4, "reserved"),
    ("//a/../b", 4, "reserved"),
    ("//@", 2, "reserved"),
    ("//a\x01b", 3, "control character"),
    ("//a\0", 3, "NUL"),
    ("//a,", 3, "followed by a file name"),
    ("//a,x/y", 5, "'/' inside a file name"),
    (",/a", 1, "//"),
    (",..", 1, "reserved"),
    ("a/b", 1, "'/'"),
    ("..", 0, "reserved"),
])
def test_invalid_specs_say_what_and_where(text: str, position: int, words: str) -> None:
    with pytest.raises(HKSyntaxError) as ei:
        parse_spec(text)
    assert ei.value.position == position
    assert words in str(ei.value)
    assert f"character {position + 1}" in str(ei.value)
    assert ei.value.errno == 22


def test_too_long_component_is_enametoolong() -> None:
    with pytest.raises(NameTooLong) as ei:
        parse_hk("//" + "x" * 256)
    assert isinstance(ei.value, HKSyntaxError)
    assert ei.value.errno == 36
    validate_component("x" * 255)
    with pytest.raises(NameTooLong):
        parse_spec("//a," + "é" * 128)  # 256 bytes


def test_parse_hk_and_list() -> None:
    assert parse_hk("//animal/dog") == ("animal", "dog")
    assert parse_hk("//") == ()
    assert format_hk(()) == "//"
    assert parse_hk_list("//a//b/c") == (("a",), ("b", "c"))
    with pytest.raises(HKSyntaxError):
        parse_hk("//a//b")
    with pytest.raises(HKSyntaxError):
        parse_hk_list("//a,b")
    for bad in ("//a,b", "//a/,", "//a/b,", "//a b/\x7f"):
        with pytest.raises(HKSyntaxError):
            parse_hk(bad)


def test_resolve_relative() -> None:
    ckl = (("a",), ("b",))
    assert resolve_relative(parse_spec(",//c"), ckl) == parse_spec("//a//b//c")
    assert resolve_relative(parse_spec(","), ckl) == parse_spec("//a//b")
    assert resolve_relative(parse_spec(",main.tex"), ckl) == parse_spec("//a//b,main.tex")
    assert resolve_relative(parse_spec("main.tex"), ckl) == parse_spec("main.tex")
    assert resolve_relative(parse_spec("//x"), ckl) == parse_spec("//x")


def test_matching_with_descendants() -> None:
    assert hk_matches(("sports",), ("sports", "skate", "figure"))
    assert hk_matches(("sports",), ("sports",))
    assert not hk_matches(("sports", "skate"), ("sports",))
    assert not hk_matches(("sport",), ("sports",))
    carried = [("photo",), ("animal", "dog", "poodle")]
    assert list_matches([("photo",), ("animal",)], carried)
    assert list_matches([], carried)
    assert not list_matches([("photo",), ("animal", "cat")], carried)


# ---------------------------------------------------------------- properties

_component = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/,"),
    min_size=1, max_size=8).filter(lambda c: c not in (".", "..") and not c.startswith("@"))   # '@...': operators
_hk = st.lists(_component, min_size=1, max_size=4).map(tuple)
_name = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


@st.composite
def _specs(draw: st.DrawFn) -> FileSpec:
    kind = draw(st.sampled_from(["abs", "rel", "bare"]))
    if kind == "bare":
        name = draw(_name.filter(lambda n: not n.startswith((",", "/"))))
        return FileSpec(False, (), name, True)
    hks = tuple(draw(st.lists(_hk, min_size=1 if kind == "abs" else 0, max_size=4)))
    name = draw(st.none() | _name)
    if kind == "rel" and not hks and name is not None and name.startswith("/"):
        name = "x" + name
    return FileSpec(kind == "rel", hks, name, False)


@given(_specs())
def test_format_parse_round_trip(spec: FileSpec) -> None:
    assert parse_spec(format_spec(spec)) == spec


@given(st.lists(_hk, min_size=1, max_size=5))
def test_hk_list_round_trip(hks: list) -> None:
    assert parse_hk_list(format_hk_list(hks)) == tuple(hks)


@given(st.text(max_size=20))
def test_parse_never_crashes(text: str) -> None:
    try:
        spec = parse_spec(text)
    except HKSyntaxError as e:
        assert e.position is None or 0 <= e.position <= len(text)
    else:
        assert format_spec(spec) == text


@pytest.mark.parametrize("text, at", [
    ("//animal//@or/@not/photo", 8),      # the @or term, not the start of the list
    ("//@not/animal//@or/photo", 13),
    ("//a//@untagged", 3),
    ("//animal//@only/@not/photo", 8),
    ("//@or/photo", 0),
])
def test_operator_errors_point_at_their_term(text: str, at: int) -> None:
    with pytest.raises(HKSyntaxError) as e:
        parse_spec(text)
    assert e.value.position == at, str(e.value)
