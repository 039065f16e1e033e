//! The exit kit's files, format version 1 (docs/exit.md is the specification; this module is
//! its one implementation, shared by the writer, `keyward export`, and the reader,
//! `keyward-open`).
//!
//! An export is a directory of four files:
//! - `manifest.json`: what the export is (format, version, tenant, time, the audit chain's head
//!   and the export's own audit record), how many items each file holds, and the SHA-256 and
//!   size of each other file;
//! - `tenant_keys.json`: the tenant keys, each as the customer's KEK wrapped it, with what the
//!   KEK needs to unwrap it (provider, key reference, wrap context);
//! - `data_keys.jsonl`: one data key per line, as its tenant key wrapped it, with its scope and
//!   wrap AAD;
//! - `tombstones.jsonl`: one shredded data key per line (no key material).
//!
//! Every object is read strictly: an unknown field, a missing one, a value of the wrong type or
//! form is an error naming the file (and line). Version 1 is closed: any change to a file is a
//! new `format_version`.

use std::collections::BTreeMap;

use base64::Engine as _;
use keyward_envelope::{EncryptionContext, KeyId, TenantId, dek_wrap_aad};
use keyward_kms::{ProviderKind, Purpose, WrapContext};
use serde::{Deserialize, Serialize};

/// `manifest.json`'s `format`.
pub const FORMAT: &str = "keyward-export";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The tenant keys' file name.
pub const TENANT_KEYS: &str = "tenant_keys.json";
/// The data keys' file name (JSON Lines).
pub const DATA_KEYS: &str = "data_keys.jsonl";
/// The tombstones' file name (JSON Lines).
pub const TOMBSTONES: &str = "tombstones.jsonl";
/// The files the manifest lists, in the order they are written and checked.
pub const DATA_FILES: [&str; 3] = [TENANT_KEYS, DATA_KEYS, TOMBSTONES];

/// The values a binding state takes in `tenant_keys.json` (`binding_state`).
pub const BINDING_STATES: [&str; 6] = [
    "active",
    "revoked",
    "unavailable",
    "restored",
    "destroyed",
    "retired",
];

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] for this build.
    pub format_version: u32,
    /// The tenant id.
    pub tenant: String,
    /// When the export began, RFC 3339 UTC, and the same in Unix milliseconds.
    pub exported_at: String,
    pub exported_at_ms: i64,
    pub audit: AuditRefs,
    pub counts: Counts,
    /// Every other file of the export by name: exactly [`DATA_FILES`].
    pub files: BTreeMap<String, FileDigest>,
}

/// Where the export sits in the deployment's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRefs {
    /// The chain's head when the export began: its last record's seq and hash (64 hex).
    pub head_seq: u64,
    pub head_hash: String,
    /// The seq of the export's own `key_hierarchy_exported` record.
    pub export_record_seq: u64,
}

/// How many items each file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub tenant_keys: u64,
    pub data_keys: u64,
    pub tombstones: u64,
}

/// A file's SHA-256 (64 lowercase hex) and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub sha256: String,
    pub bytes: u64,
}

/// `tenant_keys.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeysFile {
    pub tenant: String,
    pub tenant_keys: Vec<TenantKeyEntry>,
}

/// One tenant key of `tenant_keys.json`, as the customer's KEK wrapped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeyEntry {
    /// 32 lowercase hex digits.
    pub id: String,
    pub created_at_ms: i64,
    /// The KEK's provider (`aws-kms`, `gcp-kms`, `azure-key-vault`, `pkcs11`, `local`).
    pub provider: String,
    /// The KEK's reference, as the provider names it (docs/exit.md, per provider).
    pub key_ref: String,
    /// The Keyward binding of that KEK, and its state when the export was read.
    pub binding_id: i64,
    pub binding_state: String,
    /// What the KEK was given with the key: its encryption context (AWS KMS), whose canonical
    /// encoding, `wrap_aad` (base64), is the AAD of the other providers.
    pub wrap_context: BTreeMap<String, String>,
    pub wrap_aad: String,
    /// The provider's ciphertext of the tenant key, base64.
    pub wrapped: String,
}

/// One line of `data_keys.jsonl`: a data key as its tenant key wrapped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyEntry {
    /// 32 lowercase hex digits: the envelope header's DEK id.
    pub id: String,
    /// The tenant key it is wrapped under.
    pub tenant_key_id: String,
    /// The scope label (part of the wrap AAD).
    pub scope: String,
    pub created_at_ms: i64,
    /// `null` while it was its scope's active data key.
    pub retired_at_ms: Option<i64>,
    /// The AAD it is wrapped with (base64): `dek_wrap_aad(tenant, scope, id)`.
    pub wrap_aad: String,
    /// `0x01 || nonce (12) || encrypted key (32) || tag (16)`, base64 (61 bytes).
    pub wrapped: String,
}

/// One line of `tombstones.jsonl`: what is left of a shredded data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TombstoneEntry {
    pub id: String,
    pub tenant_key_id: String,
    /// HMAC of the scope label (the label itself is not kept after a shred).
    pub scope_hmac: String,
    pub created_at_ms: i64,
    pub shredded_at_ms: i64,
    pub shredded_by: String,
    pub reason: String,
}

/// Base64 as the files use it: standard alphabet, with padding (RFC 4648 §4).
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes [`b64`]'s form; `what` names the field in the error.
pub fn unb64(text: &str, what: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// The wrap context a tenant key was given to its KEK: tenant, tenant key id, purpose
/// `tenant-key` (keyward_kms::WrapContext).
pub fn tenant_key_context(tenant: &TenantId, id: &KeyId) -> WrapContext {
    WrapContext::new(tenant, id, Purpose::TenantKey)
}

impl TenantKeyEntry {
    /// The entry of tenant key `id` of `tenant`, wrapped (`wrapped`) by the KEK `key_ref` of
    /// `provider`, bound as binding `binding_id` in state `binding_state`.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per field of the file"
    )]
    pub fn new(
        tenant: &TenantId,
        id: &KeyId,
        created_at_ms: i64,
        provider: ProviderKind,
        key_ref: &str,
        binding_id: i64,
        binding_state: &str,
        wrapped: &[u8],
    ) -> Self {
        let context = tenant_key_context(tenant, id);
        Self {
            id: id.to_string(),
            created_at_ms,
            provider: provider.as_str().to_owned(),
            key_ref: key_ref.to_owned(),
            binding_id,
            binding_state: binding_state.to_owned(),
            wrap_context: context.pairs(),
            wrap_aad: b64(&context.aad()),
            wrapped: b64(wrapped),
        }
    }
}

impl DataKeyEntry {
    /// The entry of data key `id` of `tenant` in `scope`, wrapped (`wrapped`) under tenant key
    /// `tenant_key_id`. Fails only for a scope too long to be one (over 1024 bytes).
    pub fn new(
        tenant: &TenantId,
        id: &KeyId,
        tenant_key_id: &KeyId,
        scope: &str,
        created_at_ms: i64,
        retired_at_ms: Option<i64>,
        wrapped: &[u8],
    ) -> Result<Self, String> {
        let aad = dek_wrap_aad(tenant, scope, id).map_err(|e| format!("data key {id}: {e}"))?;
        Ok(Self {
            id: id.to_string(),
            tenant_key_id: tenant_key_id.to_string(),
            scope: scope.to_owned(),
            created_at_ms,
            retired_at_ms,
            wrap_aad: b64(&aad),
            wrapped: b64(wrapped),
        })
    }
}

/// A 32-hex-digit key id of a file; `what` names the field in the error.
pub fn key_id(text: &str, what: &str) -> Result<KeyId, String> {
    // KeyId parses any case; the files hold the lowercase form only.
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{what} {text:?} is not 32 lowercase hex digits"));
    }
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not 32 lowercase hex digits"))
}

/// The canonical bytes of a context map (docs/envelope-format.md §4), `None` if it breaks the
/// bounds.
pub fn canonical(map: &BTreeMap<String, String>) -> Option<Vec<u8>> {
    EncryptionContext::with_reserved(map.clone())
        .ok()
        .map(|c| c.canonical_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn tenant() -> TenantId {
        "acme".parse().unwrap()
    }

    /// The entries as the files hold them, pinned: field names, order and encodings are the
    /// format (docs/exit.md shows the same lines).
    #[test]
    fn entries_serialize_as_documented() {
        let id = KeyId::from_bytes([0x11; 16]);
        let tk = KeyId::from_bytes([0x22; 16]);
        let dek = DataKeyEntry::new(&tenant(), &id, &tk, "conv-1", 5, None, &[1, 2, 3]).unwrap();
        let line = serde_json::to_string(&dek).unwrap();
        assert_eq!(
            line,
            format!(
                r#"{{"id":"{}","tenant_key_id":"{}","scope":"conv-1","created_at_ms":5,"retired_at_ms":null,"wrap_aad":"{}","wrapped":"AQID"}}"#,
                "11".repeat(16),
                "22".repeat(16),
                b64(&dek_wrap_aad(&tenant(), "conv-1", &id).unwrap())
            )
        );
        let key = TenantKeyEntry::new(
            &tenant(),
            &tk,
            7,
            ProviderKind::AwsKms,
            "arn:aws:kms:us-east-1:111122223333:key/k",
            3,
            "active",
            &[9],
        );
        let value = serde_json::to_value(&key).unwrap();
        assert_eq!(
            value["wrap_context"],
            serde_json::json!({
                "keyward:purpose": "tenant-key",
                "keyward:tenant": "acme",
                "keyward:tenant-key-id": "22".repeat(16),
            })
        );
        assert_eq!(
            unb64(value["wrap_aad"].as_str().unwrap(), "wrap_aad").unwrap(),
            canonical(&key.wrap_context).unwrap()
        );
        assert_eq!(value["provider"], "aws-kms");
        assert_eq!(value["wrapped"], "CQ==");
    }

    #[test]
    fn reading_is_strict() {
        let unknown = r#"{"id":"x","tenant_key_id":"y","scope_hmac":"h","created_at_ms":1,"shredded_at_ms":2,"shredded_by":"a","reason":"r","extra":1}"#;
        let e = serde_json::from_str::<TombstoneEntry>(unknown).unwrap_err();
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
        let missing = r#"{"id":"x","tenant_key_id":"y","scope_hmac":"h","created_at_ms":1,"shredded_at_ms":2,"shredded_by":"a"}"#;
        let e = serde_json::from_str::<TombstoneEntry>(missing).unwrap_err();
        assert!(e.to_string().contains("missing field `reason`"), "{e}");
        assert!(key_id(&"AB".repeat(16), "id").is_err(), "uppercase");
        assert!(key_id("abc", "id").is_err());
        assert_eq!(
            key_id(&"ab".repeat(16), "id").unwrap(),
            KeyId::from_bytes([0xab; 16])
        );
        assert!(
            unb64("not base64!", "wrapped")
                .unwrap_err()
                .contains("wrapped")
        );
    }
}
