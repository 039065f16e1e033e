//! `kms_gcp`: the Cloud KMS provider's key reference ([`keyward_kms_gcp::CryptoKeyName`],
//! `projects/…/locations/…/keyRings/…/cryptoKeys/…`). Cloud KMS wrapped keys are ciphertexts
//! that only Cloud KMS reads.
//!
//! Invariants: an accepted name displays as exactly its input and parses back to itself; the
//! rejection message echoes at most 300 characters of the input.

use keyward_kms_gcp::CryptoKeyName;

pub fn run(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    match text.parse::<CryptoKeyName>() {
        Ok(name) => {
            assert_eq!(name.to_string(), text);
            assert_eq!(name.to_string().parse::<CryptoKeyName>().unwrap(), name);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.chars().count() <= 300 + 1 + 1024,
                "unbounded echo of the input: {} characters",
                message.chars().count()
            );
        }
    }
}
