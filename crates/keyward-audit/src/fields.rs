//! Reading the fields of a parsed line (records, checkpoints, the export header): exactly the
//! expected keys, typed values, and hashes as 64 lowercase hex characters. Shared by `record`,
//! `checkpoint` and `export`, below all of them.

use serde_json::{Map, Value};

use crate::error::AuditError;

/// Fails unless `obj` has exactly the keys `want`.
pub(crate) fn expect_keys(
    obj: &Map<String, Value>,
    want: &[&str],
    what: &str,
) -> Result<(), AuditError> {
    if obj.len() != want.len() || !want.iter().all(|k| obj.contains_key(*k)) {
        let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
        got.sort_unstable();
        return Err(AuditError::Malformed(format!(
            "a {what} has exactly the fields {want:?}, found {got:?}"
        )));
    }
    Ok(())
}

pub(crate) fn get_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, AuditError> {
    obj.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| AuditError::Malformed(format!("{key} must be a string")))
}

pub(crate) fn get_u64(obj: &Map<String, Value>, key: &str) -> Result<u64, AuditError> {
    obj.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| AuditError::Malformed(format!("{key} must be a non-negative integer")))
}

pub(crate) fn get_i64(obj: &Map<String, Value>, key: &str) -> Result<i64, AuditError> {
    obj.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| AuditError::Malformed(format!("{key} must be an integer in i64 range")))
}

/// Decodes 64 lowercase hex characters.
pub(crate) fn decode_hash(text: &str, what: &str) -> Result<[u8; 32], AuditError> {
    let mut out = [0u8; 32];
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(AuditError::Malformed(format!(
            "{what} must be 64 lowercase hex characters"
        )));
    }
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| AuditError::Malformed(format!("{what}: {e}")))?;
    Ok(out)
}
