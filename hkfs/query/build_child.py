"""Build a shard's vecindex base in a child process.

vecindex streams a build in 32 MiB chunks, but its working set (chunk copies, labels, the
training sample, the int8 codes) still peaks near 250 MiB for a million 64-d rows: on top
of a daemon's own ~100-160 MiB that passes issue 12's 256 MiB. Run in a fresh interpreter,
the build's memory is the child's and is returned to the system when it exits; the daemon
only opens the finished index (mapped). Used by hkfs.query.embeddings above BUILD_CHILD_BYTES.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["build_in_child", "die_with_parent"]

PARENT_ENV = "HKFS_BUILD_PARENT"   # the daemon's pid, so the child can tell it has gone
PR_SET_PDEATHSIG = 1


def build_in_child(index_dir: Path, rows_path: Path, ids_path: Path, n: int, dim: int, metric: str) -> None:
    """IVFIndex.build(index_dir, rows, ids=ids) in `python -m hkfs.query.build_child`; raises
    RuntimeError with the child's last error lines when it fails."""
    root = str(Path(__file__).resolve().parents[2])      # the directory holding hkfs/ and vecindex/
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[PARENT_ENV] = str(os.getpid())
    cmd = [sys.executable, "-m", "hkfs.query.build_child", str(index_dir), str(rows_path), str(ids_path),
           str(n), str(dim), metric]
    done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RuntimeError(f"index build in a child process failed ({done.returncode}): " + " | ".join(tail))


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the thread that started it goes (Linux
    PR_SET_PDEATHSIG), and exit now if the parent is already gone: a killed or unmounted daemon
    must not leave a build running behind it (its result would be thrown away anyway: a build
    is only used by the worker that waits for it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass                                               # not Linux: the check below still runs
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> None:
    from vecindex import IVFIndex

    if os.environ.get(PARENT_ENV):
        die_with_parent(int(os.environ[PARENT_ENV]))

    index_dir, rows_path, ids_path, n_s, dim_s, metric = argv
    n, dim = int(n_s), int(dim_s)
    x = np.memmap(rows_path, np.float32, "r", shape=(n, dim)) if n else np.zeros((0, dim), np.float32)
    ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    IVFIndex.build(index_dir, x, metric=metric, ids=ids, progress=False).close()


if __name__ == "__main__":
    main(sys.argv[1:])
