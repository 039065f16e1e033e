//! The JSON Lines export (`docs/audit-format.md` §6): a header line, then record and checkpoint
//! lines in seq order, ending with a checkpoint signed at export time over the last record.

use std::io::Write;

use serde_json::{Map, Value};

use crate::canonical;
use crate::chain_head::ChainHead;
use crate::checkpoint::{Checkpoint, SigningKey};
use crate::error::AuditError;
use crate::fields::{expect_keys, get_i64, get_u64};
use crate::record::Record;

/// The header line's `"type"`.
pub const EXPORT_TYPE: &str = "keyward-audit-export";
/// The export format version this crate writes and verifies.
pub const EXPORT_VERSION: u64 = 1;

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

    /// Parses a header line strictly (canonical, exactly these fields, version 1,
    /// `1 <= first_seq <= last_seq + 1`).
    pub fn from_canonical_json(text: &str) -> Result<Self, AuditError> {
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
        if version != EXPORT_VERSION {
            return Err(AuditError::Malformed(format!(
                "export version {version} is not supported (this verifier reads version {EXPORT_VERSION})"
            )));
        }
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
        Ok(header)
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

    /// Writes a record; it must follow the previous one (next seq, matching `prev_hash`), and
    /// the first one must have the header's `first_seq`.
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
        self.line(&record.to_canonical_json())?;
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
