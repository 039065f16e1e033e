//! The audit log through the real binary: lifecycle changes are recorded,
//! listed with paging, exported, verified offline by the CLI, and tampering
//! with an export is pinpointed.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use support::{Server, assert_status, context, local_key};
use tonic::Code;

const SECRET_SCOPE: &str = "user-4711@example.com";

async fn populate(server: &Server) {
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    for scope in [SECRET_SCOPE, "other"] {
        crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: "acme".into(),
                plaintext: b"very secret prompt".to_vec(),
                encryption_context: context(&[]),
                scope: scope.into(),
                justification: None,
            })
            .await
            .unwrap();
    }
    let mut tenants = server.tenants().await;
    // A failed registration is recorded with its reason.
    tenants
        .register_key(local_key("acme", "no-such-key"))
        .await
        .unwrap_err();
}

#[tokio::test]
async fn lifecycle_changes_are_listed_with_paging_and_filters() {
    let server = Server::start(&[]);
    populate(&server).await;
    let mut audit = AuditServiceClient::new(server.channel().await);

    let mut types = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = audit
            .list_events(pb::ListAuditEventsRequest {
                tenant_id: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.records.len() <= 2);
        types.extend(page.records.iter().map(|r| r.event_type.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 50, "paging must end");
    }
    assert_eq!(
        types,
        [
            "tenant_created",
            "key_registration_attempted",
            "kek_binding_changed",
            "dek_created",
            "dek_created",
            "key_registration_attempted",
        ]
    );

    let failed = audit
        .list_events(pb::ListAuditEventsRequest {
            event_type: "key_registration_attempted".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(failed.len(), 2);
    assert!(
        failed[1].canonical_json.contains("KEY_NOT_FOUND"),
        "{}",
        failed[1].canonical_json
    );

    assert_status(
        audit
            .list_events(pb::ListAuditEventsRequest {
                event_type: "no_such_type".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        audit
            .list_events(pb::ListAuditEventsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
}

#[test]
fn export_verifies_offline_and_tampering_is_pinpointed() {
    let server = Server::start(&[("KEYWARD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1")]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(populate(&server));

    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("audit.jsonl");
    let (ok, _, err) = server.cli(
        &["audit", "export", "--output", export.to_str().unwrap()],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, key, err) = server.cli(&["audit", "public-key"], b"");
    assert!(ok, "{err}");
    let key = String::from_utf8(key).unwrap().trim().to_owned();
    assert!(key.starts_with("keyward-audit-ed25519:"), "{key}");
    // The key id verify's messages name keys by, on stderr (stdout stays the key alone).
    let key_id = keyward_audit::PublicKey::from_text(&key).unwrap().key_id();
    assert!(err.contains(&format!("key id {key_id} ")), "{err}");

    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        !text.contains("very secret prompt"),
        "no plaintext in the audit log"
    );
    assert!(!text.contains(SECRET_SCOPE), "scope labels are HMAC'd");
    assert!(text.contains("hmac-sha256:"));

    let verify = |path: &std::path::Path| {
        server.cli(
            &[
                "audit",
                "verify",
                path.to_str().unwrap(),
                "--public-key",
                &key,
            ],
            b"",
        )
    };
    let (ok, out, err) = verify(&export);
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("OK: 6 records"), "{out}");
    // What was proven, in words and UTC times, with the key that signed.
    assert!(
        out.contains("proven: every record from seq 1 to seq 6 is present, in order and unaltered")
            && out.contains(&format!("signing keys seen: {key_id} ({key})"))
            && out.contains("final checkpoint: signed at 20")
            && !out.contains("..="),
        "{out}"
    );

    // Edit a record (the tenant of the third line: a record).
    let lines: Vec<&str> = text.lines().collect();
    let mut edited = lines.clone();
    let third = edited[2].replace("\"acme\"", "\"acmf\"");
    assert_ne!(third, edited[2]);
    edited[2] = &third;
    let tampered = dir.path().join("edited.jsonl");
    std::fs::write(&tampered, edited.join("\n") + "\n").unwrap();
    let (ok, _, err) = verify(&tampered);
    assert!(!ok);
    assert!(err.contains("line 3") && err.contains("edited"), "{err}");

    // Delete a record.
    let mut deleted = lines.clone();
    deleted.remove(3);
    std::fs::write(&tampered, deleted.join("\n") + "\n").unwrap();
    let (ok, _, err) = verify(&tampered);
    assert!(!ok);
    assert!(err.contains("FAILED"), "{err}");

    // Both: the edit does not hide the later deletion (of a record, or of a checkpoint line
    // if the server signed one there).
    let mut both = edited.clone();
    both.remove(4);
    std::fs::write(&tampered, both.join("\n") + "\n").unwrap();
    let (ok, _, err) = verify(&tampered);
    assert!(!ok);
    assert!(
        err.contains("verification FAILED: 2 problem(s) found in")
            && err.contains("\n  line 3 (seq 2): record was edited: ")
            && err.contains(": record deleted: "),
        "{err}"
    );

    // Truncate the tail: named at the end of the export, never at a line past it.
    let kept = lines.len() - 2;
    std::fs::write(&tampered, lines[..kept].join("\n") + "\n").unwrap();
    let (ok, _, err) = verify(&tampered);
    assert!(!ok);
    assert!(err.contains("truncated"), "{err}");
    assert!(
        err.contains(&format!("end of export (after line {kept})"))
            && !err.contains(&format!("line {}", kept + 1)),
        "{err}"
    );

    // Another deployment's key does not vouch for this export.
    let stranger = "keyward-audit-ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let (ok, _, err) = server.cli(
        &[
            "audit",
            "verify",
            export.to_str().unwrap(),
            "--public-key",
            stranger,
        ],
        b"",
    );
    assert!(!ok, "{err}");
    assert!(err.contains("verification FAILED"), "{err}");
}

#[test]
fn signing_key_rotation_keeps_exports_verifiable_with_the_first_key() {
    let server = Server::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(server.onboard("before"));
    let (ok, first_key, err) = server.cli(&["audit", "public-key"], b"");
    assert!(ok, "{err}");
    let first_key = String::from_utf8(first_key).unwrap().trim().to_owned();

    let (ok, new_key, err) = server.cli(
        &["audit", "rotate-signing-key", "--requested-by", "ops"],
        b"",
    );
    assert!(ok, "{err}");
    let new_key = String::from_utf8(new_key).unwrap().trim().to_owned();
    assert_ne!(new_key, first_key);
    let (ok, current, _) = server.cli(&["audit", "public-key"], b"");
    assert!(ok);
    assert_eq!(String::from_utf8(current).unwrap().trim(), new_key);
    rt.block_on(server.onboard("after"));

    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("audit.jsonl");
    let (ok, _, err) = server.cli(
        &["audit", "export", "--output", export.to_str().unwrap()],
        b"",
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.contains("signing_key_rotated"));
    // Trust flows forward from the first key through the recorded rotation...
    let (ok, out, err) = server.cli(
        &[
            "audit",
            "verify",
            export.to_str().unwrap(),
            "--public-key",
            &first_key,
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("OK:"));
    // ...but the new key alone cannot vouch for the records before it.
    let (ok, _, err) = server.cli(
        &[
            "audit",
            "verify",
            export.to_str().unwrap(),
            "--public-key",
            &new_key,
        ],
        b"",
    );
    assert!(!ok && err.contains("verification FAILED"), "{err}");
}

#[test]
fn a_pending_signing_key_whose_rotation_was_never_recorded_is_discarded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_in(dir.path(), &[]);
    let (ok, key, _) = first.cli(&["audit", "public-key"], b"");
    assert!(ok);
    first.kill_9();
    // A crash after writing the new key but before recording the rotation.
    let pending = dir.path().join("audit").join("signing-key.pk8.new");
    let stray = keyward_audit::SigningKey::generate()
        .unwrap()
        .to_pkcs8()
        .unwrap();
    std::fs::write(&pending, stray.as_slice()).unwrap();
    let second = Server::start_in(dir.path(), &[]);
    assert!(!pending.exists(), "the unrecorded key is discarded");
    let (ok, again, _) = second.cli(&["audit", "public-key"], b"");
    assert!(ok);
    assert_eq!(again, key, "the recorded key stays in charge");
}
