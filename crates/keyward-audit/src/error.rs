//! [`AuditError`]: everything that can go wrong building, parsing or writing audit data.
//!
//! Verification of an export does not use this type: it reports a [`crate::VerifyFailure`]
//! naming the exact line and the kind of tampering.

/// An error from building, parsing, signing or writing audit records and checkpoints.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The input is not valid JSON, or does not have the expected shape.
    #[error("malformed audit data: {0}")]
    Malformed(String),
    /// The input is valid JSON of the right shape, but not in canonical form
    /// (`docs/audit-format.md` §1): key order, whitespace, escapes or number spelling differ.
    #[error("not canonical: {0}")]
    NotCanonical(String),
    /// A value cannot be encoded canonically (for example a floating-point number).
    #[error("cannot encode canonically: {0}")]
    Encoding(String),
    /// A public key text or byte string is not a valid Ed25519 public key.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    /// A PKCS#8 document was rejected, or key generation or signing failed inside aws-lc.
    #[error("signing key error: {0}")]
    SigningKey(String),
    /// [`crate::ExportWriter`] was asked to write lines out of the order the format requires.
    #[error("export out of order: {0}")]
    OutOfOrder(String),
    /// Writing the export failed.
    #[error("I/O error writing the export")]
    Io(#[from] std::io::Error),
}
