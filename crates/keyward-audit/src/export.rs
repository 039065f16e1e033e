//! The JSON Lines export (`docs/audit-format.md` §6): a header line, then record and checkpoint
//! lines in seq order, ending with a checkpoint signed at export time over the last record.

use std::io::Write;

use serde_json::{Map, Value};

use crate::canonical;
use crate::chain_head::ChainHead;
use crate::checkpoint::{Checkpoint, SigningKey};
use crate::error::AuditError;
use crate::fields::{expect_keys, get_i64, get_str, get_u64};
use crate::record::{Record, check_tag};
use crate::redaction::{TenantScope, shown_in_full};

/// The header line's `"type"`.
pub const EXPORT_TYPE: &str = "keyward-audit-export";
/// The export format version of a whole-chain export.
pub const EXPORT_VERSION: u64 = 1;
/// The export format version of a per-tenant export (`docs/audit-format.md` §6.2): its header
/// also names the tenant, its tag and the time range.
pub const TENANT_EXPORT_VERSION: u64 = 2;

/// The first line of an export. Not signed: the verifier checks it against the signed content
/// (`first_seq` against the first record, `last_seq` against the last).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportHeader {
    /// The seq of the first record in the export (1 for the whole chain; more for an export that
    /// starts mid-chain).
    pub first_seq: u64,
    /// The seq of the last record (`first_seq - 1` when the export holds no records).
    pub last_seq: u64,
    /// How many checkpoint lines follow, the final one included. Unsigned like the rest of the
    /// header: it catches a checkpoint line lost or dropped without the header being rewritten.
    pub checkpoints: u64,
    /// When the export was made (Unix milliseconds); the final checkpoint is signed then.
    pub exported_at_ms: i64,
}

impl ExportHeader {
    /// A header for records `first_seq..=last_seq` with `checkpoints` checkpoint lines (the
    /// final one included), exported at `exported_at_ms`.
    pub fn new(first_seq: u64, last_seq: u64, checkpoints: u64, exported_at_ms: i64) -> Self {
        ExportHeader {
            first_seq,
            last_seq,
            checkpoints,
            exported_at_ms,
        }
    }

    /// Canonical JSON of
    /// `{"checkpoints","exported_at_ms","first_seq","last_seq","type":"keyward-audit-export","version":1}`.
    pub fn to_canonical_json(&self) -> Result<String, AuditError> {
        let mut m = Map::new();
        m.insert("checkpoints".into(), Value::from(self.checkpoints));
        m.insert("exported_at_ms".into(), Value::from(self.exported_at_ms));
        m.insert("first_seq".into(), Value::from(self.first_seq));
        m.insert("last_seq".into(), Value::from(self.last_seq));
        m.insert("type".into(), Value::String(EXPORT_TYPE.into()));
        m.insert("version".into(), Value::from(EXPORT_VERSION));
        String::from_utf8(canonical::to_vec(&Value::Object(m))?)
            .map_err(|e| AuditError::Encoding(e.to_string()))
    }

    /// The header line of a per-tenant export (version 2): the fields of
    /// [`ExportHeader::to_canonical_json`] and `from_ms`, `tenant`, `tenant_tag`, `to_ms`.
    pub fn to_canonical_json_scoped(&self, scope: &TenantScope) -> Result<String, AuditError> {
        let mut m = Map::new();
        m.insert("checkpoints".into(), Value::from(self.checkpoints));
        m.insert("exported_at_ms".into(), Value::from(self.exported_at_ms));
        m.insert("first_seq".into(), Value::from(self.first_seq));
        m.insert("from_ms".into(), Value::from(scope.from_ms));
        m.insert("last_seq".into(), Value::from(self.last_seq));
        m.insert("tenant".into(), Value::String(scope.tenant.as_str().into()));
        m.insert("tenant_tag".into(), Value::String(scope.tenant_tag.clone()));
        m.insert("to_ms".into(), Value::from(scope.to_ms));
        m.insert("type".into(), Value::String(EXPORT_TYPE.into()));
        m.insert("version".into(), Value::from(TENANT_EXPORT_VERSION));
        String::from_utf8(canonical::to_vec(&Value::Object(m))?)
            .map_err(|e| AuditError::Encoding(e.to_string()))
    }

    /// Parses a header line strictly (canonical, exactly these fields, version 1,
    /// `1 <= first_seq <= last_seq + 1`). A per-tenant header (version 2) is refused: read it
    /// with [`ExportHeader::parse`].
    pub fn from_canonical_json(text: &str) -> Result<Self, AuditError> {
        match Self::parse(text)? {
            (header, None) => Ok(header),
            (_, Some(_)) => Err(AuditError::Malformed(
                "a per-tenant export header (version 2): read it with ExportHeader::parse".into(),
            )),
        }
    }

    /// Parses a header line strictly: a whole-chain header (version 1), or a per-tenant one
    /// (version 2, with its [`TenantScope`]).
    pub fn parse(text: &str) -> Result<(Self, Option<TenantScope>), AuditError> {
        let value = canonical::parse_strict(text)?;
        let obj = value
            .as_object()
            .ok_or_else(|| AuditError::Malformed("the header must be a JSON object".into()))?;
        if obj.get("type").and_then(Value::as_str) != Some(EXPORT_TYPE) {
            return Err(AuditError::Malformed(format!(
                "the first line must be the export header (type {EXPORT_TYPE:?})"
            )));
        }
        let version = get_u64(obj, "version")?;
        let scope = match version {
            EXPORT_VERSION => {
                expect_keys(
                    obj,
                    &[
                        "checkpoints",
                        "exported_at_ms",
                        "first_seq",
                        "last_seq",
                        "type",
                        "version",
                    ],
                    "header",
                )?;
                None
            }
            TENANT_EXPORT_VERSION => {
                expect_keys(
                    obj,
                    &[
                        "checkpoints",
                        "exported_at_ms",
                        "first_seq",
                        "from_ms",
                        "last_seq",
                        "tenant",
                        "tenant_tag",
                        "to_ms",
                        "type",
                        "version",
                    ],
                    "per-tenant export header",
                )?;
                let tenant = get_str(obj, "tenant")?
                    .parse::<keyward_envelope::TenantId>()
                    .map_err(|e| AuditError::Malformed(format!("header tenant: {e}")))?;
                let tenant_tag = get_str(obj, "tenant_tag")?.to_owned();
                check_tag(&tenant_tag)?;
                let (from_ms, to_ms) = (get_i64(obj, "from_ms")?, get_i64(obj, "to_ms")?);
                if from_ms > to_ms {
                    return Err(AuditError::Malformed(format!(
                        "header range from_ms {from_ms} .. to_ms {to_ms} is empty"
                    )));
                }
                Some(TenantScope::new(tenant, tenant_tag, from_ms, to_ms))
            }
            _ => {
                return Err(AuditError::Malformed(format!(
                    "export version {version} is not supported (this verifier reads versions {EXPORT_VERSION} and {TENANT_EXPORT_VERSION})"
                )));
            }
        };
        let header = ExportHeader {
            first_seq: get_u64(obj, "first_seq")?,
            last_seq: get_u64(obj, "last_seq")?,
            checkpoints: get_u64(obj, "checkpoints")?,
            exported_at_ms: get_i64(obj, "exported_at_ms")?,
        };
        if header.first_seq == 0 || header.first_seq.saturating_sub(1) > header.last_seq {
            return Err(AuditError::Malformed(format!(
                "header range first_seq {} .. last_seq {} is impossible",
                header.first_seq, header.last_seq
            )));
        }
        Ok((header, scope))
    }
}

/// Writes an export, refusing to write lines in an order the verifier would reject.
///
/// ```
/// # use keyward_audit::*;
/// # fn main() -> Result<(), AuditError> {
/// let key = SigningKey::generate()?;
/// let r1 = Record::append(&ChainHead::GENESIS, 1, AuditEvent::AdminAction {
///     actor: "ops".into(), action: "export".into(), detail: String::new() })?;
/// let mut w = ExportWriter::new(Vec::new());
/// w.write_header(&ExportHeader::new(1, 1, 1, 2))?;
/// w.write_record(&r1)?;
/// let bytes = w.finish(&key, 2)?; // final checkpoint over r1
/// let report = verify_export(&bytes[..], &[key.public_key()]).map_err(|f| AuditError::Malformed(f.to_string()))?;
/// assert_eq!(report.records, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ExportWriter<W: Write> {
    out: W,
    header: Option<ExportHeader>,
    /// The tag of the tenant a per-tenant export is for.
    scope_tag: Option<String>,
    /// The last record written, or the head a checkpoint anchored before any record.
    head: Option<ChainHead>,
    checkpoints: u64,
}

impl<W: Write> ExportWriter<W> {
    /// Writes to `out` (wrap files in a `BufWriter`).
    pub fn new(out: W) -> Self {
        ExportWriter {
            out,
            header: None,
            scope_tag: None,
            head: None,
            checkpoints: 0,
        }
    }

    /// Writes the header; must be first and only once.
    pub fn write_header(&mut self, header: &ExportHeader) -> Result<(), AuditError> {
        if self.header.is_some() {
            return Err(AuditError::OutOfOrder(
                "the header was already written".into(),
            ));
        }
        let line = header.to_canonical_json()?;
        self.line(&line)?;
        self.header = Some(*header);
        if header.first_seq == 1 {
            self.head = Some(ChainHead::GENESIS);
        }
        Ok(())
    }

    /// Writes the header of a per-tenant export (§6.2); must be first and only once. The
    /// records are then written with [`ExportWriter::write_record`], which shows the tenant's
    /// in full and redacts the others ([`shown_in_full`]).
    pub fn write_tenant_header(
        &mut self,
        header: &ExportHeader,
        scope: &TenantScope,
    ) -> Result<(), AuditError> {
        if self.header.is_some() {
            return Err(AuditError::OutOfOrder(
                "the header was already written".into(),
            ));
        }
        let line = header.to_canonical_json_scoped(scope)?;
        self.line(&line)?;
        self.header = Some(*header);
        self.scope_tag = Some(scope.tenant_tag.clone());
        if header.first_seq == 1 {
            self.head = Some(ChainHead::GENESIS);
        }
        Ok(())
    }

    /// Writes a record; it must follow the previous one (next seq, matching `prev_hash`), and
    /// the first one must have the header's `first_seq`. In a per-tenant export the record is
    /// written in full or redacted ([`shown_in_full`]); a format-v1 record is refused there.
    pub fn write_record(&mut self, record: &Record) -> Result<(), AuditError> {
        let header = self
            .header
            .ok_or_else(|| AuditError::OutOfOrder("write the header first".into()))?;
        match self.head {
            Some(head) if !record.follows(&head) => {
                return Err(AuditError::OutOfOrder(format!(
                    "record seq {} does not follow seq {}",
                    record.seq(),
                    head.seq
                )));
            }
            None if record.seq() != header.first_seq => {
                return Err(AuditError::OutOfOrder(format!(
                    "the first record has seq {}, the header says {}",
                    record.seq(),
                    header.first_seq
                )));
            }
            _ => {}
        }
        let line = match &self.scope_tag {
            None => record.to_canonical_json(),
            Some(_) if record.version() < 2 => {
                return Err(AuditError::OutOfOrder(format!(
                    "record {} is format v1: a per-tenant export holds format-v2 records only",
                    record.seq()
                )));
            }
            Some(tag) if shown_in_full(record, tag) => record.to_canonical_json(),
            Some(_) => record.to_redacted_json()?,
        };
        self.line(&line)?;
        self.head = Some(record.head());
        Ok(())
    }

    /// Writes a checkpoint; it must cover exactly the last record written.
    pub fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), AuditError> {
        if self.header.is_none() {
            return Err(AuditError::OutOfOrder("write the header first".into()));
        }
        if let Some(head) = self.head
            && head != checkpoint.head()
        {
            return Err(AuditError::OutOfOrder(format!(
                "a checkpoint at seq {} must come right after the record it covers (last record: seq {})",
                checkpoint.seq, head.seq
            )));
        }
        self.line(&checkpoint.to_canonical_json()?)?;
        self.head = Some(checkpoint.head());
        self.checkpoints += 1;
        Ok(())
    }

    /// Signs and writes the final checkpoint over the last record with `key` at `time_ms`,
    /// flushes, and returns the writer.
    pub fn finish(mut self, key: &SigningKey, time_ms: i64) -> Result<W, AuditError> {
        let head = self.head.ok_or_else(|| {
            AuditError::OutOfOrder("nothing to checkpoint: no header, or no record yet".into())
        })?;
        let checkpoint = key.sign_checkpoint(&head, time_ms)?;
        self.write_checkpoint(&checkpoint)?;
        self.into_inner()
    }

    /// Flushes and returns the writer (the caller wrote the final checkpoint itself). Fails if
    /// the number of checkpoints written differs from the header's.
    pub fn into_inner(mut self) -> Result<W, AuditError> {
        if let Some(header) = self.header
            && header.checkpoints != self.checkpoints
        {
            return Err(AuditError::OutOfOrder(format!(
                "the header announced {} checkpoints, {} were written",
                header.checkpoints, self.checkpoints
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn line(&mut self, text: &str) -> Result<(), AuditError> {
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")?;
        Ok(())
    }
}
