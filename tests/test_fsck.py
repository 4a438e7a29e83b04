"""fsck on a temporary store corrupted on purpose, one kind of damage at a time and all at once."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from hkfs.cli.main import cli
from hkfs.core.fsck import check, repair
from hkfs.core.naming import parse_hk
from hkfs.core.store import LOST_FOUND, Store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with Store.open(path) as s:
        ns = s.namespace_id(os.geteuid())
        s.mkkw(ns, parse_hk("//a/b"), parents=True)
        root = s.root_dir(ns)
        d = s.mkdir(root, "work")
        for i in range(3):
            eid = s.create(ns, f"f{i}.txt", hks=[parse_hk("//a/b")])
            s.entity_path(eid).write_text(f"file {i}")
            s.record_bytes(eid)
        s.link(1, d)
        s.akl(d, [parse_hk("//a")])
    return path


def raw(store: Path, *sql: str) -> None:
    """Edit the catalog behind the store's back (foreign keys off), as a broken tool would."""
    c = sqlite3.connect(store / "catalog.sqlite", isolation_level=None)
    c.execute("PRAGMA foreign_keys = OFF")
    for q in sql:
        c.execute(q)
    c.close()


def raw_tag(store: Path, keyword: int, entity: int) -> None:
    """An entity_keywords row (the schema may carry extra columns; fill them empty)."""
    c = sqlite3.connect(store / "catalog.sqlite", isolation_level=None)
    c.execute("PRAGMA foreign_keys = OFF")
    extra = [r[1] for r in c.execute("PRAGMA table_info(entity_keywords)") if r[1] not in ("keyword", "entity")]
    cols = ", ".join(["keyword", "entity", *extra])
    c.execute(f"INSERT INTO entity_keywords({cols}) VALUES (?, ?{', ?' * len(extra)})",
              (keyword, entity, *[""] * len(extra)))
    c.close()


def kinds(store: Path) -> list[str]:
    with Store.open(store) as s:
        return sorted(p.kind for p in check(s))


def fix(store: Path) -> list[str]:
    with Store.open(store) as s:
        done = repair(s, check(s))
        assert check(s) == []
    return done


def test_clean_store(store: Path) -> None:
    assert kinds(store) == []


def test_orphan_bytes_become_an_entity_in_lost_found(store: Path) -> None:
    (store / "entities" / "99").write_text("precious")
    assert kinds(store) == ["orphan-bytes"]
    done = fix(store)
    assert any("orphan bytes entities/99" in d for d in done)
    with Store.open(store) as s:
        ns = s.namespace_id(os.geteuid())
        lf = s.lookup(s.root_dir(ns), LOST_FOUND)
        ent = s.lookup(lf.id, "orphan-99")
        assert ent is not None
        assert s.entity_path(ent.id).read_text() == "precious"
        assert s.entity(ent.id).size == len("precious")


def test_row_without_bytes_is_removed_with_a_report(store: Path) -> None:
    (store / "entities" / "2").unlink()
    assert kinds(store) == ["missing-bytes"]
    done = fix(store)
    assert done == ["removed entity 2 ('f1.txt', keywords //a/b): its bytes were missing"]


def test_dangling_links_tags_dkl_and_keyword_parents(store: Path) -> None:
    raw(store,
        "INSERT INTO links(dir, name, entity) VALUES (2, 'ghost', 777)",
        "DELETE FROM keywords WHERE path = '/a/'",            # //a/b loses its parent
        )
    raw_tag(store, 555, 3)
    got = kinds(store)
    assert "dangling-link" in got and "dangling-tag" in got and "orphan-keyword" in got
    assert "unknown-dkl" in got                               # work's DKL names //a
    fix(store)
    with Store.open(store) as s:
        ns = s.namespace_id(os.geteuid())
        assert s.keyword_exists(ns, ("a",)) and s.keyword_children(ns, ("a",)) == ["b"]
        assert [e.name for e in s.listdir(2)] == ["f0.txt"]
        assert len(s.match(ns, [("a", "b")])) == 3


def test_stale_size_is_recorded_from_the_bytes(store: Path) -> None:
    # what a daemon killed between a write and its flush leaves: more bytes than the catalog says
    with Store.open(store) as s:
        s.entity_path(2).write_text("grown after the last flush")
    assert kinds(store) == ["stale-size"]
    assert fix(store) == ["entity 2: size 26 recorded from its bytes file"]
    with Store.open(store) as s:
        assert s.entity(2).size == 26
        assert s.entity(2).mtime_ns == s.entity_path(2).stat().st_mtime_ns


def test_unreachable_entity_is_linked_into_lost_found(store: Path) -> None:
    raw(store, "DELETE FROM entity_keywords WHERE entity = 3")
    assert kinds(store) == ["unreachable"]
    assert fix(store) == ["linked entity 3 into lost+found as 'f2.txt'"]


def test_orphan_directory_and_stray_file(store: Path) -> None:
    raw(store, "UPDATE dirs SET parent = 999 WHERE name = 'work'")
    (store / "entities" / "tmp.swp").write_text("x")
    assert kinds(store) == ["orphan-dir", "stray-file"]
    with Store.open(store) as s:
        done = repair(s, check(s))
        assert [p.kind for p in check(s)] == ["stray-file"]     # left for a person to look at
    assert "moved directory 2 into lost+found as 'work'" in done


def test_fsck_command(store: Path) -> None:
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert r.exit_code == 0 and r.output.endswith(": clean\n")
    (store / "entities" / "1").unlink()
    (store / "entities" / "42").write_text("lost bytes")
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert r.exit_code == 1
    assert "missing-bytes: entity 1 ('f0.txt') has no bytes file" in r.output
    assert "orphan-bytes: entities/42 has no catalog row" in r.output
    r = CliRunner().invoke(cli, ["fsck", str(store), "--repair"])
    assert r.exit_code == 0, r.output
    assert r.output.endswith("repaired, clean\n")
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert r.exit_code == 0


def test_repair_refuses_a_mounted_store(store: Path) -> None:
    (store / "entities" / "77").write_text("x")
    with Store.open(store) as daemon:
        daemon.lock()                                  # what the mounting daemon holds
        r = CliRunner().invoke(cli, ["fsck", str(store), "--repair"])
        assert r.exit_code == 1
        assert r.output.endswith("is mounted (its daemon holds the lock); unmount it before --repair\n")
        assert (store / "entities" / "77").exists()
        r = CliRunner().invoke(cli, ["fsck", str(store)])    # checking is fine
        assert r.exit_code == 1 and "orphan-bytes" in r.output


def test_fsck_does_not_offer_repair_for_what_repair_leaves(store: Path) -> None:
    (store / "entities" / "tmp.swp").write_text("x")
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert r.exit_code == 1
    assert "--repair to fix" not in r.output
    assert "1 file(s) in " in r.output and "--repair leaves them; move them out of the store by hand" in r.output
    (store / "entities" / "42").write_text("lost bytes")
    r = CliRunner().invoke(cli, ["fsck", str(store)])
    assert "2 problem(s); run with --repair to fix 1 of them" in r.output
    r = CliRunner().invoke(cli, ["fsck", str(store), "--repair"])
    assert r.exit_code == 1
    assert r.output.rstrip().endswith("(move it out of the store by hand)")


def test_stale_tags_string_found_and_rewritten(store: Path) -> None:
    """The tags string (what views match on) is derived from the keywords; fsck finds a stale
    one and --repair rewrites it, so the file shows in its views again."""
    raw(store, "UPDATE entity_keywords SET tags = ',/zzz/,' WHERE entity = 2")
    with Store.open(store) as s:
        probs = check(s)
        assert [(p.kind, p.ids) for p in probs] == [("stale-tags", (2,))]
        done = repair(s, probs)
        assert any("tags string of entity 2" in line for line in done)
        assert check(s) == []


def test_broken_reference_elsewhere_is_reported_and_left(store: Path) -> None:
    """A table no specific check covers (a device number of a missing entity): reported from
    SQLite's foreign_key_check, left alone by --repair (which says so)."""
    raw(store, "INSERT INTO devices(entity, rdev) VALUES (999, 0)")
    with Store.open(store) as s:
        probs = check(s)
        assert [(p.kind, p.ids[0]) for p in probs] == [("broken-reference", "devices")]
        assert any("left devices row" in line for line in repair(s, probs))


def test_keywords_hk_cannot_name_are_found_and_renamed(store: Path) -> None:
    """Keywords made before '@' names were forbidden (//@x, //@x/@y): check reports each, and
    --repair renames them, parents first, clear of a sibling with the wanted name ('_@x')."""
    with Store.open(store) as s:
        ns = s.namespace_id(os.geteuid())
        s.mkkw(ns, parse_hk("//x/y"), parents=True)
        s.mkkw(ns, parse_hk("//_@x"))
        eid = s.create(ns, "old.txt", hks=[parse_hk("//x/y")], directory=s.root_dir(ns))
        d = s.mkdir(s.root_dir(ns), "legacy")
        s.akl(d, [parse_hk("//x/y")])
    raw(store,      # what an older hkfs made: the same tree named //@x/@y
        "UPDATE keywords SET path = '/@x/' || substr(path, 4) WHERE path >= '/x/' AND path < '/x0'",
        "UPDATE keywords SET path = '/@x/@y/' WHERE path = '/@x/y/'",
        "UPDATE keywords SET name = '@' || name WHERE path IN ('/@x/', '/@x/@y/')",
        "UPDATE entity_keywords SET tags = replace(tags, ',/x/y/,', ',/@x/@y/,')",
        "UPDATE dir_keywords SET hk = '//@x/@y' WHERE hk = '//x/y'")
    with Store.open(store) as s:
        probs = check(s)
        assert sorted(p.kind for p in probs) == ["invalid-keyword", "invalid-keyword"]
        kid = probs[0].ids[0]
        done = repair(s, probs)
        assert len(done) == 2 and "renamed keyword //@x to //_@x~" in done[0]
        assert check(s) == []
        ns = s.namespace_id(os.geteuid())
        new = (f"_@x~{kid}", "_@y")
        assert [e.id for e in s.match(ns, [new])] == [eid]
        assert s.dir(d).dkl == (new,)
        assert s.keyword_exists(ns, ("_@x",)) and s.keyword_children(ns, ("_@x",)) == []
