-- Keyward store, postgres schema version 6: the key-state monitor's schedule, shared by every
-- replica (docs/revocation.md, "Monitor"; docs/adr/0012-monitor-schedule.md).
--
-- One row per binding whose key some replica may hold unwrapped, or whose revocation the KMS may
-- lift: held_until_ms is the latest deadline of any cached copy of its tenant key (a replica that
-- unwraps it raises it; it lapses on its own when the copies expire, so a dead replica's holdings
-- need no clean-up); due_at_ms is when its next canary check is due (NULL: none needed until a
-- replica holds the key again); lease_owner/lease_until_ms name the replica that claimed the
-- check (FOR UPDATE SKIP LOCKED) and until when; a lapsed lease makes the check claimable again.
CREATE TABLE key_checks (
    binding_id     BIGINT           NOT NULL PRIMARY KEY REFERENCES kek_bindings (id),
    tenant_id      TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    held_until_ms  BIGINT           NOT NULL DEFAULT 0,
    due_at_ms      BIGINT           NULL,
    lease_owner    TEXT             NULL,
    lease_until_ms BIGINT           NOT NULL DEFAULT 0
);

-- The schedule in due order, without the bindings that need no check.
CREATE INDEX key_checks_due ON key_checks (due_at_ms) WHERE due_at_ms IS NOT NULL;

-- A key event (ReportKeyEvent, [aws_events]) names a KMS key: the bindings registered with it.
CREATE INDEX kek_bindings_by_key ON kek_bindings (provider, key_ref);

-- A current binding revoked or made unavailable by what the KMS said is checked again so that
-- the KMS's answer can lift it (an explicit revocation is lifted only by RestoreKey).
INSERT INTO key_checks (binding_id, tenant_id, due_at_ms)
    SELECT id, tenant_id, 0 FROM kek_bindings
    WHERE deactivated_at_ms IS NULL AND state IN ('revoked', 'unavailable');
