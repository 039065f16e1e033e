//! Reading one SQS message body as a KMS management event: a CloudTrail record delivered by an
//! EventBridge rule (`detail-type: "AWS API Call via CloudTrail"`), documented at
//! <https://docs.aws.amazon.com/eventbridge/latest/ref/events-ref-kms.html> and
//! <https://docs.aws.amazon.com/kms/latest/developerguide/logging-using-cloudtrail.html>:
//!
//! ```json
//! { "version": "0", "id": "…", "detail-type": "AWS API Call via CloudTrail", "source": "aws.kms",
//!   "account": "111122223333", "time": "…", "region": "eu-west-1", "resources": [],
//!   "detail": { "eventSource": "kms.amazonaws.com", "eventName": "DisableKey",
//!               "requestParameters": { "keyId": "1234abcd-…" },
//!               "resources": [ { "accountId": "111122223333", "type": "AWS::KMS::Key",
//!                                "ARN": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-…" } ],
//!               … } }
//! ```
//!
//! Nothing in a message is trusted: it is checked for shape only, and what it yields is the key
//! ARNs to re-check with the KMS. Anything else is a [`RejectReason`].

use keyward_kms::RejectReason;
use serde_json::Value;

use crate::{AwsKeyRef, KeyResource};

/// The largest message body read. A CloudTrail KMS management event is 1 to 3 KiB; EventBridge
/// and SQS allow 256 KiB, which only a forged or foreign message would use.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The KMS API calls that can change whether Keyward may use a key (docs/revocation.md, "AWS key
/// events"): the ones that can revoke, and the ones that can restore.
pub const KEY_EVENT_NAMES: [&str; 8] = [
    "DisableKey",
    "ScheduleKeyDeletion",
    "PutKeyPolicy",
    "RevokeGrant",
    "RetireGrant",
    "DeleteImportedKeyMaterial",
    "CancelKeyDeletion",
    "EnableKey",
];

/// At most this many distinct keys are taken from one event (a real one names one).
const MAX_KEYS_PER_EVENT: usize = 4;

/// What a well-formed event asks for: a re-check of these keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyEvent {
    /// One of [`KEY_EVENT_NAMES`].
    pub(crate) name: &'static str,
    /// The key ARNs it names (`arn:…:kms:<region>:<account>:key/<id>`), distinct, in the account
    /// the event comes from.
    pub(crate) key_arns: Vec<String>,
}

/// Reads `body` as a KMS key event, or says why it is not one.
pub(crate) fn parse(body: &str) -> Result<KeyEvent, RejectReason> {
    if body.len() > MAX_BODY_BYTES {
        return Err(RejectReason::Oversize);
    }
    let Ok(Value::Object(event)) = serde_json::from_str::<Value>(body) else {
        return Err(RejectReason::NotJson);
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let detail = event.get("detail").and_then(Value::as_object);
    let (Some(detail), Some("aws.kms"), Some("AWS API Call via CloudTrail")) = (
        detail,
        event.get("source").and_then(Value::as_str),
        event.get("detail-type").and_then(Value::as_str),
    ) else {
        return Err(RejectReason::NotKeyEvent);
    };
    if detail.get("eventSource").and_then(Value::as_str) != Some("kms.amazonaws.com") {
        return Err(RejectReason::NotKeyEvent);
    }
    let name = detail.get("eventName").and_then(Value::as_str);
    let Some(name) = KEY_EVENT_NAMES.iter().find(|n| Some(**n) == name) else {
        return Err(RejectReason::UnexpectedEvent);
    };
    // CloudTrail records refused calls too (errorCode: AccessDenied, …): the key did not change.
    if detail.get("errorCode").is_some_and(|c| !c.is_null()) {
        return Err(RejectReason::FailedCall);
    }
    let account = text(event.get("account")).unwrap_or_default();

    // The key ARN: CloudTrail's resources (type AWS::KMS::Key), EventBridge's resources, and the
    // request's keyId when the caller gave a key ARN (it may be a bare id or an alias instead).
    let mut candidates: Vec<&str> = Vec::new();
    if let Some(resources) = detail.get("resources").and_then(Value::as_array) {
        for r in resources {
            let kms_key = r
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(|t| t == "AWS::KMS::Key");
            if let (true, Some(arn)) = (kms_key, r.get("ARN").and_then(Value::as_str)) {
                candidates.push(arn);
            }
        }
    }
    if let Some(resources) = event.get("resources").and_then(Value::as_array) {
        candidates.extend(resources.iter().filter_map(Value::as_str));
    }
    if let Some(key_id) = detail
        .get("requestParameters")
        .and_then(|p| p.get("keyId"))
        .and_then(Value::as_str)
    {
        candidates.push(key_id);
    }
    let mut key_arns: Vec<String> = Vec::new();
    let mut foreign = false;
    for candidate in candidates {
        // A key ARN and nothing else: no alias, no role suffix.
        let Ok(key) = candidate.parse::<AwsKeyRef>() else {
            continue;
        };
        if key.role.is_some() || !matches!(key.resource, KeyResource::Key(_)) {
            continue;
        }
        // The account that delivered the event owns the key: a key of another account is not
        // this customer's to report on (cross-account calls are recorded in the owner's
        // account too, so nothing is lost).
        if key.account != account {
            foreign = true;
            continue;
        }
        let arn = key.arn();
        if !key_arns.contains(&arn) && key_arns.len() < MAX_KEYS_PER_EVENT {
            key_arns.push(arn);
        }
    }
    if key_arns.is_empty() {
        return Err(if foreign {
            RejectReason::ForeignAccount
        } else {
            RejectReason::NoKey
        });
    }
    Ok(KeyEvent { name, key_arns })
}

/// The stored key references among `bound` (the current bindings') that name one of `key_arns`: a
/// reference is the key ARN, optionally followed by `?role_arn=…&external_id=…` (one key may be
/// bound through several roles). The caller re-checks the bare key ARNs too, which finds older
/// bindings registered without a role. References stored by alias ARN, which registration does not
/// produce (it stores the key ARN the alias pointed to), never match: the monitor covers them.
pub(crate) fn matching_refs<'a>(key_arns: &[String], bound: &'a [String]) -> Vec<&'a str> {
    bound
        .iter()
        .filter(|stored| {
            stored
                .parse::<AwsKeyRef>()
                .is_ok_and(|key| !key.is_alias() && key_arns.iter().any(|arn| *arn == key.arn()))
        })
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use keyward_test_support::aws::{ACCOUNT, kms_event};

    use super::*;

    const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn body(v: &Value) -> String {
        v.to_string()
    }

    #[test]
    fn every_key_event_of_the_fixture_names_its_key() {
        for name in KEY_EVENT_NAMES {
            let event = parse(&body(&kms_event(name, KEY))).unwrap();
            assert_eq!(event.name, name);
            assert_eq!(event.key_arns, [KEY]);
        }
    }

    #[test]
    fn the_key_comes_from_any_of_the_three_places_cloudtrail_puts_it() {
        // Only EventBridge's resources.
        let mut e = kms_event("DisableKey", KEY);
        e["detail"]["resources"] = Value::Array(vec![]);
        e["detail"]["requestParameters"]["keyId"] = "1234abcd-12ab-34cd-56ef-1234567890ab".into();
        e["resources"] = serde_json::json!([KEY]);
        assert_eq!(parse(&body(&e)).unwrap().key_arns, [KEY]);
        // Only the request's keyId, as a key ARN.
        e["resources"] = Value::Array(vec![]);
        e["detail"]["requestParameters"]["keyId"] = KEY.into();
        assert_eq!(parse(&body(&e)).unwrap().key_arns, [KEY]);
        // The request's keyId as an alias: no key.
        e["detail"]["requestParameters"]["keyId"] =
            "arn:aws:kms:us-east-1:123456789012:alias/prod".into();
        assert_eq!(parse(&body(&e)), Err(RejectReason::NoKey));
    }

    #[test]
    fn malformed_foreign_and_irrelevant_messages_say_why() {
        let good = kms_event("DisableKey", KEY);
        let with = |path: &[&str], value: Value| {
            let mut e = good.clone();
            let mut at = &mut e;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at[path[path.len() - 1]] = value;
            body(&e)
        };
        let other_account = KEY.replace(ACCOUNT, "999988887777");
        let cases: Vec<(String, RejectReason)> = vec![
            ("not json".into(), RejectReason::NotJson),
            ("[1, 2]".into(), RejectReason::NotJson),
            ("".into(), RejectReason::NotJson),
            (
                format!(r#"{{"pad": "{}"}}"#, "x".repeat(MAX_BODY_BYTES)),
                RejectReason::Oversize,
            ),
            (
                with(&["source"], "aws.s3".into()),
                RejectReason::NotKeyEvent,
            ),
            (
                with(&["detail-type"], "KMS Key State Change".into()),
                RejectReason::NotKeyEvent,
            ),
            (
                with(&["detail", "eventSource"], "s3.amazonaws.com".into()),
                RejectReason::NotKeyEvent,
            ),
            (with(&["detail"], Value::Null), RejectReason::NotKeyEvent),
            (
                with(&["detail", "eventName"], "Decrypt".into()),
                RejectReason::UnexpectedEvent,
            ),
            (
                with(&["detail", "errorCode"], "AccessDenied".into()),
                RejectReason::FailedCall,
            ),
            (
                {
                    let mut e = good.clone();
                    e["detail"]["resources"] = Value::Array(vec![]);
                    e["detail"]["requestParameters"] = serde_json::json!({});
                    body(&e)
                },
                RejectReason::NoKey,
            ),
            (
                {
                    let mut e = kms_event("DisableKey", &other_account);
                    e["account"] = ACCOUNT.into();
                    body(&e)
                },
                RejectReason::ForeignAccount,
            ),
            (
                with(&["account"], "999988887777".into()),
                RejectReason::ForeignAccount,
            ),
        ];
        for (input, reason) in cases {
            let shown: String = input.chars().take(120).collect();
            assert_eq!(parse(&input), Err(reason), "{shown}");
        }
    }

    #[test]
    fn a_stored_reference_matches_by_its_key_arn_whatever_role_it_is_used_through() {
        let bound = vec![
            KEY.to_owned(),
            format!("{KEY}?role_arn=arn:aws:iam::123456789012:role/r&external_id=xyz"),
            KEY.replace("1234abcd", "99999999"),
            "arn:aws:kms:us-east-1:123456789012:alias/prod".to_owned(),
            "not a reference".to_owned(),
        ];
        assert_eq!(
            matching_refs(&[KEY.to_owned()], &bound),
            [bound[0].as_str(), bound[1].as_str()]
        );
        assert!(matching_refs(&[KEY.replace("1234abcd", "55555555")], &bound).is_empty());
    }
}
