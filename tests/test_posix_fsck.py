"""fsck for what a crash can leave (issue 11 item 4): shared bytes files; a check never writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from hkfs.cli.main import cli
from hkfs.core.errors import StoreVersionError
from hkfs.core.fsck import check, repair
from hkfs.core.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with Store.open(path) as s:
        ns = s.namespace_id(os.geteuid())
        root = s.root_dir(ns)
        for name in ("doc.txt", "doc.txt~tmp", "other.txt"):
            eid = s.create(ns, name, directory=root)
            s.entity_path(eid).write_text(f"bytes of {name}")
            s.record_bytes(eid)
    return path


def share(store: Path, a: int, b: int) -> None:
    """What a crash in the middle of an editor save leaves: b's name is a hard link to a's bytes."""
    ent = store / "entities"
    os.unlink(ent / str(b))
    os.link(ent / str(a), ent / str(b))


def test_shared_bytes_found_and_separated(store: Path) -> None:
    share(store, 1, 2)
    with Store.open(store) as s:
        problems = check(s)
        assert [p.kind for p in problems] == ["shared-bytes", "stale-size"]
        assert "entity 1 ('doc.txt') and entity 2 ('doc.txt~tmp') share one bytes file" in str(problems[0])
        done = repair(s, problems)
        assert any("entities 1, 2 now have bytes files of their own" in d for d in done)
        assert check(s) == []
        p1, p2 = s.entity_path(1), s.entity_path(2)
        assert p1.read_text() == p2.read_text() == "bytes of doc.txt"
        assert os.stat(p1).st_ino != os.stat(p2).st_ino
        p2.write_text("a write to the temp name")
        assert p1.read_text() == "bytes of doc.txt"          # the document no longer changes with it


def test_bytes_linked_from_outside_the_store_are_copied(store: Path, tmp_path: Path) -> None:
    os.link(store / "entities" / "3", tmp_path / "outside")
    with Store.open(store) as s:
        problems = check(s)
        assert [p.kind for p in problems] == ["shared-bytes"]
        assert "1 link(s) outside entities/" in str(problems[0])
        repair(s, problems)
        assert check(s) == []
    (tmp_path / "outside").write_text("changed outside")
    assert (store / "entities" / "3").read_text() == "bytes of other.txt"


def test_fsck_command_reports_and_repairs_shared_bytes(store: Path) -> None:
    share(store, 1, 2)
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert r.exit_code == 1 and "shared-bytes: entity 1" in r.output
    r = CliRunner().invoke(cli, ["fsck", str(store), "--repair"])
    assert r.exit_code == 0 and r.output.endswith("repaired, clean\n"), r.output


def _digest(store: Path) -> dict[str, str]:
    """The catalog's and the entity files' contents (SQLite may make its -wal/-shm files
    to read a WAL catalog: bookkeeping, not the catalog)."""
    files = [store / "catalog.sqlite", *(store / "entities").iterdir()]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_check_only_never_writes(store: Path) -> None:
    """A check-only fsck opens the catalog read-only: a clean or damaged store is left
    byte for byte as it was, and a 0-byte catalog gets no schema written into it."""
    share(store, 1, 2)
    before = _digest(store)
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert r.exit_code == 1
    assert _digest(store) == before
    (store / "catalog.sqlite").write_bytes(b"")
    for extra in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (store / extra).unlink(missing_ok=True)
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert r.exit_code == 1
    assert "has no hkfs schema" in r.output
    assert (store / "catalog.sqlite").stat().st_size == 0


def test_readonly_open_refuses_an_empty_catalog(tmp_path: Path) -> None:
    (tmp_path / "catalog.sqlite").write_bytes(b"")
    with pytest.raises(StoreVersionError):
        Store.open(tmp_path, readonly=True)
    assert (tmp_path / "catalog.sqlite").stat().st_size == 0
    assert not (tmp_path / "entities").exists()


def test_readonly_store_reads(store: Path) -> None:
    with Store.open(store, readonly=True) as s:
        ns = s.namespace_id(os.geteuid())
        assert [e.name for e in s.listdir(s.root_dir(ns))] == ["doc.txt", "doc.txt~tmp", "other.txt"]

