#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::collections::BTreeMap;

use keyward_audit::{
    AuditEvent, ChainHead, ExportHeader, ExportWriter, KeyState, Record, RevocationSource,
    SigningKey, StateTransition,
};
use serde_json::Value;

use super::*;

/// A signed export of `events` (time in ms, event), one record each, seqs from 1.
fn export(key: &SigningKey, events: Vec<(i64, AuditEvent)>) -> Vec<u8> {
    let mut head = ChainHead::GENESIS;
    let mut records = Vec::new();
    for (time_ms, event) in events {
        let r = Record::append(&head, time_ms, event).unwrap();
        head = r.head();
        records.push(r);
    }
    let last = records.last().unwrap().time_ms();
    let mut w = ExportWriter::new(Vec::new());
    w.write_header(&ExportHeader::new(1, head.seq, 1, last + 1))
        .unwrap();
    for r in &records {
        w.write_record(r).unwrap();
    }
    w.finish(key, last + 1).unwrap()
}

#[allow(clippy::too_many_arguments, reason = "a record's fields")]
fn access(
    tenant: &str,
    minute: i64,
    principal: &str,
    action: &str,
    purpose: Option<&str>,
    requests: u64,
    items: u64,
    bytes: u64,
    references: &[&str],
) -> (i64, AuditEvent) {
    (
        (minute + 61) * 1000,
        AuditEvent::AccessSummary {
            tenant: tenant.parse().unwrap(),
            minute,
            principal: principal.into(),
            action: action.into(),
            purpose: purpose.map(str::to_owned),
            requests,
            items,
            errors: requests % 3,
            bytes,
            first_ms: minute * 1000 + 5,
            last_ms: minute * 1000 + 59_000,
            references: references.iter().map(|r| (*r).to_owned()).collect(),
            references_truncated: false,
        },
    )
}

fn transition(to: KeyState, from: KeyState, at_ms: i64) -> StateTransition {
    StateTransition {
        tenant: "acme".parse().unwrap(),
        binding_id: 1,
        from,
        to,
        source: RevocationSource::Explicit,
        actor: Some("ops".into()),
        reason: "customer asked".into(),
        observed_at_ms: at_ms,
    }
}

const T0: i64 = 1_796_000_000 - 1_796_000_000 % 60;

/// Many access records of two tenants (a small deterministic generator), a revocation and a
/// restoration of acme in between.
fn scenario() -> Vec<(i64, AuditEvent)> {
    let principals = [
        "Service::\"chat-api\"",
        "Service::\"support\"",
        "User::\"eve\"",
    ];
    let purposes = [Some("model_inference"), Some("customer_support"), None];
    let actions = ["Decrypt", "Encrypt"];
    let mut events = vec![(
        T0 * 1000,
        AuditEvent::TenantCreated {
            tenant: "acme".parse().unwrap(),
            actor: None,
        },
    )];
    let mut x: u64 = 7;
    for minute in 0..30i64 {
        for (p, principal) in principals.iter().enumerate() {
            for (q, purpose) in purposes.iter().enumerate() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (x >> 33).is_multiple_of(3) {
                    continue;
                }
                let requests = 1 + (x >> 40) % 50;
                let tenant = if (p + q + minute as usize).is_multiple_of(5) {
                    "other"
                } else {
                    "acme"
                };
                events.push(access(
                    tenant,
                    T0 + minute * 60,
                    principal,
                    actions[(x >> 20) as usize % 2],
                    *purpose,
                    requests,
                    requests + (x >> 50) % 7,
                    requests * 100 + (x >> 45) % 1000,
                    &[&format!("T-{}", (x >> 36) % 4)],
                ));
            }
        }
        if minute == 10 {
            let at = (T0 + minute * 60 + 30) * 1000;
            events.push((
                at,
                AuditEvent::RevocationStateChanged(transition(
                    KeyState::Revoked,
                    KeyState::Active,
                    at,
                )),
            ));
        }
        if minute == 20 {
            let at = (T0 + minute * 60 + 30) * 1000;
            events.push((
                at,
                AuditEvent::Restored(transition(KeyState::Active, KeyState::Revoked, at)),
            ));
        }
    }
    // Records must be in time order only per the chain; keep the times non-decreasing anyway.
    events.sort_by_key(|(t, _)| *t);
    events
}

fn build(events: Vec<(i64, AuditEvent)>) -> AccessReport {
    let key = SigningKey::generate().unwrap();
    let bytes = export(&key, events);
    AccessReport::build(
        "acme",
        &bytes,
        &[key.public_key()],
        Source::File("x.jsonl".into()),
        0,
    )
    .unwrap()
}

#[test]
fn the_table_and_the_charts_are_the_sums_of_the_records() {
    let events = scenario();
    // The expected sums, computed from the events directly.
    let mut expected: BTreeMap<(String, Option<String>), [u64; 4]> = BTreeMap::new();
    let mut per_purpose: BTreeMap<Option<String>, u64> = BTreeMap::new();
    let mut records = 0;
    for (_, e) in &events {
        if let AuditEvent::AccessSummary {
            tenant,
            principal,
            purpose,
            requests,
            items,
            errors,
            bytes,
            ..
        } = e
            && tenant.as_str() == "acme"
        {
            records += 1;
            let sums = expected
                .entry((principal.clone(), purpose.clone()))
                .or_default();
            for (s, v) in sums.iter_mut().zip([requests, items, errors, bytes]) {
                *s += v;
            }
            *per_purpose.entry(purpose.clone()).or_default() += items;
        }
    }
    assert!(records > 100, "the scenario has many records: {records}");
    let report = build(events);
    let json = report.json();
    assert_eq!(json["access_records"], records);
    let rows = json["callers"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len());
    for row in rows {
        let key = (
            row["principal"].as_str().unwrap().to_owned(),
            row["purpose"].as_str().map(str::to_owned),
        );
        let sums = expected[&key];
        let got = ["requests", "items", "errors", "bytes"].map(|f| row[f].as_u64().unwrap());
        assert_eq!(got, sums, "{key:?}");
        // The per-action sums add up to the row.
        let by_action: u64 = row["by_action"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["items"].as_u64().unwrap())
            .sum();
        assert_eq!(by_action, sums[1]);
    }
    let total_items: u64 = expected.values().map(|s| s[1]).sum();
    assert_eq!(json["totals"]["items"], total_items);
    // Each purpose's series sums to its items; 30 minutes at one-minute buckets.
    let chart = &json["chart"];
    assert_eq!(chart["bucket_seconds"], 60);
    assert_eq!(chart["buckets"], 30);
    let series = chart["by_purpose"].as_array().unwrap();
    assert_eq!(series.len(), per_purpose.len());
    for s in series {
        let purpose = s["name"].as_str().map(str::to_owned);
        let points: Vec<u64> = serde_json::from_value(s["points"].clone()).unwrap();
        assert_eq!(points.len(), 30);
        assert_eq!(
            points.iter().sum::<u64>(),
            per_purpose[&purpose],
            "{purpose:?}"
        );
    }
    // The marks: the revocation, then the restoration.
    let kinds: Vec<&str> = json["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["revoked", "restored"]);
    // The page shows the same numbers as the JSON.
    let page = html::page(&report);
    for row in rows {
        let cell = format!(
            "<td class=\"n\" data-col=\"items\">{}</td>",
            row["items"].as_u64().unwrap()
        );
        assert!(page.contains(&cell), "{cell}");
    }
    assert_eq!(page.matches("<g class=\"series\"").count(), 3 + 3);
    assert_eq!(page.matches("<g class=\"mark\"").count(), 2 * 2);
}

#[test]
fn caller_chosen_text_is_escaped() {
    let nasty = "<script>alert(\"x\")</script>";
    let principal = "Service::\"a'b<img src=x onerror=alert(1)>\"";
    let report = build(vec![
        (
            T0 * 1000,
            AuditEvent::TenantCreated {
                tenant: "acme".parse().unwrap(),
                actor: None,
            },
        ),
        access(
            "acme",
            T0,
            principal,
            "Decrypt",
            Some("legal_hold"),
            1,
            1,
            3,
            &[nasty, "&amp;"],
        ),
    ]);
    let page = html::page(&report);
    assert!(!page.contains("<script"), "a reference became markup");
    assert!(!page.contains("<img"), "a principal became markup");
    assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
    assert!(page.contains("&amp;amp;"));
    assert!(page.contains("a&#39;b&lt;img src=x onerror=alert(1)&gt;"));
    // The only markup in the page is the report's own.
    assert_eq!(page.matches("<svg").count(), 2);
}

#[test]
fn an_export_that_does_not_verify_is_refused() {
    let key = SigningKey::generate().unwrap();
    let bytes = export(&key, scenario());
    let tampered =
        String::from_utf8(bytes.clone())
            .unwrap()
            .replacen("\"requests\":", "\"requests\":1", 1);
    let err = AccessReport::build(
        "acme",
        tampered.as_bytes(),
        &[key.public_key()],
        Source::File("x".into()),
        0,
    )
    .unwrap_err();
    assert_eq!(exit::Exit::of(&err), exit::Exit::Problems, "{err:#}");
    assert!(format!("{err:#}").contains("does not verify"), "{err:#}");
    // Another key: refused too.
    let other = SigningKey::generate().unwrap();
    assert!(
        AccessReport::build(
            "acme",
            &bytes,
            &[other.public_key()],
            Source::File("x".into()),
            0
        )
        .is_err()
    );
    // The right key, an unknown tenant: an error that says so.
    let err = AccessReport::build(
        "nobody",
        &bytes,
        &[key.public_key()],
        Source::File("x".into()),
        0,
    )
    .unwrap_err();
    assert!(
        format!("{err}").contains("names tenant \"nobody\""),
        "{err}"
    );
}

#[test]
fn the_checkpoint_relied_on_is_the_final_one() {
    let report = build(scenario());
    assert_eq!(report.checkpoint.seq, report.verified.last_seq);
    assert_eq!(
        report.checkpoint.key_id,
        report.verified.signing_keys_seen[0].key_id()
    );
    assert!(report.checkpoint.public_key.is_some());
    let json: Value = report.json();
    assert_eq!(
        json["verification"]["checkpoint"]["seq"],
        report.verified.last_seq
    );
}

#[test]
fn a_long_range_is_charted_in_wider_buckets() {
    // Three days of minutes: too many one-minute buckets, so 15-minute ones.
    let report = build(vec![
        (
            T0 * 1000,
            AuditEvent::TenantCreated {
                tenant: "acme".parse().unwrap(),
                actor: None,
            },
        ),
        access("acme", T0, "A", "Decrypt", None, 1, 1, 1, &[]),
        access("acme", T0 + 3 * 86_400, "A", "Decrypt", None, 2, 2, 2, &[]),
    ]);
    let chart = report.chart.unwrap();
    assert_eq!(chart.bucket_seconds, 900);
    assert!(chart.buckets as i64 <= MAX_BUCKETS);
    assert_eq!(chart.by_purpose[0].points.iter().sum::<u64>(), 3);
    assert_eq!(chart.by_purpose[0].points[0], 1);
    assert_eq!(*chart.by_purpose[0].points.last().unwrap(), 2);
}

#[test]
fn the_y_axis_is_round() {
    assert_eq!(chart::nice_scale(0), (1, 1));
    assert_eq!(chart::nice_scale(5), (5, 1));
    assert_eq!(chart::nice_scale(7), (8, 2));
    assert_eq!(chart::nice_scale(23), (25, 5));
    assert_eq!(chart::nice_scale(1234), (1500, 500));
    assert_eq!(chart::nice_scale(u64::MAX).0, u64::MAX);
}
