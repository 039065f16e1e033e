-- Keyward store, PostgreSQL schema version 2: the audit log (docs/audit-format.md, docs/store.md).
--
-- Applied by keyward_store::postgres's migration runner inside one transaction, recorded in
-- schema_migrations. Never edit a released migration: add the next number instead.

-- The hash chain. `body` is the record's canonical bytes (docs/audit-format.md §3) as UTF-8 text;
-- `hash` is SHA-256("keyward-audit-v1\n" || body) in lowercase hex. `time_ms`, `event_type` and
-- `tenant_id` repeat what the body says, for the indexes; reads check that they agree.
CREATE TABLE audit_records (
    seq        BIGINT           NOT NULL PRIMARY KEY CHECK (seq > 0),
    time_ms    BIGINT           NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    tenant_id  TEXT COLLATE "C",
    body       TEXT             NOT NULL,
    hash       TEXT COLLATE "C" NOT NULL CHECK (length(hash) = 64)
);

CREATE INDEX audit_records_by_tenant ON audit_records (tenant_id, seq);
CREATE INDEX audit_records_by_type ON audit_records (event_type, seq);
CREATE INDEX audit_records_by_time ON audit_records (time_ms);

-- Signed checkpoints over chain heads. `body` is Checkpoint::to_canonical_json. seq 0 is a
-- checkpoint of the empty chain, so there is no foreign key to audit_records; the store checks
-- that `seq` and the head hash match a stored record before inserting.
CREATE TABLE audit_checkpoints (
    seq     BIGINT NOT NULL PRIMARY KEY CHECK (seq >= 0),
    time_ms BIGINT NOT NULL,
    key_id  TEXT   NOT NULL,
    body    TEXT   NOT NULL
);

-- The audit chain lock: one row that every write transaction locks first
-- (SELECT id FROM audit_chain_lock WHERE id = 1 FOR UPDATE), so that writers of all replicas
-- serialize and two of them never read the same chain head. It holds no data; the head is the
-- last audit record. Without the row the store refuses to write (it cannot serialize).
CREATE TABLE audit_chain_lock (
    id SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1)
);
INSERT INTO audit_chain_lock (id) VALUES (1);

-- Append-only, enforced by the database as well as by the code, for every role including the
-- owner and superusers: no statement may change or remove a record or a checkpoint (nor the lock
-- row). TRUNCATE, which skips row triggers, has its own. Someone who may ALTER or DROP these
-- tables can disable the triggers; what makes that evident is the hash chain and the signed
-- checkpoints, not the triggers. Deployments should also REVOKE UPDATE, DELETE, TRUNCATE on
-- these tables from the application role (docs/store.md).
CREATE FUNCTION keyward_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_records_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_reject_change();

CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_reject_change();

CREATE TRIGGER audit_chain_lock_fixed
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON audit_chain_lock
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_reject_change();

-- Gap-free: a record must extend the chain by exactly one. (Under the chain lock the store's own
-- appends always do; this catches bugs and anyone writing around the store. Two writers that
-- bypass the lock and both pass this check still collide on the primary key.)
CREATE FUNCTION keyward_audit_gap_free() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq IS DISTINCT FROM (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_records) THEN
        RAISE EXCEPTION 'audit_records.seq must extend the chain by one (got %)', NEW.seq
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_records_gap_free
    BEFORE INSERT ON audit_records
    FOR EACH ROW EXECUTE FUNCTION keyward_audit_gap_free();
