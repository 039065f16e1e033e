//! `audit_export`: the audit export's verifier and line parsers (`crates/keyward-audit`:
//! `verify.rs`, `export.rs`, `record.rs`, `checkpoint.rs`). Selector 0: a whole export through
//! [`keyward_audit::verify_export`], trusting the RFC 8032 §7.1 test 1 key (the key of the golden
//! files and of the seed exports); 1: a record line; 2: a checkpoint line; 3: a header line;
//! 4: a record as the store keeps it (canonical bytes); 5: a public key in text form.
//!
//! Invariants: a verified export reports a consistent, gap-free range (`records = last_seq -
//! first_seq + 1`; with records, a checkpoint and `head_hash` from the input); a failure names a line
//! of the input (or one past the end) and says what is wrong; every accepted line is its own
//! canonical encoding (the parsers are strict), and an accepted public key text is its key's
//! text form.

use keyward_audit::{Checkpoint, ExportHeader, PublicKey, Record, verify_export};

/// RFC 8032 §7.1 test 1 public key, the signer of the golden files and seed exports.
pub const TRUSTED_KEY: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

fn trusted() -> PublicKey {
    use base64::Engine as _;
    let text = format!(
        "{}{}",
        keyward_audit::PUBLIC_KEY_TEXT_PREFIX,
        base64::engine::general_purpose::STANDARD.encode(TRUSTED_KEY)
    );
    PublicKey::from_text(&text).unwrap()
}

pub fn run(data: &[u8]) {
    let Some((selector, rest)) = crate::select(data, 6) else {
        return;
    };
    if selector == 0 {
        return export(rest);
    }
    let Some(text) = crate::text(rest) else {
        return;
    };
    match selector {
        1 => {
            if let Ok(record) = Record::from_canonical_json(text) {
                assert_eq!(record.to_canonical_json(), text);
            }
        }
        2 => {
            if let Ok(checkpoint) = Checkpoint::from_canonical_json(text) {
                assert_eq!(checkpoint.to_canonical_json().unwrap(), text);
            }
        }
        3 => {
            if let Ok(header) = ExportHeader::from_canonical_json(text) {
                assert_eq!(header.to_canonical_json().unwrap(), text);
                assert!(
                    header.first_seq >= 1 && header.first_seq <= header.last_seq.saturating_add(1)
                );
            }
        }
        4 => {
            if let Ok(record) = Record::from_stored(rest, [0; 32]) {
                assert_eq!(record.canonical_bytes(), rest);
                assert_eq!(record.hash(), &[0; 32]);
            }
        }
        _ => {
            if let Ok(key) = PublicKey::from_text(text) {
                assert_eq!(key.to_text(), text.trim());
            }
        }
    }
}

fn export(data: &[u8]) {
    let lines = data.split(|&b| b == b'\n').count();
    match verify_export(data, &[trusted()]) {
        Ok(report) => {
            assert!(report.first_seq >= 1 && report.first_seq <= report.last_seq.saturating_add(1));
            // Gap-free: one record per seq (wrapping: the range may end at u64::MAX).
            assert_eq!(
                report.records,
                report
                    .last_seq
                    .wrapping_sub(report.first_seq)
                    .wrapping_add(1)
            );
            if report.records > 0 {
                // The last record is covered by a verified checkpoint, and its hash is in the input.
                assert!(report.checkpoints >= 1 && !report.signing_keys_seen.is_empty());
                assert!(contains(data, hex::encode(report.head_hash).as_bytes()));
            }
            if report.first_seq == 1 {
                assert!(report.mid_chain_prev_hash.is_none());
            }
        }
        Err(failure) => {
            assert!(
                failure.line >= 1 && failure.line <= lines + 1,
                "failure at line {} of {lines}",
                failure.line
            );
            assert!(!failure.detail.is_empty());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
