//! `keyward audit report` through the real binary: the live report and the report from a
//! verified export are the same text; every denial is counted, also the one whose record is
//! written after the restoration; an export that does not verify and an unknown tenant are
//! refused.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use support::{Server, assert_status, context};
use tonic::Code;

/// Sleeps until just after the wall clock's next whole second: denial records count per
/// second, and the scenario needs denials in distinct seconds (part of what is tested, not a
/// synchronisation).
fn into_next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let left = Duration::from_millis(1000 - u64::from(now.subsec_millis()) + 20);
    std::thread::sleep(left);
}

async fn denied_decrypt(server: &Server, envelope: &[u8]) {
    let result = server
        .crypto()
        .await
        .decrypt(pb::DecryptRequest {
            tenant_id: "acme".into(),
            envelope: envelope.to_vec(),
            encryption_context: context(&[]),
            justification: None,
        })
        .await;
    assert_status(result, Code::FailedPrecondition, "KEY_REVOKED");
}

/// The tenant's records as (seq, event type, canonical JSON).
async fn records(server: &Server) -> Vec<(u64, String, String)> {
    let mut audit = AuditServiceClient::new(server.channel().await);
    let page = audit
        .list_events(pb::ListAuditEventsRequest {
            tenant_id: "acme".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.records
        .into_iter()
        .map(|r| (r.seq, r.event_type, r.canonical_json))
        .collect()
}

fn denial_count(records: &[(u64, String, String)]) -> u64 {
    records
        .iter()
        .filter(|(_, t, _)| t == "revocation_denials")
        .map(|(_, _, json)| {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            v["event"]["count"].as_u64().unwrap()
        })
        .sum()
}

/// Revokes, is denied three times in three seconds (the last in the second of the restore),
/// restores, and waits until the last denial record is written (after the restore's).
async fn revoke_deny_three_times_and_restore(server: &Server) {
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    let envelope = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: b"prompt".to_vec(),
            encryption_context: context(&[]),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope;
    crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "acme".into(),
            envelope: envelope.clone(),
            encryption_context: context(&[]),
            justification: None,
        })
        .await
        .unwrap();
    let mut tenants = server.tenants().await;
    tenants
        .revoke_key(pb::RevokeKeyRequest {
            tenant_id: "acme".into(),
            reason: "laptop stolen".into(),
            requested_by: "secops".into(),
        })
        .await
        .unwrap();
    denied_decrypt(server, &envelope).await;
    into_next_second();
    denied_decrypt(server, &envelope).await;
    into_next_second();
    denied_decrypt(server, &envelope).await;
    tenants
        .restore_key(pb::RestoreKeyRequest {
            tenant_id: "acme".into(),
            reason: "laptop found".into(),
            requested_by: "secops".into(),
            binding_id: 0,
        })
        .await
        .unwrap();
    // Denial records are written once their second is over (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    let written = loop {
        let written = records(server).await;
        if denial_count(&written) == 3 {
            break written;
        }
        assert!(
            Instant::now() < deadline,
            "denials not recorded: {written:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The scenario of issue #18 item 4: a denial record comes after the restore's record.
    let restored = written.iter().find(|(_, t, _)| t == "restored").unwrap().0;
    let last_denial = written
        .iter()
        .filter(|(_, t, _)| t == "revocation_denials")
        .map(|(seq, _, _)| *seq)
        .max()
        .unwrap();
    assert!(last_denial > restored, "{written:?}");
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[test]
fn the_report_from_a_verified_export_is_the_live_report_and_counts_every_denial() {
    let server = Server::start(&[("KEYWARD_REPLICA_ID", "eu-west-1a")]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(revoke_deny_three_times_and_restore(&server));

    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("audit.jsonl");
    let export = export.to_str().unwrap();
    let (ok, _, err) = server.cli(&["audit", "export", "--output", export], b"");
    assert!(ok, "{err}");
    let (ok, key, err) = server.cli(&["audit", "public-key"], b"");
    assert!(ok, "{err}");
    let key = text(key).trim().to_owned();

    let (ok, online, err) = server.cli(&["audit", "report", "--tenant", "acme"], b"");
    assert!(ok, "{err}");
    let online = text(online);
    let (ok, offline, err) = server.cli(
        &[
            "audit",
            "report",
            "--tenant",
            "acme",
            "--from-export",
            export,
            "--public-key",
            &key,
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert_eq!(text(offline), online);

    for expected in [
        "Revocation report for tenant acme\n",
        "All times are UTC (RFC 3339).",
        "Revocation 1 (seq ",
        "active -> revoked, source: an explicit request by ",
        "  reason:          laptop stolen\n",
        "Z (recorded)\n",
        "  answer:          no plaintext served after the revocation was recorded\n",
        "  denied since:    3 requests in 3 seconds, first ",
        "Requests denied in all: 3 (3 during the revocations above).",
        "laptop found",
    ] {
        assert!(online.contains(expected), "{expected:?} not in:\n{online}");
    }
    // The replica's last plaintext, the replica named by its id, in RFC 3339 UTC.
    let purge = online
        .lines()
        .find(|l| l.contains("    - replica \"eu-west-1a\", seq "))
        .unwrap_or_else(|| panic!("{online}"));
    assert!(
        purge.contains("plaintext last served at 20") && purge.contains("Z, before the revocation"),
        "{purge}"
    );

    // JSON keeps the raw values.
    let (ok, json, err) = server.cli(
        &["audit", "report", "--tenant", "acme", "--format", "json"],
        b"",
    );
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let revocation = &json["items"][0];
    assert_eq!(revocation["kind"], "revocation");
    assert_eq!(revocation["denied"], 3);
    assert_eq!(json["denied_total"], 3);
    assert!(revocation["recorded_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(revocation["plaintext_served_after_revocation"], false);
}

#[test]
fn an_export_that_does_not_verify_or_an_unknown_tenant_is_refused() {
    let server = Server::start(&[]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(server.onboard("acme"));
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("audit.jsonl");
    let export = export.to_str().unwrap();
    let (ok, _, err) = server.cli(&["audit", "export", "--output", export], b"");
    assert!(ok, "{err}");
    let (ok, key, _) = server.cli(&["audit", "public-key"], b"");
    assert!(ok);
    let key = text(key).trim().to_owned();
    let report = |tenant: &str, file: &str| {
        server.cli_code(
            &[
                "audit",
                "report",
                "--tenant",
                tenant,
                "--from-export",
                file,
                "--public-key",
                &key,
            ],
            b"",
        )
    };

    // An unknown tenant: online and offline, a precise error, exit 5.
    let (code, out, err) = server.cli_code(&["audit", "report", "--tenant", "nosuch"], b"");
    assert_eq!(code, Some(5), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("error: no audit record names tenant \"nosuch\": there is no such tenant"),
        "{err}"
    );
    let (code, _, err) = report("nosuch", export);
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains(&format!("no record in {export} names tenant \"nosuch\"")),
        "{err}"
    );

    // An edited export: refused with its problems, exit 1, no report.
    let original = std::fs::read_to_string(export).unwrap();
    let edited = original.replacen("\"tenant_created\"", "\"tenant_created\" ", 1);
    assert_ne!(edited, original);
    let tampered = dir.path().join("edited.jsonl");
    std::fs::write(&tampered, edited).unwrap();
    let (code, out, err) = report("acme", tampered.to_str().unwrap());
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty(), "no report from an unverified export");
    assert!(
        err.contains(
            "refusing to report from an export that does not verify: 1 problem(s) found in"
        ) && err.contains("\n  line 2: malformed line: "),
        "{err}"
    );

    // The untouched export reports.
    let (code, out, err) = report("acme", export);
    assert_eq!(code, Some(0), "{err}");
    assert!(text(out).contains("(no revocation recorded)"));
}
