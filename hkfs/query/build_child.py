"""Build a shard's vecindex base in a child process.

vecindex streams a build in 32 MiB chunks, but its working set (chunk copies, labels, the
training sample, the int8 codes) still peaks near 250 MiB for a million 64-d rows: on top
of a daemon's own ~100-160 MiB that passes issue 12's 256 MiB. Run in a fresh interpreter,
the build's memory is the child's and is returned to the system when it exits; the daemon
only opens the finished index (mapped). Used by hkfs.query.embeddings above BUILD_CHILD_BYTES.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["build_in_child"]


def build_in_child(index_dir: Path, rows_path: Path, ids_path: Path, n: int, dim: int, metric: str) -> None:
    """IVFIndex.build(index_dir, rows, ids=ids) in `python -m hkfs.query.build_child`; raises
    RuntimeError with the child's last error lines when it fails."""
    root = str(Path(__file__).resolve().parents[2])      # the directory holding hkfs/ and vecindex/
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "hkfs.query.build_child", str(index_dir), str(rows_path), str(ids_path),
           str(n), str(dim), metric]
    done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RuntimeError(f"index build in a child process failed ({done.returncode}): " + " | ".join(tail))


def main(argv: list[str]) -> None:
    from vecindex import IVFIndex

    index_dir, rows_path, ids_path, n_s, dim_s, metric = argv
    n, dim = int(n_s), int(dim_s)
    x = np.memmap(rows_path, np.float32, "r", shape=(n, dim)) if n else np.zeros((0, dim), np.float32)
    ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    IVFIndex.build(index_dir, x, metric=metric, ids=ids, progress=False).close()


if __name__ == "__main__":
    main(sys.argv[1:])
