//! What to tell the customer's Google Cloud administrator when a key is wrong, missing or
//! disabled: ready-to-paste `gcloud` commands.
//!
//! Attached to [`keyward_kms::ProviderError`]s (`with_remediation`), so the server returns it
//! in the `remediation` error detail of a failed `RegisterKey` (the registration canary) and
//! logs it when the revocation monitor sees a refusal.

use crate::name::CryptoKeyName;

/// The role that lets `member` encrypt and decrypt with the key (and nothing else).
pub const ENCRYPTER_DECRYPTER_ROLE: &str = "roles/cloudkms.cryptoKeyEncrypterDecrypter";

/// The role that lets `member` read the key's metadata and primary version state (for
/// `describe`: the encrypter/decrypter role does not include `cloudkms.cryptoKeys.get`).
pub const VIEWER_ROLE: &str = "roles/cloudkms.viewer";

/// `gcloud kms keys add-iam-policy-binding …` granting `role` on `key` to `member`.
pub fn grant_command(key: &CryptoKeyName, member: &str, role: &str) -> String {
    format!(
        "gcloud kms keys add-iam-policy-binding {k} --keyring {r} --location {l} --project {p} \
         --member {member} --role {role}",
        k = key.crypto_key,
        r = key.key_ring,
        l = key.location,
        p = key.project,
    )
}

/// For `PERMISSION_DENIED`: first whether the key exists at all (Cloud KMS checks IAM before
/// existence, so with Keyward's key-level bindings a mistyped name is `PERMISSION_DENIED` too,
/// and the grant commands alone would send the customer after a key that is not there), then
/// the two bindings Keyward needs.
pub fn grant_access(key: &CryptoKeyName, member: &str) -> String {
    format!(
        "Cloud KMS denied {member} access to {key}, or the key does not exist: Cloud KMS answers \
         PERMISSION_DENIED for a key the caller may not see, existing or not. Check the name: \
         `{describe}` must show the key (if it does not, correct the key reference or create the \
         key with `gcloud kms keys create {k} --keyring {r} --location {l} --project {p} \
         --purpose encryption`). If it exists and the denial was not meant as a revocation, let \
         Keyward use the key: {encdec} and, so that Keyward can read the key's state: {viewer}",
        describe = describe_command(key),
        k = key.crypto_key,
        r = key.key_ring,
        l = key.location,
        p = key.project,
        encdec = grant_command(key, member, ENCRYPTER_DECRYPTER_ROLE),
        viewer = grant_command(key, member, VIEWER_ROLE),
    )
}

/// `gcloud kms keys describe …` for `key` (run by the customer, who can see it).
pub fn describe_command(key: &CryptoKeyName) -> String {
    format!(
        "gcloud kms keys describe {k} --keyring {r} --location {l} --project {p}",
        k = key.crypto_key,
        r = key.key_ring,
        l = key.location,
        p = key.project,
    )
}

/// For `FAILED_PRECONDITION`: a key version is disabled or being destroyed.
pub fn reenable(key: &CryptoKeyName) -> String {
    format!(
        "A version of {key} is not enabled, which Keyward treats as a revocation. If that was not \
         meant as a revocation, list the versions with `gcloud kms keys versions list --key {k} \
         --keyring {r} --location {l} --project {p}` and re-enable the one that is disabled: \
         `gcloud kms keys versions enable VERSION --key {k} --keyring {r} --location {l} \
         --project {p}` (a version scheduled for destruction must first be restored: \
         `gcloud kms keys versions restore VERSION …`, then enabled). A destroyed version \
         cannot be recovered.",
        k = key.crypto_key,
        r = key.key_ring,
        l = key.location,
        p = key.project,
    )
}

/// For `NOT_FOUND`: how to create a correct key.
pub fn create_key(key: &CryptoKeyName) -> String {
    format!(
        "Cloud KMS has no key {key}. Create a symmetric encryption key (and its key ring if \
         needed): `gcloud kms keyrings create {r} --location {l} --project {p}` then \
         `gcloud kms keys create {k} --keyring {r} --location {l} --project {p} \
         --purpose encryption --protection-level hsm` (or software), and grant Keyward access.",
        k = key.crypto_key,
        r = key.key_ring,
        l = key.location,
        p = key.project,
    )
}

/// For a key of the wrong purpose.
pub fn wrong_purpose(key: &CryptoKeyName) -> String {
    format!(
        "Keyward needs a symmetric key (purpose ENCRYPT_DECRYPT, algorithm \
         GOOGLE_SYMMETRIC_ENCRYPTION); {key} is not one. {create}",
        create = create_key(key)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn grant_command_is_exact() {
        let key: CryptoKeyName = "projects/acme/locations/europe-west1/keyRings/kw/cryptoKeys/kek"
            .parse()
            .unwrap();
        assert_eq!(
            grant_command(
                &key,
                "serviceAccount:keyward@ops.iam.gserviceaccount.com",
                ENCRYPTER_DECRYPTER_ROLE
            ),
            "gcloud kms keys add-iam-policy-binding kek --keyring kw --location europe-west1 \
             --project acme --member serviceAccount:keyward@ops.iam.gserviceaccount.com \
             --role roles/cloudkms.cryptoKeyEncrypterDecrypter"
        );
        let text = grant_access(&key, "serviceAccount:x@y");
        assert!(text.contains("--role roles/cloudkms.cryptoKeyEncrypterDecrypter"));
        assert!(text.contains("--role roles/cloudkms.viewer"));
        assert!(text.contains(
            "gcloud kms keys describe kek --keyring kw --location europe-west1 --project acme"
        ));
        assert!(text.contains("or the key does not exist"));
        assert!(reenable(&key).contains("gcloud kms keys versions enable VERSION --key kek"));
        assert!(create_key(&key).contains("--purpose encryption"));
    }
}
