//! moto's SQS (served on the same port as its KMS) and KMS management events shaped exactly as
//! CloudTrail delivers them through an EventBridge rule, for the `[aws_events]` tests.

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use super::MotoServer;

/// A DisableKey event as EventBridge delivers it to an SQS target (`detail-type: "AWS API Call
/// via CloudTrail"`), with the documented CloudTrail record in `detail`; the other events change
/// only `eventName` and `requestParameters`.
pub const DISABLE_KEY_EVENT: &str = include_str!("eventbridge_kms_disable_key.json");

/// The KMS management event `event_name` on `key_arn`, from the key's account and region (the
/// fixture [`DISABLE_KEY_EVENT`] with its key, account, region and request adapted).
pub fn kms_event(event_name: &str, key_arn: &str) -> Value {
    let mut event: Value = serde_json::from_str(DISABLE_KEY_EVENT).expect("fixture is JSON");
    let fields: Vec<&str> = key_arn.splitn(6, ':').collect();
    let (region, account) = (fields[3], fields[4]);
    let key_id = key_arn.rsplit('/').next().expect("a key ARN");
    event["account"] = account.into();
    event["region"] = region.into();
    let detail = &mut event["detail"];
    detail["eventName"] = event_name.into();
    detail["awsRegion"] = region.into();
    detail["recipientAccountId"] = account.into();
    detail["userIdentity"]["accountId"] = account.into();
    detail["resources"][0]["accountId"] = account.into();
    detail["resources"][0]["ARN"] = key_arn.into();
    detail["requestParameters"] = match event_name {
        "ScheduleKeyDeletion" => serde_json::json!({ "keyId": key_id, "pendingWindowInDays": 7 }),
        "PutKeyPolicy" => {
            serde_json::json!({ "keyId": key_id, "policyName": "default", "policy": "{…}",
                                "bypassPolicyLockoutSafetyCheck": false })
        }
        "RevokeGrant" | "RetireGrant" => serde_json::json!({
            "keyId": key_arn,
            "grantId": "0c237476b39f8bc44e45212e08498fbe3151305030726c0590dd8d3e9f3d6a60"
        }),
        _ => serde_json::json!({ "keyId": key_id }),
    };
    event
}

impl MotoServer {
    /// An unmodified SQS client for this emulator.
    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        let sdk = self.sdk_config().await;
        let conf = aws_sdk_sqs::config::Builder::from(&sdk)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }

    /// `CreateQueue` `name` (standard queue, visibility timeout `visibility_seconds`); returns
    /// its URL.
    pub async fn create_queue(&self, name: &str, visibility_seconds: u32) -> String {
        self.sqs_client()
            .await
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_seconds.to_string(),
            )
            .send()
            .await
            .expect("CreateQueue on moto")
            .queue_url()
            .expect("CreateQueue returns the queue URL")
            .to_owned()
    }

    /// `SendMessage` of `body` to the queue at `queue_url`.
    pub async fn send_message(&self, queue_url: &str, body: &str) {
        self.sqs_client()
            .await
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .expect("SendMessage on moto");
    }

    /// Messages in the queue: (visible, in flight), from `GetQueueAttributes`.
    pub async fn queue_depth(&self, queue_url: &str) -> (u64, u64) {
        let out = self
            .sqs_client()
            .await
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("GetQueueAttributes on moto");
        let count = |name: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }
}
