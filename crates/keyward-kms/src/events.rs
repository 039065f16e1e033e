//! Key events that arrive on their own (docs/adr/0013-key-event-sources.md): a provider crate may
//! offer a [`KeyEventSource`] (AWS: CloudTrail via EventBridge into an SQS queue) that tells the
//! server "something happened to this key". The server never trusts it: it answers by checking
//! every tenant bound to the key with the KMS ([`KeyEventSink::recheck`]), exactly as the monitor
//! does, so an event is a hint that shortens the revocation window, never evidence.
//!
//! The joint is provider-neutral, like [`crate::ProviderFactory`]: the provider crate owns its
//! configuration section ([`KeyEventSourceFactory`]), the wire format of its events and how an
//! event's key maps to the key references it stored ([`KeyEventSink::bound_keys`] hands it the
//! references, it picks); the server implements the [`KeyEventSink`] over its keyring and counts
//! what the source reports ([`SourceEvent`]) in its metrics.

use std::{fmt, sync::Arc};

use async_trait::async_trait;

use crate::{ConfigSection, ConfigSectionError, ProviderError, ProviderKind};

/// What a provider crate exports so that a server can receive its key events without naming it.
pub trait KeyEventSourceFactory: Send + Sync + fmt::Debug {
    /// The top-level section of `keyward.toml` that configures the source (`aws_events`), also
    /// the prefix of its environment variables and its `source` metric label.
    fn config_section(&self) -> &'static str;

    /// Reads and checks the section; `Ok(None)` (no section): no source runs.
    fn configure(
        &self,
        section: Option<&ConfigSection>,
    ) -> Result<Option<Arc<dyn ConfiguredEventSource>>, ConfigSectionError>;
}

/// A key-event source's checked configuration, ready to build the source.
#[async_trait]
pub trait ConfiguredEventSource: Send + Sync + fmt::Debug {
    /// Builds the source (SDK clients); a failure stops the server's start.
    async fn build(&self) -> Result<Arc<dyn KeyEventSource>, ProviderError>;
}

/// A running source of key events.
#[async_trait]
pub trait KeyEventSource: Send + Sync + fmt::Debug {
    /// Its configuration section (`aws_events`): the `source` label of its metrics and logs.
    fn name(&self) -> &'static str;

    /// Receives events and hands each to `sink` until the task is dropped (the server aborts it
    /// at shutdown). Must not return on a transient failure of its transport: it logs, backs
    /// off and tries again.
    async fn run(self: Arc<Self>, sink: Arc<dyn KeyEventSink>);
}

/// What the server offers a key-event source: the keys bound now, the re-check with the KMS, and
/// the counters of what the source saw.
#[async_trait]
pub trait KeyEventSink: Send + Sync + fmt::Debug {
    /// The distinct key references of `kind` that tenants' current bindings name (in the form the
    /// store keeps them: the provider's canonical form), for the source to match an event's key
    /// against.
    async fn bound_keys(&self, kind: ProviderKind) -> Result<Vec<String>, SinkError>;

    /// Checks every tenant currently bound to `key_ref` with the KMS now and applies what the
    /// KMS answers (revocation or restoration); the event that led here decides nothing.
    async fn recheck(&self, kind: ProviderKind, key_ref: &str)
    -> Result<RecheckSummary, SinkError>;

    /// Counts what the source `source` did with one message (metrics; never blocks).
    fn record(&self, source: &'static str, event: SourceEvent);
}

/// What one re-check of a key found, tenant by tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecheckSummary {
    /// Tenants bound to the key and checked.
    pub checked: u32,
    /// Tenants the KMS refused: revoked (or destroyed) now.
    pub revoked: u32,
    /// Tenants whose key works again: restored now.
    pub restored: u32,
    /// Tenants whose check got no verdict (the KMS unreachable or throttled; rarely, the store
    /// failing during that tenant's check), so the event should be tried again later (a source
    /// leaves its message to be delivered again).
    pub unavailable: u32,
}

impl RecheckSummary {
    /// A summary of the given counts.
    pub fn new(checked: u32, revoked: u32, restored: u32, unavailable: u32) -> Self {
        Self {
            checked,
            revoked,
            restored,
            unavailable,
        }
    }

    /// Whether the KMS answered for every tenant checked.
    pub fn complete(&self) -> bool {
        self.unavailable == 0
    }
}

/// The sum of two summaries (an event naming several keys).
impl std::ops::Add for RecheckSummary {
    type Output = Self;

    fn add(self, other: RecheckSummary) -> Self {
        Self {
            checked: self.checked + other.checked,
            revoked: self.revoked + other.revoked,
            restored: self.restored + other.restored,
            unavailable: self.unavailable + other.unavailable,
        }
    }
}

/// The server could not look up or re-check the keys (its store failed); the source keeps the
/// event to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// One thing a source did with a message, counted by the server
/// (`keyward_key_event_messages_*`, docs/observability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceEvent {
    /// A message was received.
    Received,
    /// A message was handled: the KMS answered for every tenant bound to its key (or no tenant
    /// is bound to it), and the message was deleted.
    Handled,
    /// A message was refused ([`RejectReason`]) and deleted without any KMS call.
    Rejected(RejectReason),
    /// A message was left for redelivery: the KMS or the store did not answer.
    Deferred(DeferReason),
    /// Receiving failed (the queue could not be read); the source backs off.
    ReceiveFailed,
    /// Deleting handled or rejected messages failed; they come back and are handled again
    /// (harmless: the KMS answer decides).
    DeleteFailed,
}

/// Why a message was refused. Bounded: these are label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// Larger than the source accepts.
    Oversize,
    /// Not a JSON object.
    NotJson,
    /// JSON, but not an event of the expected kind (source, detail type, event source).
    NotKeyEvent,
    /// A key event, but not one of the API calls that can change a key's usability.
    UnexpectedEvent,
    /// The API call it records failed (`errorCode`): the key did not change.
    FailedCall,
    /// It names no key (no key ARN in its resources or request parameters).
    NoKey,
    /// The key it names belongs to another account than the one the event comes from.
    ForeignAccount,
    /// No tenant is bound to the key it names.
    UnknownKey,
}

impl RejectReason {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversize => "oversize",
            RejectReason::NotJson => "not_json",
            RejectReason::NotKeyEvent => "not_key_event",
            RejectReason::UnexpectedEvent => "unexpected_event",
            RejectReason::FailedCall => "failed_call",
            RejectReason::NoKey => "no_key",
            RejectReason::ForeignAccount => "foreign_account",
            RejectReason::UnknownKey => "unknown_key",
        }
    }

    /// Every reason, in documentation order.
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Oversize,
        RejectReason::NotJson,
        RejectReason::NotKeyEvent,
        RejectReason::UnexpectedEvent,
        RejectReason::FailedCall,
        RejectReason::NoKey,
        RejectReason::ForeignAccount,
        RejectReason::UnknownKey,
    ];
}

/// Why a message was left for redelivery. Bounded: these are label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeferReason {
    /// No verdict for at least one tenant: the KMS did not answer (outage, throttling, quota),
    /// or, rarely, the store failed during that tenant's check.
    KmsUnavailable,
    /// The server's store failed.
    Store,
}

impl DeferReason {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::KmsUnavailable => "kms_unavailable",
            DeferReason::Store => "store",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_label_values() {
        let mut labels: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
    }

    #[test]
    fn a_summary_is_complete_only_when_the_kms_answered_for_every_tenant() {
        let ok = RecheckSummary::new(2, 1, 0, 0);
        assert!(ok.complete());
        let partial = ok + RecheckSummary::new(1, 0, 0, 1);
        assert_eq!(partial, RecheckSummary::new(3, 1, 0, 1));
        assert!(!partial.complete());
    }
}
