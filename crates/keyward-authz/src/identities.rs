//! The identity mapping (`policies/identities.toml`): certificate identities to principals.
//!
//! ```toml
//! [[service]]
//! id = "chat-api"
//! identities = ["spiffe://keyward.test/ns/chat/sa/chat-api"]
//! tenants = ["acme"]            # or: all_tenants = true (exactly one of the two)
//! purposes = ["chat-history"]   # optional; [] (the default) = any purpose
//!
//! [[tenant_admin]]
//! id = "acme-secops"
//! identities = ["spiffe://keyward.test/ns/acme/sa/secops"]
//! tenant = "acme"
//!
//! [[auditor]]
//! id = "acme-auditor"
//! identities = ["dns:auditor.acme.example"]
//! tenants = ["acme"]            # or: global = true (exactly one of the two)
//!
//! [[operator]]
//! id = "oncall"
//! identities = ["spiffe://keyward.test/ns/keyward/sa/operator"]
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use cedar_policy::{Entity, EntityId, EntityUid, RestrictedExpression};
use keyward_envelope::TenantId;
use serde::Deserialize;
use toml::Spanned;

use crate::error::{LoadError, LoadErrorKind, Problem};
use crate::principal::{Principal, PrincipalKind, type_name};

/// The identity prefixes a certificate identity can have: URI SAN (SPIFFE ID) or DNS SAN.
const IDENTITY_PREFIXES: [&str; 2] = ["spiffe://", "dns:"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Vec<ServiceEntry>,
    #[serde(default)]
    tenant_admin: Vec<TenantAdminEntry>,
    #[serde(default)]
    auditor: Vec<AuditorEntry>,
    #[serde(default)]
    operator: Vec<OperatorEntry>,
    /// Accepted by the parser only to explain why it is refused.
    #[serde(default)]
    developer: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    id: Spanned<String>,
    identities: Spanned<Vec<Spanned<String>>>,
    tenants: Option<Vec<Spanned<String>>>,
    all_tenants: Option<Spanned<bool>>,
    #[serde(default)]
    purposes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantAdminEntry {
    id: Spanned<String>,
    identities: Spanned<Vec<Spanned<String>>>,
    tenant: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditorEntry {
    id: Spanned<String>,
    identities: Spanned<Vec<Spanned<String>>>,
    tenants: Option<Vec<Spanned<String>>>,
    global: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorEntry {
    id: Spanned<String>,
    identities: Spanned<Vec<Spanned<String>>>,
}

/// One mapped principal: the principal, the identities that map to it, its Cedar entity.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub(crate) principal: Arc<Principal>,
    pub(crate) identities: Vec<String>,
    pub(crate) entity: Entity,
}

/// Parses and checks the mapping in `text` (the contents of `path`). Entities are checked
/// against the schema by the caller.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<Mapped>, LoadError> {
    let file: File = toml::from_str(text).map_err(|e| {
        LoadError::new(
            LoadErrorKind::Identities,
            Problem::new(
                path,
                text,
                e.span().map(|s| s.start),
                crate::error::one_line(e.message()),
            ),
        )
    })?;
    let mut checker = Checker {
        path,
        text,
        problems: Vec::new(),
        identities: HashMap::new(),
        ids: HashSet::new(),
    };
    if let Some(dev) = &file.developer {
        checker.problem(
            dev.span().start,
            "`developer` cannot be mapped: the Developer principal exists only in plaintext \
             loopback development mode, never for a certificate identity",
        );
    }
    let mut out = Vec::new();
    for s in &file.service {
        let tenants = checker.scope(
            PrincipalKind::Service,
            &s.id,
            s.tenants.as_deref(),
            s.all_tenants.as_ref(),
            "tenants",
            "all_tenants",
        );
        let attrs = [
            (
                "all_tenants",
                RestrictedExpression::new_bool(tenants.is_none()),
            ),
            (
                "tenants",
                tenant_set(tenants.as_deref().unwrap_or_default()),
            ),
            (
                "purposes",
                RestrictedExpression::new_set(
                    s.purposes
                        .iter()
                        .map(|p| RestrictedExpression::new_string(p.clone())),
                ),
            ),
        ];
        out.extend(checker.principal(PrincipalKind::Service, &s.id, &s.identities, attrs));
    }
    for a in &file.tenant_admin {
        let what = format!("tenant_admin {:?}", a.id.get_ref());
        let tenant = checker.tenant(&what, &a.tenant);
        let attrs = [(
            "tenant",
            RestrictedExpression::new_entity_uid(tenant_uid(
                tenant.as_ref().map_or("", |t| t.as_str()),
            )),
        )];
        out.extend(checker.principal(PrincipalKind::TenantAdmin, &a.id, &a.identities, attrs));
    }
    for a in &file.auditor {
        let tenants = checker.scope(
            PrincipalKind::Auditor,
            &a.id,
            a.tenants.as_deref(),
            a.global.as_ref(),
            "tenants",
            "global",
        );
        let attrs = [
            ("global", RestrictedExpression::new_bool(tenants.is_none())),
            (
                "tenants",
                tenant_set(tenants.as_deref().unwrap_or_default()),
            ),
        ];
        out.extend(checker.principal(PrincipalKind::Auditor, &a.id, &a.identities, attrs));
    }
    for o in &file.operator {
        out.extend(checker.principal(PrincipalKind::Operator, &o.id, &o.identities, []));
    }
    if checker.problems.is_empty() {
        Ok(out)
    } else {
        checker.problems.sort_by_key(|p| p.position);
        Err(LoadError::many(LoadErrorKind::Identities, checker.problems))
    }
}

fn tenant_uid(tenant: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name("Tenant"), EntityId::new(tenant))
}

fn tenant_set(tenants: &[TenantId]) -> RestrictedExpression {
    RestrictedExpression::new_set(
        tenants
            .iter()
            .map(|t| RestrictedExpression::new_entity_uid(tenant_uid(t.as_str()))),
    )
}

/// Collects every problem of the file (not just the first), with positions.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
    /// identity -> owner, for duplicates across all principals.
    identities: HashMap<String, String>,
    /// (kind, id), for duplicate ids per kind.
    ids: HashSet<(PrincipalKind, String)>,
}

impl Checker<'_> {
    fn problem(&mut self, offset: usize, message: impl Into<String>) {
        self.problems
            .push(Problem::new(self.path, self.text, Some(offset), message));
    }

    fn tenant(&mut self, what: &str, tenant: &Spanned<String>) -> Option<TenantId> {
        match TenantId::try_from(tenant.get_ref().as_str()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(tenant.span().start, format!("{what}: {e}"));
                None
            }
        }
    }

    /// `tenants = [...]` xor `<all> = true`. Returns the tenants, or `None` for all tenants.
    fn scope(
        &mut self,
        kind: PrincipalKind,
        id: &Spanned<String>,
        tenants: Option<&[Spanned<String>]>,
        all: Option<&Spanned<bool>>,
        tenants_key: &str,
        all_key: &str,
    ) -> Option<Vec<TenantId>> {
        let what = format!("{} {:?}", kind.table(), id.get_ref());
        match (tenants, all) {
            (Some(_), Some(all)) => {
                self.problem(
                    all.span().start,
                    format!("{what}: set either `{tenants_key}` or `{all_key} = true`, not both"),
                );
                Some(Vec::new())
            }
            (None, None) => {
                self.problem(
                    id.span().start,
                    format!("{what}: set either `{tenants_key} = [...]` or `{all_key} = true`"),
                );
                Some(Vec::new())
            }
            (None, Some(all)) if !*all.get_ref() => {
                self.problem(
                    all.span().start,
                    format!(
                        "{what}: `{all_key} = false` grants nothing; list `{tenants_key}` instead"
                    ),
                );
                Some(Vec::new())
            }
            (None, Some(_)) => None,
            (Some(tenants), None) => Some(
                tenants
                    .iter()
                    .filter_map(|t| self.tenant(&what, t))
                    .collect(),
            ),
        }
    }

    /// Checks id and identities, and builds the principal with its entity.
    fn principal<const N: usize>(
        &mut self,
        kind: PrincipalKind,
        id: &Spanned<String>,
        identities: &Spanned<Vec<Spanned<String>>>,
        attrs: [(&str, RestrictedExpression); N],
    ) -> Option<Mapped> {
        let before = self.problems.len();
        let what = format!("{} {:?}", kind.table(), id.get_ref());
        if id.get_ref().is_empty() || id.get_ref().chars().any(char::is_control) {
            self.problem(
                id.span().start,
                format!("{what}: an id must be non-empty and have no control characters"),
            );
        } else if !self.ids.insert((kind, id.get_ref().clone())) {
            self.problem(
                id.span().start,
                format!("duplicate {} id {:?}", kind.table(), id.get_ref()),
            );
        }
        if identities.get_ref().is_empty() {
            self.problem(
                identities.span().start,
                format!("{what}: `identities` must list at least one identity"),
            );
        }
        for identity in identities.get_ref() {
            let value = identity.get_ref();
            let well_formed = IDENTITY_PREFIXES
                .iter()
                .any(|p| value.len() > p.len() && value.starts_with(p))
                && !value.chars().any(|c| c.is_whitespace() || c.is_control());
            if !well_formed {
                self.problem(
                    identity.span().start,
                    format!(
                        "{what}: identity {value:?} is neither `spiffe://<trust domain>/<path>` \
                         (URI SAN) nor `dns:<name>` (DNS SAN)"
                    ),
                );
            } else if let Some(owner) = self.identities.get(value) {
                let message = format!("identity {value:?} is already mapped to {owner}");
                self.problem(identity.span().start, message);
            } else {
                self.identities.insert(value.clone(), what.clone());
            }
        }
        if self.problems.len() > before {
            return None;
        }
        let principal = Principal::new(kind, id.get_ref());
        let attrs: HashMap<String, RestrictedExpression> =
            attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        match Entity::new(principal.uid().clone(), attrs, HashSet::new()) {
            Ok(entity) => Some(Mapped {
                principal: Arc::new(principal),
                identities: identities
                    .get_ref()
                    .iter()
                    .map(|i| i.get_ref().clone())
                    .collect(),
                entity,
            }),
            Err(e) => {
                self.problem(id.span().start, format!("{what}: {e}"));
                None
            }
        }
    }
}
