//! Keyward envelope format v1, AES-256-GCM with per-message keys and key commitment, and the
//! secret key types. No I/O.
//!
//! - [`Sealer`] / [`parse`] + [`Envelope::open`]: the data envelope callers store. Specified byte
//!   by byte in `docs/envelope-format.md`, with test vectors in `docs/envelope/vectors-v1.json`.
//! - [`wrap_key`] / [`unwrap_key`]: a 256-bit key wrapped under another (DEKs under the tenant
//!   key, with [`dek_wrap_aad`]; the local development KMS provider).
//! - [`SecretKey`], [`WrappedKey`], [`KeyId`], [`TenantId`], [`EncryptionContext`]: validated
//!   domain types. Secrets are zeroized on drop and have no `Debug` or `Clone`.
//! - [`framed`]: envelope format version 2, for messages of any size sealed and opened frame by
//!   frame in constant memory (docs/envelope-format.md §10).
//! - [`aead`]: the raw AES-256-GCM layer (hazmat), tested against Wycheproof.
//!
//! All cryptography comes from `aws-lc-rs` (see `docs/adr/0001-aead-library.md`), except the
//! SHA-512 compression function behind a DEK's cached HMAC key schedule, which aws-lc-rs does not
//! expose (RustCrypto `sha2`; `docs/adr/0018-per-call-costs.md`).
//!
//! ```
//! use keyward_envelope::{EncryptionContext, KeyId, SecretKey, TenantId};
//!
//! # fn main() -> Result<(), keyward_envelope::EnvelopeError> {
//! let dek = SecretKey::generate()?;
//! let dek_id = KeyId::generate()?;
//! let tenant: TenantId = "acme".parse()?;
//! let ctx = EncryptionContext::try_from_map([("purpose".into(), "chat".into())].into())?;
//!
//! let envelope = keyward_envelope::Sealer::new(&dek, &tenant, &dek_id).seal(&ctx, b"hello")?;
//!
//! let parsed = keyward_envelope::parse(&envelope)?;
//! assert_eq!(parsed.header().dek_id(), &dek_id); // look the DEK up by this id
//! let plaintext = parsed.open(&dek, &ctx)?;
//! assert_eq!(&plaintext[..], b"hello");
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod aead;
mod context;
mod envelope;
mod error;
pub mod framed;
mod key;
mod schedule;
mod tenant;
mod wiped;
mod wrap;

pub use context::{
    CONTEXT_MAX_ENCODED_LEN, CONTEXT_MAX_ENTRIES, CONTEXT_MAX_KEY_LEN, CONTEXT_MAX_VALUE_LEN,
    EncryptionContext, RESERVED_PREFIX,
};
pub use envelope::{
    COMMIT_KEY_LABEL, COMMITMENT_LEN, DERIVE_KEY_LABEL, Envelope, FORMAT_VERSION, HEADER_FIXED_LEN,
    Header, MAGIC, MESSAGE_KEYS_LABEL, SALT_LEN, Sealer, Suite, parse, sealed_len,
};
pub use error::{CryptoError, EnvelopeError};
pub use key::{KEY_ID_LEN, KEY_LEN, KeyId, SecretKey, WrappedKey};
pub use tenant::{TENANT_ID_MAX_LEN, TenantId};
pub use wiped::{Wiped, wipe};
pub use wrap::{WRAPPED_KEY_FORMAT, WRAPPED_KEY_LEN, dek_wrap_aad, unwrap_key, wrap_key};
