-- Keyward store, PostgreSQL schema version 9: the exit kit's reads (the same indexes as
-- migrations/sqlite/0009_export.sql, which explains them; docs/exit.md).
CREATE INDEX deks_by_tenant_id ON deks (tenant_id, id);
CREATE INDEX dek_tombstones_by_tenant_seq ON dek_tombstones (tenant_id, seq);
