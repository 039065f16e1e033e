//! Backend-neutral conversions between stored column values and domain types.
//!
//! Every backend extracts primitive column values (`String`, `i64`, `Vec<u8>`) and converts them
//! here, so that "what counts as a valid stored row" is decided once. A value that fails
//! validation is [`StoreError::Corrupt`], naming the table and the column.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{KekState, KeyId, Scope, StoreError, TenantId};

/// Milliseconds since the UNIX epoch, now. A clock before 1970 reads as 0.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn corrupt(table: &str, column: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{table}.{column}: {detail}"))
}

pub(crate) fn tenant_id(table: &str, column: &str, value: &str) -> Result<TenantId, StoreError> {
    let id = TenantId::try_from(value).map_err(|e| {
        corrupt(
            table,
            column,
            format_args!("invalid tenant id {value:?}: {e}"),
        )
    })?;
    // A non-canonical spelling would be accepted by a lenient parser but never match a lookup.
    if id.as_str() != value {
        return Err(corrupt(
            table,
            column,
            format_args!("tenant id {value:?} is not in canonical form"),
        ));
    }
    Ok(id)
}

/// Ids are stored as exactly the 32 lowercase hex characters of `KeyId`'s `Display`.
pub(crate) fn key_id_text(id: &KeyId) -> String {
    id.to_string()
}

pub(crate) fn key_id(table: &str, column: &str, value: &str) -> Result<KeyId, StoreError> {
    let id: KeyId = value
        .parse()
        .map_err(|e| corrupt(table, column, format_args!("invalid key id {value:?}: {e}")))?;
    if key_id_text(&id) != value {
        return Err(corrupt(
            table,
            column,
            format_args!("key id {value:?} is not lowercase hex"),
        ));
    }
    Ok(id)
}

pub(crate) fn kek_state(table: &str, column: &str, value: &str) -> Result<KekState, StoreError> {
    value
        .parse()
        .map_err(|_| corrupt(table, column, format_args!("unknown KEK state {value:?}")))
}

pub(crate) fn scope(table: &str, column: &str, value: String) -> Result<Scope, StoreError> {
    Scope::try_from(value).map_err(|e| corrupt(table, column, e))
}

pub(crate) fn counter(table: &str, column: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(table, column, format_args!("negative value {value}")))
}

/// Counters are stored as signed 64-bit integers (the common type of SQLite and PostgreSQL);
/// larger increments saturate.
pub(crate) fn counter_delta(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn validate_binding_text(field: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::InvalidInput(format!(
            "{field} must not be empty"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::InvalidInput(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "unit tests")]

    use super::*;

    #[test]
    fn key_ids_must_be_canonical() {
        let id = KeyId::from_bytes([0xab; 16]);
        let text = key_id_text(&id);
        assert_eq!(key_id("deks", "id", &text).unwrap(), id);
        let upper = text.to_uppercase();
        let err = key_id("deks", "id", &upper).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(ref m) if m.starts_with("deks.id:")));
        assert!(matches!(
            key_id("tenant_keys", "id", "zz"),
            Err(StoreError::Corrupt(m)) if m.starts_with("tenant_keys.id:")
        ));
    }

    #[test]
    fn states_and_counters() {
        for state in KekState::ALL {
            assert_eq!(
                kek_state("kek_bindings", "state", state.as_str()).unwrap(),
                state
            );
        }
        assert!(matches!(
            kek_state("kek_bindings", "state", "ACTIVE"),
            Err(StoreError::Corrupt(m)) if m.starts_with("kek_bindings.state:")
        ));
        assert!(matches!(
            counter("deks", "bytes", -1),
            Err(StoreError::Corrupt(m)) if m.starts_with("deks.bytes:")
        ));
        assert_eq!(counter_delta(u64::MAX), i64::MAX);
        assert_eq!(counter_delta(7), 7);
    }

    #[test]
    fn scopes() {
        assert_eq!(Scope::default_scope().as_str(), "default");
        assert!(Scope::try_from("").is_err());
        assert!(Scope::try_from("a\nb").is_err());
        assert!(Scope::try_from("x".repeat(128)).is_ok());
        assert!(Scope::try_from("x".repeat(129)).is_err());
        assert!(Scope::try_from("conversation/42 é").is_ok());
        assert!(matches!(
            scope("deks", "scope", String::new()),
            Err(StoreError::Corrupt(m)) if m.starts_with("deks.scope:")
        ));
    }
}
