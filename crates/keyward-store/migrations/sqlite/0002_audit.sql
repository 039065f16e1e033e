-- Keyward store, SQLite schema version 2: the audit log (docs/audit-format.md, docs/store.md).
--
-- Applied by keyward_store::sqlite's migration runner inside one transaction, recorded in
-- schema_migrations. Never edit a released migration: add 0003_… instead.

-- The hash chain. `body` is the record's canonical bytes (docs/audit-format.md §3) as UTF-8 text;
-- `hash` is SHA-256("keyward-audit-v1\n" || body) in lowercase hex. `time_ms`, `event_type` and
-- `tenant_id` repeat what the body says, for the indexes; reads check that they agree.
CREATE TABLE audit_records (
    seq        INTEGER NOT NULL PRIMARY KEY CHECK (seq > 0),
    time_ms    INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    tenant_id  TEXT,
    body       TEXT    NOT NULL,
    hash       TEXT    NOT NULL CHECK (length(hash) = 64)
) STRICT;

CREATE INDEX audit_records_by_tenant ON audit_records (tenant_id, seq);
CREATE INDEX audit_records_by_type ON audit_records (event_type, seq);
CREATE INDEX audit_records_by_time ON audit_records (time_ms);

-- Signed checkpoints over chain heads. `body` is Checkpoint::to_canonical_json. seq 0 is a
-- checkpoint of the empty chain, so there is no foreign key to audit_records; the store checks
-- that `seq` and the head hash match a stored record before inserting.
CREATE TABLE audit_checkpoints (
    seq     INTEGER NOT NULL PRIMARY KEY CHECK (seq >= 0),
    time_ms INTEGER NOT NULL,
    key_id  TEXT    NOT NULL,
    body    TEXT    NOT NULL
) STRICT;

-- Append-only, enforced by the database as well as by the code: no statement through any
-- connection may change or remove a record or a checkpoint. (Someone with write access to the
-- file can drop these triggers; what makes that evident is the hash chain and the signed
-- checkpoints, not the triggers.)
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit_records is append-only');
END;

CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit_records is append-only');
END;

-- Gap-free: a record must extend the chain by exactly one.
CREATE TRIGGER audit_records_gap_free BEFORE INSERT ON audit_records
WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_records)
BEGIN
    SELECT RAISE(ABORT, 'audit_records.seq must extend the chain by one');
END;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
