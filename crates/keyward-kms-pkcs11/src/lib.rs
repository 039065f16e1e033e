//! PKCS#11 HSMs as a Keyward key-encryption-key provider.
//!
//! [`Pkcs11Provider`] implements [`keyward_kms::KeyProvider`] on one PKCS#11 token through the
//! `cryptoki` crate: the KEK is a private, sensitive, non-extractable AES-256 secret key; wraps are
//! `C_Encrypt` with `CKM_AES_GCM` and the [`keyward_kms::WrapContext`] as AAD (layout in
//! `wrapped_key_format.rs`), unwraps are `C_Decrypt`. Key references are [`Pkcs11KeyUri`]s
//! (`pkcs11:token=<label>;object=<key label>` and/or `id=%xx…`). Calls run on a bounded session
//! pool on tokio's blocking threads; return codes are classified once (`classify.rs`, table in
//! `docs/providers/pkcs11.md`).
//!
//! Its tests run a private SoftHSM2 token (`keyward-test-support`'s `pkcs11` module).
#![forbid(unsafe_code)]

mod classify;
mod config;
mod factory;
#[doc(hidden)]
pub mod fuzzing;
mod provider;
mod remediation;
mod token_keys;
mod uri;
mod wrapped_key_format;

pub use config::Pkcs11Config;
pub use factory::Pkcs11Factory;
pub use provider::Pkcs11Provider;
pub use uri::{InvalidPkcs11Uri, Pkcs11KeyUri, SCHEME};
pub use wrapped_key_format::WRAPPED_LEN;
