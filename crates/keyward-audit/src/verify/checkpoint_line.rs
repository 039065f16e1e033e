//! The checks of a checkpoint line (`docs/audit-format.md` §7): its signature by a trusted or
//! rotated-in key, the chain head it signs, and the signing-key rotations it confirms.

use super::lines::{Lines, scan};
use super::{FailureKind, Flow, Verifier, fail, range, within};
use crate::checkpoint::Checkpoint;
use crate::export::ExportHeader;

impl Verifier {
    pub(super) fn checkpoint(
        &mut self,
        n: usize,
        c: &Checkpoint,
        header: &ExportHeader,
        lines: &mut Lines<'_>,
    ) -> Flow {
        let seq = Some(c.seq);
        self.checkpoint_lines += 1;
        let current = self.current_seq(header);
        // 1. Placement: right after the record it covers. A misplaced checkpoint is skipped.
        if c.seq > current {
            let (from, to) = (current.saturating_add(1), c.seq);
            let (later, any) = scan(lines, |p| (from..=to).contains(&p.seq));
            let failure = match later {
                Some(p) => fail(
                    n,
                    seq,
                    FailureKind::Reordered,
                    format!(
                        "checkpoint for seq {} comes after seq {current}; seq {} appears later, at line {}",
                        c.seq, p.seq, p.line
                    ),
                ),
                None if any => {
                    self.missing = Some((from, to));
                    fail(
                        n,
                        seq,
                        FailureKind::Deleted,
                        format!(
                            "checkpoint for seq {} comes after seq {current}: {} missing",
                            c.seq,
                            range(from, to)
                        ),
                    )
                }
                None => fail(
                    n,
                    seq,
                    FailureKind::Truncated,
                    format!(
                        "checkpoint for seq {} but the export's records end at seq {current}: {} missing",
                        c.seq,
                        range(from, to)
                    ),
                ),
            };
            return self.report(failure);
        }
        if c.seq < current {
            // The checkpoint of a record reported as moved, where it stands now.
            if within((c.seq, c.seq), self.moved) {
                return Ok(());
            }
            if let Some(prev) = self.last
                && c.seq.checked_add(1) == Some(prev.seq)
            {
                let (dup, _) = scan(lines, |p| p.seq == prev.seq);
                if let Some(dup) = dup {
                    return self.report(fail(
                        prev.line,
                        Some(prev.seq),
                        FailureKind::Inserted,
                        format!(
                            "a record with seq {} stands before the checkpoint for seq {} (line {n}), and seq {} appears again at line {}",
                            prev.seq, c.seq, prev.seq, dup.line
                        ),
                    ));
                }
            }
            return self.report(fail(
                n,
                seq,
                FailureKind::Reordered,
                format!(
                    "checkpoint for seq {} must come right after that record, but the sequence is already at seq {current}",
                    c.seq
                ),
            ));
        }
        self.last_record_has_checkpoint_line = true;
        // 2. The key. A checkpoint that does not verify vouches for nothing.
        if let Some((rotation_seq, confirmed_at)) = self.retired.get(&c.key_id).copied()
            && c.seq > confirmed_at
        {
            return self.report(fail(
                n,
                seq,
                FailureKind::UnknownSigningKey,
                format!(
                    "key {} was rotated out by the record at seq {rotation_seq} (confirmed at seq {confirmed_at}) and may not sign later checkpoints",
                    c.key_id
                ),
            ));
        }
        let Some(key) = self.trusted.get(&c.key_id).copied() else {
            let why = match self.pending.iter().find(|p| p.new_key.key_id() == c.key_id) {
                Some(p) => format!(
                    "key {} is introduced by the rotation at seq {} (line {}), but no checkpoint signed by the old key {} covers that record",
                    c.key_id, p.seq, p.line, p.old_key_id
                ),
                None => format!(
                    "key {} is not among the trusted keys ({}) and was not introduced by a verified rotation",
                    c.key_id,
                    {
                        let mut ids: Vec<&str> = self.trusted.keys().map(String::as_str).collect();
                        ids.sort_unstable();
                        ids.join(", ")
                    }
                ),
            };
            return self.report(fail(n, seq, FailureKind::UnknownSigningKey, why));
        };
        // 3. The signature.
        if !key.verify_checkpoint(c) {
            return self.report(fail(
                n,
                seq,
                FailureKind::BadSignature,
                format!(
                    "the Ed25519 signature does not verify under key {} ({})",
                    c.key_id,
                    key.to_text()
                ),
            ));
        }
        // 4. The signed head against the records.
        match self.expected_prev {
            Some(hash) if hash != c.head_hash => {
                // Once the chain was recomputed from an altered record on, every later
                // checkpoint disagrees with it too: counted with the first, not reported again.
                // The checkpoint vouches for nothing, but its valid signature still confirms
                // the rotations it covers, so that the new key's checkpoints are checked.
                if let Some((_, later)) = self.rechained.as_mut() {
                    *later += 1;
                    self.confirm_rotations(c);
                    return Ok(());
                }
                let since = self
                    .last_checkpoint
                    .map_or(header.first_seq, |(s, _, _)| s.saturating_add(1));
                self.rechained = Some((self.problems.len(), 0));
                self.report(fail(
                    n,
                    seq,
                    FailureKind::Edited,
                    format!(
                        "the checkpoint signs head hash {} for seq {}, but the records give {}: a record in {} was altered and the chain recomputed",
                        hex::encode(c.head_hash),
                        c.seq,
                        hex::encode(hash),
                        range(since, c.seq)
                    ),
                ))?;
                self.confirm_rotations(c);
                return Ok(());
            }
            Some(_) => {}
            // A mid-chain export anchored by a checkpoint before its first record.
            None => self.expected_prev = Some(c.head_hash),
        }
        self.covered = true;
        self.checkpoints += 1;
        self.last_checkpoint = Some((c.seq, n, c.time_ms));
        if !self.keys_seen.contains(&key) {
            self.keys_seen.push(key);
        }
        self.confirm_rotations(c);
        Ok(())
    }
}
