//! The byte layout of a key wrapped by this provider.
//!
//! ```text
//! offset  len  field
//! 0       1    version = 0x01 (CKM_AES_GCM, 96-bit IV, 128-bit tag, AAD = WrapContext::aad())
//! 1       12   IV (random, from the token's C_GenerateRandom)
//! 13      32   ciphertext of the 32-byte key
//! 45      16   GCM tag
//! ```
//!
//! 61 bytes in all. Anything else (another length, another version byte) is rejected as
//! `InvalidCiphertext` before the token is called.

/// The only layout version.
pub(crate) const VERSION_GCM: u8 = 0x01;
/// AES-GCM IV length in bytes.
pub(crate) const IV_LEN: usize = 12;
/// AES-GCM tag length in bytes (128 bits).
pub(crate) const TAG_LEN: usize = 16;
/// The wrapped key: the 32-byte key.
pub(crate) const KEY_LEN: usize = keyward_envelope::KEY_LEN;
/// Total length of a wrapped key.
pub const WRAPPED_LEN: usize = 1 + IV_LEN + KEY_LEN + TAG_LEN;

/// Why bytes are not a wrapped key of this provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayoutError {
    Length(usize),
    Version(u8),
}

impl LayoutError {
    pub(crate) fn describe(self) -> String {
        match self {
            LayoutError::Length(n) => {
                format!("the wrapped key is {n} bytes; a PKCS#11-wrapped key is {WRAPPED_LEN}")
            }
            LayoutError::Version(v) => {
                format!(
                    "the wrapped key has layout version {v:#04x}; only {VERSION_GCM:#04x} is known"
                )
            }
        }
    }
}

/// Lays out a wrapped key from the IV and the ciphertext+tag returned by C_Encrypt.
pub(crate) fn encode(iv: &[u8; IV_LEN], ciphertext_and_tag: &[u8]) -> Option<Vec<u8>> {
    if ciphertext_and_tag.len() != KEY_LEN + TAG_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.push(VERSION_GCM);
    out.extend_from_slice(iv);
    out.extend_from_slice(ciphertext_and_tag);
    Some(out)
}

/// Splits a wrapped key into IV and ciphertext+tag.
pub(crate) fn decode(bytes: &[u8]) -> Result<([u8; IV_LEN], &[u8]), LayoutError> {
    if bytes.len() != WRAPPED_LEN {
        return Err(LayoutError::Length(bytes.len()));
    }
    if bytes[0] != VERSION_GCM {
        return Err(LayoutError::Version(bytes[0]));
    }
    let mut iv = [0u8; IV_LEN];
    iv.copy_from_slice(&bytes[1..1 + IV_LEN]);
    Ok((iv, &bytes[1 + IV_LEN..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let iv = [7u8; IV_LEN];
        let ct = [9u8; KEY_LEN + TAG_LEN];
        let w = encode(&iv, &ct).unwrap();
        assert_eq!(w.len(), WRAPPED_LEN);
        assert_eq!(WRAPPED_LEN, 61);
        // The offsets of the module docs, not only what `decode` reads back: keys wrapped
        // earlier are stored in this layout.
        assert_eq!(w[0], 0x01);
        assert_eq!(w[1..13], [7; 12]);
        assert_eq!(w[13..], [9; 48]);
        let (iv2, ct2) = decode(&w).unwrap();
        assert_eq!((iv2, ct2), (iv, &ct[..]));
        assert!(encode(&iv, &ct[1..]).is_none());
        assert_eq!(decode(&w[1..]), Err(LayoutError::Length(60)));
        assert_eq!(decode(&[]), Err(LayoutError::Length(0)));
        let mut v = w.clone();
        v[0] = 2;
        assert_eq!(decode(&v), Err(LayoutError::Version(2)));
        assert!(LayoutError::Version(2).describe().contains("0x02"));
    }
}
