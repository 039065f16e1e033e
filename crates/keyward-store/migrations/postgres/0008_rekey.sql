-- Keyward store, PostgreSQL schema version 8: re-keying (the same columns as
-- migrations/sqlite/0008_rekey.sql, which explains them; docs/rekey.md).
ALTER TABLE tenant_keys ADD COLUMN kek_binding_id BIGINT NULL;
ALTER TABLE tenant_keys ADD COLUMN rewrapped_at_ms BIGINT NULL;
UPDATE tenant_keys SET kek_binding_id = binding_id;
-- A tenant key is wrapped by a binding of its own tenant.
ALTER TABLE tenant_keys ADD CONSTRAINT tenant_keys_kek_binding_fk
    FOREIGN KEY (tenant_id, kek_binding_id) REFERENCES kek_bindings (tenant_id, id);
CREATE INDEX tenant_keys_by_kek ON tenant_keys (tenant_id, kek_binding_id);

ALTER TABLE kek_bindings ADD COLUMN retired_at_ms BIGINT NULL;

ALTER TABLE tenants ADD COLUMN auto_rekey BIGINT NOT NULL DEFAULT 0 CHECK (auto_rekey IN (0, 1));
