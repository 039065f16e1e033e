//! Every kind of tampering with an export is named exactly, at the exact line
//! (rules: `docs/audit-format.md` §7).

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use common::{Built, build, sample_event};
use keyward_audit::*;

const N: u64 = 52;
const ROTATE_AT: u64 = 25;

fn export() -> Built {
    let events: Vec<AuditEvent> = (0..N).map(sample_event).collect();
    build(&events, 10, Some(ROTATE_AT))
}

fn verify(lines: &[String], trusted: &[PublicKey]) -> Result<VerifyReport, VerifyFailure> {
    verify_export(Built::text_of(lines).as_bytes(), trusted)
}

#[track_caller]
fn expect(
    lines: &[String],
    trusted: &[PublicKey],
    kind: FailureKind,
    line: usize,
    seq: Option<u64>,
) -> VerifyFailure {
    match verify(lines, trusted) {
        Ok(r) => panic!("tampered export verified: {r:?}"),
        Err(f) => {
            assert_eq!((f.kind, f.line, f.seq), (kind, line, seq), "{f}");
            f
        }
    }
}

/// 0-based index into `lines` of 1-based line `n`.
fn idx(n: usize) -> usize {
    n - 1
}

#[test]
fn untouched_export_verifies() {
    let b = export();
    let report = verify(&b.lines, &b.trusted()).unwrap();
    assert_eq!(report.records, N);
    assert_eq!((report.first_seq, report.last_seq), (1, N));
    // 10, 20, 25 (rotation), 30, 40, 50, final
    assert_eq!(report.checkpoints, 7);
    assert_eq!(report.head_hash, *b.records.last().unwrap().hash());
    assert_eq!(report.signing_keys_seen, vec![b.key1, b.key2]);
    assert_eq!(report.mid_chain_prev_hash, None);
    assert_eq!(report.unknown_events, 0);
    // Trusting both keys up front also verifies.
    verify(&b.lines, &[b.key1, b.key2]).unwrap();
}

#[test]
fn edited_field_without_rehash_is_edited_at_that_line() {
    let b = export();
    let mut lines = b.lines.clone();
    let n = b.record_line[17];
    let r = &b.records[16];
    lines[idx(n)] = lines[idx(n)].replace(
        &format!("\"time_ms\":{}", r.time_ms()),
        &format!("\"time_ms\":{}", r.time_ms() + 1),
    );
    assert_ne!(lines, b.lines);
    let f = expect(&lines, &b.trusted(), FailureKind::Edited, n, Some(17));
    assert!(
        f.to_string().starts_with(&format!(
            "line {n} (seq 17): record was edited: stored hash {} != recomputed ",
            hex::encode(r.hash())
        )),
        "{f}"
    );
}

#[test]
fn edited_record_with_recomputed_hash_is_edited_at_that_line() {
    // The next record's prev_hash still holds the original hash: the link after the edited
    // record breaks, and since the next record is consistent with its own successor, the
    // verifier blames the edited record.
    let b = export();
    let mut lines = b.lines.clone();
    let forged = Record::append(
        &b.records[15].head(),
        b.records[16].time_ms(),
        AuditEvent::AdminAction {
            actor: "mallory".into(),
            action: "nothing to see".into(),
            detail: String::new(),
        },
    )
    .unwrap();
    let n = b.record_line[17];
    lines[idx(n)] = forged.to_canonical_json();
    let f = expect(&lines, &b.trusted(), FailureKind::Edited, n, Some(17));
    assert!(f.detail.contains(&hex::encode(b.records[16].hash())), "{f}");
}

#[test]
fn edited_record_before_a_checkpoint_is_caught_by_the_signed_head() {
    let b = export();
    let mut lines = b.lines.clone();
    let forged = Record::append(
        &b.records[18].head(),
        b.records[19].time_ms(),
        sample_event(99),
    )
    .unwrap();
    lines[idx(b.record_line[20])] = forged.to_canonical_json();
    expect(
        &lines,
        &b.trusted(),
        FailureKind::Edited,
        b.record_line[20] + 1,
        Some(20),
    );
}

#[test]
fn rechained_tail_is_caught_by_the_next_checkpoint() {
    // Edit record 17 and recompute every later hash: the chain is consistent again, but the
    // checkpoint at seq 20 signed the original head.
    let b = export();
    let mut lines = b.lines.clone();
    let mut head = b.records[15].head();
    for seq in 17..=N {
        let r = &b.records[(seq - 1) as usize];
        let event = if seq == 17 {
            sample_event(1234)
        } else {
            r.event().clone()
        };
        let again = Record::append(&head, r.time_ms(), event).unwrap();
        head = again.head();
        lines[idx(b.record_line[seq as usize])] = again.to_canonical_json();
    }
    let f = expect(
        &lines,
        &b.trusted(),
        FailureKind::Edited,
        b.record_line[20] + 1,
        Some(20),
    );
    assert!(f.detail.contains("seqs 11 to 20"), "{f}");
}

#[test]
fn deleted_record_is_deleted_at_the_gap() {
    let b = export();
    let mut lines = b.lines.clone();
    let n = b.record_line[33];
    lines.remove(idx(n));
    let f = expect(&lines, &b.trusted(), FailureKind::Deleted, n, Some(34));
    assert!(f.detail.contains("expected seq 33, found seq 34"), "{f}");
}

#[test]
fn swapped_records_are_reordered() {
    let b = export();
    let mut lines = b.lines.clone();
    let (a, c) = (b.record_line[33], b.record_line[34]);
    lines.swap(idx(a), idx(c));
    expect(&lines, &b.trusted(), FailureKind::Reordered, a, Some(34));
}

#[test]
fn moved_checkpoint_is_reordered() {
    let b = export();
    let mut lines = b.lines.clone();
    let cp = b.record_line[30] + 1;
    lines.swap(idx(cp), idx(cp + 1)); // checkpoint 30 now after record 31
    expect(
        &lines,
        &b.trusted(),
        FailureKind::Reordered,
        cp + 1,
        Some(30),
    );
}

#[test]
fn forged_record_with_valid_link_is_inserted_at_its_line() {
    let b = export();
    let mut lines = b.lines.clone();
    let forged = Record::append(
        &b.records[32].head(),
        b.records[33].time_ms(),
        sample_event(4),
    )
    .unwrap();
    let at = b.record_line[33] + 1;
    lines.insert(idx(at), forged.to_canonical_json());
    expect(&lines, &b.trusted(), FailureKind::Inserted, at, Some(34));
}

#[test]
fn forged_record_with_wrong_link_is_inserted_at_its_line() {
    let b = export();
    let mut lines = b.lines.clone();
    let forged = Record::append(
        &ChainHead {
            seq: 33,
            hash: [7; 32],
        },
        b.records[33].time_ms(),
        sample_event(4),
    )
    .unwrap();
    let at = b.record_line[33] + 1;
    lines.insert(idx(at), forged.to_canonical_json());
    expect(&lines, &b.trusted(), FailureKind::Inserted, at, Some(34));
}

#[test]
fn forged_record_before_a_checkpoint_is_inserted() {
    let b = export();
    let mut lines = b.lines.clone();
    let forged = Record::append(
        &b.records[39].head(),
        b.records[39].time_ms(),
        sample_event(4),
    )
    .unwrap();
    let at = b.record_line[40] + 1; // between record 40 and its checkpoint
    lines.insert(idx(at), forged.to_canonical_json());
    expect(&lines, &b.trusted(), FailureKind::Inserted, at, Some(41));
}

#[test]
fn truncated_tail_is_truncated() {
    let b = export();
    let len = b.lines.len();
    // Last lines: record 50, checkpoint 50, record 51, record 52, final checkpoint.
    let lines = &b.lines[..len - 2]; // ends with record 51, uncovered
    expect(
        lines,
        &b.trusted(),
        FailureKind::Truncated,
        len - 1,
        Some(51),
    );
    // Cut back to a checkpoint boundary: every record is covered, but the header says 52.
    let lines = &b.lines[..len - 3];
    let f = expect(
        lines,
        &b.trusted(),
        FailureKind::Truncated,
        len - 2,
        Some(50),
    );
    assert!(f.detail.contains("up to seq 52"), "{f}");
}

#[test]
fn dropped_final_checkpoint_is_truncated() {
    let b = export();
    let len = b.lines.len();
    let f = expect(
        &b.lines[..len - 1],
        &b.trusted(),
        FailureKind::Truncated,
        len,
        Some(N),
    );
    assert!(f.detail.contains("covers seq 50"), "{f}");
}

#[test]
fn records_missing_before_the_final_checkpoint_are_truncated() {
    let b = export();
    let mut lines = b.lines.clone();
    let len = lines.len();
    lines.remove(len - 2); // record 52
    lines.remove(len - 3); // record 51
    expect(
        &lines,
        &b.trusted(),
        FailureKind::Truncated,
        len - 2,
        Some(N),
    );
}

#[test]
fn flipped_signature_byte_is_bad_signature() {
    let b = export();
    let mut lines = b.lines.clone();
    let n = b.record_line[30] + 1;
    let mut cp = Checkpoint::from_canonical_json(&lines[idx(n)]).unwrap();
    cp.signature[10] ^= 0x01;
    lines[idx(n)] = cp.to_canonical_json().unwrap();
    expect(&lines, &b.trusted(), FailureKind::BadSignature, n, Some(30));
}

#[test]
fn edited_checkpoint_field_is_bad_signature() {
    let b = export();
    let mut lines = b.lines.clone();
    let n = b.record_line[10] + 1;
    let mut cp = Checkpoint::from_canonical_json(&lines[idx(n)]).unwrap();
    cp.time_ms += 1;
    lines[idx(n)] = cp.to_canonical_json().unwrap();
    expect(&lines, &b.trusted(), FailureKind::BadSignature, n, Some(10));
}

#[test]
fn untrusted_key_is_unknown_signing_key() {
    let b = export();
    let stranger = SigningKey::generate().unwrap().public_key();
    let first_cp = b.record_line[10] + 1;
    expect(
        &b.lines,
        &[stranger],
        FailureKind::UnknownSigningKey,
        first_cp,
        Some(10),
    );
    // The new key alone does not vouch for checkpoints made before it existed.
    expect(
        &b.lines,
        &[b.key2],
        FailureKind::UnknownSigningKey,
        first_cp,
        Some(10),
    );
    // A final checkpoint re-signed by an attacker's key.
    let mut lines = b.lines.clone();
    let attacker = SigningKey::generate().unwrap();
    let cp = attacker
        .sign_checkpoint(&b.records.last().unwrap().head(), 1)
        .unwrap();
    let last = lines.len();
    lines[idx(last)] = cp.to_canonical_json().unwrap();
    expect(
        &lines,
        &b.trusted(),
        FailureKind::UnknownSigningKey,
        last,
        Some(N),
    );
}

#[test]
fn rotation_without_a_checkpoint_by_the_old_key_is_not_trusted() {
    let b = export();
    let mut lines = b.lines.clone();
    let confirm = b.record_line[ROTATE_AT as usize] + 1;
    lines.remove(idx(confirm));
    // Next checkpoint (seq 30, by the new key) is now one line earlier.
    let f = expect(
        &lines,
        &b.trusted(),
        FailureKind::UnknownSigningKey,
        b.record_line[30],
        Some(30),
    );
    assert!(
        f.detail.contains("introduced by the rotation at seq 25"),
        "{f}"
    );
}

#[test]
fn rotated_out_key_may_not_sign_later() {
    let b = export();
    let mut lines = b.lines.clone();
    let n = b.record_line[40] + 1;
    let cp = b.sk1.sign_checkpoint(&b.records[39].head(), 5).unwrap();
    lines[idx(n)] = cp.to_canonical_json().unwrap();
    let f = expect(
        &lines,
        &b.trusted(),
        FailureKind::UnknownSigningKey,
        n,
        Some(40),
    );
    assert!(f.detail.contains("rotated out"), "{f}");
    // ...while the new key signing there is fine.
    let mut lines = b.lines.clone();
    let cp = b.sk2.sign_checkpoint(&b.records[39].head(), 5).unwrap();
    lines[idx(n)] = cp.to_canonical_json().unwrap();
    verify(&lines, &b.trusted()).unwrap();
}

#[test]
fn removed_or_duplicated_checkpoint_line_is_named() {
    let b = export();
    let mut lines = b.lines.clone();
    lines.remove(idx(b.record_line[40] + 1));
    let eof = lines.len() + 1;
    expect(&lines, &b.trusted(), FailureKind::Deleted, eof, None);

    let mut lines = b.lines.clone();
    let cp = lines[idx(b.record_line[40] + 1)].clone();
    lines.insert(idx(b.record_line[40] + 1), cp);
    let eof = lines.len() + 1;
    expect(&lines, &b.trusted(), FailureKind::Inserted, eof, None);
}

#[test]
fn malformed_lines() {
    let b = export();
    expect(&b.lines[1..], &b.trusted(), FailureKind::Malformed, 1, None);
    let mut lines = b.lines.clone();
    let n = b.record_line[5];
    lines[idx(n)] = lines[idx(n)].replacen("{\"event\":", "{ \"event\":", 1);
    let f = expect(&lines, &b.trusted(), FailureKind::Malformed, n, None);
    assert!(f.detail.contains("not canonical"), "{f}");
    let mut lines = b.lines.clone();
    lines.insert(3, String::new());
    expect(&lines, &b.trusted(), FailureKind::Malformed, 4, None);
    let mut lines = b.lines.clone();
    lines.insert(3, b.lines[0].clone());
    expect(&lines, &b.trusted(), FailureKind::Malformed, 4, None);
    assert_eq!(
        verify_export(&b"garbage"[..], &b.trusted())
            .unwrap_err()
            .kind,
        FailureKind::Malformed
    );
}

#[test]
fn mid_chain_export_verifies_and_its_first_record_is_checked_against_the_header() {
    let events: Vec<AuditEvent> = (0..N).map(sample_event).collect();
    let b = build(&events, 10, None);
    let first = 21u64;
    let write = |skip_first: bool| {
        let mut w = ExportWriter::new(Vec::new());
        // checkpoints at 30, 40, 50 and the final one
        w.write_header(&ExportHeader::new(first, N, 4, 9)).unwrap();
        for r in &b.records[(first - 1) as usize..] {
            if !(skip_first && r.seq() == first) {
                w.write_record(r).unwrap();
            }
            if r.seq() % 10 == 0 {
                w.write_checkpoint(&b.sk1.sign_checkpoint(&r.head(), 1).unwrap())
                    .unwrap();
            }
        }
        String::from_utf8(w.finish(&b.sk1, 9).unwrap()).unwrap()
    };
    let text = write(false);
    let report = verify_export(text.as_bytes(), &[b.key1]).unwrap();
    assert_eq!(
        (report.first_seq, report.last_seq, report.records),
        (21, N, N - 20)
    );
    assert_eq!(report.mid_chain_prev_hash, Some(*b.records[19].hash()));

    // Deleting the first record is caught through the header's first_seq.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.remove(1);
    expect(&lines, &[b.key1], FailureKind::Deleted, 2, Some(22));
}

#[test]
fn export_writer_refuses_out_of_order_lines() {
    let events: Vec<AuditEvent> = (0..5).map(sample_event).collect();
    let b = build(&events, 0, None);
    let mut w = ExportWriter::new(Vec::new());
    assert!(w.write_record(&b.records[0]).is_err());
    w.write_header(&ExportHeader::new(1, 5, 1, 0)).unwrap();
    assert!(w.write_record(&b.records[1]).is_err());
    w.write_record(&b.records[0]).unwrap();
    let cp = b.sk1.sign_checkpoint(&b.records[1].head(), 0).unwrap();
    assert!(w.write_checkpoint(&cp).is_err());
    assert!(w.into_inner().is_err()); // header announced one checkpoint
}
