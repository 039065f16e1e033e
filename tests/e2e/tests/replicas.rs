//! Several `keyward serve` replicas on one PostgreSQL database (docs/operations.md, "Several
//! replicas"): shared keys and data, the revocation fan-out (LISTEN/NOTIFY plus
//! reconciliation), a replica crash, a cut listener connection, and the health service following
//! the store.
//!
//! Needs a PostgreSQL server: `KEYWARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, exported by `scripts/test`) must name a role that may
//! `CREATE DATABASE`. Without one these tests fail; they are never skipped. Each test creates its
//! own database `kw_rep_<hex>` and drops it when it passes.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "tests: a failure must abort with a message; measured delays are printed"
)]

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use keyward_proto::v1 as pb;
use keyward_store::{AuditQuery, Store as _, postgres::PostgresStore};
use sqlx::Connection as _;
use support::{Server, context, local_key, test_db::TestDb};
use tonic::Code;
use tonic_types::StatusExt as _;

/// Replicas of one deployment: one database, one audit key directory, one local KEK directory;
/// each its own data directory and replica id.
struct Deployment {
    shared: tempfile::TempDir,
    _data: Vec<tempfile::TempDir>,
}

impl Deployment {
    fn new() -> Deployment {
        Deployment {
            shared: tempfile::tempdir().unwrap(),
            _data: Vec::new(),
        }
    }

    fn start(&mut self, db: &TestDb, replica_id: &str, env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().unwrap();
        let server = start_replica(db, self.shared.path(), data.path(), replica_id, env);
        self._data.push(data);
        server
    }
}

fn start_replica(
    db: &TestDb,
    shared: &Path,
    data_dir: &Path,
    replica_id: &str,
    env: &[(&str, &str)],
) -> Server {
    let keys = shared.join("audit");
    let kms = shared.join("local-kms");
    let (keys, kms) = (keys.to_str().unwrap(), kms.to_str().unwrap());
    let mut all = vec![
        ("KEYWARD_STORE", db.url.as_str()),
        ("KEYWARD_REPLICA_ID", replica_id),
        ("KEYWARD_AUDIT__KEYS_DIR", keys),
        ("KEYWARD_LOCAL_KMS__DIR", kms),
        // Only RevokeKey revokes here: no canary checks racing the measurements.
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
    ];
    all.extend_from_slice(env);
    Server::start_in(data_dir, &all)
}

fn ctx() -> std::collections::HashMap<String, String> {
    context(&[("purpose", "replicas")])
}

async fn encrypt(
    server: &Server,
    tenant: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    server
        .crypto()
        .await
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext: plaintext.to_vec(),
            encryption_context: ctx(),
            scope: "chat".into(),
            justification: None,
        })
        .await
        .map(|r| r.into_inner().envelope)
}

async fn decrypt(
    client: &mut pb::crypto_service_client::CryptoServiceClient<tonic::transport::Channel>,
    tenant: &str,
    envelope: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    client
        .decrypt(pb::DecryptRequest {
            tenant_id: tenant.into(),
            envelope: envelope.to_vec(),
            encryption_context: ctx(),
            justification: None,
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

fn is_revoked(status: &tonic::Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .get_details_error_info()
            .is_some_and(|i| i.reason == "KEY_REVOKED")
}

/// Polls `server` with decrypts of `envelope` until one is refused; returns the refusal and when
/// that decrypt was sent, counted from `since`. Panics if a decrypt sent `bound` after `since`
/// was served (support::bound).
async fn first_refusal(
    server: &Server,
    tenant: &str,
    envelope: &[u8],
    since: Instant,
    bound: Duration,
) -> (tonic::Status, Duration) {
    let client = server.crypto().await;
    support::bound::stops_serving(since, bound, || {
        let mut client = client.clone();
        async move { decrypt(&mut client, tenant, envelope).await }
    })
    .await
}

/// [`first_refusal`] that must be `KEY_REVOKED` (any other error panics); returns when the
/// refused decrypt was sent.
async fn first_denial(
    server: &Server,
    tenant: &str,
    envelope: &[u8],
    since: Instant,
    bound: Duration,
) -> Duration {
    let (status, sent) = first_refusal(server, tenant, envelope, since, bound).await;
    assert!(
        is_revoked(&status),
        "replica {}: unexpected error while waiting for the revocation: {status:?}",
        server.addr
    );
    sent
}

async fn revoke(server: &Server, tenant: &str) {
    server
        .tenants()
        .await
        .revoke_key(pb::RevokeKeyRequest {
            tenant_id: tenant.into(),
            reason: "incident 7".into(),
            requested_by: "ciso".into(),
        })
        .await
        .unwrap();
}

async fn purge_records(db: &TestDb, tenant: &str) -> usize {
    let store = PostgresStore::connect(&db.url, Default::default())
        .await
        .unwrap();
    let n = store
        .audit_records(
            &AuditQuery::default()
                .with_tenant(tenant.try_into().unwrap())
                .with_event_type("keys_purged"),
        )
        .await
        .unwrap()
        .len();
    store.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_data_and_a_revocation_reaches_every_replica() {
    let db = TestDb::create().await;
    let mut deployment = Deployment::new();
    let replicas: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| deployment.start(&db, id, &[]))
        .collect();
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    a.onboard("acme").await;

    // Concurrent encrypt load on all three replicas.
    let mut tasks = Vec::new();
    for (r, server) in replicas.iter().enumerate() {
        for w in 0..4 {
            let mut client = server.crypto().await;
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..25 {
                    let plaintext = format!("replica {r} worker {w} message {i}").into_bytes();
                    let envelope = client
                        .encrypt(pb::EncryptRequest {
                            tenant_id: "acme".into(),
                            plaintext: plaintext.clone(),
                            encryption_context: ctx(),
                            scope: format!("scope-{}", i % 3),
                            justification: None,
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .envelope;
                    out.push((plaintext, envelope));
                }
                out
            }));
        }
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 300);

    // Every acknowledged ciphertext decrypts on every replica.
    for server in &replicas {
        let mut client = server.crypto().await;
        for (plaintext, envelope) in &acknowledged {
            assert_eq!(
                &decrypt(&mut client, "acme", envelope).await.unwrap(),
                plaintext
            );
        }
    }

    // Revoke through A: B and C deny within the bound of a pushed signal (LISTEN/NOTIFY:
    // the scheduling slack only; reconciliation, 5 s, would be too late).
    let envelope = acknowledged[0].1.clone();
    revoke(a, "acme").await;
    let returned = Instant::now();
    let bound = support::bound::push();
    let (to_b, to_c) = tokio::join!(
        first_denial(b, "acme", &envelope, returned, bound),
        first_denial(c, "acme", &envelope, returned, bound),
    );
    println!("revocation through A reached B after {to_b:?}, C after {to_c:?}");
    for server in &replicas {
        let status = encrypt(server, "acme", b"after").await.unwrap_err();
        assert!(is_revoked(&status), "{status:?}");
    }
    // Each replica purged and audited its own purge (A in RevokeKey, B and C on the fan-out),
    // within the push bound of the revocation.
    support::bound::eventually(returned, bound, || async {
        match purge_records(&db, "acme").await {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} of 3 replicas recorded their purge")),
        }
    })
    .await;
    assert_eq!(
        purge_records(&db, "acme").await,
        3,
        "exactly one purge per replica"
    );

    // Restore through B: A and C serve again, within the push bound.
    b.tenants()
        .await
        .restore_key(pb::RestoreKeyRequest {
            tenant_id: "acme".into(),
            reason: "resolved".into(),
            requested_by: "ciso".into(),
            binding_id: 0,
        })
        .await
        .unwrap();
    let restored = Instant::now();
    for server in [a, c] {
        let client = server.crypto().await;
        let envelope = &envelope;
        let plaintext = support::bound::eventually(restored, support::bound::push(), || {
            let mut client = client.clone();
            async move {
                match decrypt(&mut client, "acme", envelope).await {
                    Err(status) if !is_revoked(&status) => panic!("{status:?}"),
                    other => other,
                }
            }
        })
        .await;
        assert_eq!(plaintext, acknowledged[0].0, "restored on {}", server.addr);
    }

    // SIGKILL C: A and B keep serving, and what A encrypts now B decrypts.
    let mut replicas = replicas;
    replicas.pop().unwrap().kill_9();
    let (a, b) = (&replicas[0], &replicas[1]);
    let fresh = encrypt(a, "acme", b"after the crash").await.unwrap();
    assert_eq!(
        decrypt(&mut b.crypto().await, "acme", &fresh)
            .await
            .unwrap(),
        b"after the crash"
    );
    let fresh = encrypt(b, "acme", b"and back").await.unwrap();
    assert_eq!(
        decrypt(&mut a.crypto().await, "acme", &fresh)
            .await
            .unwrap(),
        b"and back"
    );
    drop(replicas);
    db.finish().await;
}

async fn listener_pids(db: &TestDb, replica_id: &str) -> Vec<i32> {
    let mut conn = db.raw().await;
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
    )
    .bind(format!("keyward-listener-{replica_id}"))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    pids
}

async fn wait_for_listener(db: &TestDb, replica_id: &str, except: &[i32]) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(pid) = listener_pids(db, replica_id)
            .await
            .into_iter()
            .find(|pid| !except.contains(pid))
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "replica {replica_id} has no listener connection after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_listener_is_cut_during_a_revocation_catches_up_on_reconnect() {
    let db = TestDb::create().await;
    let mut deployment = Deployment::new();
    // Reconciliation only every 10 minutes: what B learns, it learns from its listener or from
    // the reconciliation right after the listener reconnects.
    let slow = [("KEYWARD_POSTGRES__RECONCILE_INTERVAL_SECONDS", "600")];
    let a = deployment.start(&db, "a", &slow);
    let b = deployment.start(&db, "b", &slow);
    let c = deployment.start(&db, "c", &slow);
    a.onboard("acme").await;
    let envelope = encrypt(&a, "acme", b"warm").await.unwrap();
    let mut on_b = b.crypto().await;
    assert_eq!(
        decrypt(&mut on_b, "acme", &envelope).await.unwrap(),
        b"warm"
    );

    let old = wait_for_listener(&db, "b", &[]).await;
    wait_for_listener(&db, "c", &[]).await;
    // Cut B's listener and revoke through A at once: the notification is sent while B is
    // reconnecting, so B can only learn it from the reconciliation after the reconnect.
    let mut conn = db.raw().await;
    let terminated: Vec<bool> = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(terminated, vec![true]);
    revoke(&a, "acme").await;
    let returned = Instant::now();

    let new = wait_for_listener(&db, "b", &[old]).await;
    let reconnected = Instant::now();
    println!(
        "B's listener reconnected (pid {old} -> {new}) {:?} after the revocation",
        reconnected - returned
    );
    // B reconciles right after its listener reconnected: from then, the bound of a push.
    let to_b = first_denial(&b, "acme", &envelope, reconnected, support::bound::push()).await;
    let to_c = first_denial(&c, "acme", &envelope, returned, support::bound::push()).await;
    println!("B (listener cut) denied after {to_b:?}, C after {to_c:?}");
    // After the reconnect B never serves the tenant again.
    for _ in 0..50 {
        let status = decrypt(&mut on_b, "acme", &envelope).await.unwrap_err();
        assert!(is_revoked(&status), "{status:?}");
        let status = encrypt(&b, "acme", b"x").await.unwrap_err();
        assert!(is_revoked(&status), "{status:?}");
    }
    drop((a, b, c));
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_store_is_gone() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let db = TestDb::create().await;
    let mut deployment = Deployment::new();
    let a = deployment.start(
        &db,
        "a",
        &[("KEYWARD_POSTGRES__HEALTH_CHECK_INTERVAL_SECONDS", "1")],
    );
    let mut health = HealthClient::new(a.channel().await);
    let status = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    let serving = health
        .check(status("keyward.v1.CryptoService"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(serving, ServingStatus::Serving as i32);

    // The database disappears (its connections are terminated and it no longer exists).
    db.drop_database().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let crypto = health
            .check(status("keyward.v1.CryptoService"))
            .await
            .unwrap()
            .into_inner()
            .status;
        let overall = health.check(status("")).await.unwrap().into_inner().status;
        if crypto == ServingStatus::NotServing as i32 && overall == ServingStatus::NotServing as i32
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health still SERVING 20 s after the store went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn an_invalid_store_url_is_a_precise_config_error() {
    let data = tempfile::tempdir().unwrap();
    for (store, expected) in [
        ("mysql://x@y/z", "is neither"),
        (
            "postgres://user:secret@host:notaport/db",
            "invalid PostgreSQL URL",
        ),
        ("postgres://user@host:5432", "names no database"),
    ] {
        let out = std::process::Command::new(support::keyward_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("KEYWARD_STORE", store)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{store}: {stderr}");
        assert!(stderr.contains(expected), "{store}: {stderr}");
        assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    }
}

/// Issue #16: a new key registered on one replica after a revocation serves new data on every
/// replica at once (the registration is announced like a state change), while the data under the
/// revoked binding stays refused everywhere. Reconciliation is slowed down to ten minutes, so
/// only the notification can have reopened B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_registered_after_a_revocation_reaches_every_replica_for_new_data_only() {
    let db = TestDb::create().await;
    let mut deployment = Deployment::new();
    let slow = [("KEYWARD_POSTGRES__RECONCILE_INTERVAL_SECONDS", "600")];
    let a = deployment.start(&db, "a", &slow);
    let b = deployment.start(&db, "b", &slow);
    a.onboard("acme").await;
    let old = encrypt(&a, "acme", b"under the first key").await.unwrap();
    let mut on_b = b.crypto().await;
    decrypt(&mut on_b, "acme", &old).await.unwrap();
    wait_for_listener(&db, "b", &[]).await;
    revoke(&a, "acme").await;
    first_denial(&b, "acme", &old, Instant::now(), support::bound::push()).await;

    // The customer's new key, registered through A.
    let kms = deployment.shared.path().join("local-kms");
    let (ok, _, err) = a.cli(
        &[
            "key",
            "create",
            "second",
            "--local-kms-dir",
            kms.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{err}");
    a.tenants()
        .await
        .register_key(local_key("acme", "second"))
        .await
        .unwrap();
    let registered = Instant::now();

    // B serves new data within the bound of a push, far below the reconciliation interval...
    let new = support::bound::eventually(registered, support::bound::push(), || async {
        let result = encrypt(&b, "acme", b"under the second key").await;
        if let Err(status) = &result {
            assert!(is_revoked(status), "{status:?}");
        }
        result
    })
    .await;
    println!(
        "B served the new key {:?} after its registration",
        registered.elapsed()
    );
    let mut on_a = a.crypto().await;
    assert_eq!(
        decrypt(&mut on_a, "acme", &new).await.unwrap(),
        b"under the second key"
    );
    // ... and neither replica reopens the data under the revoked binding.
    for client in [&mut on_a, &mut on_b] {
        let status = decrypt(client, "acme", &old).await.unwrap_err();
        assert!(is_revoked(&status), "{status:?}");
    }
    drop((a, b));
    db.finish().await;
}

/// The value of the one series `name{labels}` in a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Issue #16: a tenant policy change on one replica drops the tenant's cached keys on every
/// replica (the `keyward_tenant_policy` notification), so a shortened TTL bounds them all at once
/// and not only the replica that handled the call. Reconciliation is slowed down to ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_policy_change_drops_the_tenants_cached_keys_on_every_replica() {
    let db = TestDb::create().await;
    let mut deployment = Deployment::new();
    let slow = [("KEYWARD_POSTGRES__RECONCILE_INTERVAL_SECONDS", "600")];
    let a = deployment.start(&db, "a", &slow);
    let b = deployment.start(&db, "b", &slow);
    a.onboard("acme").await;
    let envelope = encrypt(&a, "acme", b"cached on b").await.unwrap();
    let mut on_b = b.crypto().await;
    decrypt(&mut on_b, "acme", &envelope).await.unwrap();
    let resident = |server: &Server| {
        let (status, metrics) = server.admin_get("/metrics");
        assert_eq!(status, 200);
        sample(
            &metrics,
            r#"keyward_cache_resident_keys{cache="tenant_keys"}"#,
        )
        .unwrap()
    };
    // The gauge is the cache's entry count, which its housekeeping (every second) settles.
    let warm = Instant::now();
    while resident(&b) < 1.0 {
        assert!(
            warm.elapsed() < Duration::from_secs(5),
            "B never held the tenant key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_listener(&db, "b", &[]).await;

    a.tenants()
        .await
        .set_tenant_policy(pb::SetTenantPolicyRequest {
            tenant_id: "acme".into(),
            policy: Some(pb::TenantPolicy {
                cache_ttl_seconds: 30,
                monitor_interval_seconds: 0,
                auto_rekey: false,
                decrypt_purposes: Vec::new(),
            }),
            requested_by: "admin".into(),
        })
        .await
        .unwrap();
    let changed = Instant::now();
    while resident(&b) > 0.0 {
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "B still holds the tenant's keys {:?} after the policy change",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "B dropped the tenant's keys {:?} after the policy change",
        changed.elapsed()
    );
    // And serves again, under the new TTL.
    assert_eq!(
        decrypt(&mut on_b, "acme", &envelope).await.unwrap(),
        b"cached on b"
    );

    // The customer's justification rule (docs/justifications.md), set through A, binds B as
    // soon as B is told (B holds the tenant's rule, "none", from the decrypt above), and so
    // does its removal.
    let set_purposes = |purposes: Vec<i32>| pb::SetTenantPolicyRequest {
        tenant_id: "acme".into(),
        policy: Some(pb::TenantPolicy {
            decrypt_purposes: purposes,
            ..Default::default()
        }),
        requested_by: "admin".into(),
    };
    a.tenants()
        .await
        .set_tenant_policy(set_purposes(vec![pb::Purpose::LegalHold as i32]))
        .await
        .unwrap();
    let changed = Instant::now();
    loop {
        match decrypt(&mut on_b, "acme", &envelope).await {
            Err(status) if reason_of(&status) == "JUSTIFICATION_REQUIRED" => break,
            other => assert!(
                changed.elapsed() < Duration::from_secs(5),
                "B still serves without a justification {:?} after the rule: {other:?}",
                changed.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "B applied the rule {:?} after it was set",
        changed.elapsed()
    );
    a.tenants()
        .await
        .set_tenant_policy(set_purposes(Vec::new()))
        .await
        .unwrap();
    let changed = Instant::now();
    while let Err(status) = decrypt(&mut on_b, "acme", &envelope).await {
        assert_eq!(reason_of(&status), "JUSTIFICATION_REQUIRED");
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "B still applies a removed rule {:?} after its removal",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((a, b));
    db.finish().await;
}

// ----- crypto-shredding across replicas (issue #21) -------------------------------------------

fn reason_of(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

async fn seal_in(server: &Server, tenant: &str, scope: &str, plaintext: &[u8]) -> Vec<u8> {
    server
        .crypto()
        .await
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext: plaintext.to_vec(),
            encryption_context: ctx(),
            scope: scope.into(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scope_shredded_through_one_replica_is_refused_by_every_replica() {
    let db = TestDb::create().await;
    let mut deployment = Deployment::new();
    let replicas: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| deployment.start(&db, id, &[]))
        .collect();
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    a.onboard("acme").await;
    let gone = seal_in(a, "acme", "conv-1", b"delete this conversation").await;
    let kept = seal_in(b, "acme", "conv-2", b"keep this one").await;
    // Every replica holds both scopes' data keys in its cache.
    for server in &replicas {
        let mut client = server.crypto().await;
        assert_eq!(
            decrypt(&mut client, "acme", &gone).await.unwrap(),
            b"delete this conversation"
        );
        assert_eq!(
            decrypt(&mut client, "acme", &kept).await.unwrap(),
            b"keep this one"
        );
    }

    let answer = a
        .tenants()
        .await
        .shred_scope(pb::ShredScopeRequest {
            tenant_id: "acme".into(),
            scope: "conv-1".into(),
            reason: "data subject request 12".into(),
            requested_by: "dpo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let returned = Instant::now();
    assert_eq!(answer.deks_shredded, 1);

    // The replica that shredded refuses at once, with the shred's own reason and time.
    let status = decrypt(&mut a.crypto().await, "acme", &gone)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason_of(&status), "DATA_KEY_SHREDDED");
    let info = status.get_details_error_info().unwrap();
    let at = answer.shredded_at.unwrap();
    assert_eq!(
        info.metadata["shredded_at_ms"],
        (at.seconds * 1000 + i64::from(at.nanos) / 1_000_000).to_string()
    );
    // The others within the push bound (LISTEN/NOTIFY; their cached copies are dropped).
    let bound = support::bound::push();
    let ((at_b, to_b), (at_c, to_c)) = tokio::join!(
        first_refusal(b, "acme", &gone, returned, bound),
        first_refusal(c, "acme", &gone, returned, bound),
    );
    for status in [at_b, at_c] {
        assert_eq!(reason_of(&status), "DATA_KEY_SHREDDED", "{status:?}");
    }
    println!("shred through A reached B after {to_b:?}, C after {to_c:?}");

    // The tenant's other scope keeps working everywhere; the shredded scope takes new data.
    let fresh = seal_in(b, "acme", "conv-1", b"a new conversation").await;
    for server in &replicas {
        let mut client = server.crypto().await;
        assert_eq!(
            decrypt(&mut client, "acme", &kept).await.unwrap(),
            b"keep this one"
        );
        assert_eq!(
            decrypt(&mut client, "acme", &fresh).await.unwrap(),
            b"a new conversation"
        );
        let status = decrypt(&mut client, "acme", &gone).await.unwrap_err();
        assert_eq!(reason_of(&status), "DATA_KEY_SHREDDED");
    }

    // The signed chain verifies and names the shred with its count.
    let dir = tempfile::tempdir().unwrap();
    let verified = a.verify_audit_chain(dir.path());
    println!("{verified}");
    let store = PostgresStore::connect(&db.url, Default::default())
        .await
        .unwrap();
    let shreds = store
        .audit_records(
            &AuditQuery::default()
                .with_tenant("acme".try_into().unwrap())
                .with_event_type("scope_shredded"),
        )
        .await
        .unwrap();
    assert_eq!(shreds.len(), 1);
    assert!(matches!(
        shreds[0].event(),
        keyward_store::AuditEvent::ScopeShredded { deks: 1, .. }
    ));
    store.close().await;
    let (ok, out, err) = a.cli(&["audit", "report", "--tenant", "acme"], b"");
    assert!(ok, "{err}");
    let report = String::from_utf8(out).unwrap();
    assert!(
        report.contains("Crypto-shredding: 1 scope shredded, 1 data key destroyed"),
        "{report}"
    );
    assert!(report.contains("data subject request 12"), "{report}");
    db.drop_database().await;
}
