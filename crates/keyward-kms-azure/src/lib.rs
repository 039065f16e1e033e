//! Azure Key Vault and Managed HSM as a Keyward key-encryption-key provider.
//!
//! [`AzureKeyVaultProvider`] implements [`keyward_kms::KeyProvider`] on the official Azure SDK
//! (`azure_security_keyvault_keys`, `azure_core`, `azure_identity`): the vault wraps a fresh
//! per-wrap intermediate key (RSA-OAEP-256, or A256KW on a Managed HSM) and the tenant key is
//! sealed under it locally with AES-256-GCM and the [`keyward_kms::WrapContext`] as AAD (layout
//! in `wrapped_key_format.rs`). Key references are Key Vault key ids ([`AzureKeyId`]). Credentials are always
//! explicit ([`AzureCredentialConfig`]); failures are classified once (`classify.rs`, table in
//! `docs/providers/azure.md`).
//!
//! Its tests run a Key Vault test double over HTTPS on 127.0.0.1 (there is no Key Vault
//! emulator): `keyward-test-support`'s `azure` module.
#![forbid(unsafe_code)]

mod classify;
mod config;
mod factory;
#[doc(hidden)]
pub mod for_test_support;
mod fresh_token;
#[doc(hidden)]
pub mod fuzzing;
mod key_id;
mod provider;
pub mod remediation;
mod wrapped_key_format;

pub use config::{AzureCredentialConfig, AzureKeyVaultConfig, PUBLIC_AUTHORITY_HOST};
pub use factory::AzureKeyVaultFactory;
pub use key_id::{AzureKeyId, EXPECTED_FORM, InvalidAzureKeyId, VaultKind};
pub use provider::AzureKeyVaultProvider;
