//! Builds exports for the tamper and property tests.

#![allow(
    clippy::unwrap_used,
    dead_code,
    unreachable_pub,
    reason = "test helpers, each test binary uses a subset"
)]

use keyward_audit::*;
use keyward_envelope::{KeyId, TenantId};

pub struct Built {
    /// Export lines, without newlines; `lines[0]` is the header (line 1).
    pub lines: Vec<String>,
    pub key1: PublicKey,
    pub key2: PublicKey,
    /// 1-based line number of each record, indexed by seq (index 0 unused).
    pub record_line: Vec<usize>,
    pub records: Vec<Record>,
    pub sk1: SigningKey,
    pub sk2: SigningKey,
}

impl Built {
    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }

    pub fn text_of(lines: &[String]) -> String {
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }

    pub fn trusted(&self) -> Vec<PublicKey> {
        vec![self.key1]
    }
}

pub fn tenant(i: u64) -> TenantId {
    format!("tenant-{}", i % 3).parse().unwrap()
}

pub fn kid(i: u64) -> KeyId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_be_bytes());
    KeyId::from_bytes(b)
}

/// A varied event for position `i`.
pub fn sample_event(i: u64) -> AuditEvent {
    let t = tenant(i);
    match i % 7 {
        0 => AuditEvent::TenantCreated {
            tenant: t,
            actor: Some(format!("admin-{i}")),
        },
        1 => AuditEvent::DekCreated {
            tenant: t,
            scope_hmac: format!("hmac-sha256:{:064x}", i),
            dek_id: kid(i),
            tenant_key_id: kid(1000 + i),
        },
        2 => AuditEvent::RevocationStateChanged(StateTransition {
            tenant: t,
            binding_id: i as i64,
            from: KeyState::Active,
            to: KeyState::Revoked,
            source: RevocationSource::KmsRefusal,
            actor: None,
            reason: "AccessDeniedException".into(),
            observed_at_ms: 1_700_000_000_000 + i as i64,
        }),
        3 => AuditEvent::RevocationDenials {
            tenant: t,
            second: 1_700_000_000 + i as i64,
            count: i * 11,
        },
        4 => AuditEvent::AdminAction {
            actor: "ops@example.com".into(),
            action: "revoke".into(),
            detail: format!("ticket #{i} \"quoted\" \u{e9}"),
        },
        5 => AuditEvent::UsageSummary {
            tenant: t,
            minute: 1_700_000_040 + 60 * i as i64,
            encrypts: i,
            decrypts: 2 * i,
            bytes_in: 100 * i,
            bytes_out: 90 * i,
            kms_calls: 1,
            cache_hits: i,
            errors: 0,
        },
        _ => AuditEvent::AuthorizationDenied {
            principal: "Service::\"a\"".into(),
            action: "Decrypt".into(),
            tenant: Some(t),
            second: 1_700_000_000 + i64::try_from(i).unwrap_or(0),
            count: i,
        },
    }
}

/// An export of `events.len()` records with a checkpoint after every `every`-th record, a
/// signing-key rotation record at `rotate_at` (confirmed by a checkpoint of the old key right
/// after it), and a final checkpoint by the current key.
pub fn build(events: &[AuditEvent], every: u64, rotate_at: Option<u64>) -> Built {
    let k1 = SigningKey::generate().unwrap();
    let k2 = SigningKey::generate().unwrap();
    let (key1, key2) = (k1.public_key(), k2.public_key());
    let n = events.len() as u64;

    // First pass: records and checkpoints, so the header can announce the count.
    let mut head = ChainHead::GENESIS;
    let mut items: Vec<Result<Record, Checkpoint>> = Vec::new();
    let mut records = Vec::new();
    let mut current = &k1;
    let mut t = 1_700_000_000_000i64;
    for seq in 1..=n {
        t += 1000;
        let event = if Some(seq) == rotate_at {
            AuditEvent::SigningKeyRotated {
                old_key_id: key1.key_id(),
                new_key_id: key2.key_id(),
                new_public_key: key2,
            }
        } else {
            events[(seq - 1) as usize].clone()
        };
        let r = Record::append(&head, t, event).unwrap();
        head = r.head();
        records.push(r.clone());
        items.push(Ok(r));
        if Some(seq) == rotate_at {
            items.push(Err(current.sign_checkpoint(&head, t + 1).unwrap()));
            current = &k2;
        } else if every > 0 && seq % every == 0 {
            items.push(Err(current.sign_checkpoint(&head, t + 1).unwrap()));
        }
    }
    let cps = items.iter().filter(|i| i.is_err()).count() as u64 + 1;
    let export_time = t + 10_000;
    let mut w = ExportWriter::new(Vec::new());
    w.write_header(&ExportHeader::new(1, n, cps, export_time))
        .unwrap();
    let mut record_line = vec![0usize];
    let mut line = 1;
    for item in &items {
        line += 1;
        match item {
            Ok(r) => {
                w.write_record(r).unwrap();
                record_line.push(line);
            }
            Err(c) => w.write_checkpoint(c).unwrap(),
        }
    }
    let bytes = w.finish(current, export_time).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    Built {
        lines: text.lines().map(str::to_owned).collect(),
        key1,
        key2,
        record_line,
        records,
        sk1: k1,
        sk2: k2,
    }
}
