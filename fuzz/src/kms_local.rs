//! `kms_local`: the local provider's stored formats. Selector 0: a wrapped key
//! ([`keyward_envelope::unwrap_key`], the 61-byte format the local provider and the DEK table
//! use) under a fixed wrapping key and AAD (the wrapped-key test vectors'); selector 1: a key
//! reference `<provider>:<id>` ([`keyward_kms::KeyRef`]).
//!
//! Invariants: unwrap fails only with the coarse `Unwrap`, and succeeds only for 61 bytes
//! starting with the format byte; an accepted key reference displays as its input and parses
//! back to itself.

use keyward_envelope::{
    CryptoError, SecretKey, WRAPPED_KEY_FORMAT, WRAPPED_KEY_LEN, WrappedKey, unwrap_key,
};
use keyward_kms::KeyRef;

/// The wrapping key of the wrapped-key test vectors.
pub const WRAPPING_KEY: [u8; 32] = [
    0x0f, 0x3a, 0x65, 0x90, 0xbb, 0xe6, 0x11, 0x3c, 0x67, 0x92, 0xbd, 0xe8, 0x13, 0x3e, 0x69, 0x94,
    0xbf, 0xea, 0x15, 0x40, 0x6b, 0x96, 0xc1, 0xec, 0x17, 0x42, 0x6d, 0x98, 0xc3, 0xee, 0x19, 0x44,
];
/// Their AAD: `keyward:dek\0acme`.
pub const AAD: &[u8] = b"keyward:dek\0acme";

pub fn run(data: &[u8]) {
    let Some((selector, rest)) = crate::select(data, 2) else {
        return;
    };
    match selector {
        0 => {
            let wrapped = WrappedKey::new(rest.to_vec());
            match unwrap_key(&SecretKey::from_bytes(WRAPPING_KEY), &wrapped, AAD) {
                Ok(_) => assert!(
                    rest.len() == WRAPPED_KEY_LEN && rest[0] == WRAPPED_KEY_FORMAT,
                    "unwrapped {} bytes that are not the 61-byte format",
                    rest.len()
                ),
                Err(CryptoError::Unwrap) => {}
                Err(other) => panic!("unwrap failed with a detailed error (an oracle): {other:?}"),
            }
        }
        _ => {
            let Some(text) = crate::text(rest) else {
                return;
            };
            if let Ok(key) = text.parse::<KeyRef>() {
                assert_eq!(key.to_string(), text);
                assert!(!key.id().is_empty());
                assert_eq!(key.to_string().parse::<KeyRef>().unwrap(), key);
            }
        }
    }
}
