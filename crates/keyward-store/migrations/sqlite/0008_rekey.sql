-- Keyward store, SQLite schema version 8: re-keying (docs/rekey.md, docs/adr/0015-rekey.md).
--
-- tenant_keys.kek_binding_id: the binding whose KEK wraps the tenant key now. It is the binding
-- the key was created under (binding_id) until a re-key re-wraps the key under a newer binding's
-- KEK: `wrapped`, `mac` and `kek_binding_id` then change together in one UPDATE, so that a
-- tenant key is always wrapped by exactly one KEK (never by none). `binding_id` keeps naming
-- the binding the key was created with (one tenant key per binding). Written by every insert
-- from this version on; filled in here for the rows before it.
-- kek_bindings.retired_at_ms: when a re-key retired the binding (every tenant key it wrapped
-- is wrapped by a newer binding's KEK: nothing depends on the old KMS key any more). A retired
-- binding reads as state 'retired' whatever its stored state, and never changes state again.
-- tenants.auto_rekey: the tenant's policy: re-key in the background when a new key is bound.
ALTER TABLE tenant_keys ADD COLUMN kek_binding_id INTEGER NULL REFERENCES kek_bindings (id);
ALTER TABLE tenant_keys ADD COLUMN rewrapped_at_ms INTEGER NULL;
UPDATE tenant_keys SET kek_binding_id = binding_id;
CREATE INDEX tenant_keys_by_kek ON tenant_keys (tenant_id, kek_binding_id);

ALTER TABLE kek_bindings ADD COLUMN retired_at_ms INTEGER NULL;

ALTER TABLE tenants ADD COLUMN auto_rekey INTEGER NOT NULL DEFAULT 0 CHECK (auto_rekey IN (0, 1));
