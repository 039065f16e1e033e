//! Error types.
//!
//! Decryption failures are deliberately coarse (see [`EnvelopeError::DecryptFailed`]): a wrong DEK,
//! a wrong encryption context, a tampered byte and a commitment mismatch are indistinguishable to
//! the caller, so that no detail becomes an oracle (the same choice as age's `DecryptError`).
//! Parse errors, on the other hand, are precise: they only describe the public structure of the
//! bytes, which the caller already has.

/// Errors from parsing, sealing or opening an envelope, and from validating its inputs.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not a structurally valid envelope: truncated, bad magic, a length out of
    /// range, tenant id bytes outside the allowed alphabet, …. The message names the field.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The envelope declares a format version this build does not understand.
    #[error("unsupported envelope format version {0}")]
    UnsupportedVersion(u8),
    /// The envelope declares an algorithm suite this build does not implement.
    #[error("unsupported algorithm suite 0x{0:04x}")]
    UnsupportedSuite(u16),
    /// A tenant identifier supplied as a string is not valid (see [`crate::TenantId`]).
    #[error("invalid tenant id: {0}")]
    InvalidTenantId(String),
    /// An encryption context violates the bounds or uses a reserved key
    /// (see [`crate::EncryptionContext`]).
    #[error("invalid encryption context: {0}")]
    InvalidContext(String),
    /// The envelope could not be decrypted. Deliberately coarse: wrong DEK, wrong encryption
    /// context, tampered header or body and key-commitment mismatch all produce this one error.
    #[error("decryption failed")]
    DecryptFailed,
    /// A lower-level cryptographic operation failed (random number generation, sealing).
    #[error("cryptographic operation failed")]
    Crypto(#[from] CryptoError),
}

/// Errors from the cryptographic primitives (RNG, key handling, AES-GCM, key wrapping).
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum CryptoError {
    /// The system random number generator failed.
    #[error("random number generator failure")]
    Rng,
    /// Key material of the wrong length was supplied (the value is the length received).
    #[error("invalid key length {0} (expected 32 bytes)")]
    InvalidKeyLength(usize),
    /// A wrapped key could not be unwrapped. Deliberately coarse: wrong wrapping key, wrong AAD,
    /// wrong length, unknown format byte and tampering all produce this one error.
    #[error("key unwrap failed")]
    Unwrap,
    /// AES-GCM sealing or opening failed (authentication failure, or input too long).
    #[error("AEAD operation failed")]
    Aead,
    /// HKDF key derivation failed (cannot happen with the fixed output lengths used here;
    /// reported rather than panicking).
    #[error("key derivation failed")]
    Kdf,
}
