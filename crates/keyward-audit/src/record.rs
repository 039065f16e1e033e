//! [`Record`]: the hash-chained audit record (`docs/audit-format.md` §3), which follows a
//! [`ChainHead`].

use aws_lc_rs::digest;
use serde_json::{Map, Value};

use crate::canonical;
use crate::chain_head::ChainHead;
use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::fields::{decode_hash, expect_keys, get_i64, get_str, get_u64};

/// Domain-separation prefix of the record hash input of a format-v1 record.
pub const RECORD_DOMAIN: &[u8] = b"keyward-audit-v1\n";

/// Domain-separation prefix of the record hash input of a format-v2 record
/// (`docs/audit-format.md` §3.3).
pub const RECORD_DOMAIN_V2: &[u8] = b"keyward-audit-v2\n";

/// Domain-separation prefix of a format-v2 record's `event_digest`.
pub const EVENT_DIGEST_DOMAIN: &[u8] = b"keyward-audit-event-v2\n";

/// Length of a format-v2 record's salt.
pub const SALT_LEN: usize = 16;

/// How a record is hashed (`docs/audit-format.md` §3, §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Format {
    /// `hash = SHA-256("keyward-audit-v1\n" || {"event","prev_hash","seq","time_ms"})`: the hash
    /// covers the event bytes, so the record cannot be shown without its event.
    V1,
    /// `hash = SHA-256("keyward-audit-v2\n" || {"event_digest","prev_hash","seq","tenant_tag",
    /// "time_ms"})` with `event_digest = SHA-256("keyward-audit-event-v2\n" || salt || event)`:
    /// the record can be redacted to its digest and still be checked.
    V2 {
        salt: [u8; SALT_LEN],
        tenant_tag: Option<String>,
    },
}

/// One audit record: `seq`, `time_ms`, `prev_hash`, `event`, and `hash`.
///
/// Format v1 (records written before per-tenant exports existed): `hash` =
/// SHA-256(`"keyward-audit-v1\n"` || [`canonical_bytes`](Record::canonical_bytes)). Format v2
/// ([`Record::append_v2`], [`RecordSealer`](crate::RecordSealer)) adds a per-record random
/// `salt` and a `tenant_tag`, and hashes a salted digest of the event instead of the event, so
/// that a per-tenant export can show another tenant's record as a redacted line that still
/// verifies (`docs/audit-format.md` §3.3).
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
    format: Format,
}

impl Record {
    /// The format-v1 record that follows `head`: seq `head.seq + 1`, `prev_hash = head.hash`.
    pub fn append(head: &ChainHead, time_ms: i64, event: AuditEvent) -> Result<Record, AuditError> {
        Self::build(head, time_ms, event, Format::V1)
    }

    /// The format-v2 record that follows `head`, with the given `tenant_tag` (the
    /// [`IdentifierHasher`](crate::IdentifierHasher) digest of the event's tenant, kind
    /// `"tenant"`; `None` for an event about no tenant) and `salt` (16 random bytes, fresh for
    /// every record). [`RecordSealer::append`](crate::RecordSealer::append) computes both.
    pub fn append_v2(
        head: &ChainHead,
        time_ms: i64,
        event: AuditEvent,
        tenant_tag: Option<String>,
        salt: [u8; SALT_LEN],
    ) -> Result<Record, AuditError> {
        if let Some(tag) = &tenant_tag {
            check_tag(tag)?;
        }
        if event.tenant().is_some() != tenant_tag.is_some() {
            return Err(AuditError::Malformed(format!(
                "a {} event {} a tenant, so its tenant_tag must be {}",
                event.event_type(),
                if event.tenant().is_some() {
                    "names"
                } else {
                    "names no"
                },
                if event.tenant().is_some() {
                    "set"
                } else {
                    "null"
                },
            )));
        }
        Self::build(head, time_ms, event, Format::V2 { salt, tenant_tag })
    }

    fn build(
        head: &ChainHead,
        time_ms: i64,
        event: AuditEvent,
        format: Format,
    ) -> Result<Record, AuditError> {
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
            format,
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

    /// The record format: 1 or 2 (`docs/audit-format.md` §3, §3.3).
    pub fn version(&self) -> u8 {
        match self.format {
            Format::V1 => 1,
            Format::V2 { .. } => 2,
        }
    }

    /// A format-v2 record's salt; `None` for format v1.
    pub fn salt(&self) -> Option<&[u8; SALT_LEN]> {
        match &self.format {
            Format::V1 => None,
            Format::V2 { salt, .. } => Some(salt),
        }
    }

    /// A format-v2 record's tenant tag (`hmac-sha256:…`); `None` for format v1 and for
    /// records about no tenant.
    pub fn tenant_tag(&self) -> Option<&str> {
        match &self.format {
            Format::V1 => None,
            Format::V2 { tenant_tag, .. } => tenant_tag.as_deref(),
        }
    }

    /// A format-v2 record's `event_digest`; `None` for format v1.
    pub fn event_digest(&self) -> Option<[u8; 32]> {
        self.salt().map(|salt| event_digest(salt, &self.event_json))
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

    /// What the store persists. Format v1: canonical JSON of
    /// `{"event","prev_hash","seq","time_ms"}` (the hash input after the domain prefix).
    /// Format v2: canonical JSON of `{"event","prev_hash","salt","seq","tenant_tag","time_ms"}`,
    /// everything the hash is computed from.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        match &self.format {
            Format::V1 => {
                body_bytes(&self.event_json, &self.prev_hash, self.seq, self.time_ms).into_bytes()
            }
            Format::V2 { salt, tenant_tag } => format!(
                "{{\"event\":{},\"prev_hash\":\"{}\",\"salt\":\"{}\",\"seq\":{},\"tenant_tag\":{},\"time_ms\":{}}}",
                self.event_json,
                hex::encode(self.prev_hash),
                hex::encode(salt),
                self.seq,
                tag_json(tenant_tag.as_deref()),
                self.time_ms
            )
            .into_bytes(),
        }
    }

    /// Whether the stored hash equals the hash computed from the record's content.
    pub fn verify_hash(&self) -> bool {
        self.compute_hash() == self.hash
    }

    fn compute_hash(&self) -> [u8; 32] {
        match &self.format {
            Format::V1 => record_hash(&self.canonical_bytes()),
            Format::V2 { salt, tenant_tag } => record_hash_v2(
                &event_digest(salt, &self.event_json),
                &self.prev_hash,
                self.seq,
                tenant_tag.as_deref(),
                self.time_ms,
            ),
        }
    }

    /// The export line, without a newline. Format v1: canonical JSON of
    /// `{"event","hash","prev_hash","seq","time_ms","type":"record"}`; format v2: of
    /// `{"event","hash","prev_hash","salt","seq","tenant_tag","time_ms","type":"record"}`.
    pub fn to_canonical_json(&self) -> String {
        match &self.format {
            Format::V1 => format!(
                "{{\"event\":{},\"hash\":\"{}\",\"prev_hash\":\"{}\",\"seq\":{},\"time_ms\":{},\"type\":\"record\"}}",
                self.event_json,
                hex::encode(self.hash),
                hex::encode(self.prev_hash),
                self.seq,
                self.time_ms
            ),
            Format::V2 { salt, tenant_tag } => format!(
                "{{\"event\":{},\"hash\":\"{}\",\"prev_hash\":\"{}\",\"salt\":\"{}\",\"seq\":{},\"tenant_tag\":{},\"time_ms\":{},\"type\":\"record\"}}",
                self.event_json,
                hex::encode(self.hash),
                hex::encode(self.prev_hash),
                hex::encode(salt),
                self.seq,
                tag_json(tenant_tag.as_deref()),
                self.time_ms
            ),
        }
    }

    /// The redacted export line of a format-v2 record (`docs/audit-format.md` §6.2): canonical
    /// JSON of `{"event_digest","hash","prev_hash","seq","tenant_tag","time_ms","type":"redacted"}`,
    /// without a newline. Nothing of the event is in it but its salted digest. A format-v1
    /// record cannot be redacted (its hash covers the event bytes): an error.
    pub fn to_redacted_json(&self) -> Result<String, AuditError> {
        let Format::V2 { salt, tenant_tag } = &self.format else {
            return Err(AuditError::Malformed(format!(
                "record {} is format v1: its hash covers its event, it cannot be redacted",
                self.seq
            )));
        };
        Ok(redacted_line(
            &event_digest(salt, &self.event_json),
            &self.hash,
            &self.prev_hash,
            self.seq,
            tenant_tag.as_deref(),
            self.time_ms,
        ))
    }

    /// Parses a full export line ([`Record::to_canonical_json`], either format). Strict: the
    /// text must be exactly its own canonical re-encoding ("not canonical" otherwise) and the
    /// event must be one this version knows. The stored hash is kept, not recomputed: check it
    /// with [`Record::verify_hash`].
    pub fn from_canonical_json(text: &str) -> Result<Record, AuditError> {
        let value = canonical::parse_strict(text)?;
        let raw = RawRecord::from_value(&value)?;
        raw.into_typed()
    }

    /// Rebuilds a record from what the store persisted: its canonical bytes (either format)
    /// and its hash. Strict like [`Record::from_canonical_json`]; the hash is kept as given.
    pub fn from_stored(canonical_bytes: &[u8], hash: [u8; 32]) -> Result<Record, AuditError> {
        let text = std::str::from_utf8(canonical_bytes)
            .map_err(|_| AuditError::Malformed("canonical bytes are not UTF-8".into()))?;
        let value = canonical::parse_strict(text)?;
        let obj = value
            .as_object()
            .ok_or_else(|| AuditError::Malformed("a record must be a JSON object".into()))?;
        let mut raw = if obj.contains_key("salt") {
            expect_keys(
                obj,
                &["event", "prev_hash", "salt", "seq", "tenant_tag", "time_ms"],
                "format-v2 record body",
            )?;
            RawRecord::from_fields(obj, true)?
        } else {
            expect_keys(
                obj,
                &["event", "prev_hash", "seq", "time_ms"],
                "record body",
            )?;
            RawRecord::from_fields(obj, false)?
        };
        raw.hash = hash;
        raw.into_typed()
    }
}

/// SHA-256(`"keyward-audit-v1\n"` || `body`).
pub(crate) fn record_hash(body: &[u8]) -> [u8; 32] {
    sha256(&[RECORD_DOMAIN, body])
}

/// SHA-256(`"keyward-audit-v2\n"` || canonical
/// `{"event_digest","prev_hash","seq","tenant_tag","time_ms"}`).
fn record_hash_v2(
    event_digest: &[u8; 32],
    prev_hash: &[u8; 32],
    seq: u64,
    tenant_tag: Option<&str>,
    time_ms: i64,
) -> [u8; 32] {
    let body = format!(
        "{{\"event_digest\":\"{}\",\"prev_hash\":\"{}\",\"seq\":{seq},\"tenant_tag\":{},\"time_ms\":{time_ms}}}",
        hex::encode(event_digest),
        hex::encode(prev_hash),
        tag_json(tenant_tag)
    );
    sha256(&[RECORD_DOMAIN_V2, body.as_bytes()])
}

/// SHA-256(`"keyward-audit-event-v2\n"` || salt || canonical event JSON).
fn event_digest(salt: &[u8; SALT_LEN], event_json: &str) -> [u8; 32] {
    sha256(&[EVENT_DIGEST_DOMAIN, salt, event_json.as_bytes()])
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A redacted line (`docs/audit-format.md` §6.2).
fn redacted_line(
    event_digest: &[u8; 32],
    hash: &[u8; 32],
    prev_hash: &[u8; 32],
    seq: u64,
    tenant_tag: Option<&str>,
    time_ms: i64,
) -> String {
    format!(
        "{{\"event_digest\":\"{}\",\"hash\":\"{}\",\"prev_hash\":\"{}\",\"seq\":{seq},\"tenant_tag\":{},\"time_ms\":{time_ms},\"type\":\"redacted\"}}",
        hex::encode(event_digest),
        hex::encode(hash),
        hex::encode(prev_hash),
        tag_json(tenant_tag)
    )
}

/// A tenant tag as a JSON value: the string (already checked to need no escaping), or `null`.
fn tag_json(tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("\"{tag}\""),
        None => "null".to_owned(),
    }
}

/// A tenant tag is `hmac-sha256:` and 64 lowercase hex characters
/// ([`IdentifierHasher::hash`](crate::IdentifierHasher::hash) with kind `"tenant"`).
pub(crate) fn check_tag(tag: &str) -> Result<(), AuditError> {
    let ok = tag
        .strip_prefix(crate::identifier::IDENTIFIER_HASH_PREFIX)
        .is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(AuditError::Malformed(
            "tenant_tag must be null or \"hmac-sha256:\" and 64 lowercase hex characters".into(),
        ))
    }
}

fn get_tag(obj: &Map<String, Value>) -> Result<Option<String>, AuditError> {
    match obj.get("tenant_tag") {
        Some(Value::Null) => Ok(None),
        Some(Value::String(tag)) => {
            check_tag(tag)?;
            Ok(Some(tag.clone()))
        }
        _ => Err(AuditError::Malformed(
            "tenant_tag must be null or a string".into(),
        )),
    }
}

fn get_salt(obj: &Map<String, Value>) -> Result<[u8; SALT_LEN], AuditError> {
    let text = get_str(obj, "salt")?;
    let mut out = [0u8; SALT_LEN];
    if text.len() != 2 * SALT_LEN || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(AuditError::Malformed(
            "salt must be 32 lowercase hex characters".into(),
        ));
    }
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| AuditError::Malformed(format!("salt: {e}")))?;
    Ok(out)
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

/// What a record line holds besides seq, time, links and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawFormat {
    /// A full format-v1 record.
    V1,
    /// A full format-v2 record.
    V2 {
        salt: [u8; SALT_LEN],
        tenant_tag: Option<String>,
    },
    /// A redacted format-v2 record: its event is not shown, only its digest.
    Redacted {
        tenant_tag: Option<String>,
        event_digest: [u8; 32],
    },
}

/// A record line parsed without interpreting its event: what the verifier checks, so that an
/// export containing event types newer than the verifier still verifies.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) seq: u64,
    pub(crate) time_ms: i64,
    pub(crate) prev_hash: [u8; 32],
    pub(crate) hash: [u8; 32],
    /// The event (`Value::Null` for a redacted line).
    pub(crate) event: Value,
    /// Canonical JSON of the event (empty for a redacted line).
    pub(crate) event_json: String,
    pub(crate) format: RawFormat,
}

impl RawRecord {
    /// From an export line's value: a full record (`"type":"record"`: exactly the keys event,
    /// hash, prev_hash, seq, time_ms, type, plus salt and tenant_tag in format v2) or a
    /// redacted one (`"type":"redacted"`: event_digest, hash, prev_hash, seq, tenant_tag,
    /// time_ms, type).
    pub(crate) fn from_value(value: &Value) -> Result<RawRecord, AuditError> {
        let obj = value
            .as_object()
            .ok_or_else(|| AuditError::Malformed("a record must be a JSON object".into()))?;
        match obj.get("type").and_then(Value::as_str) {
            Some("record") => {}
            Some("redacted") => return Self::from_redacted(obj),
            _ => {
                return Err(AuditError::Malformed(
                    "type must be \"record\" or \"redacted\"".into(),
                ));
            }
        }
        let v2 = obj.contains_key("salt");
        if v2 {
            expect_keys(
                obj,
                &[
                    "event",
                    "hash",
                    "prev_hash",
                    "salt",
                    "seq",
                    "tenant_tag",
                    "time_ms",
                    "type",
                ],
                "format-v2 record",
            )?;
        } else {
            expect_keys(
                obj,
                &["event", "hash", "prev_hash", "seq", "time_ms", "type"],
                "record",
            )?;
        }
        let mut raw = RawRecord::from_fields(obj, v2)?;
        raw.hash = decode_hash(get_str(obj, "hash")?, "hash")?;
        Ok(raw)
    }

    fn from_redacted(obj: &Map<String, Value>) -> Result<RawRecord, AuditError> {
        expect_keys(
            obj,
            &[
                "event_digest",
                "hash",
                "prev_hash",
                "seq",
                "tenant_tag",
                "time_ms",
                "type",
            ],
            "redacted record",
        )?;
        Ok(RawRecord {
            seq: get_u64(obj, "seq")?,
            time_ms: get_i64(obj, "time_ms")?,
            prev_hash: decode_hash(get_str(obj, "prev_hash")?, "prev_hash")?,
            hash: decode_hash(get_str(obj, "hash")?, "hash")?,
            event: Value::Null,
            event_json: String::new(),
            format: RawFormat::Redacted {
                tenant_tag: get_tag(obj)?,
                event_digest: decode_hash(get_str(obj, "event_digest")?, "event_digest")?,
            },
        })
    }

    fn from_fields(obj: &Map<String, Value>, v2: bool) -> Result<RawRecord, AuditError> {
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
        let format = if v2 {
            RawFormat::V2 {
                salt: get_salt(obj)?,
                tenant_tag: get_tag(obj)?,
            }
        } else {
            RawFormat::V1
        };
        Ok(RawRecord {
            seq: get_u64(obj, "seq")?,
            time_ms: get_i64(obj, "time_ms")?,
            prev_hash: decode_hash(get_str(obj, "prev_hash")?, "prev_hash")?,
            hash: [0u8; 32],
            event,
            event_json,
            format,
        })
    }

    /// The event's type; empty for a redacted line.
    pub(crate) fn event_type(&self) -> &str {
        self.event.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// Whether the line is redacted.
    pub(crate) fn is_redacted(&self) -> bool {
        matches!(self.format, RawFormat::Redacted { .. })
    }

    /// SHA-256 over the record's content, by its format.
    pub(crate) fn recompute_hash(&self) -> [u8; 32] {
        match &self.format {
            RawFormat::V1 => record_hash(
                body_bytes(&self.event_json, &self.prev_hash, self.seq, self.time_ms).as_bytes(),
            ),
            RawFormat::V2 { salt, tenant_tag } => record_hash_v2(
                &event_digest(salt, &self.event_json),
                &self.prev_hash,
                self.seq,
                tenant_tag.as_deref(),
                self.time_ms,
            ),
            RawFormat::Redacted {
                tenant_tag,
                event_digest,
            } => record_hash_v2(
                event_digest,
                &self.prev_hash,
                self.seq,
                tenant_tag.as_deref(),
                self.time_ms,
            ),
        }
    }

    /// The event as this version's [`AuditEvent`]; its re-encoding must reproduce the input.
    pub(crate) fn typed_event(&self) -> Result<AuditEvent, AuditError> {
        if self.is_redacted() {
            return Err(AuditError::Malformed("a redacted line has no event".into()));
        }
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
        let format = match self.format {
            RawFormat::V1 => Format::V1,
            RawFormat::V2 { salt, tenant_tag } => Format::V2 { salt, tenant_tag },
            RawFormat::Redacted { .. } => {
                return Err(AuditError::Malformed("a redacted line has no event".into()));
            }
        };
        Ok(Record {
            seq: self.seq,
            time_ms: self.time_ms,
            prev_hash: self.prev_hash,
            event,
            hash: self.hash,
            event_json: self.event_json,
            format,
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
