"""Which search kernel vecindex uses, and the lazy import of the numba one.

Three kernels return the same hits (tests/test_vecindex_kernels.py compares them):

- "c": vecindex._csearch, a C extension built at install time when a compiler is there
  (setup.py, `optional=True`). The default: ~1 MiB of RSS, a few microseconds a call,
  and it releases the GIL, so batch threads run in parallel.
- "numba": vecindex._numba_search (extra `fast`), for a machine without a compiler.
  Imported on the first search, not with vecindex: numba/llvmlite cost ~130 MiB of RSS
  and 1-3 s once per process.
- "numpy": the pure-numpy path in ivf.py, always there.

`VECINDEX_KERNEL=c|numba|numpy` picks one (an unavailable choice falls back in that
order); `VECINDEX_NUMBA=0` (older switch) rules numba out.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

KERNELS = ("c", "numba", "numpy")


def available() -> list[str]:
    """The kernels this install can run, best first."""
    out = []
    if importlib.util.find_spec("vecindex._csearch") is not None:
        out.append("c")
    if os.environ.get("VECINDEX_NUMBA", "1") != "0" and importlib.util.find_spec("numba") is not None:
        out.append("numba")
    return [*out, "numpy"]


def _choose() -> str:
    have = available()
    want = os.environ.get("VECINDEX_KERNEL", "")
    if want and want not in KERNELS:
        warnings.warn(f"VECINDEX_KERNEL={want!r} ignored: expected one of {', '.join(KERNELS)}",
                      stacklevel=2)
        want = ""
    order = KERNELS[KERNELS.index(want):] if want else KERNELS
    return next(k for k in order if k in have)


#: the kernel searches use; tests set it to compare kernels
KERNEL = _choose()


def numba_search_batch(*args: Any) -> int:  # noqa: F811 (rebound to the compiled kernel on first use)
    """vecindex._numba_search.search_batch (see there), imported on first use."""
    global numba_search_batch
    from vecindex._numba_search import search_batch as compiled

    numba_search_batch = compiled
    return compiled(*args)
