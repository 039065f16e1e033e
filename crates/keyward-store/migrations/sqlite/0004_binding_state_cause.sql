-- Keyward store, sqlite schema version 4: why a KEK binding is in its state, and a version for
-- compare-and-set (docs/revocation.md, "State transitions"; docs/store.md).
--
-- state_cause: what set the current state ('explicit' for RevokeKey/RestoreKey, 'monitor',
-- 'kms_refusal', 'event'); NULL for a binding that never changed state since registration, and
-- for bindings whose state was set before this version (cause unknown: a revoked one is then
-- treated as an explicit revocation, which only RestoreKey lifts).
-- state_version: incremented by every committed state change; a change commits only if the
-- binding is still at the version its writer read (no replica overwrites a newer decision).
ALTER TABLE kek_bindings ADD COLUMN state_cause TEXT NULL
    CHECK (state_cause IN ('kms_refusal', 'monitor', 'explicit', 'event'));
ALTER TABLE kek_bindings ADD COLUMN state_version INTEGER NOT NULL DEFAULT 0 CHECK (state_version >= 0);
