//! A per-tenant audit export through the real binary (docs/audit-format.md §6.2,
//! docs/auditor-guide.md): two tenants with activity, `keyward audit export --tenant acme
//! --from … --to …`, then `keyward audit verify` states what it proved, and the file holds
//! nothing of the other tenant.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use support::{Server, context};

const ACME_SCOPE: &str = "acme-user-1@example.com";
const GLOBEX_SCOPE: &str = "globex-user-9@example.com";

async fn activity(server: &Server) {
    for (tenant, scope) in [("acme", ACME_SCOPE), ("globex", GLOBEX_SCOPE)] {
        server.onboard(tenant).await;
        let mut crypto = server.crypto().await;
        crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: tenant.into(),
                plaintext: b"a prompt".to_vec(),
                encryption_context: context(&[]),
                scope: scope.into(),
                justification: None,
            })
            .await
            .unwrap();
    }
}

/// Every string value in a tenant's records (tenant id, scope HMACs, key references, actors,
/// salts…) but the event type names, as listed by the server.
async fn values_of(server: &Server, tenant: &str) -> Vec<String> {
    let mut audit = AuditServiceClient::new(server.channel().await);
    let page = audit
        .list_events(pb::ListAuditEventsRequest {
            tenant_id: tenant.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.records.len() >= 3, "{tenant} has activity");
    let mut values = Vec::new();
    for record in page.records {
        let mut body: serde_json::Value = serde_json::from_str(&record.canonical_json).unwrap();
        body["event"]["type"] = serde_json::Value::Null;
        collect_strings(&body["event"], &mut values);
        values.push(body["salt"].as_str().unwrap().to_owned());
    }
    values.sort();
    values.dedup();
    values
}

/// The values of globex's records that are not also in acme's (the same caller, provider or
/// outcome may appear in both, and then says nothing about globex).
async fn globex_values(server: &Server) -> Vec<String> {
    let acme = values_of(server, "acme").await;
    let mut globex = values_of(server, "globex").await;
    globex.retain(|v| !acme.contains(v));
    globex
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Object(m) => m.values().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[test]
fn a_per_tenant_export_verifies_states_what_it_proves_and_holds_nothing_of_other_tenants() {
    let server = Server::start(&[("KEYWARD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1")]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(activity(&server));
    let globex = runtime.block_on(globex_values(&server));
    assert!(
        globex.iter().any(|v| v.starts_with("hmac-sha256:")),
        "globex's scope HMAC is among the values checked: {globex:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("acme.jsonl");
    let (ok, _, err) = server.cli(
        &[
            "audit",
            "export",
            "--tenant",
            "acme",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01T00:00:00Z",
            "--output",
            export.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&export).unwrap();
    // Nothing of globex: not its id, not a value of any of its events.
    assert!(!text.contains("globex"), "{text}");
    for value in &globex {
        assert!(
            !text.contains(value.as_str()),
            "{value:?} of globex in acme's export"
        );
    }
    assert!(!text.contains(GLOBEX_SCOPE) && !text.contains(ACME_SCOPE));
    // globex's records are there, redacted.
    assert!(text.contains("\"type\":\"redacted\""), "{text}");
    assert!(text.contains("\"tenant\":\"acme\""), "{text}");

    let (ok, key, err) = server.cli(&["audit", "public-key"], b"");
    assert!(ok, "{err}");
    let key = String::from_utf8(key).unwrap().trim().to_owned();
    let key_id = keyward_audit::PublicKey::from_text(&key).unwrap().key_id();
    let verify = |path: &std::path::Path, json: bool| {
        let mut args = vec![
            "audit",
            "verify",
            path.to_str().unwrap(),
            "--public-key",
            &key,
        ];
        if json {
            args.extend(["--format", "json"]);
        }
        server.cli(&args, b"")
    };
    let (ok, out, err) = verify(&export, false);
    assert!(ok, "{err}");
    let out = String::from_utf8(out).unwrap();
    let full = text
        .lines()
        .filter(|l| l.contains("\"type\":\"record\""))
        .count();
    let last_seq = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .unwrap();
    let statement = format!(
        "{full} records of tenant acme between 2000-01-01T00:00:00.000Z and 2100-01-01T00:00:00.000Z; chain intact from seq 1 to seq {last_seq}; signed by key {key_id} at 20"
    );
    assert!(out.contains(&statement), "{statement}\nnot in\n{out}");
    assert!(
        out.contains("confirmed by the tenant's own records"),
        "{out}"
    );

    let (ok, json, err) = verify(&export, true);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["tenant"]["tenant"], "acme");
    assert_eq!(json["tenant"]["records_in_range"], full as u64);
    assert!(json["tenant"]["redacted"].as_u64().unwrap() >= 3, "{json}");
    assert!(
        json["tenant"]["statement"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{full} records of tenant acme")),
        "{json}"
    );

    // One of acme's records hidden as a redacted line: named, at its line.
    let lines: Vec<&str> = text.lines().collect();
    let (n, line) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains("\"type\":\"dek_created\""))
        .unwrap();
    let record = keyward_audit::Record::from_canonical_json(line).unwrap();
    let mut tampered: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    tampered[n] = record.to_redacted_json().unwrap();
    let path = dir.path().join("withheld.jsonl");
    std::fs::write(&path, tampered.join("\n") + "\n").unwrap();
    let (ok, _, err) = verify(&path, false);
    assert!(!ok);
    assert!(
        err.contains(&format!("line {} (seq {})", n + 1, record.seq()))
            && err.contains("record of tenant acme withheld"),
        "{err}"
    );

    // A range that ends before later activity: the export ends with the first record after the
    // range, which proves nothing of the range was cut at its end.
    let cut = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["time_ms"].as_i64())
        .max()
        .unwrap()
        + 1;
    let acme_before_cut = full;
    let mut n = 0;
    loop {
        // Activity of another tenant until a record is appended after `cut` (times are ms).
        n += 1;
        runtime.block_on(server.onboard(&format!("initech-{n}")));
        let head = runtime.block_on(async {
            let mut audit = AuditServiceClient::new(server.channel().await);
            audit
                .list_events(pb::ListAuditEventsRequest {
                    tenant_id: format!("initech-{n}"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .records
        });
        if head.iter().any(|r| {
            r.time
                .is_some_and(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000 >= cut)
        }) {
            break;
        }
        assert!(n < 100, "the clock does not move");
    }
    let ranged = dir.path().join("ranged.jsonl");
    let (ok, _, err) = server.cli(
        &[
            "audit",
            "export",
            "--tenant",
            "acme",
            "--from",
            "2000-01-01",
            "--to",
            &rfc3339(cut),
            "--output",
            ranged.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = verify(&ranged, false);
    assert!(ok, "{err}");
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(&format!(
            "{acme_before_cut} records of tenant acme between 2000-01-01T00:00:00.000Z and {}",
            rfc3339(cut)
        )) && out.contains("end: the export ends with the record just after the range"),
        "{out}"
    );
    assert!(
        !std::fs::read_to_string(&ranged)
            .unwrap()
            .contains("initech")
    );

    // The whole-chain export still verifies, with globex's records in full.
    let whole = dir.path().join("whole.jsonl");
    let (ok, _, err) = server.cli(
        &["audit", "export", "--output", whole.to_str().unwrap()],
        b"",
    );
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&whole).unwrap().contains("globex"));
    let (ok, out, err) = verify(&whole, false);
    assert!(ok, "{err}");
    assert!(String::from_utf8(out).unwrap().starts_with("OK: "));

    // A time range without a tenant is refused.
    let (ok, _, _) = server.cli(&["audit", "export", "--from", "2000-01-01"], b"");
    assert!(!ok);
}

/// `ms` (Unix milliseconds) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, as `keyward audit export --to` takes it.
fn rfc3339(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}
