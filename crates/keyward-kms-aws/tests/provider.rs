//! `AwsKmsProvider` against moto (with AWS's key-state enforcement): round trips with the
//! encryption context, revocation signals, onboarding errors and their messages, bounded
//! failure on an unreachable endpoint.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test code fails loudly on purpose; the measurement is reported on stderr"
)]

use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use keyward_envelope::{KeyId, SecretKey, TenantId};
use keyward_kms::{
    ErrorKind, KeyProvider, KeyRef, KeyState, ProviderError, ProviderKind, Purpose, WrapContext,
};
use keyward_kms_aws::{AwsKmsConfig, AwsKmsProvider};
use keyward_test_support::aws::{ACCOUNT, MotoServer, REGION, key_ref};

fn ctx(tenant: &str) -> WrapContext {
    WrapContext::new(
        &TenantId::try_from(tenant).unwrap(),
        &KeyId::from_bytes([0x42; 16]),
        Purpose::TenantKey,
    )
}

fn missing_arn() -> String {
    format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-1111-2222-3333-444444444444")
}

#[track_caller]
fn expect_err<T>(r: Result<T, ProviderError>, kind: ErrorKind) -> ProviderError {
    match r {
        Ok(_) => panic!("expected a {kind} error, got Ok"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            e
        }
    }
}

#[tokio::test]
async fn generate_and_unwrap_round_trip_bound_to_the_encryption_context() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let kek = key_ref(&moto.create_symmetric_key().await);

    let caps = p.capabilities();
    assert!(caps.generates_keys && caps.reports_key_state && caps.production_grade);

    let (key, wrapped) = p.generate(&kek, &ctx("acme")).await.unwrap();
    let back = p.unwrap(&kek, &wrapped, &ctx("acme")).await.unwrap();
    assert_eq!(back.expose_secret(), key.expose_secret());

    // Another tenant in the context: KMS refuses to decrypt (InvalidCiphertextException).
    let e = expect_err(
        p.unwrap(&kek, &wrapped, &ctx("globex")).await,
        ErrorKind::InvalidCiphertext,
    );
    assert!(!e.is_revocation_signal());

    // Another KEK (KeyId pinned): IncorrectKeyException, never a decrypt under the other key.
    let other = key_ref(&moto.create_symmetric_key().await);
    let e = expect_err(
        p.unwrap(&other, &wrapped, &ctx("acme")).await,
        ErrorKind::InvalidCiphertext,
    );
    assert!(e.message().contains("IncorrectKeyException"), "{e}");

    let status = p.describe(&kek).await.unwrap();
    assert_eq!(status.state, KeyState::Enabled);
    assert!(status.detail.unwrap().contains("Enabled in us-east-1"));
}

#[tokio::test]
async fn disabled_key_is_refused_as_a_revocation_signal() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let arn = moto.create_symmetric_key().await;
    let kek = key_ref(&arn);
    let (_, wrapped) = p.generate(&kek, &ctx("acme")).await.unwrap();

    moto.disable_key(&arn).await;
    let e = expect_err(
        p.unwrap(&kek, &wrapped, &ctx("acme")).await,
        ErrorKind::Refused,
    );
    assert!(e.is_revocation_signal());
    assert!(
        e.message().contains("kms:Decrypt") && e.message().contains("DisabledException"),
        "{e}"
    );
    assert!(
        e.remediation().unwrap().contains("aws kms enable-key"),
        "{e:?}"
    );
    let e = expect_err(p.generate(&kek, &ctx("acme")).await, ErrorKind::Refused);
    assert!(e.message().contains("kms:GenerateDataKey"), "{e}");
    assert_eq!(p.describe(&kek).await.unwrap().state, KeyState::Disabled);

    moto.enable_key(&arn).await;
    p.unwrap(&kek, &wrapped, &ctx("acme")).await.unwrap();
}

#[tokio::test]
async fn key_pending_deletion_is_refused() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let arn = moto.create_symmetric_key().await;
    let kek = key_ref(&arn);
    let key = SecretKey::generate().unwrap();
    let wrapped = p.wrap(&kek, &key, &ctx("acme")).await.unwrap();

    moto.schedule_deletion(&arn).await;
    let e = expect_err(
        p.unwrap(&kek, &wrapped, &ctx("acme")).await,
        ErrorKind::Refused,
    );
    assert!(e.is_revocation_signal());
    assert!(e.message().contains("KMSInvalidStateException"), "{e}");
    assert!(e.remediation().unwrap().contains("cancel-key-deletion"));
    expect_err(p.wrap(&kek, &key, &ctx("acme")).await, ErrorKind::Refused);
    let status = p.describe(&kek).await.unwrap();
    assert_eq!(status.state, KeyState::PendingDeletion);
    assert!(status.detail.unwrap().contains("deletion scheduled for"));
}

#[tokio::test]
async fn nonexistent_key_is_not_found() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let kek = key_ref(&missing_arn());
    let e = expect_err(p.describe(&kek).await, ErrorKind::NotFound);
    assert!(e.message().contains("NotFoundException"), "{e}");
    assert!(!e.is_revocation_signal());
    expect_err(p.canonicalize(&kek).await, ErrorKind::NotFound);
    expect_err(p.generate(&kek, &ctx("acme")).await, ErrorKind::NotFound);
    let alias = key_ref(&format!(
        "arn:aws:kms:{REGION}:{ACCOUNT}:alias/no-such-alias"
    ));
    expect_err(p.canonicalize(&alias).await, ErrorKind::NotFound);
}

#[tokio::test]
async fn keys_that_are_not_symmetric_encryption_keys_are_misconfigured() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    for (spec, usage, shown) in [
        (
            KeySpec::Rsa2048,
            KeyUsageType::EncryptDecrypt,
            "RSA_2048/ENCRYPT_DECRYPT",
        ),
        (
            KeySpec::EccNistP256,
            KeyUsageType::SignVerify,
            "ECC_NIST_P256/SIGN_VERIFY",
        ),
        (
            KeySpec::Hmac256,
            KeyUsageType::GenerateVerifyMac,
            "HMAC_256/GENERATE_VERIFY_MAC",
        ),
    ] {
        let arn = moto.create_key_with_spec(spec, usage).await;
        let e = expect_err(p.describe(&key_ref(&arn)).await, ErrorKind::Misconfigured);
        let m = e.message();
        assert!(m.contains(&format!("key {arn} is {shown}")), "{m}");
        assert!(
            m.contains("SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT") && m.contains("aws kms create-key"),
            "{m}"
        );
    }
}

#[tokio::test]
async fn alias_canonicalizes_to_the_key_arn_keeping_the_role() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let key_arn = moto.create_symmetric_key().await;
    let alias_arn = moto.create_alias("keyward/acme", &key_arn).await;
    assert_eq!(
        moto.create_alias("alias/other", &key_arn).await,
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/other")
    );

    let canonical = p.canonicalize(&key_ref(&alias_arn)).await.unwrap();
    assert_eq!(canonical, key_ref(&key_arn));
    assert_eq!(p.canonicalize(&canonical).await.unwrap(), canonical);

    // The emulator grants AssumeRole only for a role whose trust policy allows the caller.
    moto.create_keyward_role("keyward-access", "acme-7f3a")
        .await;
    let role = "?role_arn=arn:aws:iam::123456789012:role/keyward-access&external_id=acme-7f3a";
    let canonical = p
        .canonicalize(&key_ref(&format!("{alias_arn}{role}")))
        .await
        .unwrap();
    assert_eq!(canonical.id(), format!("{key_arn}{role}"));

    // The alias works for calls too (before canonicalization, e.g. describe at registration).
    assert_eq!(
        p.describe(&key_ref(&alias_arn)).await.unwrap().state,
        KeyState::Enabled
    );
}

#[tokio::test]
async fn cross_account_reference_assumes_the_role() {
    // The plumbing (per-role client, the assumed credentials used for KMS); refusals by the
    // trust policy and the key policy are in tests/policies.rs.
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let key_arn = moto.create_symmetric_key().await;
    moto.create_keyward_role("keyward-access", "acme-7f3a")
        .await;
    let kek = key_ref(&format!(
        "{key_arn}?role_arn=arn:aws:iam::{ACCOUNT}:role/keyward-access&external_id=acme-7f3a"
    ));
    let (key, wrapped) = p.generate(&kek, &ctx("acme")).await.unwrap();
    let back = p.unwrap(&kek, &wrapped, &ctx("acme")).await.unwrap();
    assert_eq!(back.expose_secret(), key.expose_secret());
}

#[tokio::test]
async fn malformed_references_are_misconfigured_before_any_call() {
    // Nothing listens on this provider's endpoint: a call would be Unavailable, not Misconfigured.
    let moto = MotoServer::start();
    let mut config = moto.provider_config();
    config.endpoint_url = Some(unused_endpoint());
    let p = AwsKmsProvider::with_sdk_config(config, moto.sdk_config().await)
        .await
        .unwrap();
    for (id, part) in [
        (
            "arn:aws:kms:us-east-1:123456789012:key/nope",
            "key id 'nope'",
        ),
        (
            "arn:aws:kms:useast1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "region 'useast1'",
        ),
        (
            "arn:aws:kms:us-east-1:1234:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "account '1234'",
        ),
        (
            "arn:aws:kms:us-east-1:123456789012:alias/aws/s3",
            "AWS managed key",
        ),
        (
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "six ':'-separated fields",
        ),
    ] {
        let e = expect_err(p.describe(&key_ref(id)).await, ErrorKind::Misconfigured);
        assert!(e.message().contains(part), "{id}: {e}");
        expect_err(
            p.generate(&key_ref(id), &ctx("acme")).await,
            ErrorKind::Misconfigured,
        );
    }
    let local = KeyRef::new(ProviderKind::Local, "default");
    let e = expect_err(p.describe(&local).await, ErrorKind::Misconfigured);
    assert!(e.message().contains("local:default"), "{e}");
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_within_the_configured_bounds() {
    let moto = MotoServer::start();
    let config = AwsKmsConfig {
        endpoint_url: Some(unused_endpoint()),
        sts_endpoint_url: Some(unused_endpoint()),
        attempt_timeout_ms: 500,
        connect_timeout_ms: 200,
        max_attempts: 2,
        ..AwsKmsConfig::default()
    };
    let p = AwsKmsProvider::with_sdk_config(config.clone(), moto.sdk_config().await)
        .await
        .unwrap();
    let kek = key_ref(&missing_arn());
    let start = Instant::now();
    let e = p.describe(&kek).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{e}"
    );
    assert!(e.is_transient() && !e.is_revocation_signal());
    // attempts × attempt timeout, plus the SDK's first jittered backoff (≤ 1 s), plus slack.
    let bound = Duration::from_millis(config.attempt_timeout_ms * u64::from(config.max_attempts))
        + Duration::from_secs(1)
        + Duration::from_secs(2);
    assert!(elapsed < bound, "took {elapsed:?}, bound {bound:?}");
    let e = p
        .unwrap(
            &kek,
            &keyward_envelope::WrappedKey::new(vec![1; 64]),
            &ctx("acme"),
        )
        .await
        .err()
        .unwrap();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn access_denied_names_the_action_the_principal_and_the_statement() {
    // The emulator evaluates the key policy (keyward_moto.py, gap 4): an explicit Deny gives a
    // real AccessDeniedException.
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let arn = moto.create_symmetric_key().await;
    let deny = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"kms:DescribeKey","Resource":"*"}]}"#;
    moto.kms_client()
        .await
        .put_key_policy()
        .key_id(&arn)
        .policy_name("default")
        .policy(deny)
        .send()
        .await
        .unwrap();

    let e = expect_err(p.describe(&key_ref(&arn)).await, ErrorKind::Refused);
    assert!(e.is_revocation_signal());
    assert!(
        e.message().contains("kms:DescribeKey") && e.message().contains("AccessDeniedException"),
        "{e}"
    );
    let r = e.remediation().unwrap();
    // moto's GetCallerIdentity answers this principal for any credentials.
    let principal = "arn:aws:sts::123456789012:user/moto";
    assert!(
        r.contains(&format!(
            "does not allow kms:DescribeKey for Keyward's principal {principal}"
        )),
        "{r}"
    );
    assert!(
        r.contains("\"Sid\": \"AllowKeywardUseOfTheKey\"")
            && r.contains(&format!("\"AWS\": \"{principal}\"")),
        "{r}"
    );

    // With a role, the principal to name is the role.
    moto.create_keyward_role("keyward-access", "acme-7f3a")
        .await;
    let kek = key_ref(&format!(
        "{arn}?role_arn=arn:aws:iam::{ACCOUNT}:role/keyward-access&external_id=acme-7f3a"
    ));
    let e = expect_err(p.describe(&kek).await, ErrorKind::Refused);
    assert!(
        e.remediation()
            .unwrap()
            .contains("for role arn:aws:iam::123456789012:role/keyward-access"),
        "{e:?}"
    );
}

#[tokio::test]
async fn credential_failures_are_classified_through_the_real_sdk() {
    let moto = MotoServer::start();
    let arn = moto.create_symmetric_key().await;

    // No credentials at all: our side is misconfigured, not a revocation.
    let none = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::from_static(REGION))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::credential_fn::provide_credentials_fn(|| async {
                    Err(CredentialsError::not_loaded("no credentials in this test"))
                }),
            ),
        )
        .load()
        .await;
    let p = AwsKmsProvider::with_sdk_config(moto.provider_config(), none)
        .await
        .unwrap();
    let e = expect_err(p.describe(&key_ref(&arn)).await, ErrorKind::Misconfigured);
    assert!(e.message().contains("no AWS credentials"), "{e}");

    // Static credentials work (sanity check of the same setup).
    let ok = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::from_static(REGION))
        .credentials_provider(Credentials::new("a", "b", None, None, "t"))
        .load()
        .await;
    let p = AwsKmsProvider::with_sdk_config(moto.provider_config(), ok)
        .await
        .unwrap();
    p.describe(&key_ref(&arn)).await.unwrap();
}

/// Fifty-five unwraps of one wrapped key in a row (a warm SDK client reusing its connection)
/// all return the generated key: no answer is served from a stale or mixed-up buffer. Also
/// prints the round-trip times (median and p90 of the last 50), the figure docs/benchmarks.md
/// quotes for the emulator's Decrypt; run with
/// `cargo test -p keyward-kms-aws --all-features --release --test provider repeated -- --nocapture`.
#[tokio::test]
async fn repeated_unwraps_return_the_generated_key() {
    let moto = MotoServer::start();
    let p = moto.provider().await;
    let kek = key_ref(&moto.create_symmetric_key().await);
    let (key, wrapped) = p.generate(&kek, &ctx("acme")).await.unwrap();
    for _ in 0..5 {
        let back = p.unwrap(&kek, &wrapped, &ctx("acme")).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(50);
    for _ in 0..50 {
        let start = Instant::now();
        let back = p.unwrap(&kek, &wrapped, &ctx("acme")).await.unwrap();
        samples.push(start.elapsed());
        assert_eq!(back.expose_secret(), key.expose_secret());
    }
    samples.sort();
    eprintln!(
        "aws-kms unwrap (Decrypt) against moto on 127.0.0.1: median {:?}, p90 {:?}, min {:?}, max {:?} (n=50)",
        samples[25], samples[45], samples[0], samples[49]
    );
}

/// An endpoint on 127.0.0.1 with nothing listening: bind port 0, note the port, close it.
fn unused_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}
