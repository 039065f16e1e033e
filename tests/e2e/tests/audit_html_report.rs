//! `keyward audit report --html --json` through the real binary, the page opened in a real
//! headless Chromium (tests/report/inspect_page.py, over the DevTools protocol): the page
//! renders without a console error, the purpose chart has one series per purpose with one point
//! per bucket and a legend, the key timeline's marks are drawn, the table's numbers are the sums
//! of the records, a reference `<script>` renders as text, and the verification names the
//! checkpoint it relies on. The check fails on a page whose chart lost a series.
//!
//! The export is built here with `Record::append` and a signed checkpoint (the server writes
//! `access_summary` records once the data path counts them; the format is the same).
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyward_audit::{
    AuditEvent, ChainHead, DekRetireReason, ExportHeader, ExportWriter, KeyState, Record,
    RevocationSource, SigningKey, StateTransition,
};
use keyward_envelope::KeyId;
use serde_json::Value;
use support::run_keyward;

const MINUTE0: i64 = 1_796_040_000; // 2026-11-30T12:00:00Z, a whole minute
const MINUTES: i64 = 45;
const NASTY_REFERENCE: &str = "<script>alert(\"owned\")</script>";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tenant(t: &str) -> keyward_envelope::TenantId {
    t.parse().unwrap()
}

fn transition(to: KeyState, from: KeyState, at_ms: i64) -> StateTransition {
    StateTransition {
        tenant: tenant("acme"),
        binding_id: 1,
        from,
        to,
        source: RevocationSource::Explicit,
        actor: Some("Operator::\"oncall\"".into()),
        reason: "customer pulled the key".into(),
        observed_at_ms: at_ms,
    }
}

/// Two callers and two purposes (and calls without one) reading acme's data for 45 minutes,
/// another tenant's accesses mixed in, and acme's key revoked, restored, a scope shredded and
/// the key re-keyed along the way. Events in time order.
fn scenario() -> Vec<(i64, AuditEvent)> {
    let callers = ["Service::\"chat-api\"", "Service::\"support-console\""];
    let purposes = [Some("model_inference"), Some("customer_support"), None];
    let mut events = vec![(
        MINUTE0 * 1000 - 5_000,
        AuditEvent::TenantCreated {
            tenant: tenant("acme"),
            actor: None,
        },
    )];
    let mut x: u64 = 0x5eed;
    for m in 0..MINUTES {
        let minute = MINUTE0 + m * 60;
        let written = (minute + 61) * 1000;
        for (c, caller) in callers.iter().enumerate() {
            for purpose in purposes {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Not every caller uses every purpose every minute; the support console never
                // calls without a purpose.
                if (x >> 33).is_multiple_of(4) || (c == 1 && purpose.is_none()) {
                    continue;
                }
                let requests = 1 + (x >> 40) % 40;
                let references = match (purpose, m) {
                    (Some("customer_support"), 7) => vec![NASTY_REFERENCE.to_owned()],
                    (Some("customer_support"), _) => vec![format!("CASE-{}", (x >> 50) % 6)],
                    _ => Vec::new(),
                };
                for (t, action) in [("acme", "Decrypt"), ("globex", "Encrypt")] {
                    if t == "globex" && (x >> 20).is_multiple_of(2) {
                        continue;
                    }
                    events.push((
                        written,
                        AuditEvent::AccessSummary {
                            tenant: tenant(t),
                            minute,
                            principal: (*caller).to_owned(),
                            action: action.to_owned(),
                            purpose: purpose.map(str::to_owned),
                            requests,
                            items: requests + (x >> 44) % 5,
                            errors: (x >> 24) % 2,
                            bytes: requests * 1000 + (x >> 28) % 999,
                            first_ms: minute * 1000 + 100,
                            last_ms: minute * 1000 + 59_900,
                            references: references.clone(),
                            references_truncated: false,
                        },
                    ));
                }
            }
        }
        let at = (minute + 30) * 1000;
        match m {
            12 => events.push((
                at,
                AuditEvent::RevocationStateChanged(transition(
                    KeyState::Revoked,
                    KeyState::Active,
                    at,
                )),
            )),
            20 => events.push((
                at,
                AuditEvent::Restored(transition(KeyState::Active, KeyState::Revoked, at)),
            )),
            28 => {
                let dek = KeyId::from_bytes([7; 16]);
                events.push((
                    at,
                    AuditEvent::DekRetired {
                        tenant: tenant("acme"),
                        scope_hmac: "hmac-sha256:0f0f".into(),
                        dek_id: dek,
                        reason: DekRetireReason::Shredded,
                    },
                ));
                events.push((
                    at,
                    AuditEvent::ScopeShredded {
                        tenant: tenant("acme"),
                        scope_hmac: "hmac-sha256:0f0f".into(),
                        deks: 1,
                        actor: "Service::\"retention\"".into(),
                        reason: "conversation deleted".into(),
                        retention_cutoff_ms: None,
                    },
                ));
            }
            36 => events.push((
                at,
                AuditEvent::KekBindingRetired {
                    tenant: tenant("acme"),
                    binding_id: 1,
                    provider: "local".into(),
                    key_ref: "local:acme-old".into(),
                    to_binding_id: 2,
                    tenant_keys: 1,
                    deks: 3,
                    actor: "Admin::\"sec\"".into(),
                },
            )),
            _ => {}
        }
    }
    events.sort_by_key(|(t, _)| *t);
    events
}

/// A signed export of `events`, with a checkpoint in the middle and the final one.
fn export(key: &SigningKey, events: Vec<(i64, AuditEvent)>) -> Vec<u8> {
    let mut head = ChainHead::GENESIS;
    let mut records = Vec::new();
    for (time_ms, event) in events {
        let r = Record::append(&head, time_ms, event).unwrap();
        head = r.head();
        records.push(r);
    }
    let last_time = records.last().unwrap().time_ms();
    let mut w = ExportWriter::new(Vec::new());
    w.write_header(&ExportHeader::new(1, head.seq, 2, last_time + 1000))
        .unwrap();
    let middle = records.len() / 2;
    for (i, r) in records.iter().enumerate() {
        w.write_record(r).unwrap();
        if i == middle {
            w.write_checkpoint(&key.sign_checkpoint(&r.head(), r.time_ms()).unwrap())
                .unwrap();
        }
    }
    w.finish(key, last_time + 1000).unwrap()
}

/// What the report must show, computed from the events directly.
struct Expected {
    /// (principal, purpose or "") → [requests, items, errors, bytes].
    rows: BTreeMap<(String, String), [u64; 4]>,
    /// purpose name as in the legend → items.
    purposes: BTreeMap<String, u64>,
    buckets: usize,
    marks: Vec<&'static str>,
    last_seq: u64,
    key_id: String,
}

fn expected(events: &[(i64, AuditEvent)], key: &SigningKey) -> Expected {
    let mut rows: BTreeMap<(String, String), [u64; 4]> = BTreeMap::new();
    let mut purposes = BTreeMap::new();
    for (_, e) in events {
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
            let sums = rows
                .entry((principal.clone(), purpose.clone().unwrap_or_default()))
                .or_default();
            for (s, v) in sums.iter_mut().zip([requests, items, errors, bytes]) {
                *s += v;
            }
            *purposes
                .entry(
                    purpose
                        .clone()
                        .unwrap_or_else(|| "(no purpose given)".into()),
                )
                .or_default() += items;
        }
    }
    Expected {
        rows,
        purposes,
        // One-minute buckets over the 45 minutes (every mark falls inside them).
        buckets: MINUTES as usize,
        marks: vec!["revoked", "restored", "shredded", "rekeyed"],
        last_seq: events.len() as u64,
        key_id: key.public_key().key_id(),
    }
}

/// Opens `page` in headless Chromium; what it saw, as JSON.
fn inspect(page: &Path) -> Value {
    let python = std::env::var("KEYWARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let child = Command::new(&python)
        .arg(repo_root().join("tests/report/inspect_page.py"))
        .arg(page)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(
        out.status.success(),
        "inspect_page.py failed ({}); scripts/test installs Debian's chromium:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every difference between what the browser shows and what is expected.
fn problems(facts: &Value, want: &Expected) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let console = facts["console"].as_array().unwrap();
    check(console.is_empty(), format!("console messages: {console:?}"));
    check(
        facts["scripts"] == 0,
        "the page has a script element".into(),
    );
    check(
        facts["title"] == "Keyward access report: acme",
        format!("title {}", facts["title"]),
    );
    let chart = &facts["charts"]["purpose"];
    if chart.is_null() {
        return vec!["no purpose chart".into()];
    }
    check(
        chart["width"].as_f64().unwrap() > 300.0,
        format!("chart not laid out: {chart}"),
    );
    let series: BTreeMap<String, (u64, f64)> = chart["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                (
                    s["points"].as_u64().unwrap(),
                    s["drawn_width"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    let names: Vec<&String> = series.keys().collect();
    let want_names: Vec<&String> = want.purposes.keys().collect();
    check(
        names == want_names,
        format!("series {names:?}, expected {want_names:?}"),
    );
    for (name, (points, width)) in &series {
        check(
            *points == want.buckets as u64,
            format!("series {name}: {points} points, expected {}", want.buckets),
        );
        check(
            *width > 100.0,
            format!("series {name} is not drawn ({width})"),
        );
    }
    let legend: Vec<&str> = chart["legend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut sorted = legend.clone();
    sorted.sort();
    check(
        sorted == want_names.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        format!("legend {legend:?}"),
    );
    let marks: Vec<&str> = chart["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    check(marks == want.marks, format!("marks {marks:?}"));
    let xs: Vec<f64> = chart["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["x"].as_f64().unwrap())
        .collect();
    check(
        xs.windows(2).all(|w| w[0] < w[1]),
        format!("marks not in time order on the axis: {xs:?}"),
    );
    check(
        facts["charts"]["caller"]["series"].as_array().map(Vec::len) == Some(2),
        "the caller chart does not have 2 series".into(),
    );
    // The table: every (caller, purpose) with the sums of the records.
    let rows = facts["rows"].as_array().unwrap();
    check(
        rows.len() == want.rows.len(),
        format!("{} rows, expected {}", rows.len(), want.rows.len()),
    );
    for row in rows {
        let purpose = row["purpose"].as_str().unwrap();
        let key = (
            row["principal"].as_str().unwrap().to_owned(),
            if purpose == "(no purpose given)" {
                String::new()
            } else {
                purpose.to_owned()
            },
        );
        let Some(sums) = want.rows.get(&key) else {
            check(false, format!("unexpected row {key:?}"));
            continue;
        };
        let got = ["requests", "items", "errors", "bytes"].map(|c| u(&row[c]));
        check(
            got == *sums,
            format!("row {key:?}: {got:?}, expected {sums:?}"),
        );
    }
    let total_items: u64 = want.rows.values().map(|s| s[1]).sum();
    check(
        u(&facts["totals"][0]["items"]) == total_items,
        format!("total items {}", facts["totals"][0]["items"]),
    );
    let support = rows
        .iter()
        .find(|r| r["purpose"] == "customer_support")
        .unwrap();
    check(
        support["references"]
            .as_str()
            .unwrap()
            .contains(NASTY_REFERENCE),
        format!(
            "the reference {NASTY_REFERENCE} is not shown as text: {}",
            support["references"]
        ),
    );
    let v = &facts["verification"];
    check(v["ok"] == "true", "not verified".into());
    check(
        v["checkpoint_seq"].as_u64() == Some(want.last_seq),
        format!("checkpoint seq {}", v["checkpoint_seq"]),
    );
    check(
        v["checkpoint_key_id"].as_str() == Some(want.key_id.as_str()),
        format!("checkpoint key {}", v["checkpoint_key_id"]),
    );
    let timeline: Vec<&str> = facts["timeline_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    check(
        timeline == want.marks,
        format!("timeline rows {timeline:?}"),
    );
    problems
}

#[test]
fn the_html_report_renders_in_chromium_with_the_records_sums() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let events = scenario();
    let want = expected(&events, &key);
    assert_eq!(want.purposes.len(), 3);
    let export_path = dir.path().join("export.jsonl");
    std::fs::write(&export_path, export(&key, events)).unwrap();
    let (html, json) = (dir.path().join("acme.html"), dir.path().join("acme.json"));
    let public_key = key.public_key().to_text();
    let (code, stdout, stderr) = run_keyward(
        None,
        &[],
        &[
            "audit",
            "report",
            "--tenant",
            "acme",
            "--input",
            export_path.to_str().unwrap(),
            "--public-key",
            &public_key,
            "--html",
            html.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, Some(0), "{stderr}");
    let stdout = String::from_utf8(stdout).unwrap();
    assert!(
        stdout.contains(&format!("wrote {}", html.display())),
        "{stdout}"
    );

    let facts = inspect(&html);
    let found = problems(&facts, &want);
    assert!(found.is_empty(), "{found:#?}\n{facts:#}");

    // The JSON has the same data.
    let data: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(data["report"], "keyward-access-report");
    assert_eq!(data["chart"]["buckets"], want.buckets);
    for row in data["callers"].as_array().unwrap() {
        let key = (
            row["principal"].as_str().unwrap().to_owned(),
            row["purpose"].as_str().unwrap_or("").to_owned(),
        );
        let got = ["requests", "items", "errors", "bytes"].map(|c| row[c].as_u64().unwrap());
        assert_eq!(got, want.rows[&key], "{key:?}");
    }
    assert_eq!(data["verification"]["checkpoint"]["seq"], want.last_seq);

    // The check fails on a page whose purpose chart lost a series.
    let page = std::fs::read_to_string(&html).unwrap();
    let start = page
        .find("<g class=\"series\" data-name=\"customer_support\">")
        .unwrap();
    let end = start + page[start..].find("</g>").unwrap() + "</g>".len();
    let mutated = dir.path().join("mutated.html");
    std::fs::write(&mutated, format!("{}{}", &page[..start], &page[end..])).unwrap();
    let found = problems(&inspect(&mutated), &want);
    assert!(
        found.iter().any(|p| p.starts_with("series [")),
        "a missing series went unnoticed: {found:?}"
    );
}

#[test]
fn an_export_that_does_not_verify_gets_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let bytes = String::from_utf8(export(&key, scenario())).unwrap();
    // Another caller's purpose, edited into a record.
    let tampered = bytes.replacen("customer_support", "model_inference", 1);
    let export_path = dir.path().join("export.jsonl");
    std::fs::write(&export_path, tampered).unwrap();
    let html = dir.path().join("acme.html");
    let (code, _, stderr) = run_keyward(
        None,
        &[],
        &[
            "audit",
            "report",
            "--tenant",
            "acme",
            "--input",
            export_path.to_str().unwrap(),
            "--public-key",
            &key.public_key().to_text(),
            "--html",
            html.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not verify"), "{stderr}");
    assert!(!html.exists());
    // --html without a key to verify with is a usage error.
    let (code, _, stderr) = run_keyward(
        None,
        &[],
        &["audit", "report", "--tenant", "acme", "--html", "x.html"],
        b"",
    );
    assert_eq!(code, Some(2), "{stderr}");
}
