//! `identity_mapping`: the identity mapping file (`policies/identities.toml`: mTLS certificate
//! identities to principals) through the parser and checks that `Policies::load` runs
//! ([`keyward_authz::fuzzing::parse_identity_mapping`]).
//!
//! Invariants: every accepted identity is `spiffe://…` or `dns:…` without whitespace or control
//! characters, no identity maps to two principals, no two principals of a kind share an id, no id
//! is empty; a rejection is an `Identities` error whose first problem is placed inside the text.

use std::collections::HashSet;

use keyward_authz::LoadErrorKind;
use keyward_authz::fuzzing::parse_identity_mapping;

pub fn run(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    match parse_identity_mapping(text) {
        Ok(mapped) => {
            let mut identities = HashSet::new();
            let mut ids = HashSet::new();
            for (principal, mapped_identities) in &mapped {
                assert!(!principal.id().is_empty());
                assert!(ids.insert((principal.kind(), principal.id().to_owned())));
                assert!(!mapped_identities.is_empty());
                for identity in mapped_identities {
                    let rest = identity
                        .strip_prefix("spiffe://")
                        .or_else(|| identity.strip_prefix("dns:"))
                        .unwrap_or_else(|| panic!("accepted identity {identity:?}"));
                    assert!(!rest.is_empty());
                    assert!(
                        !identity
                            .chars()
                            .any(|c| c.is_whitespace() || c.is_control())
                    );
                    assert!(
                        identities.insert(identity.clone()),
                        "{identity:?} mapped twice"
                    );
                }
            }
        }
        Err(e) => {
            assert_eq!(e.kind(), LoadErrorKind::Identities);
            assert!(e.problem_count() >= 1);
            assert!(e.to_string().starts_with("identities.toml"));
            if let Some(line) = e.line() {
                assert!(line >= 1 && line <= text.matches('\n').count() + 1);
                assert!(e.column().is_some_and(|c| c >= 1));
            }
        }
    }
}
