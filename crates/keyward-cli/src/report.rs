//! The revocation report of `keyward audit report`: a tenant's revocation timeline, rendered
//! from its audit records.

use anyhow::Context as _;
use keyward_proto::v1 as pb;

/// Renders the revocation timeline from a tenant's audit records. Denied
/// requests are attributed by their second to the revocation in force then
/// (their aggregate records are written after the second is over).
pub(crate) fn revocation_report(tenant: &str, records: &[pb::AuditRecord]) -> anyhow::Result<String> {
    use keyward_audit::{AuditEvent, KeyState};
    use std::fmt::Write as _;

    struct Entry {
        lines: String,
        /// For a revocation: when it began and ended (restoration), and its denials.
        window: Option<(i64, Option<i64>)>,
        denied: u64,
        first_denied_second: Option<i64>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut denials: Vec<(i64, u64)> = Vec::new();
    for record in records {
        let event: AuditEvent = serde_json::from_str::<serde_json::Value>(&record.canonical_json)
            .ok()
            .and_then(|v| v.get("event").cloned())
            .and_then(|e| serde_json::from_value(e).ok())
            .with_context(|| {
                format!(
                    "record {} is not an audit event this CLI understands",
                    record.seq
                )
            })?;
        let at = record
            .time
            .as_ref()
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
        match event {
            AuditEvent::RevocationStateChanged(t) => {
                let mut lines = String::new();
                let _ = writeln!(
                    lines,
                    "- {:?} -> {:?} (binding {}), source {:?}, actor {}",
                    t.from,
                    t.to,
                    t.binding_id,
                    t.source,
                    t.actor.as_deref().unwrap_or("-")
                );
                let _ = writeln!(lines, "    reason: {}", t.reason);
                let _ = writeln!(
                    lines,
                    "    first observed: {} ms; recorded: {at} ms (seq {})",
                    t.observed_at_ms, record.seq
                );
                let window = (!matches!(t.to, KeyState::Unavailable)).then_some((at, None));
                entries.push(Entry {
                    lines,
                    window,
                    denied: 0,
                    first_denied_second: None,
                });
            }
            AuditEvent::KeysPurged {
                purged_at_ms,
                entries: n,
                last_plaintext_at_ms,
                ..
            } => {
                if let Some(entry) = entries.last_mut() {
                    let _ = writeln!(
                        entry.lines,
                        "    caches purged: {purged_at_ms} ms ({n} entries)"
                    );
                    let _ = writeln!(
                        entry.lines,
                        "    last plaintext served before: {}",
                        last_plaintext_at_ms
                            .map_or("none since the replica started".to_owned(), |t| format!(
                                "{t} ms"
                            ))
                    );
                }
            }
            AuditEvent::RevocationDenials { second, count, .. } => denials.push((second, count)),
            AuditEvent::Restored(t) => {
                for entry in entries.iter_mut() {
                    if let Some((_, end @ None)) = entry.window.as_mut() {
                        *end = Some(at);
                    }
                }
                let mut lines = String::new();
                let _ = writeln!(
                    lines,
                    "- restored {:?} -> {:?}, source {:?}, actor {}, at {at} ms: {}",
                    t.from,
                    t.to,
                    t.source,
                    t.actor.as_deref().unwrap_or("-"),
                    t.reason
                );
                entries.push(Entry {
                    lines,
                    window: None,
                    denied: 0,
                    first_denied_second: None,
                });
            }
            _ => {}
        }
    }
    for (second, count) in denials {
        let (from, to) = (second * 1000, second * 1000 + 999);
        let owner = entries.iter_mut().rev().find(|e| {
            e.window
                .is_some_and(|(start, end)| start <= to && end.is_none_or(|end| end >= from))
        });
        if let Some(entry) = owner {
            entry.denied += count;
            entry.first_denied_second.get_or_insert(second);
        }
    }
    let mut out = format!("Revocation report for tenant {tenant}\n");
    if entries.is_empty() {
        out.push_str("(no revocation recorded)\n");
    }
    for entry in entries {
        out.push_str(&entry.lines);
        if entry.window.is_some() {
            let _ = writeln!(
                out,
                "    requests denied since: {}{}",
                entry.denied,
                entry
                    .first_denied_second
                    .map(|s| format!(" (first in second {s})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(out)
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
