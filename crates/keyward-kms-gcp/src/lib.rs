//! Google Cloud KMS as a Keyward key-encryption-key provider.
//!
//! [`GcpKmsProvider`] implements [`keyward_kms::KeyProvider`] on the official client
//! (`google-cloud-kms-v1`, REST/JSON): the KEK is a symmetric CryptoKey named by its resource
//! name ([`CryptoKeyName`], `projects/P/locations/L/keyRings/R/cryptoKeys/K`); wraps are
//! `Encrypt` with the [`keyward_kms::WrapContext`] as additional authenticated data, unwraps are
//! `Decrypt` with the same AAD, both with CRC32C integrity checks; `describe` maps the primary
//! version's state. Errors are classified once from the typed status code (`classify.rs`, table
//! in `docs/providers/gcp.md`). Credentials are always explicit ([`GcpKmsConfig`]): a
//! service-account key file or an external-account (workload identity federation) file.
//!
//! Its tests run a Cloud KMS test double on 127.0.0.1 (there is no emulator):
//! `keyward-test-support`'s `gcp` module.
#![forbid(unsafe_code)]

mod classify;
mod config;
mod factory;
mod name;
mod provider;
pub mod remediation;

pub use config::{DEFAULT_ENDPOINT, GcpCredentials, GcpKmsConfig};
pub use factory::GcpKmsFactory;
pub use name::{CryptoKeyName, EXPECTED_FORM, InvalidCryptoKeyName};
pub use provider::GcpKmsProvider;
