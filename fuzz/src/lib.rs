//! Keyward's coverage-guided fuzz targets (AFL++ through cargo-afl, on the stable toolchain;
//! docs/adr/0008-coverage-guided-fuzzing.md, docs/threat-model.md "Hostile input").
//!
//! One module per target, each a thin harness over the real parser: `run(data)` feeds it the
//! input and asserts the target's invariants. A broken invariant panics, which afl.rs turns into
//! an abort: a crash that AFL++ saves. `src/bin/<target>.rs` is the AFL binary of each; run them
//! with `scripts/fuzz`.
//!
//! Targets that cover several parsers read the first input byte as a selector and give the rest
//! to the parser it selects (AFL++ learns the selector values from the seeds).
//!
//! Features (all default): `authz` (`identity_mapping`: Cedar), `providers` (the AWS, Google
//! Cloud and Azure targets, whose SDK crates are most of the build) and `server`
//! (`server_config`, `proto_requests`); `--no-default-features` builds the other five targets
//! (and a seed writer for them) alone, in a fraction of the time.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a harness reports a broken invariant by panicking: that is the crash AFL++ records"
)]

pub mod audit_export;
pub mod envelope;
pub mod framed;
#[cfg(feature = "authz")]
pub mod identity_mapping;
#[cfg(feature = "providers")]
pub mod kms_aws;
#[cfg(feature = "providers")]
pub mod kms_azure;
#[cfg(feature = "providers")]
pub mod kms_gcp;
pub mod kms_local;
pub mod kms_pkcs11;
#[cfg(feature = "server")]
pub mod proto_requests;
#[cfg(feature = "server")]
pub mod server_config;

/// Every key provider's factory, as the shipped `keyward` binary registers them
/// (crates/keyward-cli/src/providers.rs): the configuration sections and key-reference syntaxes
/// the `server` targets parse.
#[cfg(feature = "server")]
pub fn provider_registry() -> keyward_kms::ProviderRegistry {
    use std::sync::Arc;
    keyward_kms::ProviderRegistry::default()
        .with(Arc::new(keyward_kms_aws::AwsKmsFactory))
        .with(Arc::new(keyward_kms_pkcs11::Pkcs11Factory))
        .with(Arc::new(keyward_kms_gcp::GcpKmsFactory))
        .with(Arc::new(keyward_kms_azure::AzureKeyVaultFactory))
}

/// Every target, in the order `scripts/fuzz` runs them (also the `src/bin` names).
pub const TARGETS: [&str; 11] = [
    "envelope",
    "framed",
    "kms_local",
    "kms_aws",
    "kms_gcp",
    "kms_azure",
    "kms_pkcs11",
    "audit_export",
    "server_config",
    "identity_mapping",
    "proto_requests",
];

/// The selector byte and the rest (`None` for an empty input).
pub fn select(data: &[u8], choices: u8) -> Option<(u8, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first % choices, rest))
}

/// The input as text, or `None` when it is not UTF-8 (the parsers behind take `&str`).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The harness of target `name` (one of [`TARGETS`] built with this crate's features), or
/// `None` when its feature is off.
pub fn harness(name: &str) -> Option<fn(&[u8])> {
    Some(match name {
        "envelope" => envelope::run,
        "framed" => framed::run,
        "kms_local" => kms_local::run,
        "kms_pkcs11" => kms_pkcs11::run,
        "audit_export" => audit_export::run,
        #[cfg(feature = "providers")]
        "kms_aws" => kms_aws::run,
        #[cfg(feature = "providers")]
        "kms_gcp" => kms_gcp::run,
        #[cfg(feature = "providers")]
        "kms_azure" => kms_azure::run,
        #[cfg(feature = "authz")]
        "identity_mapping" => identity_mapping::run,
        #[cfg(feature = "server")]
        "server_config" => server_config::run,
        #[cfg(feature = "server")]
        "proto_requests" => proto_requests::run,
        _ => return None,
    })
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod replay_tests;
