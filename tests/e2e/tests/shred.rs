//! Crypto-shredding through the real binary (docs/deleting-data.md): retention shredding whose
//! dry run counts what the real run destroys, and a `kill -9` in the middle of a large run that
//! leaves every data key either usable or shredded (never half of each), counted exactly in the
//! signed log, the run resuming where it stopped. The three-replica shred is in `replicas.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "tests: a failure must abort with a message; where the kill landed is printed"
)]

mod support;

use std::time::{Duration, Instant};

use keyward_proto::v1::{
    self as pb, decrypt_batch_result::Result as DecResult,
    encrypt_batch_result::Result as EncResult,
};
use keyward_store::{AuditEvent, AuditQuery, Store as _, sqlite::SqliteStore};
use support::{Server, context};

/// Enough scopes that the run is still going when the test kills the server.
const SCOPES: usize = 600;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        // A data key never encrypts once it is a second old: a scope written a second ago
        // holds only data older than now.
        ("KEYWARD_ROTATION__MAX_AGE_SECONDS", "1"),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
    ]
}

fn ctx() -> std::collections::HashMap<String, String> {
    context(&[("purpose", "retention")])
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap(),
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn retention(cutoff_ms: i64, dry_run: bool) -> pb::ShredScopesRequest {
    pb::ShredScopesRequest {
        tenant_id: "acme".into(),
        created_before: Some(timestamp(cutoff_ms)),
        scope_prefix: "2026-11-".into(),
        dry_run,
        max_scopes: 1000,
        reason: "retention: 30 days".into(),
        requested_by: "dpo".into(),
    }
}

/// Each envelope's fate: `None` if it decrypts, else its error reason.
async fn fates(server: &Server, envelopes: &[Vec<u8>]) -> Vec<Option<String>> {
    let mut crypto = server.crypto().await;
    let mut out = Vec::new();
    for chunk in envelopes.chunks(200) {
        let results = crypto
            .decrypt_batch(pb::DecryptBatchRequest {
                tenant_id: "acme".into(),
                items: chunk
                    .iter()
                    .map(|e| pb::DecryptBatchItem {
                        envelope: e.clone(),
                        encryption_context: ctx(),
                    })
                    .collect(),
                justification: None,
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        out.extend(results.into_iter().map(|r| match r.result.unwrap() {
            DecResult::Ok(_) => None,
            DecResult::Error(e) => Some(e.reason),
        }));
    }
    out
}

/// The highest tombstone seq (= tombstones written, in a fresh store).
async fn tombstones(server: &Server) -> i64 {
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let n = store
        .shreds_after(0)
        .await
        .unwrap()
        .iter()
        .map(|(_, seq)| *seq)
        .max()
        .unwrap_or(0);
    store.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_counts_what_it_shreds_and_a_crash_mid_run_leaves_each_key_whole() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(data.path(), &env());
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    let mut envelopes = Vec::new();
    for chunk in (0..SCOPES).collect::<Vec<_>>().chunks(200) {
        let results = crypto
            .encrypt_batch(pb::EncryptBatchRequest {
                tenant_id: "acme".into(),
                items: chunk
                    .iter()
                    .map(|i| pb::EncryptBatchItem {
                        plaintext: format!("turn {i}").into_bytes(),
                        encryption_context: ctx(),
                        scope: format!("2026-11-{i:04}"),
                    })
                    .collect(),
                justification: None,
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        envelopes.extend(results.into_iter().map(|r| match r.result.unwrap() {
            EncResult::Ok(ok) => ok.envelope,
            EncResult::Error(e) => panic!("{e:?}"),
        }));
    }
    // Older than the rotation age: all of it was written before the cutoff.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cutoff = now_ms();
    // Written after the cutoff, outside the prefix: kept whatever happens.
    let kept = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: b"kept".to_vec(),
            encryption_context: ctx(),
            scope: "conv-kept".into(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope;
    let mut tenants = server.tenants().await;

    let dry = tenants
        .shred_scopes(retention(cutoff, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.scopes as usize, dry.deks as usize), (SCOPES, SCOPES));
    assert_eq!(tombstones(&server).await, 0, "a dry run changes nothing");

    // The real run, killed (SIGKILL) once some scopes are shredded.
    let run = tokio::spawn(async move { tenants.shred_scopes(retention(cutoff, false)).await });
    let started = Instant::now();
    while tombstones(&server).await < 30 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let db = server.database();
    server.kill_9();
    assert!(run.await.unwrap().is_err(), "the call cannot have finished");
    let store = SqliteStore::open_read_only(&db).await.unwrap();
    let shredded = store.shreds_after(0).await.unwrap()[0].1;
    store.close().await;
    println!("killed after {shredded} of {SCOPES} scopes were shredded");
    assert!(
        (30..SCOPES as i64).contains(&shredded),
        "the kill landed after {shredded} of {SCOPES} scopes: not in the middle"
    );

    // After the restart every data key is whole: usable, or shredded with its records.
    let server = Server::start_in(data.path(), &env());
    let after_crash = fates(&server, &envelopes).await;
    let refused = after_crash.iter().filter(|f| f.is_some()).count();
    assert!(
        after_crash
            .iter()
            .flatten()
            .all(|reason| reason == "DATA_KEY_SHREDDED"),
        "{after_crash:?}"
    );
    assert_eq!(
        refused as i64, shredded,
        "one tombstone per refused envelope"
    );
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let records = store
        .audit_records(
            &AuditQuery::default()
                .with_tenant("acme".try_into().unwrap())
                .with_event_type("scope_shredded"),
        )
        .await
        .unwrap();
    store.close().await;
    let counted: u64 = records
        .iter()
        .map(|r| match r.event() {
            AuditEvent::ScopeShredded {
                deks,
                retention_cutoff_ms,
                ..
            } => {
                assert_eq!(*retention_cutoff_ms, Some(cutoff));
                *deks
            }
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(
        counted as usize, refused,
        "the log counts exactly what is gone"
    );

    // The dry run now counts what is left, and running again finishes the job.
    let mut tenants = server.tenants().await;
    let left = tenants
        .shred_scopes(retention(cutoff, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.scopes as usize, SCOPES - refused);
    let resumed = tenants
        .shred_scopes(retention(cutoff, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            resumed.scopes as usize,
            resumed.deks as usize,
            resumed.scopes_remaining
        ),
        (SCOPES - refused, SCOPES - refused, 0)
    );
    assert!(
        fates(&server, &envelopes)
            .await
            .iter()
            .all(|f| f.as_deref() == Some("DATA_KEY_SHREDDED"))
    );
    assert_eq!(fates(&server, &[kept]).await, [None]);
    // This server process shredded the rest (the first one's count died with it).
    let (_, metrics) = server.admin_get("/metrics");
    let line = format!("keyward_deks_shredded_total {}", SCOPES - refused);
    assert!(
        metrics.lines().any(|l| l == line),
        "no {line:?} in\n{metrics}"
    );
    let dir = tempfile::tempdir().unwrap();
    server.verify_audit_chain(dir.path());
}

#[tokio::test]
async fn bad_shred_requests_name_their_field_and_change_nothing() {
    let server = Server::start(&env());
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: b"x".to_vec(),
            encryption_context: ctx(),
            scope: "conv-1".into(),
            justification: None,
        })
        .await
        .unwrap();
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let before = support::domain_state(&store).await;
    let mut tenants = server.tenants().await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        use tonic_types::StatusExt as _;
        status.get_details_bad_request().unwrap().field_violations[0]
            .field
            .clone()
    };
    let one = |scope: &str, reason: &str| pb::ShredScopeRequest {
        tenant_id: "acme".into(),
        scope: scope.into(),
        reason: reason.into(),
        requested_by: String::new(),
    };
    for (request, expected) in [
        (one("", "why"), "scope"),
        (one("conv-1", ""), "reason"),
        (one("conv\u{7}", "why"), "scope"),
        (
            pb::ShredScopeRequest {
                tenant_id: "ACME".into(),
                ..one("conv-1", "why")
            },
            "tenant_id",
        ),
    ] {
        assert_eq!(
            field(tenants.shred_scope(request).await.unwrap_err()),
            expected
        );
    }
    let many = |f: &dyn Fn(&mut pb::ShredScopesRequest)| {
        let mut r = retention(now_ms() - 1000, false);
        f(&mut r);
        r
    };
    for (request, expected) in [
        (many(&|r| r.created_before = None), "created_before"),
        (
            many(&|r| r.created_before = Some(timestamp(now_ms() + 3_600_000))),
            "created_before",
        ),
        (many(&|r| r.max_scopes = 1001), "max_scopes"),
        (many(&|r| r.scope_prefix = "x".repeat(129)), "scope_prefix"),
        (many(&|r| r.reason = String::new()), "reason"),
    ] {
        assert_eq!(
            field(tenants.shred_scopes(request).await.unwrap_err()),
            expected
        );
    }
    // An unknown tenant: NOT_FOUND, also for a dry run.
    for dry_run in [false, true] {
        let status = tenants
            .shred_scopes(pb::ShredScopesRequest {
                tenant_id: "nobody".into(),
                ..retention(now_ms() - 1000, dry_run)
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
    let status = tenants
        .shred_scope(pb::ShredScopeRequest {
            tenant_id: "nobody".into(),
            ..one("conv-1", "why")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(support::domain_state(&store).await, before);
    // No record either (compared by type: a usage summary may be written meanwhile).
    for kind in ["scope_shredded", "dek_retired"] {
        let records = store
            .audit_records(&AuditQuery::default().with_event_type(kind))
            .await
            .unwrap();
        assert!(records.is_empty(), "{kind}: {records:?}");
    }
}
