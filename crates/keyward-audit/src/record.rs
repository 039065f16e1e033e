//! [`Record`]: the hash-chained audit record (`docs/audit-format.md` §3), which follows a
//! [`ChainHead`].

use aws_lc_rs::digest;
use serde_json::{Map, Value};

use crate::canonical;
use crate::chain_head::ChainHead;
use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::fields::{decode_hash, expect_keys, get_i64, get_str, get_u64};

/// Domain-separation prefix of the record hash input.
pub const RECORD_DOMAIN: &[u8] = b"keyward-audit-v1\n";

/// One audit record: `seq`, `time_ms`, `prev_hash`, `event`, and `hash` =
/// SHA-256(`"keyward-audit-v1\n"` || [`canonical_bytes`](Record::canonical_bytes)).
///
/// Fields are read through accessors so that a `Record` built by [`Record::append`] is always
/// internally consistent; one parsed from storage or an export keeps the stored hash, which
/// [`Record::verify_hash`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    seq: u64,
    time_ms: i64,
    prev_hash: [u8; 32],
    event: AuditEvent,
    hash: [u8; 32],
    /// Canonical JSON of the event alone (kept so encoding never fails after construction).
    event_json: String,
}

impl Record {
    /// The record that follows `head`: seq `head.seq + 1`, `prev_hash = head.hash`.
    pub fn append(head: &ChainHead, time_ms: i64, event: AuditEvent) -> Result<Record, AuditError> {
        let seq = head
            .seq
            .checked_add(1)
            .ok_or_else(|| AuditError::Encoding("sequence number overflow".into()))?;
        let event_json = encode_event(&event)?;
        let mut record = Record {
            seq,
            time_ms,
            prev_hash: head.hash,
            event,
            hash: [0u8; 32],
            event_json,
        };
        record.hash = record.compute_hash();
        Ok(record)
    }

    /// Sequence number, from 1, without gaps.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the record was appended (Unix milliseconds).
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    /// The previous record's hash (all zero for seq 1).
    pub fn prev_hash(&self) -> &[u8; 32] {
        &self.prev_hash
    }

    /// What happened.
    pub fn event(&self) -> &AuditEvent {
        &self.event
    }

    /// The record's hash as stored (see [`Record::verify_hash`]).
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The chain head after this record.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash,
        }
    }

    /// Whether this record directly follows `head` (next seq and matching `prev_hash`).
    pub fn follows(&self, head: &ChainHead) -> bool {
        head.seq.checked_add(1) == Some(self.seq) && self.prev_hash == head.hash
    }

    /// The hash input after the domain prefix: canonical JSON of
    /// `{"event","prev_hash","seq","time_ms"}`. This is what the store persists.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        body_bytes(&self.event_json, &self.prev_hash, self.seq, self.time_ms).into_bytes()
    }

    /// Whether the stored hash equals SHA-256(`"keyward-audit-v1\n"` || canonical bytes).
    pub fn verify_hash(&self) -> bool {
        self.compute_hash() == self.hash
    }

    fn compute_hash(&self) -> [u8; 32] {
        record_hash(&self.canonical_bytes())
    }

    /// The export line: canonical JSON of
    /// `{"event","hash","prev_hash","seq","time_ms","type":"record"}`, without a newline.
    pub fn to_canonical_json(&self) -> String {
        format!(
            "{{\"event\":{},\"hash\":\"{}\",\"prev_hash\":\"{}\",\"seq\":{},\"time_ms\":{},\"type\":\"record\"}}",
            self.event_json,
            hex::encode(self.hash),
            hex::encode(self.prev_hash),
            self.seq,
            self.time_ms
        )
    }

    /// Parses an export line ([`Record::to_canonical_json`]). Strict: the text must be exactly
    /// its own canonical re-encoding ("not canonical" otherwise) and the event must be one this
    /// version knows. The stored hash is kept, not recomputed: check it with
    /// [`Record::verify_hash`].
    pub fn from_canonical_json(text: &str) -> Result<Record, AuditError> {
        let value = canonical::parse_strict(text)?;
        let raw = RawRecord::from_value(&value)?;
        raw.into_typed()
    }

    /// Rebuilds a record from what the store persisted: its canonical bytes and its hash.
    /// Strict like [`Record::from_canonical_json`]; the hash is kept as given.
    pub fn from_stored(canonical_bytes: &[u8], hash: [u8; 32]) -> Result<Record, AuditError> {
        let text = std::str::from_utf8(canonical_bytes)
            .map_err(|_| AuditError::Malformed("canonical bytes are not UTF-8".into()))?;
        let value = canonical::parse_strict(text)?;
        let obj = value
            .as_object()
            .ok_or_else(|| AuditError::Malformed("a record must be a JSON object".into()))?;
        expect_keys(
            obj,
            &["event", "prev_hash", "seq", "time_ms"],
            "record body",
        )?;
        let mut raw = RawRecord::from_fields(obj)?;
        raw.hash = hash;
        raw.into_typed()
    }
}

/// SHA-256(`"keyward-audit-v1\n"` || `body`).
pub(crate) fn record_hash(body: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(RECORD_DOMAIN);
    ctx.update(body);
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn body_bytes(event_json: &str, prev_hash: &[u8; 32], seq: u64, time_ms: i64) -> String {
    format!(
        "{{\"event\":{event_json},\"prev_hash\":\"{}\",\"seq\":{seq},\"time_ms\":{time_ms}}}",
        hex::encode(prev_hash)
    )
}

fn encode_event(event: &AuditEvent) -> Result<String, AuditError> {
    let bytes = canonical::to_vec_of(event)?;
    String::from_utf8(bytes).map_err(|e| AuditError::Encoding(e.to_string()))
}

/// A record line parsed without interpreting its event: what the verifier checks, so that an
/// export containing event types newer than the verifier still verifies.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) seq: u64,
    pub(crate) time_ms: i64,
    pub(crate) prev_hash: [u8; 32],
    pub(crate) hash: [u8; 32],
    pub(crate) event: Value,
    /// Canonical JSON of the event.
    pub(crate) event_json: String,
}

impl RawRecord {
    /// From an export line's value: exactly the keys event, hash, prev_hash, seq, time_ms, type.
    pub(crate) fn from_value(value: &Value) -> Result<RawRecord, AuditError> {
        let obj = value
            .as_object()
            .ok_or_else(|| AuditError::Malformed("a record must be a JSON object".into()))?;
        expect_keys(
            obj,
            &["event", "hash", "prev_hash", "seq", "time_ms", "type"],
            "record",
        )?;
        if obj.get("type").and_then(Value::as_str) != Some("record") {
            return Err(AuditError::Malformed("type must be \"record\"".into()));
        }
        let mut raw = RawRecord::from_fields(obj)?;
        raw.hash = decode_hash(get_str(obj, "hash")?, "hash")?;
        Ok(raw)
    }

    fn from_fields(obj: &Map<String, Value>) -> Result<RawRecord, AuditError> {
        let event = obj
            .get("event")
            .cloned()
            .ok_or_else(|| AuditError::Malformed("missing event".into()))?;
        if event.get("type").and_then(Value::as_str).is_none() {
            return Err(AuditError::Malformed(
                "event must be an object with a string \"type\"".into(),
            ));
        }
        let event_json = String::from_utf8(canonical::to_vec(&event)?)
            .map_err(|e| AuditError::Encoding(e.to_string()))?;
        Ok(RawRecord {
            seq: get_u64(obj, "seq")?,
            time_ms: get_i64(obj, "time_ms")?,
            prev_hash: decode_hash(get_str(obj, "prev_hash")?, "prev_hash")?,
            hash: [0u8; 32],
            event,
            event_json,
        })
    }

    pub(crate) fn event_type(&self) -> &str {
        self.event.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// SHA-256 over the record's canonical bytes.
    pub(crate) fn recompute_hash(&self) -> [u8; 32] {
        record_hash(
            body_bytes(&self.event_json, &self.prev_hash, self.seq, self.time_ms).as_bytes(),
        )
    }

    /// The event as this version's [`AuditEvent`]; its re-encoding must reproduce the input.
    pub(crate) fn typed_event(&self) -> Result<AuditEvent, AuditError> {
        let event: AuditEvent = serde_json::from_value(self.event.clone())
            .map_err(|e| AuditError::Malformed(format!("event {:?}: {e}", self.event_type())))?;
        if encode_event(&event)? != self.event_json {
            return Err(AuditError::NotCanonical(format!(
                "event {:?} does not re-encode to the same bytes",
                self.event_type()
            )));
        }
        Ok(event)
    }

    fn into_typed(self) -> Result<Record, AuditError> {
        let event = self.typed_event()?;
        Ok(Record {
            seq: self.seq,
            time_ms: self.time_ms,
            prev_hash: self.prev_hash,
            event,
            hash: self.hash,
            event_json: self.event_json,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn event() -> AuditEvent {
        AuditEvent::AdminAction {
            actor: "ops@example".into(),
            action: "rotate".into(),
            detail: "quarterly".into(),
        }
    }

    #[test]
    fn append_links_and_roundtrips() {
        let r1 = Record::append(&ChainHead::GENESIS, 10, event()).unwrap();
        assert_eq!(r1.seq(), 1);
        assert_eq!(r1.prev_hash(), &[0u8; 32]);
        assert!(r1.verify_hash());
        assert!(r1.follows(&ChainHead::GENESIS));
        let r2 = Record::append(&r1.head(), 11, event()).unwrap();
        assert_eq!(r2.seq(), 2);
        assert_eq!(r2.prev_hash(), r1.hash());
        assert!(r2.follows(&r1.head()));
        assert!(!r2.follows(&ChainHead::GENESIS));

        let line = r2.to_canonical_json();
        assert_eq!(Record::from_canonical_json(&line).unwrap(), r2);
        let stored = Record::from_stored(&r2.canonical_bytes(), *r2.hash()).unwrap();
        assert_eq!(stored, r2);
        // canonical bytes are themselves canonical JSON
        let v: Value = serde_json::from_slice(&r2.canonical_bytes()).unwrap();
        assert_eq!(canonical::to_vec(&v).unwrap(), r2.canonical_bytes());
    }

    #[test]
    fn stored_hash_is_kept_and_checked() {
        let r1 = Record::append(&ChainHead::GENESIS, 10, event()).unwrap();
        let forged = Record::from_stored(&r1.canonical_bytes(), [1; 32]).unwrap();
        assert!(!forged.verify_hash());
    }

    #[test]
    fn strict_parsing() {
        let r1 = Record::append(&ChainHead::GENESIS, 10, event()).unwrap();
        let line = r1.to_canonical_json();
        let spaced = line.replacen(':', ": ", 1);
        assert!(matches!(
            Record::from_canonical_json(&spaced),
            Err(AuditError::NotCanonical(_))
        ));
        let upper = line.replace(&hex::encode(r1.hash()), &hex::encode_upper(r1.hash()));
        assert!(Record::from_canonical_json(&upper).is_err());
        let extra = line.replace("\"type\":\"record\"", "\"type\":\"record\",\"z\":1");
        assert!(Record::from_canonical_json(&extra).is_err());
        let unknown = line.replace("admin_action", "future_event");
        assert!(Record::from_canonical_json(&unknown).is_err());
        let missing_null = Record::append(
            &ChainHead::GENESIS,
            1,
            AuditEvent::TenantCreated {
                tenant: "acme".parse().unwrap(),
                actor: None,
            },
        )
        .unwrap()
        .to_canonical_json()
        .replace("\"actor\":null,", "");
        assert!(Record::from_canonical_json(&missing_null).is_err());
    }
}
