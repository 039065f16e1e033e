-- Keyward store, PostgreSQL schema version 10: the tenant's justification rule (the same column
-- as migrations/sqlite/0010_decrypt_purposes.sql, which explains it; docs/justifications.md).
ALTER TABLE tenants ADD COLUMN decrypt_purposes BIGINT NOT NULL DEFAULT 0
    CHECK (decrypt_purposes >= 0 AND decrypt_purposes < 2147483648 AND decrypt_purposes % 2 = 0);
