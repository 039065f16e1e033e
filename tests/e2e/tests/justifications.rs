//! Access justifications end to end (docs/justifications.md): the real binary with mutual TLS,
//! two services and a tenant admin. The tenant's rule on decrypt purposes (every reading call),
//! a Cedar policy on `context.justification`, and the `access_summary` records: after concurrent
//! load from both services with two purposes and a graceful restart, the records add up to
//! exactly what the callers did.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod support;

use std::{collections::HashMap, path::Path, time::Duration};

use keyward_proto::v1::{
    self as pb, audit_service_client::AuditServiceClient,
    crypto_service_client::CryptoServiceClient, tenant_service_client::TenantServiceClient,
};
use support::{
    Server, assert_status, context, local_key,
    pki::{Ca, Leaf, San, connect},
};
use tonic::Code;

const CHAT: &str = "spiffe://keyward.test/ns/chat/sa/chat-api";
const SUPPORT: &str = "spiffe://keyward.test/ns/support/sa/support-tool";
const OPERATOR: &str = "spiffe://keyward.test/ns/keyward/sa/operator";
const ACME_ADMIN: &str = "spiffe://keyward.test/ns/acme/sa/secops";

const IDENTITIES: &str = r#"
[[service]]
id = "chat-api"
identities = ["spiffe://keyward.test/ns/chat/sa/chat-api"]
tenants = ["acme"]

[[service]]
id = "support-tool"
identities = ["spiffe://keyward.test/ns/support/sa/support-tool"]
tenants = ["acme"]

[[tenant_admin]]
id = "acme-secops"
identities = ["spiffe://keyward.test/ns/acme/sa/secops"]
tenant = "acme"

[[operator]]
id = "oncall"
identities = ["spiffe://keyward.test/ns/keyward/sa/operator"]
"#;

/// Added to the shipped policies: the support tool decrypts only for customer support, with a
/// ticket reference.
const SUPPORT_POLICY: &str = r#"
@id("support-tool-needs-a-ticket")
forbid (
  principal == Keyward::Service::"support-tool",
  action == Keyward::Action::"Decrypt",
  resource
)
unless { context.justification == "customer_support" && context.reference like "SUP-*" };
"#;

const CHAT_PRINCIPAL: &str = "Service::\"chat-api\"";
const SUPPORT_PRINCIPAL: &str = "Service::\"support-tool\"";

struct Deployment {
    dir: tempfile::TempDir,
    ca: Ca,
    env: Vec<(String, String)>,
}

impl Deployment {
    fn new() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "main");
        let server = ca.server();
        let client_ca = dir.path().join("client-ca.pem");
        std::fs::write(&client_ca, ca.pem()).unwrap();
        let identities = dir.path().join("identities.toml");
        std::fs::write(&identities, IDENTITIES).unwrap();
        let policies = dir.path().join("policies");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies"),
            &policies,
        );
        std::fs::write(policies.join("support_tickets.cedar"), SUPPORT_POLICY).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        let env = vec![
            ("KEYWARD_TLS__CERT_FILE".into(), s(&server.cert_file)),
            ("KEYWARD_TLS__KEY_FILE".into(), s(&server.key_file)),
            ("KEYWARD_TLS__CLIENT_CA_FILE".into(), s(&client_ca)),
            ("KEYWARD_AUTHZ__POLICIES_DIR".into(), s(&policies)),
            ("KEYWARD_AUTHZ__IDENTITIES_FILE".into(), s(&identities)),
        ];
        Deployment { dir, ca, env }
    }

    fn start(&self) -> Server {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Server::start_in(&self.dir.path().join("data"), &env)
    }

    fn leaf(&self, name: &str, id: &str) -> Leaf {
        self.ca.client(name, &[San::Uri(id)], false)
    }

    async fn channel(&self, server: &Server, leaf: &Leaf) -> tonic::transport::Channel {
        connect(&server.addr, &self.ca, Some(leaf)).await.unwrap()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn justification(purpose: pb::Purpose, reference: &str) -> Option<pb::Justification> {
    Some(pb::Justification {
        purpose: purpose as i32,
        reference: reference.into(),
    })
}

fn decrypt(envelope: &[u8], j: Option<pb::Justification>) -> pb::DecryptRequest {
    pb::DecryptRequest {
        tenant_id: "acme".into(),
        envelope: envelope.to_vec(),
        encryption_context: context(&[("conv", "c-1")]),
        justification: j,
    }
}

/// What the callers did, per (principal, action, purpose): (requests, items, errors, bytes).
type Tally = HashMap<(String, String, Option<String>), (u64, u64, u64, u64)>;

fn count(
    tally: &mut Tally,
    principal: &str,
    action: &str,
    purpose: Option<&str>,
    ok: bool,
    bytes: u64,
) {
    let t = tally
        .entry((
            principal.to_owned(),
            action.to_owned(),
            purpose.map(str::to_owned),
        ))
        .or_default();
    t.0 += 1;
    if ok {
        t.1 += 1;
        t.3 += bytes;
    } else {
        t.2 += 1;
    }
}

#[tokio::test]
async fn the_tenants_rule_the_policies_and_the_access_records_see_each_callers_justification() {
    let deployment = Deployment::new();
    let server = deployment.start();
    let operator = deployment.leaf("operator", OPERATOR);
    let admin = deployment.leaf("admin", ACME_ADMIN);
    let chat_leaf = deployment.leaf("chat", CHAT);
    let support_leaf = deployment.leaf("support", SUPPORT);
    TenantServiceClient::new(deployment.channel(&server, &operator).await)
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
            display_name: "Acme".into(),
        })
        .await
        .unwrap();
    let mut admin_tenants = TenantServiceClient::new(deployment.channel(&server, &admin).await);
    admin_tenants
        .register_key(local_key("acme", "default"))
        .await
        .unwrap();
    let mut chat = CryptoServiceClient::new(deployment.channel(&server, &chat_leaf).await);
    let mut support = CryptoServiceClient::new(deployment.channel(&server, &support_leaf).await);
    let mut tally = Tally::new();

    let plaintext = b"a customer's conversation".to_vec();
    let sealed = chat
        .encrypt(pb::EncryptRequest {
            tenant_id: "acme".into(),
            plaintext: plaintext.clone(),
            encryption_context: context(&[("conv", "c-1")]),
            scope: String::new(),
            justification: None,
        })
        .await
        .unwrap()
        .into_inner()
        .envelope;
    count(
        &mut tally,
        CHAT_PRINCIPAL,
        "Encrypt",
        None,
        true,
        plaintext.len() as u64,
    );

    // The policies see the justification: the support tool needs customer_support and a ticket.
    for j in [
        None,
        justification(pb::Purpose::ModelInference, "SUP-1"),
        justification(pb::Purpose::CustomerSupport, "INC-1"),
    ] {
        assert_status(
            support.decrypt(decrypt(&sealed, j)).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    let opened = support
        .decrypt(decrypt(
            &sealed,
            justification(pb::Purpose::CustomerSupport, "SUP-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, plaintext);
    count(
        &mut tally,
        SUPPORT_PRINCIPAL,
        "Decrypt",
        Some("customer_support"),
        true,
        plaintext.len() as u64,
    );

    // Bad justifications are refused before anything, naming the field.
    for (j, field) in [
        (
            Some(pb::Justification {
                purpose: 0,
                reference: "T-1".into(),
            }),
            "justification.purpose",
        ),
        (
            Some(pb::Justification {
                purpose: 99,
                reference: String::new(),
            }),
            "justification.purpose",
        ),
        (
            justification(pb::Purpose::ModelInference, &"x".repeat(129)),
            "justification.reference",
        ),
        (
            justification(pb::Purpose::ModelInference, "line\nbreak"),
            "justification.reference",
        ),
    ] {
        let status = chat.decrypt(decrypt(&sealed, j)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }

    // The customer's rule: only model inference and customer support may decrypt.
    let set_rule = |purposes: Vec<i32>| pb::SetTenantPolicyRequest {
        tenant_id: "acme".into(),
        policy: Some(pb::TenantPolicy {
            decrypt_purposes: purposes,
            ..Default::default()
        }),
        requested_by: "secops".into(),
    };
    assert_status(
        admin_tenants.set_tenant_policy(set_rule(vec![99])).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let tenant = admin_tenants
        .set_tenant_policy(set_rule(vec![
            pb::Purpose::ModelInference as i32,
            pb::Purpose::CustomerSupport as i32,
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        tenant.policy.unwrap().decrypt_purposes,
        vec![
            pb::Purpose::ModelInference as i32,
            pb::Purpose::CustomerSupport as i32
        ]
    );
    let status = chat.decrypt(decrypt(&sealed, None)).await.unwrap_err();
    assert_status(
        Err::<(), _>(status.clone()),
        Code::PermissionDenied,
        "JUSTIFICATION_REQUIRED",
    );
    assert!(
        status
            .message()
            .contains("model_inference, customer_support"),
        "{status:?}"
    );
    assert_status(
        chat.decrypt(decrypt(&sealed, justification(pb::Purpose::LegalHold, "")))
            .await,
        Code::PermissionDenied,
        "PURPOSE_NOT_ALLOWED",
    );
    // Every call that reads data is bound by it: batches, streams, rewraps.
    let batch = chat
        .decrypt_batch(pb::DecryptBatchRequest {
            tenant_id: "acme".into(),
            items: vec![pb::DecryptBatchItem {
                envelope: sealed.clone(),
                encryption_context: context(&[("conv", "c-1")]),
            }],
            justification: None,
        })
        .await
        .unwrap()
        .into_inner();
    match &batch.results[0].result {
        Some(pb::decrypt_batch_result::Result::Error(e)) => {
            assert_eq!(e.reason, "JUSTIFICATION_REQUIRED", "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_status(
        chat.rewrap(pb::RewrapRequest {
            tenant_id: "acme".into(),
            envelope: sealed.clone(),
            encryption_context: context(&[("conv", "c-1")]),
            target_scope: String::new(),
            justification: justification(pb::Purpose::LegalHold, ""),
        })
        .await,
        Code::PermissionDenied,
        "PURPOSE_NOT_ALLOWED",
    );
    let framed = chat
        .encrypt_stream(tokio_stream::iter([pb::EncryptStreamRequest {
            tenant_id: "acme".into(),
            encryption_context: context(&[("conv", "c-1")]),
            plaintext: plaintext.clone(),
            ..Default::default()
        }]))
        .await
        .unwrap()
        .into_inner();
    let framed: Vec<u8> = tokio_stream::StreamExt::collect::<Vec<_>>(framed)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap().envelope)
        .collect();
    count(
        &mut tally,
        CHAT_PRINCIPAL,
        "Encrypt",
        None,
        true,
        plaintext.len() as u64,
    );
    let stream_request = |j| {
        tokio_stream::iter([pb::DecryptStreamRequest {
            tenant_id: "acme".into(),
            encryption_context: context(&[("conv", "c-1")]),
            envelope: framed.clone(),
            justification: j,
        }])
    };
    assert_status(
        chat.decrypt_stream(stream_request(None)).await,
        Code::PermissionDenied,
        "JUSTIFICATION_REQUIRED",
    );
    let frames = chat
        .decrypt_stream(stream_request(justification(
            pb::Purpose::ModelInference,
            "",
        )))
        .await
        .unwrap()
        .into_inner();
    let streamed: Vec<u8> = tokio_stream::StreamExt::collect::<Vec<_>>(frames)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap().plaintext)
        .collect();
    assert_eq!(streamed, plaintext);
    count(
        &mut tally,
        CHAT_PRINCIPAL,
        "Decrypt",
        Some("model_inference"),
        true,
        plaintext.len() as u64,
    );
    // A failure after authorization is an access that failed (counted as an error).
    assert_status(
        chat.decrypt(pb::DecryptRequest {
            encryption_context: context(&[("conv", "another")]),
            ..decrypt(&sealed, justification(pb::Purpose::ModelInference, ""))
        })
        .await,
        Code::InvalidArgument,
        "DECRYPT_FAILED",
    );
    count(
        &mut tally,
        CHAT_PRINCIPAL,
        "Decrypt",
        Some("model_inference"),
        false,
        0,
    );

    // Concurrent load: both services, two purposes, references.
    let rounds = 60u64;
    let mut tasks = Vec::new();
    for (principal, client, purpose, name) in [
        (
            CHAT_PRINCIPAL,
            chat.clone(),
            pb::Purpose::ModelInference,
            "model_inference",
        ),
        (
            SUPPORT_PRINCIPAL,
            support.clone(),
            pb::Purpose::CustomerSupport,
            "customer_support",
        ),
    ] {
        for worker in 0..3u64 {
            let (sealed, mut client) = (sealed.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..rounds {
                    let reference = format!("SUP-{}", (worker + i) % 4);
                    client
                        .decrypt(decrypt(&sealed, justification(purpose, &reference)))
                        .await
                        .unwrap();
                }
                (principal, name)
            }));
        }
    }
    for task in tasks {
        let (principal, name) = task.await.unwrap();
        for _ in 0..rounds {
            count(
                &mut tally,
                principal,
                "Decrypt",
                Some(name),
                true,
                plaintext.len() as u64,
            );
        }
    }

    // A graceful stop writes the minute in progress; the records are read after a restart.
    drop((chat, support, admin_tenants));
    server.terminate();
    let mut server = server;
    assert!(
        server.wait_exit(Duration::from_secs(30)).is_some(),
        "the server stops"
    );
    let server = deployment.start();
    let mut audit = AuditServiceClient::new(deployment.channel(&server, &admin).await);
    let mut got = Tally::new();
    let mut references: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    let mut token = String::new();
    loop {
        let page = audit
            .list_events(pb::ListAuditEventsRequest {
                tenant_id: "acme".into(),
                event_type: "access_summary".into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for record in &page.records {
            let v: serde_json::Value = serde_json::from_str(&record.canonical_json).unwrap();
            let e = &v["event"];
            let key = (
                e["principal"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["purpose"].as_str().map(str::to_owned),
            );
            let t = got.entry(key.clone()).or_default();
            t.0 += e["requests"].as_u64().unwrap();
            t.1 += e["items"].as_u64().unwrap();
            t.2 += e["errors"].as_u64().unwrap();
            t.3 += e["bytes"].as_u64().unwrap();
            for r in e["references"].as_array().unwrap() {
                references
                    .entry(key.0.clone())
                    .or_default()
                    .insert(r.as_str().unwrap().to_owned());
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        got, tally,
        "the access records are exactly what the callers did"
    );
    let support_refs: Vec<&str> = references[SUPPORT_PRINCIPAL]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(support_refs, ["SUP-0", "SUP-1", "SUP-2", "SUP-3"]);
}

/// The command line as a customer's admin and a support engineer use it: the rule set and shown
/// with `tenant set-policy` / `tenant show`, `decrypt --purpose --reference`, and a refusal that
/// says what the tenant allows (exit 3: the server refused).
#[tokio::test]
async fn the_cli_sets_the_rule_and_declares_a_purpose() {
    let server = Server::start(&[]);
    server.onboard("acme").await;
    let (ok, envelope, err) = server.cli(
        &["encrypt", "--tenant", "acme", "--context", "conv=c-1"],
        b"hello",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = server.cli(
        &[
            "tenant",
            "set-policy",
            "acme",
            "--decrypt-purposes",
            "customer_support,legal_hold",
        ],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = server.cli(&["tenant", "show", "acme"], b"");
    assert!(ok, "{err}");
    assert!(
        String::from_utf8_lossy(&out)
            .contains("decrypts:     only with a justification for customer_support, legal_hold"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (code, out, err) = server.cli_code(
        &["decrypt", "--tenant", "acme", "--context", "conv=c-1"],
        &envelope,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("JUSTIFICATION_REQUIRED") && err.contains("customer_support, legal_hold"),
        "{err}"
    );
    let (code, _, err) = server.cli_code(
        &[
            "decrypt",
            "--tenant",
            "acme",
            "--context",
            "conv=c-1",
            "--purpose",
            "model_inference",
        ],
        &envelope,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("PURPOSE_NOT_ALLOWED"), "{err}");
    let (ok, out, err) = server.cli(
        &[
            "decrypt",
            "--tenant",
            "acme",
            "--context",
            "conv=c-1",
            "--purpose",
            "customer_support",
            "--reference",
            "SUP-7",
        ],
        &envelope,
    );
    assert!(ok, "{err}");
    assert_eq!(out, b"hello");
    // A reference needs a purpose: refused by the command itself.
    let (code, _, err) = server.cli_code(
        &["decrypt", "--tenant", "acme", "--reference", "SUP-7"],
        &envelope,
    );
    assert_eq!(code, Some(2), "{err}");
    // Omitting --decrypt-purposes removes the rule.
    let (ok, _, err) = server.cli(&["tenant", "set-policy", "acme"], b"");
    assert!(ok, "{err}");
    let (ok, out, err) = server.cli(
        &["decrypt", "--tenant", "acme", "--context", "conv=c-1"],
        &envelope,
    );
    assert!(ok, "{err}");
    assert_eq!(out, b"hello");
}
