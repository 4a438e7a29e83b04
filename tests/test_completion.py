"""Keyword completion, paper §4.1: Figs. 3 and 4, and both modes against a naive model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hkfs.core.completion import complete

PAPER = [("animal", "cat"), ("animal", "dog", "bulldog"), ("animal", "dog", "poodle"),
         ("food",), ("movie", "footloose"), ("sports", "football"), ("sports", "skate", "figure")]


def test_fig3_prefix_mode_same_depth() -> None:
    assert complete("//animal/", PAPER) == ["//animal/cat", "//animal/dog"]
    assert complete("//animal/dog/", PAPER) == ["//animal/dog/bulldog", "//animal/dog/poodle"]
    assert complete("//animal/dog/p", PAPER) == ["//animal/dog/poodle"]
    assert complete("//", PAPER) == ["//animal", "//food", "//movie", "//sports"]
    assert complete("//x", PAPER) == []


def test_fig4_last_component_mode_anywhere() -> None:
    assert complete("foo", PAPER) == ["//food", "//movie/footloose", "//sports/football"]
    assert complete("foot", PAPER) == ["//movie/footloose", "//sports/football"]
    assert complete("dog", PAPER) == ["//animal/dog"]
    assert complete("dog/p", PAPER) == ["//animal/dog/poodle"]
    assert complete("", PAPER) == sorted(complete("", PAPER))
    assert len(complete("", PAPER)) == 12  # every HK, ancestors included


def _all(keywords: list[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {k[:i] for k in keywords for i in range(1, len(k) + 1)}


_comp = st.sampled_from(["a", "ab", "abc", "b", "ba", "foot", "food", "x"])
_kws = st.lists(st.lists(_comp, min_size=1, max_size=4).map(tuple), max_size=15)


@given(_kws, st.lists(_comp, min_size=1, max_size=3), st.integers(0, 3))
def test_prefix_mode_vs_naive(kws: list, parts: list, cut: int) -> None:
    partial = "//" + "/".join(parts)
    partial = partial[: max(2, len(partial) - cut)]
    depth = partial[2:].count("/") + 1
    expect = sorted("//" + "/".join(h) for h in _all(kws)
                    if len(h) == depth and ("//" + "/".join(h)).startswith(partial))
    assert complete(partial, kws) == expect


@given(_kws, _comp, st.integers(0, 2))
def test_word_mode_vs_naive(kws: list, word: str, cut: int) -> None:
    word = word[: max(1, len(word) - cut)]
    expect = sorted("//" + "/".join(h) for h in _all(kws) if h[-1].startswith(word))
    assert complete(word, kws) == expect


def test_complete_word_keeps_the_part_before_the_last_hk() -> None:
    """What `hk complete` and the mount's user.hk.complete.WORD answer: the last HK of a
    '//a,//b' list, or what follows ',', completed; the rest of the word kept."""
    from hkfs.core.completion import complete_word
    kws = [("SIG", "DPS"), ("workshop",), ("movie", "footloose"), ("sports", "football")]
    assert complete_word("//SIG/DPS,//wo", kws) == ["//SIG/DPS,//workshop"]
    assert complete_word(",//mov", kws) == [",//movie"]
    assert complete_word(",foot", kws) == [",//movie/footloose", ",//sports/football"]
    assert complete_word("foot", kws) == ["//movie/footloose", "//sports/football"]
    assert complete_word("//x", kws) == []
def test_operator_words_complete() -> None:
    assert complete("//@", PAPER) == ["//@not", "//@only", "//@or", "//@untagged"]
    assert complete("//@n", PAPER) == ["//@not"]
    assert complete("//@not/@o", PAPER) == ["//@not/@only"]
    assert complete("//@not/ani", PAPER) == ["//@not/animal"]
    assert complete("//@or/@only/animal/d", PAPER) == ["//@or/@only/animal/dog"]
