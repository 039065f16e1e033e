//! Entry point for the coverage-guided fuzz target `identity_mapping` (`fuzz/`,
//! docs/threat-model.md "Hostile input"). Not part of the API.

use std::path::Path;
use std::sync::Arc;

use crate::{LoadError, Principal, identities};

/// A mapped principal and the certificate identities that map to it.
pub type MappedPrincipal = (Arc<Principal>, Vec<String>);

/// Parses and checks an identity mapping (`policies/identities.toml`) from its text exactly as
/// [`crate::Policies::load`] does before the schema check: each mapped principal with the
/// certificate identities that map to it, or the [`LoadError`] naming every problem.
pub fn parse_identity_mapping(text: &str) -> Result<Vec<MappedPrincipal>, LoadError> {
    identities::parse(Path::new("identities.toml"), text).map(|mapped| {
        mapped
            .into_iter()
            .map(|m| (m.principal, m.identities))
            .collect()
    })
}
