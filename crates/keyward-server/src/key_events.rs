//! Key events that arrive on their own (docs/adr/0013-key-event-sources.md): the server's side of
//! the [`KeyEventSink`] joint. A source (built by a provider crate from its own configuration
//! section, e.g. `[aws_events]`) asks which keys are bound and has the tenants bound to a key
//! re-checked with the KMS; what it did with each message is counted in [`Metrics`]. Nothing here
//! names a KMS: the source matched the event to a stored key reference, and the keyring's check
//! is the one the monitor and `ReportKeyEvent` use, so an event decides nothing by itself.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use keyward_kms::{
    KeyEventSink, KeyEventSource, ProviderKind, RecheckSummary, SinkError, SourceEvent,
};

use crate::{Keyring, keyring::CheckOutcome, metrics::Metrics};

/// The keyring and the metrics, as a key-event source sees them.
#[derive(Debug)]
pub(crate) struct KeyringEventSink {
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
    /// The source's name (its section), the label of the re-check latency.
    source: &'static str,
}

impl KeyringEventSink {
    pub(crate) fn new(keyring: Arc<Keyring>, metrics: Arc<Metrics>, source: &'static str) -> Self {
        Self {
            keyring,
            metrics,
            source,
        }
    }
}

#[async_trait]
impl KeyEventSink for KeyringEventSink {
    async fn bound_keys(&self, kind: ProviderKind) -> Result<Vec<String>, SinkError> {
        self.keyring
            .bound_key_refs(kind)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn recheck(
        &self,
        kind: ProviderKind,
        key_ref: &str,
    ) -> Result<RecheckSummary, SinkError> {
        let started = Instant::now();
        let outcomes = self
            .keyring
            .recheck_key_outcomes(kind, key_ref)
            .await
            .map_err(|e| SinkError(e.to_string()));
        self.metrics
            .key_event_recheck(self.source, started.elapsed());
        let mut summary = RecheckSummary::default();
        for (tenant, outcome) in outcomes? {
            let counts = match outcome {
                CheckOutcome::Revoked => {
                    tracing::warn!(%tenant, "key event: the KMS refuses the tenant's key; revoked");
                    RecheckSummary::new(1, 1, 0, 0)
                }
                CheckOutcome::Restored => {
                    tracing::info!(%tenant, "key event: the KMS accepts the tenant's key again; restored");
                    RecheckSummary::new(1, 0, 1, 0)
                }
                CheckOutcome::Unavailable => RecheckSummary::new(1, 0, 0, 1),
                _ => RecheckSummary::new(1, 0, 0, 0),
            };
            summary = summary + counts;
        }
        Ok(summary)
    }

    fn record(&self, source: &'static str, event: SourceEvent) {
        self.metrics.key_event(source, event);
    }
}

/// Runs `source` over the keyring until the task is dropped.
pub(crate) async fn run_source(
    source: Arc<dyn KeyEventSource>,
    keyring: Arc<Keyring>,
    metrics: Arc<Metrics>,
) {
    let sink = Arc::new(KeyringEventSink::new(keyring, metrics, source.name()));
    source.run(sink).await;
}
