//! `kms_azure`: the Azure Key Vault provider's formats. Selector 0: a stored wrapped key (the
//! layout of `crates/keyward-kms-azure/src/layout.rs`, parsed before the vault is called);
//! selector 1: a key id ([`keyward_kms_azure::AzureKeyId`]).
//!
//! Invariants: an accepted wrapped key is header || nonce || 48 sealed bytes, its header is what
//! the provider writes for its fields, its key version is 32 hex digits and its vault-wrapped key
//! has a length possible for its algorithm; an accepted key id displays in a canonical form (host
//! lower-cased) that parses back to itself.

use keyward_kms_azure::AzureKeyId;
use keyward_kms_azure::fuzzing::{encode_header, parse_wrapped_key};

pub fn run(data: &[u8]) {
    let Some((selector, rest)) = crate::select(data, 2) else {
        return;
    };
    match selector {
        0 => {
            let Ok(fields) = parse_wrapped_key(rest) else {
                return;
            };
            let header =
                encode_header(fields.algorithm, fields.key_version, fields.vault_wrapped).unwrap();
            assert_eq!(fields.header, &header[..]);
            let mut whole = header;
            whole.extend_from_slice(&fields.nonce);
            whole.extend_from_slice(fields.sealed);
            assert_eq!(whole, rest, "the fields do not account for every byte");
            assert_eq!(fields.sealed.len(), 32 + 16);
            assert_eq!(fields.key_version.len(), 32);
            assert!(fields.key_version.bytes().all(|b| b.is_ascii_hexdigit()));
            let n = fields.vault_wrapped.len();
            match fields.algorithm {
                0x01 => assert!(matches!(n, 256 | 384 | 512)),
                0x02 => assert_eq!(n, 40),
                other => panic!("accepted unknown algorithm {other:#04x}"),
            }
        }
        _ => {
            let Some(text) = crate::text(rest) else {
                return;
            };
            if let Ok(id) = AzureKeyId::parse(text) {
                let shown = id.to_string();
                assert_eq!(AzureKeyId::parse(&shown).unwrap(), id);
                assert!(
                    shown.eq_ignore_ascii_case(text),
                    "{shown:?} is not {text:?}"
                );
                assert_eq!(id.endpoint(), format!("https://{}/", id.host()));
                assert!(id.host().starts_with(id.vault_name()));
            }
        }
    }
}
