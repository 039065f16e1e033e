//! The Cloud KMS test double rejects what the real service rejects, spoken to by the
//! unmodified official client (no Keyward code between them).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code fails loudly on purpose"
)]

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState as State;
use keyward_test_support::gcp::{KmsDouble, VersionState};

async fn client(kms: &KmsDouble) -> KeyManagementService {
    KeyManagementService::builder()
        .with_endpoint(kms.endpoint())
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .with_retry_policy(NeverRetry)
        .build()
        .await
        .unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, google_cloud_kms_v1::Error>) -> Code {
    let e = r.unwrap_err();
    e.status()
        .unwrap_or_else(|| panic!("not a service error: {e:?}"))
        .code
}

fn crc(b: &[u8]) -> i64 {
    i64::from(crc32c::crc32c(b))
}

#[tokio::test]
async fn round_trip_binds_the_aad_and_names_the_version() {
    let kms = KmsDouble::start();
    let c = client(&kms).await;
    let key = kms.create_key("k");
    let enc = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"secret".to_vec())
        .set_additional_authenticated_data(b"aad-1".to_vec())
        .set_plaintext_crc32c(crc(b"secret"))
        .set_additional_authenticated_data_crc32c(crc(b"aad-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(enc.name, format!("{}/cryptoKeyVersions/1", key.id()));
    assert!(enc.verified_plaintext_crc32c && enc.verified_additional_authenticated_data_crc32c);
    assert_eq!(enc.ciphertext_crc32c, Some(crc(&enc.ciphertext)));
    assert!(!enc.ciphertext.windows(6).any(|w| w == b"secret"));

    let dec = c
        .decrypt()
        .set_name(key.id())
        .set_ciphertext(enc.ciphertext.clone())
        .set_additional_authenticated_data(b"aad-1".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(&dec.plaintext[..], b"secret");
    assert_eq!(dec.plaintext_crc32c, Some(crc(b"secret")));
    assert!(dec.used_primary);

    // Wrong AAD, no AAD: INVALID_ARGUMENT, as the real service answers a failed decryption.
    for aad in [&b"aad-2"[..], b""] {
        let r = c
            .decrypt()
            .set_name(key.id())
            .set_ciphertext(enc.ciphertext.clone())
            .set_additional_authenticated_data(aad.to_vec())
            .send()
            .await;
        assert_eq!(code(r), Code::InvalidArgument);
    }
    // Another key cannot decrypt it.
    let other = kms.create_key("other");
    let r = c
        .decrypt()
        .set_name(other.id())
        .set_ciphertext(enc.ciphertext.clone())
        .set_additional_authenticated_data(b"aad-1".to_vec())
        .send()
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    assert_eq!(kms.calls(&key, "encrypt"), 1);
    assert_eq!(kms.calls(&key, "decrypt"), 3);
}

#[tokio::test]
async fn unknown_keys_are_permission_denied_unless_the_caller_may_read_the_key_ring() {
    let kms = KmsDouble::start();
    let c = client(&kms).await;
    let missing = KmsDouble::key_name("missing");
    // IAM before existence: a caller with bindings on keys only cannot tell a missing key from
    // one it may not use.
    let e = c
        .encrypt()
        .set_name(&missing)
        .set_plaintext(b"x".to_vec())
        .send()
        .await
        .unwrap_err();
    let status = e.status().unwrap();
    assert_eq!(status.code, Code::PermissionDenied);
    assert!(
        status
            .message
            .contains("cloudkms.cryptoKeyVersions.useToEncrypt")
            && status.message.contains("(or it may not exist)"),
        "{status:?}"
    );
    let r = c.get_crypto_key().set_name(&missing).send().await;
    assert_eq!(code(r), Code::PermissionDenied);
    kms.set_key_ring_viewer(true);
    let r = c
        .encrypt()
        .set_name(&missing)
        .set_plaintext(b"x".to_vec())
        .send()
        .await;
    assert_eq!(code(r), Code::NotFound);
    let r = c.get_crypto_key().set_name(&missing).send().await;
    assert_eq!(code(r), Code::NotFound);
}

#[tokio::test]
async fn denied_keys_are_permission_denied() {
    let kms = KmsDouble::start();
    let c = client(&kms).await;

    let key = kms.create_key("k");
    let enc = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"x".to_vec())
        .send()
        .await
        .unwrap();
    kms.set_denied(&key, true);
    let r = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"x".to_vec())
        .send()
        .await;
    assert_eq!(code(r), Code::PermissionDenied);
    let r = c
        .decrypt()
        .set_name(key.id())
        .set_ciphertext(enc.ciphertext.clone())
        .send()
        .await;
    assert_eq!(code(r), Code::PermissionDenied);
    let r = c.get_crypto_key().set_name(key.id()).send().await;
    assert_eq!(code(r), Code::PermissionDenied);
    kms.set_denied(&key, false);
    c.decrypt()
        .set_name(key.id())
        .set_ciphertext(enc.ciphertext)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn versions_that_are_not_enabled_fail_the_precondition() {
    let kms = KmsDouble::start();
    let c = client(&kms).await;
    let key = kms.create_key("k");
    let v1 = kms.primary_version(&key);
    let enc = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"x".to_vec())
        .send()
        .await
        .unwrap();
    for state in [
        VersionState::Disabled,
        VersionState::DestroyScheduled,
        VersionState::Destroyed,
    ] {
        kms.set_version_state(&v1, state);
        let r = c
            .encrypt()
            .set_name(key.id())
            .set_plaintext(b"x".to_vec())
            .send()
            .await;
        assert_eq!(code(r), Code::FailedPrecondition, "{state:?}");
        let r = c
            .decrypt()
            .set_name(key.id())
            .set_ciphertext(enc.ciphertext.clone())
            .send()
            .await;
        assert_eq!(code(r), Code::FailedPrecondition, "{state:?}");
    }
    // The state is reported as the number the client maps back to the enum.
    let got = c.get_crypto_key().set_name(key.id()).send().await.unwrap();
    assert_eq!(got.purpose, CryptoKeyPurpose::EncryptDecrypt);
    assert_eq!(got.primary.as_ref().unwrap().state, State::Destroyed);
    let got = c
        .get_crypto_key_version()
        .set_name(&v1)
        .send()
        .await
        .unwrap();
    assert_eq!(got.state, State::Destroyed);
    assert_eq!(got.name, v1);
    kms.set_version_state(&v1, VersionState::Disabled);
    let got = c
        .get_crypto_key_version()
        .set_name(&v1)
        .send()
        .await
        .unwrap();
    assert_eq!(got.state, State::Disabled);
    let r = c
        .get_crypto_key_version()
        .set_name(format!("{}/cryptoKeyVersions/9", key.id()))
        .send()
        .await;
    assert_eq!(code(r), Code::NotFound);
}

#[tokio::test]
async fn rotation_keeps_old_ciphertexts_and_version_paths_behave_as_documented() {
    let kms = KmsDouble::start();
    let c = client(&kms).await;
    let key = kms.create_key("k");
    let old = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"old".to_vec())
        .send()
        .await
        .unwrap();
    let v2 = kms.rotate(&key);
    let new = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"new".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(new.name, v2);
    let dec = c
        .decrypt()
        .set_name(key.id())
        .set_ciphertext(old.ciphertext)
        .send()
        .await
        .unwrap();
    assert_eq!(&dec.plaintext[..], b"old");
    assert!(!dec.used_primary);
    let got = c.get_crypto_key().set_name(key.id()).send().await.unwrap();
    assert_eq!(got.primary.unwrap().name, v2);

    // Encrypt accepts a CryptoKeyVersion name (documented for symmetric keys) and uses that
    // version, not the primary.
    let v1 = format!("{}/cryptoKeyVersions/1", key.id());
    let by_version = c
        .encrypt()
        .set_name(&v1)
        .set_plaintext(b"v1".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(by_version.name, v1);
    // Decrypt does not: the client itself refuses to bind a version path to the request.
    let e = c
        .decrypt()
        .set_name(&v1)
        .set_ciphertext(by_version.ciphertext)
        .send()
        .await
        .unwrap_err();
    assert!(e.is_binding(), "{e:?}");
    // A version that does not exist.
    let r = c
        .encrypt()
        .set_name(format!("{}/cryptoKeyVersions/7", key.id()))
        .set_plaintext(b"x".to_vec())
        .send()
        .await;
    assert_eq!(code(r), Code::NotFound);
}

#[tokio::test]
async fn bad_checksums_and_malformed_ciphertexts_are_invalid_arguments() {
    let kms = KmsDouble::start();
    let c = client(&kms).await;
    let key = kms.create_key("k");
    let r = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"x".to_vec())
        .set_plaintext_crc32c(crc(b"y"))
        .send()
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"x".to_vec())
        .set_additional_authenticated_data(b"a".to_vec())
        .set_additional_authenticated_data_crc32c(crc(b"b"))
        .send()
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    // Empty plaintext.
    let r = c.encrypt().set_name(key.id()).send().await;
    assert_eq!(code(r), Code::InvalidArgument);

    let enc = c
        .encrypt()
        .set_name(key.id())
        .set_plaintext(b"x".to_vec())
        .send()
        .await
        .unwrap();
    let r = c
        .decrypt()
        .set_name(key.id())
        .set_ciphertext(enc.ciphertext.clone())
        .set_ciphertext_crc32c(crc(b"other"))
        .send()
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let mut tampered = enc.ciphertext.to_vec();
    tampered[0] ^= 0x80; // names a version that does not exist
    let truncated = enc.ciphertext[..10].to_vec();
    let mut flipped = enc.ciphertext.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    for ct in [tampered, truncated, flipped] {
        let r = c
            .decrypt()
            .set_name(key.id())
            .set_ciphertext(ct)
            .send()
            .await;
        assert_eq!(code(r), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn injected_failures_use_google_status_codes() {
    let kms = KmsDouble::start();
    let c = client(&kms).await;
    let key = kms.create_key("k");
    kms.fail_next(2, "UNAVAILABLE");
    for _ in 0..2 {
        let r = c.get_crypto_key().set_name(key.id()).send().await;
        let e = r.unwrap_err();
        assert_eq!(e.status().unwrap().code, Code::Unavailable);
        assert_eq!(e.http_status_code(), Some(503));
    }
    c.get_crypto_key().set_name(key.id()).send().await.unwrap();
    kms.fail_next(1, "RESOURCE_EXHAUSTED");
    let e = c
        .get_crypto_key()
        .set_name(key.id())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.status().unwrap().code, Code::ResourceExhausted);
    assert_eq!(e.http_status_code(), Some(429));
    assert_eq!(kms.calls(&key, "get"), 4);
}
