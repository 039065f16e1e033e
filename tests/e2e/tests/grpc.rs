//! The real `keyward` binary over gRPC: round trips, every documented error,
//! tenant isolation and revocation through a disabled local key.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod support;

use std::time::{Duration, Instant};

use keyward_proto::v1 as pb;
use keyward_store::sqlite::SqliteStore;
use support::{Server, assert_status, context, local_key};
use tonic::Code;

#[tokio::test]
async fn round_trip_health_and_tenant_view() {
    let server = Server::start(&[]);
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;

    let prompt = "Summarise the patient's history: ...".as_bytes().to_vec();
    let ctx = context(&[("conversation", "c-42"), ("purpose", "prompt")]);
    let enc = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: prompt.clone(),
            encryption_context: ctx.clone(),
            scope: "conversation-42".into(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enc.dek_id.len(), 32);
    assert!(
        !enc.envelope
            .windows(prompt.len())
            .any(|w| w == prompt.as_slice())
    );
    let dec = crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "acme".into(),
            envelope: enc.envelope.clone(),
            encryption_context: ctx,
            justification: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dec.plaintext, prompt);

    // Empty plaintext and empty context are fine too.
    let enc = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dec = crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "acme".into(),
            envelope: enc.envelope,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dec.plaintext.is_empty());

    let tenant = server
        .tenants()
        .await
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let key = tenant.active_key.unwrap();
    assert_eq!(key.provider(), pb::ProviderKind::Local);
    assert_eq!(key.key_ref, "default");
    assert_eq!(key.state(), pb::KekState::Active);

    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keyward.v1.CryptoService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// `envelope.write_suite = 1` (a rolling upgrade from builds that read only suite 0x0001): the
/// server seals in suite 0x0001 and still reads 0x0002 envelopes, here one written by a server
/// on its default on the same data directory; a suite it does not implement stops the start.
#[tokio::test]
async fn the_write_suite_comes_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let newest = Server::start_in(dir.path(), &[]);
    newest.onboard("acme").await;
    let decrypt_2 = support::round_trip(&newest, "acme", b"suite 2").await;
    let suite = |d: &pb::DecryptRequest| {
        keyward_envelope::parse(&d.envelope)
            .unwrap()
            .header()
            .suite()
            .id()
    };
    assert_eq!(suite(&decrypt_2), 2);
    drop(newest);

    let oldest = Server::start_in(dir.path(), &[("KEYWARD_ENVELOPE__WRITE_SUITE", "1")]);
    let decrypt_1 = support::round_trip(&oldest, "acme", b"suite 1").await;
    assert_eq!(suite(&decrypt_1), 1);
    let mut crypto = oldest.crypto().await;
    let opened = crypto.decrypt(decrypt_2).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"suite 2");
    drop(oldest);

    let stderr = support::serve_fails(
        &["--listen", "127.0.0.1:0"],
        &[("KEYWARD_ENVELOPE__WRITE_SUITE", "3")],
    );
    assert!(stderr.contains("envelope.write_suite is 3"), "{stderr}");
}

#[tokio::test]
async fn reflection_lists_the_api() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = Server::start(&[]);
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "keyward.v1.CryptoService",
        "keyward.v1.TenantService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_documented_status_and_changes_nothing() {
    let server = Server::start(&[("KEYWARD_MAX_PLAINTEXT_BYTES", "4096")]);
    server.onboard("tenant-a").await;
    server.onboard("tenant-b").await;
    let mut tenants = server.tenants().await;
    support::create_tenant(&mut tenants, "keyless").await;
    let mut crypto = server.crypto().await;
    let ctx = context(&[("conversation", "7")]);
    let good = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "tenant-a".into(),
            plaintext: b"hello".to_vec(),
            encryption_context: ctx.clone(),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope;

    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let before = support::domain_state(&store).await;
    let audit_before = keyward_store::Store::audit_head(&store).await.unwrap().seq;

    let encrypt =
        |tenant: &str, plaintext: Vec<u8>, ctx: &[(&str, &str)], scope: &str| pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext,
            encryption_context: context(ctx),
            scope: scope.into(),
            justification: None,
        };
    let decrypt =
        |tenant: &str, envelope: Vec<u8>, ctx: &std::collections::HashMap<String, String>| {
            pb::DecryptRequest {
                tenant_id: tenant.into(),
                envelope,
                encryption_context: ctx.clone(),
                justification: None,
            }
        };

    // Encrypt.
    assert_status(
        crypto
            .encrypt(encrypt("Bad Tenant!", vec![1], &[], ""))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        crypto.encrypt(encrypt("", vec![1], &[], "")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        crypto.encrypt(encrypt("nobody", vec![1], &[], "")).await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
    assert_status(
        crypto.encrypt(encrypt("keyless", vec![1], &[], "")).await,
        Code::FailedPrecondition,
        "NO_KEY_REGISTERED",
    );
    assert_status(
        crypto
            .encrypt(encrypt("tenant-a", vec![0; 4097], &[], ""))
            .await,
        Code::InvalidArgument,
        "PAYLOAD_TOO_LARGE",
    );
    assert_status(
        crypto
            .encrypt(encrypt("tenant-a", vec![1], &[("keyward:tenant", "x")], ""))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        crypto
            .encrypt(encrypt("tenant-a", vec![1], &[], "bad\nscope"))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let huge_value = "v".repeat(20_000);
    assert_status(
        crypto
            .encrypt(encrypt("tenant-a", vec![1], &[("k", &huge_value)], ""))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // Far beyond the configured limit, the transport itself refuses.
    let status = crypto
        .encrypt(encrypt("tenant-a", vec![0; 200_000], &[], ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Decrypt.
    assert_status(
        crypto
            .decrypt(decrypt("tenant-a", b"not an envelope".to_vec(), &ctx))
            .await,
        Code::InvalidArgument,
        "MALFORMED_ENVELOPE",
    );
    assert_status(
        crypto
            .decrypt(decrypt("tenant-a", good[..10].to_vec(), &ctx))
            .await,
        Code::InvalidArgument,
        "MALFORMED_ENVELOPE",
    );
    assert_status(
        crypto.decrypt(decrypt("tenant-a", Vec::new(), &ctx)).await,
        Code::InvalidArgument,
        "MALFORMED_ENVELOPE",
    );
    let mut future_version = good.clone();
    future_version[2] = 99;
    assert_status(
        crypto
            .decrypt(decrypt("tenant-a", future_version, &ctx))
            .await,
        Code::InvalidArgument,
        "UNSUPPORTED_ENVELOPE",
    );
    assert_status(
        crypto
            .decrypt(decrypt(
                "tenant-a",
                good.clone(),
                &context(&[("conversation", "8")]),
            ))
            .await,
        Code::InvalidArgument,
        "DECRYPT_FAILED",
    );
    assert_status(
        crypto
            .decrypt(decrypt("tenant-a", good.clone(), &context(&[])))
            .await,
        Code::InvalidArgument,
        "DECRYPT_FAILED",
    );
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_status(
        crypto.decrypt(decrypt("tenant-a", tampered, &ctx)).await,
        Code::InvalidArgument,
        "DECRYPT_FAILED",
    );
    // Cross-tenant: tenant B presenting A's envelope, as is and with the header forged.
    assert_status(
        crypto
            .decrypt(decrypt("tenant-b", good.clone(), &ctx))
            .await,
        Code::InvalidArgument,
        "TENANT_MISMATCH",
    );
    let pos = good.windows(8).position(|w| w == b"tenant-a").unwrap();
    let mut forged = good.clone();
    forged[pos..pos + 8].copy_from_slice(b"tenant-b");
    assert_status(
        crypto.decrypt(decrypt("tenant-b", forged, &ctx)).await,
        Code::NotFound,
        "DATA_KEY_NOT_FOUND",
    );
    assert_status(
        crypto.decrypt(decrypt("nobody", good.clone(), &ctx)).await,
        Code::InvalidArgument,
        "TENANT_MISMATCH",
    );

    // Onboarding.
    assert_status(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: "tenant-a".into(),
                display_name: String::new(),
            })
            .await,
        Code::AlreadyExists,
        "TENANT_ALREADY_EXISTS",
    );
    assert_status(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: "UPPER".into(),
                display_name: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: "named".into(),
                display_name: "a\u{0}b".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        tenants.register_key(local_key("nobody", "default")).await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
    assert_status(
        tenants
            .register_key(local_key("keyless", "no-such-key"))
            .await,
        Code::FailedPrecondition,
        "KEY_NOT_FOUND",
    );
    assert_status(
        tenants
            .register_key(local_key("keyless", "../../etc/passwd"))
            .await,
        Code::FailedPrecondition,
        "KEY_MISCONFIGURED",
    );
    assert_status(
        tenants
            .register_key(pb::RegisterKeyRequest {
                tenant_id: "keyless".into(),
                key: None,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_status(
        tenants
            .get_tenant(pb::GetTenantRequest {
                tenant_id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );

    assert_eq!(
        support::domain_state(&store).await,
        before,
        "a rejected request changed the store"
    );
    // Only the failed key registrations were recorded, as audit records.
    assert_eq!(
        support::audit_types_since(&store, audit_before).await,
        vec!["key_registration_attempted:failed"; 2]
    );

    // And the good envelope still decrypts.
    let ok = crypto
        .decrypt(decrypt("tenant-a", good, &ctx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.plaintext, b"hello");
}

#[tokio::test]
async fn disabling_the_local_key_stops_decrypt_within_the_cache_ttl() {
    // The GHSA-w736-hf9p-qqh3 regression: with the key-state monitor off, the
    // cache TTL alone bounds how long anything is served after the KMS refuses.
    const TTL: Duration = Duration::from_secs(2);
    let server = Server::start(&[
        ("KEYWARD_CACHE__TTL_SECONDS", "2"),
        ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "0"),
    ]);
    server.onboard("acme").await;
    let mut crypto = server.crypto().await;
    let ctx = context(&[("conversation", "1")]);
    let envelope = crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: b"secret prompt".to_vec(),
            encryption_context: ctx.clone(),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope;
    let request = || pb::DecryptRequest {
        tenant_id: "acme".into(),
        envelope: envelope.clone(),
        encryption_context: ctx.clone(),
        justification: None,
    };
    crypto.decrypt(request()).await.unwrap();

    // The customer disables the key, through the real CLI in another process.
    let kms_dir = server.local_kms_dir();
    let (ok, _, stderr) = server.cli(
        &[
            "key",
            "disable",
            "default",
            "--local-kms-dir",
            kms_dir.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{stderr}");
    let disabled_at = Instant::now();

    // The KMS last vouched for the key before `disabled_at`: no decrypt sent a TTL later is
    // served (support::bound::ttl: the TTL plus the cache clock's granularity, no scheduling).
    let (status, sent) =
        support::bound::stops_serving(disabled_at, support::bound::ttl(TTL), || {
            let mut crypto = crypto.clone();
            let request = request();
            async move { crypto.decrypt(request).await }
        })
        .await;
    eprintln!(
        "revocation window observed: the first refused decrypt was sent {sent:?} after the key was disabled"
    );
    assert_status(
        Err::<(), _>(status),
        Code::FailedPrecondition,
        "KEY_REFUSED",
    );
    // Recorded as a revocation: later calls fail fast, without the KMS.
    assert_status(
        crypto
            .encrypt(pb::EncryptRequest {
                tenant_id: "acme".into(),
                plaintext: b"more".to_vec(),
                encryption_context: ctx.clone(),
                scope: "other".into(),
                justification: None,
            })
            .await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
    let tenant = server
        .tenants()
        .await
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenant.active_key.unwrap().state(), pb::KekState::Revoked);

    // Re-enabled at the "KMS", then restored (the monitor is off here).
    let (ok, _, stderr) = server.cli(
        &[
            "key",
            "enable",
            "default",
            "--local-kms-dir",
            kms_dir.to_str().unwrap(),
        ],
        b"",
    );
    assert!(ok, "{stderr}");
    assert_status(
        crypto.decrypt(request()).await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
    let (ok, _, stderr) = server.cli(
        &[
            "tenant",
            "restore-key",
            "acme",
            "--reason",
            "key re-enabled",
        ],
        b"",
    );
    assert!(ok, "{stderr}");
    let again = crypto.decrypt(request()).await.unwrap().into_inner();
    assert_eq!(again.plaintext, b"secret prompt");
}
