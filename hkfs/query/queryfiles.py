"""The `.query` file format: parsing a query body and formatting its results.

A query body is a vector, written either as text numbers (separated by white
space or commas, optionally in brackets) or as raw little-endian float32 bytes,
plus optional option lines `k=N` and `nprobe=N`. Results are one hit per line,
best first: the score, a tab, the hit's path from the mount root (`path#row`
for one row of a multi-row entry). Pure: no store, no FUSE.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..core.errors import InvalidArgument

__all__ = ["Query", "Hit", "result_line", "parse_query", "parse_vector", "format_vector", "format_body",
           "format_results", "DEFAULT_K", "MAX_K"]

DEFAULT_K = 10
MAX_K = 10_000
_OPTION = re.compile(r"^\s*(k|nprobe)\s*=\s*(\S*)\s*$", re.I)
_RAW_OPTIONS = re.compile(rb"(?:\n[ \t]*(?:k|nprobe)[ \t]*=[ \t]*[0-9]+[ \t]*)+\n?\Z", re.I)
_SPLIT = re.compile(r"[\s,;\[\]()]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Query:
    """A parsed query: the vector (1-D float32), how many hits, and the IVF probe count (None: default)."""

    vector: np.ndarray
    k: int = DEFAULT_K
    nprobe: int | None = None


class Hit(NamedTuple):
    """One result line: score and mount path (row None for a single-vector file); a tuple,
    cheap to make (a dozen per `FILE.query` read)."""

    score: float
    path: str
    row: int | None = None

    def line(self) -> str:
        return result_line(self.score, self.path, self.row)


def result_line(score: float, path: str, row: int | None = None) -> str:
    """One hit's line of a `.query` file."""
    return f"{score:.6f}\t{path}\n" if row is None else f"{score:.6f}\t{path}#{row}\n"


def is_text(body: bytes) -> str | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


def _check_finite(v: np.ndarray, what: str) -> np.ndarray:
    if v.size == 0:
        raise InvalidArgument(f"{what}: no numbers given")
    finite = np.isfinite(v)
    if finite.all():
        return v
    bad = int(np.flatnonzero(~finite)[0])
    raise InvalidArgument(f"{what}: value {bad + 1} is {v[bad]} (NaN or infinite)")


def _numbers(text: str, what: str, line_no: int | None = None) -> list[float]:
    out: list[float] = []
    for tok in _SPLIT.split(text.strip()):
        if not tok:
            continue
        try:
            x = float(tok)
        except ValueError:
            where = f" on line {line_no}" if line_no is not None else ""
            raise InvalidArgument(f"{what}: {tok[:40]!r}{where} is not a number") from None
        if not math.isfinite(x):
            where = f" on line {line_no}" if line_no is not None else ""
            raise InvalidArgument(f"{what}: {tok!r}{where} is NaN or infinite")
        out.append(x)
    return out


def _raw(body: bytes, what: str) -> np.ndarray:
    if len(body) % 4:
        raise InvalidArgument(
            f"{what}: {len(body)} bytes of raw float32 is not a multiple of 4 (nor readable text)")
    return _check_finite(np.frombuffer(body, dtype="<f4").astype(np.float32), what)


def parse_vector(data: bytes | str, what: str = "vector") -> np.ndarray:
    """Text numbers or raw little-endian float32 -> a 1-D float32 array; InvalidArgument says why not."""
    if isinstance(data, str):
        return _check_finite(np.asarray(_numbers(data, what), dtype=np.float32), what)
    text = is_text(bytes(data))
    if text is not None:
        return _check_finite(np.asarray(_numbers(text, what), dtype=np.float32), what)
    return _raw(bytes(data), what)


def _option(name: str, value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"{what}: {name}= needs a positive integer, not {value!r}") from None
    if n <= 0:
        raise InvalidArgument(f"{what}: {name}= needs a positive integer, not {n}")
    if name == "k" and n > MAX_K:
        raise InvalidArgument(f"{what}: k={n} is more than {MAX_K}")
    return n


def parse_query(body: bytes, what: str = "query", *, partial: bool = False) -> Query | None:
    """Parse a `.query` body (see the module doc); InvalidArgument (EINVAL) with a clear message.

    `partial`: the body may still grow (checked at write time): no vector yet is not an error
    (None is returned)."""
    opts: dict[str, int] = {}
    text = is_text(body)
    if text is not None:
        nums: list[float] = []
        for i, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            m = _OPTION.match(line)
            if m:
                opts[m.group(1).lower()] = _option(m.group(1).lower(), m.group(2), what)
                continue
            nums.extend(_numbers(line, what, i))
        if partial and not nums:
            return None
        vec = _check_finite(np.asarray(nums, dtype=np.float32), what)
    else:
        m = _RAW_OPTIONS.search(body)
        raw = body
        if m and (m.start() % 4 == 0):
            raw = body[: m.start()]
            for line in body[m.start():].decode("ascii").split("\n"):
                om = _OPTION.match(line)
                if om:
                    opts[om.group(1).lower()] = _option(om.group(1).lower(), om.group(2), what)
        vec = _raw(raw, what)
    return Query(vec, opts.get("k", DEFAULT_K), opts.get("nprobe"))


def format_vector(v: np.ndarray) -> str:
    """Text numbers with 9 significant digits: float32 round-trips exactly and stays readable."""
    return " ".join(f"{float(x):.9g}" for x in v) + "\n"


def format_body(query: Query) -> bytes:
    """A query as a `.query` body (what parse_query reads back as the same query)."""
    opts = f"k={query.k}\n" + (f"nprobe={query.nprobe}\n" if query.nprobe is not None else "")
    return (format_vector(query.vector) + opts).encode()


def format_results(hits: Iterable[Hit]) -> bytes:
    """One line per hit, best first, as the `.query` file reads."""
    return "".join(h.line() for h in hits).encode("utf-8", "surrogateescape")
