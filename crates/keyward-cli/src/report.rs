//! The revocation report of `keyward audit report`: a tenant's revocation timeline, built from
//! its audit records by plain functions, whether the records come from the live server or from
//! a verified export (one engine, so both give the same report).

use std::fmt::Write as _;

use anyhow::Context as _;
use keyward_audit::{AuditEvent, KeyState, StateTransition};
use serde_json::{Value, json};

/// One audit record: its place in the chain, when it was written, and what it says.
#[derive(Debug, Clone)]
pub(crate) struct AuditEntry {
    pub(crate) seq: u64,
    pub(crate) time_ms: i64,
    pub(crate) event: AuditEvent,
}

impl AuditEntry {
    /// From a record's JSON: the canonical bytes the server lists (`{"event","prev_hash","seq",
    /// "time_ms"}`) or an export's record line (the same plus `hash` and `type`). `None` for an
    /// event type this build does not know (a newer server's); an error for a known type that
    /// does not parse.
    pub(crate) fn from_json(text: &str) -> anyhow::Result<Option<AuditEntry>> {
        let value: Value = serde_json::from_str(text).context("an audit record is not JSON")?;
        let seq = value
            .get("seq")
            .and_then(Value::as_u64)
            .context("an audit record has no seq")?;
        let time_ms = value
            .get("time_ms")
            .and_then(Value::as_i64)
            .with_context(|| format!("record seq {seq} has no time_ms"))?;
        let event = value
            .get("event")
            .with_context(|| format!("record seq {seq} has no event"))?;
        let known = event
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| AuditEvent::TYPES.contains(&t));
        if !known {
            return Ok(None);
        }
        let event = serde_json::from_value(event.clone())
            .with_context(|| format!("record seq {seq} is not a valid audit event"))?;
        Ok(Some(AuditEntry {
            seq,
            time_ms,
            event,
        }))
    }
}

pub(crate) use keyward_server::time::rfc3339_utc_ms as utc_ms;

/// `2026-12-06T19:10:00Z`: a whole second (denial records count per second).
pub(crate) fn utc_second(second: i64) -> String {
    let text = utc_ms(second.saturating_mul(1000));
    match text.strip_suffix(".000Z") {
        Some(whole) => format!("{whole}Z"),
        None => text,
    }
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A replica's purge of the tenant's cached keys (`keys_purged`; each replica writes its own).
#[derive(Debug, Clone)]
struct Purge {
    seq: u64,
    purged_at_ms: i64,
    entries: u64,
    last_plaintext_at_ms: Option<i64>,
    /// The replica's id, when the record names it (records of older servers do not).
    replica: Option<String>,
}

impl Purge {
    /// The replica that wrote this purge record, in words: by its id, or by the record's seq
    /// for records written before purge records named their replica.
    fn who(&self) -> String {
        match &self.replica {
            Some(replica) => format!("replica {replica:?}, seq {}", self.seq),
            None => format!("the replica that wrote seq {}", self.seq),
        }
    }
}

/// A revocation of one binding, from its record until a `restored` record of that binding.
#[derive(Debug, Clone)]
struct Revocation {
    seq: u64,
    recorded_ms: i64,
    t: StateTransition,
    /// Later transitions of the binding while revoked (made explicit, destroyed).
    changes: Vec<(u64, i64, StateTransition)>,
    purges: Vec<Purge>,
    restored: Option<(u64, i64, StateTransition)>,
    /// (second, count) of the denial records attributed to it.
    denials: Vec<(i64, u64)>,
}

impl Revocation {
    /// Denials count per second: a second counts for this revocation if any part of it falls
    /// between the revocation (its first observation, if earlier than its record) and the
    /// restoration's record.
    fn covers_second(&self, second: i64) -> bool {
        let start = self.t.observed_at_ms.min(self.recorded_ms);
        let (from, to) = (
            second.saturating_mul(1000),
            second.saturating_mul(1000) + 999,
        );
        start <= to
            && self
                .restored
                .as_ref()
                .is_none_or(|(_, end, _)| *end >= from)
    }

    /// Purges whose replica returned plaintext after the revocation was recorded.
    fn served_after(&self) -> Vec<&Purge> {
        self.purges
            .iter()
            .filter(|p| p.last_plaintext_at_ms.is_some_and(|t| t > self.recorded_ms))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Item {
    Revocation(Box<Revocation>),
    /// Any other state change: to `unavailable` (not a revocation), or a restoration that
    /// ends no revocation in this report.
    Change {
        seq: u64,
        time_ms: i64,
        t: StateTransition,
        restored: bool,
    },
}

/// A tenant's revocation timeline.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    tenant: String,
    /// The tenant's records the report is read from (state changes, purges, denials), and
    /// their first and last seq; records of other kinds (usage summaries, data keys) do not
    /// change the report, so they are not counted in it.
    records: usize,
    first_seq: u64,
    last_seq: u64,
    /// All the tenant's records, when none is about a revocation.
    all_records: usize,
    items: Vec<Item>,
    /// Purges before any revocation in the records (e.g. the export starts mid-revocation).
    unattached_purges: Vec<Purge>,
    /// Denial records no revocation in the records covers.
    unattributed: Vec<(i64, u64)>,
    total_denied: u64,
}

/// Builds the report from audit records in seq order (records about other tenants are
/// ignored). `None` when no record names the tenant: there is no such tenant in the records.
pub(crate) fn build(tenant: &str, entries: &[AuditEntry]) -> Option<Report> {
    let mine: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| e.event.tenant().is_some_and(|t| t.as_str() == tenant))
        .collect();
    let all_records = mine.len();
    let (all_first, all_last) = (mine.first()?.seq, mine.last()?.seq);
    let read: Vec<u64> = mine
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                AuditEvent::RevocationStateChanged(_)
                    | AuditEvent::Restored(_)
                    | AuditEvent::KeysPurged { .. }
                    | AuditEvent::RevocationDenials { .. }
            )
        })
        .map(|e| e.seq)
        .collect();
    let mut report = Report {
        tenant: tenant.to_owned(),
        records: read.len(),
        first_seq: read.first().copied().unwrap_or(all_first),
        last_seq: read.last().copied().unwrap_or(all_last),
        all_records,
        items: Vec::new(),
        unattached_purges: Vec::new(),
        unattributed: Vec::new(),
        total_denied: 0,
    };
    let mut denials = Vec::new();
    for entry in mine {
        match &entry.event {
            AuditEvent::RevocationStateChanged(t)
                if matches!(t.to, KeyState::Revoked | KeyState::Destroyed) =>
            {
                match report.open_revocation(t.binding_id) {
                    Some(open) => open.changes.push((entry.seq, entry.time_ms, t.clone())),
                    None => report.items.push(Item::Revocation(Box::new(Revocation {
                        seq: entry.seq,
                        recorded_ms: entry.time_ms,
                        t: t.clone(),
                        changes: Vec::new(),
                        purges: Vec::new(),
                        restored: None,
                        denials: Vec::new(),
                    }))),
                }
            }
            AuditEvent::RevocationStateChanged(t) => report.items.push(Item::Change {
                seq: entry.seq,
                time_ms: entry.time_ms,
                t: t.clone(),
                restored: false,
            }),
            AuditEvent::Restored(t) => match report.open_revocation(t.binding_id) {
                Some(open) => open.restored = Some((entry.seq, entry.time_ms, t.clone())),
                None => report.items.push(Item::Change {
                    seq: entry.seq,
                    time_ms: entry.time_ms,
                    t: t.clone(),
                    restored: true,
                }),
            },
            AuditEvent::KeysPurged {
                purged_at_ms,
                entries,
                last_plaintext_at_ms,
                replica,
                ..
            } => {
                let purge = Purge {
                    seq: entry.seq,
                    purged_at_ms: *purged_at_ms,
                    entries: *entries,
                    last_plaintext_at_ms: *last_plaintext_at_ms,
                    replica: replica.clone(),
                };
                // A replica purges when it learns of a revocation: the latest one recorded.
                match report.revocations_mut().last_mut() {
                    Some(revocation) => revocation.purges.push(purge),
                    None => report.unattached_purges.push(purge),
                }
            }
            AuditEvent::RevocationDenials { second, count, .. } => {
                denials.push((*second, *count));
            }
            _ => {}
        }
    }
    // By the second they count, not by when their record was written (after the second is
    // over, possibly after the restoration's record): the latest revocation covering it.
    for (second, count) in denials {
        report.total_denied += count;
        match report
            .revocations_mut()
            .into_iter()
            .rev()
            .find(|r| r.covers_second(second))
        {
            Some(revocation) => revocation.denials.push((second, count)),
            None => report.unattributed.push((second, count)),
        }
    }
    Some(report)
}

impl Report {
    fn revocations_mut(&mut self) -> Vec<&mut Revocation> {
        self.items
            .iter_mut()
            .filter_map(|item| match item {
                Item::Revocation(r) => Some(r.as_mut()),
                Item::Change { .. } => None,
            })
            .collect()
    }

    fn open_revocation(&mut self, binding_id: i64) -> Option<&mut Revocation> {
        self.revocations_mut()
            .into_iter()
            .rev()
            .find(|r| r.t.binding_id == binding_id && r.restored.is_none())
    }

    /// The report as text, times in UTC (RFC 3339 with milliseconds).
    pub(crate) fn text(&self) -> String {
        let mut out = format!("Revocation report for tenant {}\n", self.tenant);
        if self.records == 0 {
            let _ = writeln!(
                out,
                "None of the {} audit records about the tenant ({}) is about a revocation.",
                self.all_records,
                seq_range(self.first_seq, self.last_seq)
            );
        } else {
            let _ = writeln!(
                out,
                "From the tenant's {} revocation records (state changes, purges, denials), {}. \
                 All times are UTC (RFC 3339).",
                self.records,
                seq_range(self.first_seq, self.last_seq)
            );
        }
        let revocations = self
            .items
            .iter()
            .filter(|i| matches!(i, Item::Revocation(_)))
            .count();
        if revocations == 0 {
            out.push_str("\n(no revocation recorded)\n");
        }
        let mut number = 0;
        for item in &self.items {
            out.push('\n');
            match item {
                Item::Revocation(r) => {
                    number += 1;
                    write_revocation(&mut out, number, r);
                }
                Item::Change {
                    seq,
                    time_ms,
                    t,
                    restored,
                } => {
                    let what = match (restored, t.to) {
                        (true, _) => "Restored",
                        (false, KeyState::Unavailable) => {
                            "KMS unavailable (not a revocation: data stays readable once it answers)"
                        }
                        (false, _) => "State change",
                    };
                    let _ = writeln!(
                        out,
                        "{what} (seq {seq}): binding {} {} -> {} at {}, {}: {}",
                        t.binding_id,
                        state(t.from),
                        state(t.to),
                        utc_ms(*time_ms),
                        by(t),
                        t.reason
                    );
                }
            }
        }
        if !self.unattached_purges.is_empty() {
            out.push_str("\nPurges before any revocation in these records:\n");
            for p in &self.unattached_purges {
                write_purge(&mut out, p, None);
            }
        }
        if self.total_denied > 0 {
            let outside: u64 = self.unattributed.iter().map(|(_, c)| c).sum();
            let _ = write!(
                out,
                "\nRequests denied in all: {} ({} during the revocations above",
                self.total_denied,
                self.total_denied - outside
            );
            if outside > 0 {
                let _ = write!(
                    out,
                    "; outside any revocation in these records: {}",
                    seconds(&self.unattributed)
                );
            }
            out.push_str(").\n");
        }
        out
    }

    /// The report as JSON, with the raw values (Unix milliseconds, seconds, seqs).
    pub(crate) fn json(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|item| match item {
                Item::Revocation(r) => json!({
                    "kind": "revocation",
                    "seq": r.seq,
                    "recorded_at_ms": r.recorded_ms,
                    "transition": r.t,
                    "changes": r.changes.iter().map(|(seq, at, t)| json!({
                        "seq": seq, "recorded_at_ms": at, "transition": t,
                    })).collect::<Vec<_>>(),
                    "purges": r.purges.iter().map(|p| purge_json(p, Some(r.recorded_ms))).collect::<Vec<_>>(),
                    "plaintext_served_after_revocation": !r.served_after().is_empty(),
                    "restored": r.restored.as_ref().map(|(seq, at, t)| json!({
                        "seq": seq, "recorded_at_ms": at, "transition": t,
                    })),
                    "denied": r.denials.iter().map(|(_, c)| c).sum::<u64>(),
                    "denials": denials_json(&r.denials),
                }),
                Item::Change {
                    seq,
                    time_ms,
                    t,
                    restored,
                } => json!({
                    "kind": if *restored { "restored" } else { "state_change" },
                    "seq": seq,
                    "recorded_at_ms": time_ms,
                    "transition": t,
                }),
            })
            .collect();
        json!({
            "tenant": self.tenant,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "items": items,
            "unattached_purges": self.unattached_purges.iter().map(|p| purge_json(p, None)).collect::<Vec<_>>(),
            "denied_total": self.total_denied,
            "denials_outside_revocations": denials_json(&self.unattributed),
        })
    }
}

fn purge_json(p: &Purge, revoked_ms: Option<i64>) -> Value {
    json!({
        "seq": p.seq,
        "replica": p.replica,
        "purged_at_ms": p.purged_at_ms,
        "entries": p.entries,
        "last_plaintext_at_ms": p.last_plaintext_at_ms,
        "served_after_revocation": revoked_ms
            .is_some_and(|r| p.last_plaintext_at_ms.is_some_and(|t| t > r)),
    })
}

fn denials_json(denials: &[(i64, u64)]) -> Vec<Value> {
    denials
        .iter()
        .map(|(second, count)| json!({"second": second, "count": count}))
        .collect()
}

fn seq_range(from: u64, to: u64) -> String {
    if from == to {
        format!("seq {from}")
    } else {
        format!("seq {from} to seq {to}")
    }
}

fn state(s: KeyState) -> &'static str {
    match s {
        KeyState::Active => "active",
        KeyState::Revoked => "revoked",
        KeyState::Unavailable => "unavailable",
        KeyState::Restored => "restored",
        KeyState::Destroyed => "destroyed",
        _ => "another state",
    }
}

/// `source explicit, by Developer::"dev"`.
fn by(t: &StateTransition) -> String {
    let source = match t.source {
        keyward_audit::RevocationSource::KmsRefusal => "the KMS refused a call",
        keyward_audit::RevocationSource::Monitor => "the key-state monitor",
        keyward_audit::RevocationSource::Explicit => "an explicit request",
        keyward_audit::RevocationSource::Event => "a key-state event",
        _ => "another source",
    };
    match &t.actor {
        Some(actor) => format!("source: {source} by {actor}"),
        None => format!("source: {source}"),
    }
}

/// `3 requests in 2 seconds, first 2026-…Z, last 2026-…Z`.
fn seconds(denials: &[(i64, u64)]) -> String {
    let total: u64 = denials.iter().map(|(_, c)| c).sum();
    let first = denials.iter().map(|(s, _)| *s).min();
    let last = denials.iter().map(|(s, _)| *s).max();
    match (first, last) {
        (Some(first), Some(last)) if first == last => {
            format!("{total} requests in the second {}", utc_second(first))
        }
        (Some(first), Some(last)) => format!(
            "{total} requests in {} seconds, first {}, last {}",
            denials.len(),
            utc_second(first),
            utc_second(last)
        ),
        _ => "0 requests".to_owned(),
    }
}

fn write_purge(out: &mut String, p: &Purge, revoked_ms: Option<i64>) {
    let served = match (p.last_plaintext_at_ms, revoked_ms) {
        (None, _) => "served no plaintext since it started".to_owned(),
        (Some(t), Some(r)) if t > r => format!(
            "plaintext last served at {}, {} ms AFTER the revocation was recorded",
            utc_ms(t),
            t - r
        ),
        (Some(t), Some(_)) => format!(
            "plaintext last served at {}, before the revocation was recorded",
            utc_ms(t)
        ),
        (Some(t), None) => format!("plaintext last served at {}", utc_ms(t)),
    };
    let _ = writeln!(
        out,
        "    - {}: purged {} cached keys at {}; {served}",
        p.who(),
        p.entries,
        utc_ms(p.purged_at_ms)
    );
}

fn write_revocation(out: &mut String, number: usize, r: &Revocation) {
    let t = &r.t;
    let _ = writeln!(
        out,
        "Revocation {number} (seq {}): binding {} {} -> {}, {}",
        r.seq,
        t.binding_id,
        state(t.from),
        state(t.to),
        by(t)
    );
    let _ = writeln!(out, "  reason:          {}", t.reason);
    let _ = writeln!(
        out,
        "  first observed:  {} (when the signal was first seen)",
        utc_ms(t.observed_at_ms)
    );
    let _ = writeln!(
        out,
        "  revoked at:      {} (recorded)",
        utc_ms(r.recorded_ms)
    );
    for (seq, at, change) in &r.changes {
        let _ = writeln!(
            out,
            "  then (seq {seq}):   {} -> {} at {}, {}: {}",
            state(change.from),
            state(change.to),
            utc_ms(*at),
            by(change),
            change.reason
        );
    }
    let _ = writeln!(
        out,
        "  plaintext last served, per replica (each replica records the last time it returned \
         plaintext for the tenant when it purges its cached keys; the figure is that replica's \
         only):"
    );
    if r.purges.is_empty() {
        out.push_str("    (no replica recorded a purge)\n");
    }
    for p in &r.purges {
        write_purge(out, p, Some(r.recorded_ms));
    }
    let after = r.served_after();
    if after.is_empty() {
        out.push_str("  answer:          no plaintext served after the revocation was recorded\n");
    } else {
        let times: Vec<String> = after
            .iter()
            .filter_map(|p| {
                p.last_plaintext_at_ms
                    .map(|t| format!("{} ({})", utc_ms(t), p.who()))
            })
            .collect();
        let _ = writeln!(
            out,
            "  answer:          plaintext served after the revocation was recorded by {} of {} \
             replicas, last at {} (the log keeps each replica's last time, not each request)",
            after.len(),
            r.purges.len(),
            times.join(", ")
        );
    }
    let _ = writeln!(out, "  denied since:    {}", seconds(&r.denials));
    match &r.restored {
        Some((seq, at, t)) => {
            let _ = writeln!(
                out,
                "  restored at:     {} (seq {seq}), {}: {}",
                utc_ms(*at),
                by(t),
                t.reason
            );
        }
        None => out.push_str("  restored:        no (still revoked at the last record)\n"),
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
