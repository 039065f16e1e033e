//! The offline verifier (`docs/audit-format.md` §7): recomputes the chain, checks every
//! checkpoint signature and follows signing-key rotations, and names the first broken link.

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;

use serde_json::Value;

use crate::canonical;
use crate::checkpoint::{Checkpoint, PublicKey};
use crate::event::AuditEvent;
use crate::export::{EXPORT_TYPE, ExportHeader};
use crate::record::RawRecord;

/// What kind of damage the verifier found. The exact rules are in `docs/audit-format.md` §7.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A line is not valid canonical JSON of a header, record or checkpoint, or is out of
    /// place (a second header), or a known event has invalid fields.
    Malformed,
    /// A record's content was changed: its stored hash does not match its content; or its hash
    /// was recomputed but the next record (or a signed checkpoint) still holds the original.
    Edited,
    /// Records are missing: the sequence skips numbers that do not appear later in the export.
    Deleted,
    /// Lines are out of order: the sequence skips numbers that appear later, or a checkpoint
    /// line is not right after the record it covers.
    Reordered,
    /// A record that is not part of the chain: a second record with an already used seq, or a
    /// record whose `prev_hash` is not the hash of the record before it.
    Inserted,
    /// The export ends early: no checkpoint covers the last record, the header announces more
    /// records, or the last checkpoint refers to records that are not there.
    Truncated,
    /// A checkpoint's Ed25519 signature does not verify under the key it names.
    BadSignature,
    /// A checkpoint is signed by a key that is neither given by the auditor nor introduced by a
    /// verified rotation, or by a key already rotated out.
    UnknownSigningKey,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Malformed => "malformed line",
            FailureKind::Edited => "record was edited",
            FailureKind::Deleted => "record deleted",
            FailureKind::Reordered => "lines reordered",
            FailureKind::Inserted => "record inserted",
            FailureKind::Truncated => "export truncated",
            FailureKind::BadSignature => "bad checkpoint signature",
            FailureKind::UnknownSigningKey => "checkpoint signed by an untrusted key",
        })
    }
}

/// The first broken link of an export.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// 1-based line number. For an export that ends early it is one past the last line.
    pub line: usize,
    /// The seq of the record or checkpoint on that line, when known.
    pub seq: Option<u64>,
    pub kind: FailureKind,
    /// What exactly does not match, with hashes in hex.
    pub detail: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(
                f,
                "line {} (seq {seq}): {}: {}",
                self.line, self.kind, self.detail
            ),
            None => write!(f, "line {}: {}: {}", self.line, self.kind, self.detail),
        }
    }
}

impl std::error::Error for VerifyFailure {}

/// What a successful verification established.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of record lines.
    pub records: u64,
    /// Number of checkpoint lines (all verified).
    pub checkpoints: u64,
    /// The first record's seq (the header's `first_seq`).
    pub first_seq: u64,
    /// The last record's seq.
    pub last_seq: u64,
    /// The last record's hash (signed by the final checkpoint).
    pub head_hash: [u8; 32],
    /// Every key that signed a verified checkpoint, in order of first use.
    pub signing_keys_seen: Vec<PublicKey>,
    /// The signed time of the final checkpoint: the chain is proven complete up to `last_seq`
    /// as of this moment. Compare it with when the export was requested.
    pub final_checkpoint_time_ms: i64,
    /// The header's (unsigned) export time.
    pub exported_at_ms: i64,
    /// For an export starting mid-chain: the first record's `prev_hash`, taken on trust (the
    /// records themselves are covered by the checkpoints). `None` when it starts at seq 1.
    pub mid_chain_prev_hash: Option<[u8; 32]>,
    /// Records whose event type this verifier does not know (newer format): their hashes and
    /// chain links were verified, their fields were not interpreted.
    pub unknown_events: u64,
}

/// Verifies an export read from `reader`, trusting checkpoints signed by `trusted` keys and by
/// keys introduced through verified `signing_key_rotated` records. Offline; reads the input once
/// and keeps O(1) records in memory (besides the rotation state).
///
/// Returns the first broken link. The rules that decide each [`FailureKind`] and the line it is
/// reported at are in `docs/audit-format.md` §7.
pub fn verify_export(
    reader: impl BufRead,
    trusted: &[PublicKey],
) -> Result<VerifyReport, VerifyFailure> {
    let mut lines = reader
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.map_err(|e| e.to_string())));
    Verifier::new(trusted).run(&mut lines)
}

type Lines<'a> = dyn Iterator<Item = (usize, Result<String, String>)> + 'a;

/// The last record seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    seq: u64,
    hash: [u8; 32],
    line: usize,
}

#[derive(Debug)]
struct PendingRotation {
    seq: u64,
    line: usize,
    old_key_id: String,
    new_key: PublicKey,
}

#[derive(Debug)]
struct Verifier {
    trusted: HashMap<String, PublicKey>,
    /// key id → (seq of the rotation record, seq of the checkpoint that confirmed it).
    retired: HashMap<String, (u64, u64)>,
    pending: Vec<PendingRotation>,
    header: Option<ExportHeader>,
    /// The last record, if any.
    last: Option<Seen>,
    /// The hash the next record's prev_hash must equal, when known.
    expected_prev: Option<[u8; 32]>,
    /// Whether the last record (or the start) is covered by a verified checkpoint.
    covered: bool,
    last_checkpoint: Option<(u64, usize, i64)>,
    records: u64,
    checkpoints: u64,
    keys_seen: Vec<PublicKey>,
    mid_chain_prev_hash: Option<[u8; 32]>,
    unknown_events: u64,
}

fn fail(line: usize, seq: Option<u64>, kind: FailureKind, detail: String) -> VerifyFailure {
    VerifyFailure {
        line,
        seq,
        kind,
        detail,
    }
}

/// A later line, parsed only as far as classification needs.
#[derive(Debug)]
struct Peek {
    line: usize,
    seq: u64,
    prev_hash: Option<String>,
}

/// Reads the rest of the export, returning the first record line that satisfies `want`, and
/// whether any record line was seen at all. Used only once a failure is certain, to name it.
fn scan(lines: &mut Lines<'_>, mut want: impl FnMut(&Peek) -> bool) -> (Option<Peek>, bool) {
    let mut any = false;
    for (line, text) in lines {
        let Ok(text) = text else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) != Some("record") {
            continue;
        }
        let Some(seq) = v.get("seq").and_then(Value::as_u64) else {
            continue;
        };
        any = true;
        let peek = Peek {
            line,
            seq,
            prev_hash: v
                .get("prev_hash")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if want(&peek) {
            return (Some(peek), true);
        }
    }
    (None, any)
}

fn range(from: u64, to: u64) -> String {
    if from == to {
        format!("seq {from}")
    } else {
        format!("seqs {from}..={to}")
    }
}

enum Parsed {
    Header,
    Record(RawRecord),
    Checkpoint(Checkpoint),
}

fn parse_line(text: &str) -> Result<Parsed, String> {
    let value = canonical::parse_strict(text).map_err(|e| e.to_string())?;
    match value.get("type").and_then(Value::as_str) {
        Some("record") => RawRecord::from_value(&value)
            .map(Parsed::Record)
            .map_err(|e| e.to_string()),
        Some("checkpoint") => Checkpoint::from_value(&value)
            .map(Parsed::Checkpoint)
            .map_err(|e| e.to_string()),
        Some(EXPORT_TYPE) => Ok(Parsed::Header),
        Some(other) => Err(format!("unknown line type {other:?}")),
        None => Err("a line must be a JSON object with a string \"type\"".into()),
    }
}

impl Verifier {
    fn new(trusted: &[PublicKey]) -> Self {
        Verifier {
            trusted: trusted.iter().map(|k| (k.key_id(), *k)).collect(),
            retired: HashMap::new(),
            pending: Vec::new(),
            header: None,
            last: None,
            expected_prev: None,
            covered: false,
            last_checkpoint: None,
            records: 0,
            checkpoints: 0,
            keys_seen: Vec::new(),
            mid_chain_prev_hash: None,
            unknown_events: 0,
        }
    }

    fn run(mut self, lines: &mut Lines<'_>) -> Result<VerifyReport, VerifyFailure> {
        let mut line_count = 0;
        while let Some((n, text)) = lines.next() {
            line_count = n;
            let text = text.map_err(|e| fail(n, None, FailureKind::Malformed, e))?;
            let Some(header) = self.header else {
                let header = ExportHeader::from_canonical_json(&text)
                    .map_err(|e| fail(n, None, FailureKind::Malformed, e.to_string()))?;
                self.header = Some(header);
                if header.first_seq == 1 {
                    self.expected_prev = Some([0u8; 32]);
                }
                continue;
            };
            match parse_line(&text) {
                Err(e) => return Err(fail(n, None, FailureKind::Malformed, e)),
                Ok(Parsed::Header) => {
                    return Err(fail(
                        n,
                        None,
                        FailureKind::Malformed,
                        "a second export header".into(),
                    ));
                }
                Ok(Parsed::Record(r)) => self.record(n, &r, &header, lines)?,
                Ok(Parsed::Checkpoint(c)) => self.checkpoint(n, &c, &header, lines)?,
            }
        }
        self.finish(line_count)
    }

    /// The seq of the last record, or `first_seq - 1` before the first.
    fn current_seq(&self, header: &ExportHeader) -> u64 {
        self.last
            .map_or(header.first_seq.saturating_sub(1), |l| l.seq)
    }

    fn record(
        &mut self,
        n: usize,
        r: &RawRecord,
        header: &ExportHeader,
        lines: &mut Lines<'_>,
    ) -> Result<(), VerifyFailure> {
        let seq = Some(r.seq);
        // 1. The record's own hash.
        let recomputed = r.recompute_hash();
        if recomputed != r.hash {
            return Err(fail(
                n,
                seq,
                FailureKind::Edited,
                format!(
                    "stored hash {} != recomputed {}",
                    hex::encode(r.hash),
                    hex::encode(recomputed)
                ),
            ));
        }
        // 2. Known events must be valid; rotations are remembered.
        if AuditEvent::TYPES.contains(&r.event_type()) {
            let event = r
                .typed_event()
                .map_err(|e| fail(n, seq, FailureKind::Malformed, e.to_string()))?;
            if let AuditEvent::SigningKeyRotated {
                old_key_id,
                new_key_id,
                new_public_key,
            } = event
            {
                if new_public_key.key_id() != new_key_id {
                    return Err(fail(
                        n,
                        seq,
                        FailureKind::Malformed,
                        format!(
                            "signing_key_rotated names new_key_id {new_key_id} but its public key has id {}",
                            new_public_key.key_id()
                        ),
                    ));
                }
                self.pending.push(PendingRotation {
                    seq: r.seq,
                    line: n,
                    old_key_id,
                    new_key: new_public_key,
                });
            }
        } else {
            self.unknown_events += 1;
        }
        // 3. Position in the sequence.
        let current = self.current_seq(header);
        let expected = current.saturating_add(1);
        if r.seq > expected {
            let (missing_from, missing_to) = (expected, r.seq - 1);
            let (later, _) = scan(lines, |p| (missing_from..=missing_to).contains(&p.seq));
            return Err(match later {
                Some(p) => fail(
                    n,
                    seq,
                    FailureKind::Reordered,
                    format!(
                        "expected seq {expected}, found seq {}; seq {} appears later, at line {}",
                        r.seq, p.seq, p.line
                    ),
                ),
                None => fail(
                    n,
                    seq,
                    FailureKind::Deleted,
                    format!(
                        "expected seq {expected}, found seq {}: {} missing",
                        r.seq,
                        range(missing_from, missing_to)
                    ),
                ),
            });
        }
        if r.seq < expected {
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
                    return Err(fail(
                        prev.line,
                        Some(prev.seq),
                        FailureKind::Inserted,
                        format!(
                            "seq {} appears twice (lines {} and {n}); the next record (line {}) links to line {n}, so line {} is not part of the chain",
                            r.seq, prev.line, next.line, prev.line
                        ),
                    ));
                }
            }
            return Err(fail(
                n,
                seq,
                FailureKind::Inserted,
                format!(
                    "seq {} was already used (the sequence had reached seq {current})",
                    r.seq
                ),
            ));
        }
        // 4. The link to the previous record.
        match self.expected_prev {
            Some(want) if want != r.prev_hash => {
                let (next, _) = scan(lines, |_| true);
                let this_hash = hex::encode(r.hash);
                if let Some(prev) = self.last
                    && let Some(next) = next
                    && next.prev_hash.as_deref() == Some(this_hash.as_str())
                {
                    return Err(fail(
                        prev.line,
                        Some(prev.seq),
                        FailureKind::Edited,
                        format!(
                            "record was altered and its hash recomputed: the next record (line {n}) still holds its original hash {} as prev_hash, but the record now hashes to {}",
                            hex::encode(r.prev_hash),
                            hex::encode(prev.hash)
                        ),
                    ));
                }
                return Err(fail(
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
            Some(_) => {}
            None => self.mid_chain_prev_hash = Some(r.prev_hash),
        }
        self.last = Some(Seen {
            seq: r.seq,
            hash: r.hash,
            line: n,
        });
        self.expected_prev = Some(r.hash);
        self.covered = false;
        self.records += 1;
        Ok(())
    }

    fn checkpoint(
        &mut self,
        n: usize,
        c: &Checkpoint,
        header: &ExportHeader,
        lines: &mut Lines<'_>,
    ) -> Result<(), VerifyFailure> {
        let seq = Some(c.seq);
        let current = self.current_seq(header);
        // 1. Placement: right after the record it covers.
        if c.seq > current {
            let (from, to) = (current.saturating_add(1), c.seq);
            let (later, any) = scan(lines, |p| (from..=to).contains(&p.seq));
            return Err(match later {
                Some(p) => fail(
                    n,
                    seq,
                    FailureKind::Reordered,
                    format!(
                        "checkpoint for seq {} comes after seq {current}; seq {} appears later, at line {}",
                        c.seq, p.seq, p.line
                    ),
                ),
                None if any => fail(
                    n,
                    seq,
                    FailureKind::Deleted,
                    format!(
                        "checkpoint for seq {} comes after seq {current}: {} missing",
                        c.seq,
                        range(from, to)
                    ),
                ),
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
            });
        }
        if c.seq < current {
            if let Some(prev) = self.last
                && c.seq.checked_add(1) == Some(prev.seq)
            {
                let (dup, _) = scan(lines, |p| p.seq == prev.seq);
                if let Some(dup) = dup {
                    return Err(fail(
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
            return Err(fail(
                n,
                seq,
                FailureKind::Reordered,
                format!(
                    "checkpoint for seq {} must come right after that record, but the sequence is already at seq {current}",
                    c.seq
                ),
            ));
        }
        // 2. The key.
        if let Some((rotation_seq, confirmed_at)) = self.retired.get(&c.key_id)
            && c.seq > *confirmed_at
        {
            return Err(fail(
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
            return Err(fail(n, seq, FailureKind::UnknownSigningKey, why));
        };
        // 3. The signature.
        if !key.verify_checkpoint(c) {
            return Err(fail(
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
                let since = self
                    .last_checkpoint
                    .map_or(header.first_seq, |(s, _, _)| s.saturating_add(1));
                return Err(fail(
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
                ));
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
        // 5. Rotations this checkpoint confirms: recorded at or before c.seq, from this key.
        let signer = c.key_id.clone();
        let (confirmed, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.seq <= c.seq && p.old_key_id == signer);
        self.pending = still;
        for p in confirmed {
            self.trusted.insert(p.new_key.key_id(), p.new_key);
            self.retired.insert(signer.clone(), (p.seq, c.seq));
        }
        Ok(())
    }

    fn finish(self, line_count: usize) -> Result<VerifyReport, VerifyFailure> {
        let Some(header) = self.header else {
            return Err(fail(
                1,
                None,
                FailureKind::Malformed,
                "empty export: no header line".into(),
            ));
        };
        let eof = line_count + 1;
        let current = self.current_seq(&header);
        let Some((_, cp_line, cp_time)) = self.last_checkpoint.filter(|_| self.covered) else {
            let detail = match self.last_checkpoint {
                Some((s, l, _)) => format!(
                    "the export ends after seq {current} without a checkpoint covering it; the last checkpoint covers seq {s} (line {l})"
                ),
                None => format!("the export ends after seq {current} without any checkpoint"),
            };
            return Err(fail(eof, Some(current), FailureKind::Truncated, detail));
        };
        if current < header.last_seq {
            return Err(fail(
                eof,
                Some(current),
                FailureKind::Truncated,
                format!(
                    "the header announces records up to seq {}, but the export ends at seq {current} (last checkpoint at line {cp_line})",
                    header.last_seq
                ),
            ));
        }
        if self.checkpoints != header.checkpoints {
            let (kind, what) = if self.checkpoints < header.checkpoints {
                (FailureKind::Deleted, "removed")
            } else {
                (FailureKind::Inserted, "added")
            };
            return Err(fail(
                eof,
                None,
                kind,
                format!(
                    "the header announces {} checkpoints, the export has {}: a checkpoint line was {what}",
                    header.checkpoints, self.checkpoints
                ),
            ));
        }
        if current > header.last_seq {
            return Err(fail(
                1,
                None,
                FailureKind::Malformed,
                format!(
                    "the header announces records up to seq {}, but the export continues to seq {current}",
                    header.last_seq
                ),
            ));
        }
        Ok(VerifyReport {
            records: self.records,
            checkpoints: self.checkpoints,
            first_seq: header.first_seq,
            last_seq: current,
            head_hash: self.expected_prev.unwrap_or([0u8; 32]),
            signing_keys_seen: self.keys_seen,
            final_checkpoint_time_ms: cp_time,
            exported_at_ms: header.exported_at_ms,
            mid_chain_prev_hash: self.mid_chain_prev_hash,
            unknown_events: self.unknown_events,
        })
    }
}
