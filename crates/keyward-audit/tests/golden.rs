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
