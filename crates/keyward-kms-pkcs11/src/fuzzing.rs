//! Entry points for the coverage-guided fuzz target `kms_pkcs11` (`fuzz/`, docs/threat-model.md
//! "Hostile input"). Not part of the API: the layout decoder the provider runs on a stored
//! wrapped key before it calls the token, and the encoder it uses when wrapping.

use crate::wrapped_key_format as layout;

/// The provider's decoder of a stored wrapped key: the IV and the ciphertext with its tag, or
/// the message the provider reports (`InvalidCiphertext`) for bytes of another layout.
pub fn decode_wrapped_key(bytes: &[u8]) -> Result<([u8; layout::IV_LEN], &[u8]), String> {
    layout::decode(bytes).map_err(layout::LayoutError::describe)
}

/// The layout the provider writes for an IV and the token's ciphertext with its tag (`None`:
/// not a 32-byte key's ciphertext and 16-byte tag).
pub fn encode_wrapped_key(iv: &[u8; layout::IV_LEN], ciphertext_and_tag: &[u8]) -> Option<Vec<u8>> {
    layout::encode(iv, ciphertext_and_tag)
}
