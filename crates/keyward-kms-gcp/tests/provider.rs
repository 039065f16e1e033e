//! GcpKmsProvider behaviour beyond the conformance kit, on the test double: onboarding failures
//! and their remediation, key states, retries, throttling and timeouts.
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::time::Duration;

use keyward_envelope::{KeyId, SecretKey, TenantId};
use keyward_kms::{ErrorKind, KeyProvider, KeyRef, KeyState, ProviderKind, Purpose, WrapContext};
use keyward_kms_gcp::{EXPECTED_FORM, GcpKmsConfig, GcpKmsProvider};
use keyward_test_support::gcp::{KmsDouble, VersionState};

const GRANT: &str = "gcloud kms keys add-iam-policy-binding kek --keyring keyward --location global \
                     --project keyward-test --member serviceAccount:keyward@keyward-test.iam.gserviceaccount.com \
                     --role roles/cloudkms.cryptoKeyEncrypterDecrypter";

fn ctx() -> WrapContext {
    WrapContext::new(
        &TenantId::try_from("acme").unwrap(),
        &KeyId::generate().unwrap(),
        Purpose::TenantKey,
    )
}

fn key() -> SecretKey {
    SecretKey::generate().unwrap()
}

#[tokio::test]
async fn permission_denied_is_refused_with_the_gcloud_grant() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let kek = kms.create_key("kek");
    let wrapped = p.wrap(&kek, &key(), &ctx()).await.unwrap();
    kms.set_denied(&kek, true);
    let c = ctx();
    for (what, e) in [
        ("wrap", p.wrap(&kek, &key(), &c).await.unwrap_err()),
        (
            "unwrap",
            p.unwrap(&kek, &wrapped, &c).await.map(drop).unwrap_err(),
        ),
        ("describe", p.describe(&kek).await.unwrap_err()),
    ] {
        assert_eq!(e.kind(), ErrorKind::Refused, "{what}: {e}");
        assert!(e.message().contains("PERMISSION_DENIED"), "{what}: {e}");
        let r = e.remediation().unwrap();
        assert!(r.contains(GRANT), "{what}: {r}");
        assert!(r.contains("--role roles/cloudkms.viewer"), "{what}: {r}");
    }
}

#[tokio::test]
async fn missing_and_malformed_keys() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let missing = KmsDouble::key_ref("nope");
    // What a customer who mistyped the key sees, with Keyward's roles bound on the key only
    // (onboarding step 3): PERMISSION_DENIED, so Refused, and a remediation that says the key
    // may not exist and how to check before granting anything.
    let e = p.describe(&missing).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.message().contains("PERMISSION_DENIED"), "{e}");
    let r = e.remediation().unwrap();
    assert!(r.contains("or the key does not exist"), "{r}");
    assert!(
        r.contains(
            "gcloud kms keys describe nope --keyring keyward --location global --project keyward-test"
        ),
        "{r}"
    );
    assert!(
        r.contains("gcloud kms keys create nope --keyring keyward"),
        "{r}"
    );
    let e = p.wrap(&missing, &key(), &ctx()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    // With cloudkms.cryptoKeys.get on the key ring, Cloud KMS says NOT_FOUND.
    kms.set_key_ring_viewer(true);
    let e = p.describe(&missing).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.remediation()
            .unwrap()
            .contains("gcloud kms keys create nope --keyring keyward")
    );

    let version = KeyRef::new(
        ProviderKind::GcpKms,
        format!("{}/cryptoKeyVersions/1", KmsDouble::key_name("kek")),
    );
    let bad = KeyRef::new(ProviderKind::GcpKms, "projects/p/keyRings/r");
    for kek in [version, bad] {
        for e in [
            p.wrap(&kek, &key(), &ctx()).await.unwrap_err(),
            p.describe(&kek).await.unwrap_err(),
            p.canonicalize(&kek).await.unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
            assert!(e.message().contains(EXPECTED_FORM), "{e}");
        }
    }
    let e = p
        .wrap(&KeyRef::new(ProviderKind::AwsKms, "arn:x"), &key(), &ctx())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    // Nothing reached the double for malformed names.
    assert_eq!(kms.calls(&KmsDouble::key_ref("kek"), "encrypt"), 0);
}

#[tokio::test]
async fn describe_maps_the_primary_version_state() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let kek = kms.create_key("kek");
    assert_eq!(p.describe(&kek).await.unwrap().state, KeyState::Enabled);
    let v1 = kms.primary_version(&kek);
    for (state, expected) in [
        (VersionState::Disabled, KeyState::Disabled),
        (VersionState::DestroyScheduled, KeyState::PendingDeletion),
        (VersionState::Destroyed, KeyState::Destroyed),
        (VersionState::Enabled, KeyState::Enabled),
    ] {
        kms.set_version_state(&v1, state);
        let s = p.describe(&kek).await.unwrap();
        assert_eq!(s.state, expected, "{state:?}");
        assert!(s.detail.unwrap().contains(&v1));
    }
    // A rotation moves the primary: describe follows it.
    kms.set_version_state(&v1, VersionState::Disabled);
    kms.rotate(&kek);
    assert_eq!(p.describe(&kek).await.unwrap().state, KeyState::Enabled);
}

#[tokio::test]
async fn disabled_versions_are_refused_with_the_reenable_command() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let kek = kms.create_key("kek");
    let c = ctx();
    let k = key();
    let old = p.wrap(&kek, &k, &c).await.unwrap();
    kms.rotate(&kek);
    let new = p.wrap(&kek, &k, &c).await.unwrap();
    // Disabling the old version refuses only what it wrapped.
    kms.set_version_state(
        &format!("{}/cryptoKeyVersions/1", kek.id()),
        VersionState::Disabled,
    );
    let e = p.unwrap(&kek, &old, &c).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(e.message().contains("FAILED_PRECONDITION"), "{e}");
    assert!(
        e.remediation()
            .unwrap()
            .contains("gcloud kms keys versions enable VERSION --key kek --keyring keyward"),
        "{e:?}"
    );
    let back = p.unwrap(&kek, &new, &c).await.unwrap();
    assert_eq!(back.expose_secret(), k.expose_secret());
}

#[tokio::test]
async fn unavailable_is_retried_within_the_budget() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let kek = kms.create_key("kek");
    let c = ctx();
    let k = key();
    kms.fail_next(2, "UNAVAILABLE");
    let wrapped = p.wrap(&kek, &k, &c).await.unwrap();
    assert_eq!(kms.calls(&kek, "encrypt"), 3, "two failures then a success");
    kms.fail_next(1, "UNAVAILABLE");
    p.unwrap(&kek, &wrapped, &c).await.unwrap();
    assert_eq!(kms.calls(&kek, "decrypt"), 2);

    // More failures than attempts: Unavailable, transient, not a revocation.
    kms.fail_next(10, "UNAVAILABLE");
    let e = p.unwrap(&kek, &wrapped, &c).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_transient() && !e.is_revocation_signal());
    assert_eq!(kms.calls(&kek, "decrypt"), 5, "max_attempts = 3");
}

#[tokio::test]
async fn quota_and_deadline_errors_are_transient() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let kek = kms.create_key("kek");
    kms.fail_next(1, "RESOURCE_EXHAUSTED");
    let e = p.wrap(&kek, &key(), &ctx()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
    kms.fail_next(1, "DEADLINE_EXCEEDED");
    let e = p.describe(&kek).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    kms.fail_next(1, "INTERNAL");
    let e = p.describe(&kek).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn a_slow_kms_times_out_after_call_timeout_ms() {
    let kms = KmsDouble::start();
    let p = GcpKmsProvider::new(GcpKmsConfig {
        call_timeout_ms: 200,
        ..kms.config()
    })
    .await
    .unwrap();
    let kek = kms.create_key("kek");
    kms.set_delay(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let e = p.wrap(&kek, &key(), &ctx()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    // Sanity bound, not a performance assertion: far below the double's delay.
    assert!(started.elapsed() < Duration::from_millis(1400));
    kms.set_delay(Duration::ZERO);
    p.wrap(&kek, &key(), &ctx()).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let kms = KmsDouble::start();
    let config = kms.config();
    drop(kms);
    let p = GcpKmsProvider::new(GcpKmsConfig {
        max_attempts: 1,
        ..config
    })
    .await
    .unwrap();
    let e = p.describe(&KmsDouble::key_ref("kek")).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(!e.is_revocation_signal());
}

#[tokio::test]
async fn a_config_without_credentials_is_rejected() {
    let e = GcpKmsProvider::new(GcpKmsConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(e.message().contains("gcp.credentials is not set"), "{e}");
}
