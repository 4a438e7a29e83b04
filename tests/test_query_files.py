"""hkfs.query.queryfiles: query bodies (text, raw float32, options) and result lines."""

from __future__ import annotations

import numpy as np
import pytest

from hkfs.core.errors import InvalidArgument
from hkfs.query.queryfiles import DEFAULT_K, Hit, format_results, parse_query, parse_vector


def test_text_vector_with_options() -> None:
    q = parse_query(b"# a comment\n0.5, 1 -2\n[3e-1]\nk=3\nnprobe = 4\n")
    assert q.vector.dtype == np.float32
    assert q.vector.tolist() == pytest.approx([0.5, 1, -2, 0.3])
    assert (q.k, q.nprobe) == (3, 4)


def test_defaults() -> None:
    q = parse_query(b"1 2 3\n")
    assert (q.k, q.nprobe) == (DEFAULT_K, None)


def test_raw_float32_with_and_without_options() -> None:
    v = np.array([0.25, -1.5, 3.0, 1e-3], dtype="<f4")
    assert np.array_equal(parse_query(v.tobytes()).vector, v)
    q = parse_query(v.tobytes() + b"\nk=2\n")
    assert np.array_equal(q.vector, v) and q.k == 2


@pytest.mark.parametrize(("body", "says"), [
    (b"", "no numbers"),
    (b"k=3\n", "no numbers"),
    (b"1 2 x3\n", "'x3' on line 1 is not a number"),
    (b"1 nan 2", "NaN or infinite"),
    (b"1 inf", "NaN or infinite"),
    (b"1 2\nk=0\n", "positive integer"),
    (b"1 2\nk=abc\n", "positive integer"),
    (b"1 2\nk=100000\n", "more than"),
    (b"\xff\xfe\x00", "not a multiple of 4"),
    (np.array([1.0, np.nan], dtype="<f4").tobytes(), "NaN or infinite"),
])
def test_malformed_bodies_say_why(body: bytes, says: str) -> None:
    with pytest.raises(InvalidArgument, match=None) as ei:
        parse_query(body)
    assert says in str(ei.value)
    assert ei.value.errno == 22


def test_parse_vector_text_and_str() -> None:
    assert parse_vector("1 2 3").tolist() == [1, 2, 3]
    assert parse_vector(b"4,5").tolist() == [4, 5]


def test_format_results() -> None:
    out = format_results([Hit(0.9, "@/photo/dog.npy", 3), Hit(0.5, "a/b.txt")])
    assert out == b"0.900000\t@/photo/dog.npy#3\n0.500000\ta/b.txt\n"
