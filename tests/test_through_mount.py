"""`hk` through a shared mount, without FUSE: the daemon's user.hk.info answer per caller
(hkfs.mount.model) and the CLI's reading of mount paths (hkfs.cli.through_mount).
The second user's real runs are in tests/test_second_user.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hkfs.cli.through_mount import Listed, MountCwd, counted
from hkfs.core.errors import InvalidArgument
from hkfs.core.store import Store
from hkfs.mount.model import INFO_ATTR, MountModel

UID, GID = os.getuid(), os.getgid()
OTHER = 4321


@pytest.fixture
def model(tmp_path: Path) -> Iterator[MountModel]:
    st = Store.open(tmp_path / "store")
    m = MountModel(st, st.namespace_id(UID))
    yield m
    m.close()
    st.close()


def test_info_names_only_the_links_the_caller_can_reach(model: MountModel) -> None:
    model.mkdir("/priv", 0o700, UID, GID)
    model.mkdir("/pub", 0o755, UID, GID)
    eid, _ = model.create("/priv/f", 0o644, UID, GID)
    model.link("/priv/f", "/pub/g")
    info = json.loads(model.getxattr("/pub/g", INFO_ATTR))
    assert info == {"id": eid, "name": "f", "namespace": model.store.namespace_user(model.ns),
                    "links": [["/priv/f", None], ["/pub/g", None]]}
    model.shared = True
    model.caller = lambda: (OTHER, OTHER, os.getpid())
    assert json.loads(model.getxattr("/pub/g", INFO_ATTR))["links"] == [["/pub/g", None]]
    model.caller = lambda: (0, 0, os.getpid())
    assert len(json.loads(model.getxattr("/pub/g", INFO_ATTR))["links"]) == 2
    assert INFO_ATTR not in model.listxattr("/pub/g")          # cp -a must not copy it


def test_the_cwd_through_the_mount() -> None:
    w = MountCwd("/mnt", "/a/b/,/@/c")
    assert (w.anchor, w.cwd, w.in_dir, w.keyspace) == ("/mnt/a/b", "/mnt/a/b/,/@/c", False, False)
    assert MountCwd("/mnt", "/").anchor == "/mnt" and MountCwd("/mnt", "/").in_dir
    assert MountCwd("/mnt", "/d/@").keyspace
    assert MountCwd("/mnt", "/").keyword_path(("a", "b")) == "/mnt/@/a/b"
    assert MountCwd("/mnt", "/d").path_of("../x") == "/mnt/x"
    with pytest.raises(InvalidArgument, match="not inside the mount"):
        MountCwd("/mnt", "/d").path_of("../../tmp")


def test_counted_names_as_hk_ls_shows_them() -> None:
    files = [Listed("main~3.tex", "main.tex", 3), Listed("main~5.tex", "main.tex", 5), Listed(",a", "a", 7),
             Listed("b", "b", 8)]
    assert counted(files) == ["a", "b", "main.tex(2)"]


def test_the_attribute_names_are_the_mounts() -> None:
    from hkfs.cli import through_mount as t
    from hkfs.mount import model, queryfs
    from hkfs.query import embeddings

    assert (t.KEYWORDS_ATTR, t.DKL_ATTR, t.NS_ATTR, t.INFO_ATTR) == \
        (model.KEYWORDS_ATTR, model.DKL_ATTR, model.NS_ATTR, model.INFO_ATTR)
    assert (t.QUERY_ATTR, t.QUERY_SUFFIX, t.EMBEDDING_ATTR) == \
        (queryfs.QUERY_ATTR, queryfs.SUFFIX, embeddings.EMBEDDING_ATTR)
