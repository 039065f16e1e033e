//! The gRPC layer: the tonic services ([`CryptoApi`], [`TenantApi`], [`AuditApi`]) hold only
//! protobuf ↔ domain conversion (`convert.rs`) and authorization; the work is the keyring's and
//! the auditor's. Wire types are converted to domain types here and nowhere deeper.

mod access;
mod audit;
pub(crate) mod convert;
mod crypto;
mod export;
mod key_history;
mod rekey;
mod rewrap;
mod shred;
mod stream;
mod tenant;

pub use audit::AuditApi;
pub use convert::MAX_BATCH_ITEMS;
pub use crypto::{CryptoApi, DECRYPT_SCOPE, PURPOSE_CONTEXT_KEY};
pub use tenant::TenantApi;

use tonic::Request;

/// Splits a request into its message and an empty request carrying the metadata and the
/// connection's extensions (the caller's identity), for [`crate::authz::Authz::check`].
pub(crate) fn split<T>(request: Request<T>) -> (Request<()>, T) {
    let (metadata, extensions, message) = request.into_parts();
    (Request::from_parts(metadata, extensions, ()), message)
}

#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod batch_tests;

#[cfg(test)]
mod rewrap_tests;

#[cfg(test)]
mod export_tests;
