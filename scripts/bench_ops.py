#!/usr/bin/env python3
"""CPU time per mount operation without FUSE: HKOperations called directly on a temp store.

What the daemon spends per call, free of the kernel round trip and of the machine's
wall-clock noise (process CPU time). Compare two trees by running each with its own
PYTHONPATH, alternating (docs/bench/mount-model.md):

    PYTHONPATH=/path/to/other/tree python scripts/bench_ops.py --label main
    python scripts/bench_ops.py --label model
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if "PYTHONPATH" not in os.environ:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hkfs.core.store import Store  # noqa: E402
from hkfs.fuse.operations import HKOperations  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="files per step")
    ap.add_argument("--view-files", type=int, default=20000, help="files of the listed view")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    n = a.n
    work = tempfile.mkdtemp(dir="/var/tmp")
    st = Store.open(Path(work) / "s")
    ops = HKOperations(st)
    out: dict[str, float] = {}

    def step(name: str, per: int, fn: Callable[[], None]) -> None:
        t = time.process_time()
        fn()
        out[name] = (time.process_time() - t) / per * 1e6

    def create() -> None:
        for i in range(n):
            fh = ops.create(f"/d/f{i}", 0o644, os.O_WRONLY)
            ops.write(f"/d/f{i}", b"x" * 100, 0, fh)
            ops.flush(f"/d/f{i}", fh)
            ops.release(f"/d/f{i}", fh)

    def view_create() -> None:
        for i in range(n):
            ops.release(f"/@/v/g{i}", ops.create(f"/@/v/g{i}", 0o644, os.O_WRONLY))

    def listing() -> None:
        for _, _, _, attrs_of, key in ops.listing_from("/@/big", 1, 0):
            if attrs_of is not None:
                attrs_of(key)
        ops.releasedir("/@/big", 1)

    try:
        ops.mkdir("/d", 0o755)
        ops.mkdir("/@/v", 0o755)
        ns = st.namespace_id(os.getuid())
        st.mkkw(ns, ("big",))
        st.bulk_create(ns, [(f"b{i:06d}", [("big",)]) for i in range(a.view_files)], make_files=False)
        step("create", n, create)
        step("getattr", n, lambda: [ops.getattr(f"/d/f{i}") for i in range(n)])
        step("view create", n, view_create)
        step("view getattr", n, lambda: [ops.getattr(f"/@/v/g{i}") for i in range(n)])
        step("view utimens", n, lambda: [ops.utimens(f"/@/v/g{i}", None) for i in range(n)])
        step("rename", n, lambda: [ops.rename(f"/d/f{i}", f"/d/h{i}") for i in range(n)])
        step("unlink", n, lambda: [ops.unlink(f"/d/h{i}") for i in range(n)])
        listing()                                        # warm the memo
        step("list view, per file", a.view_files, listing)
    finally:
        ops.destroy("/")
        st.close()
        shutil.rmtree(work, ignore_errors=True)
    print(a.label, " ".join(f"{k}={v:.1f}us" for k, v in out.items()), f"load={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
