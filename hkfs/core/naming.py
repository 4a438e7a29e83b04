"""The naming model of the paper (Tada, Higuchi, Taniguchi §2): hierarchical
keywords (HKs), HK lists and file specifications, as pure values.

Parsing is strict and says where it failed, because these strings come from
users typing them at a shell prompt; formatting is the exact inverse, so a
value can be printed and read back (`parse_spec(format_spec(s)) == s`).
Nothing here knows of SQLite or FUSE.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import HKError, HKSyntaxError, InvalidArgument, NameTooLong

__all__ = [
    "HK", "HKSyntaxError", "parse_typed_hk_list", "parse_typed_hk_lists", "parse_typed_spec", "HKNameTooLong", "FileSpec", "parse_hk", "parse_hk_list", "format_hk",
    "format_hk_list", "validate_component", "validate_name", "parse_spec", "format_spec",
    "resolve_relative", "hk_matches", "list_matches", "MAX_NAME_BYTES",
    "OR", "NOT", "ONLY", "UNTAGGED", "OPERATORS", "Atom", "Query", "split_term", "term_keyword",
    "has_operators", "compile_query",
]

HK = tuple[str, ...]
"""('animal', 'dog') is //animal/dog; () is the root of the hierarchy (no HK)."""

MAX_NAME_BYTES = 255
_RESERVED = {".", "..", "@"}

# Query operators (beyond the paper's AND). A keyword component may not start with '@'
# (so no keyword can be named like one); an HK of a *spec* may start with them:
#   //a//@or/b          a file carrying //a or //b (descendants included, as for AND)
#   //photo//@not/animal  carrying //photo and not //animal (nor a descendant)
#   //@only/animal      carrying //animal itself, not only a descendant (clean exports)
#   //@untagged         a file carrying no keyword at all
# The mount spells them the same way after '@': @/a/@/@or/b (docs/mount.md).
OR, NOT, ONLY, UNTAGGED = "@or", "@not", "@only", "@untagged"
OPERATORS = (OR, NOT, ONLY, UNTAGGED)


class HKNameTooLong(HKSyntaxError, NameTooLong):
    """A component or file name over 255 bytes of UTF-8 (errno ENAMETOOLONG)."""

    errno = NameTooLong.errno


def _bad_char(c: str) -> str | None:
    """Why character c may not appear in an HK component, or None if it may."""
    if c == "/":
        return "'/' inside a keyword component"
    if c == ",":
        return "',' inside a keyword component"
    if c == "\0":
        return "NUL character"
    o = ord(c)
    if o < 0x20 or 0x7F <= o < 0xA0:
        return f"control character U+{o:04X}"
    return None


def validate_component(c: str, *, text: str | None = None, offset: int = 0) -> None:
    """Check one HK component; raise HKSyntaxError naming the bad character.

    `text`/`offset` locate the component inside a longer string for the message.
    """
    text = c if text is None else text
    if c == "":
        raise HKSyntaxError("empty keyword component", text, offset)
    if c in _RESERVED:
        raise HKSyntaxError(f"keyword component {c!r} is reserved", text, offset)
    if c.startswith("@"):
        raise HKSyntaxError(f"keyword component {c!r}: a leading '@' is reserved for operators "
                            f"({', '.join(OPERATORS)})", text, offset)
    for i, ch in enumerate(c):
        why = _bad_char(ch)
        if why:
            raise HKSyntaxError(why, text, offset + i)
    if len(c.encode("utf-8")) > MAX_NAME_BYTES:
        raise HKNameTooLong(f"keyword component longer than {MAX_NAME_BYTES} bytes", text, offset)


def validate_name(name: str, *, text: str | None = None, offset: int = 0) -> None:
    """Check a file or directory name: non-empty, no '/' or NUL, not '.' or '..', <= 255 bytes.

    ',' is allowed in file names (UNIX allows it); a spec's name is everything
    after the first ',' that ends the HK list.
    """
    text = name if text is None else text
    if name == "":
        raise HKSyntaxError("empty file name", text, offset)
    if name in (".", ".."):
        raise HKSyntaxError(f"file name {name!r} is reserved", text, offset)
    for i, ch in enumerate(name):
        if ch == "/":
            raise HKSyntaxError("'/' inside a file name", text, offset + i)
        if ch == "\0":
            raise HKSyntaxError("NUL character in a file name", text, offset + i)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise HKNameTooLong(f"file name longer than {MAX_NAME_BYTES} bytes", text, offset)


def _parse_list_at(text: str, start: int, end: int, *, terms: bool = False) -> tuple[HK, ...]:
    """Parse text[start:end] as one or more HKs '//a/b//c'; positions refer to `text`.

    With terms (a spec), an HK may start with operator words ('//@not/animal')."""
    hks: list[HK] = []
    i = start
    if end - start < 2 or text[start:start + 2] != "//":
        raise HKSyntaxError("an HK must start with '//'", text, start)
    while i < end:
        # here text[i:i+2] == '//'
        i += 2
        comps: list[str] = []
        while True:
            j = i
            while j < end and text[j] != "/":
                j += 1
            comp = text[i:j]
            if comp == "":
                if j < end and j + 1 < end and text[j + 1] == "/" and comps:
                    raise HKSyntaxError("three '/' in a row", text, j)
                raise HKSyntaxError("empty keyword component", text, i)
            if not (terms and comp in OPERATORS and all(x in OPERATORS for x in comps)):
                validate_component(comp, text=text, offset=i)
            comps.append(comp)
            if j >= end:
                i = end
                break
            # text[j] == '/'
            if j + 1 < end and text[j + 1] == "/":
                i = j  # next HK starts at j
                break
            i = j + 1
            if i >= end:
                raise HKSyntaxError("HK ends with '/'", text, j)
        hks.append(tuple(comps))
    if terms and compile_query(hks, text=text).incomplete:
        raise HKSyntaxError("an operator needs a keyword after it (//@not/animal)", text, start)
    return tuple(hks)


def parse_hk(text: str) -> HK:
    """'//animal/dog' -> ('animal', 'dog'); '//' alone is the root ()."""
    if text == "//":
        return ()
    hks = parse_hk_list(text)
    if len(hks) != 1:
        raise HKSyntaxError("expected one HK, found a list", text, text.index("//", 2))
    return hks[0]


def parse_hk_list(text: str) -> tuple[HK, ...]:
    """'//photo//animal/dog' -> (('photo',), ('animal', 'dog')); order and repeats kept."""
    if text == "":
        raise HKSyntaxError("empty HK list", text, 0)
    for i, ch in enumerate(text):
        if ch == ",":
            raise HKSyntaxError("',' in an HK list", text, i)
    return _parse_list_at(text, 0, len(text))


def format_hk(hk: HK) -> str:
    """('animal', 'dog') -> '//animal/dog'; () -> '//'."""
    return "//" + "/".join(hk)


def format_hk_list(hks: Iterable[HK]) -> str:
    """(('photo',), ('animal','dog')) -> '//photo//animal/dog'; empty -> ''."""
    return "".join(format_hk(h) for h in hks)


@dataclass(frozen=True)
class FileSpec:
    """A parsed file specification (paper §2.2, §2.4, §3.3)."""

    relative: bool            # starts with ',' (relative to the CKL)
    hks: tuple[HK, ...]       # the HK list written (for relative: the ones added to the CKL)
    name: str | None          # the file name, or None
    bare: bool = False        # a bare name 'main.tex': the file in the current directory


def parse_spec(text: str) -> FileSpec:
    """Parse every form: '//a//b/c,name', '//a', ',', ',//c//d', ',//c,name', ',name', 'name'."""
    if text == "":
        raise HKSyntaxError("empty file specification", text, 0)
    if text[0] == ",":
        rest_start = 1
        if len(text) == 1:
            return FileSpec(True, (), None, False)
        if text.startswith("//", 1):
            hks, name = _list_and_name(text, 1)
            return FileSpec(True, hks, name, False)
        if text[1] == "/":
            raise HKSyntaxError("an HK must start with '//'", text, 1)
        name = text[rest_start:]
        validate_name(name, text=text, offset=rest_start)
        return FileSpec(True, (), name, False)
    if text.startswith("//"):
        hks, name = _list_and_name(text, 0)
        return FileSpec(False, hks, name, False)
    if text[0] == "/":
        raise HKSyntaxError("an HK must start with '//' (a file spec is not a path)", text, 0)
    validate_name(text)
    return FileSpec(False, (), text, True)


def _list_and_name(text: str, start: int) -> tuple[tuple[HK, ...], str | None]:
    comma = text.find(",", start)
    end = len(text) if comma < 0 else comma
    hks = _parse_list_at(text, start, end, terms=True)
    if comma < 0:
        return hks, None
    name = text[comma + 1:]
    if name == "":
        raise HKSyntaxError("',' must be followed by a file name", text, comma)
    validate_name(name, text=text, offset=comma + 1)
    return hks, name


def format_spec(spec: FileSpec) -> str:
    """The inverse of parse_spec."""
    if spec.bare:
        if spec.name is None:
            raise HKError("a bare spec needs a name")
        return spec.name
    out = ("," if spec.relative else "") + format_hk_list(spec.hks)
    if spec.name is not None:
        out += ("," if spec.hks else "") + spec.name
    return out


def resolve_relative(spec: FileSpec, ckl: Sequence[HK]) -> FileSpec:
    """',//c' with CKL //a//b -> //a//b//c; absolute and bare specs are returned unchanged."""
    if not spec.relative:
        return spec
    return FileSpec(False, tuple(ckl) + spec.hks, spec.name, False)


# ------------------------------------------------------------ clash names
# The listed-name rule: a file whose name is shared by several matches of a view is listed
# as STEM~ID.EXT (its entity id before the extension). The mount lists with it
# (hkfs/mount/paths.listed_name); the store and fsck name lost+found entries with it.

_CLASH = re.compile(r"^(?P<stem>.*)~(?P<id>[1-9][0-9]*)(?P<ext>(?:\.[^.]*)?)$", re.S)


def clash_name(name: str, eid: int) -> str:
    """'main.tex', 12 -> 'main~12.tex': the listed name of a file whose name is shared in a view."""
    stem, ext = os.path.splitext(name)
    return f"{stem}~{eid}{ext}"


def split_clash_name(listed: str) -> tuple[str, int] | None:
    """'main~12.tex' -> ('main.tex', 12), or None if `listed` cannot be a clash name."""
    m = _CLASH.match(listed)
    if not m:
        return None
    name = m.group("stem") + m.group("ext")
    eid = int(m.group("id"))
    if not name or clash_name(name, eid) != listed:
        return None
    return name, eid


# ------------------------------------------------------------ as typed
# The paper's users wrote HK lists with ',' between HKs ('//SIG/DPS,//workshop', Fig. 1)
# and ',' for the current keyword list; the `hk` commands take them as typed.

def parse_typed_hk_list(text: str, ckl: Sequence[HK] = ()) -> tuple[HK, ...]:
    """An HK list as the paper's users typed it (the `hk` commands' arguments).

    Accepts '//a//b', the paper's '//SIG/DPS,//workshop' (',' between HKs, Fig. 1),
    and ',' / ',//c' meaning the CKL (plus //c).
    """
    if text.startswith(","):
        rest = text[1:]
        return tuple(ckl) + (parse_typed_hk_list(rest) if rest else ())
    if not text.startswith("//"):
        raise InvalidArgument(f"{text!r}: a keyword starts with '//' (e.g. //{text.lstrip('/')})")
    return parse_hk_list(text.replace(",//", "//"))


def parse_typed_spec(text: str, ckl: Sequence[HK] = ()) -> tuple[tuple[HK, ...], str | None]:
    """A spec argument ('//a//b,name', ',//c', ',name', the paper's '//a,//b') -> (HK list, name)."""
    rel = text.startswith(",")
    body = text[1:] if rel else text
    body = body.replace(",//", "//")
    spec = resolve_relative(parse_spec(("," if rel else "") + body), ckl)
    return spec.hks, spec.name


def parse_typed_hk_lists(texts: Sequence[str], ckl: Sequence[HK] = ()) -> tuple[HK, ...]:
    out: list[HK] = []
    for t in texts:
        for h in parse_typed_hk_list(t, ckl):
            if h not in out:
                out.append(h)
    return tuple(out)


def hk_matches(query: HK, carried: HK) -> bool:
    """True when `query` is `carried` or one of its ancestors (an HK matches its descendants)."""
    return len(query) <= len(carried) and carried[: len(query)] == query


def list_matches(hks: Sequence[HK], carried: Iterable[HK]) -> bool:
    """True when every HK of the list matches at least one carried HK (empty list: always).

    The list may hold operator terms (see compile_query); this is the reference the
    store's SQL is tested against."""
    carried = list(carried)
    if not has_operators(hks):
        return all(any(hk_matches(q, c) for c in carried) for q in hks)
    q = compile_query(hks)
    if q.incomplete:
        return False
    if q.untagged and carried:
        return False

    def hit(lit: Atom) -> bool:
        return any(c == lit.hk if lit.only else hk_matches(lit.hk, c) for c in carried)
    return all(any(hit(x) for x in g) for g in q.all_of) and not any(hit(x) for x in q.none_of)


# ---------------------------------------------------------------- query operators

@dataclass(frozen=True)
class Atom:
    """One keyword of a query: matches a carried HK equal to it or (unless only) below it."""

    hk: HK
    only: bool = False


@dataclass(frozen=True)
class Query:
    """An HK list with operators: every group of `all_of` (an OR of literals) matches and
    no literal of `none_of` does; `untagged`: the file carries no keyword.

    `incomplete`: a term written with operators but no keyword yet ('@/a/@/@not' while
    navigating the mount): it matches no file."""

    all_of: tuple[tuple[Atom, ...], ...] = ()
    none_of: tuple[Atom, ...] = ()
    untagged: bool = False
    incomplete: bool = False


def split_term(term: HK) -> tuple[tuple[str, ...], HK]:
    """('@not', 'animal') -> (('@not',), ('animal',)): the leading operator words and the keyword."""
    i = 0
    while i < len(term) and term[i] in OPERATORS:
        i += 1
    return tuple(term[:i]), tuple(term[i:])


def term_keyword(term: HK) -> HK | None:
    """The keyword a term names (its children are the term's children in the mount); None
    for '@untagged', which has no keyword below it."""
    ops, hk = split_term(term)
    return None if UNTAGGED in ops else hk


def has_operators(hks: Iterable[HK]) -> bool:
    return any(h and h[0] in OPERATORS for h in hks)


def _term_positions(text: str, hks: Sequence[HK]) -> list[int]:
    """Where each term of hks starts in text (0 where it cannot be found), so that an error
    points at the misplaced operator rather than at the start of the list."""
    out, cursor = [], 0
    for term in hks:
        pos = text.find("//" + "/".join(term), cursor)
        if pos < 0:
            out.append(0)
            continue
        out.append(pos)
        cursor = pos + 2
    return out


def compile_query(hks: Sequence[HK], *, text: str | None = None) -> Query:
    """The Query of an HK list with operator terms; HKSyntaxError for a misplaced operator.

    Grammar of one term: [@or] [@not] [@only] COMPONENT... , or @untagged alone in the list.
    '@or' joins the term to the group before it; '@not' excludes; '@not' cannot be or-ed."""
    where = text if text is not None else format_hk_list(hks)
    at = _term_positions(where, hks)
    groups: list[list[Atom]] = []
    none: list[Atom] = []
    untagged = incomplete = False
    last_not = False
    for i, term in enumerate(hks):
        ops, hk = split_term(term)
        if UNTAGGED in ops:
            if ops != (UNTAGGED,) or hk or len(hks) != 1:
                raise HKSyntaxError("@untagged stands alone (//@untagged)", where, at[i])
            untagged = True
            continue
        order = [o for o in (OR, NOT, ONLY) if o in ops]
        if list(ops) != order:
            raise HKSyntaxError("operators go in the order @or, @not, @only, each once", where, at[i])
        if not hk:
            incomplete = True
            continue
        lit = Atom(hk, ONLY in ops)
        if OR in ops:
            if not groups and not none:
                raise HKSyntaxError("@or needs an HK before it (//a//@or/b)", where, at[i])
            if NOT in ops or last_not:
                raise HKSyntaxError("@or cannot join @not terms (write //@not/a//@not/b)", where, at[i])
            groups[-1].append(lit)
        elif NOT in ops:
            none.append(lit)
        else:
            groups.append([lit])
        last_not = NOT in ops
    return Query(tuple(tuple(g) for g in groups), tuple(none), untagged, incomplete)
