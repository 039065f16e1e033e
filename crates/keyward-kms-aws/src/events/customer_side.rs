//! What a customer (and Keyward's operator) sets up so that the customer's KMS key events reach
//! Keyward's queue: printed by `keyward onboarding events --provider aws --queue-arn ARN`
//! (docs/onboarding/aws.md, "Key events").
//!
//! The route is the one EventBridge documents for events between accounts
//! (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-cross-account.html>): a rule on
//! the customer's default event bus, in every region that holds a key they registered, sends the
//! matching CloudTrail events to the default event bus of Keyward's account in the queue's
//! region (through a role EventBridge assumes); there a rule sends them to the queue, whose policy
//! lets only that rule write to it.

use serde_json::{Value, json};

use super::KEY_EVENT_NAMES;

/// The name of both rules and the prefix of the customer's role.
pub const RULE_NAME: &str = "keyward-kms-key-events";

/// The EventBridge event pattern of the eight KMS calls that can change whether Keyward may use
/// a key (the successful and refused ones: Keyward ignores the refused ones itself).
pub fn event_pattern() -> Value {
    json!({
        "source": ["aws.kms"],
        "detail-type": ["AWS API Call via CloudTrail"],
        "detail": {
            "eventSource": ["kms.amazonaws.com"],
            "eventName": KEY_EVENT_NAMES,
        }
    })
}

/// An SQS queue ARN, `arn:<partition>:sqs:<region>:<account>:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueArn {
    pub partition: String,
    pub region: String,
    pub account: String,
    pub name: String,
}

impl std::str::FromStr for QueueArn {
    type Err = String;

    fn from_str(arn: &str) -> Result<Self, String> {
        let expected = "expected arn:aws:sqs:<region>:<12-digit account>:<queue name>, e.g. \
                        arn:aws:sqs:eu-west-1:111122223333:keyward-key-events";
        let shown: String = arn.chars().take(120).collect();
        let fields: Vec<&str> = arn.split(':').collect();
        let [prefix, partition, service, region, account, name] = fields[..] else {
            return Err(format!(
                "'{shown}' is not a queue ARN (six ':'-separated fields); {expected}"
            ));
        };
        if prefix != "arn" || !["aws", "aws-cn", "aws-us-gov"].contains(&partition) {
            return Err(format!(
                "'{shown}' is not an ARN of the aws, aws-cn or aws-us-gov partition; {expected}"
            ));
        }
        if service != "sqs" {
            return Err(format!(
                "'{shown}' names service '{service}', not sqs: give the ARN of the SQS queue \
                 Keyward reads (its [aws_events] queue_url); {expected}"
            ));
        }
        if !crate::key_ref::is_region(region) {
            return Err(format!(
                "region '{region}' of '{shown}' is not a region name; {expected}"
            ));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "account '{account}' of '{shown}' is not 12 digits; {expected}"
            ));
        }
        let base = name.strip_suffix(".fifo").unwrap_or(name);
        if base.is_empty()
            || name.len() > 80
            || !base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "queue name '{name}' of '{shown}' must be 1 to 80 characters from A-Z, a-z, 0-9, \
                 '-' and '_'; {expected}"
            ));
        }
        Ok(QueueArn {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// The whole setup as text: the event pattern, the customer's commands, and Keyward's operator's
/// (event bus permission, rule, queue policy). `customer_account` fills in the customer's
/// account where given (else the placeholder `CUSTOMER_ACCOUNT_ID`).
pub fn eventbridge_setup(queue: &QueueArn, customer_account: Option<&str>) -> String {
    let customer = customer_account.unwrap_or("CUSTOMER_ACCOUNT_ID");
    let QueueArn {
        partition,
        region,
        account: keyward,
        name,
    } = queue;
    let queue_arn = format!("arn:{partition}:sqs:{region}:{keyward}:{name}");
    let keyward_bus = format!("arn:{partition}:events:{region}:{keyward}:event-bus/default");
    let keyward_rule = format!("arn:{partition}:events:{region}:{keyward}:rule/{RULE_NAME}");
    let role_name = format!("{RULE_NAME}-to-keyward");
    let role_arn = format!("arn:{partition}:iam::{customer}:role/{role_name}");
    let pattern = event_pattern().to_string();
    let keyward_pattern = {
        let mut p = event_pattern();
        p["account"] = json!([customer]);
        p.to_string()
    };
    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "events.amazonaws.com" },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "aws:SourceAccount": customer } }
        }]
    })
    .to_string();
    let put_events = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": "events:PutEvents",
            "Resource": keyward_bus
        }]
    })
    .to_string();
    let targets = json!([{ "Id": "keyward", "Arn": keyward_bus, "RoleArn": role_arn }]).to_string();
    let queue_targets = json!([{ "Id": "keyward-queue", "Arn": queue_arn }]).to_string();
    let queue_policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "KeywardKmsKeyEvents",
            "Effect": "Allow",
            "Principal": { "Service": "events.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": keyward_rule } }
        }]
    });
    let queue_attributes = json!({ "Policy": queue_policy.to_string() }).to_string();
    let pretty = serde_json::to_string_pretty(&event_pattern()).unwrap_or_else(|_| pattern.clone());
    format!(
        "# Keyward re-checks a key with AWS KMS as soon as one of these calls on it is recorded
# (the event is a hint; the KMS answer decides). Event pattern:
{pretty}

# === In the customer's account ({customer}), in EVERY region that holds a registered key ===
# (replace REGION; EventBridge rules are regional). A role EventBridge assumes to forward events:
aws iam create-role --role-name {role_name} --assume-role-policy-document '{trust}'
aws iam put-role-policy --role-name {role_name} --policy-name put-events-to-keyward --policy-document '{put_events}'
aws events put-rule --region REGION --name {RULE_NAME} --event-pattern '{pattern}'
aws events put-targets --region REGION --rule {RULE_NAME} --targets '{targets}'

# === In Keyward's account ({keyward}), region {region} (Keyward's operator, once per customer) ===
# Let the customer's account put events on this event bus:
aws events put-permission --region {region} --event-bus-name default --action events:PutEvents --principal {customer} --statement-id keyward-customer-{customer}
# One rule for every customer (add each account to its \"account\" list), feeding the queue:
aws events put-rule --region {region} --name {RULE_NAME} --event-pattern '{keyward_pattern}'
aws events put-targets --region {region} --rule {RULE_NAME} --targets '{queue_targets}'
# The queue accepts messages from that rule only:
aws sqs set-queue-attributes --region {region} --queue-url https://sqs.{region}.amazonaws.com/{keyward}/{name} --attributes '{queue_attributes}'
"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_names_exactly_the_eight_calls() {
        let pattern = event_pattern();
        let mut names: Vec<&str> = pattern["detail"]["eventName"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        names.sort_unstable();
        let mut expected = KEY_EVENT_NAMES.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected);
        assert_eq!(pattern["source"], json!(["aws.kms"]));
    }

    #[test]
    fn the_setup_names_the_queue_the_buses_and_the_customer() {
        let queue: QueueArn = "arn:aws:sqs:eu-west-1:444455556666:keyward-key-events"
            .parse()
            .unwrap();
        let text = eventbridge_setup(&queue, Some("111122223333"));
        for needle in [
            "arn:aws:events:eu-west-1:444455556666:event-bus/default",
            "arn:aws:iam::111122223333:role/keyward-kms-key-events-to-keyward",
            "--principal 111122223333",
            "https://sqs.eu-west-1.amazonaws.com/444455556666/keyward-key-events",
            r#"\"aws:SourceArn\":\"arn:aws:events:eu-west-1:444455556666:rule/keyward-kms-key-events\""#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("CUSTOMER_ACCOUNT_ID"));
        assert!(eventbridge_setup(&queue, None).contains("CUSTOMER_ACCOUNT_ID"));
    }

    #[test]
    fn bad_queue_arns_say_what_is_wrong() {
        for (arn, needle) in [
            ("keyward-key-events", "is not a queue ARN"),
            (
                "arn:aws:sns:eu-west-1:444455556666:topic",
                "names service 'sns', not sqs",
            ),
            ("arn:aws:sqs:europe:444455556666:q", "region 'europe'"),
            ("arn:aws:sqs:eu-west-1:4444:q", "account '4444'"),
            ("arn:aws:sqs:eu-west-1:444455556666:a b", "queue name 'a b'"),
            ("arn:gcp:sqs:eu-west-1:444455556666:q", "partition"),
        ] {
            let err = arn.parse::<QueueArn>().unwrap_err();
            assert!(err.contains(needle), "{arn}: {err}");
            assert!(err.contains("expected arn:aws:sqs:"), "{err}");
        }
    }
}
