"""hkfs.core.aggregates: the SQLite aggregates in C that a big listing reads with
(hkfs_int64s: integer columns as one BLOB; hkfs_repeated: the values that repeat among
values in order), registered for every connection opened after a Catalog, and the store's
answers with them equal to those without (text, GROUP BY)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from hkfs.core import aggregates
from hkfs.core.store import Store

pytest.importorskip("hkfs.core._aggregates")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store.open(tmp_path / "store")
    assert st.catalog.aggregates
    yield st
    st.close()


def test_connections_opened_after_registering_have_them(store: Store) -> None:
    assert aggregates.register()                               # once per process: no second registration
    c = sqlite3.connect(":memory:")
    blob = c.execute("SELECT hkfs_int64s(column1, column2) FROM (VALUES (1, -2), (9223372036854775807, 3))").fetchone()[0]
    assert np.frombuffer(blob, np.int64).reshape(-1, 2).tolist() == [[1, -2], [2**63 - 1, 3]]
    assert c.execute("SELECT hkfs_int64s(a) FROM (SELECT 1 AS a WHERE 0)").fetchone()[0] is None
    got = c.execute("SELECT hkfs_repeated(column1) FROM (VALUES ('a'), ('a'), ('a'), ('ab'), ('b'), ('b'), ('c'))")
    assert got.fetchone()[0] == "a/b"
    with pytest.raises(sqlite3.OperationalError, match="not in order"):
        c.execute("SELECT hkfs_repeated(column1) FROM (VALUES ('b'), ('a'), ('a'))").fetchone()


def test_shared_names_are_those_group_by_gives(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names that are prefixes of others, of other lengths, non-ASCII, each once however often borne."""
    ns = store.namespace_id(os.getuid())
    store.mkkw(ns, "//k")
    names = ["a", "a", "ab", "ab.txt", "ab.txt", "ab.txt", "b", "é", "é", "e", "zz", "z", "zz", "ab"]
    store.bulk_create(ns, [(n, [("k",)]) for n in names])
    got = store.shared_names(ns)
    assert got == {"a", "ab", "ab.txt", "é", "zz"}
    monkeypatch.setattr(store.catalog, "aggregates", False)
    assert store.shared_names(ns) == got
