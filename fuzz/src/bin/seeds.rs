//! Writes the seed corpus `fuzz/corpus/<target>/` from the project's test vectors, golden files
//! and documented examples: `seeds <repository root>` (scripts/fuzz runs it; the output is
//! deterministic and committed).
#![allow(clippy::unwrap_used, reason = "a build tool: fail loudly")]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use keyward_audit::{
    AuditEvent, ChainHead, ExportHeader, ExportWriter, KeyState, Record, RevocationSource,
    SigningKey, StateTransition,
};
use keyward_envelope::{KeyId, TenantId};
#[cfg(feature = "server")]
use keyward_proto::v1 as pb;
#[cfg(feature = "server")]
use prost::Message;
use serde_json::Value;

/// RFC 8032 §7.1 test 1 secret key as PKCS#8 (the golden files' signer).
const TEST_PKCS8_HEX: &str = "302e020100300506032b6570042204209d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn add(&self, target: &str, name: &str, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let dir = self.dir.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }

    fn add_selected(&self, target: &str, name: &str, selector: u8, bytes: &[u8]) {
        let mut with = vec![selector];
        with.extend_from_slice(bytes);
        self.add(target, name, &with);
    }
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let corpus = Corpus {
        dir: root.join("fuzz/corpus"),
    };
    // Only the targets of this build's features are rewritten.
    let targets = keyward_fuzz::TARGETS
        .into_iter()
        .filter(|t| cfg!(feature = "server") || !matches!(*t, "server_config" | "proto_requests"))
        .filter(|t| {
            cfg!(feature = "providers") || !matches!(*t, "kms_aws" | "kms_gcp" | "kms_azure")
        })
        .filter(|t| cfg!(feature = "authz") || *t != "identity_mapping");
    for target in targets {
        let dir = corpus.dir.join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    envelope_and_local(&root, &corpus);
    framed(&root, &corpus);
    key_references(&corpus);
    wrapped_key_layouts(&corpus);
    audit(&corpus);
    toml_files(&root, &corpus);
    #[cfg(feature = "server")]
    requests(&corpus);
}

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn envelope_and_local(root: &Path, corpus: &Corpus) {
    let text = fs::read_to_string(root.join("docs/envelope/vectors-v1.json")).unwrap();
    let vectors: Value = serde_json::from_str(&text).unwrap();
    for kind in ["valid", "invalid"] {
        for (i, v) in vectors[kind].as_array().unwrap().iter().enumerate() {
            corpus.add("envelope", &format!("{kind}-{i:02}"), &hex(&v["envelope"]));
        }
    }
    for kind in ["valid", "invalid"] {
        for (i, v) in vectors["wrapped_keys"][kind]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            corpus.add_selected(
                "kms_local",
                &format!("wrapped-{kind}-{i:02}"),
                0,
                &hex(&v["wrapped"]),
            );
        }
    }
    for (i, r) in [
        "local:default",
        "aws-kms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "pkcs11:pkcs11:token=keyward;object=tenant-kek",
        "gcp-kms:projects/p/locations/global/keyRings/r/cryptoKeys/k",
        "azure-key-vault:https://contoso.vault.azure.net/keys/kek",
    ]
    .iter()
    .enumerate()
    {
        corpus.add_selected("kms_local", &format!("key-ref-{i}"), 1, r.as_bytes());
    }
}

/// The framed vectors of at most 4 KiB (AFL++ works best from small seeds): the valid ones
/// behind three chunking selectors (whole, one byte at a time, generated sizes), the invalid
/// ones behind one (generated sizes).
fn framed(root: &Path, corpus: &Corpus) {
    let text = fs::read_to_string(root.join("docs/envelope/vectors-v2-framed.json")).unwrap();
    let vectors: Value = serde_json::from_str(&text).unwrap();
    // The harness's fixed DEK and context are those of the base message.
    let base = vectors["valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["case"] == "several frames with a context")
        .unwrap();
    assert_eq!(hex(&base["dek"]), keyward_fuzz::framed::DEK);
    for (k, v) in keyward_fuzz::framed::CONTEXT {
        assert_eq!(base["context"][k], v);
    }
    for kind in ["valid", "invalid"] {
        for (i, v) in vectors[kind].as_array().unwrap().iter().enumerate() {
            let envelope = hex(&v["envelope"]);
            if envelope.len() > 4096 {
                continue;
            }
            let selectors: &[u8] = if kind == "valid" { &[0, 1, 7] } else { &[7] };
            for &selector in selectors {
                corpus.add_selected(
                    "framed",
                    &format!("{kind}-{i:02}-chunks-{selector}"),
                    selector,
                    &envelope,
                );
            }
        }
    }
}

#[cfg_attr(not(feature = "providers"), allow(unused_variables))]
fn key_references(corpus: &Corpus) {
    let aws = [
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        "arn:aws:kms:eu-west-1:111122223333:alias/keyward/acme",
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?role_arn=arn:aws:iam::111122223333:role/keyward/kek-user&external_id=keyward-acme-7f3a",
    ];
    #[cfg(feature = "providers")]
    for (i, s) in aws.iter().enumerate() {
        corpus.add("kms_aws", &format!("arn-{i}"), s.as_bytes());
    }
    let gcp = [
        "projects/acme-prod/locations/europe-west1/keyRings/keyward/cryptoKeys/tenant-kek",
        "projects/example.com:legacy/locations/global/keyRings/r/cryptoKeys/k",
        "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
        "//cloudkms.googleapis.com/projects/p/locations/global/keyRings/r/cryptoKeys/k",
    ];
    #[cfg(feature = "providers")]
    for (i, s) in gcp.iter().enumerate() {
        corpus.add("kms_gcp", &format!("name-{i}"), s.as_bytes());
    }
    let azure = [
        "https://contoso.vault.azure.net/keys/tenant-kek",
        "https://Contoso-1.vault.azure.net/keys/kek/0123456789abcdef0123456789abcdef",
        "https://acme-hsm.managedhsm.azure.net/keys/aes-kek",
        "https://gov.vault.usgovcloudapi.net/keys/k",
    ];
    #[cfg(feature = "providers")]
    for (i, s) in azure.iter().enumerate() {
        corpus.add_selected("kms_azure", &format!("key-id-{i}"), 1, s.as_bytes());
    }
    let pkcs11 = [
        "pkcs11:token=keyward;object=tenant-kek",
        "pkcs11:token=keyward;id=%01%a2;type=secret-key",
        "token=my%20token;object=kek%3b1;id=%ff",
        "pkcs11:object=k?pin-value=1234",
    ];
    for (i, s) in pkcs11.iter().enumerate() {
        corpus.add_selected("kms_pkcs11", &format!("uri-{i}"), 1, s.as_bytes());
    }
}

fn wrapped_key_layouts(corpus: &Corpus) {
    #[cfg(feature = "providers")]
    for (name, alg, n) in [
        ("rsa-2048", 1u8, 256usize),
        ("rsa-4096", 1, 512),
        ("a256kw", 2, 40),
    ] {
        const V: &str = "0123456789abcdef0123456789abcdef";
        let mut w = keyward_kms_azure::fuzzing::encode_header(alg, V, &vec![0xaa; n]).unwrap();
        w.extend_from_slice(&[9; 12]);
        w.extend_from_slice(&[0x5c; 48]);
        corpus.add_selected("kms_azure", &format!("wrapped-{name}"), 0, &w);
    }
    let w = keyward_kms_pkcs11::fuzzing::encode_wrapped_key(&[7; 12], &[9; 48]).unwrap();
    corpus.add_selected("kms_pkcs11", "wrapped-gcm", 0, &w);
}

fn audit(corpus: &Corpus) {
    let key = SigningKey::from_pkcs8(&hex::decode(TEST_PKCS8_HEX).unwrap()).unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let events = [
        AuditEvent::TenantCreated {
            tenant: tenant.clone(),
            actor: Some("operator:oncall".into()),
        },
        AuditEvent::DekCreated {
            tenant: tenant.clone(),
            scope_hmac: format!("hmac-sha256:{}", "ab".repeat(32)),
            dek_id: KeyId::from_bytes([1; 16]),
            tenant_key_id: KeyId::from_bytes([2; 16]),
        },
        AuditEvent::RevocationStateChanged(StateTransition {
            tenant,
            binding_id: 7,
            from: KeyState::Active,
            to: KeyState::Revoked,
            source: RevocationSource::KmsRefusal,
            actor: None,
            reason: "KMS refused Decrypt: key is disabled".into(),
            observed_at_ms: 1_700_000_000_000,
        }),
    ];
    let mut head = ChainHead::GENESIS;
    let mut records = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        let record = Record::append(&head, 1_700_000_000_000 + i as i64, event).unwrap();
        head = record.head();
        records.push(record);
    }
    // The whole chain, with a checkpoint after the second record and the final one.
    let mut w = ExportWriter::new(Vec::new());
    w.write_header(&ExportHeader::new(1, 3, 2, 1_700_000_100_000))
        .unwrap();
    w.write_record(&records[0]).unwrap();
    w.write_record(&records[1]).unwrap();
    w.write_checkpoint(
        &key.sign_checkpoint(&records[1].head(), 1_700_000_050_000)
            .unwrap(),
    )
    .unwrap();
    w.write_record(&records[2]).unwrap();
    let whole = w.finish(&key, 1_700_000_100_000).unwrap();
    corpus.add_selected("audit_export", "export-whole", 0, &whole);
    // Starting mid-chain.
    let mut w = ExportWriter::new(Vec::new());
    w.write_header(&ExportHeader::new(2, 3, 1, 1_700_000_100_000))
        .unwrap();
    w.write_record(&records[1]).unwrap();
    w.write_record(&records[2]).unwrap();
    let mid = w.finish(&key, 1_700_000_100_000).unwrap();
    corpus.add_selected("audit_export", "export-mid-chain", 0, &mid);
    let lines: Vec<&[u8]> = whole.split(|&b| b == b'\n').collect();
    corpus.add_selected("audit_export", "line-record", 1, lines[1]);
    corpus.add_selected("audit_export", "line-checkpoint", 2, lines[3]);
    corpus.add_selected("audit_export", "line-header", 3, lines[0]);
    corpus.add_selected(
        "audit_export",
        "stored-record",
        4,
        &records[2].canonical_bytes(),
    );
    corpus.add_selected(
        "audit_export",
        "public-key",
        5,
        key.public_key().to_text().as_bytes(),
    );
}

/// ```toml blocks of a Markdown file.
fn toml_blocks(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => current = Some(String::new()),
            Some(block) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
}

fn toml_files(root: &Path, corpus: &Corpus) {
    let docs = root.join("docs");
    let mut files = markdown_files(&docs);
    files.extend(markdown_files(&docs.join("providers")));
    files.extend(markdown_files(&docs.join("onboarding")));
    let mut seen = HashMap::new();
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        for (i, block) in toml_blocks(&file).into_iter().enumerate() {
            if seen.insert(block.clone(), ()).is_some() {
                continue;
            }
            let target = if block.contains("identities = [") {
                if !cfg!(feature = "authz") {
                    continue;
                }
                "identity_mapping"
            } else if cfg!(feature = "server") {
                "server_config"
            } else {
                continue;
            };
            corpus.add(target, &format!("{stem}-{i}.toml"), block.as_bytes());
        }
    }
    if cfg!(feature = "authz") {
        let mapping = fs::read(root.join("policies/identities.toml")).unwrap();
        corpus.add("identity_mapping", "policies-identities.toml", &mapping);
    }
}

#[cfg(feature = "server")]
fn requests(corpus: &Corpus) {
    // One entry: prost encodes a map in HashMap order, so more would make the seeds differ
    // from run to run.
    let ctx: HashMap<String, String> = [("purpose".to_owned(), "chat-history".to_owned())]
        .into_iter()
        .collect();
    let tenant = "acme".to_owned();
    let envelope = vec![0x4b, 0x57, 1, 0, 2, 4, b'a', b'c', b'm', b'e'];
    let messages: Vec<(u8, &str, Vec<u8>)> = vec![
        (
            0,
            "encrypt",
            pb::EncryptRequest {
                tenant_id: tenant.clone(),
                plaintext: b"hello".to_vec(),
                encryption_context: ctx.clone(),
                scope: "conversation-1".into(), justification: None, 
            }
            .encode_to_vec(),
        ),
        (
            1,
            "decrypt",
            pb::DecryptRequest {
                tenant_id: tenant.clone(),
                envelope: envelope.clone(),
                encryption_context: ctx.clone(), justification: None, 
            }
            .encode_to_vec(),
        ),
        (
            2,
            "encrypt-batch",
            pb::EncryptBatchRequest {
                tenant_id: tenant.clone(),
                items: vec![pb::EncryptBatchItem {
                    plaintext: b"a".to_vec(),
                    encryption_context: ctx.clone(),
                    scope: String::new(),
                }], justification: None, 
            }
            .encode_to_vec(),
        ),
        (
            3,
            "decrypt-batch",
            pb::DecryptBatchRequest {
                tenant_id: tenant.clone(),
                items: vec![pb::DecryptBatchItem {
                    envelope,
                    encryption_context: ctx,
                }], justification: None, 
            }
            .encode_to_vec(),
        ),
        (
            4,
            "create-tenant",
            pb::CreateTenantRequest {
                tenant_id: tenant.clone(),
                display_name: "Acme Corp".into(),
            }
            .encode_to_vec(),
        ),
        (
            6,
            "get-tenant",
            pb::GetTenantRequest {
                tenant_id: tenant.clone(),
            }
            .encode_to_vec(),
        ),
        (
            7,
            "revoke-key",
            pb::RevokeKeyRequest {
                tenant_id: tenant.clone(),
                reason: "incident 42".into(),
                requested_by: "alice".into(),
            }
            .encode_to_vec(),
        ),
        (
            8,
            "restore-key",
            pb::RestoreKeyRequest {
                tenant_id: tenant.clone(),
                reason: "resolved".into(),
                requested_by: "alice".into(),
                binding_id: 3,
            }
            .encode_to_vec(),
        ),
        (
            9,
            "set-tenant-policy",
            pb::SetTenantPolicyRequest {
                tenant_id: tenant.clone(),
                policy: Some(pb::TenantPolicy {
                    cache_ttl_seconds: 60,
                    monitor_interval_seconds: 30, decrypt_purposes: Vec::new(), 
                }),
                requested_by: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            10,
            "report-key-event",
            pb::ReportKeyEventRequest {
                provider: pb::ProviderKind::AwsKms as i32,
                key_ref:
                    "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                        .into(),
                event: "DisableKey".into(),
            }
            .encode_to_vec(),
        ),
        (
            11,
            "list-audit-events",
            pb::ListAuditEventsRequest {
                tenant_id: tenant.clone(),
                event_type: "dek_created".into(),
                from: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                to: None,
                page_size: 10,
                page_token: "42".into(),
            }
            .encode_to_vec(),
        ),
    ];
    for (selector, name, bytes) in messages {
        corpus.add_selected("proto_requests", name, selector, &bytes);
    }
    use pb::register_key_request::Key;
    let keys = [
        (
            "local",
            Key::Local(pb::LocalKey {
                key_name: "default".into(),
            }),
        ),
        (
            "aws",
            Key::AwsKms(pb::AwsKmsKey {
                key_arn:
                    "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                        .into(),
                role_arn: "arn:aws:iam::111122223333:role/keyward".into(),
                external_id: "keyward-acme".into(),
            }),
        ),
        (
            "pkcs11",
            Key::Pkcs11(pb::Pkcs11Key {
                uri: "pkcs11:token=keyward;object=tenant-kek".into(),
            }),
        ),
        (
            "gcp",
            Key::GcpKms(pb::GcpKmsKey {
                crypto_key: "projects/p/locations/global/keyRings/r/cryptoKeys/k".into(),
            }),
        ),
        (
            "azure",
            Key::AzureKeyVault(pb::AzureKeyVaultKey {
                key_id: "https://contoso.vault.azure.net/keys/kek".into(),
            }),
        ),
    ];
    for (name, key) in keys {
        let r = pb::RegisterKeyRequest {
            tenant_id: tenant.clone(),
            key: Some(key),
        };
        corpus.add_selected(
            "proto_requests",
            &format!("register-key-{name}"),
            5,
            &r.encode_to_vec(),
        );
    }
}
