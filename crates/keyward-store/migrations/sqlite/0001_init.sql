-- Keyward store, SQLite schema version 1.
--
-- Applied by keyward_store::sqlite's migration runner inside one transaction, recorded in
-- schema_migrations. Never edit a released migration: add 0002_… instead.
--
-- Tables are STRICT so that a value of the wrong type is an error, not a silent conversion: the
-- wrapped keys here are the only copy there is (docs/store.md).
-- Ids of tenant keys and DEKs are 32-character lowercase hex (keyward_envelope::KeyId).

CREATE TABLE tenants (
    id            TEXT    NOT NULL PRIMARY KEY,
    display_name  TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

-- A tenant's KEK bindings, history included. Exactly one binding per tenant is current
-- (deactivated_at_ms IS NULL); `state` is the KEK's health as last observed.
CREATE TABLE kek_bindings (
    id                  INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    tenant_id           TEXT    NOT NULL REFERENCES tenants (id),
    provider            TEXT    NOT NULL,
    key_ref             TEXT    NOT NULL,
    state               TEXT    NOT NULL
        CHECK (state IN ('active', 'revoked', 'unavailable', 'restored', 'destroyed')),
    created_at_ms       INTEGER NOT NULL,
    deactivated_at_ms   INTEGER,
    state_changed_at_ms INTEGER NOT NULL,
    -- Target of the composite foreign key from tenant_keys: a tenant key's binding must be its
    -- own tenant's.
    UNIQUE (tenant_id, id)
) STRICT;

CREATE UNIQUE INDEX kek_bindings_one_current_per_tenant
    ON kek_bindings (tenant_id) WHERE deactivated_at_ms IS NULL;

-- Tenant keys, wrapped by the KEK of their binding (one tenant key per binding).
CREATE TABLE tenant_keys (
    id            TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    binding_id    INTEGER NOT NULL UNIQUE,
    wrapped       BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    -- Target of the composite foreign key from deks.
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, binding_id) REFERENCES kek_bindings (tenant_id, id)
) STRICT;

-- Data-encryption keys, wrapped locally by a tenant key of the same tenant.
CREATE TABLE deks (
    id            TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id),
    scope         TEXT    NOT NULL,
    tenant_key_id TEXT    NOT NULL,
    wrapped       BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    retired_at_ms INTEGER,
    messages      INTEGER NOT NULL DEFAULT 0 CHECK (messages >= 0),
    bytes         INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    FOREIGN KEY (tenant_id, tenant_key_id) REFERENCES tenant_keys (tenant_id, id)
) STRICT;

-- At most one active DEK per (tenant, scope): this index, not application code, is what makes
-- concurrent insert_dek calls safe.
CREATE UNIQUE INDEX deks_one_active_per_scope
    ON deks (tenant_id, scope) WHERE retired_at_ms IS NULL;

-- Child side of the composite foreign key ("which DEKs hang below this tenant key").
CREATE INDEX deks_by_tenant_key ON deks (tenant_id, tenant_key_id);
