//! Unit tests of the timeline builder (`timeline.rs`): attribution of purges and denials,
//! restorations, changes while revoked, and unknown tenants.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use crate::chain_head::ChainHead;
use crate::event::RevocationSource;

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

fn entry(seq: u64, time_ms: i64, event: AuditEvent) -> Entry {
    Entry {
        seq,
        time_ms,
        event,
    }
}

fn revoked(observed_at_ms: i64) -> AuditEvent {
    AuditEvent::RevocationStateChanged(transition(
        KeyState::Active,
        KeyState::Revoked,
        observed_at_ms,
    ))
}

fn restored(observed_at_ms: i64) -> AuditEvent {
    AuditEvent::Restored(transition(
        KeyState::Revoked,
        KeyState::Restored,
        observed_at_ms,
    ))
}

fn denials(second: i64, count: u64) -> AuditEvent {
    AuditEvent::RevocationDenials {
        tenant: "acme".parse().unwrap(),
        second,
        count,
    }
}

fn purge(purged_at_ms: i64, last: Option<i64>, replica: Option<&str>) -> AuditEvent {
    AuditEvent::KeysPurged {
        tenant: "acme".parse().unwrap(),
        purged_at_ms,
        entries: 2,
        last_plaintext_at_ms: last,
        replica: replica.map(str::to_owned),
    }
}

fn created(tenant: &str) -> AuditEvent {
    AuditEvent::TenantCreated {
        tenant: tenant.parse().unwrap(),
        actor: None,
    }
}

fn only_revocation(timeline: &Timeline) -> &Revocation {
    let revocations: Vec<&Revocation> = timeline.revocations().collect();
    assert_eq!(revocations.len(), 1, "{timeline:#?}");
    revocations[0]
}

fn denied(second: i64, count: u64) -> DeniedSecond {
    DeniedSecond { second, count }
}

#[test]
fn a_denial_record_written_after_the_restoration_counts_for_the_revocation() {
    // Revoked at 10.500 s, restored at 12.300 s: the denials of seconds 10, 11 and 12 are
    // written after each second is over, the last one after the restoration's record.
    let records = [
        entry(1, 1_000, created("acme")),
        entry(2, 10_500, revoked(10_500)),
        entry(3, 10_501, purge(10_501, Some(9_000), None)),
        entry(4, 11_010, denials(10, 1)),
        entry(5, 12_010, denials(11, 1)),
        entry(6, 12_300, restored(12_300)),
        entry(7, 13_005, denials(12, 1)),
        entry(8, 14_000, denials(14, 5)),
    ];
    let timeline = Timeline::build("acme", &records).unwrap();
    let revocation = only_revocation(&timeline);
    assert_eq!(
        revocation.denials,
        [denied(10, 1), denied(11, 1), denied(12, 1)]
    );
    assert_eq!(revocation.denied(), 3);
    let restoration = revocation.restored.as_ref().unwrap();
    assert_eq!((restoration.seq, restoration.recorded_ms), (6, 12_300));
    assert_eq!(timeline.unattributed_denials, [denied(14, 5)]);
    assert_eq!((timeline.total_denied, timeline.denied_outside()), (8, 5));
    // The tenant_created record is the tenant's, not a revocation record.
    assert_eq!(
        (timeline.records, timeline.all_records, timeline.first_seq),
        (7, 8, 2)
    );
    assert_eq!(timeline.last_seq, 8);
}

#[test]
fn a_denial_in_the_second_before_the_record_counts_when_the_signal_was_observed_then() {
    // Observed at 9.900 s, recorded at 10.200 s: second 9 is covered by the observation.
    let records = [
        entry(1, 10_200, revoked(9_900)),
        entry(2, 10_300, denials(9, 2)),
        entry(3, 10_400, denials(8, 1)),
    ];
    let timeline = Timeline::build("acme", &records).unwrap();
    assert_eq!(only_revocation(&timeline).denials, [denied(9, 2)]);
    assert_eq!(timeline.unattributed_denials, [denied(8, 1)]);
}

#[test]
fn each_replica_purge_belongs_to_the_latest_revocation() {
    let records = [
        entry(1, 5_000, revoked(4_900)),
        entry(2, 5_001, purge(5_001, Some(4_000), Some("eu-1"))),
        entry(3, 5_200, purge(5_200, Some(5_150), Some("eu-2"))),
        entry(4, 5_300, purge(5_300, None, None)),
    ];
    let timeline = Timeline::build("acme", &records).unwrap();
    let revocation = only_revocation(&timeline);
    assert_eq!(
        revocation.recorded.transition.observed_at_ms, 4_900,
        "{revocation:?}"
    );
    let replicas: Vec<Option<&str>> = revocation
        .purges
        .iter()
        .map(|p| p.replica.as_deref())
        .collect();
    assert_eq!(replicas, [Some("eu-1"), Some("eu-2"), None]);
    // Only eu-2 returned plaintext after the revocation's record (5.150 s > 5.000 s).
    let late: Vec<u64> = revocation.served_after().iter().map(|p| p.seq).collect();
    assert_eq!(late, [3]);
    assert!(revocation.restored.is_none());

    let without_late = Timeline::build("acme", &records[..2]).unwrap();
    assert!(only_revocation(&without_late).served_after().is_empty());
}

#[test]
fn purges_before_any_revocation_are_kept_apart() {
    let records = [
        entry(1, 1_000, purge(1_000, Some(900), Some("eu-1"))),
        entry(2, 2_000, revoked(2_000)),
    ];
    let timeline = Timeline::build("acme", &records).unwrap();
    assert_eq!(timeline.unattached_purges.len(), 1);
    assert!(only_revocation(&timeline).purges.is_empty());
}

#[test]
fn changes_while_revoked_stay_with_the_revocation_and_others_are_items() {
    let destroyed = AuditEvent::RevocationStateChanged(transition(
        KeyState::Revoked,
        KeyState::Destroyed,
        3_000,
    ));
    let unavailable = AuditEvent::RevocationStateChanged(transition(
        KeyState::Restored,
        KeyState::Unavailable,
        5_000,
    ));
    let records = [
        entry(1, 1_000, restored(1_000)),
        entry(2, 2_000, revoked(2_000)),
        entry(3, 3_000, destroyed),
        entry(4, 4_000, restored(4_000)),
        entry(5, 5_000, unavailable),
    ];
    let timeline = Timeline::build("acme", &records).unwrap();
    let kinds: Vec<(&str, u64)> = timeline
        .items
        .iter()
        .map(|item| match item {
            Item::Revocation(r) => ("revocation", r.recorded.seq),
            Item::Change {
                recorded,
                restored: true,
            } => ("restored", recorded.seq),
            Item::Change { recorded, .. } => ("change", recorded.seq),
        })
        .collect();
    // A restoration that ends no revocation is an item of its own.
    assert_eq!(kinds, [("restored", 1), ("revocation", 2), ("change", 5)]);
    let revocation = only_revocation(&timeline);
    let changes: Vec<u64> = revocation.changes.iter().map(|c| c.seq).collect();
    assert_eq!(changes, [3]);
    assert_eq!(revocation.restored.as_ref().map(|r| r.seq), Some(4));
}

#[test]
fn a_tenant_no_record_names_is_unknown() {
    let records = [
        entry(1, 1_000, created("acme")),
        entry(2, 2_000, revoked(2_000)),
    ];
    assert!(Timeline::build("nosuch", &records).is_none());
    let other = [entry(1, 1_000, created("other"))];
    assert!(Timeline::build("acme", &other).is_none());
    let quiet = Timeline::build("acme", &records[..1]).unwrap();
    assert_eq!(
        (
            quiet.records,
            quiet.all_records,
            quiet.first_seq,
            quiet.last_seq
        ),
        (0, 1, 1, 1)
    );
    assert!(quiet.items.is_empty());
}

#[test]
fn entries_come_from_records() {
    let record = Record::append(&ChainHead::GENESIS, 7, created("acme")).unwrap();
    let entry = Entry::from(&record);
    assert_eq!(entry, self::entry(1, 7, created("acme")));
}
