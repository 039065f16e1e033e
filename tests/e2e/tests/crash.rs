//! Crash consistency of lifecycle operations and encryption: the real binary
//! is killed with SIGKILL at varying moments while it works; afterwards every
//! acknowledged ciphertext decrypts, every acknowledged lifecycle operation has
//! its audit record, and the exported audit chain verifies.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use support::{Server, context, local_key};

#[derive(Default)]
struct Acknowledged {
    tenants: Vec<String>,
    /// Successful registrations per tenant.
    registrations: Vec<(String, usize)>,
    envelopes: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// Lifecycle operations and encryptions until the server dies; records what was acknowledged.
async fn work(server_addr: String, round: usize, acked: Arc<Mutex<Acknowledged>>) {
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{server_addr}"))
        .unwrap()
        .connect()
        .await
    else {
        return;
    };
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel.clone());
    let mut crypto = pb::crypto_service_client::CryptoServiceClient::new(channel);
    for k in 0.. {
        let tenant = format!("crash-{round}-{k}");
        if tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: tenant.clone(),
                display_name: String::new(),
            })
            .await
            .is_err()
        {
            return;
        }
        acked.lock().unwrap().tenants.push(tenant.clone());
        let mut registered = 0;
        for _ in 0..2 {
            if tenants
                .register_key(local_key(&tenant, "default"))
                .await
                .is_err()
            {
                acked
                    .lock()
                    .unwrap()
                    .registrations
                    .push((tenant.clone(), registered));
                return;
            }
            registered += 1;
            for m in 0..3u8 {
                let plaintext = vec![m; 64 + usize::from(m)];
                match crypto
                    .encrypt(pb::EncryptRequest {
                        tenant_id: tenant.clone(),
                        plaintext: plaintext.clone(),
                        encryption_context: context(&[("m", &m.to_string())]),
                        scope: format!("s{m}"),
                    })
                    .await
                {
                    Ok(r) => acked.lock().unwrap().envelopes.push((
                        tenant.clone(),
                        r.into_inner().envelope,
                        plaintext,
                    )),
                    Err(_) => {
                        acked
                            .lock()
                            .unwrap()
                            .registrations
                            .push((tenant.clone(), registered));
                        return;
                    }
                }
            }
        }
        acked
            .lock()
            .unwrap()
            .registrations
            .push((tenant.clone(), registered));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_lifecycle_operations_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let started = Instant::now();
    // Deterministic, varied kill moments; bounded in count and time.
    let delays_ms = [35, 120, 60, 250, 15, 180, 90, 300, 45, 150, 75, 210];
    let mut rounds = 0;
    for (round, delay) in delays_ms.iter().enumerate() {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let server = Server::start_in(
            dir.path(),
            &[("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0")],
        );
        let worker = tokio::spawn(work(server.addr.clone(), round, acked.clone()));
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        server.kill_9();
        let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
        rounds += 1;
    }

    let server = Server::start_in(dir.path(), &[]);
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "{rounds} SIGKILLs; acknowledged: {} tenants, {} registrations, {} ciphertexts",
        acked.tenants.len(),
        acked.registrations.iter().map(|r| r.1).sum::<usize>(),
        acked.envelopes.len()
    );
    assert!(
        acked.envelopes.len() >= 10,
        "the load did real work before the kills"
    );

    // Every acknowledged ciphertext decrypts.
    let mut crypto = server.crypto().await;
    for (tenant, envelope, plaintext) in acked.envelopes.iter() {
        let m = plaintext[0];
        let got = crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: tenant.clone(),
                envelope: envelope.clone(),
                encryption_context: context(&[("m", &m.to_string())]),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged ciphertext of {tenant} lost: {s:?}"))
            .into_inner()
            .plaintext;
        assert_eq!(&got, plaintext);
    }

    // Every acknowledged lifecycle operation has its audit record.
    let mut audit = AuditServiceClient::new(server.channel().await);
    for (tenant, registered) in acked.registrations.iter() {
        let records = audit
            .list_events(pb::ListAuditEventsRequest {
                tenant_id: tenant.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let count = |t: &str| records.iter().filter(|r| r.event_type == t).count();
        assert_eq!(count("tenant_created"), 1, "{tenant}");
        assert!(
            count("kek_binding_changed") >= *registered,
            "{tenant}: {records:?}"
        );
    }

    // The whole chain verifies offline.
    let export = dir.path().join("audit.jsonl");
    let (ok, _, err) = server.cli(
        &["audit", "export", "--output", export.to_str().unwrap()],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, key, err) = server.cli(&["audit", "public-key"], b"");
    assert!(ok, "{err}");
    let key = String::from_utf8(key).unwrap().trim().to_owned();
    let (ok, out, err) = server.cli(
        &[
            "audit",
            "verify",
            export.to_str().unwrap(),
            "--public-key",
            &key,
        ],
        b"",
    );
    assert!(ok, "{err}");
    eprintln!("{}", String::from_utf8_lossy(&out));
}
