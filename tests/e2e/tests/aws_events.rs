//! `[aws_events]` end to end: the real `keyward` binary long-polls an SQS queue of moto (which
//! serves SQS and KMS on one port) fed with KMS management events shaped exactly as CloudTrail
//! delivers them through EventBridge (keyward_test_support::aws::DISABLE_KEY_EVENT). The key-state
//! monitor is off and the cache TTL long, so only an event can close a tenant before its TTL.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::time::{Duration, Instant};

use keyward_proto::v1 as pb;
use keyward_test_support::aws::{ACCOUNT, Fault, FaultProxy, MotoServer, kms_event};
use support::{Server, assert_status, context};
use tonic::Code;

/// A server on moto's KMS (through `kms_endpoint`) reading the queue at `queue_url` of `moto`,
/// with no monitor and the default 300 s cache TTL.
fn start(moto: &MotoServer, kms_endpoint: &str, queue_url: &str) -> Server {
    Server::start_with_aws(
        kms_endpoint,
        &[
            ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
            ("KEYWARD_AWS_EVENTS__QUEUE_URL", queue_url),
            ("KEYWARD_AWS_EVENTS__ENDPOINT_URL", &moto.endpoint),
            ("KEYWARD_AWS_EVENTS__REGION", "us-east-1"),
            // Short polls keep the test's shutdown quick; a message is received at once either way.
            ("KEYWARD_AWS_EVENTS__WAIT_SECONDS", "2"),
            ("KEYWARD_AWS_EVENTS__VISIBILITY_TIMEOUT_SECONDS", "1"),
        ],
    )
}

/// A tenant bound to `key_arn`, with one envelope.
async fn onboard(server: &Server, tenant: &str, key_arn: &str) -> Vec<u8> {
    let mut tenants = server.tenants().await;
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: tenant.into(),
            display_name: String::new(),
        })
        .await
        .unwrap();
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
    server
        .crypto()
        .await
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext: b"under the customer's key".to_vec(),
            encryption_context: context(&[("conversation", "1")]),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope
}

async fn decrypt(server: &Server, tenant: &str, envelope: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    server
        .crypto()
        .await
        .decrypt(pb::DecryptRequest {
            tenant_id: tenant.into(),
            envelope: envelope.to_vec(),
            encryption_context: context(&[("conversation", "1")]),
            justification: None,
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

/// Polls (every 20 ms, at most `limit`) until `decrypt` succeeds (`want_ok`) or fails; returns
/// the time it took and the last answer.
async fn until_decrypt(
    server: &Server,
    tenant: &str,
    envelope: &[u8],
    want_ok: bool,
    limit: Duration,
) -> (Duration, Result<Vec<u8>, tonic::Status>) {
    let since = Instant::now();
    loop {
        let answer = decrypt(server, tenant, envelope).await;
        if answer.is_ok() == want_ok || since.elapsed() > limit {
            return (since.elapsed(), answer);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the counter `name{labels}` on the server's /metrics (0 when absent).
fn counter(server: &Server, name: &str, labels: &str) -> u64 {
    let (status, body) = server.admin_get("/metrics");
    assert_eq!(status, 200);
    let prefix = format!("{name}{{{labels}}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits (at most 15 s) until `name{labels}` reaches `value` and the queue is empty (nothing
/// visible, nothing in flight).
async fn until_counted(
    server: &Server,
    moto: &MotoServer,
    queue: &str,
    name: &str,
    labels: &str,
    value: u64,
) {
    let since = Instant::now();
    loop {
        let seen = counter(server, name, labels);
        let depth = moto.queue_depth(queue).await;
        if seen >= value && depth == (0, 0) {
            assert_eq!(seen, value, "{name}{{{labels}}}");
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "after 15 s: {name}{{{labels}}} = {seen} (want {value}), queue (visible, in flight) = {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const HANDLED: &str = "keyward_key_event_messages_handled_total";
const REJECTED: &str = "keyward_key_event_messages_rejected_total";
const RECEIVED: &str = "keyward_key_event_messages_received_total";
const DEFERRED: &str = "keyward_key_event_messages_deferred_total";
const SOURCE: &str = "source=\"aws_events\"";

#[tokio::test]
async fn a_disable_key_event_revokes_within_two_seconds_and_an_enable_key_event_restores() {
    let moto = MotoServer::start();
    let key = moto.create_symmetric_key().await;
    let queue = moto.create_queue("keyward-key-events", 1).await;
    let server = start(&moto, &moto.endpoint, &queue);
    let envelope = onboard(&server, "acme", &key).await;

    // Disabled at the KMS: without the event, the cached key serves until its TTL (300 s).
    moto.disable_key(&key).await;
    decrypt(&server, "acme", &envelope).await.unwrap();

    let sent = Instant::now();
    moto.send_message(&queue, &kms_event("DisableKey", &key).to_string())
        .await;
    let (window, answer) =
        until_decrypt(&server, "acme", &envelope, false, Duration::from_secs(10)).await;
    eprintln!("DisableKey event: refused {window:?} after the send");
    assert_status(answer, Code::FailedPrecondition, "KEY_REVOKED");
    assert!(
        window <= Duration::from_secs(2),
        "refused only {:?} after the event was sent",
        sent.elapsed()
    );
    until_counted(&server, &moto, &queue, HANDLED, SOURCE, 1).await;

    // Re-enabled at the KMS: the EnableKey event restores the tenant the re-check revoked.
    moto.enable_key(&key).await;
    moto.send_message(&queue, &kms_event("EnableKey", &key).to_string())
        .await;
    let (window, answer) =
        until_decrypt(&server, "acme", &envelope, true, Duration::from_secs(10)).await;
    eprintln!("EnableKey event: served again {window:?} after the send");
    assert_eq!(answer.unwrap(), b"under the customer's key");
    assert!(window <= Duration::from_secs(2), "{window:?}");
    until_counted(&server, &moto, &queue, HANDLED, SOURCE, 2).await;
    assert_eq!(counter(&server, RECEIVED, SOURCE), 2);
}

#[tokio::test]
async fn refused_messages_are_counted_deleted_and_change_nothing_nor_does_a_working_key() {
    let moto = MotoServer::start();
    let key = moto.create_symmetric_key().await;
    let other_key = moto.create_symmetric_key().await;
    let queue = moto.create_queue("keyward-key-events", 1).await;
    let server = start(&moto, &moto.endpoint, &queue);
    let envelope = onboard(&server, "acme", &key).await;

    // An event for a key the KMS still accepts: re-checked, nothing changes.
    moto.send_message(&queue, &kms_event("DisableKey", &key).to_string())
        .await;
    until_counted(&server, &moto, &queue, HANDLED, SOURCE, 1).await;
    decrypt(&server, "acme", &envelope).await.unwrap();

    // From now on the key is disabled at the KMS, so any re-check would revoke the tenant: none
    // of the messages below may cause one.
    moto.disable_key(&key).await;
    let event = kms_event("DisableKey", &key);
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut e = event.clone();
        edit(&mut e);
        e.to_string()
    };
    let foreign_key = key.replace(ACCOUNT, "999988887777");
    let refused: Vec<(String, &str)> = vec![
        ("this is not JSON".into(), "not_json"),
        (with(&|e| e["source"] = "aws.s3".into()), "not_key_event"),
        (
            with(&|e| {
                e["detail"]["resources"] = serde_json::json!([]);
                e["detail"]["requestParameters"] = serde_json::json!({});
            }),
            "no_key",
        ),
        (
            kms_event("DisableKey", &other_key).to_string(),
            "unknown_key",
        ),
        (
            with(&|e| e["detail"]["padding"] = "x".repeat(100 * 1024).into()),
            "oversize",
        ),
        (
            // The customer's key, from another account's event bus.
            with(&|e| e["account"] = "999988887777".into()),
            "foreign_account",
        ),
        (
            // Another account's key, in this account's event.
            {
                let mut e = kms_event("DisableKey", &foreign_key);
                e["account"] = ACCOUNT.into();
                e.to_string()
            },
            "foreign_account",
        ),
        (
            with(&|e| e["detail"]["errorCode"] = "AccessDenied".into()),
            "failed_call",
        ),
        (
            with(&|e| e["detail"]["eventName"] = "Decrypt".into()),
            "unexpected_event",
        ),
    ];
    for (body, _) in &refused {
        moto.send_message(&queue, body).await;
    }
    let mut expected: Vec<(&str, u64)> = Vec::new();
    for (_, reason) in &refused {
        match expected.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => expected.push((reason, 1)),
        }
    }
    for (reason, n) in expected {
        until_counted(
            &server,
            &moto,
            &queue,
            REJECTED,
            &format!("{SOURCE},reason=\"{reason}\""),
            n,
        )
        .await;
    }
    assert_eq!(counter(&server, HANDLED, SOURCE), 1);
    assert_eq!(counter(&server, RECEIVED, SOURCE), 1 + refused.len() as u64);
    // Nothing was re-checked: the tenant still serves from its cached key.
    assert_eq!(
        decrypt(&server, "acme", &envelope).await.unwrap(),
        b"under the customer's key"
    );
}

#[tokio::test]
async fn during_a_kms_outage_the_event_stays_in_the_queue_and_is_handled_once_the_kms_answers() {
    let moto = MotoServer::start();
    // KMS through a proxy that can fail; SQS straight to moto.
    let proxy = FaultProxy::start(&moto.endpoint);
    let key = moto.create_symmetric_key().await;
    let queue = moto.create_queue("keyward-key-events", 1).await;
    let server = start(&moto, &proxy.endpoint, &queue);
    let envelope = onboard(&server, "acme", &key).await;

    moto.disable_key(&key).await;
    proxy.set(Fault::ServerError(503));
    moto.send_message(&queue, &kms_event("DisableKey", &key).to_string())
        .await;
    let since = Instant::now();
    while counter(
        &server,
        DEFERRED,
        &format!("{SOURCE},reason=\"kms_unavailable\""),
    ) == 0
    {
        assert!(since.elapsed() < Duration::from_secs(30), "never deferred");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No verdict, nothing revoked; the message was not deleted.
    assert_eq!(counter(&server, HANDLED, SOURCE), 0);
    decrypt(&server, "acme", &envelope).await.unwrap();

    // The KMS answers again: the redelivered message revokes the tenant.
    proxy.set(Fault::PassThrough);
    let (_, answer) =
        until_decrypt(&server, "acme", &envelope, false, Duration::from_secs(30)).await;
    assert_status(answer, Code::FailedPrecondition, "KEY_REVOKED");
    until_counted(&server, &moto, &queue, HANDLED, SOURCE, 1).await;
}

#[test]
fn onboarding_prints_the_eventbridge_rule_and_refuses_a_bad_queue_arn() {
    let queue = "arn:aws:sqs:eu-west-1:444455556666:keyward-key-events";
    let (code, out, err) = support::run_keyward(
        None,
        &[],
        &[
            "onboarding",
            "events",
            "--provider",
            "aws",
            "--queue-arn",
            queue,
            "--customer-account",
            "111122223333",
        ],
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    let out = String::from_utf8(out).unwrap();
    // The pattern, as passed to `aws events put-rule`, is JSON naming exactly the eight calls.
    let put_rule = out
        .lines()
        .find(|l| l.starts_with("aws events put-rule --region REGION"))
        .unwrap();
    let pattern = put_rule
        .split_once("--event-pattern '")
        .unwrap()
        .1
        .trim_end_matches('\'');
    let pattern: serde_json::Value = serde_json::from_str(pattern).unwrap();
    let mut names: Vec<&str> = pattern["detail"]["eventName"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "CancelKeyDeletion",
            "DeleteImportedKeyMaterial",
            "DisableKey",
            "EnableKey",
            "PutKeyPolicy",
            "RetireGrant",
            "RevokeGrant",
            "ScheduleKeyDeletion",
        ]
    );
    assert_eq!(pattern["source"], serde_json::json!(["aws.kms"]));
    for needle in [
        "aws events put-targets --region REGION --rule keyward-kms-key-events",
        "arn:aws:events:eu-west-1:444455556666:event-bus/default",
        "aws events put-permission --region eu-west-1",
        "aws sqs set-queue-attributes",
        queue,
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }

    let (code, out, err) = support::run_keyward(
        None,
        &[],
        &[
            "onboarding",
            "events",
            "--provider",
            "aws",
            "--queue-arn",
            "arn:aws:sns:eu-west-1:444455556666:topic",
        ],
        b"",
    );
    assert_ne!(code, Some(0));
    assert!(out.is_empty());
    assert!(
        err.contains("--queue-arn") && err.contains("names service 'sns', not sqs"),
        "{err}"
    );
}

/// What a flood costs (docs/threat-model.md, "Key events"): 100 junk messages and 100 events for
/// one bound key, queued before the server starts, are all drained; the junk causes no KMS call
/// and the events one KMS check per received batch (of up to 10), not one per event. The drain
/// time is printed (moto's ReceiveMessage scans the whole queue: ~0.7 s per call at 1,000
/// messages, so it measures the emulator more than Keyward).
#[tokio::test]
async fn a_flood_costs_one_kms_check_per_batch_and_junk_none() {
    let moto = MotoServer::start();
    let key = moto.create_symmetric_key().await;
    let queue = moto.create_queue("keyward-key-events", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("KEYWARD_AWS_KMS__ENDPOINT_URL", moto.endpoint.as_str()),
        ("KEYWARD_AWS_KMS__STS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
        ("KEYWARD_AWS_EVENTS__QUEUE_URL", queue.as_str()),
        ("KEYWARD_AWS_EVENTS__ENDPOINT_URL", moto.endpoint.as_str()),
        ("KEYWARD_AWS_EVENTS__REGION", "us-east-1"),
        ("KEYWARD_AWS_EVENTS__WAIT_SECONDS", "2"),
        // Refused messages are logged one line each: keep the test's output short.
        ("KEYWARD_LOG", "error"),
    ];
    let mut server = Server::start_in(dir.path(), &env);
    onboard(&server, "acme", &key).await;
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
    drop(server);

    let n = 100;
    for i in 0..n {
        moto.send_message(&queue, &format!("junk {i}")).await;
    }
    let event = kms_event("DisableKey", &key).to_string();
    for _ in 0..n {
        moto.send_message(&queue, &event).await;
    }
    let started = Instant::now();
    let server = Server::start_in(dir.path(), &env);
    until_counted(&server, &moto, &queue, RECEIVED, SOURCE, 2 * n).await;
    eprintln!(
        "{} queued messages drained {:?} after the server's start",
        2 * n,
        started.elapsed()
    );
    assert_eq!(
        counter(&server, REJECTED, &format!("{SOURCE},reason=\"not_json\"")),
        n
    );
    assert_eq!(counter(&server, HANDLED, SOURCE), n);
    let unwraps = counter(
        &server,
        "keyward_kms_calls_total",
        "provider=\"aws-kms\",operation=\"unwrap\",outcome=\"ok\"",
    );
    eprintln!("{n} events for one key: {unwraps} KMS checks");
    assert!(
        (n / 10..=n / 5).contains(&unwraps),
        "{unwraps} KMS checks for {n} events in batches of 10"
    );
}
