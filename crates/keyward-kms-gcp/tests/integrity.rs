//! The provider's integrity checks, each proved by a double that lies about exactly one field
//! (`keyward_test_support::gcp::Lie`), and the key-purpose check on a key that is not a
//! symmetric encryption key. Without these, deleting any of the checks in provider.rs passes
//! every other test: the double answers correctly unless told otherwise.
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use keyward_envelope::{KeyId, SecretKey, TenantId};
use keyward_kms::{ErrorKind, KeyProvider, ProviderError, Purpose, WrapContext};
use keyward_test_support::gcp::{KeyPurpose, KmsDouble, Lie};

fn ctx() -> WrapContext {
    WrapContext::new(
        &TenantId::try_from("acme").unwrap(),
        &KeyId::generate().unwrap(),
        Purpose::TenantKey,
    )
}

/// A corrupted answer: transient (`Unavailable`, Google's advice is to retry), never a
/// revocation, and the message names what did not check out.
#[track_caller]
fn corrupted(e: &ProviderError, what: &str) {
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_transient() && !e.is_revocation_signal(), "{e}");
    assert!(e.message().contains(what), "expected '{what}' in: {e}");
}

#[tokio::test]
async fn every_lie_in_an_encrypt_answer_fails_the_wrap() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let kek = kms.create_key("kek");
    let c = ctx();
    let key = SecretKey::generate().unwrap();
    for (lie, what) in [
        (
            Lie::UnverifiedPlaintext,
            "Cloud KMS did not verify the plaintext/AAD checksums",
        ),
        (
            Lie::UnverifiedAad,
            "Cloud KMS did not verify the plaintext/AAD checksums",
        ),
        (
            Lie::CiphertextChecksum,
            "the ciphertext does not match its checksum",
        ),
        (
            Lie::ForeignVersionName,
            "kek-other/cryptoKeyVersions/1', not a version of this key",
        ),
        (
            Lie::EmptyCiphertext,
            "Cloud KMS returned an empty ciphertext",
        ),
    ] {
        kms.set_lie(Some(lie));
        let e = p.wrap(&kek, &key, &c).await.unwrap_err();
        corrupted(&e, what);
        // A lie about Encrypt does not touch Decrypt.
        kms.set_lie(None);
        let wrapped = p.wrap(&kek, &key, &c).await.unwrap();
        kms.set_lie(Some(lie));
        let back = p.unwrap(&kek, &wrapped, &c).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret(), "{lie:?}");
        kms.set_lie(None);
    }
    // Every request carried its checksums (the verified_* flags are only true because of them).
    assert_eq!(kms.requests_without_checksums(), 0);
}

#[tokio::test]
async fn a_wrong_plaintext_checksum_in_a_decrypt_answer_fails_the_unwrap() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    let kek = kms.create_key("kek");
    let c = ctx();
    let wrapped = p
        .wrap(&kek, &SecretKey::generate().unwrap(), &c)
        .await
        .unwrap();
    kms.set_lie(Some(Lie::PlaintextChecksum));
    let e = p.unwrap(&kek, &wrapped, &c).await.map(drop).unwrap_err();
    corrupted(&e, "the plaintext does not match its checksum");
    // A lie about Decrypt does not touch Encrypt.
    p.wrap(&kek, &SecretKey::generate().unwrap(), &c)
        .await
        .unwrap();
    kms.set_lie(None);
    p.unwrap(&kek, &wrapped, &c).await.unwrap();
    assert_eq!(kms.requests_without_checksums(), 0);
}

#[tokio::test]
async fn a_key_that_is_not_a_symmetric_encryption_key_is_misconfigured() {
    let kms = KmsDouble::start();
    let p = kms.provider().await;
    for (id, purpose, name) in [
        ("signing", KeyPurpose::AsymmetricSign, "ASYMMETRIC_SIGN"),
        (
            "rsa-decrypt",
            KeyPurpose::AsymmetricDecrypt,
            "ASYMMETRIC_DECRYPT",
        ),
        ("mac", KeyPurpose::Mac, "MAC"),
    ] {
        let kek = kms.create_key_with_purpose(id, purpose);
        // describe (registration's GetCryptoKey) reads the purpose.
        let e = p.describe(&kek).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
        assert!(
            e.message()
                .contains(&format!("has purpose {name}, not ENCRYPT_DECRYPT")),
            "{e}"
        );
        let r = e.remediation().unwrap();
        assert!(r.contains("Keyward needs a symmetric key"), "{r}");
        assert!(
            r.contains(&format!("gcloud kms keys create {id} --keyring keyward")),
            "{r}"
        );
        // Encrypt on it: INVALID_ARGUMENT from Cloud KMS, Misconfigured with the same advice.
        let e = p
            .wrap(&kek, &SecretKey::generate().unwrap(), &ctx())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
        assert!(e.message().contains("INVALID_ARGUMENT"), "{e}");
        assert!(
            e.remediation()
                .unwrap()
                .contains("Keyward needs a symmetric key"),
            "{e:?}"
        );
    }
    // The double's default purpose passes the same check.
    let kek = kms.create_key_with_purpose("symmetric", KeyPurpose::EncryptDecrypt);
    p.describe(&kek).await.unwrap();
}
