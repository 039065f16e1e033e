//! The offline verifier (`docs/audit-format.md` §7): recomputes the chain, checks every
//! checkpoint signature and follows signing-key rotations, and names the first broken link
//! ([`verify_export`]) or every problem it can find ([`verify_export_all`]).
//!
//! Here: the outcome types and the verifier's state and line loop; `lines` reads and parses the
//! export's lines, `record_line` and `checkpoint_line` hold the checks of each kind of line.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::BufRead;

use serde_json::Value;

use crate::checkpoint::{Checkpoint, PublicKey};
use crate::export::ExportHeader;
use crate::redaction::TenantScope;

mod checkpoint_line;
mod lines;
mod record_line;
mod tenant_line;

use lines::{Lines, Parsed, parse_line};

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
    /// A per-tenant export shows a record of its tenant as a redacted line (its `tenant_tag` is
    /// the tenant's): the export hides one of the tenant's own records.
    Withheld,
    /// A per-tenant export shows in full a record that is not its tenant's (another tenant's
    /// tag, or a deployment-wide record other than a signing-key rotation), or a record's
    /// tenant and tag disagree.
    Disclosed,
}

impl FailureKind {
    /// A stable snake_case name, for machine-readable output (`malformed`, `edited`, `deleted`,
    /// `reordered`, `inserted`, `truncated`, `bad_signature`, `unknown_signing_key`, `withheld`,
    /// `disclosed`).
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureKind::Malformed => "malformed",
            FailureKind::Edited => "edited",
            FailureKind::Deleted => "deleted",
            FailureKind::Reordered => "reordered",
            FailureKind::Inserted => "inserted",
            FailureKind::Truncated => "truncated",
            FailureKind::BadSignature => "bad_signature",
            FailureKind::UnknownSigningKey => "unknown_signing_key",
            FailureKind::Withheld => "withheld",
            FailureKind::Disclosed => "disclosed",
        }
    }
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
            FailureKind::Withheld => "record of the tenant withheld",
            FailureKind::Disclosed => "record not of the tenant shown in full",
        })
    }
}

/// A broken link of an export.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// 1-based line number. For a problem found at the end of the export (it ends early, or
    /// the header's counts do not match) it is one past the last line, and `end_of_export` is
    /// set: such a line does not exist, and [`Display`](fmt::Display) says "end of export".
    pub line: usize,
    /// Whether the problem was found at the end of the export rather than on a line.
    pub end_of_export: bool,
    /// The seq of the record or checkpoint on that line, when known.
    pub seq: Option<u64>,
    pub kind: FailureKind,
    /// What exactly does not match, with hashes in hex.
    pub detail: String,
}

impl VerifyFailure {
    /// Where the problem is, in words: `line 17`, or `end of export (after line 58)` (never
    /// a line past the end of the file).
    pub fn location(&self) -> String {
        match (self.end_of_export, self.line.saturating_sub(1)) {
            (false, _) => format!("line {}", self.line),
            (true, 0) => "end of export (the file is empty)".to_owned(),
            (true, last) => format!("end of export (after line {last})"),
        }
    }
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.location();
        match self.seq {
            Some(seq) => write!(f, "{at} (seq {seq}): {}: {}", self.kind, self.detail),
            None => write!(f, "{at}: {}: {}", self.kind, self.detail),
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
    /// Format-v2 records (full or redacted); the others are format v1.
    pub v2_records: u64,
    /// For a per-tenant export (§6.2): what it proves about the tenant.
    pub tenant: Option<TenantReport>,
}

/// What a verified per-tenant export proves about its tenant (`docs/audit-format.md` §6.2).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantReport {
    /// The tenant, its tag (as the header states it) and the range asked for.
    pub scope: TenantScope,
    /// The tenant's records shown in full (its tag, its tenant id).
    pub records: u64,
    /// Of those, the ones whose time lies in the range asked for.
    pub records_in_range: u64,
    /// Redacted lines: records of other tenants and deployment-wide records, each proven not to
    /// carry the tenant's tag.
    pub redacted: u64,
    /// Deployment-wide records shown in full (signing-key rotations).
    pub deployment_records: u64,
    /// Whether at least one full record of the tenant carries the header's tag. When false
    /// the tag is the server's word only (compare it with an earlier export: it never changes).
    pub tag_confirmed: bool,
    /// Times of the first and last record of the export (any line), when there are records.
    pub first_time_ms: Option<i64>,
    pub last_time_ms: Option<i64>,
}

impl TenantReport {
    /// Whether the export starts with a record before the range: then nothing of the range
    /// can be missing before its first record (times never decrease along the chain).
    pub fn starts_before_range(&self) -> bool {
        self.first_time_ms.is_some_and(|t| t < self.scope.from_ms)
    }

    /// Whether the export ends with a record after the range: then nothing of the range can
    /// be missing after its last record.
    pub fn ends_after_range(&self) -> bool {
        self.last_time_ms.is_some_and(|t| t >= self.scope.to_ms)
    }
}

/// Verifies an export read from `reader`, trusting checkpoints signed by `trusted` keys and by
/// keys introduced through verified `signing_key_rotated` records. Offline; reads the input once
/// and keeps O(1) records in memory (besides the rotation state).
///
/// Returns the first broken link. The rules that decide each [`FailureKind`] and the line it is
/// reported at are in `docs/audit-format.md` §7. [`verify_export_all`] goes on past it.
pub fn verify_export(
    reader: impl BufRead,
    trusted: &[PublicKey],
) -> Result<VerifyReport, VerifyFailure> {
    let mut verifier = Verifier::new(trusted, false);
    let mut lines = Lines::new(reader, false);
    let outcome = verifier.run(&mut lines);
    match verifier.problems.into_iter().next() {
        Some(first) => Err(first),
        None => outcome.ok_or_else(|| {
            fail(
                1,
                None,
                FailureKind::Malformed,
                "invariant: a verification without problems has a report".into(),
            )
        }),
    }
}

/// Everything [`verify_export_all`] found.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Every problem found, in the order found (the first is the one [`verify_export`]
    /// returns). Empty when the export verified.
    pub problems: Vec<VerifyFailure>,
    /// What was proven, when there is no problem.
    pub report: Option<VerifyReport>,
    /// Whether every line was checked: false when a problem left nothing to check the rest
    /// against (the export has no valid header).
    pub read_to_end: bool,
}

/// Like [`verify_export`], but reports every problem it can find instead of only the first:
/// after each problem it carries on from the state the export itself suggests (an edited
/// record still links its successor, a deletion resumes at the next record present, a moved
/// record is checked where it stands, a forged line is skipped), so an edit does not hide a
/// later deletion. A consequence of a problem already reported is not reported again.
/// Keeps in memory the lines it had to read ahead to name a problem.
pub fn verify_export_all(reader: impl BufRead, trusted: &[PublicKey]) -> Verification {
    let mut verifier = Verifier::new(trusted, true);
    let mut lines = Lines::new(reader, true);
    let report = verifier.run(&mut lines);
    let problems = verifier.problems;
    Verification {
        report: report.filter(|_| problems.is_empty()),
        read_to_end: !verifier.stopped,
        problems,
    }
}

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
    /// Go on after a problem ([`verify_export_all`]).
    keep_going: bool,
    problems: Vec<VerifyFailure>,
    /// (line, kind) of each problem reported, so that a consequence is reported once.
    reported: HashSet<(usize, FailureKind)>,
    /// Seqs reported missing (deleted) or moved (appear later), so that the same gap is not
    /// reported again by a later line, and a moved record is not taken for an inserted one.
    missing: Option<(u64, u64)>,
    moved: Option<(u64, u64)>,
    /// After a checkpoint's head disagreed with the records: the index of that problem and
    /// how many later checkpoints disagreed too.
    rechained: Option<(usize, u64)>,
    /// Checkpoint lines read, verified or not (compared with the header's count).
    checkpoint_lines: u64,
    /// A checkpoint line (verified or not) stands right after the last record.
    last_record_has_checkpoint_line: bool,
    /// Verification cannot go on (no header).
    stopped: bool,
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
    v2_records: u64,
    /// The tenant a per-tenant export is for, and what was found about it.
    scope: Option<TenantScope>,
    tenant: TenantTally,
    /// Whole-chain exports: the tag each tenant's full format-v2 records carry, and the tenant
    /// each tag belongs to (one tag per tenant, one tenant per tag).
    tag_of: HashMap<String, String>,
    tenant_of: HashMap<String, String>,
    /// The time of the last record, to check that times never decrease.
    last_time_ms: Option<i64>,
}

/// Counts of a per-tenant export.
#[derive(Debug, Default)]
struct TenantTally {
    records: u64,
    in_range: u64,
    redacted: u64,
    deployment: u64,
    first_time_ms: Option<i64>,
}

fn fail(line: usize, seq: Option<u64>, kind: FailureKind, detail: String) -> VerifyFailure {
    VerifyFailure {
        line,
        end_of_export: false,
        seq,
        kind,
        detail,
    }
}

/// A problem found at the end of an export of `line_count` lines.
fn fail_at_end(
    line_count: usize,
    seq: Option<u64>,
    kind: FailureKind,
    detail: String,
) -> VerifyFailure {
    VerifyFailure {
        end_of_export: true,
        ..fail(line_count + 1, seq, kind, detail)
    }
}

/// Whether the range `inner` lies inside `outer`.
fn within(inner: (u64, u64), outer: Option<(u64, u64)>) -> bool {
    outer.is_some_and(|(from, to)| from <= inner.0 && inner.1 <= to)
}

/// `seq 5`, or `seqs 5 to 9`.
fn range(from: u64, to: u64) -> String {
    if from == to {
        format!("seq {from}")
    } else {
        format!("seqs {from} to {to}")
    }
}

/// Verification stops here ([`verify_export`] stops at the first problem).
#[derive(Debug)]
struct Stop;

type Flow = Result<(), Stop>;

impl Verifier {
    fn new(trusted: &[PublicKey], keep_going: bool) -> Self {
        Verifier {
            trusted: trusted.iter().map(|k| (k.key_id(), *k)).collect(),
            retired: HashMap::new(),
            pending: Vec::new(),
            header: None,
            last: None,
            keep_going,
            problems: Vec::new(),
            reported: HashSet::new(),
            missing: None,
            moved: None,
            rechained: None,
            checkpoint_lines: 0,
            last_record_has_checkpoint_line: false,
            stopped: false,
            expected_prev: None,
            covered: false,
            last_checkpoint: None,
            records: 0,
            checkpoints: 0,
            keys_seen: Vec::new(),
            mid_chain_prev_hash: None,
            unknown_events: 0,
            v2_records: 0,
            scope: None,
            tenant: TenantTally::default(),
            tag_of: HashMap::new(),
            tenant_of: HashMap::new(),
            last_time_ms: None,
        }
    }

    /// Records a problem (once per line and kind); stops unless verification goes on after
    /// problems.
    fn report(&mut self, failure: VerifyFailure) -> Flow {
        if self.reported.insert((failure.line, failure.kind)) {
            self.problems.push(failure);
        }
        if self.keep_going { Ok(()) } else { Err(Stop) }
    }

    fn run(&mut self, lines: &mut Lines<'_>) -> Option<VerifyReport> {
        let mut line_count = 0;
        while let Some((n, text)) = lines.next() {
            line_count = n;
            if self.line(n, text, lines).is_err() || self.stopped {
                return None;
            }
        }
        self.finish(line_count).ok().flatten()
    }

    fn line(&mut self, n: usize, text: Result<String, String>, lines: &mut Lines<'_>) -> Flow {
        let text = match text {
            Ok(text) => text,
            Err(e) => return self.report(fail(n, None, FailureKind::Malformed, e)),
        };
        let Some(header) = self.header else {
            return match ExportHeader::parse(&text) {
                Ok((header, scope)) => {
                    self.header = Some(header);
                    self.scope = scope;
                    if header.first_seq == 1 {
                        self.expected_prev = Some([0u8; 32]);
                    }
                    Ok(())
                }
                Err(e) => {
                    // Without the header nothing else can be checked.
                    self.stopped = true;
                    self.report(fail(n, None, FailureKind::Malformed, e.to_string()))
                }
            };
        };
        match parse_line(&text) {
            Err(e) => {
                self.note_malformed(&text, &header);
                self.report(fail(n, None, FailureKind::Malformed, e))
            }
            Ok(Parsed::Header) => self.report(fail(
                n,
                None,
                FailureKind::Malformed,
                "a second export header".into(),
            )),
            Ok(Parsed::Record(r)) => self.record(n, &r, &header, lines),
            Ok(Parsed::Checkpoint(c)) => self.checkpoint(n, &c, &header, lines),
        }
    }

    /// The seq of the last record, or `first_seq - 1` before the first.
    fn current_seq(&self, header: &ExportHeader) -> u64 {
        self.last
            .map_or(header.first_seq.saturating_sub(1), |l| l.seq)
    }

    /// 5. Rotations a verified checkpoint confirms: recorded at or before its seq, from its key.
    fn confirm_rotations(&mut self, c: &Checkpoint) {
        let signer = c.key_id.clone();
        let (confirmed, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.seq <= c.seq && p.old_key_id == signer);
        self.pending = still;
        for p in confirmed {
            self.trusted.insert(p.new_key.key_id(), p.new_key);
            self.retired.insert(signer.clone(), (p.seq, c.seq));
        }
    }

    /// A line that is not a valid record or checkpoint: if it still reads as one, its seq is
    /// remembered so that its absence is not reported again as a deletion (or a checkpoint
    /// line as removed).
    fn note_malformed(&mut self, text: &str, header: &ExportHeader) {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let seq = value.get("seq").and_then(Value::as_u64);
        match (value.get("type").and_then(Value::as_str), seq) {
            (Some("record" | "redacted"), Some(seq)) if seq > self.current_seq(header) => {
                self.missing = Some((seq, seq));
            }
            (Some("checkpoint"), Some(seq)) => {
                self.checkpoint_lines += 1;
                if seq == self.current_seq(header) {
                    self.last_record_has_checkpoint_line = true;
                }
            }
            _ => {}
        }
    }

    /// The end-of-export checks; the report when nothing was found.
    fn finish(&mut self, line_count: usize) -> Result<Option<VerifyReport>, Stop> {
        if let Some((index, later)) = self.rechained
            && later > 0
            && let Some(problem) = self.problems.get_mut(index)
        {
            problem.detail.push_str(&format!(
                "; the {later} later checkpoint(s) disagree with the records too"
            ));
        }
        let Some(header) = self.header else {
            self.report(fail_at_end(
                line_count,
                None,
                FailureKind::Malformed,
                "empty export: no header line".into(),
            ))?;
            return Ok(None);
        };
        let current = self.current_seq(&header);
        let last_cp = self.last_checkpoint.filter(|_| self.covered);
        // A checkpoint line after the last record that failed was reported already.
        if last_cp.is_none() && !self.last_record_has_checkpoint_line {
            let detail = match self.last_checkpoint {
                Some((s, l, _)) => format!(
                    "the export ends after seq {current} without a checkpoint covering it; the last checkpoint covers seq {s} (line {l})"
                ),
                None => format!("the export ends after seq {current} without any checkpoint"),
            };
            self.report(fail_at_end(
                line_count,
                Some(current),
                FailureKind::Truncated,
                detail,
            ))?;
        }
        if current < header.last_seq {
            let at = last_cp
                .map(|(_, cp_line, _)| format!(" (last checkpoint at line {cp_line})"))
                .unwrap_or_default();
            self.report(fail_at_end(
                line_count,
                Some(current),
                FailureKind::Truncated,
                format!(
                    "the header announces records up to seq {}, but the export ends at seq {current}{at}",
                    header.last_seq
                ),
            ))?;
        }
        if self.checkpoint_lines != header.checkpoints {
            let (kind, what) = if self.checkpoint_lines < header.checkpoints {
                (FailureKind::Deleted, "removed")
            } else {
                (FailureKind::Inserted, "added")
            };
            self.report(fail_at_end(
                line_count,
                None,
                kind,
                format!(
                    "the header announces {} checkpoints, the export has {}: a checkpoint line was {what}",
                    header.checkpoints, self.checkpoint_lines
                ),
            ))?;
        }
        if current > header.last_seq {
            self.report(fail(
                1,
                None,
                FailureKind::Malformed,
                format!(
                    "the header announces records up to seq {}, but the export continues to seq {current}",
                    header.last_seq
                ),
            ))?;
        }
        let Some((_, _, cp_time)) = last_cp.filter(|_| self.problems.is_empty()) else {
            return Ok(None);
        };
        Ok(Some(VerifyReport {
            records: self.records,
            checkpoints: self.checkpoints,
            first_seq: header.first_seq,
            last_seq: current,
            head_hash: self.expected_prev.unwrap_or([0u8; 32]),
            signing_keys_seen: self.keys_seen.clone(),
            final_checkpoint_time_ms: cp_time,
            exported_at_ms: header.exported_at_ms,
            mid_chain_prev_hash: self.mid_chain_prev_hash,
            unknown_events: self.unknown_events,
            v2_records: self.v2_records,
            tenant: self.scope.clone().map(|scope| TenantReport {
                scope,
                records: self.tenant.records,
                records_in_range: self.tenant.in_range,
                redacted: self.tenant.redacted,
                deployment_records: self.tenant.deployment,
                tag_confirmed: self.tenant.records > 0,
                first_time_ms: self.tenant.first_time_ms,
                last_time_ms: self.last_time_ms,
            }),
        }))
    }
}
