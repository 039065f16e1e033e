//! The local key-wrapping construction: a 256-bit key wrapped under another with AES-256-GCM
//! (DEKs under the tenant key; the local development KMS provider). Between the key types
//! ([`crate::key`]) and the AEAD layer ([`crate::aead`]), which know nothing of each other.

use std::collections::BTreeMap;

use zeroize::Zeroize;

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::context::EncryptionContext;
use crate::error::{CryptoError, EnvelopeError};
use crate::key::{KEY_LEN, KeyId, SecretKey, WrappedKey};
use crate::tenant::TenantId;

/// Format byte that starts every [`WrappedKey`] produced by [`wrap_key`].
pub const WRAPPED_KEY_FORMAT: u8 = 0x01;

/// Length in bytes of a [`WrappedKey`] produced by [`wrap_key`]:
/// format byte (1) + nonce (12) + encrypted key (32) + GCM tag (16) = 61.
pub const WRAPPED_KEY_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// Wraps (encrypts) `key` under `wrapping_key` with AES-256-GCM, a fresh random 96-bit nonce
/// and the caller's `aad`.
///
/// Output format (61 bytes): `0x01 || nonce (12) || encrypted key (32) || GCM tag (16)`. The AAD
/// is exactly the caller's `aad`; it is not stored and must be presented again to
/// [`unwrap_key`]. Used for DEKs under the tenant key and by the local development KMS provider.
///
/// Because the nonce is random, one wrapping key should wrap at most about 2³² keys: the chance
/// that two of q random 96-bit nonces collide is about q²/2⁹⁷, i.e. 2⁻³³ at q = 2³² (see
/// `docs/envelope-format.md`).
pub fn wrap_key(
    wrapping_key: &SecretKey,
    key: &SecretKey,
    aad: &[u8],
) -> Result<WrappedKey, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CryptoError::Rng)?;

    let aead_key = aead::AeadKey::new(wrapping_key)?;
    let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
    out.push(WRAPPED_KEY_FORMAT);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(key.expose_secret());
    let body_start = 1 + NONCE_LEN;
    let sealed = aead_key
        .seal_in_place_separate_tag(&nonce, aad, &mut out[body_start..])
        .map(|tag| out.extend_from_slice(&tag));
    if let Err(e) = sealed {
        // The buffer may still hold the plaintext key.
        out.zeroize();
        return Err(e);
    }
    Ok(WrappedKey::new(out))
}

/// Unwraps a key produced by [`wrap_key`] with the same `wrapping_key` and `aad`.
///
/// Every failure (wrong length, unknown format byte, wrong wrapping key, wrong AAD, tampering)
/// is reported as [`CryptoError::Unwrap`], so that the error is not an oracle.
pub fn unwrap_key(
    wrapping_key: &SecretKey,
    wrapped: &WrappedKey,
    aad: &[u8],
) -> Result<SecretKey, CryptoError> {
    let bytes = wrapped.as_bytes();
    if bytes.len() != WRAPPED_KEY_LEN || bytes[0] != WRAPPED_KEY_FORMAT {
        return Err(CryptoError::Unwrap);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[1..1 + NONCE_LEN]);
    // Decrypt in place inside a key-sized buffer that is itself zeroized on drop.
    let mut buf = zeroize::Zeroizing::new([0u8; KEY_LEN + TAG_LEN]);
    buf.copy_from_slice(&bytes[1 + NONCE_LEN..]);
    let aead_key = aead::AeadKey::new(wrapping_key).map_err(|_| CryptoError::Unwrap)?;
    let plain = aead_key
        .open_in_place(&nonce, aad, &mut buf[..])
        .map_err(|_| CryptoError::Unwrap)?;
    SecretKey::try_from_slice(plain).map_err(|_| CryptoError::Unwrap)
}

/// The AAD a DEK is wrapped with under its tenant key ([`wrap_key`]): the canonical encoding
/// ([`EncryptionContext::canonical_bytes`]) of the four pairs
///
/// ```text
/// "keyward:dek-id"  -> the DEK id, 32 lowercase hex digits
/// "keyward:purpose" -> "dek"
/// "keyward:scope"   -> the scope label ("default" when Encrypt named none)
/// "keyward:tenant"  -> the tenant id
/// ```
///
/// so that a wrapped DEK unwraps only as the DEK of that tenant, scope and id: moved to another
/// row, tenant or scope it fails like a wrong key. The server wraps every DEK with it, and the
/// exit kit's decryptors recompute it (`docs/exit.md`, "The data key's AAD"). Fails only for a
/// scope longer than a context value may be (1024 bytes; the store keeps scopes of at most 128).
pub fn dek_wrap_aad(
    tenant: &TenantId,
    scope: &str,
    dek_id: &KeyId,
) -> Result<Vec<u8>, EnvelopeError> {
    let pairs = BTreeMap::from([
        ("keyward:dek-id".to_owned(), dek_id.to_string()),
        ("keyward:purpose".to_owned(), "dek".to_owned()),
        ("keyward:scope".to_owned(), scope.to_owned()),
        ("keyward:tenant".to_owned(), tenant.as_str().to_owned()),
    ]);
    Ok(EncryptionContext::with_reserved(pairs)?.canonical_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn wrap_unwrap_round_trip_and_format() {
        let kek = SecretKey::generate().unwrap();
        let dek = SecretKey::generate().unwrap();
        let w = wrap_key(&kek, &dek, b"tenant=acme").unwrap();
        assert_eq!(w.as_bytes().len(), WRAPPED_KEY_LEN);
        assert_eq!(w.as_bytes().len(), 61);
        assert_eq!(w.as_bytes()[0], WRAPPED_KEY_FORMAT);
        // The key bytes do not appear in clear.
        assert!(
            w.as_bytes()
                .windows(KEY_LEN)
                .all(|win| win != dek.expose_secret())
        );
        let back = unwrap_key(&kek, &w, b"tenant=acme").unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());
        // Fresh nonce each time.
        let w2 = wrap_key(&kek, &dek, b"tenant=acme").unwrap();
        assert_ne!(w, w2);
    }

    /// Pinned: every stored DEK is wrapped with these bytes, so a change would make every
    /// stored DEK fail to unwrap. Written out by hand from the documented layout (docs/exit.md
    /// shows the same bytes in hex).
    #[test]
    fn dek_wrap_aad_is_the_canonical_encoding_of_the_four_pairs() {
        let tenant: TenantId = "acme".parse().unwrap();
        let id = KeyId::from_bytes([0xab; 16]);
        let expected = [
            &[0, 4][..],
            &[0, 14],
            b"keyward:dek-id",
            &[0, 32],
            "ab".repeat(16).as_bytes(),
            &[0, 15],
            b"keyward:purpose",
            &[0, 3],
            b"dek",
            &[0, 13],
            b"keyward:scope",
            &[0, 6],
            b"conv-1",
            &[0, 14],
            b"keyward:tenant",
            &[0, 4],
            b"acme",
        ]
        .concat();
        assert_eq!(expected.len(), 119);
        assert_eq!(dek_wrap_aad(&tenant, "conv-1", &id).unwrap(), expected);
        assert_ne!(
            dek_wrap_aad(&tenant, "conv-2", &id).unwrap(),
            expected,
            "the scope is bound"
        );
        assert!(dek_wrap_aad(&tenant, &"s".repeat(1025), &id).is_err());
    }

    #[test]
    fn unwrap_failures_are_coarse() {
        let kek = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let dek = SecretKey::generate().unwrap();
        let w = wrap_key(&kek, &dek, b"aad").unwrap();

        let is_unwrap = |r: Result<SecretKey, CryptoError>| matches!(r, Err(CryptoError::Unwrap));
        assert!(is_unwrap(unwrap_key(&other, &w, b"aad")));
        assert!(is_unwrap(unwrap_key(&kek, &w, b"aae")));
        assert!(is_unwrap(unwrap_key(&kek, &w, b"")));
        for i in 0..w.as_bytes().len() {
            for bit in 0..8 {
                let mut b = w.clone().into_bytes();
                b[i] ^= 1 << bit;
                assert!(is_unwrap(unwrap_key(&kek, &WrappedKey::new(b), b"aad")));
            }
        }
        let mut long = w.clone().into_bytes();
        long.push(0);
        assert!(is_unwrap(unwrap_key(&kek, &WrappedKey::new(long), b"aad")));
        let short = w.as_bytes()[..WRAPPED_KEY_LEN - 1].to_vec();
        assert!(is_unwrap(unwrap_key(&kek, &WrappedKey::new(short), b"aad")));
        assert!(is_unwrap(unwrap_key(
            &kek,
            &WrappedKey::new(Vec::new()),
            b"aad"
        )));
    }
}
