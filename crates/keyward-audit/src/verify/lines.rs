//! The export's lines as the verifier reads them: in order, with the lines read ahead to name a
//! problem kept for their turn ([`Lines`], [`scan`]), and each line parsed by its type.

use std::collections::VecDeque;
use std::io::BufRead;

use serde_json::Value;

use crate::canonical;
use crate::checkpoint::Checkpoint;
use crate::export::EXPORT_TYPE;
use crate::record::RawRecord;

pub(super) type LineItem = (usize, Result<String, String>);

/// The export's lines, with a buffer of the lines read ahead by [`scan`] so that
/// [`verify_export_all`] checks them in their turn.
pub(super) struct Lines<'a> {
    inner: Box<dyn Iterator<Item = LineItem> + 'a>,
    ahead: VecDeque<LineItem>,
    /// Keep read-ahead lines (only needed when verification goes on after a problem).
    replay: bool,
}

impl<'a> Lines<'a> {
    pub(super) fn new(reader: impl BufRead + 'a, replay: bool) -> Self {
        Lines {
            inner: Box::new(
                reader
                    .lines()
                    .enumerate()
                    .map(|(i, l)| (i + 1, l.map_err(|e| e.to_string()))),
            ),
            ahead: VecDeque::new(),
            replay,
        }
    }

    pub(super) fn next(&mut self) -> Option<LineItem> {
        self.ahead.pop_front().or_else(|| self.inner.next())
    }
}

/// A later line, parsed only as far as classification needs.
#[derive(Debug)]
pub(super) struct Peek {
    pub(super) line: usize,
    pub(super) seq: u64,
    pub(super) prev_hash: Option<String>,
}

/// Reads the rest of the export, returning the first record line that satisfies `want`, and
/// whether any record line was seen at all. Used only once a failure is certain, to name it.
pub(super) fn scan(
    lines: &mut Lines<'_>,
    mut want: impl FnMut(&Peek) -> bool,
) -> (Option<Peek>, bool) {
    let mut any = false;
    let mut index = 0;
    loop {
        let item = if index < lines.ahead.len() {
            index += 1;
            lines.ahead.get(index - 1).cloned()
        } else {
            let item = lines.inner.next();
            if lines.replay
                && let Some(item) = &item
            {
                lines.ahead.push_back(item.clone());
                index += 1;
            }
            item
        };
        let Some((line, text)) = item else {
            return (None, any);
        };
        let Some(peek) = peek_record(line, text) else {
            continue;
        };
        any = true;
        if want(&peek) {
            return (Some(peek), true);
        }
    }
}

pub(super) fn peek_record(line: usize, text: Result<String, String>) -> Option<Peek> {
    let v = serde_json::from_str::<Value>(&text.ok()?).ok()?;
    if !matches!(
        v.get("type").and_then(Value::as_str),
        Some("record" | "redacted")
    ) {
        return None;
    }
    Some(Peek {
        line,
        seq: v.get("seq").and_then(Value::as_u64)?,
        prev_hash: v
            .get("prev_hash")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

pub(super) enum Parsed {
    Header,
    Record(RawRecord),
    Checkpoint(Checkpoint),
}

pub(super) fn parse_line(text: &str) -> Result<Parsed, String> {
    let value = canonical::parse_strict(text).map_err(|e| e.to_string())?;
    match value.get("type").and_then(Value::as_str) {
        Some("record" | "redacted") => RawRecord::from_value(&value)
            .map(Parsed::Record)
            .map_err(|e| e.to_string()),
        Some("checkpoint") => Checkpoint::from_value(&value)
            .map(Parsed::Checkpoint)
            .map_err(|e| e.to_string()),
        Some(EXPORT_TYPE) => Ok(Parsed::Header),
        Some(other) => Err(format!("unknown line type {other:?}")),
        None => Err("a line must be a JSON object with a string \"type\"".into()),
    }
}
