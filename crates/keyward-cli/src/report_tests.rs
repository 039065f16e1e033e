//! Unit tests of the report engine (`report.rs`): times, attribution of denials, the
//! per-replica answer, and unknown tenants.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use keyward_audit::{AuditEvent, KeyState, RevocationSource, StateTransition};

use super::*;

fn transition(from: KeyState, to: KeyState, observed_at_ms: i64) -> StateTransition {
    StateTransition {
        tenant: "acme".parse().unwrap(),
        binding_id: 1,
        from,
        to,
        source: RevocationSource::Explicit,
        actor: Some("ops".into()),
        reason: "test".into(),
        observed_at_ms,
    }
}

fn entry(seq: u64, time_ms: i64, event: AuditEvent) -> AuditEntry {
    AuditEntry {
        seq,
        time_ms,
        event,
    }
}

fn denials(second: i64, count: u64) -> AuditEvent {
    AuditEvent::RevocationDenials {
        tenant: "acme".parse().unwrap(),
        second,
        count,
    }
}

fn purge(purged_at_ms: i64, last: Option<i64>) -> AuditEvent {
    named_purge(purged_at_ms, last, None)
}

fn named_purge(purged_at_ms: i64, last: Option<i64>, replica: Option<&str>) -> AuditEvent {
    AuditEvent::KeysPurged {
        tenant: "acme".parse().unwrap(),
        purged_at_ms,
        entries: 2,
        last_plaintext_at_ms: last,
        replica: replica.map(str::to_owned),
    }
}

fn created() -> AuditEvent {
    AuditEvent::TenantCreated {
        tenant: "acme".parse().unwrap(),
        actor: None,
    }
}

#[test]
fn whole_seconds_drop_the_milliseconds() {
    assert_eq!(utc_second(1_796_570_581), "2026-12-06T15:23:01Z");
    assert_eq!(
        utc_second(1_796_570_581),
        format!("{}Z", &utc_ms(1_796_570_581_000)[..19])
    );
}

#[test]
fn a_denial_record_written_after_the_restoration_counts_for_the_revocation() {
    // Revoked at 10.500 s, restored at 12.300 s: the denials of seconds 10, 11 and 12 are
    // written after each second is over, the last one after the restoration's record.
    let records = [
        entry(1, 1_000, created()),
        entry(
            2,
            10_500,
            AuditEvent::RevocationStateChanged(transition(
                KeyState::Active,
                KeyState::Revoked,
                10_500,
            )),
        ),
        entry(3, 10_501, purge(10_501, Some(9_000))),
        entry(4, 11_010, denials(10, 1)),
        entry(5, 12_010, denials(11, 1)),
        entry(
            6,
            12_300,
            AuditEvent::Restored(transition(KeyState::Revoked, KeyState::Restored, 12_300)),
        ),
        entry(7, 13_005, denials(12, 1)),
        entry(8, 14_000, denials(14, 5)),
    ];
    let report = build("acme", &records).unwrap();
    let text = report.text();
    assert!(
        text.contains("denied since:    3 requests in 3 seconds, first 1970-01-01T00:00:10Z, last 1970-01-01T00:00:12Z"),
        "{text}"
    );
    assert!(
        text.contains(
            "Requests denied in all: 8 (3 during the revocations above; outside any revocation \
             in these records: 5 requests in the second 1970-01-01T00:00:14Z)."
        ),
        "{text}"
    );
    assert!(
        text.contains("restored at:     1970-01-01T00:00:12.300Z (seq 6)"),
        "{text}"
    );
    let json = report.json();
    assert_eq!(json["items"][0]["denied"], 3);
    assert_eq!(json["denied_total"], 8);
    assert_eq!(json["denials_outside_revocations"][0]["second"], 14);
}

#[test]
fn each_replica_states_when_it_last_served_plaintext() {
    let records = [
        entry(
            1,
            5_000,
            AuditEvent::RevocationStateChanged(transition(
                KeyState::Active,
                KeyState::Revoked,
                4_900,
            )),
        ),
        // Replicas name themselves; the third record is from a server that did not yet.
        entry(2, 5_001, named_purge(5_001, Some(4_000), Some("eu-1"))),
        entry(3, 5_200, named_purge(5_200, Some(5_150), Some("eu-2"))),
        entry(4, 5_300, purge(5_300, None)),
    ];
    let text = build("acme", &records).unwrap().text();
    assert!(
        text.contains("    - replica \"eu-1\", seq 2: purged 2 cached keys at 1970-01-01T00:00:05.001Z; plaintext last served at 1970-01-01T00:00:04.000Z, before the revocation was recorded"),
        "{text}"
    );
    assert!(
        text.contains("    - replica \"eu-2\", seq 3: purged 2 cached keys at 1970-01-01T00:00:05.200Z; plaintext last served at 1970-01-01T00:00:05.150Z, 150 ms AFTER the revocation was recorded"),
        "{text}"
    );
    assert!(text.contains("    - the replica that wrote seq 4: purged 2 cached keys at 1970-01-01T00:00:05.300Z; served no plaintext since it started"), "{text}");
    assert!(
        text.contains("answer:          plaintext served after the revocation was recorded by 1 of 3 replicas, last at 1970-01-01T00:00:05.150Z (replica \"eu-2\", seq 3)"),
        "{text}"
    );
    assert!(
        text.contains("revoked at:      1970-01-01T00:00:05.000Z (recorded)"),
        "{text}"
    );
    assert!(
        text.contains("first observed:  1970-01-01T00:00:04.900Z"),
        "{text}"
    );
    assert!(
        text.contains("restored:        no (still revoked at the last record)"),
        "{text}"
    );

    // Without the late replica, the answer is plain.
    let text = build("acme", &records[..2]).unwrap().text();
    assert!(
        text.contains("answer:          no plaintext served after the revocation was recorded\n"),
        "{text}"
    );
}

#[test]
fn a_tenant_no_record_names_is_unknown() {
    let records = [entry(1, 1_000, created())];
    assert!(build("nosuch", &records).is_none());
    let text = build("acme", &records).unwrap().text();
    assert!(text.contains("(no revocation recorded)"), "{text}");
    assert!(
        text.contains(
            "None of the 1 audit records about the tenant (seq 1) is about a revocation."
        ),
        "{text}"
    );
}

#[test]
fn entries_parse_from_listed_and_exported_records_alike() {
    let listed = r#"{"event":{"actor":null,"tenant":"acme","type":"tenant_created"},"prev_hash":"00","seq":1,"time_ms":7}"#;
    let exported = r#"{"event":{"actor":null,"tenant":"acme","type":"tenant_created"},"hash":"11","prev_hash":"00","seq":1,"time_ms":7,"type":"record"}"#;
    let a = AuditEntry::from_json(listed).unwrap().unwrap();
    let b = AuditEntry::from_json(exported).unwrap().unwrap();
    assert_eq!((a.seq, a.time_ms, &a.event), (b.seq, b.time_ms, &b.event));
    let newer = r#"{"event":{"type":"from_the_future"},"seq":2,"time_ms":8}"#;
    assert!(AuditEntry::from_json(newer).unwrap().is_none());
    let broken = r#"{"event":{"type":"tenant_created"},"seq":3,"time_ms":9}"#;
    let err = AuditEntry::from_json(broken).unwrap_err();
    assert!(format!("{err:#}").contains("record seq 3"), "{err:#}");
}
