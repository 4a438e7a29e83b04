"""Catalog.sync (the mount's fsync) must keep this process's SQLite locks.

close() of any descriptor of the database file drops every POSIX lock the process holds on
it. sync() used to open and close catalog.sqlite: the next `hk` command then took itself for
the last connection on closing, deleted the -wal and -shm under the daemon, and the daemon's
later commits were lost (and its reads failed with 'disk I/O error', EIO in the mount).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Mount

from hkfs.core.store import Store


def _other_process(store: Path, code: str) -> str:
    """Run `code` with `s` = the store opened by another process (an `hk` command)."""
    prog = f"from hkfs.core.store import Store\ns = Store.open({str(store)!r})\n{code}\ns.close()\n"
    return subprocess.run([sys.executable, "-c", prog], check=True, capture_output=True,
                          text=True).stdout


def test_sync_keeps_the_daemons_wal_when_another_process_closes(tmp_path: Path) -> None:
    store = tmp_path / "s"
    daemon = Store.open(store)
    try:
        ns = daemon.namespace_id(0)
        daemon.mkkw(ns, ("a",))
        daemon.catalog.sync()                            # an fsync through the mount
        _other_process(store, "")                        # e.g. `hk kw`, then it exits
        assert Path(f"{store}/catalog.sqlite-shm").exists()
        daemon.mkkw(ns, ("b",))                          # committed after that
        seen = _other_process(store, "print(*s.keyword_children(s.namespace_id(0), ()))")
        assert seen.split() == ["a", "b"]
    finally:
        daemon.close()


def test_fsync_in_the_mount_then_hk_commands(mount: Mount) -> None:
    """The same through a real mount: vim, editors and databases fsync; `hk` commands run
    between saves. Every later change must still reach the catalog every process reads."""
    mount.run("""
        mkdir @/k
        echo x > @/k/f
        "$PY" -c 'import os; fd = os.open("@/k/f", os.O_RDWR); os.fsync(fd); os.close(fd)'
        hk kw >/dev/null
        mkdir @/later
        echo y > @/later/g
        test "$(hk ls //later)" = g
        test "$(cat @/later/g)" = y
    """)
