//! Keyward's authorization: which caller may do what, decided by the Cedar policies in
//! `policies/`.
//!
//! - The caller's verified client-certificate identity (`spiffe://…` URI SAN or `dns:<name>`
//!   DNS SAN) is mapped to a [`Principal`] by the identity mapping (`policies/identities.toml`,
//!   [`Policies::principal`]); plaintext loopback development mode uses the fixed
//!   [`Policies::developer`].
//! - [`Policies::is_authorized`] evaluates one [`Action`] (one per RPC) on a [`Resource`] (a
//!   tenant, or the system) against the policies, deny by default.
//! - [`Policies::load`] validates everything up front (strict Cedar validation against
//!   `schema.cedarschema`, a consistent mapping) and reports problems as
//!   `file:line:column: message` ([`LoadError`]).
//! - [`cases::run`] runs the policy test cases in `policies/tests/`.
//!
//! See `policies/README.md` for the principal types, their attributes and the policies.

#![forbid(unsafe_code)]

mod action;
pub mod cases;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod identities;
mod policies;
mod principal;

pub use action::{Action, ParseActionError};
pub use error::{LoadError, LoadErrorKind};
pub use policies::{DEVELOPER_ID, Policies, RequestContext, Resource, SCHEMA_FILE, SYSTEM_ID};
pub use principal::{Principal, PrincipalKind};

#[cfg(test)]
mod tests;
