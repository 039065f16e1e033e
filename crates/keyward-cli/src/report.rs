//! The report of `keyward audit report`: the records read from their JSON, and the
//! tenant's revocation timeline and crypto-shredding ([`keyward_audit::timeline`], built from them) as text and as
//! JSON. The rendering stays here: its times are written by the RFC 3339 formatter the server's
//! error messages share (`keyward_server::time`), which keyward-audit, below the server, cannot
//! use.

use std::fmt::Write as _;

use anyhow::Context as _;
use keyward_audit::timeline::{
    DeniedSecond, Entry, Item, KeyMove, Purge, RecordedTransition, Retirement, Revocation, Shred,
    Timeline,
};
use keyward_audit::{AuditEvent, KeyState, StateTransition};
use serde_json::{Value, json};

/// A record from its JSON: the canonical bytes the server lists (`{"event","prev_hash","seq",
/// "time_ms"}`) or an export's record line (the same plus `hash` and `type`). `None` for an
/// event type this build does not know (a newer server's); an error for a known type that does
/// not parse. Only what the timeline reads is checked, not the hashes or the canonical form as
/// [`keyward_audit::Record`] does: an export is verified before it is read, and the live
/// server's listing is read as it comes.
pub(crate) fn entry_from_json(text: &str) -> anyhow::Result<Option<Entry>> {
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
    Ok(Some(Entry {
        seq,
        time_ms,
        event,
    }))
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

/// The report as text, times in UTC (RFC 3339 with milliseconds).
pub(crate) fn text(report: &Timeline) -> String {
    let mut out = format!("Revocation report for tenant {}\n", report.tenant);
    if report.records == 0 {
        let _ = writeln!(
            out,
            "None of the {} audit records about the tenant ({}) is about a revocation.",
            report.all_records,
            seq_range(report.first_seq, report.last_seq)
        );
    } else {
        let _ = writeln!(
            out,
            "From the tenant's {} revocation records (state changes, purges, denials), {}. \
             All times are UTC (RFC 3339).",
            report.records,
            seq_range(report.first_seq, report.last_seq)
        );
    }
    if report.revocations().next().is_none() {
        out.push_str("\n(no revocation recorded)\n");
    }
    let mut number = 0;
    for item in &report.items {
        out.push('\n');
        match item {
            Item::Revocation(r) => {
                number += 1;
                write_revocation(&mut out, number, r);
            }
            Item::Change { recorded, restored } => {
                let t = &recorded.transition;
                let what = match (restored, t.to) {
                    (true, _) => "Restored",
                    (false, KeyState::Unavailable) => {
                        "KMS unavailable (not a revocation: data stays readable once it answers)"
                    }
                    (false, _) => "State change",
                };
                let _ = writeln!(
                    out,
                    "{what} (seq {}): binding {} {} -> {} at {}, {}: {}",
                    recorded.seq,
                    t.binding_id,
                    state(t.from),
                    state(t.to),
                    utc_ms(recorded.recorded_ms),
                    by(t),
                    t.reason
                );
            }
            _ => {}
        }
    }
    if !report.unattached_purges.is_empty() {
        out.push_str("\nPurges before any revocation in these records:\n");
        for p in &report.unattached_purges {
            write_purge(&mut out, p, None);
        }
    }
    if report.total_denied > 0 {
        let outside = report.denied_outside();
        let _ = write!(
            out,
            "\nRequests denied in all: {} ({} during the revocations above",
            report.total_denied,
            report.total_denied - outside
        );
        if outside > 0 {
            let _ = write!(
                out,
                "; outside any revocation in these records: {}",
                seconds(&report.unattributed_denials)
            );
        }
        out.push_str(").\n");
    }
    write_shreds(&mut out, &report.shreds);
    write_rekeys(&mut out, &report.rekeys, &report.moves_in_progress);
    out
}

/// The older customer keys retired by a re-key, and the tenant keys moved off them.
fn write_rekeys(out: &mut String, rekeys: &[Retirement], in_progress: &[KeyMove]) {
    if rekeys.is_empty() && in_progress.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nRe-keying: {} older key{} retired (no data depends on {} since):",
        rekeys.len(),
        if rekeys.len() == 1 { "" } else { "s" },
        if rekeys.len() == 1 { "it" } else { "them" },
    );
    for r in rekeys {
        let moved: Vec<String> = r
            .moves
            .iter()
            .map(|m| format!("{} (seq {})", m.tenant_key_id, m.seq))
            .collect();
        let _ = writeln!(
            out,
            "- seq {} at {}: binding {} ({} {}) retired by {}; binding {} now wraps {} tenant key{} and {} data key{}; moved off it in these records: {}",
            r.seq,
            utc_ms(r.recorded_ms),
            r.binding_id,
            r.provider,
            r.key_ref,
            r.actor,
            r.to_binding_id,
            r.tenant_keys,
            if r.tenant_keys == 1 { "" } else { "s" },
            r.deks,
            if r.deks == 1 { "" } else { "s" },
            if moved.is_empty() {
                "none".to_owned()
            } else {
                moved.join(", ")
            },
        );
    }
    for m in in_progress {
        let _ = writeln!(
            out,
            "- seq {} at {}: tenant key {} moved from binding {} to {} by {} (its old binding is not retired in these records: the re-key is not finished)",
            m.seq,
            utc_ms(m.recorded_ms),
            m.tenant_key_id,
            m.from_binding_id,
            m.to_binding_id,
            m.actor,
        );
    }
}

/// The scopes crypto-shredded, as the signed log proves them: the `scope_shredded` record and
/// the `dek_retired` (shredded) records of its transaction.
fn write_shreds(out: &mut String, shreds: &[Shred]) {
    if shreds.is_empty() {
        return;
    }
    let deks: u64 = shreds.iter().map(|s| s.deks).sum();
    let _ = writeln!(
        out,
        "\nCrypto-shredding: {} scope{} shredded, {deks} data key{} destroyed \
         (scopes are named by their HMAC, as in the log):",
        shreds.len(),
        if shreds.len() == 1 { "" } else { "s" },
        if deks == 1 { "" } else { "s" },
    );
    for s in shreds {
        let how = match s.retention_cutoff_ms {
            Some(cutoff) => format!("retention (data written before {})", utc_ms(cutoff)),
            None => "ShredScope".to_owned(),
        };
        let check = if usize::try_from(s.deks).ok() == Some(s.dek_ids.len()) {
            format!(
                "{} dek_retired (shredded) record{} {} it",
                s.dek_ids.len(),
                if s.dek_ids.len() == 1 { "" } else { "s" },
                if s.dek_ids.len() == 1 {
                    "matches"
                } else {
                    "match"
                }
            )
        } else {
            format!(
                "WARNING: {} dek_retired (shredded) records in these records for {} data keys",
                s.dek_ids.len(),
                s.deks
            )
        };
        let _ = writeln!(
            out,
            "- seq {} at {}: scope {}: {} data key{} destroyed ({how}) by {}: {}",
            s.seq,
            utc_ms(s.recorded_ms),
            s.scope_hmac,
            s.deks,
            if s.deks == 1 { "" } else { "s" },
            s.actor,
            s.reason,
        );
        if !s.dek_ids.is_empty() {
            // An envelope's DEK id (EncryptResponse.dek_id, or its header) finds its shred here.
            const SHOWN: usize = 8;
            let mut ids = s
                .dek_ids
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if s.dek_ids.len() > SHOWN {
                let _ = write!(
                    ids,
                    ", … ({} more in --format json)",
                    s.dek_ids.len() - SHOWN
                );
            }
            let _ = writeln!(out, "  data keys: {ids}");
        }
        let _ = writeln!(out, "  {check}");
    }
}

/// The report as JSON, with the raw values (Unix milliseconds, seconds, seqs).
pub(crate) fn json(report: &Timeline) -> Value {
    let items: Vec<Value> = report
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Revocation(r) => Some(json!({
                "kind": "revocation",
                "seq": r.recorded.seq,
                "recorded_at_ms": r.recorded.recorded_ms,
                "transition": r.recorded.transition,
                "changes": r.changes.iter().map(recorded_json).collect::<Vec<_>>(),
                "purges": r.purges.iter().map(|p| purge_json(p, Some(r.recorded.recorded_ms))).collect::<Vec<_>>(),
                "plaintext_served_after_revocation": !r.served_after().is_empty(),
                "restored": r.restored.as_ref().map(recorded_json),
                "denied": r.denied(),
                "denials": denials_json(&r.denials),
            })),
            Item::Change { recorded, restored } => Some(json!({
                "kind": if *restored { "restored" } else { "state_change" },
                "seq": recorded.seq,
                "recorded_at_ms": recorded.recorded_ms,
                "transition": recorded.transition,
            })),
            _ => None,
        })
        .collect();
    json!({
        "tenant": report.tenant,
        "records": report.records,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "items": items,
        "unattached_purges": report.unattached_purges.iter().map(|p| purge_json(p, None)).collect::<Vec<_>>(),
        "denied_total": report.total_denied,
        "denials_outside_revocations": denials_json(&report.unattributed_denials),
        "shreds": report.shreds.iter().map(|s| json!({
            "seq": s.seq,
            "recorded_at_ms": s.recorded_ms,
            "scope_hmac": s.scope_hmac,
            "deks": s.deks,
            "dek_ids": s.dek_ids,
            "actor": s.actor,
            "reason": s.reason,
            "retention_cutoff_ms": s.retention_cutoff_ms,
        })).collect::<Vec<_>>(),
        "rekeys": report.rekeys.iter().map(|r| json!({
            "seq": r.seq,
            "recorded_at_ms": r.recorded_ms,
            "binding_id": r.binding_id,
            "provider": r.provider,
            "key_ref": r.key_ref,
            "to_binding_id": r.to_binding_id,
            "tenant_keys": r.tenant_keys,
            "deks": r.deks,
            "actor": r.actor,
            "moves": r.moves.iter().map(move_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "moves_in_progress": report.moves_in_progress.iter().map(move_json).collect::<Vec<_>>(),
    })
}

fn move_json(m: &KeyMove) -> Value {
    json!({
        "seq": m.seq,
        "recorded_at_ms": m.recorded_ms,
        "tenant_key_id": m.tenant_key_id,
        "from_binding_id": m.from_binding_id,
        "to_binding_id": m.to_binding_id,
        "actor": m.actor,
    })
}

fn recorded_json(r: &RecordedTransition) -> Value {
    json!({"seq": r.seq, "recorded_at_ms": r.recorded_ms, "transition": r.transition})
}

fn purge_json(p: &Purge, revoked_ms: Option<i64>) -> Value {
    json!({
        "seq": p.seq,
        "replica": p.replica,
        "purged_at_ms": p.purged_at_ms,
        "entries": p.entries,
        "last_plaintext_at_ms": p.last_plaintext_at_ms,
        "served_after_revocation": revoked_ms.is_some_and(|r| p.served_after(r)),
    })
}

fn denials_json(denials: &[DeniedSecond]) -> Vec<Value> {
    denials
        .iter()
        .map(|d| json!({"second": d.second, "count": d.count}))
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

/// The replica that wrote a purge record, in words: by its id, or by the record's seq for
/// records written before purge records named their replica.
fn who(p: &Purge) -> String {
    match &p.replica {
        Some(replica) => format!("replica {replica:?}, seq {}", p.seq),
        None => format!("the replica that wrote seq {}", p.seq),
    }
}

/// `3 requests in 2 seconds, first 2026-…Z, last 2026-…Z`.
fn seconds(denials: &[DeniedSecond]) -> String {
    let total: u64 = denials.iter().map(|d| d.count).sum();
    let first = denials.iter().map(|d| d.second).min();
    let last = denials.iter().map(|d| d.second).max();
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
        who(p),
        p.entries,
        utc_ms(p.purged_at_ms)
    );
}

fn write_revocation(out: &mut String, number: usize, r: &Revocation) {
    let t = &r.recorded.transition;
    let _ = writeln!(
        out,
        "Revocation {number} (seq {}): binding {} {} -> {}, {}",
        r.recorded.seq,
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
        utc_ms(r.recorded.recorded_ms)
    );
    for change in &r.changes {
        let (seq, t) = (change.seq, &change.transition);
        let _ = writeln!(
            out,
            "  then (seq {seq}):   {} -> {} at {}, {}: {}",
            state(t.from),
            state(t.to),
            utc_ms(change.recorded_ms),
            by(t),
            t.reason
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
        write_purge(out, p, Some(r.recorded.recorded_ms));
    }
    let after = r.served_after();
    if after.is_empty() {
        out.push_str("  answer:          no plaintext served after the revocation was recorded\n");
    } else {
        let times: Vec<String> = after
            .iter()
            .filter_map(|p| {
                p.last_plaintext_at_ms
                    .map(|t| format!("{} ({})", utc_ms(t), who(p)))
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
        Some(restored) => {
            let t = &restored.transition;
            let _ = writeln!(
                out,
                "  restored at:     {} (seq {}), {}: {}",
                utc_ms(restored.recorded_ms),
                restored.seq,
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
