-- hkfs catalog schema. Idempotent; loaded by hkfs/migrations.py for a new store,
-- which then sets PRAGMA user_version to migrations.SCHEMA_VERSION.
-- Any change here needs a matching migration in hkfs/migrations.py.

-- One namespace per user (paper §2.3): its own keyword hierarchy and root directory.
CREATE TABLE IF NOT EXISTS namespaces (
    id        INTEGER PRIMARY KEY,
    user      TEXT    NOT NULL UNIQUE,
    uid       INTEGER NOT NULL,
    gid       INTEGER NOT NULL,
    root_dir  INTEGER REFERENCES dirs(id)
);

-- The keyword hierarchy. `path` is the materialized path '/animal/dog/' (a component
-- never holds '/'), so the subtree of //animal is the index range
-- path >= '/animal/' AND path < '/animal0' ('0' is the byte after '/').
CREATE TABLE IF NOT EXISTS keywords (
    id      INTEGER PRIMARY KEY,
    ns      INTEGER NOT NULL REFERENCES namespaces(id),
    parent  INTEGER REFERENCES keywords(id),
    name    TEXT    NOT NULL,
    path    TEXT    NOT NULL,
    mode    INTEGER,              -- the keyword directory's permission bits in the mount (v6)
    uid     INTEGER,              -- and owner; NULL: the default (0755, the mounting user)
    gid     INTEGER,
    UNIQUE (ns, path)
);
CREATE INDEX IF NOT EXISTS keywords_parent ON keywords(parent, name);

-- File entities; bytes in STORE/entities/<id>.
CREATE TABLE IF NOT EXISTS entities (
    id        INTEGER PRIMARY KEY,
    ns        INTEGER NOT NULL REFERENCES namespaces(id),
    name      TEXT    NOT NULL,
    size      INTEGER NOT NULL DEFAULT 0,
    mode      INTEGER NOT NULL,   -- perms | type bits (S_IFLNK, S_IFIFO, ...); 0 = regular (v2, v4)
    uid       INTEGER NOT NULL,
    gid       INTEGER NOT NULL,
    atime_ns  INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entities_ns_name ON entities(ns, name);

-- Which entity carries which HK. (keyword, entity) drives list resolution over the
-- keyword ids of an HK's subtree. `tags` repeats, on every row of an entity, the
-- paths of all the HKs it carries (',/animal/dog/,/photo/,'), so the other HKs of a
-- list are tested on the row itself (instr(tags, ',/photo/') > 0) without a random
-- lookup per candidate; Store keeps it exact in the same transaction (see docs/store.md).
CREATE TABLE IF NOT EXISTS entity_keywords (
    keyword  INTEGER NOT NULL REFERENCES keywords(id),
    entity   INTEGER NOT NULL REFERENCES entities(id),
    tags     TEXT    NOT NULL,
    PRIMARY KEY (keyword, entity)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_keywords_entity ON entity_keywords(entity);

-- Ordinary directories. parent IS NULL for a namespace root. ns: the namespace
-- ',' refers to (chns); owner_ns: the namespace the directory lives in.
CREATE TABLE IF NOT EXISTS dirs (
    id        INTEGER PRIMARY KEY,
    parent    INTEGER REFERENCES dirs(id),
    name      TEXT    NOT NULL,
    ns        INTEGER NOT NULL REFERENCES namespaces(id),
    owner_ns  INTEGER NOT NULL REFERENCES namespaces(id),
    mode      INTEGER NOT NULL,
    uid       INTEGER NOT NULL,
    gid       INTEGER NOT NULL,
    atime_ns  INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    UNIQUE (parent, name)
);

-- The directory keyword list (DKL), in order, as formatted HKs of the dir's ns.
CREATE TABLE IF NOT EXISTS dir_keywords (
    dir  INTEGER NOT NULL REFERENCES dirs(id),
    pos  INTEGER NOT NULL,
    hk   TEXT    NOT NULL,
    PRIMARY KEY (dir, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dir_keywords_hk ON dir_keywords(hk);

-- Directory entries that are files: links to entities.
CREATE TABLE IF NOT EXISTS links (
    dir     INTEGER NOT NULL REFERENCES dirs(id),
    name    TEXT    NOT NULL,
    entity  INTEGER NOT NULL REFERENCES entities(id),
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_entity ON links(entity);

-- Other extended attributes, stored as given. kind: 'file' | 'dir'.
CREATE TABLE IF NOT EXISTS xattrs (
    kind   TEXT    NOT NULL,
    id     INTEGER NOT NULL,
    name   TEXT    NOT NULL,
    value  BLOB    NOT NULL,
    PRIMARY KEY (kind, id, name)
) WITHOUT ROWID;

-- Small named counters. 'entity_high': the highest id a deleted entity had (ids are
-- never reused, see Store._next_entity_id). (v3)
CREATE TABLE IF NOT EXISTS counters (
    name   TEXT    PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;

-- Device numbers of character and block device entities (mknod; their type is in
-- entities.mode). FIFOs and sockets need no row. (v4)
CREATE TABLE IF NOT EXISTS devices (
    entity  INTEGER PRIMARY KEY REFERENCES entities(id) ON DELETE CASCADE,
    rdev    INTEGER NOT NULL
);

-- Applied schema versions (user_version is the authority; this is the history).
CREATE TABLE IF NOT EXISTS migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    applied_ns  INTEGER NOT NULL
);

-- Generations (v5): counters bumped by these triggers in the writing transaction, so any
-- process can tell, with one small read, whether what it derived from the catalog is still
-- current. files_gen: what names files and decides which files a directory or view holds
-- (keywords, tags, links, directories, DKLs, entity names); vectors_gen: what the embeddings
-- are read from (the embedding/dim xattrs, entry-named files' name, size and mtime).
-- Other writes (bytes, times, modes, other xattrs) bump neither. See hkfs/core/changes.py.
INSERT OR IGNORE INTO counters(name, value) VALUES ('files_gen', 0), ('vectors_gen', 0);
CREATE TRIGGER IF NOT EXISTS files_gen_keywords_insert AFTER INSERT ON keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_keywords_delete AFTER DELETE ON keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_keywords_update AFTER UPDATE ON keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_entity_keywords_insert AFTER INSERT ON entity_keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_entity_keywords_delete AFTER DELETE ON entity_keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_entity_keywords_update AFTER UPDATE ON entity_keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_links_insert AFTER INSERT ON links
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_links_delete AFTER DELETE ON links
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_links_update AFTER UPDATE ON links
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_dir_keywords_insert AFTER INSERT ON dir_keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_dir_keywords_delete AFTER DELETE ON dir_keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_dir_keywords_update AFTER UPDATE ON dir_keywords
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_dirs_insert AFTER INSERT ON dirs
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_dirs_delete AFTER DELETE ON dirs
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_dirs_update AFTER UPDATE OF parent, name, ns ON dirs
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_entities_insert AFTER INSERT ON entities
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_entities_delete AFTER DELETE ON entities
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS files_gen_entities_update AFTER UPDATE OF ns, name ON entities
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'files_gen'; END;
CREATE TRIGGER IF NOT EXISTS vectors_gen_xattrs_insert AFTER INSERT ON xattrs WHEN new.kind = 'file' AND new.name IN ('user.hk.embedding', 'user.hk.dim')
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'vectors_gen'; END;
CREATE TRIGGER IF NOT EXISTS vectors_gen_xattrs_delete AFTER DELETE ON xattrs WHEN old.kind = 'file' AND old.name IN ('user.hk.embedding', 'user.hk.dim')
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'vectors_gen'; END;
CREATE TRIGGER IF NOT EXISTS vectors_gen_xattrs_update AFTER UPDATE ON xattrs WHEN (new.kind = 'file' AND new.name IN ('user.hk.embedding', 'user.hk.dim')) OR (old.kind = 'file' AND old.name IN ('user.hk.embedding', 'user.hk.dim'))
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'vectors_gen'; END;
CREATE TRIGGER IF NOT EXISTS vectors_gen_entities_insert AFTER INSERT ON entities WHEN new.name LIKE '%.npy' OR new.name LIKE '%.fvecs' OR new.name LIKE '%.f32'
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'vectors_gen'; END;
CREATE TRIGGER IF NOT EXISTS vectors_gen_entities_delete AFTER DELETE ON entities WHEN old.name LIKE '%.npy' OR old.name LIKE '%.fvecs' OR old.name LIKE '%.f32'
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'vectors_gen'; END;
CREATE TRIGGER IF NOT EXISTS vectors_gen_entities_update AFTER UPDATE OF ns, name, size, mtime_ns ON entities WHEN new.name LIKE '%.npy' OR new.name LIKE '%.fvecs' OR new.name LIKE '%.f32' OR old.name LIKE '%.npy' OR old.name LIKE '%.fvecs' OR old.name LIKE '%.f32'
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'vectors_gen'; END;
