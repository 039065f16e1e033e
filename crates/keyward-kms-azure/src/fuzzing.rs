//! Entry points for the coverage-guided fuzz target `kms_azure` (`fuzz/`, docs/threat-model.md
//! "Hostile input"). Not part of the API: the layout parser the provider runs on a stored
//! wrapped key before it calls the vault, and the header encoder it uses when wrapping.

use crate::wrapped_key_format::{self as layout, VaultAlg};

/// The fields of a wrapped key as [`parse_wrapped_key`] split them (see `wrapped_key_format.rs`).
#[derive(Debug, PartialEq, Eq)]
pub struct WrappedKeyFields<'a> {
    /// The vault algorithm code (0x01 RSA-OAEP-256, 0x02 A256KW).
    pub algorithm: u8,
    /// The key version that wrapped the intermediate key.
    pub key_version: &'a str,
    /// The intermediate key as the vault wrapped it.
    pub vault_wrapped: &'a [u8],
    /// Every byte before the nonce (authenticated as part of the AAD).
    pub header: &'a [u8],
    /// The AES-256-GCM nonce.
    pub nonce: [u8; 12],
    /// The encrypted tenant key and its tag.
    pub sealed: &'a [u8],
}

/// The provider's parser of a stored wrapped key; `Err` is the reason it gives.
pub fn parse_wrapped_key(bytes: &[u8]) -> Result<WrappedKeyFields<'_>, &'static str> {
    layout::parse(bytes).map(|p| WrappedKeyFields {
        algorithm: p.alg.code(),
        key_version: p.key_version,
        vault_wrapped: p.vault_wrapped,
        header: p.header,
        nonce: p.nonce,
        sealed: p.sealed,
    })
}

/// The header the provider writes for these fields (`None`: unknown algorithm code, or a field
/// too long for its length prefix).
pub fn encode_header(algorithm: u8, key_version: &str, vault_wrapped: &[u8]) -> Option<Vec<u8>> {
    layout::header(VaultAlg::from_code(algorithm)?, key_version, vault_wrapped)
}
