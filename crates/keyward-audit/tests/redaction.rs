//! Per-tenant exports (`docs/audit-format.md` §3.3, §6.2): a redacted export verifies; any edit,
//! drop, duplication or reordering of any line (full or redacted) fails and names the place; a
//! record of the tenant shown redacted is "withheld"; another tenant's record shown in full is
//! "disclosed"; and the export of tenant A holds nothing of tenant B's events.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::sync::Arc;

use keyward_audit::*;
use keyward_envelope::{KeyId, TenantId};

const A: &str = "alpha-corp";
const B: &str = "bravo-corp";
/// Values that appear only in B's events: none may appear in A's export.
const B_PRINCIPAL: &str = "Service::\"bravo-secret-svc\"";
const B_REFERENCE: &str = "BRAVO-TICKET-77";

fn hasher() -> Arc<IdentifierHasher> {
    Arc::new(IdentifierHasher::new([0x42; 32]))
}

fn tenant(id: &str) -> TenantId {
    id.parse().unwrap()
}

fn access(t: &str, principal: &str, reference: &str) -> AuditEvent {
    AuditEvent::AccessSummary {
        tenant: tenant(t),
        minute: 1_700_000_040,
        principal: principal.into(),
        action: "Decrypt".into(),
        purpose: Some("legal_hold".into()),
        requests: 3,
        items: 3,
        errors: 0,
        bytes: 99,
        first_ms: 1_700_000_040_001,
        last_ms: 1_700_000_040_002,
        references: vec![reference.into()],
        references_truncated: false,
    }
}

fn dek(t: &str, scope: &str) -> AuditEvent {
    AuditEvent::DekCreated {
        tenant: tenant(t),
        scope_hmac: hasher().hash("scope", scope),
        dek_id: KeyId::from_bytes([7; 16]),
        tenant_key_id: KeyId::from_bytes([8; 16]),
    }
}

/// The chain: two format-v1 records (before the upgrade), then format-v2 records of A, of B,
/// deployment-wide ones, and a signing-key rotation confirmed by the old key.
struct Chain {
    records: Vec<Record>,
    old_key: SigningKey,
    new_key: SigningKey,
    /// Seq of the rotation record (a checkpoint by the old key follows it).
    rotation: u64,
    sealer: RecordSealer,
}

fn chain() -> Chain {
    let sealer = RecordSealer::new(hasher());
    let old_key = SigningKey::generate().unwrap();
    let new_key = SigningKey::generate().unwrap();
    let mut records: Vec<Record> = Vec::new();
    let mut head = ChainHead::GENESIS;
    let mut time = 1_000;
    let push = |records: &mut Vec<Record>, r: Record, head: &mut ChainHead| {
        *head = r.head();
        records.push(r);
    };
    for t in [A, B] {
        let r = Record::append(
            &head,
            time,
            AuditEvent::TenantCreated {
                tenant: tenant(t),
                actor: None,
            },
        )
        .unwrap();
        push(&mut records, r, &mut head);
        time += 1_000;
    }
    let v2 = vec![
        dek(A, "alpha-scope"),               // 3
        access(B, B_PRINCIPAL, B_REFERENCE), // 4
        AuditEvent::AdminAction {
            // 5
            actor: "ops".into(),
            action: "set_tenant_policy".into(),
            detail: format!("tenant={B} decrypt_purposes=legal_hold"),
        },
        AuditEvent::SigningKeyRotated {
            // 6
            old_key_id: old_key.public_key().key_id(),
            new_key_id: new_key.public_key().key_id(),
            new_public_key: new_key.public_key(),
        },
        access(A, "Service::\"alpha-svc\"", "ALPHA-1"), // 7
        dek(B, "bravo-scope"),                          // 8
        AuditEvent::UsageSummary {
            // 9
            tenant: tenant(A),
            minute: 1_700_000_040,
            encrypts: 1,
            decrypts: 2,
            bytes_in: 3,
            bytes_out: 4,
            kms_calls: 0,
            cache_hits: 3,
            errors: 0,
        },
        AuditEvent::RevocationDenials {
            // 10
            tenant: tenant(B),
            second: 1_700_000_050,
            count: 5,
        },
    ];
    for event in v2 {
        let r = sealer.append(&head, time, event).unwrap();
        push(&mut records, r, &mut head);
        time += 1_000;
    }
    Chain {
        records,
        old_key,
        new_key,
        rotation: 6,
        sealer,
    }
}

const FROM: i64 = 2_500;
const TO: i64 = 9_500;

/// The per-tenant export of `t` over `FROM..TO`: seqs 3 to 10 (seq 2 is format v1 and seq 10
/// is the first record after the range), the old key's checkpoint after the rotation, and a
/// final checkpoint by the new key.
fn export_for(c: &Chain, t: &str) -> Vec<String> {
    let scope = TenantScope::new(tenant(t), c.sealer.tenant_tag(&tenant(t)), FROM, TO);
    let mut w = ExportWriter::new(Vec::new());
    w.write_tenant_header(&ExportHeader::new(3, 10, 2, 20_000), &scope)
        .unwrap();
    for r in &c.records[2..] {
        w.write_record(r).unwrap();
        if r.seq() == c.rotation {
            w.write_checkpoint(&c.old_key.sign_checkpoint(&r.head(), r.time_ms()).unwrap())
                .unwrap();
        }
    }
    let bytes = w.finish(&c.new_key, 20_000).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn text(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn verify(c: &Chain, lines: &[String]) -> Result<VerifyReport, VerifyFailure> {
    verify_export(text(lines).as_bytes(), &[c.old_key.public_key()])
}

#[track_caller]
fn fails(c: &Chain, lines: &[String]) -> VerifyFailure {
    match verify(c, lines) {
        Ok(r) => panic!("tampered export verified: {r:?}\n{}", text(lines)),
        Err(f) => f,
    }
}

/// 1-based line numbers of the record and redacted lines.
fn record_lines(lines: &[String]) -> Vec<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"type\":\"record\"") || l.contains("\"type\":\"redacted\""))
        .map(|(i, _)| i + 1)
        .collect()
}

fn seq_of(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["seq"].as_u64().unwrap()
}

#[test]
fn a_redacted_per_tenant_export_verifies_and_says_what_it_proves() {
    let c = chain();
    let lines = export_for(&c, A);
    let report = verify(&c, &lines).unwrap();
    assert_eq!(
        (report.first_seq, report.last_seq, report.records),
        (3, 10, 8)
    );
    assert_eq!(report.v2_records, 8);
    let t = report.tenant.unwrap();
    assert_eq!(t.scope.tenant.as_str(), A);
    assert_eq!(t.scope.tenant_tag, c.sealer.tenant_tag(&tenant(A)));
    // A's records: seqs 3, 7, 9 (all in range); redacted: 4, 5, 8, 10; the rotation in full.
    assert_eq!((t.records, t.records_in_range, t.redacted), (3, 3, 4));
    assert_eq!(t.deployment_records, 1);
    assert!(t.tag_confirmed);
    // Seq 10 (time 10000) is after the range: nothing of the range is cut at its end. Seq 3
    // is the range's first record (seq 2 is format v1): the start is not proven.
    assert!(t.ends_after_range());
    assert!(!t.starts_before_range());
    // Which lines are redacted.
    let redacted: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains("\"type\":\"redacted\""))
        .map(|l| seq_of(l))
        .collect();
    assert_eq!(redacted, [4, 5, 8, 10]);
}

#[test]
fn an_export_for_a_holds_nothing_of_b() {
    let c = chain();
    let exported = text(&export_for(&c, A));
    let b_tag = c.sealer.tenant_tag(&tenant(B));
    for secret in [
        B,
        "bravo",
        B_PRINCIPAL,
        "bravo-secret-svc",
        B_REFERENCE,
        &hasher().hash("scope", "bravo-scope"),
        "legal_hold\",\"references\":[\"BRAVO",
        "decrypt_purposes",
    ] {
        assert!(
            !exported.contains(secret),
            "{secret:?} appears in A's export"
        );
    }
    // B's records are there, as redacted lines carrying B's tag (which says nothing without
    // the deployment's identifier key).
    assert!(exported.contains(&b_tag));
    // And the export of B holds none of A's values.
    let for_b = text(&export_for(&c, B));
    for secret in [
        A,
        "alpha-svc",
        "ALPHA-1",
        &hasher().hash("scope", "alpha-scope"),
    ] {
        assert!(!for_b.contains(secret), "{secret:?} appears in B's export");
    }
    verify(&c, &export_for(&c, B)).unwrap();
}

#[test]
fn editing_any_line_fails_at_that_line() {
    let c = chain();
    let lines = export_for(&c, A);
    for n in record_lines(&lines) {
        let mut tampered = lines.clone();
        let seq = seq_of(&lines[n - 1]);
        // Both kinds of line carry time_ms; a full line also carries its event.
        let edited = if lines[n - 1].contains("\"type\":\"record\"") {
            lines[n - 1].replacen("\"requests\":3", "\"requests\":2", 1)
        } else {
            String::new()
        };
        tampered[n - 1] = if edited.is_empty() || edited == lines[n - 1] {
            let t = serde_json::from_str::<serde_json::Value>(&lines[n - 1]).unwrap()["time_ms"]
                .as_i64()
                .unwrap();
            lines[n - 1].replacen(
                &format!("\"time_ms\":{t}"),
                &format!("\"time_ms\":{}", t + 1),
                1,
            )
        } else {
            edited
        };
        let f = fails(&c, &tampered);
        assert_eq!(
            (f.kind, f.line, f.seq),
            (FailureKind::Edited, n, Some(seq)),
            "{f}"
        );
    }
    // A redacted line's digest edited.
    let n = record_lines(&lines)
        .into_iter()
        .find(|n| lines[n - 1].contains("redacted"))
        .unwrap();
    let mut tampered = lines.clone();
    tampered[n - 1] = tampered[n - 1].replacen("\"event_digest\":\"", "\"event_digest\":\"0", 1);
    // (keep 64 hex characters: drop the last digit of the digest)
    let digest_at = tampered[n - 1].find("\"event_digest\":\"").unwrap() + 16;
    tampered[n - 1].remove(digest_at + 64);
    let f = fails(&c, &tampered);
    assert_eq!((f.kind, f.line), (FailureKind::Edited, n), "{f}");
}

#[test]
fn dropping_any_line_fails_and_names_it() {
    let c = chain();
    let lines = export_for(&c, A);
    for n in record_lines(&lines) {
        let seq = seq_of(&lines[n - 1]);
        let mut tampered = lines.clone();
        tampered.remove(n - 1);
        let f = fails(&c, &tampered);
        // Reported at the line that now stands where the dropped one was, naming its seq.
        assert_eq!(f.line, n, "{f}");
        assert!(
            f.to_string().contains(&format!("seq {seq}")),
            "dropping seq {seq}: {f}"
        );
    }
}

#[test]
fn duplicating_any_line_fails_there() {
    let c = chain();
    let lines = export_for(&c, A);
    for n in record_lines(&lines) {
        let seq = seq_of(&lines[n - 1]);
        let mut tampered = lines.clone();
        tampered.insert(n, lines[n - 1].clone());
        let f = fails(&c, &tampered);
        assert_eq!(f.kind, FailureKind::Inserted, "{f}");
        assert!([n, n + 1].contains(&f.line), "duplicate of line {n}: {f}");
        assert_eq!(f.seq, Some(seq), "{f}");
    }
}

#[test]
fn swapping_any_two_adjacent_records_fails_at_the_first() {
    let c = chain();
    let lines = export_for(&c, A);
    let records = record_lines(&lines);
    for pair in records.windows(2) {
        let (x, y) = (pair[0], pair[1]);
        if y != x + 1 {
            continue; // a checkpoint line between them
        }
        let mut tampered = lines.clone();
        tampered.swap(x - 1, y - 1);
        let f = fails(&c, &tampered);
        assert_eq!((f.kind, f.line), (FailureKind::Reordered, x), "{f}");
    }
}

#[test]
fn a_record_of_the_tenant_shown_redacted_is_withheld() {
    let c = chain();
    let lines = export_for(&c, A);
    // Seq 7 is A's access summary: hide it as if it were someone else's.
    let n = lines.iter().position(|l| l.contains("ALPHA-1")).unwrap() + 1;
    let mut tampered = lines.clone();
    tampered[n - 1] = c.records[6].to_redacted_json().unwrap();
    let f = fails(&c, &tampered);
    assert_eq!(
        (f.kind, f.line, f.seq),
        (FailureKind::Withheld, n, Some(7)),
        "{f}"
    );
    assert!(
        f.to_string()
            .contains("record of tenant alpha-corp withheld"),
        "{f}"
    );
}

#[test]
fn a_record_of_another_tenant_shown_in_full_is_disclosed() {
    let c = chain();
    let lines = export_for(&c, A);
    let n = lines.iter().position(|l| seq_of_opt(l) == Some(4)).unwrap() + 1;
    let mut tampered = lines.clone();
    tampered[n - 1] = c.records[3].to_canonical_json();
    let f = fails(&c, &tampered);
    assert_eq!(
        (f.kind, f.line, f.seq),
        (FailureKind::Disclosed, n, Some(4)),
        "{f}"
    );
    // A deployment-wide record other than a rotation shown in full: disclosed too.
    let n = lines.iter().position(|l| seq_of_opt(l) == Some(5)).unwrap() + 1;
    let mut tampered = lines.clone();
    tampered[n - 1] = c.records[4].to_canonical_json();
    let f = fails(&c, &tampered);
    assert_eq!(
        (f.kind, f.line, f.seq),
        (FailureKind::Disclosed, n, Some(5)),
        "{f}"
    );
}

fn seq_of_opt(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?["seq"].as_u64()
}

#[test]
fn a_header_naming_another_tag_fails() {
    // A lying server states B's tag as A's, hoping to show B's records and hide A's.
    let c = chain();
    let lines = export_for(&c, A);
    let mut tampered = lines.clone();
    tampered[0] = tampered[0].replace(
        &c.sealer.tenant_tag(&tenant(A)),
        &c.sealer.tenant_tag(&tenant(B)),
    );
    let f = fails(&c, &tampered);
    assert!(
        matches!(f.kind, FailureKind::Disclosed | FailureKind::Withheld),
        "{f}"
    );
    assert_eq!(f.seq, Some(3), "A's first record no longer matches: {f}");
}

#[test]
fn a_hidden_rotation_leaves_the_new_key_untrusted() {
    // Redacting the signing_key_rotated record (allowed for no other reason) hides the new key.
    let c = chain();
    let lines = export_for(&c, A);
    let n = lines
        .iter()
        .position(|l| l.contains("signing_key_rotated"))
        .unwrap()
        + 1;
    let mut tampered = lines.clone();
    tampered[n - 1] = c.records[5].to_redacted_json().unwrap();
    let f = fails(&c, &tampered);
    assert_eq!(f.kind, FailureKind::UnknownSigningKey, "{f}");
}

#[test]
fn format_v1_records_cannot_be_in_a_per_tenant_export() {
    let c = chain();
    let scope = TenantScope::new(tenant(A), c.sealer.tenant_tag(&tenant(A)), 0, TO);
    let mut w = ExportWriter::new(Vec::new());
    w.write_tenant_header(&ExportHeader::new(1, 3, 1, 20_000), &scope)
        .unwrap();
    assert!(matches!(
        w.write_record(&c.records[0]),
        Err(AuditError::OutOfOrder(_))
    ));
    assert!(c.records[0].to_redacted_json().is_err());
    // Hand-made: a v1 line in a per-tenant export is malformed.
    let mut lines = export_for(&c, A);
    lines.insert(1, c.records[1].to_canonical_json());
    lines[0] = lines[0].replace("\"first_seq\":3", "\"first_seq\":2");
    let f = fails(&c, &lines);
    assert_eq!(
        (f.kind, f.line, f.seq),
        (FailureKind::Malformed, 2, Some(2)),
        "{f}"
    );
}

#[test]
fn the_whole_chain_export_of_a_mixed_chain_verifies_and_checks_tags() {
    let c = chain();
    let write = |records: &[Record]| {
        let mut w = ExportWriter::new(Vec::new());
        w.write_header(&ExportHeader::new(1, records.len() as u64, 2, 20_000))
            .unwrap();
        for r in records {
            w.write_record(r).unwrap();
            if r.seq() == c.rotation {
                w.write_checkpoint(&c.old_key.sign_checkpoint(&r.head(), r.time_ms()).unwrap())
                    .unwrap();
            }
        }
        w.finish(&c.new_key, 20_000).unwrap()
    };
    let bytes = write(&c.records);
    let report = verify_export(&bytes[..], &[c.old_key.public_key()]).unwrap();
    assert_eq!((report.records, report.v2_records), (10, 8));
    assert!(report.tenant.is_none());
    // Every record in full: B's values are there (the whole chain is for global auditors).
    assert!(String::from_utf8(bytes).unwrap().contains(B_REFERENCE));

    // A record of A carrying B's tag (mis-tagged at write time) is caught by the whole-chain
    // verifier.
    let mut records = c.records.clone();
    records.truncate(9);
    let wrong = Record::append_v2(
        &records.last().unwrap().head(),
        10_000,
        access(A, "Service::\"alpha-svc\"", "ALPHA-2"),
        Some(c.sealer.tenant_tag(&tenant(B))),
        [1; SALT_LEN],
    )
    .unwrap();
    records.push(wrong);
    let f = verify_export(&write(&records)[..], &[c.old_key.public_key()]).unwrap_err();
    assert_eq!((f.kind, f.seq), (FailureKind::Disclosed, Some(10)), "{f}");
}

#[test]
fn v2_records_round_trip_and_pin_their_hash_inputs() {
    let c = chain();
    for r in &c.records[2..] {
        assert_eq!(r.version(), 2);
        assert!(r.verify_hash());
        assert_eq!(
            &Record::from_canonical_json(&r.to_canonical_json()).unwrap(),
            r
        );
        assert_eq!(
            &Record::from_stored(&r.canonical_bytes(), *r.hash()).unwrap(),
            r
        );
    }
    // A tag that does not match the event's tenant-ness is refused at append.
    assert!(Record::append_v2(&ChainHead::GENESIS, 1, dek(A, "s"), None, [0; SALT_LEN]).is_err());
    // Different salts, different digests and hashes for the same event.
    let x = Record::append_v2(
        &ChainHead::GENESIS,
        1,
        dek(A, "s"),
        Some(c.sealer.tenant_tag(&tenant(A))),
        [0; SALT_LEN],
    )
    .unwrap();
    let y = Record::append_v2(
        &ChainHead::GENESIS,
        1,
        dek(A, "s"),
        Some(c.sealer.tenant_tag(&tenant(A))),
        [1; SALT_LEN],
    )
    .unwrap();
    assert_ne!(x.event_digest(), y.event_digest());
    assert_ne!(x.hash(), y.hash());
}
