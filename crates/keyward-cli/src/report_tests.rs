//! Unit tests of the report's reading and rendering (`report.rs`): records read from their
//! JSON as the server lists them, the timeline built by keyward-audit, and the text and JSON
//! people read (times, the per-replica answer, denials outside any revocation). The timeline's
//! attribution rules are tested beside it (keyward-audit's `timeline_tests.rs`).
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use keyward_audit::timeline::Timeline;

use super::*;

/// The records as the server lists them: one canonical JSON object per line (`seq`, `time_ms`
/// and the event; the hashes are not read).
fn timeline(lines: &str) -> Timeline {
    let entries: Vec<Entry> = lines
        .lines()
        .filter_map(|line| entry_from_json(line).unwrap())
        .collect();
    Timeline::build("acme", &entries).unwrap()
}

const REVOKED_AT_10_500: &str = r#"{"event":{"binding_id":1,"from":"active","observed_at_ms":10500,"actor":"ops","reason":"test","source":"explicit","tenant":"acme","to":"revoked","type":"revocation_state_changed"},"seq":2,"time_ms":10500}"#;

#[test]
fn whole_seconds_drop_the_milliseconds() {
    assert_eq!(utc_second(1_796_570_581), "2026-12-06T15:23:01Z");
    assert_eq!(
        utc_second(1_796_570_581),
        format!("{}Z", &utc_ms(1_796_570_581_000)[..19])
    );
}

#[test]
fn a_revocation_reads_as_when_who_what_was_served_and_what_was_denied() {
    let records = [
        r#"{"event":{"actor":null,"tenant":"acme","type":"tenant_created"},"seq":1,"time_ms":1000}"#,
        REVOKED_AT_10_500,
        r#"{"event":{"entries":2,"last_plaintext_at_ms":9000,"purged_at_ms":10501,"replica":"eu-1","tenant":"acme","type":"keys_purged"},"seq":3,"time_ms":10501}"#,
        r#"{"event":{"entries":2,"last_plaintext_at_ms":10650,"purged_at_ms":10700,"tenant":"acme","type":"keys_purged"},"seq":4,"time_ms":10700}"#,
        r#"{"event":{"count":1,"second":10,"tenant":"acme","type":"revocation_denials"},"seq":5,"time_ms":11010}"#,
        r#"{"event":{"count":1,"second":11,"tenant":"acme","type":"revocation_denials"},"seq":6,"time_ms":12010}"#,
        r#"{"event":{"binding_id":1,"from":"revoked","observed_at_ms":12300,"actor":"ops","reason":"fixed","source":"explicit","tenant":"acme","to":"restored","type":"restored"},"seq":7,"time_ms":12300}"#,
        r#"{"event":{"count":5,"second":14,"tenant":"acme","type":"revocation_denials"},"seq":8,"time_ms":15000}"#,
    ]
    .join("\n");
    let report = timeline(&records);
    let text = text(&report);
    for line in [
        "Revocation report for tenant acme\n",
        "From the tenant's 7 revocation records (state changes, purges, denials), seq 2 to seq 8. All times are UTC (RFC 3339).\n",
        "Revocation 1 (seq 2): binding 1 active -> revoked, source: an explicit request by ops\n",
        "  reason:          test\n",
        "  first observed:  1970-01-01T00:00:10.500Z (when the signal was first seen)\n",
        "  revoked at:      1970-01-01T00:00:10.500Z (recorded)\n",
        "    - replica \"eu-1\", seq 3: purged 2 cached keys at 1970-01-01T00:00:10.501Z; plaintext last served at 1970-01-01T00:00:09.000Z, before the revocation was recorded\n",
        "    - the replica that wrote seq 4: purged 2 cached keys at 1970-01-01T00:00:10.700Z; plaintext last served at 1970-01-01T00:00:10.650Z, 150 ms AFTER the revocation was recorded\n",
        "  answer:          plaintext served after the revocation was recorded by 1 of 2 replicas, last at 1970-01-01T00:00:10.650Z (the replica that wrote seq 4) (the log keeps each replica's last time, not each request)\n",
        "  denied since:    2 requests in 2 seconds, first 1970-01-01T00:00:10Z, last 1970-01-01T00:00:11Z\n",
        "  restored at:     1970-01-01T00:00:12.300Z (seq 7), source: an explicit request by ops: fixed\n",
        "\nRequests denied in all: 7 (2 during the revocations above; outside any revocation in these records: 5 requests in the second 1970-01-01T00:00:14Z).\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }

    let json = json(&report);
    assert_eq!(json["tenant"], "acme");
    assert_eq!(
        (json["first_seq"].as_u64(), json["last_seq"].as_u64()),
        (Some(2), Some(8))
    );
    let item = &json["items"][0];
    assert_eq!(item["kind"], "revocation");
    assert_eq!(item["recorded_at_ms"], 10_500);
    assert_eq!(item["transition"]["to"], "revoked");
    assert_eq!(item["plaintext_served_after_revocation"], true);
    assert_eq!(item["purges"][0]["replica"], "eu-1");
    assert_eq!(item["purges"][0]["served_after_revocation"], false);
    assert_eq!(item["purges"][1]["replica"], Value::Null);
    assert_eq!(item["purges"][1]["served_after_revocation"], true);
    assert_eq!(item["restored"]["seq"], 7);
    assert_eq!(item["denied"], 2);
    assert_eq!(json["denied_total"], 7);
    assert_eq!(json["denials_outside_revocations"][0]["second"], 14);
    assert_eq!(json["denials_outside_revocations"][0]["count"], 5);
}

#[test]
fn a_revocation_still_in_force_and_served_by_nobody_says_so() {
    let report = timeline(REVOKED_AT_10_500);
    let text = text(&report);
    for line in [
        "From the tenant's 1 revocation records (state changes, purges, denials), seq 2. All times are UTC (RFC 3339).\n",
        "    (no replica recorded a purge)\n",
        "  answer:          no plaintext served after the revocation was recorded\n",
        "  denied since:    0 requests\n",
        "  restored:        no (still revoked at the last record)\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("Requests denied in all"), "{text}");
}

#[test]
fn a_tenant_without_revocations_says_how_many_records_there_are() {
    let created = r#"{"event":{"actor":null,"tenant":"acme","type":"tenant_created"},"seq":1,"time_ms":1000}"#;
    let text = text(&timeline(created));
    assert!(text.contains("(no revocation recorded)"), "{text}");
    assert!(
        text.contains(
            "None of the 1 audit records about the tenant (seq 1) is about a revocation."
        ),
        "{text}"
    );
}

#[test]
fn an_unavailable_kms_is_a_state_change_not_a_revocation() {
    let unavailable = r#"{"event":{"binding_id":1,"from":"active","observed_at_ms":5000,"actor":null,"reason":"timeout","source":"monitor","tenant":"acme","to":"unavailable","type":"revocation_state_changed"},"seq":9,"time_ms":5000}"#;
    let report = timeline(unavailable);
    let text = text(&report);
    assert!(
        text.contains("KMS unavailable (not a revocation: data stays readable once it answers) (seq 9): binding 1 active -> unavailable at 1970-01-01T00:00:05.000Z, source: the key-state monitor: timeout\n"),
        "{text}"
    );
    assert_eq!(json(&report)["items"][0]["kind"], "state_change");
}

#[test]
fn entries_parse_from_listed_and_exported_records_alike() {
    let listed = r#"{"event":{"actor":null,"tenant":"acme","type":"tenant_created"},"prev_hash":"00","seq":1,"time_ms":7}"#;
    let exported = r#"{"event":{"actor":null,"tenant":"acme","type":"tenant_created"},"hash":"11","prev_hash":"00","seq":1,"time_ms":7,"type":"record"}"#;
    let a = entry_from_json(listed).unwrap().unwrap();
    let b = entry_from_json(exported).unwrap().unwrap();
    assert_eq!(a, b);
    let newer = r#"{"event":{"type":"from_the_future"},"seq":2,"time_ms":8}"#;
    assert!(entry_from_json(newer).unwrap().is_none());
    let broken = r#"{"event":{"type":"tenant_created"},"seq":3,"time_ms":9}"#;
    let err = entry_from_json(broken).unwrap_err();
    assert!(format!("{err:#}").contains("record seq 3"), "{err:#}");
}

#[test]
fn a_shred_reads_as_its_scope_its_data_keys_who_and_why() {
    let dek = "ac1786e856da607c39cecbb96e482f45";
    let other = "0f1786e856da607c39cecbb96e482f45";
    let records = [
        r#"{"event":{"actor":null,"tenant":"acme","type":"tenant_created"},"seq":1,"time_ms":1000}"#.to_owned(),
        format!(r#"{{"event":{{"dek_id":"{dek}","reason":"shredded","scope_hmac":"hmac-sha256:aa","tenant":"acme","type":"dek_retired"}},"seq":2,"time_ms":2000}}"#),
        r#"{"event":{"actor":"TenantAdmin::\"secops\"","deks":1,"reason":"erasure 7","retention_cutoff_ms":null,"scope_hmac":"hmac-sha256:aa","tenant":"acme","type":"scope_shredded"},"seq":3,"time_ms":2000}"#.to_owned(),
        format!(r#"{{"event":{{"dek_id":"{other}","reason":"shredded","scope_hmac":"hmac-sha256:bb","tenant":"acme","type":"dek_retired"}},"seq":4,"time_ms":3000}}"#),
        r#"{"event":{"actor":"Operator::\"oncall\"","deks":2,"reason":"retention","retention_cutoff_ms":1500,"scope_hmac":"hmac-sha256:bb","tenant":"acme","type":"scope_shredded"},"seq":5,"time_ms":3000}"#.to_owned(),
    ]
    .join("\n");
    let report = timeline(&records);
    let text = text(&report);
    for line in [
        "Crypto-shredding: 2 scopes shredded, 3 data keys destroyed (scopes are named by their HMAC, as in the log):\n",
        "- seq 3 at 1970-01-01T00:00:02.000Z: scope hmac-sha256:aa: 1 data key destroyed (ShredScope) by TenantAdmin::\"secops\": erasure 7\n",
        "  data keys: ac1786e856da607c39cecbb96e482f45\n  1 dek_retired (shredded) record matches it\n",
        "- seq 5 at 1970-01-01T00:00:03.000Z: scope hmac-sha256:bb: 2 data keys destroyed (retention (data written before 1970-01-01T00:00:01.500Z)) by Operator::\"oncall\": retention\n",
        // The log holds one dek_retired record for two data keys: said, not hidden.
        "  WARNING: 1 dek_retired (shredded) records in these records for 2 data keys\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let json = json(&report);
    assert_eq!(json["shreds"][0]["dek_ids"][0], dek);
    assert_eq!(json["shreds"][1]["retention_cutoff_ms"], 1500);
}

/// A re-key reads as the older keys it retired, each with the tenant keys moved off it (their
/// `tenant_key_rewrapped` records) and what the current key wraps; a move whose binding is not
/// retired in the records is an unfinished re-key. The same in the JSON.
#[test]
fn a_rekey_lists_the_retired_keys_and_the_moves() {
    let tk1 = "11111111111111111111111111111111";
    let tk2 = "22222222222222222222222222222222";
    let records = [
        format!(r#"{{"event":{{"actor":"secops","from_binding_id":1,"tenant":"acme","tenant_key_id":"{tk1}","to_binding_id":3,"type":"tenant_key_rewrapped"}},"seq":10,"time_ms":20000}}"#),
        format!(r#"{{"event":{{"actor":"secops","from_binding_id":2,"tenant":"acme","tenant_key_id":"{tk2}","to_binding_id":3,"type":"tenant_key_rewrapped"}},"seq":11,"time_ms":20100}}"#),
        r#"{"event":{"actor":"secops","binding_id":1,"deks":7,"key_ref":"arn:old","provider":"aws-kms","tenant":"acme","tenant_keys":3,"to_binding_id":3,"type":"kek_binding_retired"},"seq":12,"time_ms":20200}"#.to_owned(),
    ]
    .join("\n");
    let report = timeline(&records);
    let text = text(&report);
    for line in [
        "\nRe-keying: 1 older key retired (no data depends on it since):\n",
        &format!(
            "- seq 12 at 1970-01-01T00:00:20.200Z: binding 1 (aws-kms arn:old) retired by secops; binding 3 now wraps 3 tenant keys and 7 data keys; moved off it in these records: {tk1} (seq 10)\n"
        ),
        &format!(
            "- seq 11 at 1970-01-01T00:00:20.100Z: tenant key {tk2} moved from binding 2 to 3 by secops (its old binding is not retired in these records: the re-key is not finished)\n"
        ),
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let json = json(&report);
    assert_eq!(json["rekeys"][0]["binding_id"], 1);
    assert_eq!(json["rekeys"][0]["moves"][0]["tenant_key_id"], tk1);
    assert_eq!(json["rekeys"][0]["deks"], 7);
    assert_eq!(json["moves_in_progress"][0]["from_binding_id"], 2);
}
