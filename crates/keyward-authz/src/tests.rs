//! Tests of the crate against the shipped `policies/` (and broken copies of it).

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{Context, Request};

use super::*;
use crate::policies::load_schema;

const CHAT_API: &str = "spiffe://keyward.test/ns/chat/sa/chat-api";
const BILLING: &str = "spiffe://keyward.test/ns/billing/sa/billing-worker";
const GATEWAY: &str = "spiffe://keyward.test/ns/edge/sa/gateway";
const ACME_ADMIN: &str = "spiffe://keyward.test/ns/acme/sa/secops";
const GLOBEX_ADMIN: &str = "spiffe://keyward.test/ns/globex/sa/secops";
const ACME_AUDITOR: &str = "spiffe://keyward.test/ns/acme/sa/auditor";
const ACME_AUDITOR_DNS: &str = "dns:auditor.acme.example";
const COMPLIANCE: &str = "spiffe://keyward.test/ns/compliance/sa/auditor";
const ONCALL: &str = "spiffe://keyward.test/ns/keyward/sa/operator";

fn shipped_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn shipped() -> Policies {
    let dir = shipped_dir();
    Policies::load(&dir, &dir.join("identities.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A copy of the shipped policy files (not the tests) in a temporary directory.
fn fixture() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(shipped_dir()).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), t.path().join(e.file_name())).unwrap();
        }
    }
    t
}

fn load(dir: &Path) -> Result<Policies, LoadError> {
    Policies::load(dir, &dir.join("identities.toml"))
}

fn load_err(dir: &Path) -> LoadError {
    match load(dir) {
        Ok(_) => panic!("loaded, expected an error"),
        Err(e) => e,
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn append(dir: &Path, name: &str, text: &str) {
    let mut s = std::fs::read_to_string(dir.join(name)).unwrap();
    s.push_str(text);
    write(dir, name, &s);
}

fn lines(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .lines()
        .count()
}

fn crypto<'a>(purpose: &'a str) -> RequestContext<'a> {
    RequestContext {
        purpose: Some(purpose),
        scope: None,
        ..Default::default()
    }
}

// --- the shipped policies --------------------------------------------------------------------

#[test]
fn shipped_policies_load() {
    let p = shipped();
    assert_eq!(p.policy_count(), 15);
    assert_eq!(p.principal_count(), 8);
    let names: Vec<String> = p
        .sources()
        .iter()
        .map(|s| s.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "schema.cedarschema",
            "auditors.cedar",
            "common.cedar",
            "dev.cedar",
            "guards.cedar",
            "operators.cedar",
            "services.cedar",
            "tenant_admins.cedar",
            "identities.toml",
        ]
    );
    for (identity, kind, id) in [
        (CHAT_API, PrincipalKind::Service, "chat-api"),
        (BILLING, PrincipalKind::Service, "billing-worker"),
        (GATEWAY, PrincipalKind::Service, "gateway"),
        (ACME_ADMIN, PrincipalKind::TenantAdmin, "acme-secops"),
        (GLOBEX_ADMIN, PrincipalKind::TenantAdmin, "globex-secops"),
        (ACME_AUDITOR, PrincipalKind::Auditor, "acme-auditor"),
        (ACME_AUDITOR_DNS, PrincipalKind::Auditor, "acme-auditor"),
        (COMPLIANCE, PrincipalKind::Auditor, "compliance"),
        (ONCALL, PrincipalKind::Operator, "oncall"),
    ] {
        let principal = p.principal(identity).unwrap();
        assert_eq!((principal.kind(), principal.id()), (kind, id), "{identity}");
        assert_eq!(principal.to_string(), format!("{kind}::\"{id}\""));
    }
    // Both identities of one principal share it.
    assert!(Arc::ptr_eq(
        &p.principal(ACME_AUDITOR).unwrap(),
        &p.principal(ACME_AUDITOR_DNS).unwrap()
    ));
    assert!(p.principal("chat-api").is_none());
    assert!(p.principal("dev").is_none());
    assert!(p.principal("").is_none());
    let dev = Policies::developer();
    assert_eq!(dev.kind(), PrincipalKind::Developer);
    assert_eq!(dev.to_string(), r#"Developer::"dev""#);
}

#[test]
fn policies_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Policies>();
    check::<Principal>();
    check::<LoadError>();
}

#[test]
fn shipped_cases_pass() {
    let p = shipped();
    let report = cases::run(&p, &shipped_dir().join("tests")).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_success(), "{report}");
    assert!(report.passed >= 40, "{report}");
}

#[test]
fn every_request_we_build_matches_the_schema() {
    let p = shipped();
    let schema = load_schema(&shipped_dir().join(SCHEMA_FILE)).unwrap();
    let dev = Policies::developer();
    let ctx = RequestContext {
        purpose: Some("chat-history"),
        scope: Some("s"),
        ..Default::default()
    };
    for action in Action::ALL {
        let resources: &[Resource<'_>] = match action {
            Action::ReportKeyEvent | Action::ReadAuditPublicKey | Action::RotateSigningKey => {
                &[Resource::System]
            }
            Action::ReadAudit | Action::ExportAudit => {
                &[Resource::Tenant("acme"), Resource::System]
            }
            _ => &[Resource::Tenant("acme")],
        };
        for &resource in resources {
            for ctx in [ctx, RequestContext::default()] {
                if let Err(e) = p.request(&dev, action, resource, &ctx, Some(&schema)) {
                    panic!("{action} on {resource:?}: {e}");
                }
                assert!(p.is_authorized(&dev, action, resource, &ctx), "{action}");
            }
        }
    }
    // And the schema check is real: Encrypt without its context does not validate.
    let uid = |s: &str| s.parse().unwrap();
    let wrong = Request::new(
        uid(r#"Keyward::Developer::"dev""#),
        uid(r#"Keyward::Action::"Encrypt""#),
        uid(r#"Keyward::Tenant::"acme""#),
        Context::empty(),
        Some(&schema),
    );
    assert!(wrong.is_err());
}

#[test]
fn representative_decisions() {
    let p = shipped();
    let chat = p.principal(CHAT_API).unwrap();
    let acme = Resource::Tenant("acme");
    let globex = Resource::Tenant("globex");
    assert!(p.is_authorized(&chat, Action::Encrypt, acme, &crypto("chat-history")));
    assert!(p.is_authorized(&chat, Action::Decrypt, acme, &crypto("completions")));
    assert!(!p.is_authorized(&chat, Action::Encrypt, globex, &crypto("chat-history")));
    assert!(!p.is_authorized(&chat, Action::Encrypt, acme, &crypto("other")));
    // No purpose is the empty purpose, which chat-api does not have.
    assert!(!p.is_authorized(&chat, Action::Encrypt, acme, &RequestContext::default()));
    assert!(!p.is_authorized(&chat, Action::RevokeKey, acme, &RequestContext::default()));

    let billing = p.principal(BILLING).unwrap();
    assert!(p.is_authorized(
        &billing,
        Action::Decrypt,
        globex,
        &RequestContext::default()
    ));
    assert!(!p.is_authorized(&billing, Action::Decrypt, acme, &RequestContext::default()));

    let gateway = p.principal(GATEWAY).unwrap();
    let anyone = Resource::Tenant("initech");
    assert!(p.is_authorized(&gateway, Action::Encrypt, anyone, &crypto("x")));

    let admin = p.principal(ACME_ADMIN).unwrap();
    let none = RequestContext::default();
    assert!(p.is_authorized(&admin, Action::RevokeKey, acme, &none));
    assert!(!p.is_authorized(&admin, Action::RevokeKey, globex, &none));
    assert!(!p.is_authorized(&admin, Action::Decrypt, acme, &none));

    let auditor = p.principal(ACME_AUDITOR_DNS).unwrap();
    assert!(p.is_authorized(&auditor, Action::ReadAudit, acme, &none));
    assert!(!p.is_authorized(&auditor, Action::ReadAudit, Resource::System, &none));
    assert!(!p.is_authorized(&auditor, Action::Decrypt, acme, &crypto("chat-history")));
    let compliance = p.principal(COMPLIANCE).unwrap();
    assert!(p.is_authorized(&compliance, Action::ExportAudit, Resource::System, &none));
    // A per-tenant export (the tenant as resource): global auditors for any tenant, the tenant's
    // admin and scoped auditors for their own; the whole chain (System) for global ones only.
    assert!(p.is_authorized(&compliance, Action::ExportAudit, acme, &none));
    assert!(p.is_authorized(&admin, Action::ExportAudit, acme, &none));
    assert!(!p.is_authorized(&admin, Action::ExportAudit, globex, &none));
    assert!(!p.is_authorized(&admin, Action::ExportAudit, Resource::System, &none));
    assert!(p.is_authorized(&auditor, Action::ExportAudit, acme, &none));
    assert!(!p.is_authorized(&auditor, Action::ExportAudit, globex, &none));
    assert!(!p.is_authorized(&auditor, Action::ExportAudit, Resource::System, &none));

    let oncall = p.principal(ONCALL).unwrap();
    assert!(p.is_authorized(&oncall, Action::RevokeKey, acme, &none));
    assert!(!p.is_authorized(&oncall, Action::RestoreKey, acme, &none));
    assert!(!p.is_authorized(&oncall, Action::Encrypt, acme, &none));
    assert!(p.is_authorized(&oncall, Action::RotateSigningKey, Resource::System, &none));
    // Tenant ids with Cedar-significant characters are just strings.
    assert!(!p.is_authorized(
        &admin,
        Action::RevokeKey,
        Resource::Tenant("acme\" || true"),
        &none
    ));
}

#[test]
fn forbids_win_over_a_permit() {
    // Even a policy that permits operators and auditors everything cannot give them data.
    let t = fixture();
    write(
        t.path(),
        "zz_too_generous.cedar",
        "@id(\"too-generous\")\npermit (principal, action, resource);\n",
    );
    let p = load(t.path()).unwrap_or_else(|e| panic!("{e}"));
    let tenant = Resource::Tenant("acme");
    for identity in [ONCALL, COMPLIANCE, ACME_AUDITOR] {
        let principal = p.principal(identity).unwrap();
        for action in [Action::Encrypt, Action::Decrypt] {
            assert!(!p.is_authorized(&principal, action, tenant, &crypto("chat-history")));
        }
        assert!(p.is_authorized(
            &principal,
            Action::GetTenant,
            tenant,
            &RequestContext::default()
        ));
    }
}

#[test]
fn a_principal_from_an_earlier_mapping_is_judged_by_the_current_one() {
    let t = fixture();
    let before = load(t.path()).unwrap();
    let chat = before.principal(CHAT_API).unwrap();
    let ctx = crypto("chat-history");
    assert!(before.is_authorized(&chat, Action::Encrypt, Resource::Tenant("acme"), &ctx));

    // chat-api moves to globex, then is removed.
    let mapping = std::fs::read_to_string(t.path().join("identities.toml")).unwrap();
    let moved = mapping.replacen("tenants = [\"acme\"]", "tenants = [\"globex\"]", 1);
    write(t.path(), "identities.toml", &moved);
    let after = load(t.path()).unwrap();
    assert!(!after.is_authorized(&chat, Action::Encrypt, Resource::Tenant("acme"), &ctx));
    assert!(after.is_authorized(&chat, Action::Encrypt, Resource::Tenant("globex"), &ctx));

    let removed = moved.replacen("id = \"chat-api\"", "id = \"chat-api-v2\"", 1);
    write(t.path(), "identities.toml", &removed);
    let gone = load(t.path()).unwrap();
    assert!(!gone.is_authorized(&chat, Action::Encrypt, Resource::Tenant("globex"), &ctx));
    assert_eq!(gone.principal(CHAT_API).unwrap().id(), "chat-api-v2");
}

// --- load errors: policies and schema ----------------------------------------------------------

#[test]
fn malformed_policy_names_file_and_line() {
    let t = fixture();
    // The existing lines, an empty one, `@id`, `permit`, then the broken `when`.
    let line = lines(t.path(), "services.cedar") + 4;
    append(
        t.path(),
        "services.cedar",
        "\n@id(\"broken\")\npermit (principal, action, resource)\nwhen { principal.all_tenants ++ };\n",
    );
    let err = load_err(t.path());
    let msg = err.to_string();
    assert_eq!(err.kind(), LoadErrorKind::PolicySyntax);
    assert!(msg.contains(&format!("services.cedar:{line}:")), "{msg}");
    assert_eq!(err.line(), Some(line));
    assert!(err.path().ends_with("services.cedar"));
}

#[test]
fn policy_failing_strict_validation_names_file_line_and_policy() {
    let t = fixture();
    // The existing lines, an empty one, `@id`, `permit`, then the `when` with the attribute.
    let line = lines(t.path(), "services.cedar") + 4;
    append(
        t.path(),
        "services.cedar",
        "\n@id(\"uses-unknown-attribute\")\npermit (principal is Keyward::Service, action == Keyward::Action::\"Encrypt\", resource)\nwhen { principal.department == \"x\" };\n",
    );
    let err = load_err(t.path());
    let msg = err.to_string();
    assert_eq!(err.kind(), LoadErrorKind::PolicyValidation);
    assert!(msg.contains(&format!("services.cedar:{line}:")), "{msg}");
    assert!(msg.contains("uses-unknown-attribute"), "{msg}");
    assert!(msg.contains("department"), "{msg}");
}

#[test]
fn validation_warnings_fail_the_load() {
    // The schema does not let a tenant admin Encrypt: the policy could never apply.
    let t = fixture();
    write(
        t.path(),
        "zz_admin_data.cedar",
        "@id(\"admin-data\")\npermit (principal is Keyward::TenantAdmin, action == Keyward::Action::\"Encrypt\", resource);\n",
    );
    let err = load_err(t.path());
    let msg = err.to_string();
    assert_eq!(err.kind(), LoadErrorKind::PolicyValidation);
    assert!(msg.contains("zz_admin_data.cedar:1:"), "{msg}");
    assert!(msg.contains("admin-data"), "{msg}");
}

#[test]
fn duplicate_policy_ids_are_rejected() {
    let t = fixture();
    write(
        t.path(),
        "zz_dup.cedar",
        "// a comment\n@id(\"service-crypto\")\npermit (principal, action == Keyward::Action::\"ReadAuditPublicKey\", resource);\n",
    );
    let msg = load_err(t.path()).to_string();
    assert!(
        msg.contains("zz_dup.cedar:2:1: duplicate policy id \"service-crypto\""),
        "{msg}"
    );
    assert!(msg.contains("services.cedar"), "{msg}");
}

#[test]
fn policies_without_id_get_file_and_position() {
    let t = fixture();
    write(
        t.path(),
        "zz_plain.cedar",
        "permit (principal is Keyward::Operator, action == Keyward::Action::\"GetTenant\", resource);\npermit (principal is Keyward::Operator, action == Keyward::Action::\"Nope\", resource);\n",
    );
    let msg = load_err(t.path()).to_string();
    assert!(msg.contains("zz_plain.cedar:2:"), "{msg}");
    assert!(msg.contains("zz_plain#2"), "{msg}");
    assert!(!msg.contains("zz_plain#1"), "{msg}");
}

#[test]
fn templates_are_rejected() {
    let t = fixture();
    write(
        t.path(),
        "zz_template.cedar",
        "@id(\"tpl\")\npermit (principal == ?principal, action, resource);\n",
    );
    let err = load_err(t.path());
    assert_eq!(err.kind(), LoadErrorKind::PolicySyntax);
    assert!(err.to_string().contains("template"), "{err}");
}

#[test]
fn schema_errors_name_file_and_line() {
    let t = fixture();
    let text = std::fs::read_to_string(t.path().join(SCHEMA_FILE)).unwrap();
    let broken = text.replacen("entity Operator;", "entity Operator oops;", 1);
    let line = broken.lines().position(|l| l.contains("oops")).unwrap() + 1;
    write(t.path(), SCHEMA_FILE, &broken);
    let err = load_err(t.path());
    assert_eq!(err.kind(), LoadErrorKind::Schema);
    assert!(
        err.to_string()
            .contains(&format!("schema.cedarschema:{line}:")),
        "{err}"
    );
}

#[test]
fn missing_schema_and_empty_directory_are_errors() {
    let t = fixture();
    std::fs::remove_file(t.path().join(SCHEMA_FILE)).unwrap();
    let err = load_err(t.path());
    assert_eq!(err.kind(), LoadErrorKind::Io);
    assert!(err.to_string().contains(SCHEMA_FILE), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = load_err(empty.path());
    assert!(err.to_string().contains("no policy files"), "{err}");
}

#[test]
fn hidden_and_other_files_are_ignored() {
    let t = fixture();
    write(t.path(), ".#services.cedar", "garbage");
    write(t.path(), "notes.txt", "garbage");
    std::fs::create_dir(t.path().join("sub.cedar")).unwrap();
    assert_eq!(load(t.path()).unwrap().policy_count(), 15);
}

// --- load errors: the identity mapping -----------------------------------------------------------

/// Loads the fixture with `mapping` as the identity file and returns the error.
fn mapping_err(mapping: &str) -> String {
    let t = fixture();
    write(t.path(), "identities.toml", mapping);
    let err = load_err(t.path());
    assert_eq!(err.kind(), LoadErrorKind::Identities, "{err}");
    err.to_string()
}

#[test]
fn malformed_mapping_names_file_and_line() {
    let msg = mapping_err(
        "[[operator]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\n\n[[operator]]\nid = \"b\"\nidentities = [\"dns:b.example\"\n",
    );
    assert!(msg.contains("identities.toml:"), "{msg}");
    assert!(
        msg.contains("identities.toml:7:") || msg.contains("identities.toml:8:"),
        "{msg}"
    );
}

#[test]
fn unknown_fields_are_rejected() {
    let msg = mapping_err(
        "[[service]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\ntenants = [\"acme\"]\npurpose = [\"x\"]\n",
    );
    assert!(msg.contains("identities.toml:5:"), "{msg}");
    assert!(msg.contains("purpose"), "{msg}");
}

#[test]
fn duplicate_identities_across_principals_are_rejected() {
    let msg = mapping_err(
        "[[service]]\nid = \"a\"\nidentities = [\"dns:shared.example\"]\nall_tenants = true\n\n[[operator]]\nid = \"b\"\nidentities = [\"dns:shared.example\"]\n",
    );
    assert!(msg.contains("identities.toml:8:"), "{msg}");
    assert!(
        msg.contains("\"dns:shared.example\" is already mapped to service \"a\""),
        "{msg}"
    );
}

#[test]
fn duplicate_ids_per_kind_are_rejected_but_not_across_kinds() {
    let msg = mapping_err(
        "[[operator]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\n\n[[operator]]\nid = \"a\"\nidentities = [\"dns:b.example\"]\n",
    );
    assert!(msg.contains("identities.toml:6:"), "{msg}");
    assert!(msg.contains("duplicate operator id \"a\""), "{msg}");

    let t = fixture();
    write(
        t.path(),
        "identities.toml",
        "[[operator]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\n\n[[auditor]]\nid = \"a\"\nidentities = [\"dns:b.example\"]\nglobal = true\n",
    );
    let p = load(t.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.principal_count(), 2);
}

#[test]
fn invalid_tenant_ids_are_rejected() {
    let msg = mapping_err(
        "[[tenant_admin]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\ntenant = \"Acme Corp\"\n",
    );
    assert!(msg.contains("identities.toml:4:"), "{msg}");
    assert!(msg.contains("Acme Corp"), "{msg}");
    let msg = mapping_err(
        "[[auditor]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\ntenants = [\"acme\", \"-bad\"]\n",
    );
    assert!(msg.contains("identities.toml:4:"), "{msg}");
}

#[test]
fn developer_cannot_be_mapped() {
    let msg = mapping_err("[[developer]]\nid = \"dev\"\nidentities = [\"dns:dev.example\"]\n");
    assert!(msg.contains("identities.toml:1:"), "{msg}");
    assert!(msg.contains("development mode"), "{msg}");
}

#[test]
fn tenants_and_all_tenants_are_exclusive() {
    let both = mapping_err(
        "[[service]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\ntenants = [\"acme\"]\nall_tenants = true\n",
    );
    assert!(both.contains("not both"), "{both}");
    let neither = mapping_err("[[service]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\n");
    assert!(neither.contains("identities.toml:2:"), "{neither}");
    let false_alone = mapping_err(
        "[[service]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\nall_tenants = false\n",
    );
    assert!(false_alone.contains("grants nothing"), "{false_alone}");
    let auditor = mapping_err(
        "[[auditor]]\nid = \"a\"\nidentities = [\"dns:a.example\"]\ntenants = [\"acme\"]\nglobal = true\n",
    );
    assert!(auditor.contains("identities.toml:5:"), "{auditor}");
}

#[test]
fn malformed_identities_are_rejected() {
    for bad in [
        "chat-api",
        "spiffe://",
        "dns:",
        "https://x.example",
        "dns:a b",
        "SPIFFE://x/y",
    ] {
        let msg = mapping_err(&format!(
            "[[operator]]\nid = \"a\"\nidentities = [{}]\n",
            toml::Value::String(bad.to_owned())
        ));
        assert!(msg.contains("identities.toml:3:"), "{bad}: {msg}");
    }
    let none = mapping_err("[[operator]]\nid = \"a\"\nidentities = []\n");
    assert!(none.contains("at least one"), "{none}");
    let empty_id = mapping_err("[[operator]]\nid = \"\"\nidentities = [\"dns:a.example\"]\n");
    assert!(empty_id.contains("identities.toml:2:"), "{empty_id}");
}

#[test]
fn missing_mapping_is_an_io_error() {
    let t = fixture();
    let err = Policies::load(t.path(), &t.path().join("nope.toml"))
        .err()
        .unwrap();
    assert_eq!(err.kind(), LoadErrorKind::Io);
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

// --- test cases ----------------------------------------------------------------------------------

fn cases_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (name, text) in files {
        write(t.path(), name, text);
    }
    t
}

#[test]
fn a_wrong_expectation_is_reported_as_a_failure() {
    let p = shipped();
    let t = cases_dir(&[(
        "wrong.toml",
        &format!(
            "[[case]]\nname = \"right\"\nidentity = \"{CHAT_API}\"\naction = \"Encrypt\"\ntenant = \"acme\"\npurpose = \"chat-history\"\nexpect = \"allow\"\n\n\
             [[case]]\nname = \"deliberately wrong\"\nidentity = \"{CHAT_API}\"\naction = \"Encrypt\"\ntenant = \"globex\"\npurpose = \"chat-history\"\nexpect = \"allow\"\n\n\
             [[case]]\nname = \"also wrong\"\ndeveloper = true\naction = \"RotateSigningKey\"\nexpect = \"deny\"\n"
        ),
    )]);
    let report = cases::run(&p, t.path()).unwrap();
    assert_eq!(report.passed, 1);
    assert!(!report.is_success());
    assert_eq!(
        report.failures,
        [
            cases::Failure {
                file: t.path().join("wrong.toml"),
                name: "deliberately wrong".to_owned(),
                expected: true,
                got: false,
            },
            cases::Failure {
                file: t.path().join("wrong.toml"),
                name: "also wrong".to_owned(),
                expected: false,
                got: true,
            },
        ]
    );
    let shown = report.to_string();
    assert!(shown.starts_with("1 passed, 2 failed\n"), "{shown}");
    assert!(
        shown.contains("wrong.toml: \"deliberately wrong\": expected allow, got deny"),
        "{shown}"
    );
}

#[test]
fn malformed_cases_are_errors_not_failures() {
    let p = shipped();
    for (text, needle) in [
        (
            "[[case]]\nname = \"a\"\ndeveloper = true\naction = \"Fly\"\nexpect = \"deny\"\n",
            "wrong.toml:4:",
        ),
        (
            "[[case]]\nname = \"a\"\ndeveloper = true\nidentity = \"dns:x\"\naction = \"GetTenant\"\nexpect = \"deny\"\n",
            "not both",
        ),
        (
            "[[case]]\nname = \"a\"\naction = \"GetTenant\"\nexpect = \"deny\"\n",
            "wrong.toml:2:",
        ),
        (
            "[[case]]\nname = \"a\"\ndeveloper = true\naction = \"GetTenant\"\ntenant = \"ACME\"\nexpect = \"deny\"\n",
            "wrong.toml:5:",
        ),
        (
            "[[case]]\nname = \"a\"\ndeveloper = true\naction = \"GetTenant\"\npurpose = \"x\"\nexpect = \"deny\"\n",
            "only applies to Encrypt, Decrypt and Rewrap",
        ),
        (
            "[[case]]\nname = \"a\"\ndeveloper = true\naction = \"GetTenant\"\nexpect = \"maybe\"\n",
            "wrong.toml:5:",
        ),
        (
            "[[case]]\nname = \"a\"\ndeveloper = true\naction = \"GetTenant\"\nexpect = \"deny\"\nextra = 1\n",
            "wrong.toml:6:",
        ),
        (
            "[[case]]\nname = \"a\"\ndeveloper = true\naction = \"GetTenant\"\nexpect = \"deny\"\n[[case]]\nname = \"a\"\ndeveloper = true\naction = \"GetTenant\"\nexpect = \"deny\"\n",
            "duplicate case name",
        ),
        ("# nothing\n", "no cases"),
    ] {
        let t = cases_dir(&[("wrong.toml", text)]);
        let err = cases::run(&p, t.path())
            .err()
            .unwrap_or_else(|| panic!("accepted {text}"));
        assert_eq!(err.kind(), LoadErrorKind::Cases);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    let empty = tempfile::tempdir().unwrap();
    let err = cases::run(&p, empty.path()).err().unwrap();
    assert!(err.to_string().contains("no test case files"), "{err}");
}

#[test]
fn slicing_by_principal_kind_and_action_changes_no_decision() {
    let shipped_policies = shipped();
    // Plus policies with scopes the slicing must keep: unconstrained, `in` a group-like uid,
    // `principal ==` / `in` a uid.
    let t = fixture();
    write(
        t.path(),
        "zz_scopes.cedar",
        "@id(\"any\")\npermit (principal, action, resource) when { resource == Keyward::Tenant::\"initech\" };\n\
         @id(\"eq\")\npermit (principal == Keyward::Service::\"chat-api\", action == Keyward::Action::\"RegisterKey\", resource);\n\
         @id(\"in\")\npermit (principal in Keyward::Service::\"gateway\", action == Keyward::Action::\"SetTenantPolicy\", resource);\n",
    );
    let extended = load(t.path()).unwrap_or_else(|e| panic!("{e}"));
    let identities = [
        CHAT_API,
        BILLING,
        GATEWAY,
        ACME_ADMIN,
        GLOBEX_ADMIN,
        ACME_AUDITOR,
        COMPLIANCE,
        ONCALL,
    ];
    let mut allowed = 0;
    for p in [&shipped_policies, &extended] {
        let mut principals: Vec<Arc<Principal>> =
            identities.iter().map(|i| p.principal(i).unwrap()).collect();
        principals.push(Policies::developer());
        for principal in &principals {
            for action in Action::ALL {
                for resource in [
                    Resource::Tenant("acme"),
                    Resource::Tenant("globex"),
                    Resource::Tenant("initech"),
                    Resource::System,
                ] {
                    for ctx in [
                        RequestContext::default(),
                        crypto("chat-history"),
                        crypto("x"),
                    ] {
                        let sliced = p.is_authorized(principal, action, resource, &ctx);
                        let full = p.is_authorized_unsliced(principal, action, resource, &ctx);
                        assert_eq!(sliced, full, "{principal} {action} {resource:?} {ctx:?}");
                        allowed += usize::from(sliced);
                    }
                }
            }
        }
    }
    assert!(allowed > 0);
    // The extra policies did apply.
    let none = RequestContext::default();
    let acme = Resource::Tenant("acme");
    let chat = extended.principal(CHAT_API).unwrap();
    assert!(extended.is_authorized(&chat, Action::RegisterKey, acme, &none));
    let gateway = extended.principal(GATEWAY).unwrap();
    assert!(extended.is_authorized(&gateway, Action::SetTenantPolicy, acme, &none));
    assert!(!shipped_policies.is_authorized(&gateway, Action::SetTenantPolicy, acme, &none));
}
