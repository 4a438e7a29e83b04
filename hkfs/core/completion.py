"""Keyword completion, paper §4.1 (Figs. 3 and 4).

Two modes, chosen by the partial text:
- starts with '//': HKs that have the text as a prefix and the same number of
  '/'-separated levels (walks the hierarchy one level at a time, like a shell);
- otherwise: every HK whose LAST component starts with the text, anywhere in
  the hierarchy ('foot' -> //movie/footloose, //sports/football). If the text
  holds '/', e.g. 'dog/p', its leading components must equal the HK's
  components just before the last one (an extension of the paper's mode).

Operator words of a spec ('//@not/ani', docs/commands.md) complete too: '//@n' gives
'//@not', and the keyword after them completes as if they were not there.
"""

from __future__ import annotations

from collections.abc import Iterable

from .naming import HK, OPERATORS, format_hk

__all__ = ["complete", "complete_word", "split_word", "COMPLETE_ATTR"]

# The mount answers getxattr(DIR, COMPLETE_ATTR + WORD) with complete_word(WORD) in DIR's
# namespace, one per line: the shell's Tab reads it with getfattr, no Python start-up.
COMPLETE_ATTR = "user.hk.complete."


def _with_ancestors(keywords: Iterable[HK]) -> set[HK]:
    out: set[HK] = set()
    for hk in keywords:
        for i in range(1, len(hk) + 1):
            out.add(tuple(hk[:i]))
    return out


def complete(partial: str, keywords: Iterable[HK]) -> list[str]:
    """Candidates for `partial`, sorted, formatted '//a/b'."""
    if partial.startswith("//@"):
        return _complete_operators(partial, keywords)
    hks = _with_ancestors(keywords)
    if partial.startswith("//"):
        levels = partial[2:].split("/")
        depth = len(levels)
        return sorted(s for s in (format_hk(h) for h in hks if len(h) == depth)
                      if s.startswith(partial))
    if partial.startswith("/"):
        return []
    parts = partial.split("/")
    head, last = parts[:-1], parts[-1]
    n = len(head)
    out = []
    for h in hks:
        if len(h) > n and h[-1].startswith(last) and list(h[-1 - n:-1]) == head:
            out.append(format_hk(h))
    return sorted(out)


def split_word(word: str) -> tuple[str, str]:
    """The completed part of a word: its last HK ('//...') or what follows its last ','."""
    i = word.rfind("//")
    if i >= 0:
        return word[:i], word[i:]
    j = word.rfind(",")
    if j >= 0:
        return word[:j + 1], word[j + 1:]
    return "", word


def complete_word(word: str, keywords: Iterable[HK]) -> list[str]:
    """Candidates for a whole command-line word ('//SIG/DPS,//wo', ',//mov', 'foot')."""
    prefix, partial = split_word(word)
    return [prefix + c for c in complete(partial, keywords)]
def _complete_operators(partial: str, keywords: Iterable[HK]) -> list[str]:
    """'//@n' -> '//@not'; '//@not/ani' -> '//@not/animal' (the operators are kept in front)."""
    comps = partial[2:].split("/")
    n = 0
    while n < len(comps) - 1 and comps[n] in OPERATORS:
        n += 1
    head = "//" + "".join(c + "/" for c in comps[:n])
    rest = comps[n:]
    if len(rest) == 1 and rest[0].startswith("@"):
        # the order @or, @not, @only; @untagged alone
        after = max((OPERATORS.index(c) for c in comps[:n]), default=-1)
        return sorted(head + o for i, o in enumerate(OPERATORS) if o.startswith(rest[0]) and i > after
                      and not (n and o == OPERATORS[-1]))
    return [head + c[2:] for c in complete("//" + "/".join(rest), keywords)]
