-- Keyward store, SQLite schema version 10: the tenant's justification rule
-- (docs/justifications.md).
--
-- tenants.decrypt_purposes: the purposes allowed to decrypt the tenant's data, as a bit set
-- (bit n = the proto `Purpose` enum value n, n in 1..=30); 0: no rule.
ALTER TABLE tenants ADD COLUMN decrypt_purposes INTEGER NOT NULL DEFAULT 0
    CHECK (decrypt_purposes >= 0 AND decrypt_purposes < 2147483648 AND decrypt_purposes % 2 = 0);
