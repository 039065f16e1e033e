-- Keyward store, PostgreSQL schema version 1 (the same tables and columns as
-- migrations/sqlite/0001_init.sql; docs/store.md, "PostgreSQL").
--
-- Applied by keyward_store::postgres's migration runner inside one transaction, under a
-- transaction-level advisory lock, recorded in schema_migrations. Never edit a released migration:
-- add the next number instead (and the SQLite script of the same number).
--
-- Types: SQLite INTEGER is BIGINT, BLOB is BYTEA, TEXT stays TEXT. Identifier columns (tenant
-- ids, key ids, scopes, hashes) use the "C" collation, so that equality and ORDER BY compare
-- bytes, as on SQLite, whatever the database's default locale.
-- Ids of tenant keys and DEKs are 32-character lowercase hex (keyward_envelope::KeyId).

CREATE TABLE tenants (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    display_name  TEXT             NOT NULL,
    created_at_ms BIGINT           NOT NULL
);

-- A tenant's KEK bindings, history included. Exactly one binding per tenant is current
-- (deactivated_at_ms IS NULL); `state` is the KEK's health as last observed.
-- Identity values are never reused (like SQLite's AUTOINCREMENT); writers are serialized by the
-- audit chain lock, so "oldest first" is ORDER BY id.
CREATE TABLE kek_bindings (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    provider            TEXT             NOT NULL,
    key_ref             TEXT             NOT NULL,
    state               TEXT             NOT NULL
        CHECK (state IN ('active', 'revoked', 'unavailable', 'restored', 'destroyed')),
    created_at_ms       BIGINT           NOT NULL,
    deactivated_at_ms   BIGINT,
    state_changed_at_ms BIGINT           NOT NULL,
    -- Target of the composite foreign key from tenant_keys: a tenant key's binding must be its
    -- own tenant's.
    UNIQUE (tenant_id, id)
);

CREATE UNIQUE INDEX kek_bindings_one_current_per_tenant
    ON kek_bindings (tenant_id) WHERE deactivated_at_ms IS NULL;

-- Tenant keys, wrapped by the KEK of their binding (one tenant key per binding).
CREATE TABLE tenant_keys (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    binding_id    BIGINT           NOT NULL UNIQUE,
    wrapped       BYTEA            NOT NULL,
    created_at_ms BIGINT           NOT NULL,
    -- Target of the composite foreign key from deks.
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, binding_id) REFERENCES kek_bindings (tenant_id, id)
);

-- Data-encryption keys, wrapped locally by a tenant key of the same tenant.
CREATE TABLE deks (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    tenant_id     TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    scope         TEXT COLLATE "C" NOT NULL,
    tenant_key_id TEXT COLLATE "C" NOT NULL,
    wrapped       BYTEA            NOT NULL,
    created_at_ms BIGINT           NOT NULL,
    retired_at_ms BIGINT,
    messages      BIGINT           NOT NULL DEFAULT 0 CHECK (messages >= 0),
    bytes         BIGINT           NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    FOREIGN KEY (tenant_id, tenant_key_id) REFERENCES tenant_keys (tenant_id, id)
);

-- At most one active DEK per (tenant, scope): this index, not application code, is what makes
-- two replicas inserting a DEK for one scope at once unable to leave two active DEKs.
CREATE UNIQUE INDEX deks_one_active_per_scope
    ON deks (tenant_id, scope) WHERE retired_at_ms IS NULL;

-- Child side of the composite foreign key ("which DEKs hang below this tenant key").
CREATE INDEX deks_by_tenant_key ON deks (tenant_id, tenant_key_id);
