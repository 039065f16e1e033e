//! Policy test cases (`policies/tests/*.toml`), run against loaded [`Policies`].
//!
//! ```toml
//! [[case]]
//! name = "chat-api may not encrypt for globex"
//! identity = "spiffe://keyward.test/ns/chat/sa/chat-api"   # or: developer = true
//! action = "Encrypt"
//! tenant = "globex"           # absent: the resource is the system
//! purpose = "chat-history"    # Encrypt/Decrypt only; default ""
//! scope = "default"           # Encrypt/Decrypt only; default "default"
//! justification = "legal_hold" # the declared purpose (docs/justifications.md); default ""
//! reference = "SUP-1"         # the justification's reference; default ""
//! expect = "deny"             # "allow" | "deny"
//! ```
//!
//! An `identity` that the mapping does not know is a valid case: it is denied (the server
//! answers UNAUTHENTICATED before any policy runs).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyward_envelope::TenantId;
use serde::Deserialize;
use toml::Spanned;

use crate::action::Action;
use crate::error::{LoadError, LoadErrorKind, Problem};
use crate::policies::{Policies, RequestContext, Resource, list_files};
use crate::principal::Principal;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    identity: Option<String>,
    developer: Option<Spanned<bool>>,
    action: Spanned<String>,
    tenant: Option<Spanned<String>>,
    purpose: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    justification: Option<Spanned<String>>,
    reference: Option<Spanned<String>>,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// Who a case calls as.
#[derive(Debug)]
enum Caller {
    Identity(String),
    Developer,
}

/// A checked case.
#[derive(Debug)]
struct Case {
    name: String,
    caller: Caller,
    action: Action,
    tenant: Option<TenantId>,
    purpose: Option<String>,
    scope: Option<String>,
    justification: Option<String>,
    reference: Option<String>,
    expect: bool,
}

/// The outcome of [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Cases whose decision was the expected one.
    pub passed: usize,
    /// Cases whose decision was not, in file order.
    pub failures: Vec<Failure>,
}

impl Report {
    /// Whether every case passed.
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }
}

/// `N passed, M failed`, then one line per failure.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failures.len())?;
        for failure in &self.failures {
            write!(f, "\n{failure}")?;
        }
        Ok(())
    }
}

/// A case whose decision was not the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The case file.
    pub file: PathBuf,
    /// The case's `name`.
    pub name: String,
    /// `true` for `expect = "allow"`.
    pub expected: bool,
    /// `true` if the policies allowed.
    pub got: bool,
}

/// `policies/tests/roles.toml: "chat-api may not encrypt for globex": expected deny, got allow`
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:?}: expected {}, got {}",
            self.file.display(),
            self.name,
            decision(self.expected),
            decision(self.got)
        )
    }
}

fn decision(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

/// Runs every case in `dir/*.toml` (sorted by name, not recursive) against `policies`.
///
/// A malformed case file (TOML syntax, unknown fields, unknown action, invalid tenant, both or
/// neither of `identity` and `developer = true`, `purpose`/`scope` on an action that has no
/// such context, duplicate names in a file), a file without cases, or a directory without
/// case files is an error, not a failed case: a check that silently runs nothing must not pass.
pub fn run(policies: &Policies, dir: &Path) -> Result<Report, LoadError> {
    let paths = list_files(dir, "toml")?;
    if paths.is_empty() {
        return Err(LoadError::in_file(
            LoadErrorKind::Cases,
            dir,
            "no test case files (*.toml)",
        ));
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(&path).map_err(|e| LoadError::io(&path, "test cases", &e))?;
        match parse(&path, &text) {
            Ok(cases) => files.push((path, cases)),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::many(LoadErrorKind::Cases, problems));
    }

    let developer = Policies::developer();
    let mut report = Report::default();
    for (path, cases) in files {
        for case in cases {
            let principal: Option<Arc<Principal>> = match &case.caller {
                Caller::Identity(identity) => policies.principal(identity),
                Caller::Developer => Some(Arc::clone(&developer)),
            };
            let resource = case
                .tenant
                .as_ref()
                .map_or(Resource::System, |t| Resource::Tenant(t.as_str()));
            let ctx = RequestContext {
                purpose: case.purpose.as_deref(),
                scope: case.scope.as_deref(),
                justification: case.justification.as_deref(),
                reference: case.reference.as_deref(),
            };
            let got =
                principal.is_some_and(|p| policies.is_authorized(&p, case.action, resource, &ctx));
            if got == case.expect {
                report.passed += 1;
            } else {
                report.failures.push(Failure {
                    file: path.clone(),
                    name: case.name,
                    expected: case.expect,
                    got,
                });
            }
        }
    }
    Ok(report)
}

fn parse(path: &Path, text: &str) -> Result<Vec<Case>, Vec<Problem>> {
    let file: CaseFile = toml::from_str(text).map_err(|e| {
        vec![Problem::new(
            path,
            text,
            e.span().map(|s| s.start),
            crate::error::one_line(e.message()),
        )]
    })?;
    if file.case.is_empty() {
        return Err(vec![Problem::new(
            path,
            text,
            None,
            "no cases (expected [[case]] tables)",
        )]);
    }
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut cases = Vec::new();
    for raw in file.case {
        let mut problem = |offset: usize, message: String| {
            problems.push(Problem::new(path, text, Some(offset), message));
        };
        let name = raw.name.get_ref().clone();
        let at = raw.name.span().start;
        if name.trim().is_empty() {
            problem(at, "a case needs a non-empty name".to_owned());
        } else if !names.insert(name.clone()) {
            problem(at, format!("duplicate case name {name:?}"));
        }
        let developer = raw
            .developer
            .as_ref()
            .map(|d| (*d.get_ref(), d.span().start));
        let caller = match (raw.identity, developer) {
            (Some(identity), None) => Some(Caller::Identity(identity)),
            (None, Some((true, _))) => Some(Caller::Developer),
            (Some(_), Some((_, at))) => {
                problem(
                    at,
                    format!("case {name:?}: set `identity` or `developer = true`, not both"),
                );
                None
            }
            (None, Some((false, at))) => {
                problem(
                    at,
                    format!(
                        "case {name:?}: `developer = false` names nobody; set `identity` instead"
                    ),
                );
                None
            }
            (None, None) => {
                problem(
                    at,
                    format!("case {name:?}: set `identity = \"…\"` or `developer = true`"),
                );
                None
            }
        };
        let action = match raw.action.get_ref().parse::<Action>() {
            Ok(a) => Some(a),
            Err(e) => {
                problem(raw.action.span().start, format!("case {name:?}: {e}"));
                None
            }
        };
        let tenant = match &raw.tenant {
            None => Some(None),
            Some(t) => match TenantId::try_from(t.get_ref().as_str()) {
                Ok(t) => Some(Some(t)),
                Err(e) => {
                    problem(
                        t.span().start,
                        format!("case {name:?}: invalid tenant: {e}"),
                    );
                    None
                }
            },
        };
        if let Some(action) = action.filter(|a| !a.is_crypto()) {
            for (key, value) in [
                ("purpose", &raw.purpose),
                ("scope", &raw.scope),
                ("justification", &raw.justification),
                ("reference", &raw.reference),
            ] {
                if let Some(v) = value {
                    problem(
                        v.span().start,
                        format!(
                            "case {name:?}: `{key}` only applies to Encrypt, Decrypt and Rewrap, not {action}"
                        ),
                    );
                }
            }
        }
        if let (Some(caller), Some(action), Some(tenant)) = (caller, action, tenant) {
            cases.push(Case {
                name,
                caller,
                action,
                tenant,
                purpose: raw.purpose.map(Spanned::into_inner),
                scope: raw.scope.map(Spanned::into_inner),
                justification: raw.justification.map(Spanned::into_inner),
                reference: raw.reference.map(Spanned::into_inner),
                expect: raw.expect == Expect::Allow,
            });
        }
    }
    problems.sort_by_key(|p| p.position);
    if problems.is_empty() {
        Ok(cases)
    } else {
        Err(problems)
    }
}
