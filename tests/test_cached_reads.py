"""The read memo stays bounded (hkfs.mount.cached_reads): past MEMO_MAX its per-name answers go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_read_memo_past_its_cap_keeps_view_listings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MEMO_MAX the memo drops its per-name answers but keeps a view's whole listing (one
    query), which the LOOKUPs after a plain readdir use (the libfuse 2 fallback's `ls -l`)."""
    from hkfs.core.store import Store
    from hkfs.mount import cached_reads

    monkeypatch.setattr(cached_reads, "MEMO_MAX", 3)
    with Store.open(tmp_path / "s", create=True) as st:
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, ("k",))
        ids = st.bulk_create(ns, [(f"f{i}", [("k",)]) for i in range(6)])
        reads = cached_reads.CachedReads(st)
        try:
            listing = reads.listing(ns, (("k",),))
            assert sorted(listing) == [f"f{i}" for i in range(6)]
            for eid in ids:
                reads.entity(eid)
            memo = reads.memo()
            assert len(memo) <= 4 and ("view", ns, (("k",),)) in memo
            assert reads.listing(ns, (("k",),)) is listing       # not read again
        finally:
            reads.close()
