//! `[aws_events]`: the customer's KMS key events, from CloudTrail through an EventBridge rule into
//! an SQS queue that Keyward long-polls (docs/adr/0013-key-event-sources.md,
//! docs/operations.md "Key events from AWS (EventBridge → SQS)").
//!
//! Each message is read as a KMS management event (`cloudtrail`); its key ARN is matched with the
//! key references tenants are bound to, and every tenant bound to the key is checked with the KMS
//! at once ([`KeyEventSink::recheck`]). The event is a hint: the KMS answer is the evidence, so a
//! forged, replayed or stale message can cost a KMS call but can neither revoke nor restore.
//!
//! A message is deleted once it was handled (the KMS answered for every tenant bound to its
//! key), or when it is refused (malformed, foreign, irrelevant, unknown key): refused messages
//! are counted and logged, never trusted. When the KMS or the store does not answer, the message
//! is left in the queue: SQS delivers it again once its visibility timeout has passed.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};
use aws_smithy_types::error::display::DisplayErrorContext;
use keyward_kms::{
    ConfigSection, ConfigSectionError, ConfiguredEventSource, DeferReason, ErrorKind, KeyEventSink,
    KeyEventSource, KeyEventSourceFactory, ProviderError, ProviderKind, RecheckSummary,
    RejectReason, SinkError, SourceEvent,
};

mod cloudtrail;
mod customer_side;

use crate::key_ref::is_region;

pub use cloudtrail::KEY_EVENT_NAMES;
pub use customer_side::{QueueArn, RULE_NAME, event_pattern, eventbridge_setup};

/// The configuration section, the `source` label of the metrics and the prefix of the
/// environment variables (`KEYWARD_AWS_EVENTS__QUEUE_URL`).
pub const SECTION: &str = "aws_events";

/// `[aws_events]`: which queue to long-poll, and how. Credentials come from the standard AWS
/// chain, as for `[aws_kms]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsEventsConfig {
    /// The queue's URL, `https://sqs.<region>.amazonaws.com/<account>/<name>` (any host with
    /// `endpoint_url`). Required.
    pub queue_url: String,
    /// The queue's region; default: the one in `queue_url`'s host (`sqs.<region>.amazonaws.com`).
    #[serde(default)]
    pub region: Option<String>,
    /// Overrides the SQS endpoint (a VPC endpoint, or an emulator in tests).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The long poll: how long one `ReceiveMessage` waits for a message, 0 to 20 s (SQS's
    /// maximum). Default 20: one request per 20 s on an idle queue, and a message is received as
    /// soon as it arrives.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: u32,
    /// Messages per `ReceiveMessage`, 1 to 10 (SQS's maximum). Default 10.
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// How long a received message stays hidden from other receivers, 0 to 43200 s; a message
    /// whose re-check found the KMS unavailable comes back after it. Default: the queue's own
    /// (30 s unless the queue says otherwise).
    #[serde(default)]
    pub visibility_timeout_seconds: Option<u32>,
}

fn default_wait_seconds() -> u32 {
    20
}

fn default_max_messages() -> u32 {
    10
}

impl AwsEventsConfig {
    /// The checked configuration: a precise error for each bad value, naming the key.
    fn validate(&self) -> Result<QueueSettings, String> {
        let url = self.queue_url.as_str();
        let expected =
            "expected https://sqs.<region>.amazonaws.com/<12-digit account>/<queue name>";
        let Some(rest) = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
        else {
            return Err(format!(
                "queue_url '{}' is not an http(s) URL; {expected}",
                bounded(url)
            ));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [host, account, name] = parts[..] else {
            return Err(format!(
                "queue_url '{}' is not <host>/<account>/<queue name>; {expected}",
                bounded(url)
            ));
        };
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "queue_url's account '{}' is not 12 digits; {expected}",
                bounded(account)
            ));
        }
        // SQS: 1 to 80 characters of [A-Za-z0-9_-], a FIFO queue's ending in `.fifo`.
        let base = name.strip_suffix(".fifo").unwrap_or(name);
        if base.is_empty()
            || name.len() > 80
            || !base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "queue_url's queue name '{}' must be 1 to 80 characters from A-Z, a-z, 0-9, '-' \
                 and '_' (and '.fifo' at the end of a FIFO queue's)",
                bounded(name)
            ));
        }
        if url.starts_with("http://") && self.endpoint_url.is_none() {
            return Err(
                "queue_url must be https:// (http:// only with endpoint_url, for an \
                        emulator)"
                    .to_owned(),
            );
        }
        let host_region = host
            .strip_prefix("sqs.")
            .and_then(|h| h.split_once('.'))
            .map(|(region, _)| region)
            .filter(|r| is_region(r));
        let region = match (&self.region, host_region) {
            (Some(r), _) if !is_region(r) => {
                return Err(format!(
                    "region '{}' is not a region name like eu-west-1",
                    bounded(r)
                ));
            }
            (Some(r), Some(h)) if r != h => {
                return Err(format!(
                    "region '{r}' differs from the region of queue_url's host ('{h}')"
                ));
            }
            (Some(r), _) => r.clone(),
            (None, Some(h)) => h.to_owned(),
            (None, None) => {
                return Err(
                    "region is required when queue_url's host is not sqs.<region>.amazonaws.com"
                        .to_owned(),
                );
            }
        };
        if let Some(e) = &self.endpoint_url
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            return Err(format!(
                "endpoint_url '{}' is not an http(s) URL, e.g. https://sqs.eu-west-1.amazonaws.com",
                bounded(e)
            ));
        }
        if self.wait_seconds > 20 {
            return Err(format!(
                "wait_seconds is {}; it must be 0 to 20 (SQS's longest long poll)",
                self.wait_seconds
            ));
        }
        if !(1..=10).contains(&self.max_messages) {
            return Err(format!(
                "max_messages is {}; it must be 1 to 10 (SQS's largest batch)",
                self.max_messages
            ));
        }
        if let Some(v) = self.visibility_timeout_seconds
            && v > 43_200
        {
            return Err(format!(
                "visibility_timeout_seconds is {v}; it must be 0 to 43200 (12 hours, SQS's maximum)"
            ));
        }
        Ok(QueueSettings {
            queue_url: self.queue_url.clone(),
            region,
            endpoint_url: self.endpoint_url.clone(),
            wait_seconds: self.wait_seconds,
            max_messages: self.max_messages,
            visibility_timeout_seconds: self.visibility_timeout_seconds,
        })
    }
}

/// A checked [`AwsEventsConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueSettings {
    queue_url: String,
    region: String,
    endpoint_url: Option<String>,
    wait_seconds: u32,
    max_messages: u32,
    visibility_timeout_seconds: Option<u32>,
}

/// `[aws_events]`, as the server's registry sees it: absent, no source runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsEventsFactory;

impl KeyEventSourceFactory for AwsEventsFactory {
    fn config_section(&self) -> &'static str {
        SECTION
    }

    fn configure(
        &self,
        section: Option<&ConfigSection>,
    ) -> Result<Option<Arc<dyn ConfiguredEventSource>>, ConfigSectionError> {
        let Some(section) = section else {
            return Ok(None);
        };
        let config: AwsEventsConfig = section.deserialize()?;
        let settings = config
            .validate()
            .map_err(|m| ConfigSectionError::new(SECTION, m))?;
        Ok(Some(Arc::new(settings)))
    }
}

#[async_trait]
impl ConfiguredEventSource for QueueSettings {
    async fn build(&self) -> Result<Arc<dyn KeyEventSource>, ProviderError> {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .load()
            .await;
        // A receive waits up to wait_seconds for its answer: the attempt timeout leaves 10 s on
        // top of the long poll; retries are the SDK's standard ones.
        let attempt = Duration::from_secs(u64::from(self.wait_seconds) + 10);
        let timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(attempt)
            .operation_timeout(attempt * 3)
            .connect_timeout(Duration::from_secs(3))
            .build();
        let mut conf = aws_sdk_sqs::config::Builder::from(&sdk)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(url) = &self.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        if sdk.credentials_provider().is_none() {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                "[aws_events]: no AWS credentials provider (the standard chain is empty)",
            ));
        }
        Ok(Arc::new(SqsEventSource {
            client: aws_sdk_sqs::Client::from_conf(conf.build()),
            settings: self.clone(),
        }))
    }
}

/// The running `[aws_events]` source: one long-poll loop over the queue.
#[derive(Debug)]
pub struct SqsEventSource {
    client: aws_sdk_sqs::Client,
    settings: QueueSettings,
}

/// Backoff after a failed receive: doubles from 1 s to at most 60 s.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[async_trait]
impl KeyEventSource for SqsEventSource {
    fn name(&self) -> &'static str {
        SECTION
    }

    async fn run(self: Arc<Self>, sink: Arc<dyn KeyEventSink>) {
        tracing::info!(queue = %self.settings.queue_url, "key events: long-polling the SQS queue");
        let mut backoff = MIN_BACKOFF;
        loop {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.settings.queue_url)
                .max_number_of_messages(self.settings.max_messages as i32)
                .wait_time_seconds(self.settings.wait_seconds as i32)
                .set_visibility_timeout(self.settings.visibility_timeout_seconds.map(|v| v as i32))
                .send()
                .await;
            match received {
                Ok(out) => {
                    backoff = MIN_BACKOFF;
                    let messages = out.messages.unwrap_or_default();
                    if !messages.is_empty() {
                        self.handle_batch(messages, sink.as_ref()).await;
                    }
                }
                Err(e) => {
                    sink.record(SECTION, SourceEvent::ReceiveFailed);
                    let error = bounded(&DisplayErrorContext(&e).to_string());
                    tracing::warn!(queue = %self.settings.queue_url, %error, retry_in_seconds = backoff.as_secs(), "key events: cannot receive from the SQS queue");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

impl SqsEventSource {
    /// Handles one batch of messages and deletes those that are done with (handled or refused).
    async fn handle_batch(&self, messages: Vec<Message>, sink: &dyn KeyEventSink) {
        let mut done: Vec<&Message> = Vec::new();
        let mut events = Vec::new();
        for message in &messages {
            sink.record(SECTION, SourceEvent::Received);
            match cloudtrail::parse(message.body().unwrap_or_default()) {
                Ok(event) => events.push((message, event)),
                Err(reason) => {
                    self.rejected(message, reason, None, sink);
                    done.push(message);
                }
            }
        }
        if !events.is_empty() {
            done.extend(self.recheck_events(events, sink).await);
        }
        self.delete(&done, sink).await;
    }

    /// Re-checks the keys the events name (each key once per batch, however many events name
    /// it); returns the messages that are done with.
    async fn recheck_events<'m>(
        &self,
        events: Vec<(&'m Message, cloudtrail::KeyEvent)>,
        sink: &dyn KeyEventSink,
    ) -> Vec<&'m Message> {
        let bound = match sink.bound_keys(ProviderKind::AwsKms).await {
            Ok(bound) => bound,
            Err(e) => {
                tracing::warn!(error = %bounded(&e.to_string()), "key events: cannot read the bound keys; the messages will be delivered again");
                for _ in &events {
                    sink.record(SECTION, SourceEvent::Deferred(DeferReason::Store));
                }
                return Vec::new();
            }
        };
        let mut rechecked: HashMap<String, Result<RecheckSummary, SinkError>> = HashMap::new();
        let mut done = Vec::new();
        for (message, event) in events {
            // The references of current bindings that name the key (through a role or not), and
            // the key ARN itself, which also finds older bindings registered without a role.
            let mut refs = cloudtrail::matching_refs(&event.key_arns, &bound);
            for arn in &event.key_arns {
                if !refs.contains(&arn.as_str()) {
                    refs.push(arn.as_str());
                }
            }
            let mut summary = RecheckSummary::default();
            let mut store_failed = false;
            for key_ref in refs {
                if !rechecked.contains_key(key_ref) {
                    let result = sink.recheck(ProviderKind::AwsKms, key_ref).await;
                    rechecked.insert(key_ref.to_owned(), result);
                }
                match &rechecked[key_ref] {
                    Ok(s) => summary = summary + *s,
                    Err(_) => store_failed = true,
                }
            }
            let id = message.message_id().unwrap_or_default();
            if !store_failed && summary.checked == 0 {
                self.rejected(message, RejectReason::UnknownKey, Some(event.name), sink);
                done.push(message);
                continue;
            }
            if store_failed || !summary.complete() {
                let reason = if store_failed {
                    DeferReason::Store
                } else {
                    DeferReason::KmsUnavailable
                };
                sink.record(SECTION, SourceEvent::Deferred(reason));
                tracing::warn!(message_id = %bounded(id), event = event.name, keys = ?event.key_arns, reason = reason.as_str(), "key event: the re-check got no answer for every tenant; the message will be delivered again after its visibility timeout");
                continue;
            }
            sink.record(SECTION, SourceEvent::Handled);
            tracing::info!(message_id = %bounded(id), event = event.name, keys = ?event.key_arns, checked = summary.checked, revoked = summary.revoked, restored = summary.restored, "key event: tenants bound to the key re-checked with the KMS");
            done.push(message);
        }
        done
    }

    fn rejected(
        &self,
        message: &Message,
        reason: RejectReason,
        event: Option<&str>,
        sink: &dyn KeyEventSink,
    ) {
        sink.record(SECTION, SourceEvent::Rejected(reason));
        // The message id and the reason only: the body is the sender's, and may be anything.
        let id = bounded(message.message_id().unwrap_or_default());
        let bytes = message.body().map_or(0, str::len);
        let event = event.unwrap_or("");
        if reason == RejectReason::UnknownKey {
            // The customer's other keys: expected, not worth a warning.
            tracing::debug!(message_id = %id, reason = reason.as_str(), event, bytes, "key event for a key no tenant is bound to; deleted");
        } else {
            tracing::warn!(message_id = %id, reason = reason.as_str(), event, bytes, "key event refused and deleted; nothing was re-checked");
        }
    }

    /// Deletes `messages` (in batches of at most 10, SQS's limit). A failed delete is logged:
    /// the message comes back and is handled again, which the KMS answer makes harmless.
    async fn delete(&self, messages: &[&Message], sink: &dyn KeyEventSink) {
        for chunk in messages.chunks(10) {
            let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let result = self
                .client
                .delete_message_batch()
                .queue_url(&self.settings.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            let failed = match result {
                Ok(out) => out.failed().len(),
                Err(e) => {
                    let error = bounded(&DisplayErrorContext(&e).to_string());
                    tracing::warn!(%error, "key events: cannot delete messages; they will be delivered and handled again");
                    chunk.len()
                }
            };
            for _ in 0..failed {
                sink.record(SECTION, SourceEvent::DeleteFailed);
            }
        }
    }
}

/// `s` cut to 200 characters, control characters replaced: what a log line may quote of
/// something a sender chose.
fn bounded(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn section(v: serde_json::Value) -> ConfigSection {
        ConfigSection::new(SECTION, v)
    }

    fn configure(v: serde_json::Value) -> Result<(), String> {
        AwsEventsFactory
            .configure(Some(&section(v)))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_queue_url_alone_is_enough_and_the_defaults_are_sqs_limits() {
        let c: AwsEventsConfig = section(serde_json::json!({
            "queue_url": "https://sqs.eu-west-1.amazonaws.com/111122223333/keyward-key-events"
        }))
        .deserialize()
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.region, "eu-west-1");
        assert_eq!((s.wait_seconds, s.max_messages), (20, 10));
        assert_eq!(s.visibility_timeout_seconds, None);
        assert!(AwsEventsFactory.configure(None).unwrap().is_none());
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let url = "https://sqs.eu-west-1.amazonaws.com/111122223333/q";
        let cases = [
            (serde_json::json!({}), "missing field `queue_url`"),
            (
                serde_json::json!({"queue_url": url, "wait": 3}),
                "unknown field `wait`",
            ),
            (
                serde_json::json!({"queue_url": "sqs.eu-west-1.amazonaws.com/111122223333/q"}),
                "is not an http(s) URL",
            ),
            (
                serde_json::json!({"queue_url": "https://sqs.eu-west-1.amazonaws.com/q"}),
                "is not <host>/<account>/<queue name>",
            ),
            (
                serde_json::json!({"queue_url": "https://sqs.eu-west-1.amazonaws.com/1111/q"}),
                "account '1111' is not 12 digits",
            ),
            (
                serde_json::json!({"queue_url": "https://sqs.eu-west-1.amazonaws.com/111122223333/a b"}),
                "queue name 'a b'",
            ),
            (
                serde_json::json!({"queue_url": "http://sqs.eu-west-1.amazonaws.com/111122223333/q"}),
                "queue_url must be https://",
            ),
            (
                serde_json::json!({"queue_url": "https://vpce.example/111122223333/q"}),
                "region is required",
            ),
            (
                serde_json::json!({"queue_url": url, "region": "eu-west-2"}),
                "differs from the region of queue_url's host ('eu-west-1')",
            ),
            (
                serde_json::json!({"queue_url": url, "region": "Europe"}),
                "region 'Europe' is not a region name",
            ),
            (
                serde_json::json!({"queue_url": url, "endpoint_url": "sqs.local"}),
                "endpoint_url 'sqs.local' is not an http(s) URL",
            ),
            (
                serde_json::json!({"queue_url": url, "wait_seconds": 21}),
                "wait_seconds is 21; it must be 0 to 20",
            ),
            (
                serde_json::json!({"queue_url": url, "max_messages": 0}),
                "max_messages is 0; it must be 1 to 10",
            ),
            (
                serde_json::json!({"queue_url": url, "max_messages": 11}),
                "max_messages is 11",
            ),
            (
                serde_json::json!({"queue_url": url, "visibility_timeout_seconds": 43201}),
                "visibility_timeout_seconds is 43201",
            ),
            (
                serde_json::json!({"queue_url": url, "wait_seconds": -1}),
                "invalid value",
            ),
        ];
        for (value, needle) in cases {
            let err = configure(value.clone()).unwrap_err();
            assert!(
                err.starts_with("[aws_events]: ") && err.contains(needle),
                "{value}: {err}"
            );
        }
        // An emulator: plain HTTP with an endpoint override and an explicit region.
        configure(serde_json::json!({
            "queue_url": "http://127.0.0.1:5000/123456789012/events",
            "endpoint_url": "http://127.0.0.1:5000",
            "region": "us-east-1",
            "wait_seconds": 1,
            "max_messages": 5,
            "visibility_timeout_seconds": 2,
        }))
        .unwrap();
    }

    #[test]
    fn log_quotes_are_bounded_and_printable() {
        let quoted = bounded(&format!("a\nb{}", "x".repeat(1000)));
        assert_eq!(quoted.chars().count(), 200);
        assert!(quoted.starts_with("a?b"));
    }
}
