"""The compiled search path (numba) against the pure-numpy one: same hits, same order."""

from __future__ import annotations

import numpy as np
import pytest

from vecindex import IVFIndex, _kernels

pytestmark = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba not installed or VECINDEX_NUMBA=0 (numpy path only)")


def _both(monkeypatch, ix: IVFIndex, q: np.ndarray, **kw):
    got = ix.search(q, **kw)
    monkeypatch.setattr(_kernels, "HAVE_NUMBA", False)
    want = ix.search(q, **kw)
    monkeypatch.setattr(_kernels, "HAVE_NUMBA", True)
    return got, want


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("scan", ["int8", "none"])
def test_compiled_matches_numpy(tmp_path, monkeypatch, metric: str, scan: str) -> None:
    rng = np.random.default_rng(5)
    c = rng.standard_normal((12, 16)) * 3
    x = (c[rng.integers(0, 12, 4000)] + rng.standard_normal((4000, 16))).astype(np.float32)
    q = (c[rng.integers(0, 12, 20)] + rng.standard_normal((20, 16))).astype(np.float32)
    ix = IVFIndex.build(tmp_path / "ix", x, metric=metric, nlist=16, scan=scan, progress=False)
    ix.remove(np.arange(0, 4000, 7))  # deleted rows are skipped
    ix.add(x[:300] + 0.01, np.arange(10_000, 10_300))  # the tail is merged in
    for kw in ({"k": 7, "nprobe": 4}, {"k": 3, "nprobe": 16, "threads": 2},
               {"k": 5, "nprobe": 2, "allowed_ids": np.arange(1, 4000, 3), "exact_limit": 10},
               {"k": 5000, "nprobe": 1}):  # more hits than rows in scope: id -1
        (gs, gi), (ws, wi) = _both(monkeypatch, ix, q, **kw)
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_allclose(gs, ws, rtol=1e-4, atol=1e-3)
    ix.close()
