//! Authentication and authorization end to end: the real binary with mutual TLS on 127.0.0.1,
//! certificates minted per run, the shipped Cedar policies in `policies/` and an identity
//! mapping written by the test.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use keyward_proto::v1::{
    self as pb, audit_service_client::AuditServiceClient,
    crypto_service_client::CryptoServiceClient, tenant_service_client::TenantServiceClient,
};
use support::{
    Server, assert_status, context, local_key,
    pki::{Ca, Leaf, San, connect},
};
use tonic::Code;

/// How often the servers of these tests look for changed TLS files.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

fn shipped_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

const CHAT: &str = "spiffe://keyward.test/ns/chat/sa/chat-api";
const BILLING: &str = "spiffe://keyward.test/ns/billing/sa/worker";
const ACME_ADMIN_DNS: &str = "secops.acme.example";
const GLOBEX_ADMIN: &str = "spiffe://keyward.test/ns/globex/sa/secops";
const ACME_AUDITOR: &str = "spiffe://keyward.test/ns/audit/sa/acme";
const OPERATOR: &str = "spiffe://keyward.test/ns/keyward/sa/operator";
const UNKNOWN: &str = "spiffe://keyward.test/ns/chat/sa/intruder";

const IDENTITIES: &str = r#"
[[service]]
id = "chat-api"
identities = ["spiffe://keyward.test/ns/chat/sa/chat-api"]
tenants = ["acme"]
purposes = ["chat-history"]

[[service]]
id = "billing-worker"
identities = ["spiffe://keyward.test/ns/billing/sa/worker"]
tenants = ["globex"]

[[tenant_admin]]
id = "acme-secops"
identities = ["dns:secops.acme.example"]
tenant = "acme"

[[tenant_admin]]
id = "globex-secops"
identities = ["spiffe://keyward.test/ns/globex/sa/secops"]
tenant = "globex"

[[auditor]]
id = "acme-auditor"
identities = ["spiffe://keyward.test/ns/audit/sa/acme"]
tenants = ["acme"]

[[operator]]
id = "oncall"
identities = ["spiffe://keyward.test/ns/keyward/sa/operator"]
"#;

/// A CA, a server certificate, the identity mapping, and the server's TLS environment.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Leaf,
    client_ca_file: PathBuf,
    identities_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "main");
        let server = ca.server();
        let client_ca_file = dir.path().join("client-ca.pem");
        std::fs::write(&client_ca_file, ca.pem()).unwrap();
        let identities_file = dir.path().join("identities.toml");
        std::fs::write(&identities_file, IDENTITIES).unwrap();
        Pki {
            dir,
            ca,
            server,
            client_ca_file,
            identities_file,
        }
    }

    fn env(&self, policies: &Path) -> Vec<(String, String)> {
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        vec![
            ("KEYWARD_TLS__CERT_FILE".into(), s(&self.server.cert_file)),
            ("KEYWARD_TLS__KEY_FILE".into(), s(&self.server.key_file)),
            (
                "KEYWARD_TLS__CLIENT_CA_FILE".into(),
                s(&self.client_ca_file),
            ),
            (
                "KEYWARD_TLS__RELOAD_INTERVAL_SECONDS".into(),
                RELOAD_INTERVAL.as_secs().to_string(),
            ),
            ("KEYWARD_AUTHZ__POLICIES_DIR".into(), s(policies)),
            (
                "KEYWARD_AUTHZ__IDENTITIES_FILE".into(),
                s(&self.identities_file),
            ),
        ]
    }

    fn start(&self, policies: &Path) -> Server {
        let env = self.env(policies);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start(&env)
    }

    /// [`Pki::start`] with the server's log written to the returned file, so a test can read
    /// why the server refused a handshake.
    fn start_logged(&self, policies: &Path) -> (Server, PathBuf) {
        let env = self.env(policies);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let log = self.dir.path().join("server.log");
        let file = std::fs::File::create(&log).unwrap();
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        (Server::start_with_stderr(&data, &env, file.into()), log)
    }

    fn spiffe(&self, name: &str, id: &str) -> Leaf {
        self.ca.client(name, &[San::Uri(id)], false)
    }
}

/// The clients of one caller.
struct Caller {
    crypto: CryptoServiceClient<tonic::transport::Channel>,
    tenants: TenantServiceClient<tonic::transport::Channel>,
    audit: AuditServiceClient<tonic::transport::Channel>,
}

async fn caller(server: &Server, pki: &Pki, leaf: &Leaf) -> Caller {
    let channel = connect(&server.addr, &pki.ca, Some(leaf)).await.unwrap();
    Caller {
        crypto: CryptoServiceClient::new(channel.clone()),
        tenants: TenantServiceClient::new(channel.clone()),
        audit: AuditServiceClient::new(channel),
    }
}

fn encrypt_req(tenant: &str, purpose: &str) -> pb::EncryptRequest {
    pb::EncryptRequest {
        tenant_id: tenant.into(),
        plaintext: b"a prompt".to_vec(),
        encryption_context: context(&[("purpose", purpose)]),
        scope: String::new(),
        justification: None,
    }
}

/// A connection without an acceptable client certificate must fail at the handshake or, with
/// TLS 1.3 (where the server checks the client's certificate after the client considers the
/// handshake done), on the first call — never reach a service — and for the right reason: the
/// server's TLS alert `alert` (e.g. `CertificateExpired`), or, when the client only saw the
/// connection go away, a new "TLS handshake refused" line in the server's `log` naming
/// `server_reason`. The server is shown alive and serving a good certificate before and after,
/// so a dead or wedged server cannot pass for a refusing one.
async fn assert_transport_refused(
    server: &Server,
    pki: &Pki,
    log: &Path,
    client: Option<&Leaf>,
    alert: &str,
    server_reason: &str,
) {
    assert_serves_a_good_certificate(server, pki).await;
    let refusals = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("TLS handshake refused") && l.contains(server_reason))
            .count()
    };
    let before = refusals(log);
    let error = match connect(&server.addr, &pki.ca, client).await {
        Err(e) => error_chain(&e),
        Ok(channel) => {
            let result = TenantServiceClient::new(channel)
                .get_tenant(pb::GetTenantRequest {
                    tenant_id: "acme".into(),
                })
                .await;
            let status = result.expect_err("the call must not be served");
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ),
                "{status:?}"
            );
            assert!(
                status.get_details_error_info_reason().is_none(),
                "{status:?}"
            );
            format!("{}: {}", status.message(), error_chain(&status))
        }
    };
    // In TLS 1.3 the client finishes its side of the handshake before the server has judged its
    // certificate: the server's alert reaches the client only if the client reads again before
    // the connection is torn down, so hyper sometimes reports just a closed connection (closed,
    // reset, or a broken pipe when it was still writing). Then the server's log must say why it
    // refused. Anything else (a status from a service, another alert) is not a refusal.
    let alerted = error.contains(&format!("received fatal alert: {alert}"));
    let closed = !error.contains("received fatal alert")
        && ["connection closed", "broken pipe", "connection reset"]
            .iter()
            .any(|m| error.to_lowercase().contains(m));
    assert!(
        alerted || closed,
        "refused, but not with the TLS alert {alert} (or a closed connection): {error}"
    );
    if closed {
        let deadline = Instant::now() + Duration::from_secs(10);
        while refusals(log) <= before {
            assert!(
                Instant::now() < deadline,
                "the connection closed ({error}) but the server logged no refusal for \
                 {server_reason:?}:\n{}",
                std::fs::read_to_string(log).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_serves_a_good_certificate(server, pki).await;
}

/// The operator's certificate connects and its call reaches the service (an answer from the
/// application, with or without an error).
async fn assert_serves_a_good_certificate(server: &Server, pki: &Pki) {
    let good = pki.spiffe("alive", OPERATOR);
    let channel = connect(&server.addr, &pki.ca, Some(&good))
        .await
        .unwrap_or_else(|e| panic!("the server refuses a good certificate: {}", error_chain(&e)));
    let result = TenantServiceClient::new(channel)
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await;
    if let Err(status) = result {
        assert!(
            status.get_details_error_info_reason().is_some(),
            "not an answer from the service: {status:?}"
        );
    }
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

trait ReasonExt {
    fn get_details_error_info_reason(&self) -> Option<String>;
}

impl ReasonExt for tonic::Status {
    fn get_details_error_info_reason(&self) -> Option<String> {
        use tonic_types::StatusExt as _;
        self.get_details_error_info().map(|i| i.reason)
    }
}

#[tokio::test]
async fn mtls_callers_are_allowed_and_denied_by_the_shipped_policies() {
    let pki = Pki::new();
    let server = pki.start(&shipped_policies());

    let operator = pki.spiffe("operator", OPERATOR);
    let chat = pki.spiffe("chat", CHAT);
    let billing = pki.spiffe("billing", BILLING);
    let acme_admin = pki
        .ca
        .client("acme-admin", &[San::Dns(ACME_ADMIN_DNS)], false);
    let globex_admin = pki.spiffe("globex-admin", GLOBEX_ADMIN);
    let auditor = pki.spiffe("auditor", ACME_AUDITOR);
    let unknown = pki.spiffe("unknown", UNKNOWN);

    // The operator creates tenants; each tenant's own admin registers its key.
    let mut op = caller(&server, &pki, &operator).await;
    for tenant in ["acme", "globex"] {
        op.tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: tenant.into(),
                display_name: tenant.into(),
            })
            .await
            .unwrap();
    }
    assert_status(
        op.tenants.register_key(local_key("acme", "default")).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let mut acme = caller(&server, &pki, &acme_admin).await;
    acme.tenants
        .register_key(local_key("acme", "default"))
        .await
        .unwrap();
    let mut globex = caller(&server, &pki, &globex_admin).await;
    globex
        .tenants
        .register_key(local_key("globex", "default"))
        .await
        .unwrap();
    assert_status(
        acme.tenants
            .register_key(local_key("globex", "default"))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    // A service encrypts and decrypts for the tenants it serves, for its purpose only.
    let mut chat_api = caller(&server, &pki, &chat).await;
    let sealed = chat_api
        .crypto
        .encrypt(encrypt_req("acme", "chat-history"))
        .await
        .unwrap()
        .into_inner();
    let opened = chat_api
        .crypto
        .decrypt(pb::DecryptRequest {
            tenant_id: "acme".into(),
            envelope: sealed.envelope.clone(),
            encryption_context: context(&[("purpose", "chat-history")]),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"a prompt");
    assert_status(
        chat_api
            .crypto
            .encrypt(encrypt_req("acme", "training"))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // Service A for tenant B, and for a tenant that does not exist: the same answer.
    let other = chat_api
        .crypto
        .encrypt(encrypt_req("globex", "chat-history"))
        .await
        .unwrap_err();
    let missing = chat_api
        .crypto
        .encrypt(encrypt_req("no-such-tenant", "chat-history"))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    assert_eq!(
        (other.code(), other.message()),
        (missing.code(), missing.message())
    );
    // In a batch, each item is authorized on its own (its own purpose).
    let results = chat_api
        .crypto
        .encrypt_batch(pb::EncryptBatchRequest {
            tenant_id: "acme".into(),
            items: ["chat-history", "training", "chat-history"]
                .iter()
                .map(|purpose| pb::EncryptBatchItem {
                    plaintext: b"p".to_vec(),
                    encryption_context: context(&[("purpose", purpose)]),
                    scope: String::new(),
                })
                .collect(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let reasons: Vec<&str> = results
        .iter()
        .map(|r| match &r.result {
            Some(pb::encrypt_batch_result::Result::Ok(_)) => "ok",
            Some(pb::encrypt_batch_result::Result::Error(e)) => e.reason.as_str(),
            None => "none",
        })
        .collect();
    assert_eq!(reasons, ["ok", "PERMISSION_DENIED", "ok"]);
    let mut billing_api = caller(&server, &pki, &billing).await;
    assert_status(
        billing_api
            .crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: "acme".into(),
                envelope: sealed.envelope.clone(),
                encryption_context: context(&[("purpose", "chat-history")]),
                justification: None,
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // The streams are authorized as Encrypt and Decrypt, on their first message, before any
    // response: the same callers, purposes and tenants.
    let stream_start = |tenant: &str, purpose: &str| pb::EncryptStreamRequest {
        tenant_id: tenant.into(),
        encryption_context: context(&[("purpose", purpose)]),
        scope: String::new(),
        frame_size: 0,
        plaintext: b"a long document".to_vec(),
        justification: None,
    };
    let mut parts = chat_api
        .crypto
        .encrypt_stream(tokio_stream::iter([stream_start("acme", "chat-history")]))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(part) = tokio_stream::StreamExt::next(&mut parts).await {
        streamed.extend(part.unwrap().envelope);
    }
    for (chat_caller, tenant, purpose) in [
        (true, "acme", "training"),
        (true, "globex", "chat-history"),
        (false, "acme", "chat-history"),
    ] {
        let who = if chat_caller {
            &mut chat_api
        } else {
            &mut billing_api
        };
        assert_status(
            who.crypto
                .encrypt_stream(tokio_stream::iter([stream_start(tenant, purpose)]))
                .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    let decrypt_stream = |purpose: &str| {
        tokio_stream::iter([pb::DecryptStreamRequest {
            tenant_id: "acme".into(),
            encryption_context: context(&[("purpose", purpose)]),
            envelope: streamed.clone(),
            justification: None,
        }])
    };
    assert_status(
        billing_api
            .crypto
            .decrypt_stream(decrypt_stream("chat-history"))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let mut frames = chat_api
        .crypto
        .decrypt_stream(decrypt_stream("chat-history"))
        .await
        .unwrap()
        .into_inner();
    let frame = tokio_stream::StreamExt::next(&mut frames)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (frame.plaintext.as_slice(), frame.r#final),
        (&b"a long document"[..], true)
    );
    billing_api
        .crypto
        .encrypt(encrypt_req("globex", "invoices"))
        .await
        .unwrap();

    // An auditor reads its tenant's records but never plaintext, nor other tenants' records.
    let mut audit = caller(&server, &pki, &auditor).await;
    assert_status(
        audit
            .crypto
            .decrypt(pb::DecryptRequest {
                tenant_id: "acme".into(),
                envelope: sealed.envelope.clone(),
                encryption_context: context(&[("purpose", "chat-history")]),
                justification: None,
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let records = audit
        .audit
        .list_events(pb::ListAuditEventsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(records.iter().any(|r| r.event_type == "tenant_created"));
    assert_status(
        audit
            .audit
            .list_events(pb::ListAuditEventsRequest {
                tenant_id: "globex".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_status(
        audit.audit.export(pb::ExportAuditRequest::default()).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // A per-tenant export: its own tenant, never another's (docs/audit-format.md §6.2).
    assert_status(
        audit
            .audit
            .export(pb::ExportAuditRequest {
                tenant_id: "globex".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let mut own = audit
        .audit
        .export(pb::ExportAuditRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut exported = Vec::new();
    while let Some(chunk) = own.message().await.unwrap() {
        exported.extend_from_slice(&chunk.jsonl);
    }
    let exported = String::from_utf8(exported).unwrap();
    assert!(
        exported.contains("\"tenant\":\"acme\"") && !exported.contains("globex"),
        "{exported}"
    );

    // A tenant admin revokes its own tenant's key, never another tenant's.
    assert_status(
        acme.tenants
            .revoke_key(pb::RevokeKeyRequest {
                tenant_id: "globex".into(),
                reason: "not mine".into(),
                requested_by: "mallory".into(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    globex
        .tenants
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "globex".into(),
        })
        .await
        .unwrap();
    acme.tenants
        .revoke_key(pb::RevokeKeyRequest {
            tenant_id: "acme".into(),
            reason: "incident 42".into(),
            requested_by: "ciso".into(),
        })
        .await
        .unwrap();
    // Operators may not restore: that is the customer's decision.
    assert_status(
        op.tenants
            .restore_key(pb::RestoreKeyRequest {
                tenant_id: "acme".into(),
                reason: "oops".into(),
                requested_by: String::new(),
                binding_id: 0,
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    // A certificate from the right CA whose identity is not in the mapping.
    let mut stranger = caller(&server, &pki, &unknown).await;
    assert_status(
        stranger
            .crypto
            .encrypt(encrypt_req("acme", "chat-history"))
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    // The revocation's record names the authenticated principal and the claimed human.
    let store = keyward_store::sqlite::SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (records, denials) = loop {
        use keyward_store::Store as _;
        let records = store
            .audit_records(&keyward_store::AuditQuery::default().with_limit(1000))
            .await
            .unwrap();
        let denials = records
            .iter()
            .filter_map(|r| match r.event() {
                keyward_audit::AuditEvent::AuthorizationDenied {
                    principal,
                    action,
                    tenant,
                    count,
                    ..
                } => Some((
                    principal.clone(),
                    action.clone(),
                    tenant.as_ref().map(ToString::to_string),
                    *count,
                )),
                _ => None,
            })
            .collect::<Vec<_>>();
        if denials.len() >= 12 || Instant::now() > deadline {
            break (records, denials);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expected = [
        ("Operator::\"oncall\"", "RegisterKey", Some("acme")),
        (
            "TenantAdmin::\"acme-secops\"",
            "RegisterKey",
            Some("globex"),
        ),
        ("Service::\"chat-api\"", "Encrypt", Some("acme")),
        ("Service::\"chat-api\"", "Encrypt", Some("globex")),
        ("Service::\"chat-api\"", "Encrypt", Some("no-such-tenant")),
        ("Service::\"billing-worker\"", "Decrypt", Some("acme")),
        ("Auditor::\"acme-auditor\"", "Decrypt", Some("acme")),
        ("Auditor::\"acme-auditor\"", "ReadAudit", Some("globex")),
        ("Auditor::\"acme-auditor\"", "ExportAudit", None),
        ("Auditor::\"acme-auditor\"", "ExportAudit", Some("globex")),
        ("TenantAdmin::\"acme-secops\"", "RevokeKey", Some("globex")),
        ("Operator::\"oncall\"", "RestoreKey", Some("acme")),
        (
            "unmapped:spiffe://keyward.test/ns/chat/sa/intruder",
            "Encrypt",
            Some("acme"),
        ),
    ];
    for (principal, action, tenant) in expected {
        assert!(
            denials.iter().any(|(p, a, t, count)| p == principal
                && a == action
                && t.as_deref() == tenant
                && *count >= 1),
            "no authorization_denied for {principal} {action} {tenant:?} in {denials:#?}"
        );
    }
    let actor = records
        .iter()
        .find_map(|r| match r.event() {
            keyward_audit::AuditEvent::RevocationStateChanged(t) => t.actor.clone(),
            _ => None,
        })
        .expect("revocation record");
    assert_eq!(actor, "TenantAdmin::\"acme-secops\" requested_by=\"ciso\"");
}

#[tokio::test]
async fn certificates_that_are_missing_foreign_or_expired_are_refused_at_the_transport() {
    let pki = Pki::new();
    let (server, log) = pki.start_logged(&shipped_policies());
    let other_ca = Ca::new(pki.dir.path(), "other");

    let refused = |client, alert, server_reason| {
        assert_transport_refused(&server, &pki, &log, client, alert, server_reason)
    };
    refused(None, "CertificateRequired", "peer sent no certificates").await;
    let foreign = other_ca.client("foreign", &[San::Uri(OPERATOR)], false);
    refused(Some(&foreign), "UnknownCA", "UnknownIssuer").await;
    let expired = pki.ca.client("expired", &[San::Uri(OPERATOR)], true);
    refused(Some(&expired), "CertificateExpired", "certificate expired").await;
    // A certificate with neither a SPIFFE ID nor a DNS name: authenticated by the CA, but
    // nobody.
    let nameless = pki.ca.client("nameless", &[], false);
    let mut nobody = caller(&server, &pki, &nameless).await;
    assert_status(
        nobody
            .tenants
            .get_tenant(pb::GetTenantRequest {
                tenant_id: "acme".into(),
            })
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    // The client CA bundle is reloaded without a restart: once the other CA is trusted, its
    // operator certificate works.
    let bundle = format!("{}{}", pki.ca.pem(), other_ca.pem());
    std::fs::write(&pki.client_ca_file, bundle).unwrap();
    // Picked up on the next reload check (every RELOAD_INTERVAL here), plus the machine's
    // scheduling slack.
    let written = Instant::now();
    let bound = RELOAD_INTERVAL + support::bound::SCHEDULING_SLACK;
    support::bound::eventually(written, bound, || async {
        let channel = connect(&server.addr, &pki.ca, Some(&foreign))
            .await
            .map_err(|e| error_chain(&e))?;
        TenantServiceClient::new(channel)
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: "reloaded".into(),
                display_name: String::new(),
            })
            .await
            .map_err(|s| format!("{s:?}"))
    })
    .await;
}

#[test]
fn plaintext_off_loopback_is_refused() {
    let err = support::serve_fails::<&str, &str>(&["--listen", "0.0.0.0:0"], &[]);
    assert!(
        err.contains("refusing to serve plaintext on 0.0.0.0:0"),
        "{err}"
    );
}

#[test]
fn a_malformed_policy_stops_startup_naming_file_and_line() {
    let pki = Pki::new();
    let policies = pki.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(shipped_policies()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), policies.join(entry.file_name())).unwrap();
        }
    }
    let broken = policies.join("zz-broken.cedar");
    std::fs::write(
        &broken,
        "// a reviewer's typo on line 3\n\npermit (principal, action, resource) when { principal.tenant == };\n",
    )
    .unwrap();
    let err = support::serve_fails(&["--listen", "127.0.0.1:0"], &pki.env(&policies));
    assert!(err.contains("zz-broken.cedar:3"), "{err}");

    // And a mapping that names an unknown principal attribute is rejected too.
    std::fs::remove_file(&broken).unwrap();
    std::fs::write(
        &pki.identities_file,
        "[[service]]\nid = \"x\"\nidentities = [\"dns:x\"]\ntenants = [\"acme\"]\ncolour = \"red\"\n",
    )
    .unwrap();
    let err = support::serve_fails(&["--listen", "127.0.0.1:0"], &pki.env(&policies));
    assert!(err.contains("identities.toml"), "{err}");
    assert!(err.contains("colour"), "{err}");
}

/// `ListKeyBindings` under the shipped policies: the tenant's admin, an operator and the
/// tenant's auditor read the key history, with `bound_by` naming the admin's authenticated
/// principal (from its certificate); another tenant's admin, another tenant's auditor and a
/// service are denied, and a denial looks the same for a tenant that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_history_is_for_the_tenant_s_admin_operators_and_auditor() {
    let pki = Pki::new();
    let server = pki.start(&shipped_policies());
    let acme_admin = pki
        .ca
        .client("acme-admin", &[San::Dns(ACME_ADMIN_DNS)], false);
    let mut op = caller(&server, &pki, &pki.spiffe("operator", OPERATOR)).await;
    for tenant in ["acme", "globex"] {
        op.tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: tenant.into(),
                display_name: tenant.into(),
            })
            .await
            .unwrap();
    }
    let mut acme = caller(&server, &pki, &acme_admin).await;
    acme.tenants
        .register_key(local_key("acme", "default"))
        .await
        .unwrap();
    let history = |tenant: &str| pb::ListKeyBindingsRequest {
        tenant_id: tenant.into(),
    };

    let mut auditor = caller(&server, &pki, &pki.spiffe("auditor", ACME_AUDITOR)).await;
    for who in [&mut acme, &mut op, &mut auditor] {
        let bindings = who
            .tenants
            .list_key_bindings(history("acme"))
            .await
            .unwrap()
            .into_inner()
            .bindings;
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[0].bound_by, "TenantAdmin::\"acme-secops\"");
    }
    let mut globex = caller(&server, &pki, &pki.spiffe("globex-admin", GLOBEX_ADMIN)).await;
    let mut chat = caller(&server, &pki, &pki.spiffe("chat", CHAT)).await;
    for (who, tenant) in [
        (&mut globex, "acme"),
        (&mut auditor, "globex"),
        (&mut chat, "acme"),
        (&mut acme, "no-such-tenant"),
    ] {
        assert_status(
            who.tenants.list_key_bindings(history(tenant)).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    // An operator may read any tenant's: an unknown one is not found.
    assert_status(
        op.tenants
            .list_key_bindings(history("no-such-tenant"))
            .await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
}

/// `RekeyTenant` and `GetRekeyStatus` under the shipped policies: the tenant's admin re-keys
/// its own tenant (never another's) and reads the progress; an operator and the tenant's
/// auditor read the progress but may not re-key; a service may do neither. The denied calls
/// move nothing, each denial is recorded, and the re-key's records name the admin's
/// authenticated principal with the human it claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekeying_is_for_the_tenant_s_admin_and_its_progress_for_operators_and_auditors_too() {
    let pki = Pki::new();
    let server = pki.start(&shipped_policies());
    let acme_admin = pki
        .ca
        .client("acme-admin", &[San::Dns(ACME_ADMIN_DNS)], false);
    let mut op = caller(&server, &pki, &pki.spiffe("operator", OPERATOR)).await;
    for tenant in ["acme", "globex"] {
        op.tenants
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: tenant.into(),
                display_name: tenant.into(),
            })
            .await
            .unwrap();
    }
    let mut acme = caller(&server, &pki, &acme_admin).await;
    let mut globex = caller(&server, &pki, &pki.spiffe("globex-admin", GLOBEX_ADMIN)).await;
    let mut chat = caller(&server, &pki, &pki.spiffe("chat", CHAT)).await;
    let mut auditor = caller(&server, &pki, &pki.spiffe("auditor", ACME_AUDITOR)).await;
    // Each tenant: data under "default", then a second key: one tenant key to move.
    keyward_kms::local::LocalProvider::open_existing(server.local_kms_dir())
        .unwrap()
        .create_key("k2")
        .unwrap();
    acme.tenants
        .register_key(local_key("acme", "default"))
        .await
        .unwrap();
    globex
        .tenants
        .register_key(local_key("globex", "default"))
        .await
        .unwrap();
    chat.crypto
        .encrypt(encrypt_req("acme", "chat-history"))
        .await
        .unwrap();
    acme.tenants
        .register_key(local_key("acme", "k2"))
        .await
        .unwrap();
    globex
        .tenants
        .register_key(local_key("globex", "k2"))
        .await
        .unwrap();
    let status = |tenant: &str| pb::GetRekeyStatusRequest {
        tenant_id: tenant.into(),
    };
    let rekey = |tenant: &str| pb::RekeyTenantRequest {
        tenant_id: tenant.into(),
        max_tenant_keys: 0,
        requested_by: "ciso".into(),
    };

    // The progress: the tenant's admin, an operator and the tenant's auditor read it.
    for who in [&mut acme, &mut op, &mut auditor] {
        let s = who
            .tenants
            .get_rekey_status(status("acme"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((s.tenant_keys_remaining, s.deks_remaining), (1, 1), "{s:?}");
        assert!(!s.done);
    }
    // Nobody else: another tenant's admin or auditor scope, a service; a tenant that does not
    // exist looks the same to a tenant admin.
    for (who, tenant) in [
        (&mut globex, "acme"),
        (&mut acme, "globex"),
        (&mut auditor, "globex"),
        (&mut chat, "acme"),
    ] {
        assert_status(
            who.tenants.get_rekey_status(status(tenant)).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    assert_status(
        acme.tenants
            .get_rekey_status(status("no-such-tenant"))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // An operator may read any tenant's: an unknown one is not found.
    assert_status(
        op.tenants.get_rekey_status(status("no-such-tenant")).await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );

    // The re-key itself: only the tenant's own admin.
    for (who, tenant) in [
        (&mut op, "acme"),
        (&mut auditor, "acme"),
        (&mut chat, "acme"),
        (&mut globex, "acme"),
        (&mut acme, "globex"),
    ] {
        assert_status(
            who.tenants.rekey_tenant(rekey(tenant)).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    for tenant in ["acme", "globex"] {
        let s = op
            .tenants
            .get_rekey_status(status(tenant))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.tenant_keys_remaining, 1,
            "a denied call moved {tenant}'s key"
        );
    }
    let done = acme
        .tenants
        .rekey_tenant(rekey("acme"))
        .await
        .unwrap()
        .into_inner();
    assert!(done.done, "{done:?}");
    assert_eq!((done.rewrapped, done.retired), (1, 1));
    let s = globex
        .tenants
        .rekey_tenant(rekey("globex"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.rewrapped, s.retired), (1, 1));

    // The records: every denial, and the admin's re-key under its own name.
    let store = keyward_store::sqlite::SqliteStore::open_read_only(&server.database())
        .await
        .unwrap();
    let expected = [
        ("TenantAdmin::\"globex-secops\"", "GetRekeyStatus", "acme"),
        ("TenantAdmin::\"acme-secops\"", "GetRekeyStatus", "globex"),
        ("Auditor::\"acme-auditor\"", "GetRekeyStatus", "globex"),
        ("Service::\"chat-api\"", "GetRekeyStatus", "acme"),
        ("Operator::\"oncall\"", "RekeyTenant", "acme"),
        ("Auditor::\"acme-auditor\"", "RekeyTenant", "acme"),
        ("Service::\"chat-api\"", "RekeyTenant", "acme"),
        ("TenantAdmin::\"globex-secops\"", "RekeyTenant", "acme"),
        ("TenantAdmin::\"acme-secops\"", "RekeyTenant", "globex"),
    ];
    // Denials are recorded in batches (counted per principal, action and tenant).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (records, missing) = loop {
        use keyward_store::Store as _;
        let records = store
            .audit_records(&keyward_store::AuditQuery::default().with_limit(1000))
            .await
            .unwrap();
        let missing: Vec<_> = expected
            .iter()
            .filter(|(principal, action, tenant)| {
                !records.iter().any(|r| {
                    matches!(
                        r.event(),
                        keyward_audit::AuditEvent::AuthorizationDenied {
                            principal: p, action: a, tenant: Some(t), ..
                        } if p == principal && a == action && t.as_str() == *tenant
                    )
                })
            })
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (records, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "no authorization_denied for {missing:?}"
    );
    let actors: Vec<(String, String)> = records
        .iter()
        .filter_map(|r| match r.event() {
            keyward_audit::AuditEvent::TenantKeyRewrapped { tenant, actor, .. }
            | keyward_audit::AuditEvent::KekBindingRetired { tenant, actor, .. } => {
                Some((tenant.to_string(), actor.clone()))
            }
            _ => None,
        })
        .collect();
    let admin = |t: &str, who: &str| {
        (
            t.to_owned(),
            format!("TenantAdmin::\"{who}\" requested_by=\"ciso\""),
        )
    };
    assert_eq!(
        actors,
        [
            admin("acme", "acme-secops"),
            admin("acme", "acme-secops"),
            admin("globex", "globex-secops"),
            admin("globex", "globex-secops"),
        ]
    );
}
