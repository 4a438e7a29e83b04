"""`hk embed` / `hk query` on a store (CliRunner, --store): same results as the core, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from hkfs.cli.main import cli
from hkfs.core.store import Store


def make_store(path: Path) -> None:
    with Store.open(path) as st:
        ns = st.namespace_id(os.geteuid())
        st.mkkw(ns, "//photo/dog", parents=True)
        e = st.create(ns, "rows.npy", hks=["//photo/dog"], uid=0, gid=0)
        with open(st.entity_path(e), "wb") as f:
            np.save(f, np.eye(4, dtype=np.float32))
        st.set_attrs(e, size=st.entity_path(e).stat().st_size)
        st.create(ns, "b.txt", hks=["//photo"], uid=0, gid=0)


def hk(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def test_embed_and_query(tmp_path: Path) -> None:
    s = str(tmp_path / "s")
    make_store(tmp_path / "s")
    v = tmp_path / "v.npy"
    np.save(v, np.array([[0, 0, 0, 1], [1, 1, 0, 0]], np.float32))
    assert hk("embed", "--store", s, "//photo,b.txt", "--from", str(v), "--row", "1") == (0, "")
    assert hk("embed", "--store", s, "//photo,b.txt", "--show") == (0, "1 1 0 0\n")
    code, out = hk("query", "--store", s, "//photo", "--vector", "1 0 0 0", "-k", "3")
    assert code == 0
    assert out.splitlines() == ["1.000000\t@/photo/rows.npy#0", "0.707107\t@/photo/b.txt",
                                "0.000000\t@/photo/rows.npy#1"]
    code, out = hk("query", "--store", s, "//photo/dog", "--like", "//photo,b.txt", "-k", "2")
    assert code == 0 and out.splitlines()[0] == "0.707107\t@/photo/dog/rows.npy#0"
    assert all("b.txt" not in ln for ln in out.splitlines())


def test_errors_say_what_is_wrong(tmp_path: Path) -> None:
    s = str(tmp_path / "s")
    make_store(tmp_path / "s")
    v = tmp_path / "v.npy"
    np.save(v, np.zeros((2, 4), np.float32))
    cases = [
        (("query", "--store", s, "//photo", "--vector", "1 0 x 0"), "'x' is not a number"),
        (("query", "--store", s, "//photo", "--vector", "1 0 0"), "dimension 3"),
        (("query", "--store", s, "//photo", "--vector", "1 nan 0 0"), "NaN"),
        (("query", "--store", s, "//nokw", "--vector", "1 0 0 0"), "no keyword"),
        (("query", "--store", s, "//photo,b.txt", "--vector", "1 0 0 0"), "names a view, not a file"),
        (("query", "--store", s, "//photo//@not/nokw", "--vector", "1 0 0 0"), "no keyword //nokw"),
        (("query", "--store", s, "//photo", "--like", "//photo,b.txt"), "has no embedding"),
        (("query", "--store", s, "//photo"), "one of --vector or --like"),
        (("embed", "--store", s, "//photo,b.txt", "--from", str(v)), "--row"),
        (("embed", "--store", s, "//photo,b.txt", "--vector", "1 inf"), "NaN or infinite"),
    ]
    for args, says in cases:
        code, out = hk(*args)
        assert code != 0 and says in out, (args, out)


def test_cli_constants_match_the_core() -> None:
    from hkfs.cli import embed as cli_embed
    from hkfs.query import embeddings, queryfiles
    assert cli_embed.EMBEDDING_ATTR == embeddings.EMBEDDING_ATTR
    assert (cli_embed.DEFAULT_K, cli_embed.MAX_K) == (queryfiles.DEFAULT_K, queryfiles.MAX_K)
