//! `verify_export_all`: every problem of an export, each once; the first is the one
//! `verify_export` names (rules: `docs/audit-format.md` §7).

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use common::{Built, build, sample_event};
use keyward_audit::*;

const N: u64 = 52;

fn export() -> Built {
    let events: Vec<AuditEvent> = (0..N).map(sample_event).collect();
    build(&events, 10, Some(25))
}

fn all(lines: &[String], trusted: &[PublicKey]) -> Verification {
    verify_export_all(Built::text_of(lines).as_bytes(), trusted)
}

fn found(v: &Verification) -> Vec<(FailureKind, usize, Option<u64>)> {
    v.problems.iter().map(|p| (p.kind, p.line, p.seq)).collect()
}

/// 0-based index into `lines` of 1-based line `n`.
fn idx(n: usize) -> usize {
    n - 1
}

/// Changes record `seq`'s time without fixing its hash.
fn edit(b: &Built, lines: &mut [String], seq: usize) {
    let r = &b.records[seq - 1];
    let n = idx(b.record_line[seq]);
    lines[n] = lines[n].replace(
        &format!("\"time_ms\":{}", r.time_ms()),
        &format!("\"time_ms\":{}", r.time_ms() + 1),
    );
}

#[test]
fn an_edit_does_not_hide_a_later_deletion() {
    let b = export();
    let mut lines = b.lines.clone();
    edit(&b, &mut lines, 17);
    let deleted_at = b.record_line[33];
    lines.remove(idx(deleted_at));
    let v = all(&lines, &b.trusted());
    assert_eq!(
        found(&v),
        [
            (FailureKind::Edited, b.record_line[17], Some(17)),
            (FailureKind::Deleted, deleted_at, Some(34)),
        ],
        "{:#?}",
        v.problems
    );
    assert!(v.report.is_none() && v.read_to_end);
    // The first-failure API names the first of them.
    let first = verify_export(Built::text_of(&lines).as_bytes(), &b.trusted()).unwrap_err();
    assert_eq!(first, v.problems[0]);
}

#[test]
fn each_single_tampering_is_reported_once_and_first_as_verify_export_does() {
    let b = export();
    let mut cases: Vec<(&str, Vec<String>)> = Vec::new();
    let mut lines = b.lines.clone();
    edit(&b, &mut lines, 5);
    cases.push(("edited", lines));
    let mut lines = b.lines.clone();
    lines.remove(idx(b.record_line[33]));
    cases.push(("deleted", lines));
    let mut lines = b.lines.clone();
    lines.swap(idx(b.record_line[33]), idx(b.record_line[34]));
    cases.push(("swapped", lines));
    let mut lines = b.lines.clone();
    let forged = Record::append(
        &b.records[32].head(),
        b.records[33].time_ms(),
        sample_event(4),
    )
    .unwrap();
    lines.insert(idx(b.record_line[33] + 1), forged.to_canonical_json());
    cases.push(("inserted", lines));
    let mut lines = b.lines.clone();
    let cp = idx(b.record_line[30] + 1);
    let at = lines[cp].find("\"signature\":\"").unwrap() + 13;
    let flipped = if &lines[cp][at..=at] == "0" { "1" } else { "0" };
    lines[cp].replace_range(at..=at, flipped);
    cases.push(("bad signature", lines));
    let mut lines = b.lines.clone();
    lines.remove(idx(b.record_line[40] + 1));
    cases.push(("checkpoint line removed", lines));
    let mut lines = b.lines.clone();
    lines[idx(b.record_line[5])] =
        lines[idx(b.record_line[5])].replacen("{\"event\":", "{ \"event\":", 1);
    cases.push(("malformed record", lines));
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
    cases.push(("tail rechained", lines));

    for (name, lines) in cases {
        assert_ne!(lines, b.lines, "{name}");
        let v = all(&lines, &b.trusted());
        let first = verify_export(Built::text_of(&lines).as_bytes(), &b.trusted()).unwrap_err();
        // (The rechained tail's one problem also counts the later checkpoints.)
        assert_eq!(
            found(&v),
            [(first.kind, first.line, first.seq)],
            "{name}: {:#?}",
            v.problems
        );
    }
}

#[test]
fn a_rechained_tail_is_one_problem_naming_the_later_checkpoints() {
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
    let v = all(&lines, &b.trusted());
    assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
    let detail = &v.problems[0].detail;
    // Checkpoints at 20, 25, 30, 40, 50 and the final one: 5 after the first.
    assert!(
        detail.contains("a record in seqs 11 to 20 was altered")
            && detail.ends_with("the 5 later checkpoint(s) disagree with the records too"),
        "{detail}"
    );
}

#[test]
fn problems_at_the_end_never_cite_a_line_past_it() {
    let b = export();
    let len = b.lines.len();
    let lines = &b.lines[..len - 1]; // the final checkpoint dropped
    let v = all(lines, &b.trusted());
    assert!(!v.problems.is_empty());
    for p in &v.problems {
        assert!(p.end_of_export, "{p}");
        let text = p.to_string();
        assert!(
            text.starts_with(&format!("end of export (after line {})", len - 1)),
            "{text}"
        );
        assert!(!text.contains(&format!("line {len}")), "{text}");
    }
    let empty = verify_export_all(&b""[..], &b.trusted());
    assert_eq!(
        empty.problems[0].to_string(),
        "end of export (the file is empty): malformed line: empty export: no header line"
    );
}

#[test]
fn a_bad_header_stops_the_check_and_says_so() {
    let b = export();
    let v = all(&b.lines[1..], &b.trusted());
    assert_eq!(found(&v), [(FailureKind::Malformed, 1, None)]);
    assert!(!v.read_to_end);
}

#[test]
fn an_untouched_export_has_no_problem_and_the_same_report() {
    let b = export();
    let v = all(&b.lines, &b.trusted());
    assert!(v.problems.is_empty() && v.read_to_end);
    let report = verify_export(b.text().as_bytes(), &b.trusted()).unwrap();
    assert_eq!(v.report, Some(report));
}
