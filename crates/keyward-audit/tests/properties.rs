//! Property tests: random event sequences round-trip through export and verify; removing any
//! single line is detected.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::{Built, build, sample_event};
use keyward_audit::*;
use proptest::prelude::*;

fn event() -> impl Strategy<Value = AuditEvent> {
    prop_oneof![
        (0u64..1000).prop_map(sample_event),
        (any::<String>(), any::<String>(), any::<String>()).prop_map(|(actor, action, detail)| {
            AuditEvent::AdminAction {
                actor,
                action,
                detail,
            }
        }),
        (any::<String>(), proptest::option::of(any::<String>())).prop_map(|(reason, actor)| {
            AuditEvent::KeyRegistrationAttempted {
                tenant: "t-1".parse().unwrap(),
                provider: "aws-kms".into(),
                key_ref: "arn:aws:kms:eu-west-1:111122223333:key/x".into(),
                outcome: match actor {
                    Some(_) => RegistrationOutcome::Failed { reason },
                    None => RegistrationOutcome::Succeeded,
                },
            }
        }),
        (any::<i64>(), any::<u64>()).prop_map(|(second, count)| AuditEvent::RevocationDenials {
            tenant: "t-2".parse().unwrap(),
            second,
            count,
        }),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<AuditEvent>, u64, Option<u64>)> {
    (proptest::collection::vec(event(), 1..40), 0u64..8).prop_flat_map(|(events, every)| {
        let n = events.len() as u64;
        (Just(events), Just(every), proptest::option::of(1..=n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn export_roundtrips_and_verifies((events, every, rotate) in scenario()) {
        let b = build(&events, every, rotate);
        let report = verify_export(b.text().as_bytes(), &b.trusted()).unwrap();
        prop_assert_eq!(report.records, events.len() as u64);
        prop_assert_eq!(report.last_seq, events.len() as u64);
        // Every record line parses back to the record that was written.
        for r in &b.records {
            let line = &b.lines[b.record_line[r.seq() as usize] - 1];
            prop_assert_eq!(&Record::from_canonical_json(line).unwrap(), r);
            prop_assert!(Record::from_stored(&r.canonical_bytes(), *r.hash()).unwrap().verify_hash());
        }
    }

    #[test]
    fn removing_any_single_line_is_detected(
        (events, every, rotate) in scenario(),
        pick in any::<prop::sample::Index>(),
    ) {
        let b = build(&events, every, rotate);
        let mut lines = b.lines.clone();
        let at = pick.index(lines.len());
        lines.remove(at);
        let result = verify_export(Built::text_of(&lines).as_bytes(), &b.trusted());
        prop_assert!(result.is_err(), "removing line {} went unnoticed", at + 1);
    }
}
