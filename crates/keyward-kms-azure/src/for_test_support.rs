//! What `keyward-test-support`'s Key Vault double (`crates/keyward-test-support/src/azure.rs`)
//! needs from inside this crate. Not part of the API: hidden from the documentation, and it
//! changes with the double.

use keyward_envelope::SecretKey;
use keyward_kms::WrapContext;

use crate::wrapped_key_format::{self as layout, VaultAlg};

/// The provider's local seal of `key` under the intermediate key `k` (`wrapped_key_format.rs`),
/// for a `k` that RSA-OAEP-256 under key version `key_version` wrapped as `vault_wrapped`: what
/// anyone who has read the key's public half can make without the vault (the double's
/// `forge_with_public_key`; docs/adr/0007-tenant-key-mac.md).
pub fn seal_rsa_oaep256(
    key_version: &str,
    vault_wrapped: &[u8],
    k: &[u8; 32],
    nonce: [u8; 12],
    key: &SecretKey,
    ctx: &WrapContext,
) -> Result<Vec<u8>, &'static str> {
    layout::seal(
        VaultAlg::RsaOaep256,
        key_version,
        vault_wrapped,
        k,
        nonce,
        key,
        ctx,
    )
}
