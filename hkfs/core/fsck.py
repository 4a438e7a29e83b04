"""fsck: find what is inconsistent between the catalog and the entity files, and repair it.

The store's transactions keep it consistent; this is for what they cannot
prevent (a disk restored from backup, a file deleted by hand, a catalog edited
with foreign keys off, a crash between writing bytes and committing their row).
`check` is the store's one consistency check (tests use it too); it is read-only. `repair` never deletes bytes that no row names: orphan
bytes become a new entity in lost+found, so nothing a user wrote is lost.

Checks are SQL over the store's own catalog connection; repairs use the public
Store API where it has the operation (create, link, rme, rkl, mkkw) and plain
SQL deletes only for rows that point at nothing (they have no API because the
store never makes them).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

from .errors import HKSyntaxError
from .naming import HK, clash_name, validate_component
from .store import LOST_FOUND, Store

__all__ = ["Problem", "check", "repair", "stale_sizes", "repair_sizes", "KINDS", "REPORT_ONLY"]

log = logging.getLogger(__name__)

KINDS = {
    "orphan-bytes": "a bytes file no catalog row names",
    "stray-file": "a file in entities/ that is not an entity id",
    "missing-bytes": "an entity row whose bytes file is missing",
    "dangling-link": "a directory link to a missing entity or directory",
    "dangling-tag": "a keyword attachment to a missing entity or keyword",
    "orphan-keyword": "a keyword whose parent keyword is missing or wrong",
    "invalid-keyword": "a keyword whose name today's rules refuse (made before they did, e.g. '@x'): "
                       "no hk command can name it",
    "unreachable": "an entity with no keyword and no directory link",
    "unknown-dkl": "a directory keyword list naming a missing keyword",
    "orphan-dir": "a directory whose parent directory is missing",
    "stale-size": "an entity whose recorded size differs from its bytes file (a crash while writing)",
    "stale-tags": "an entity whose derived tags string (what views match on) disagrees with its keywords",
    "broken-reference": "a catalog row referring to a row that is missing (SQLite's foreign_key_check) "
                        "in a table no other check covers",
    "shared-bytes": "entities whose bytes files are one file (hard links: a crash during an editor save); "
                    "a write to one would change the other",
}


# What `repair` leaves for a person (it cannot know what the file is): fsck must not
# tell the user to run --repair for these.
REPORT_ONLY = frozenset({"stray-file", "broken-reference"})

# Tables whose broken references the specific checks above report (and repair) themselves.
_COVERED_TABLES = frozenset({"links", "entity_keywords", "keywords", "dir_keywords", "dirs"})


@dataclass(frozen=True)
class Problem:
    kind: str                    # a key of KINDS
    message: str
    ids: tuple = field(default=())   # what repair needs (entity id, (dir, name), ...)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def _hk(path: str) -> HK:
    return tuple(path[1:-1].split("/"))


def check(store: Store) -> list[Problem]:
    """Every inconsistency found, read-only; empty when the store is consistent."""
    out: list[Problem] = []
    with store.catalog.read() as c:
        names = dict(c.execute("SELECT id, name FROM entities"))
        ids = set(names)
        for d, name, e in c.execute(
                "SELECT l.dir, l.name, l.entity FROM links l WHERE l.entity NOT IN (SELECT id FROM entities) "
                "OR l.dir NOT IN (SELECT id FROM dirs) ORDER BY l.dir, l.name"):
            out.append(Problem("dangling-link", f"link {name!r} in directory {d} -> entity {e}, which is missing",
                               (d, name)))
        for k, e in c.execute(
                "SELECT keyword, entity FROM entity_keywords WHERE entity NOT IN (SELECT id FROM entities) "
                "OR keyword NOT IN (SELECT id FROM keywords) ORDER BY entity, keyword"):
            out.append(Problem("dangling-tag", f"entity {e} tagged with keyword {k}, one of which is missing",
                               (k, e)))
        for kid, ns, path, parent in c.execute(
                "SELECT k.id, k.ns, k.path, k.parent FROM keywords k ORDER BY k.ns, k.path"):
            hk = _hk(path)
            want = None
            if len(hk) > 1:
                r = c.execute("SELECT id FROM keywords WHERE ns = ? AND path = ?",
                              (ns, "/" + "/".join(hk[:-1]) + "/")).fetchone()
                want = r[0] if r else None
            try:
                validate_component(hk[-1])
            except HKSyntaxError as exc:
                out.append(Problem("invalid-keyword", f"keyword {'//' + '/'.join(hk)} (id {kid}): {exc}",
                                   (kid, ns)))
            if parent != want or (len(hk) > 1 and want is None):
                out.append(Problem("orphan-keyword", f"keyword {'//' + '/'.join(hk)} (id {kid}) has parent "
                                   f"{parent}, expected {want if want is not None else 'a missing keyword'}",
                                   (kid, ns, hk)))
        for (eid,) in c.execute(
                "SELECT id FROM entities e WHERE NOT EXISTS (SELECT 1 FROM entity_keywords x JOIN keywords k "
                "ON k.id = x.keyword WHERE x.entity = e.id) AND NOT EXISTS (SELECT 1 FROM links l JOIN dirs d "
                "ON d.id = l.dir WHERE l.entity = e.id) ORDER BY id"):
            out.append(Problem("unreachable", f"entity {eid} ({names[eid]!r}) has no keyword and no link", (eid,)))
        for d, dns, hk_text in c.execute("SELECT dk.dir, d.ns, dk.hk FROM dir_keywords dk JOIN dirs d ON "
                                         "d.id = dk.dir ORDER BY dk.dir, dk.pos"):
            path = "/" + hk_text[2:] + "/"
            if not c.execute("SELECT 1 FROM keywords WHERE ns = ? AND path = ?", (dns, path)).fetchone():
                out.append(Problem("unknown-dkl", f"directory {d} lists {hk_text}, which does not exist",
                                   (d, hk_text)))
        for (eid,) in c.execute(
                "SELECT DISTINCT x.entity FROM entity_keywords x JOIN keywords k ON k.id = x.keyword "
                "WHERE instr(x.tags, ',' || k.path || ',') = 0 OR x.tags != "
                "(SELECT y.tags FROM entity_keywords y WHERE y.entity = x.entity LIMIT 1) ORDER BY x.entity"):
            out.append(Problem("stale-tags", f"entity {eid} ({names.get(eid, '?')!r}) has a stale tags string",
                               (eid,)))
        for table, rowid, parent, _fk in c.execute("PRAGMA foreign_key_check"):
            if table not in _COVERED_TABLES:
                out.append(Problem("broken-reference", f"{table} row {rowid} refers to a missing {parent} row",
                                   (table, rowid)))
        for d, name, parent in c.execute("SELECT id, name, parent FROM dirs WHERE parent IS NOT NULL AND "
                                         "parent NOT IN (SELECT id FROM dirs) ORDER BY id"):
            out.append(Problem("orphan-dir", f"directory {d} ({name!r}) has missing parent {parent}", (d,)))
    files: set[int] = set()
    inodes: dict[tuple[int, int], list[int]] = {}
    links: dict[tuple[int, int], int] = {}
    for p in sorted(store.entities_dir.iterdir()):
        if p.name.isdigit() and str(int(p.name)) == p.name:
            files.add(int(p.name))
            st = p.lstat()
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                inodes.setdefault(key, []).append(int(p.name))
                links[key] = st.st_nlink
        else:
            out.append(Problem("stray-file", f"entities/{p.name} is not named by an entity id", (p.name,)))
    for eid in sorted(ids - files):
        out.append(Problem("missing-bytes", f"entity {eid} ({names[eid]!r}) has no bytes file", (eid,)))
    for eid in sorted(files - ids):
        out.append(Problem("orphan-bytes", f"entities/{eid} has no catalog row", (eid,)))
    for key, eids in sorted(inodes.items(), key=lambda kv: sorted(kv[1])):
        eids.sort()
        outside = links[key] - len(eids)
        named = " and ".join(f"entity {e} ({names.get(e, '?')!r})" for e in eids)
        more = f" (and {outside} link(s) outside entities/)" if outside else ""
        out.append(Problem("shared-bytes", f"{named} share one bytes file{more}", tuple(eids)))
    out += stale_sizes(store)
    return out


def _unshare(store: Store, eid: int) -> None:
    """Give entity eid a bytes file of its own: a copy renamed over its name (a crash leaves
    the shared file or the copy, never neither)."""
    path = store.entity_path(eid)
    tmp = path.with_name(f"{eid}.unsharing")
    shutil.copy2(path, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stale_sizes(store: Store) -> list[Problem]:
    """Entities whose catalog size differs from their bytes file.

    The mount reports a closed file's size and mtime from the catalog (one query lists a
    whole view); the daemon records them when a written file is flushed or closed, so
    only a daemon killed in between leaves them stale. The daemon runs this at start
    after an unclean stop (hkfs.fuse.daemon)."""
    out: list[Problem] = []
    with store.catalog.read() as c:
        rows = c.execute("SELECT id, size FROM entities ORDER BY id").fetchall()
    base = os.fspath(store.entities_dir)
    for eid, size in rows:
        try:
            st = os.stat(f"{base}/{eid}")
        except FileNotFoundError:
            continue                      # missing-bytes, reported on its own
        if st.st_size != size:        # mtimes differ by design (the catalog's is taken at create)
            out.append(Problem("stale-size", f"entity {eid}: catalog says {size} bytes, the file has "
                               f"{st.st_size}", (eid, st.st_size, st.st_mtime_ns)))
    return out


def repair_sizes(store: Store, problems: list[Problem] | None = None) -> list[str]:
    """Record the bytes files' sizes and mtimes for stale-size problems (all found now if None)."""
    done = []
    for p in stale_sizes(store) if problems is None else problems:
        if p.kind == "stale-size":
            eid, size, mtime_ns = p.ids
            store.set_attrs(eid, size=size, mtime_ns=mtime_ns)
            done.append(f"entity {eid}: size {size} recorded from its bytes file")
    return done


def _lost_found(store: Store, ns: int) -> int:
    root = store.root_dir(ns)
    e = store.lookup(root, LOST_FOUND)
    if e is not None and e.kind == "dir":
        return e.id
    return store.mkdir(root, LOST_FOUND, mode=0o700)


def _free_name(store: Store, dirid: int, name: str, eid: int) -> str:
    if store.lookup(dirid, name) is None:
        return name
    alt = clash_name(name, eid)
    return alt if store.lookup(dirid, alt) is None else f"{name}~{eid}~fsck"


def _owner_ns(store: Store, path: os.PathLike[str] | str) -> int:
    """The namespace of the bytes file's owner, else the first namespace (made for the owner if none)."""
    uid = os.stat(path).st_uid
    with store.catalog.read() as c:
        r = c.execute("SELECT id FROM namespaces WHERE uid = ? ORDER BY id LIMIT 1", (uid,)).fetchone()
        if r is None:
            r = c.execute("SELECT id FROM namespaces ORDER BY id LIMIT 1").fetchone()
    return r[0] if r else store.namespace_id(uid)


def _valid_name(name: str) -> str:
    """A name today's rules accept, close to `name`: '_' before a leading '@' or a reserved
    name, '_' for each character a keyword component may not hold."""
    fixed = "".join(ch if ch.isprintable() and ch not in "/," else "_" for ch in name)
    if not fixed or fixed.startswith("@") or fixed in (".", ".."):
        fixed = "_" + fixed
    return fixed


def _rename_invalid_keywords(store: Store, problems: list[Problem]) -> list[str]:
    """Rename each keyword hk cannot name to a valid name free among its siblings ('@x' ->
    '_@x', else '_@x~ID'), parents first, so each rename finds its parents valid."""
    done: list[str] = []
    todo = []
    for p in problems:
        kid, ns = p.ids
        with store.catalog.read() as c:
            r = c.execute("SELECT path FROM keywords WHERE id = ?", (kid,)).fetchone()
        if r is not None:
            todo.append((r[0].count("/"), kid, ns))
    for _depth, kid, ns in sorted(todo):
        with store.catalog.read() as c:
            hk = _hk(c.execute("SELECT path FROM keywords WHERE id = ?", (kid,)).fetchone()[0])
        want = _valid_name(hk[-1])
        taken = set(store.keyword_children(ns, hk[:-1]))
        name = want if want not in taken else f"{want}~{kid}"
        try:
            validate_component(name)
        except HKSyntaxError:
            name = f"_keyword~{kid}"          # e.g. over 255 bytes once fixed
        new = store.rename_invalid_keyword(ns, hk, name)
        done.append(f"renamed keyword {'//' + '/'.join(hk)} to {'//' + '/'.join(new)} (hk could not name it)")
    return done


def repair(store: Store, problems: list[Problem]) -> list[str]:
    """Fix what `check` found; returns one line per action taken (what a user must know)."""
    done: list[str] = []
    # Rows pointing at nothing first, so later steps see a clean graph.
    with store.catalog.write() as c:
        for p in problems:
            if p.kind == "dangling-link":
                c.execute("DELETE FROM links WHERE dir = ? AND name = ?", p.ids)
                done.append(f"removed link {p.ids[1]!r} in directory {p.ids[0]} (it pointed at nothing)")
            elif p.kind == "dangling-tag":
                c.execute("DELETE FROM entity_keywords WHERE keyword = ? AND entity = ?", p.ids)
                done.append(f"removed the tag of entity {p.ids[1]} with missing keyword/entity {p.ids[0]}")
    # Let the store rewrite whatever it derives from an entity's tags (set_hks with what is left).
    retag = {p.ids[1] for p in problems if p.kind == "dangling-tag"}
    retag |= {p.ids[0] for p in problems if p.kind == "stale-tags"}
    for eid in sorted(retag):
        with store.catalog.read() as c:
            if not c.execute("SELECT 1 FROM entities WHERE id = ?", (eid,)).fetchone():
                continue
            left = [_hk(r[0]) for r in c.execute(
                "SELECT k.path FROM entity_keywords x JOIN keywords k ON k.id = x.keyword WHERE x.entity = ?",
                (eid,))]
        store.set_hks(eid, left)
        if any(p.kind == "stale-tags" and p.ids[0] == eid for p in problems):
            done.append(f"rewrote the tags string of entity {eid} from its keywords")
    for p in problems:
        if p.kind == "orphan-keyword":
            kid, ns, hk = p.ids
            parent = store.mkkw(ns, hk[:-1], parents=True) if len(hk) > 1 else None
            with store.catalog.write() as c:
                c.execute("UPDATE keywords SET parent = ? WHERE id = ?", (parent, kid))
            done.append(f"reattached keyword {'//' + '/'.join(hk)} to its parent")
        elif p.kind == "unknown-dkl":
            store.rkl(p.ids[0], [p.ids[1]])
            done.append(f"dropped {p.ids[1]} from the keyword list of directory {p.ids[0]}")
        elif p.kind == "orphan-dir":
            (d,) = p.ids
            with store.catalog.read() as c:
                owner_ns, name = c.execute("SELECT owner_ns, name FROM dirs WHERE id = ?", (d,)).fetchone()
            lf = _lost_found(store, owner_ns)
            new = _free_name(store, lf, name, d)
            with store.catalog.write() as c:
                c.execute("UPDATE dirs SET parent = ?, name = ? WHERE id = ?", (lf, new, d))
            done.append(f"moved directory {d} into {LOST_FOUND} as {new!r}")
    done += _rename_invalid_keywords(store, [p for p in problems if p.kind == "invalid-keyword"])
    removed: set[int] = set()
    for p in problems:
        if p.kind == "missing-bytes":
            (eid,) = p.ids
            info = store.entity(eid)
            store.rme(eid)
            removed.add(eid)
            done.append(f"removed entity {eid} ({info.name!r}, keywords "
                        f"{''.join('//' + '/'.join(h) for h in info.hks) or 'none'}): its bytes were missing")
    for p in problems:
        if p.kind == "unreachable" and p.ids[0] not in removed:
            (eid,) = p.ids
            info = store.entity(eid)
            lf = _lost_found(store, info.ns)
            name = _free_name(store, lf, info.name, eid)
            store.link(eid, lf, name)
            done.append(f"linked entity {eid} into {LOST_FOUND} as {name!r}")
        elif p.kind == "orphan-bytes":
            (old,) = p.ids
            src = store.entity_path(old)
            ns = _owner_ns(store, src)
            lf = _lost_found(store, ns)
            st = os.stat(src)
            eid = store.create(ns, _free_name(store, lf, f"orphan-{old}", old), directory=lf,
                               mode=st.st_mode & 0o7777 or 0o600, uid=st.st_uid, gid=st.st_gid)
            os.replace(src, store.entity_path(eid))
            store.set_attrs(eid, size=st.st_size, mtime_ns=st.st_mtime_ns)
            done.append(f"orphan bytes entities/{old} kept as entity {eid} in {LOST_FOUND} (orphan-{old})")
        elif p.kind == "shared-bytes":
            # every entity but the first gets its own copy (all of them when the file has
            # links outside the store, which could change it behind the catalog's back)
            outside = os.stat(store.entity_path(p.ids[0])).st_nlink > len(p.ids)
            for eid in p.ids if outside else p.ids[1:]:
                _unshare(store, eid)
            done.append(f"entities {', '.join(map(str, p.ids))} now have bytes files of their own (copies)")
        elif p.kind == "stray-file":
            done.append(f"left entities/{p.ids[0]} alone (not an entity; move it away by hand)")
        elif p.kind == "broken-reference":
            done.append(f"left {p.ids[0]} row {p.ids[1]} alone (a broken reference fsck has no repair for)")
    done += repair_sizes(store, [p for p in problems if p.kind == "stale-size" and p.ids[0] not in removed])
    for line in done:
        log.info("fsck: %s", line)
    return done
