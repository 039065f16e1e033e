//! Raw AES-256-GCM with an explicit key, 96-bit nonce and AAD, through `aws-lc-rs`.
//!
//! This is the primitive layer under the envelope and [`crate::wrap_key`]: the Wycheproof
//! AES-GCM vectors run against it (`tests/wycheproof.rs`) and the library comparison bench
//! measures it (`benches/aead.rs`). It is a hazmat layer: callers choose nonces, and reusing a
//! (key, nonce) pair destroys both confidentiality and authenticity. Prefer [`crate::Sealer`].
//!
//! Ciphertexts are laid out as `ciphertext || tag`, the tag being [`TAG_LEN`] bytes.

use crate::Wiped;
use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::error::CryptoError;
use crate::key::SecretKey;

/// AES-GCM nonce length in bytes (96 bits, the only size Keyward uses).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length in bytes (128 bits, the only size Keyward uses).
pub const TAG_LEN: usize = 16;

/// An expanded AES-256-GCM key.
///
/// Built once and reused for many operations (the key schedule and GHASH tables are computed in
/// [`AeadKey::new`]). The expanded key lives inside aws-lc's `EVP_AEAD_CTX`, which aws-lc
/// cleanses when it is freed.
pub struct AeadKey(LessSafeKey);

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AeadKey(AES-256-GCM, ..)")
    }
}

impl AeadKey {
    /// Expands `key` into an AES-256-GCM key.
    pub fn new(key: &SecretKey) -> Result<Self, CryptoError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key.expose_secret()).map_err(|_| CryptoError::Aead)?;
        Ok(AeadKey(LessSafeKey::new(unbound)))
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub fn seal_in_place_separate_tag(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            .map_err(|_| CryptoError::Aead)?;
        let mut out = [0u8; TAG_LEN];
        let tag = tag.as_ref();
        if tag.len() != TAG_LEN {
            return Err(CryptoError::Aead);
        }
        out.copy_from_slice(tag);
        Ok(out)
    }

    /// Encrypts `in_out` in place and appends the tag.
    pub fn seal_in_place_append_tag(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let tag = self.seal_in_place_separate_tag(nonce, aad, in_out)?;
        in_out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts `ciphertext || tag` in place and returns the plaintext prefix of `in_out`.
    ///
    /// On failure the content of `in_out` is unspecified (aws-lc clears the output it wrote);
    /// callers must not use it.
    pub fn open_in_place<'io>(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &'io mut [u8],
    ) -> Result<&'io mut [u8], CryptoError> {
        if in_out.len() < TAG_LEN {
            return Err(CryptoError::Aead);
        }
        self.0
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out)
            .map_err(|_| CryptoError::Aead)
    }
}

/// One-shot AES-256-GCM encryption: returns `ciphertext || tag`.
pub fn seal(
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = AeadKey::new(key)?;
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    if let Err(e) = key.seal_in_place_append_tag(nonce, aad, &mut out) {
        out.zeroize();
        return Err(e);
    }
    Ok(out)
}

/// One-shot AES-256-GCM decryption of `ciphertext || tag`; the plaintext is zeroized on drop.
pub fn open(
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Wiped, CryptoError> {
    let key = AeadKey::new(key)?;
    let mut buf = Wiped::new(ciphertext_and_tag.to_vec());
    let len = key.open_in_place(nonce, aad, &mut buf[..])?.len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    // NIST GCM test vector (gcmEncryptExtIV256, "Test Case 16" of the original GCM spec by
    // McGrew & Viega): 256-bit key, 96-bit IV, 60-byte plaintext, 20-byte AAD.
    #[test]
    fn known_answer_gcm_spec_test_case_16() {
        let key = SecretKey::try_from_slice(
            &hex::decode("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
                .unwrap(),
        )
        .unwrap();
        let nonce: [u8; 12] = hex::decode("cafebabefacedbaddecaf888")
            .unwrap()
            .try_into()
            .unwrap();
        let pt = hex::decode(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        )
        .unwrap();
        let aad = hex::decode("feedfacedeadbeeffeedfacedeadbeefabaddad2").unwrap();
        let expected = hex::decode(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
             76fc6ece0f4e1768cddf8853bb2d551b",
        )
        .unwrap();
        let ct = seal(&key, &nonce, &aad, &pt).unwrap();
        assert_eq!(ct, expected);
        assert_eq!(&open(&key, &nonce, &aad, &ct).unwrap()[..], &pt[..]);
    }

    #[test]
    fn open_rejects_short_and_tampered_input() {
        let key = SecretKey::from_bytes([3u8; 32]);
        let nonce = [0u8; NONCE_LEN];
        assert!(open(&key, &nonce, b"", &[0u8; TAG_LEN - 1]).is_err());
        let ct = seal(&key, &nonce, b"aad", b"hello").unwrap();
        assert_eq!(ct.len(), 5 + TAG_LEN);
        assert!(open(&key, &nonce, b"aae", &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(open(&key, &nonce, b"aad", &bad).is_err());
        let mut bad_nonce = nonce;
        bad_nonce[11] = 1;
        assert!(open(&key, &bad_nonce, b"aad", &ct).is_err());
        assert_eq!(&open(&key, &nonce, b"aad", &ct).unwrap()[..], b"hello");
    }
}
