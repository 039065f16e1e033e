//! [`Principal`]: who is calling, as a Cedar entity.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

/// The Cedar namespace of every Keyward type.
pub(crate) const NAMESPACE: &str = "Keyward";

/// The entity type of a principal (`Keyward::<kind>` in the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalKind {
    /// An internal caller that encrypts and decrypts for the tenants it serves.
    Service,
    /// A customer's security administrator, for one tenant.
    TenantAdmin,
    /// Reads the audit log (some tenants, or all).
    Auditor,
    /// Runs the deployment.
    Operator,
    /// The fixed principal of plaintext loopback development mode; never mapped from an identity.
    Developer,
}

impl PrincipalKind {
    /// Every kind, in declaration order.
    pub const ALL: [PrincipalKind; 5] = [
        PrincipalKind::Service,
        PrincipalKind::TenantAdmin,
        PrincipalKind::Auditor,
        PrincipalKind::Operator,
        PrincipalKind::Developer,
    ];

    /// Position in [`PrincipalKind::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The Cedar entity type name without the namespace, e.g. `"Service"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Service => "Service",
            PrincipalKind::TenantAdmin => "TenantAdmin",
            PrincipalKind::Auditor => "Auditor",
            PrincipalKind::Operator => "Operator",
            PrincipalKind::Developer => "Developer",
        }
    }

    /// The mapping file's table name for this kind (`[[service]]`), if it can be mapped.
    pub(crate) fn table(self) -> &'static str {
        match self {
            PrincipalKind::Service => "service",
            PrincipalKind::TenantAdmin => "tenant_admin",
            PrincipalKind::Auditor => "auditor",
            PrincipalKind::Operator => "operator",
            PrincipalKind::Developer => "developer",
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Keyward::<name>` as a Cedar entity type.
pub(crate) fn type_name(name: &str) -> EntityTypeName {
    // Only called with the fixed identifiers of our schema.
    EntityTypeName::from_str(&format!("{NAMESPACE}::{name}"))
        .expect("invariant: `Keyward::<identifier>` is a valid Cedar type name")
}

/// A caller as Cedar sees it: an entity of type `Keyward::<kind>` with the mapping's id.
///
/// Its attributes (tenants, purposes…) are not carried here: the policy engine looks them up in
/// the [`crate::Policies`] it is evaluated against, so a principal obtained before a reload is
/// judged by the reloaded mapping (and denied if it was removed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    kind: PrincipalKind,
    id: String,
    uid: EntityUid,
    /// The [`fmt::Display`] form, made once: every data-path call names its caller in the
    /// tenant's access counts.
    shown: Arc<str>,
}

impl Principal {
    pub(crate) fn new(kind: PrincipalKind, id: &str) -> Self {
        let uid = EntityUid::from_type_name_and_id(type_name(kind.as_str()), EntityId::new(id));
        let shown = Arc::from(format!("{}::\"{}\"", kind.as_str(), uid.id().escaped()));
        Principal {
            kind,
            id: id.to_owned(),
            uid,
            shown,
        }
    }

    /// `Service::"chat-api"` (the [`fmt::Display`] form), shared.
    pub fn shown(&self) -> &Arc<str> {
        &self.shown
    }

    /// The principal's entity type.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The id from the identity mapping (`chat-api`), or `dev` for the developer.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn uid(&self) -> &EntityUid {
        &self.uid
    }
}

/// `Service::"chat-api"`: the Cedar spelling without the namespace (the id escaped as Cedar
/// escapes string literals), used as the actor in audit records.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_cedar_without_namespace() {
        let p = Principal::new(PrincipalKind::Service, "chat-api");
        assert_eq!(p.to_string(), r#"Service::"chat-api""#);
        assert_eq!(p.uid().to_string(), r#"Keyward::Service::"chat-api""#);
        let odd = Principal::new(PrincipalKind::Operator, "a\"b\\c\n");
        assert_eq!(odd.to_string(), r#"Operator::"a\"b\\c\n""#);
        assert_eq!(odd.id(), "a\"b\\c\n");
    }
}
