//! Pinned test vectors: if any of these change, the format changed. Update
//! `docs/audit-format.md` §8 and bump the domain labels instead of editing the literals.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use keyward_audit::*;
use keyward_envelope::TenantId;

/// RFC 8032 §7.1 test 1 secret key, as PKCS#8 v1 DER (`302e020100300506032b657004220420 || seed`).
const TEST_PKCS8_HEX: &str = "302e020100300506032b6570042204209d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// RFC 8032 §7.1 test 1 public key.
const TEST_PUBLIC_HEX: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn golden_record() -> Record {
    let tenant: TenantId = "acme".parse().unwrap();
    let event = AuditEvent::RevocationStateChanged(StateTransition {
        tenant,
        binding_id: 7,
        from: KeyState::Active,
        to: KeyState::Revoked,
        source: RevocationSource::KmsRefusal,
        actor: None,
        reason: "KMS refused Decrypt: key is disabled".into(),
        observed_at_ms: 1_700_000_000_000,
    });
    Record::append(&ChainHead::GENESIS, 1_700_000_000_250, event).unwrap()
}

const GOLDEN_CANONICAL: &str = r#"{"event":{"actor":null,"binding_id":7,"from":"active","observed_at_ms":1700000000000,"reason":"KMS refused Decrypt: key is disabled","source":"kms_refusal","tenant":"acme","to":"revoked","type":"revocation_state_changed"},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,"time_ms":1700000000250}"#;
const GOLDEN_HASH: &str = "4f749ce9fe19e74ce37e40ebfd3ab974e88dc7b66c748169c6390f2177f623ef";
const GOLDEN_CHECKPOINT: &str = r#"{"head_hash":"4f749ce9fe19e74ce37e40ebfd3ab974e88dc7b66c748169c6390f2177f623ef","key_id":"21fe31dfa154a261","seq":1,"signature":"8f4063626b7f14aeb0b5839fab27e82a8e54b25c65850195ea4de7fa69d7e49571bed3d3258fb567d5bbbecac3ac9c2861f5a048ed7a5c7d70685ebe5fe3f50e","time_ms":1700000060000,"type":"checkpoint"}"#;

#[test]
fn golden_record_bytes_and_hash() {
    let r = golden_record();
    assert_eq!(
        String::from_utf8(r.canonical_bytes()).unwrap(),
        GOLDEN_CANONICAL
    );
    assert_eq!(hex::encode(r.hash()), GOLDEN_HASH);
    // The hash is SHA-256 over the domain label and the canonical bytes, nothing else.
    let mut input = b"keyward-audit-v1\n".to_vec();
    input.extend_from_slice(GOLDEN_CANONICAL.as_bytes());
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    assert_eq!(hex::encode(d.as_ref()), GOLDEN_HASH);
    // And the export line parses back to the same record.
    assert_eq!(
        Record::from_canonical_json(&r.to_canonical_json()).unwrap(),
        r
    );
}

#[test]
fn golden_checkpoint_signature() {
    let key = SigningKey::from_pkcs8(&hex::decode(TEST_PKCS8_HEX).unwrap()).unwrap();
    let pk = key.public_key();
    assert_eq!(hex::encode(pk.bytes), TEST_PUBLIC_HEX);
    assert_eq!(pk.key_id(), "21fe31dfa154a261");
    assert_eq!(
        pk.to_text(),
        "keyward-audit-ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    );
    let cp = key
        .sign_checkpoint(&golden_record().head(), 1_700_000_060_000)
        .unwrap();
    assert_eq!(cp.to_canonical_json().unwrap(), GOLDEN_CHECKPOINT);
    assert!(pk.verify_checkpoint(&Checkpoint::from_canonical_json(GOLDEN_CHECKPOINT).unwrap()));
    // PKCS#8 round trip keeps the key.
    let again = SigningKey::from_pkcs8(&key.to_pkcs8().unwrap()).unwrap();
    assert_eq!(again.public_key(), pk);
}

/// The identifier key of the format-v2 vectors (docs/audit-format.md §2's vector key).
fn golden_sealer_hasher() -> IdentifierHasher {
    IdentifierHasher::new([0x42; 32])
}

/// Format-v2 records after the v1 golden record: seq 2 about `acme` (salt 00..0f), seq 3 about
/// `globex` (salt 10..1f).
fn golden_v2_records() -> [Record; 2] {
    let h = golden_sealer_hasher();
    let acme: TenantId = "acme".parse().unwrap();
    let globex: TenantId = "globex".parse().unwrap();
    let salt = |base: u8| std::array::from_fn::<u8, 16, _>(|i| base + i as u8);
    let r2 = Record::append_v2(
        &golden_record().head(),
        1_700_000_001_000,
        AuditEvent::RevocationDenials {
            tenant: acme.clone(),
            second: 1_700_000_000,
            count: 3,
        },
        Some(h.hash("tenant", acme.as_str())),
        salt(0x00),
    )
    .unwrap();
    let r3 = Record::append_v2(
        &r2.head(),
        1_700_000_002_000,
        AuditEvent::RevocationDenials {
            tenant: globex.clone(),
            second: 1_700_000_001,
            count: 7,
        },
        Some(h.hash("tenant", globex.as_str())),
        salt(0x10),
    )
    .unwrap();
    [r2, r3]
}

const GOLDEN_V2_CANONICAL: &str = r#"{"event":{"count":3,"second":1700000000,"tenant":"acme","type":"revocation_denials"},"prev_hash":"4f749ce9fe19e74ce37e40ebfd3ab974e88dc7b66c748169c6390f2177f623ef","salt":"000102030405060708090a0b0c0d0e0f","seq":2,"tenant_tag":"hmac-sha256:d6c3561866dbdc3aba56bc4f7b3cecc7e46fc1025079cf9897afe9fd3f5f2d37","time_ms":1700000001000}"#;
const GOLDEN_V2_EVENT_DIGEST: &str =
    "d4075775a129e30035701306f2bbfb25a96710a7ad2c4a7e68be7aec2a75f9c0";
const GOLDEN_V2_HASH: &str = "2bc86608d05080ac7d2aec0058a308bcf4f17ac7745da085d7a3ddb377a718d1";
/// Cross-checked with Python (`hashlib`, `hmac`, `cryptography`): docs/audit-format.md §8.
const GOLDEN_TENANT_EXPORT: &str = r#"{"checkpoints":1,"exported_at_ms":1700000060000,"first_seq":2,"from_ms":1700000000000,"last_seq":3,"tenant":"acme","tenant_tag":"hmac-sha256:d6c3561866dbdc3aba56bc4f7b3cecc7e46fc1025079cf9897afe9fd3f5f2d37","to_ms":1700000003000,"type":"keyward-audit-export","version":2}
{"event":{"count":3,"second":1700000000,"tenant":"acme","type":"revocation_denials"},"hash":"2bc86608d05080ac7d2aec0058a308bcf4f17ac7745da085d7a3ddb377a718d1","prev_hash":"4f749ce9fe19e74ce37e40ebfd3ab974e88dc7b66c748169c6390f2177f623ef","salt":"000102030405060708090a0b0c0d0e0f","seq":2,"tenant_tag":"hmac-sha256:d6c3561866dbdc3aba56bc4f7b3cecc7e46fc1025079cf9897afe9fd3f5f2d37","time_ms":1700000001000,"type":"record"}
{"event_digest":"fe2b4617d97c0fb3e0d6a251950d64fc90f08c1f0f2738bc4ead22ff16c7ea79","hash":"a00ff78ff75c7ec182fc710927ef5b1c279a5e7627335a9be35937d06bed00a1","prev_hash":"2bc86608d05080ac7d2aec0058a308bcf4f17ac7745da085d7a3ddb377a718d1","seq":3,"tenant_tag":"hmac-sha256:40e867730a0636018a6a7804e5e4fb21bbeb5c1e71aecc3115aa5c4f399a71d2","time_ms":1700000002000,"type":"redacted"}
{"head_hash":"a00ff78ff75c7ec182fc710927ef5b1c279a5e7627335a9be35937d06bed00a1","key_id":"21fe31dfa154a261","seq":3,"signature":"0fa35a7b96fad892f1ce2d9915c94dca96d37897f0e6b327c44b94872eb38250060361c0b73cb834076283be186fd2e9b4bc1da73bfb09a47bca35a6267f2407","time_ms":1700000060000,"type":"checkpoint"}
"#;

#[test]
fn golden_v2_record_and_redacted_export() {
    let [r2, r3] = golden_v2_records();
    let tag = golden_sealer_hasher().hash("tenant", "acme");
    // The hash by hand: SHA-256 over the v2 label and the canonical digest object.
    let mut event_input = b"keyward-audit-event-v2\n".to_vec();
    event_input.extend((0u8..16).collect::<Vec<u8>>());
    event_input.extend_from_slice(
        br#"{"count":3,"second":1700000000,"tenant":"acme","type":"revocation_denials"}"#,
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &event_input);
    assert_eq!(r2.event_digest().unwrap(), digest.as_ref());
    let body = format!(
        "{{\"event_digest\":\"{}\",\"prev_hash\":\"{GOLDEN_HASH}\",\"seq\":2,\"tenant_tag\":\"{tag}\",\"time_ms\":1700000001000}}",
        hex::encode(digest.as_ref())
    );
    let mut input = b"keyward-audit-v2\n".to_vec();
    input.extend_from_slice(body.as_bytes());
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    assert_eq!(r2.hash(), d.as_ref());

    // The per-tenant export of acme over 1700000000000..1700000003000: seq 1 is format v1, so
    // it starts at seq 2; seq 3 (globex) is redacted.
    let key = SigningKey::from_pkcs8(&hex::decode(TEST_PKCS8_HEX).unwrap()).unwrap();
    let scope = TenantScope::new(
        "acme".parse().unwrap(),
        tag,
        1_700_000_000_000,
        1_700_000_003_000,
    );
    let mut w = ExportWriter::new(Vec::new());
    w.write_tenant_header(&ExportHeader::new(2, 3, 1, 1_700_000_060_000), &scope)
        .unwrap();
    w.write_record(&r2).unwrap();
    w.write_record(&r3).unwrap();
    let export = String::from_utf8(w.finish(&key, 1_700_000_060_000).unwrap()).unwrap();
    let report = verify_export(export.as_bytes(), &[key.public_key()]).unwrap();
    let t = report.tenant.unwrap();
    assert_eq!((t.records, t.redacted), (1, 1));
    assert!(!export.contains("globex"));
    assert_eq!(
        String::from_utf8(r2.canonical_bytes()).unwrap(),
        GOLDEN_V2_CANONICAL
    );
    assert_eq!(
        hex::encode(r2.event_digest().unwrap()),
        GOLDEN_V2_EVENT_DIGEST
    );
    assert_eq!(hex::encode(r2.hash()), GOLDEN_V2_HASH);
    assert_eq!(export, GOLDEN_TENANT_EXPORT);
}
