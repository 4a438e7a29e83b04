"""Whether the compiled search path is used, and the lazy import of its kernels.

numba is optional: without it (or with `VECINDEX_NUMBA=0`) searches take the pure-numpy
path in ivf.py, which returns the same hits (tests/test_vecindex_kernels.py). numba is
imported on the first search, not with vecindex: importing it and loading the cached
machine code costs about 65 MiB of RSS and 1-3 s once per process, which builds and
processes that never search should not pay.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

HAVE_NUMBA = os.environ.get("VECINDEX_NUMBA", "1") != "0" and importlib.util.find_spec("numba") is not None


def search_batch(*args: Any) -> int:  # noqa: F811 (rebound to the compiled kernel on first use)
    """vecindex._numba_search.search_batch (see there), imported on first use."""
    global search_batch
    from vecindex._numba_search import search_batch as compiled

    search_batch = compiled
    return compiled(*args)
