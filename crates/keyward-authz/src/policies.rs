//! [`Policies`]: the schema, the policies and the identity mapping, loaded and validated once,
//! and the decision for one request.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, PrincipalConstraint, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};

use crate::action::Action;
use crate::error::{LoadError, LoadErrorKind, Problem, one_line};
use crate::identities;
use crate::principal::{Principal, PrincipalKind, type_name};

/// The schema file's name in the policies directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
/// The id of the singleton system resource, `Keyward::System::"keyward"`.
pub const SYSTEM_ID: &str = "keyward";
/// The id of the development principal, `Keyward::Developer::"dev"`.
pub const DEVELOPER_ID: &str = "dev";

/// What an action is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource<'a> {
    /// One tenant, by tenant id (`Keyward::Tenant::"acme"`).
    Tenant(&'a str),
    /// The deployment (`Keyward::System::"keyward"`), for operations not about one tenant.
    System,
}

/// The request attributes the policies of the crypto actions (Encrypt, Decrypt) see; ignored for
/// the other actions (their context is empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestContext<'a> {
    /// The value of the encryption-context key `purpose`; `None` becomes `""`.
    pub purpose: Option<&'a str>,
    /// The DEK scope label; `None` becomes `"default"`.
    pub scope: Option<&'a str>,
    /// The purpose of the call's justification (`legal_hold`, docs/justifications.md); `None`
    /// (no justification) becomes `""`.
    pub justification: Option<&'a str>,
    /// The justification's reference (a ticket id); `None` becomes `""`.
    pub reference: Option<&'a str>,
}

/// The authorization state of a deployment: the policies (validated against the Cedar schema)
/// and the identity mapping with the principals' attributes. Built once by [`Policies::load`] and immutable; the server
/// keeps it behind an `Arc` and replaces it on reload.
pub struct Policies {
    /// All policies.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "only tests evaluate the full set, to check the slices"
        )
    )]
    policies: PolicySet,
    /// The policies whose scope can match a principal kind and an action, indexed by
    /// [`slice_index`]: each decision evaluates only those (a policy whose scope does not match
    /// contributes nothing to a Cedar decision, so this changes no outcome, only the cost).
    slices: Vec<PolicySet>,
    entities: Entities,
    authorizer: Authorizer,
    /// identity -> principal.
    principals: HashMap<String, Arc<Principal>>,
    principal_count: usize,
    policy_count: usize,
    /// `Keyward::Action::"<name>"`, indexed by [`Action::index`].
    actions: Vec<EntityUid>,
    tenant_type: EntityTypeName,
    system: EntityUid,
    sources: Vec<PathBuf>,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("policies", &self.policy_count)
            .field("principals", &self.principal_count)
            .field("identities", &self.principals.len())
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

/// One parsed policy file.
struct PolicyFile {
    path: PathBuf,
    text: String,
}

impl Policies {
    /// Loads every `*.cedar` file and `schema.cedarschema` in `dir` (sorted by name, not
    /// recursive; names starting with `.` are skipped) and the identity mapping `identities`.
    ///
    /// Checks, all of which fail the load:
    /// - the schema parses, without warnings;
    /// - every policy file parses, has no templates, and every policy's id is unique (the
    ///   `@id("…")` annotation, or `<file stem>#<n>` for the n-th policy of a file without one);
    /// - the policies validate against the schema in strict mode, without warnings (a warning
    ///   such as "impossible policy" means a `permit` that never applies or, worse, a `forbid`
    ///   that never applies);
    /// - the mapping has no unknown fields, no duplicate identities (across all principals),
    ///   no duplicate ids per kind, valid tenant ids, exactly one of `tenants`/`all_tenants`
    ///   (services) or `tenants`/`global` (auditors), and its entities conform to the schema.
    pub fn load(dir: &Path, identities: &Path) -> Result<Policies, LoadError> {
        let schema_path = dir.join(SCHEMA_FILE);
        let policy_paths = list_files(dir, "cedar")?;
        if policy_paths.is_empty() {
            return Err(LoadError::in_file(
                LoadErrorKind::Io,
                dir,
                "no policy files (*.cedar) in the policies directory",
            ));
        }
        let schema = load_schema(&schema_path)?;

        // Parse every file, collecting the problems of all of them.
        let mut files = Vec::new();
        let mut problems = Vec::new();
        let mut policies = PolicySet::new();
        // policy id -> index in `files`
        let mut origin: HashMap<PolicyId, usize> = HashMap::new();
        for path in &policy_paths {
            let text = read(path, "policy file")?;
            let index = files.len();
            match parse_policy_file(&policy_paths, index, &text, &mut policies, &mut origin) {
                Ok(()) => {}
                Err(mut p) => problems.append(&mut p),
            }
            files.push(PolicyFile {
                path: path.clone(),
                text,
            });
        }
        if !problems.is_empty() {
            return Err(LoadError::many(LoadErrorKind::PolicySyntax, problems));
        }

        validate(&schema, &policies, &files, &origin)?;

        // The identity mapping.
        let mapping_text = read(identities, "identity mapping")?;
        let mapped = identities::parse(identities, &mapping_text)?;
        let mut principals = HashMap::new();
        let mut entities: Vec<Entity> = Vec::with_capacity(mapped.len() + 1);
        let principal_count = mapped.len();
        for m in mapped {
            for identity in m.identities {
                principals.insert(identity, Arc::clone(&m.principal));
            }
            entities.push(m.entity);
        }
        // The development principal has no attributes; it is in the store so that policies see
        // the same thing for it as for any mapped principal.
        entities.push(Entity::new_no_attrs(
            Policies::developer().uid().clone(),
            Default::default(),
        ));
        let entities = Entities::from_entities(entities, Some(&schema)).map_err(|e| {
            LoadError::in_file(
                LoadErrorKind::Identities,
                identities,
                format!("the mapping does not conform to {SCHEMA_FILE}: {e}"),
            )
        })?;

        let actions: Vec<EntityUid> = Action::ALL
            .iter()
            .map(|a| {
                EntityUid::from_type_name_and_id(type_name("Action"), EntityId::new(a.as_str()))
            })
            .collect();
        let slices = slice(&policies, &actions)
            .map_err(|e| LoadError::in_file(LoadErrorKind::PolicySyntax, dir, e.to_string()))?;
        let mut sources = Vec::with_capacity(files.len() + 2);
        sources.push(schema_path);
        sources.extend(files.into_iter().map(|f| f.path));
        sources.push(identities.to_owned());
        Ok(Policies {
            entities,
            authorizer: Authorizer::new(),
            principals,
            principal_count,
            policy_count: policies.policies().count(),
            policies,
            slices,
            actions,
            tenant_type: type_name("Tenant"),
            system: EntityUid::from_type_name_and_id(type_name("System"), EntityId::new(SYSTEM_ID)),
            sources,
        })
    }

    /// The principal a certificate identity (`spiffe://…` or `dns:<name>`) maps to: exact
    /// string match; `None` for an unmapped identity.
    pub fn principal(&self, identity: &str) -> Option<Arc<Principal>> {
        self.principals.get(identity).cloned()
    }

    /// The fixed principal of plaintext loopback development mode, `Developer::"dev"`. Never
    /// returned by [`Policies::principal`].
    pub fn developer() -> Arc<Principal> {
        Arc::new(Principal::new(PrincipalKind::Developer, DEVELOPER_ID))
    }

    /// Whether the policies permit `principal` to do `action` on `resource`.
    ///
    /// Deny by default: `false` unless some policy permits and none forbids, and also `false`
    /// if the request cannot be built or any policy fails to evaluate (e.g. a principal from an
    /// earlier mapping that is no longer in this one: its attributes are missing). The
    /// principal's attributes come from this `Policies`' mapping, not from the `Principal`.
    pub fn is_authorized(
        &self,
        principal: &Principal,
        action: Action,
        resource: Resource<'_>,
        ctx: &RequestContext<'_>,
    ) -> bool {
        let Some(policies) = self.slices.get(slice_index(principal.kind(), action)) else {
            return false;
        };
        self.decide(principal, action, resource, ctx, policies)
    }

    fn decide(
        &self,
        principal: &Principal,
        action: Action,
        resource: Resource<'_>,
        ctx: &RequestContext<'_>,
        policies: &PolicySet,
    ) -> bool {
        let Ok(request) = self.request(principal, action, resource, ctx, None) else {
            return false;
        };
        let response = self
            .authorizer
            .is_authorized(&request, policies, &self.entities);
        response.decision() == Decision::Allow && response.diagnostics().errors().next().is_none()
    }

    /// [`Policies::is_authorized`] against all policies rather than the slice (tests compare).
    #[cfg(test)]
    pub(crate) fn is_authorized_unsliced(
        &self,
        principal: &Principal,
        action: Action,
        resource: Resource<'_>,
        ctx: &RequestContext<'_>,
    ) -> bool {
        self.decide(principal, action, resource, ctx, &self.policies)
    }

    /// Builds the Cedar request; with `schema`, validates it (tests prove that the contexts we
    /// build match the schema; at run time the policies were validated instead).
    pub(crate) fn request(
        &self,
        principal: &Principal,
        action: Action,
        resource: Resource<'_>,
        ctx: &RequestContext<'_>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let resource = match resource {
            Resource::Tenant(t) => {
                EntityUid::from_type_name_and_id(self.tenant_type.clone(), EntityId::new(t))
            }
            Resource::System => self.system.clone(),
        };
        let context = if action.is_crypto() {
            Context::from_pairs([
                (
                    "purpose".to_owned(),
                    RestrictedExpression::new_string(ctx.purpose.unwrap_or("").to_owned()),
                ),
                (
                    "scope".to_owned(),
                    RestrictedExpression::new_string(ctx.scope.unwrap_or("default").to_owned()),
                ),
                (
                    "justification".to_owned(),
                    RestrictedExpression::new_string(ctx.justification.unwrap_or("").to_owned()),
                ),
                (
                    "reference".to_owned(),
                    RestrictedExpression::new_string(ctx.reference.unwrap_or("").to_owned()),
                ),
            ])
            .map_err(|e| e.to_string())?
        } else {
            Context::empty()
        };
        let action = self
            .actions
            .get(action.index())
            .ok_or_else(|| format!("no Cedar action for {action}"))?
            .clone();
        Request::new(principal.uid().clone(), action, resource, context, schema)
            .map_err(|e| e.to_string())
    }

    /// Every file read: the schema, the policy files (in load order), the identity mapping.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// How many policies were loaded (from all files).
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// How many principals the identity mapping defines (not counting the developer).
    pub fn principal_count(&self) -> usize {
        self.principal_count
    }
}

fn slice_index(kind: PrincipalKind, action: Action) -> usize {
    kind.index() * Action::ALL.len() + action.index()
}

/// The policies of `all` whose principal and action scope can match each (principal kind,
/// action), indexed by [`slice_index`]. Conservative: a scope this cannot rule out for certain
/// (`principal in …`, `action in` something that is not one of our actions, i.e. a group) is
/// kept.
fn slice(all: &PolicySet, actions: &[EntityUid]) -> Result<Vec<PolicySet>, String> {
    let mut out = Vec::with_capacity(PrincipalKind::ALL.len() * actions.len());
    for kind in PrincipalKind::ALL {
        let ty = type_name(kind.as_str());
        for action in actions {
            let mut set = PolicySet::new();
            for policy in all.policies() {
                let principal_may_match = match policy.principal_constraint() {
                    PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => t == ty,
                    PrincipalConstraint::Eq(uid) => *uid.type_name() == ty,
                    PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
                };
                let action_may_match = match policy.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(uid) => uid == *action,
                    ActionConstraint::In(uids) => uids
                        .iter()
                        .any(|uid| uid == action || !actions.contains(uid)),
                };
                if principal_may_match && action_may_match {
                    set.add(policy.clone()).map_err(|e| e.to_string())?;
                }
            }
            out.push(set);
        }
    }
    Ok(out)
}

fn read(path: &Path, what: &str) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError::io(path, what, &e))
}

/// The files `dir/*.<ext>`, sorted by name, skipping names that start with `.` (editor
/// lock and swap files).
pub(crate) fn list_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::io(dir, "directory", &e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LoadError::io(dir, "directory", &e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let matches = path.extension().is_some_and(|e| e == ext);
        if !hidden && matches && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn load_schema(path: &Path) -> Result<Schema, LoadError> {
    let text = read(path, "schema")?;
    let (schema, warnings) = Schema::from_cedarschema_str(&text).map_err(|e| {
        LoadError::many(
            LoadErrorKind::Schema,
            detailed_problems(path, &text, &DetailedError::from(&e), ""),
        )
    })?;
    let warnings: Vec<Problem> = warnings
        .flat_map(|w| detailed_problems(path, &text, &DetailedError::from(&w), "warning: "))
        .collect();
    if warnings.is_empty() {
        Ok(schema)
    } else {
        Err(LoadError::many(LoadErrorKind::Schema, warnings))
    }
}

/// The problems of one Cedar diagnostic (and its related ones), positioned in `text` by the
/// diagnostic's first source label.
fn detailed_problems(
    path: &Path,
    text: &str,
    detailed: &DetailedError,
    prefix: &str,
) -> Vec<Problem> {
    let mut message = format!("{prefix}{}", detailed.message);
    if let Some(help) = &detailed.help {
        message.push_str(&format!(" (help: {help})"));
    }
    let offset = detailed.source_locations.first().map(|l| l.loc.start);
    let mut out = vec![Problem::new(path, text, offset, one_line(&message))];
    for related in &detailed.related {
        out.extend(detailed_problems(path, text, related, prefix));
    }
    out
}

/// Parses `paths[index]` (whose contents are `text`) into `set`, renaming its policies to their final ids.
fn parse_policy_file(
    paths: &[PathBuf],
    index: usize,
    text: &str,
    set: &mut PolicySet,
    origin: &mut HashMap<PolicyId, usize>,
) -> Result<(), Vec<Problem>> {
    let Some(path) = paths.get(index) else {
        return Ok(());
    };
    let parsed = PolicySet::from_str(text).map_err(|errs| {
        errs.iter()
            .flat_map(|e| detailed_problems(path, text, &DetailedError::from(e), ""))
            .collect::<Vec<_>>()
    })?;
    let mut problems = Vec::new();
    if let Some(t) = parsed.templates().next() {
        let name = t.annotation("id").unwrap_or("");
        problems.push(Problem::new(
            path,
            text,
            None,
            format!(
                "policy {name:?} is a template (it has `?principal` or `?resource`); templates \
                 are not supported"
            ),
        ));
    }
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    // `PolicySet::from_str` names the policies `policy0`, `policy1`, … in file order.
    let mut parsed: Vec<(usize, &cedar_policy::Policy)> = parsed
        .policies()
        .map(|p| {
            let n = id_str(p.id())
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            (n, p)
        })
        .collect();
    parsed.sort_by_key(|(n, _)| *n);
    for (n, policy) in parsed {
        let id = match policy.annotation("id") {
            Some(id) => {
                if id.trim().is_empty() {
                    problems.push(Problem::new(
                        path,
                        text,
                        annotation_offset(text, id),
                        "`@id` must not be empty",
                    ));
                    continue;
                }
                id.to_owned()
            }
            None => format!("{stem}#{}", n.saturating_add(1)),
        };
        let id = PolicyId::new(&id);
        if let Some(&first) = origin.get(&id) {
            let other = if first == index {
                "earlier in this file".to_owned()
            } else {
                paths
                    .get(first)
                    .map_or_else(String::new, |p| p.display().to_string())
            };
            problems.push(Problem::new(
                path,
                text,
                annotation_offset(text, id_str(&id)),
                format!("duplicate policy id {:?} (also {other})", id_str(&id)),
            ));
            continue;
        }
        match set.add(policy.new_id(id.clone())) {
            Ok(()) => {
                origin.insert(id, index);
            }
            Err(e) => problems.push(Problem::new(path, text, None, e.to_string())),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Where `@id("<id>")` is written in `text` (the last occurrence: for a duplicate within one
/// file that is the second one), if written in that plain form.
fn annotation_offset(text: &str, id: &str) -> Option<usize> {
    let needle = format!("@id({})", serde_json::to_string(id).ok()?);
    text.rfind(&needle)
}

/// Strict validation; errors and warnings both fail, each named by file, line and policy id.
fn validate(
    schema: &Schema,
    policies: &PolicySet,
    files: &[PolicyFile],
    origin: &HashMap<PolicyId, usize>,
) -> Result<(), LoadError> {
    let validator = Validator::new(schema.clone());
    let result = validator.validate(policies, ValidationMode::Strict);
    let mut problems = Vec::new();
    // Cedar's messages name the policy ("for policy `service-crypto`, …").
    let mut push = |id: &PolicyId, detailed: DetailedError, prefix: &str| {
        let Some(file) = origin.get(id).and_then(|&i| files.get(i)) else {
            return;
        };
        problems.extend(detailed_problems(&file.path, &file.text, &detailed, prefix));
    };
    for e in result.validation_errors() {
        push(e.policy_id(), DetailedError::from(e), "");
    }
    for w in result.validation_warnings() {
        push(w.policy_id(), DetailedError::from(w), "warning: ");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort_by(|a, b| (&a.path, a.position).cmp(&(&b.path, b.position)));
        Err(LoadError::many(LoadErrorKind::PolicyValidation, problems))
    }
}

fn id_str(id: &PolicyId) -> &str {
    id.as_ref()
}
