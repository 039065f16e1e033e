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
