//! Canonical JSON (`docs/audit-format.md` §1): the one byte string that is hashed and signed.
//!
//! - objects: keys sorted by their UTF-8 bytes, no duplicates, `{"k":v,...}` with no whitespace;
//! - arrays: `[v,...]` with no whitespace;
//! - strings: exactly as `serde_json` escapes them (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`,
//!   other U+0000..U+001F as `\u00xx` with lowercase hex; everything else as raw UTF-8);
//! - numbers: integers only, in `i64` or `u64` range, shortest decimal form (no `+`, no leading
//!   zeros, no `-0`, no exponent, no fraction);
//! - `true`, `false`, `null`.
//!
//! Keys are sorted here, explicitly, rather than relying on `serde_json::Map` being a `BTreeMap`:
//! if any crate in the build enables serde_json's `preserve_order` feature the map keeps
//! insertion order instead, and the format must not change with the dependency graph.

use serde_json::Value;

use crate::error::AuditError;

/// Appends the canonical encoding of `value` to `out`.
pub(crate) fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), AuditError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return Err(AuditError::Encoding(format!(
                    "{n} is not an integer: canonical JSON has integers only"
                )));
            }
        }
        Value::String(s) => write_string(s, out)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out)?;
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) -> Result<(), AuditError> {
    serde_json::to_writer(&mut *out, s).map_err(|e| AuditError::Encoding(e.to_string()))
}

/// The canonical encoding of `value`.
pub(crate) fn to_vec(value: &Value) -> Result<Vec<u8>, AuditError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// The canonical encoding of any serialisable value (serialised to a [`Value`] first).
pub(crate) fn to_vec_of<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, AuditError> {
    let v = serde_json::to_value(value).map_err(|e| AuditError::Encoding(e.to_string()))?;
    to_vec(&v)
}

/// Parses `text` as JSON and checks that it is already in canonical form, byte for byte.
///
/// Duplicate keys are caught too: `serde_json` keeps one of them, so the re-encoding is shorter
/// than the input.
pub(crate) fn parse_strict(text: &str) -> Result<Value, AuditError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| AuditError::Malformed(e.to_string()))?;
    let again = to_vec(&value)?;
    if again != text.as_bytes() {
        return Err(AuditError::NotCanonical(first_difference(
            text.as_bytes(),
            &again,
        )));
    }
    Ok(value)
}

/// A short description of where `got` first differs from the canonical `want`.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        let end = (at + 24).min(b.len());
        String::from_utf8_lossy(b.get(at..end).unwrap_or_default()).into_owned()
    };
    format!(
        "differs from the canonical encoding at byte {at}: found {:?}, canonical is {:?}",
        show(got),
        show(want)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_strips_whitespace() {
        let v = json!({"b": 1, "a": {"d": [1, -2, null, true], "c": "x"}});
        assert_eq!(
            to_vec(&v).unwrap(),
            br#"{"a":{"c":"x","d":[1,-2,null,true]},"b":1}"#
        );
    }

    #[test]
    fn escapes_like_serde_json() {
        let v = json!("q\"b\\\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é/\u{2028}");
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            "\"q\\\"b\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}é/\u{2028}\""
        );
    }

    #[test]
    fn rejects_floats() {
        assert!(to_vec(&json!(1.5)).is_err());
        assert!(parse_strict("1.0").is_err());
        assert!(parse_strict("1e3").is_err());
    }

    #[test]
    fn strict_parse_rejects_non_canonical_spellings() {
        assert!(parse_strict(r#"{"a":1,"b":2}"#).is_ok());
        for bad in [
            r#"{"b":2,"a":1}"#,
            r#"{"a": 1}"#,
            r#"{"a":1,"a":1}"#,
            r#"{"a":"\u0041"}"#,
            r#"{"a":"\/"}"#,
            r#"{"a":-0}"#,
            r#"{"a":01}"#,
            "{\"a\":1}\n",
        ] {
            assert!(parse_strict(bad).is_err(), "{bad} accepted");
        }
    }
}
