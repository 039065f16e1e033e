-- Keyward store, SQLite schema version 9: the exit kit's reads (docs/exit.md).
--
-- `keyward export` reads a tenant's DEKs in pages ordered by id (`id > after`, a limit) and its
-- tombstones in pages ordered by seq, so that an export of millions of DEKs streams in bounded
-- memory. Without these indexes every page would sort all of the tenant's rows
-- (`deks_by_tenant_scope`, then a temporary B-tree: a page costs O(n log n) and an export
-- O(n² log n)); with them a page is a range search.
CREATE INDEX deks_by_tenant_id ON deks (tenant_id, id);
CREATE INDEX dek_tombstones_by_tenant_seq ON dek_tombstones (tenant_id, seq);
