//! Backend-neutral conversions between stored column values and domain types.
//!
//! Every backend extracts primitive column values (`String`, `i64`, `Vec<u8>`) and converts them
//! here, so that "what counts as a valid stored row" is decided once. A value that fails
//! validation is [`StoreError::Corrupt`], naming the table and the column.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{
    AuditError, ChainHead, Checkpoint, KekState, KeyId, ProviderKind, Record, RevocationSource,
    Scope, StoreError, TenantId,
};

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

/// The stored name of a [`RevocationSource`] (its audit-log name).
pub(crate) fn cause_text(cause: RevocationSource) -> &'static str {
    match cause {
        RevocationSource::KmsRefusal => "kms_refusal",
        RevocationSource::Monitor => "monitor",
        RevocationSource::Explicit => "explicit",
        RevocationSource::Event => "event",
        // `RevocationSource` is non_exhaustive; a new source needs its own stored name (and a
        // migration widening the CHECK constraint), so this arm is unreachable until then.
        _ => "explicit",
    }
}

pub(crate) fn cause(
    table: &str,
    column: &str,
    value: Option<&str>,
) -> Result<Option<RevocationSource>, StoreError> {
    value
        .map(|v| match v {
            "kms_refusal" => Ok(RevocationSource::KmsRefusal),
            "monitor" => Ok(RevocationSource::Monitor),
            "explicit" => Ok(RevocationSource::Explicit),
            "event" => Ok(RevocationSource::Event),
            other => Err(corrupt(
                table,
                column,
                format_args!("unknown state cause {other:?}"),
            )),
        })
        .transpose()
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

/// A provider kind as stored (its stable name); any other text is corruption.
pub(crate) fn provider_kind(
    table: &str,
    column: &str,
    value: &str,
) -> Result<ProviderKind, StoreError> {
    value.parse().map_err(|e| corrupt(table, column, e))
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

/// A chain sequence number as the database stores it (signed 64-bit). Sequence numbers start at
/// 1 and grow by one per record, so one beyond `i64::MAX` cannot happen in practice; it is an
/// encoding error rather than a silent wrap.
pub(crate) fn seq_to_db(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| {
        StoreError::Audit(AuditError::Encoding(format!(
            "sequence number {seq} does not fit the store's signed 64-bit column"
        )))
    })
}

/// A query bound on sequence numbers: values beyond `i64::MAX` match what `i64::MAX` matches.
pub(crate) fn seq_bound(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// 64 lowercase hex characters -> 32 bytes.
pub(crate) fn hash(table: &str, column: &str, value: &str) -> Result<[u8; 32], StoreError> {
    let mut out = [0u8; 32];
    if value.len() != 64 || value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(corrupt(
            table,
            column,
            format_args!("{value:?} is not 64 lowercase hex characters"),
        ));
    }
    hex::decode_to_slice(value, &mut out).map_err(|e| corrupt(table, column, e))?;
    Ok(out)
}

/// The chain head from the last record's `seq` and `hash` columns.
pub(crate) fn chain_head(seq: i64, hash_hex: &str) -> Result<ChainHead, StoreError> {
    const T: &str = "audit_records";
    let seq = u64::try_from(seq)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| corrupt(T, "seq", format_args!("invalid sequence number {seq}")))?;
    Ok(ChainHead {
        seq,
        hash: hash(T, "hash", hash_hex)?,
    })
}

/// The columns of one `audit_records` row.
#[derive(Debug)]
pub(crate) struct StoredRecord<'a> {
    pub(crate) seq: i64,
    pub(crate) time_ms: i64,
    pub(crate) event_type: &'a str,
    pub(crate) tenant_id: Option<&'a str>,
    pub(crate) body: &'a str,
    pub(crate) hash: &'a str,
}

/// Rebuilds a record from its row and checks it: the body parses strictly, the stored hash is
/// SHA-256 over the body, and the indexed columns (seq, time, type, tenant) agree with the body
/// (otherwise a filtered query would silently return the wrong records).
pub(crate) fn record(row: &StoredRecord<'_>) -> Result<Record, StoreError> {
    const T: &str = "audit_records";
    let seq = row.seq;
    let hash = hash(T, "hash", row.hash).map_err(|e| at_seq(e, seq))?;
    let record = Record::from_stored(row.body.as_bytes(), hash)
        .map_err(|e| corrupt(T, "body", format_args!("record {seq}: {e}")))?;
    if !record.verify_hash() {
        return Err(corrupt(
            T,
            "hash",
            format_args!("record {seq}: the stored hash does not match the record's body"),
        ));
    }
    let mismatch = |column: &str, stored: &dyn std::fmt::Display, body: &dyn std::fmt::Display| {
        corrupt(
            T,
            column,
            format_args!("record {seq}: column says {stored} but the body says {body}"),
        )
    };
    if i64::try_from(record.seq()).ok() != Some(seq) {
        return Err(mismatch("seq", &seq, &record.seq()));
    }
    if record.time_ms() != row.time_ms {
        return Err(mismatch("time_ms", &row.time_ms, &record.time_ms()));
    }
    let event = record.event();
    if event.event_type() != row.event_type {
        return Err(mismatch("event_type", &row.event_type, &event.event_type()));
    }
    let body_tenant = event.tenant().map(TenantId::as_str);
    if body_tenant != row.tenant_id {
        return Err(mismatch(
            "tenant_id",
            &format_args!("{:?}", row.tenant_id),
            &format_args!("{body_tenant:?}"),
        ));
    }
    Ok(record)
}

fn at_seq(e: StoreError, seq: i64) -> StoreError {
    match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{m} (record {seq})")),
        other => other,
    }
}

/// Rebuilds a checkpoint from its `audit_checkpoints` row; the columns must agree with the body.
pub(crate) fn checkpoint(
    seq: i64,
    time_ms: i64,
    key_id: &str,
    body: &str,
) -> Result<Checkpoint, StoreError> {
    const T: &str = "audit_checkpoints";
    let checkpoint = Checkpoint::from_canonical_json(body)
        .map_err(|e| corrupt(T, "body", format_args!("checkpoint {seq}: {e}")))?;
    if i64::try_from(checkpoint.seq).ok() != Some(seq)
        || checkpoint.time_ms != time_ms
        || checkpoint.key_id != key_id
    {
        return Err(corrupt(
            T,
            "body",
            format_args!("checkpoint {seq}: the columns disagree with the body"),
        ));
    }
    Ok(checkpoint)
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
    fn hashes_and_seqs() {
        let hex64 = "ab".repeat(32);
        assert_eq!(hash("audit_records", "hash", &hex64).unwrap(), [0xab; 32]);
        for bad in ["AB".repeat(32), "ab".repeat(31), "zz".repeat(32)] {
            assert!(matches!(
                hash("audit_records", "hash", &bad),
                Err(StoreError::Corrupt(m)) if m.starts_with("audit_records.hash:")
            ));
        }
        assert!(matches!(
            chain_head(0, &hex64),
            Err(StoreError::Corrupt(m)) if m.starts_with("audit_records.seq:")
        ));
        assert_eq!(chain_head(3, &hex64).unwrap().seq, 3);
        assert_eq!(seq_to_db(7).unwrap(), 7);
        assert!(matches!(seq_to_db(u64::MAX), Err(StoreError::Audit(_))));
        assert_eq!(seq_bound(u64::MAX), i64::MAX);
    }

    #[test]
    fn audit_query_limits_and_types() {
        let query = crate::AuditQuery::default();
        assert_eq!(query.effective_limit(), 1000);
        assert_eq!(query.clone().with_limit(5).effective_limit(), 5);
        assert_eq!(query.clone().with_limit(5000).effective_limit(), 1000);
        assert!(
            query
                .clone()
                .with_event_type("dek_created")
                .validate()
                .is_ok()
        );
        assert!(matches!(
            query.with_event_type("dek_create").validate(),
            Err(StoreError::InvalidInput(_))
        ));
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
