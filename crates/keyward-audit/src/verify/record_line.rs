//! The checks of a record line (`docs/audit-format.md` §7): its hash, its link to the record
//! before it, its place in the seq order, and what a rotation record introduces.

use super::lines::{Lines, scan};
use super::{FailureKind, Flow, PendingRotation, Seen, Verifier, fail, range, within};
use crate::event::AuditEvent;
use crate::export::ExportHeader;
use crate::record::{RawFormat, RawRecord};

impl Verifier {
    pub(super) fn record(
        &mut self,
        n: usize,
        r: &RawRecord,
        header: &ExportHeader,
        lines: &mut Lines<'_>,
    ) -> Flow {
        let seq = Some(r.seq);
        // 1. The record's own hash. (Going on, the stored hash stands for the record: it is
        // what its successor links to.)
        let recomputed = r.recompute_hash();
        if recomputed != r.hash {
            self.report(fail(
                n,
                seq,
                FailureKind::Edited,
                format!(
                    "stored hash {} != recomputed {}",
                    hex::encode(r.hash),
                    hex::encode(recomputed)
                ),
            ))?;
        }
        // 2. Known events must be valid; rotations are remembered once the record is in place.
        let mut rotation = None;
        let known = !r.is_redacted() && AuditEvent::TYPES.contains(&r.event_type());
        let mut typed = None;
        if known {
            match r.typed_event() {
                Err(e) => self.report(fail(n, seq, FailureKind::Malformed, e.to_string()))?,
                Ok(event) => {
                    if let AuditEvent::SigningKeyRotated {
                        old_key_id,
                        new_key_id,
                        new_public_key,
                    } = &event
                    {
                        if new_public_key.key_id() == *new_key_id {
                            rotation = Some(PendingRotation {
                                seq: r.seq,
                                line: n,
                                old_key_id: old_key_id.clone(),
                                new_key: *new_public_key,
                            });
                        } else {
                            self.report(fail(
                                n,
                                seq,
                                FailureKind::Malformed,
                                format!(
                                    "signing_key_rotated names new_key_id {new_key_id} but its public key has id {}",
                                    new_public_key.key_id()
                                ),
                            ))?;
                        }
                    }
                    typed = Some(event);
                }
            }
        }
        // 2b. Tenant tags: who the record is about, and whether it may be shown as it is.
        self.tenant_checks(n, r, typed.as_ref(), recomputed == r.hash)?;
        // 3. Position in the sequence.
        let current = self.current_seq(header);
        let expected = current.saturating_add(1);
        let mut check_link = true;
        let mut replaces_last = false;
        if r.seq > expected {
            let (missing_from, missing_to) = (expected, r.seq - 1);
            check_link = false;
            if !within((missing_from, missing_to), self.missing) {
                let (later, _) = scan(lines, |p| (missing_from..=missing_to).contains(&p.seq));
                match later {
                    Some(p) => {
                        self.report(fail(
                            n,
                            seq,
                            FailureKind::Reordered,
                            format!(
                                "expected seq {expected}, found seq {}; seq {} appears later, at line {}",
                                r.seq, p.seq, p.line
                            ),
                        ))?;
                        self.moved = Some((missing_from, missing_to));
                    }
                    None => {
                        self.report(fail(
                            n,
                            seq,
                            FailureKind::Deleted,
                            format!(
                                "expected seq {expected}, found seq {}: {} missing",
                                r.seq,
                                range(missing_from, missing_to)
                            ),
                        ))?;
                        self.missing = Some((missing_from, missing_to));
                    }
                }
            }
        } else if r.seq < expected {
            // A record reported as moved, where it stands now: its hash and fields were
            // checked above; its place was reported.
            if within((r.seq, r.seq), self.moved) {
                return Ok(());
            }
            // Every seq up to `current` has been seen exactly once, so this one is a duplicate.
            // If it duplicates the record just before and the following record links to this
            // one instead, the earlier line is the intruder.
            if let Some(prev) = self.last
                && prev.seq == r.seq
            {
                let (next, _) = scan(lines, |_| true);
                let this_hash = hex::encode(r.hash);
                let prev_hash = hex::encode(prev.hash);
                if let Some(next) = next
                    && next.prev_hash.as_deref() == Some(this_hash.as_str())
                    && this_hash != prev_hash
                {
                    self.report(fail(
                        prev.line,
                        Some(prev.seq),
                        FailureKind::Inserted,
                        format!(
                            "seq {} appears twice (lines {} and {n}); the next record (line {}) links to line {n}, so line {} is not part of the chain",
                            r.seq, prev.line, next.line, prev.line
                        ),
                    ))?;
                    // This line is the chain's record: it takes the intruder's place.
                    check_link = false;
                    replaces_last = true;
                }
            }
            if !replaces_last {
                // This line is not part of the chain: skipped.
                return self.report(fail(
                    n,
                    seq,
                    FailureKind::Inserted,
                    format!(
                        "seq {} was already used (the sequence had reached seq {current})",
                        r.seq
                    ),
                ));
            }
        }
        // 4. The link to the previous record.
        match self.expected_prev {
            Some(want) if check_link && want != r.prev_hash => {
                let (next, _) = scan(lines, |_| true);
                let this_hash = hex::encode(r.hash);
                if let Some(prev) = self.last
                    && let Some(next) = next
                    && next.prev_hash.as_deref() == Some(this_hash.as_str())
                {
                    // The previous record was altered; this one is in its place.
                    self.report(fail(
                        prev.line,
                        Some(prev.seq),
                        FailureKind::Edited,
                        format!(
                            "record was altered and its hash recomputed: the next record (line {n}) still holds its original hash {} as prev_hash, but the record now hashes to {}",
                            hex::encode(r.prev_hash),
                            hex::encode(prev.hash)
                        ),
                    ))?;
                } else {
                    // This line is not part of the chain: skipped.
                    return self.report(fail(
                        n,
                        seq,
                        FailureKind::Inserted,
                        match self.last {
                            Some(prev) => format!(
                                "prev_hash {} != hash {} of the record before it (line {}, seq {})",
                                hex::encode(r.prev_hash),
                                hex::encode(want),
                                prev.line,
                                prev.seq
                            ),
                            None => format!(
                                "prev_hash {} != {} expected at the start of the export",
                                hex::encode(r.prev_hash),
                                hex::encode(want)
                            ),
                        },
                    ));
                }
            }
            Some(_) => {}
            None => self.mid_chain_prev_hash = Some(r.prev_hash),
        }
        if let Some(rotation) = rotation {
            self.pending.push(rotation);
        }
        if !known && !r.is_redacted() {
            self.unknown_events += 1;
        }
        if !matches!(r.format, RawFormat::V1) {
            self.v2_records += 1;
        }
        self.last = Some(Seen {
            seq: r.seq,
            hash: r.hash,
            line: n,
        });
        self.expected_prev = Some(r.hash);
        self.covered = false;
        self.last_record_has_checkpoint_line = false;
        if !replaces_last {
            self.records += 1;
        }
        Ok(())
    }
}
