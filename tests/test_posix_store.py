"""The store's side of POSIX special files (issue 11): file types in mode, device numbers (v4)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from hkfs.core import migrations
from hkfs.core.fsck import check
from hkfs.core.store import Store


def test_special_files_keep_their_type_and_device_number(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as s:
        ns = s.namespace_id("erin")
        root = s.root_dir(ns)
        fifo = s.create(ns, "fifo", directory=root, mode=stat.S_IFIFO | 0o640)
        dev = s.create(ns, "null", directory=root, mode=stat.S_IFCHR | 0o666)
        s.set_rdev(dev, 0x103)
        assert s.entity(fifo).mode == stat.S_IFIFO | 0o640 and s.rdev(fifo) == 0
        assert s.rdev(dev) == 0x103
        s.set_attrs(dev, mode=0o600)                           # chmod keeps the type
        assert s.entity(dev).mode == stat.S_IFCHR | 0o600
        s.unlink(root, "null")                                 # its device row goes with it
        with s.catalog.read() as c:
            assert c.execute("SELECT count(*) FROM devices").fetchone()[0] == 0
        assert check(s) == []


def test_migration_v4_adds_the_devices_table(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s")
    ns = s.namespace_id("erin")
    f = s.create(ns, "f", directory=s.root_dir(ns))
    s.close()
    with sqlite3.connect(tmp_path / "s" / "catalog.sqlite") as c:     # a v3 catalog
        c.execute("DROP TABLE devices")
        c.execute("PRAGMA user_version = 3")
    s = Store.open(tmp_path / "s")
    assert migrations.user_version(s.catalog.connection()) == migrations.SCHEMA_VERSION >= 4
    s.set_rdev(f, 5)
    assert s.rdev(f) == 5
    s.close()


def test_mkkw_parents_a_thousand_levels_deep(tmp_path: Path) -> None:
    """mkkw -p made the missing parents by recursion: RecursionError at ~1,000 levels."""
    import pytest

    from hkfs.core.errors import NotFound
    hk = tuple(f"k{i}" for i in range(1000))
    with Store.open(tmp_path / "s") as s:
        ns = s.namespace_id("erin")
        s.mkkw(ns, hk[:2], parents=True)
        with pytest.raises(NotFound, match="parent keyword"):
            s.mkkw(ns, hk)
        leaf = s.mkkw(ns, hk, parents=True)
        assert s.mkkw(ns, hk, parents=True) == leaf
        assert s.keyword_exists(ns, hk) and s.keyword_exists(ns, hk[:500])
        assert s.keyword_children(ns, hk[:999]) == ["k999"]
        from hkfs.core.fsck import check
        assert check(s) == []                    # every level has the right parent


def test_blocked_dirs_follow_search_permission_down_the_tree(tmp_path: Path) -> None:
    from hkfs.mount.access import blocked_dirs
    # root(1, 755 root) / priv(2, 700 root) / sub(3, 777) ; pub(4, 750 root:grp 50)
    dirs = [(1, None, 0o755, 0, 0), (2, 1, 0o700, 0, 0), (3, 2, 0o777, 0, 0), (4, 1, 0o750, 0, 50)]
    assert blocked_dirs(dirs, 1000, frozenset([1000])) == {2, 3, 4}
    assert blocked_dirs(dirs, 1000, frozenset([1000, 50])) == {2, 3}
    assert blocked_dirs(dirs, 0, frozenset([0])) == set()
    with Store.open(tmp_path / "s") as s:
        ns = s.namespace_id("erin")
        root = s.root_dir(ns)
        priv = s.mkdir(root, "priv", mode=0o700)
        pub = s.mkdir(root, "pub")
        only = s.create(ns, "only", directory=priv)
        both = s.create(ns, "both", directory=priv)
        s.link(both, pub)
        s.create(ns, "elsewhere", directory=pub)
        assert s.linked_only_in([priv]) == {only}
        assert s.linked_only_in([]) == set()
        assert {d[0] for d in s.dir_perms()} >= {root, priv, pub}
