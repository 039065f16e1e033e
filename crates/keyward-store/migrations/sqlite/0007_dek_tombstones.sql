-- Keyward store, SQLite schema version 7: crypto-shredding (docs/deleting-data.md).
--
-- A shredded DEK's row is deleted from `deks` (its wrapped key is the only copy there is, so
-- the data under it is gone for good) and this tombstone is written in the same transaction.
-- A tombstone holds no key material: the DEK id (so that a Decrypt can say "shredded" rather
-- than "never existed"), the scope's HMAC (never the label), the tenant key it was wrapped
-- under (for the key history), when it was created and shredded, by whom and why. `seq` orders
-- tombstones for replicas catching up on shreds they were not notified of.
CREATE TABLE dek_tombstones (
    seq            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE CHECK (length(id) = 32),
    tenant_id      TEXT    NOT NULL REFERENCES tenants (id),
    scope_hmac     TEXT    NOT NULL,
    tenant_key_id  TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    shredded_at_ms INTEGER NOT NULL,
    shredded_by    TEXT    NOT NULL,
    reason         TEXT    NOT NULL
) STRICT;

CREATE INDEX dek_tombstones_by_tenant ON dek_tombstones (tenant_id, tenant_key_id);

-- Retention shredding groups a tenant's DEKs by scope.
CREATE INDEX deks_by_tenant_scope ON deks (tenant_id, scope);
