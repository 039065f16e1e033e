//! A KMS outage seen by the real `keyward` binary: its (unmodified) AWS SDK talks to moto through
//! the fault-injecting proxy (`keyward_test_support::aws::FaultProxy`), which resets and then
//! black-holes every request for the outage.
//!
//! What must hold (PRODUCT.md, "Revocation: the promise"; docs/revocation.md, "KMS outage"):
//! a warm tenant keeps serving until its cache TTL, then fails `UNAVAILABLE`; a cold tenant
//! fails `UNAVAILABLE` within the configured call budget; nothing is revoked or purged (the
//! monitor marks the binding unavailable, never revoked); the KMS call count stays bounded (no
//! retry storm); and once the KMS answers again everything recovers.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use keyward_audit::{AuditEvent, KeyState};
use keyward_proto::v1 as pb;
use keyward_store::{AuditQuery, Store as _, sqlite::SqliteStore};
use keyward_test_support::aws::{Fault, FaultProxy, MotoServer};
use support::{Server, assert_status, context};
use tonic::Code;

const TTL: Duration = Duration::from_secs(6);
/// aws_kms.operation_timeout_ms below: the most one KMS call may take, retries included.
const BUDGET: Duration = Duration::from_millis(1000);
const MAX_ATTEMPTS: usize = 2;

fn env(kms: &str) -> Vec<(&'static str, String)> {
    [
        ("KEYWARD_AWS_KMS__ENDPOINT_URL", kms),
        ("KEYWARD_AWS_KMS__STS_ENDPOINT_URL", kms),
        ("KEYWARD_AWS_KMS__MAX_ATTEMPTS", "2"),
        ("KEYWARD_AWS_KMS__ATTEMPT_TIMEOUT_MS", "300"),
        ("KEYWARD_AWS_KMS__CONNECT_TIMEOUT_MS", "300"),
        ("KEYWARD_AWS_KMS__INITIAL_BACKOFF_MS", "50"),
        ("KEYWARD_AWS_KMS__MAX_BACKOFF_MS", "200"),
        ("KEYWARD_AWS_KMS__OPERATION_TIMEOUT_MS", "1000"),
        ("KEYWARD_CACHE__TTL_SECONDS", "6"),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

fn start(dir: &Path, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_in(dir, &env)
}

async fn onboard_aws(server: &Server, tenant: &str, key_arn: &str) {
    let mut tenants = server.tenants().await;
    support::create_tenant(&mut tenants, tenant).await;
    tenants
        .register_key(pb::RegisterKeyRequest {
            tenant_id: tenant.into(),
            key: Some(pb::register_key_request::Key::AwsKms(pb::AwsKmsKey {
                key_arn: key_arn.into(),
                role_arn: String::new(),
                external_id: String::new(),
            })),
        })
        .await
        .unwrap();
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
            encryption_context: context(&[("conversation", "7")]),
            scope: String::new(),
            justification: None,
        })
        .await
        .map(|r| r.into_inner().envelope)
}

async fn decrypt(server: &Server, tenant: &str, envelope: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    server
        .crypto()
        .await
        .decrypt(pb::DecryptRequest {
            tenant_id: tenant.into(),
            envelope: envelope.to_vec(),
            encryption_context: context(&[("conversation", "7")]),
            justification: None,
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

async fn key_state(server: &Server, tenant: &str) -> pb::KekState {
    server
        .tenants()
        .await
        .get_tenant(pb::GetTenantRequest {
            tenant_id: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .active_key
        .unwrap()
        .state()
}

/// `UNAVAILABLE` / `KMS_UNAVAILABLE`: an outage, never `KEY_REVOKED` or `KEY_REFUSED`.
#[track_caller]
fn assert_unavailable(result: Result<Vec<u8>, tonic::Status>) {
    assert_status(result, Code::Unavailable, "KMS_UNAVAILABLE");
}

/// Times a call that must fail `UNAVAILABLE` within the KMS call budget.
async fn fails_fast<F: Future<Output = Result<Vec<u8>, tonic::Status>>>(call: F) -> Duration {
    let started = Instant::now();
    let result = call.await;
    let elapsed = started.elapsed();
    assert_unavailable(result);
    // One KMS call's budget, plus the gRPC round trip on a loaded CI machine (the stated
    // scheduling slack, support::bound).
    assert!(
        elapsed < BUDGET + support::bound::SCHEDULING_SLACK,
        "failed only after {elapsed:?}"
    );
    elapsed
}

#[tokio::test]
async fn a_kms_outage_keeps_warm_tenants_serving_until_the_ttl_and_revokes_nothing() {
    let moto = MotoServer::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    let env = env(&proxy.endpoint);
    let dir = tempfile::tempdir().unwrap();

    // Two tenants with their own keys, each with an envelope.
    let (warm_key, cold_key) = (
        moto.create_symmetric_key().await,
        moto.create_symmetric_key().await,
    );
    let server = start(dir.path(), &env);
    onboard_aws(&server, "warm", &warm_key).await;
    onboard_aws(&server, "cold", &cold_key).await;
    let warm_env = encrypt(&server, "warm", b"warm prompt").await.unwrap();
    let cold_env = encrypt(&server, "cold", b"cold prompt").await.unwrap();
    // A restart empties the caches; then only "warm" is used (its tenant key unwrapped).
    server.kill_9();
    let server = start(dir.path(), &env);
    let warmed = Instant::now();
    assert_eq!(
        decrypt(&server, "warm", &warm_env).await.unwrap(),
        b"warm prompt"
    );
    encrypt(&server, "warm", b"warm again").await.unwrap();
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let audit_before = store.audit_head().await.unwrap().seq;

    // ---- The outage: connections reset. --------------------------------------------------
    proxy.set(Fault::Reset);
    proxy.clear();
    let outage = Instant::now();

    // The cold tenant fails fast, UNAVAILABLE, for both directions.
    let t = fails_fast(decrypt(&server, "cold", &cold_env)).await;
    eprintln!("cold decrypt under resets failed in {t:?}");
    fails_fast(encrypt(&server, "cold", b"x")).await;

    // ---- Then the KMS black-holes requests (accepted, never answered). --------------------
    proxy.set(Fault::Stall);
    let t = fails_fast(decrypt(&server, "cold", &cold_env)).await;
    eprintln!("cold decrypt under a stall failed in {t:?}");

    // Twenty concurrent cold requests: single-flight and bounded retries, no storm.
    let before = proxy.count_op("Decrypt");
    let window = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (addr, envelope) = (server.endpoint(), cold_env.clone());
        set.spawn(async move {
            let channel = tonic::transport::Channel::from_shared(addr)
                .unwrap()
                .connect()
                .await
                .unwrap();
            pb::crypto_service_client::CryptoServiceClient::new(channel)
                .decrypt(pb::DecryptRequest {
                    tenant_id: "cold".into(),
                    envelope,
                    encryption_context: context(&[("conversation", "7")]),
                    justification: None,
                })
                .await
                .map(|r| r.into_inner().plaintext)
        });
    }
    for result in set.join_all().await {
        assert_unavailable(result);
    }
    let burst_calls = proxy.count_op("Decrypt") - before;
    let window_s = window.elapsed().as_secs() as usize + 1;
    // 20 requests × 2 attempts would be 40; the monitor adds ≤ 2 tenants × 2 attempts per second.
    let bound = 20 * MAX_ATTEMPTS / 2 + 2 * MAX_ATTEMPTS * window_s;
    eprintln!("20 concurrent cold decrypts: {burst_calls} KMS requests (bound {bound})");
    assert!(
        burst_calls <= bound,
        "{burst_calls} KMS requests for 20 cold requests"
    );

    // The warm tenant keeps serving, both ways, until its TTL; then UNAVAILABLE.
    // The KMS vouched for the warm key after `warmed` (the unwrap's TTL runs from before the
    // call) and for the last time before `outage`: nothing sent a TTL after the outage began is
    // served, and nothing fails before a TTL after `warmed`.
    let served = std::cell::Cell::new(0usize);
    let (status, sent) =
        support::bound::stops_serving(outage, support::bound::ttl(TTL), || async {
            let n = served.get();
            let result = match n % 2 {
                0 => decrypt(&server, "warm", &warm_env).await,
                _ => encrypt(&server, "warm", b"during the outage").await,
            };
            if result.is_ok() {
                served.set(n + 1);
            }
            result
        })
        .await;
    let (failed, served) = (Instant::now(), served.get());
    eprintln!(
        "warm tenant served {served} requests; the first refused was sent {sent:?} into the \
         outage, {:?} after its key was unwrapped (TTL {TTL:?})",
        failed - warmed
    );
    assert!(served >= 5, "only {served} requests served from the cache");
    assert!(
        failed >= warmed + TTL,
        "stopped serving {:?} after the unwrap, before the TTL",
        failed - warmed
    );
    assert_unavailable(Err(status));
    fails_fast(decrypt(&server, "warm", &warm_env)).await;
    fails_fast(encrypt(&server, "warm", b"x")).await;

    // Nothing was revoked: the bindings are active or unavailable (the monitor saw the outage),
    // and the audit log has no revocation and no purge.
    for tenant in ["warm", "cold"] {
        let state = key_state(&server, tenant).await;
        assert!(
            matches!(state, pb::KekState::Active | pb::KekState::Unavailable),
            "{tenant}: {state:?}"
        );
    }
    let during = store
        .audit_records(&AuditQuery::default().with_after_seq(audit_before))
        .await
        .unwrap();
    let mut marked_unavailable = 0;
    for record in &during {
        match record.event() {
            AuditEvent::RevocationStateChanged(t) => {
                assert_eq!(t.to, KeyState::Unavailable, "{:?}", record.event());
                marked_unavailable += 1;
            }
            AuditEvent::KeysPurged { .. } | AuditEvent::Restored(_) => {
                panic!("unexpected during the outage: {:?}", record.event())
            }
            _ => {}
        }
    }
    eprintln!("monitor marked {marked_unavailable} binding(s) unavailable");
    assert!(
        marked_unavailable >= 1,
        "the monitor did not notice the outage"
    );

    // Bounded KMS traffic over the whole outage: the monitor (2 tenants, 1 s interval), the
    // requests that missed the cache, each at most MAX_ATTEMPTS — no retry storm.
    let outage_s = outage.elapsed().as_secs() as usize + 1;
    let total = proxy.count();
    let bound = MAX_ATTEMPTS * (2 * outage_s + 10) + burst_calls;
    eprintln!("KMS requests during a {outage_s} s outage: {total} (bound {bound})");
    assert!(total <= bound, "{total} KMS requests during the outage");

    // ---- The KMS is back: everything recovers. ---------------------------------------------
    proxy.set(Fault::PassThrough);
    assert_eq!(
        decrypt(&server, "warm", &warm_env).await.unwrap(),
        b"warm prompt"
    );
    assert_eq!(
        decrypt(&server, "cold", &cold_env).await.unwrap(),
        b"cold prompt"
    );
    let fresh = encrypt(&server, "cold", b"after").await.unwrap();
    assert_eq!(decrypt(&server, "cold", &fresh).await.unwrap(), b"after");
    // The monitor restores the unavailable bindings to active.
    let since = Instant::now();
    for tenant in ["warm", "cold"] {
        support::bound::eventually(
            since,
            support::bound::monitor(Duration::from_secs(1)),
            || async {
                match key_state(&server, tenant).await {
                    pb::KekState::Active => Ok(()),
                    other => Err(other),
                }
            },
        )
        .await;
    }
    let after = store
        .audit_records(&AuditQuery::default().with_after_seq(audit_before))
        .await
        .unwrap();
    assert!(
        after.iter().all(|r| match r.event() {
            AuditEvent::RevocationStateChanged(t) => t.to == KeyState::Unavailable,
            AuditEvent::Restored(t) => t.to == KeyState::Active,
            AuditEvent::KeysPurged { .. } => false,
            _ => true,
        }),
        "a revocation or purge was recorded"
    );
}

#[tokio::test]
async fn the_kms_quota_caps_a_burst_of_cold_registrations() {
    let moto = MotoServer::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    let key = moto.create_symmetric_key().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &env(&proxy.endpoint));
    onboard_aws(&server, "t0", &key).await;
    let envelope = encrypt(&server, "t0", b"quota").await.unwrap();
    server.kill_9();

    let mut env = env(&proxy.endpoint);
    env.extend([
        ("KEYWARD_KMS_QUOTA__REQUESTS_PER_SECOND", "5".to_owned()),
        ("KEYWARD_KMS_QUOTA__BURST", "4".to_owned()),
        ("KEYWARD_KMS_QUOTA__MAX_WAIT_MS", "1000".to_owned()),
        // No monitor: only the burst below calls the KMS.
        (
            "KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS",
            "0".to_owned(),
        ),
    ]);
    // A fresh process: empty caches and a full bucket.
    let server = start(dir.path(), &env);
    proxy.clear();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(decrypt(&server, "t0", &envelope).await.map(drop));
    }
    // Cached after the first: one KMS request.
    assert!(outcomes.iter().all(Result::is_ok));
    assert_eq!(proxy.count_op("Decrypt"), 1);

    // Each registration is four KMS calls on the same key (DescribeKey twice, GenerateDataKey,
    // Decrypt): ten at once want 40, the quota allows 4 + 5 per second with waits ≤ 1 s.
    let mut set = tokio::task::JoinSet::new();
    for i in 1..=10 {
        let (addr, key) = (server.endpoint(), key.clone());
        set.spawn(async move {
            let channel = tonic::transport::Channel::from_shared(addr)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel);
            tenants
                .create_tenant(pb::CreateTenantRequest {
                    tenant_id: format!("t{i}"),
                    display_name: String::new(),
                })
                .await
                .unwrap();
            tenants
                .register_key(pb::RegisterKeyRequest {
                    tenant_id: format!("t{i}"),
                    key: Some(pb::register_key_request::Key::AwsKms(pb::AwsKmsKey {
                        key_arn: key,
                        role_arn: String::new(),
                        external_id: String::new(),
                    })),
                })
                .await
                .map(drop)
        });
    }
    let mut refused = 0;
    for result in set.join_all().await {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            refused += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let seen = proxy.seen();
    eprintln!(
        "quota 5/s burst 4: {} KMS requests in {elapsed:.2} s, {refused} of 10 registrations \
         refused",
        seen.len()
    );
    assert!(refused > 0, "the quota never refused");
    // At no point did the KMS see more than burst + rate × time (+1 for timing slack).
    let first = seen[0].at;
    for (i, s) in seen.iter().enumerate() {
        let allowed = 4.0 + 5.0 * (s.at - first).as_secs_f64() + 1.0;
        assert!(
            (i + 1) as f64 <= allowed,
            "request {} reached the KMS {:?} after the first",
            i + 1,
            s.at - first
        );
    }
}
