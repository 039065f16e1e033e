-- Per-tenant overrides of the revocation-window settings (docs/revocation.md).
-- NULL: the server-wide value applies.
ALTER TABLE tenants ADD COLUMN cache_ttl_seconds BIGINT NULL CHECK (cache_ttl_seconds > 0);
ALTER TABLE tenants ADD COLUMN monitor_interval_seconds BIGINT NULL CHECK (monitor_interval_seconds > 0);
