//! The real `keyward` binary with a customer key in an AWS-KMS-compatible
//! emulator (moto, patched to enforce key states as AWS does: see
//! tests/kms-emulator/keyward_moto.py). The SDK client inside Keyward is
//! unmodified; only its endpoint points at the emulator.
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
use keyward_test_support::aws::MotoServer;
use support::{Server, assert_status, context};
use tonic::Code;

fn aws_key(tenant: &str, key_arn: &str) -> pb::RegisterKeyRequest {
    pb::RegisterKeyRequest {
        tenant_id: tenant.into(),
        key: Some(pb::register_key_request::Key::AwsKms(pb::AwsKmsKey {
            key_arn: key_arn.into(),
            role_arn: String::new(),
            external_id: String::new(),
        })),
    }
}

async fn create_tenant(server: &Server, tenant: &str) {
    server
        .tenants()
        .await
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: tenant.into(),
            display_name: String::new(),
        })
        .await
        .unwrap();
}

async fn encrypt(
    server: &Server,
    tenant: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    let mut crypto = server.crypto().await;
    crypto
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.into(),
            plaintext: plaintext.to_vec(),
            encryption_context: context(&[("conversation", "9")]),
            scope: String::new(),
            justification: None,
        })
        .await
        .map(|r| r.into_inner().envelope)
}

fn decrypt_request(tenant: &str, envelope: &[u8]) -> pb::DecryptRequest {
    pb::DecryptRequest {
        tenant_id: tenant.into(),
        envelope: envelope.to_vec(),
        encryption_context: context(&[("conversation", "9")]),
        justification: None,
    }
}

async fn decrypt(server: &Server, tenant: &str, envelope: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let mut crypto = server.crypto().await;
    crypto
        .decrypt(decrypt_request(tenant, envelope))
        .await
        .map(|r| r.into_inner().plaintext)
}

/// Polls `decrypt` until it fails, asserting it stops within the server's revocation bound
/// (its cache TTL or monitor interval, plus the stated slack: `support::bound`).
async fn first_refusal(server: &Server, tenant: &str, envelope: &[u8]) -> tonic::Status {
    let since = Instant::now();
    support::bound::stops_serving(since, server.revocation_bound(), || {
        decrypt(server, tenant, envelope)
    })
    .await
    .0
}

#[tokio::test]
async fn register_encrypt_decrypt_then_disable_reenable_and_schedule_deletion_at_the_kms() {
    let moto = MotoServer::start();
    let key_arn = moto.create_symmetric_key().await;
    let server = Server::start_with_aws(
        &moto.endpoint,
        &[
            ("KEYWARD_CACHE__TTL_SECONDS", "1"),
            ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
        ],
    );
    create_tenant(&server, "acme").await;

    let tenant = server
        .tenants()
        .await
        .register_key(aws_key("acme", &key_arn))
        .await
        .unwrap()
        .into_inner();
    let binding = tenant.active_key.unwrap();
    assert_eq!(binding.provider(), pb::ProviderKind::AwsKms);
    assert_eq!(binding.key_ref, key_arn);

    let envelope = encrypt(&server, "acme", b"prompt under a customer key")
        .await
        .unwrap();
    assert_eq!(
        decrypt(&server, "acme", &envelope).await.unwrap(),
        b"prompt under a customer key"
    );

    // The customer disables the key in their KMS: refused, classified as revocation.
    moto.disable_key(&key_arn).await;
    let status = first_refusal(&server, "acme", &envelope).await;
    support::assert_refused_or_revoked(status);
    assert_status(
        encrypt(&server, "acme", b"x").await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );

    // Re-enabled: the key-state monitor (1 s here) restores access.
    moto.enable_key(&key_arn).await;
    assert_eq!(
        support::eventually_decrypts(&server, &decrypt_request("acme", &envelope)).await,
        b"prompt under a customer key"
    );

    // Scheduled for deletion: refused.
    moto.schedule_deletion(&key_arn).await;
    let status = first_refusal(&server, "acme", &envelope).await;
    support::assert_refused_or_revoked(status);

    // Deletion cancelled (the key comes back disabled, as in AWS) and enabled: readable again.
    moto.cancel_deletion(&key_arn).await;
    moto.enable_key(&key_arn).await;
    assert_eq!(
        support::eventually_decrypts(&server, &decrypt_request("acme", &envelope)).await,
        b"prompt under a customer key"
    );
}

#[tokio::test]
async fn alias_registration_pins_the_key_and_rotation_keeps_history() {
    let moto = MotoServer::start();
    let first = moto.create_symmetric_key().await;
    let alias = moto.create_alias("alias/acme-keyward", &first).await;
    let server = Server::start_with_aws(&moto.endpoint, &[]);
    create_tenant(&server, "acme").await;
    let mut tenants = server.tenants().await;

    let binding = tenants
        .register_key(aws_key("acme", &alias))
        .await
        .unwrap()
        .into_inner()
        .active_key
        .unwrap();
    assert_eq!(
        binding.key_ref, first,
        "an alias is resolved to the key it names at registration"
    );
    let old = encrypt(&server, "acme", b"old").await.unwrap();

    // Rotation to a new key is a validated registration; old data stays readable.
    let second = moto.create_symmetric_key().await;
    let binding = tenants
        .register_key(aws_key("acme", &second))
        .await
        .unwrap()
        .into_inner()
        .active_key
        .unwrap();
    assert_eq!(binding.key_ref, second);
    let new = encrypt(&server, "acme", b"new").await.unwrap();
    assert_eq!(decrypt(&server, "acme", &old).await.unwrap(), b"old");
    assert_eq!(decrypt(&server, "acme", &new).await.unwrap(), b"new");

    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let dump = store.dump().await.unwrap();
    assert!(
        dump.contains(&first) && dump.contains(&second),
        "both bindings are kept"
    );
}

#[tokio::test]
async fn onboarding_failures_say_what_is_wrong_and_activate_nothing() {
    let moto = MotoServer::start();
    let server = Server::start_with_aws(&moto.endpoint, &[]);
    create_tenant(&server, "acme").await;
    let mut tenants = server.tenants().await;
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let before = support::domain_state(&store).await;
    let audit_before = keyward_store::Store::audit_head(&store).await.unwrap().seq;

    // Nonexistent key.
    let missing = format!(
        "arn:aws:kms:us-east-1:{}:key/00000000-0000-4000-8000-000000000000",
        keyward_test_support::aws::ACCOUNT
    );
    let status = tenants
        .register_key(aws_key("acme", &missing))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("00000000-0000-4000-8000-000000000000"),
        "{status:?}"
    );
    assert_status(
        Err::<(), _>(status),
        Code::FailedPrecondition,
        "KEY_NOT_FOUND",
    );

    // Disabled key.
    let disabled = moto.create_symmetric_key().await;
    moto.disable_key(&disabled).await;
    let status = tenants
        .register_key(aws_key("acme", &disabled))
        .await
        .unwrap_err();
    assert!(
        status.message().to_lowercase().contains("disabled"),
        "{status:?}"
    );
    assert_status(
        Err::<(), _>(status),
        Code::FailedPrecondition,
        "KEY_REFUSED",
    );

    // Wrong key spec: an asymmetric key.
    let rsa = moto
        .create_key_with_spec(
            aws_sdk_kms::types::KeySpec::Rsa2048,
            aws_sdk_kms::types::KeyUsageType::EncryptDecrypt,
        )
        .await;
    let status = tenants
        .register_key(aws_key("acme", &rsa))
        .await
        .unwrap_err();
    assert!(status.message().contains("RSA_2048"), "{status:?}");
    assert_status(
        Err::<(), _>(status),
        Code::FailedPrecondition,
        "KEY_MISCONFIGURED",
    );

    // Malformed ARNs: invalid argument naming the part.
    for (arn, part) in [
        ("not-an-arn", "arn"),
        ("arn:aws:kms:us-east-1:12345:key/abc", "account"),
        (
            "arn:aws:s3:us-east-1:123456789012:key/00000000-0000-4000-8000-000000000000",
            "kms",
        ),
    ] {
        let status = tenants
            .register_key(aws_key("acme", arn))
            .await
            .unwrap_err();
        assert!(
            status.message().to_lowercase().contains(part),
            "{arn}: {status:?}"
        );
        assert_status(
            Err::<(), _>(status),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    // A role without its external id.
    let mut request = aws_key("acme", &disabled);
    if let Some(pb::register_key_request::Key::AwsKms(aws)) = request.key.as_mut() {
        aws.role_arn = "arn:aws:iam::123456789012:role/keyward".into();
    }
    assert_status(
        tenants.register_key(request).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    // Nothing was activated.
    let tenant = tenants
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tenant.active_key.is_none());
    assert_eq!(
        support::domain_state(&store).await,
        before,
        "a rejected request changed the store"
    );
    // Only the failed key registrations were recorded, as audit records.
    assert_eq!(
        support::audit_types_since(&store, audit_before).await,
        vec!["key_registration_attempted:failed"; 3]
    );
}

#[tokio::test]
async fn an_unreachable_kms_is_unavailable_not_refused() {
    // A port on which nothing listens.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let server = Server::start_with_aws(&dead, &[("KEYWARD_AWS_KMS__ATTEMPT_TIMEOUT_MS", "500")]);
    create_tenant(&server, "acme").await;
    let arn = format!(
        "arn:aws:kms:us-east-1:{}:key/00000000-0000-4000-8000-000000000000",
        keyward_test_support::aws::ACCOUNT
    );
    let started = Instant::now();
    let status = server
        .tenants()
        .await
        .register_key(aws_key("acme", &arn))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded retries: took {:?}",
        started.elapsed()
    );
    assert_status(Err::<(), _>(status), Code::Unavailable, "KMS_UNAVAILABLE");
}

#[test]
fn the_cli_prints_the_key_policy_statement() {
    let server = Server::start(&[]);
    let principal = "arn:aws:iam::111122223333:role/keyward";
    let (ok, out, err) = server.cli(
        &[
            "onboarding",
            "policy",
            "--provider",
            "aws",
            "--principal",
            principal,
        ],
        b"",
    );
    assert!(ok, "{err}");
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(principal)
            && out.contains("kms:Decrypt")
            && out.contains("kms:GenerateDataKey"),
        "{out}"
    );
}

#[tokio::test]
async fn a_kms_outage_serves_warm_keys_until_the_ttl_then_fails_unavailable_and_revokes_nothing() {
    let moto = MotoServer::start();
    let key_arn = moto.create_symmetric_key().await;
    let ttl = Duration::from_secs(2);
    let server = Server::start_with_aws(
        &moto.endpoint,
        &[
            ("KEYWARD_CACHE__TTL_SECONDS", "2"),
            ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
        ],
    );
    create_tenant(&server, "acme").await;
    // Registration's live round trip caches the tenant key: the KMS vouched for it after
    // `registering`, and for the last time before `outage` (the monitor re-checks it until then).
    let registering = Instant::now();
    server
        .tenants()
        .await
        .register_key(aws_key("acme", &key_arn))
        .await
        .unwrap();
    let envelope = encrypt(&server, "acme", b"warm").await.unwrap();
    decrypt(&server, "acme", &envelope).await.unwrap();

    // The KMS goes away (the emulator process is killed): warm keys serve until their TTL, and
    // nothing sent a TTL after the outage began is served.
    let outage = Instant::now();
    drop(moto);
    let (status, sent) =
        support::bound::stops_serving(outage, support::bound::ttl(ttl), || async {
            decrypt(&server, "acme", &envelope)
                .await
                .map(|plaintext| assert_eq!(plaintext, b"warm"))
        })
        .await;
    let failed = Instant::now();
    eprintln!(
        "warm keys served into the outage until a request sent {sent:?} after it failed, \
         {:?} after it (TTL {ttl:?})",
        failed - outage
    );
    assert!(
        failed >= registering + ttl,
        "stopped {:?} after the registration's unwrap, before its TTL",
        failed - registering
    );
    assert_status(Err::<(), _>(status), Code::Unavailable, "KMS_UNAVAILABLE");

    // Unreachable is not refused: the binding is unavailable, not revoked.
    let state = server
        .tenants()
        .await
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .active_key
        .unwrap()
        .state();
    assert!(
        matches!(state, pb::KekState::Active | pb::KekState::Unavailable),
        "{state:?}"
    );
    let store = SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let types = support::audit_types_since(&store, 0).await;
    assert!(!types.iter().any(|t| t == "keys_purged"), "{types:?}");
}

/// The most common real revocation, refused by the emulator itself: the customer removes
/// Keyward's statements from the key policy. With no traffic and a cache TTL far longer than the
/// test, only the revocation monitor (its canary unwrap, refused `AccessDeniedException`) can
/// notice: the tenant's key reads `Revoked` within a few monitor intervals, requests are refused
/// as revoked, and putting the statements back lets the monitor restore the tenant.
#[tokio::test]
async fn removing_keyward_from_the_key_policy_is_a_revocation_the_monitor_finds() {
    let moto = MotoServer::start();
    let key_arn = moto.create_symmetric_key().await;
    moto.put_key_policy(&key_arn, &moto.onboarded_key_policy(&key_arn, true).await)
        .await;
    let server = Server::start_with_aws(
        &moto.endpoint,
        &[
            ("KEYWARD_CACHE__TTL_SECONDS", "600"),
            ("KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS", "1"),
        ],
    );
    create_tenant(&server, "acme").await;
    server
        .tenants()
        .await
        .register_key(aws_key("acme", &key_arn))
        .await
        .unwrap();
    let envelope = encrypt(&server, "acme", b"before").await.unwrap();
    assert_eq!(
        decrypt(&server, "acme", &envelope).await.unwrap(),
        b"before"
    );

    moto.put_key_policy(&key_arn, &moto.onboarded_key_policy(&key_arn, false).await)
        .await;
    // No request in between: the monitor alone must find the refusal.
    let removed = Instant::now();
    loop {
        let state = server
            .tenants()
            .await
            .get_tenant(pb::GetTenantRequest {
                tenant_id: "acme".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .active_key
            .unwrap()
            .state();
        if state == pb::KekState::Revoked {
            break;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(10),
            "not revoked 10 s after Keyward left the key policy: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The warm key in the cache does not outlive the revocation.
    assert_status(
        decrypt(&server, "acme", &envelope).await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
    assert_status(
        encrypt(&server, "acme", b"after").await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );

    // The customer puts the statements back: the monitor restores the tenant.
    moto.put_key_policy(&key_arn, &moto.onboarded_key_policy(&key_arn, true).await)
        .await;
    assert_eq!(
        support::eventually_decrypts(&server, &decrypt_request("acme", &envelope)).await,
        b"before"
    );
}
