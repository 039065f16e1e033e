//! `kms_pkcs11`: the PKCS#11 provider's formats. Selector 0: a stored wrapped key (61 bytes:
//! version, IV, ciphertext and tag; decoded before the token is called); selector 1: a key URI
//! ([`keyward_kms_pkcs11::Pkcs11KeyUri`], RFC 7512 subset).
//!
//! Invariants: an accepted wrapped key re-encodes to exactly its input; an accepted URI names a
//! key (object or id), displays in canonical form, and that form parses back to the same URI.

use keyward_kms_pkcs11::Pkcs11KeyUri;
use keyward_kms_pkcs11::fuzzing::{decode_wrapped_key, encode_wrapped_key};

pub fn run(data: &[u8]) {
    let Some((selector, rest)) = crate::select(data, 2) else {
        return;
    };
    match selector {
        0 => match decode_wrapped_key(rest) {
            Ok((iv, sealed)) => {
                assert_eq!(encode_wrapped_key(&iv, sealed).unwrap(), rest);
            }
            Err(message) => assert!(message.starts_with("the wrapped key")),
        },
        _ => {
            let Some(text) = crate::text(rest) else {
                return;
            };
            if let Ok(uri) = Pkcs11KeyUri::from_key_ref_id(text) {
                assert!(uri.object.is_some() || uri.id.is_some());
                let shown = uri.to_string();
                assert_eq!(
                    shown.parse::<Pkcs11KeyUri>().unwrap(),
                    uri,
                    "{shown:?} does not parse back"
                );
                assert_eq!(Pkcs11KeyUri::from_key_ref_id(&shown).unwrap(), uri);
            }
        }
    }
}
