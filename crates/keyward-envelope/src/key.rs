//! Key material and key identifiers: [`SecretKey`], [`WrappedKey`], [`KeyId`]. The types only:
//! the key-wrapping construction that produces a [`WrappedKey`] is in [`crate::wrap`].

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{CryptoError, EnvelopeError};
use crate::schedule::HmacSchedule;

/// Length in bytes of every symmetric key Keyward handles (AES-256).
pub const KEY_LEN: usize = 32;

/// Length in bytes of a [`KeyId`].
pub const KEY_ID_LEN: usize = 16;

/// A 256-bit secret key: a DEK, a tenant key or a local master key.
///
/// The bytes are zeroized when the value is dropped. The type deliberately implements neither
/// `Debug` nor `Clone` (nor any serialisation), so key material cannot reach a log line or be
/// duplicated by accident; [`SecretKey::expose_secret`] is the one explicit way to the bytes.
///
/// The bytes live in their own heap allocation, written in place and never moved: moving a
/// `SecretKey` (returning it, putting it in a tuple, an `Arc` or an async state machine) moves
/// only the pointer. An inline array would be copied by every such move, and Rust does not
/// clear the moved-from copy, so stale key bytes would be left in stack frames and freed
/// future allocations where no `Drop` ever reaches them (`tests/e2e/tests/memory.rs` scans the
/// server's memory for exactly that; `docs/adr/0005-memory-locking.md`).
///
/// ```compile_fail,E0277
/// let key = keyward_envelope::SecretKey::from_bytes([7u8; 32]);
/// let _ = format!("{:?}", key); // SecretKey has no Debug
/// ```
///
/// ```compile_fail,E0599
/// let key = keyward_envelope::SecretKey::from_bytes([7u8; 32]);
/// let _copy = key.clone(); // SecretKey has no Clone
/// ```
#[allow(
    missing_debug_implementations,
    reason = "secret key material must never be formatted"
)]
pub struct SecretKey {
    bytes: Box<[u8; KEY_LEN]>,
    /// The key's HMAC-SHA-512 schedule, computed on the first derivation under it (suite
    /// `0x0002`, the framed format) and kept while the key lives: a long-lived DEK in the cache
    /// then spends 2 SHA-512 compressions per message instead of 4. Zeroized with the key.
    hmac: std::sync::OnceLock<Box<HmacSchedule>>,
}

impl Zeroize for SecretKey {
    fn zeroize(&mut self) {
        self.bytes.as_mut().zeroize();
        // Dropping the schedule zeroizes it (`HmacSchedule`'s Drop).
        drop(self.hmac.take());
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for SecretKey {}

impl SecretKey {
    /// Generates a fresh key from the system CSPRNG (via `aws_lc_rs::rand`), written
    /// directly into its final heap location.
    pub fn generate() -> Result<SecretKey, CryptoError> {
        let mut key = SecretKey::zeroed();
        aws_lc_rs::rand::fill(key.bytes.as_mut()).map_err(|_| CryptoError::Rng)?;
        Ok(key)
    }

    /// Wraps existing key bytes. The array is copied to the heap and the argument's copy is
    /// zeroized; callers holding the bytes elsewhere (for example in a decoding buffer) are
    /// responsible for zeroizing that copy. Prefer [`SecretKey::try_from_slice`] from a
    /// `Zeroizing` buffer.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> SecretKey {
        let mut key = SecretKey::zeroed();
        key.bytes.copy_from_slice(&bytes);
        bytes.zeroize();
        key
    }

    /// Copies key bytes from a slice, which must be exactly [`KEY_LEN`] bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Result<SecretKey, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::InvalidKeyLength(bytes.len()));
        }
        let mut key = SecretKey::zeroed();
        key.bytes.copy_from_slice(bytes);
        Ok(key)
    }

    /// An all-zero key, to be filled in place by a KDF or the RNG (avoids copying key bytes
    /// around).
    pub(crate) fn zeroed() -> SecretKey {
        SecretKey {
            bytes: Box::new([0u8; KEY_LEN]),
            hmac: std::sync::OnceLock::new(),
        }
    }

    /// The key's HMAC-SHA-512 schedule, computed once.
    pub(crate) fn hmac_schedule(&self) -> &HmacSchedule {
        self.hmac.get_or_init(|| HmacSchedule::new(&self.bytes))
    }

    /// Mutable access for in-place filling; crate-internal only. Drops a schedule computed
    /// from the bytes being replaced.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8; KEY_LEN] {
        drop(self.hmac.take());
        &mut self.bytes
    }

    /// The raw key bytes. Use only where the key is handed to a cryptographic primitive or to
    /// a KMS wrap call; never log or persist the result, and never copy it into a buffer
    /// that is not zeroized on drop.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

/// Opaque wrapped-key bytes: a key encrypted under another key, by [`crate::wrap_key`] or by a KMS.
///
/// Not secret (it is what the store persists), but its `Debug` shows only the length, because
/// the bytes are useless in a log and noisy.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Wraps bytes obtained from a store or a KMS response.
    pub fn new(bytes: Vec<u8>) -> Self {
        WrappedKey(bytes)
    }

    /// The wrapped bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Consumes the value, returning the wrapped bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for WrappedKey {
    fn from(bytes: Vec<u8>) -> Self {
        WrappedKey(bytes)
    }
}

/// A 16-byte random identifier for DEKs and tenant keys.
///
/// Displayed and parsed as exactly 32 hexadecimal characters (displayed lowercase; parsing
/// accepts either case). Not secret.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// Generates a fresh random identifier (128 bits from the system CSPRNG, so identifiers
    /// collide with probability about n²/2¹²⁹).
    pub fn generate() -> Result<KeyId, CryptoError> {
        let mut bytes = [0u8; KEY_ID_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CryptoError::Rng)?;
        Ok(KeyId(bytes))
    }

    /// Wraps existing identifier bytes.
    pub fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> Self {
        KeyId(bytes)
    }

    /// Parses identifier bytes from a slice, which must be exactly [`KEY_ID_LEN`] bytes long
    /// (for example a `BLOB` column).
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        <[u8; KEY_ID_LEN]>::try_from(bytes)
            .map(KeyId)
            .map_err(|_| EnvelopeError::Malformed("key id must be exactly 16 bytes"))
    }

    /// The identifier bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Into a stack buffer: `hex::encode` allocates a String char by char (every Encrypt
        // response carries its DEK id).
        let mut buf = [0u8; 2 * KEY_ID_LEN];
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex::encode(self.0))
    }
}

impl FromStr for KeyId {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const MSG: &str = "key id must be exactly 32 hexadecimal characters";
        if s.len() != 2 * KEY_ID_LEN {
            return Err(EnvelopeError::Malformed(MSG));
        }
        let mut bytes = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| EnvelopeError::Malformed(MSG))?;
        Ok(KeyId(bytes))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// Compile-time proof that `SecretKey` implements neither `Debug` nor `Clone` (the
    /// `static_assertions::assert_not_impl_any!` trick: if `SecretKey` implemented the trait,
    /// both blanket impls would apply and the inferred `_` below would be ambiguous). Unlike
    /// the `compile_fail` doc-tests, this cannot pass for an unrelated compile error.
    #[allow(dead_code, reason = "only has to type-check")]
    const _: fn() = || {
        trait AmbiguousIfImpl<A> {
            fn some_item() {}
        }
        impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
        struct Debuggable;
        struct Cloneable;
        impl<T: ?Sized + fmt::Debug> AmbiguousIfImpl<Debuggable> for T {}
        impl<T: Clone> AmbiguousIfImpl<Cloneable> for T {}
        let _ = <SecretKey as AmbiguousIfImpl<_>>::some_item;
    };

    #[test]
    fn generated_keys_differ() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.expose_secret(), &[0u8; KEY_LEN]);
    }

    #[test]
    fn try_from_slice_checks_length() {
        for len in [0usize, 1, 16, 31, 33, 64] {
            let v = vec![1u8; len];
            assert!(matches!(
                SecretKey::try_from_slice(&v),
                Err(CryptoError::InvalidKeyLength(l)) if l == len
            ));
        }
        let k = SecretKey::try_from_slice(&[9u8; 32]).unwrap();
        assert_eq!(k.expose_secret(), &[9u8; 32]);
    }

    #[test]
    fn moving_a_key_does_not_move_its_bytes() {
        let key = SecretKey::generate().unwrap();
        let at = key.expose_secret().as_ptr();
        let moved = (key, 1u8).0;
        let boxed = std::sync::Arc::new(moved);
        assert_eq!(boxed.expose_secret().as_ptr(), at);
    }

    #[test]
    fn from_bytes_copies_the_key() {
        let k = SecretKey::from_bytes([0x5A; KEY_LEN]);
        assert_eq!(k.expose_secret(), &[0x5A; KEY_LEN]);
    }

    #[test]
    fn zeroize_clears_key_bytes() {
        let mut k = SecretKey::from_bytes([0xAB; KEY_LEN]);
        k.zeroize();
        assert_eq!(k.expose_secret(), &[0u8; KEY_LEN]);
    }

    #[test]
    fn wrapped_key_debug_shows_length_only() {
        let w = WrappedKey::new(vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(format!("{w:?}"), "WrappedKey(4 bytes)");
        assert_eq!(w.clone().into_bytes(), vec![0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn key_id_display_and_parse_round_trip() {
        let id =
            KeyId::from_bytes(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\xff");
        let s = id.to_string();
        assert_eq!(s, "000102030405060708090a0b0c0d0eff");
        assert_eq!(format!("{id:?}"), "KeyId(000102030405060708090a0b0c0d0eff)");
        assert_eq!(s.parse::<KeyId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<KeyId>().unwrap(), id);
        assert_eq!(KeyId::try_from_slice(id.as_bytes()).unwrap(), id);
    }

    #[test]
    fn key_id_parse_rejects_bad_input() {
        for bad in [
            "",
            "00",
            "000102030405060708090a0b0c0d0e",     // 30 chars
            "000102030405060708090a0b0c0d0eff00", // 34 chars
            "000102030405060708090a0b0c0d0eg0",   // non-hex
            "+00102030405060708090a0b0c0d0eff",   // sign
            "é0102030405060708090a0b0c0d0ef",     // 32 bytes, non-ASCII
        ] {
            assert!(
                matches!(bad.parse::<KeyId>(), Err(EnvelopeError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(KeyId::try_from_slice(&[0u8; 15]).is_err());
        assert!(KeyId::try_from_slice(&[0u8; 17]).is_err());
    }

    #[test]
    fn key_id_generate_is_random() {
        assert_ne!(KeyId::generate().unwrap(), KeyId::generate().unwrap());
    }
}
