//! `keyward store backup` on a running server: the copy is a consistent snapshot that a new
//! server opens as its store; every ciphertext acknowledged before the backup started decrypts
//! there, the revocation recorded before it is still in force, and the audit chain verifies.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use keyward_proto::v1 as pb;
use support::{Server, context};
use tonic::Code;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

async fn encrypt(
    crypto: &mut pb::crypto_service_client::CryptoServiceClient<tonic::transport::Channel>,
    tenant: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext: plaintext.to_vec(),
            encryption_context: context(&[("doc", "1")]),
            scope: "s".into(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_acknowledged_ciphertext() {
    let server = Server::start(&[]);
    server.onboard("acme").await;
    server.onboard("globex").await;
    let mut crypto = server.crypto().await;
    let mut acked = Vec::new();
    for i in 0..20u8 {
        let plaintext = vec![i; 100];
        acked.push((encrypt(&mut crypto, "acme", &plaintext).await, plaintext));
    }
    server
        .tenants()
        .await
        .revoke_key(pb::RevokeKeyRequest {
            tenant_id: "globex".into(),
            reason: "customer offboarded".into(),
            requested_by: "backup-test".into(),
        })
        .await
        .unwrap();

    // Writes keep coming while the backup runs (new DEK scopes: lifecycle writes too).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut crypto = server.crypto().await;
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                crypto
                    .encrypt(pb::EncryptRequest {
                        tenant_id: "acme".into(),
                        plaintext: b"during the backup".to_vec(),
                        encryption_context: Default::default(),
                        scope: format!("load-{n}"),
                        justification: None,
                    })
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let restore_dir = tempfile::tempdir().unwrap();
    let copy = restore_dir.path().join("keyward.db");
    let (ok, _, err) = server.cli(
        &[
            "store",
            "backup",
            "--database",
            server.database().to_str().unwrap(),
            "--output",
            copy.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{err}");
    stop.store(true, Ordering::Relaxed);
    let during = load.await.unwrap();
    eprintln!("{during} encryptions (each a new DEK) ran while the backup was taken");

    // A backup never overwrites, and a missing store is named.
    let (ok, _, err) = server.cli(
        &[
            "store",
            "backup",
            "--database",
            server.database().to_str().unwrap(),
            "--output",
            copy.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!ok && err.contains("already exists"), "{err}");
    let missing = restore_dir.path().join("nope.db");
    let (ok, _, err) = server.cli(
        &[
            "store",
            "backup",
            "--database",
            missing.to_str().unwrap(),
            "--output",
            restore_dir.path().join("x.db").to_str().unwrap(),
        ],
        b"",
    );
    assert!(!ok && err.contains("no such store file"), "{err}");

    // Restore: the copy plus the same local KEKs and audit keys, on a new server.
    copy_dir(
        &server.local_kms_dir(),
        &restore_dir.path().join("local-kms"),
    );
    copy_dir(
        &server.data_dir.join("audit"),
        &restore_dir.path().join("audit"),
    );
    drop(server);
    let restored = Server::start_in(restore_dir.path(), &[]);
    let mut crypto = restored.crypto().await;
    for (envelope, plaintext) in &acked {
        let got = crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: "acme".into(),
                envelope: envelope.clone(),
                encryption_context: context(&[("doc", "1")]),
                justification: None,
            })
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(&got, plaintext);
    }
    let denied = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "globex".into(),
            plaintext: b"x".to_vec(),
            encryption_context: Default::default(),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::FailedPrecondition,
        "the revocation is in the backup"
    );

    restored.verify_audit_chain(restore_dir.path());
}

/// `keyward store backup` says what the copy holds and how old its oldest key is, read from the
/// copy itself (a later write on the live store is not in it), with the shredding caveat; as
/// text and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_says_what_it_holds_and_how_old_its_oldest_key_is() {
    let server = Server::start(&[]);
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    encrypt(&mut crypto, "acme", b"first").await; // scope "s"
    crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: b"second".to_vec(),
            encryption_context: Default::default(),
            scope: "t".into(),
            justification: None,
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backup = |name: &str, json: bool| {
        let copy = dir.path().join(name);
        let mut args = vec![
            "store".to_owned(),
            "backup".to_owned(),
            "--database".to_owned(),
            server.database().to_str().unwrap().to_owned(),
            "--output".to_owned(),
            copy.to_str().unwrap().to_owned(),
        ];
        if json {
            args.push("--json".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = server.cli(&args, b"");
        assert!(ok, "{err}");
        (copy, String::from_utf8(out).unwrap())
    };
    let caveat = "A backup keeps every key it holds, including keys shredded after it was taken: \
         crypto-shredding is only as strong as backup retention (docs/store.md, \"Backups\").";

    let (first, out) = backup("first.db", true);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let copy = keyward_store::sqlite::SqliteStore::open_read_only(&first)
        .await
        .unwrap();
    let held = copy.contents().await.unwrap();
    copy.close().await;
    assert_eq!((held.tenants, held.tenant_keys, held.deks), (1, 1, 2));
    assert_eq!(summary["wrapped_deks"], 2);
    assert_eq!(summary["tenant_keys"], 1);
    assert_eq!(summary["tenants"], 1);
    assert_eq!(summary["output"], first.to_str().unwrap());
    assert!(summary["backup_time"].as_str().unwrap().ends_with('Z'));
    assert!(
        summary["oldest_dek_created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let age = summary["oldest_dek_age_seconds"].as_i64().unwrap();
    assert!((0..600).contains(&age), "{age}");
    assert_eq!(summary["note"], caveat);

    // A write after the first backup: in the second copy, not in the first.
    crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: b"third".to_vec(),
            encryption_context: Default::default(),
            scope: "u".into(),
            justification: None,
        })
        .await
        .unwrap();
    let (_, text) = backup("second.db", false);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("backup time:  "), "{text}");
    assert_eq!(lines[1], "wrapped DEKs: 3");
    assert_eq!(lines[2], "tenant keys:  1 (of 1 tenant)");
    assert!(
        lines[3].starts_with("oldest DEK:   created ") && lines[3].ends_with(" before the backup"),
        "{text}"
    );
    assert_eq!(lines[4], caveat);
    let copy = keyward_store::sqlite::SqliteStore::open_read_only(&first)
        .await
        .unwrap();
    assert_eq!(
        copy.contents().await.unwrap().deks,
        2,
        "the first copy kept its own"
    );
    copy.close().await;
}
