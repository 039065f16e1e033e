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

use crate::{Keyring, error::ServiceError, keyring::CheckOutcome, metrics::Metrics};

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
                Ok(CheckOutcome::Revoked) => {
                    tracing::warn!(%tenant, "key event: the KMS refuses the tenant's key; revoked");
                    RecheckSummary::new(1, 1, 0, 0)
                }
                Ok(CheckOutcome::Restored) => {
                    tracing::info!(%tenant, "key event: the KMS accepts the tenant's key again; restored");
                    RecheckSummary::new(1, 0, 1, 0)
                }
                Ok(CheckOutcome::Unavailable) => RecheckSummary::new(1, 0, 0, 1),
                Ok(_) => RecheckSummary::new(1, 0, 0, 0),
                // Worth trying again: the store failed, or the state changed under the check.
                Err(
                    e @ (ServiceError::Store(_)
                    | ServiceError::Conflict(_)
                    | ServiceError::Internal(_)),
                ) => {
                    tracing::warn!(%tenant, error = %e, "key event: the tenant's check failed; the event will be tried again");
                    RecheckSummary::new(1, 0, 0, 1)
                }
                // Not something a later try fixes (the stored tenant key rejected, the provider
                // not configured, a misconfigured key): the monitor and the data path report it.
                Err(e) => {
                    tracing::error!(%tenant, error = %e, "key event: the tenant's key could not be checked");
                    RecheckSummary::new(1, 0, 0, 0)
                }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::time::Duration;

    use keyward_envelope::TenantId;
    use keyward_kms::{KeyRef, controlled::Controlled, local::LocalProvider};
    use keyward_store::{KekState, sqlite::SqliteStore};

    use super::*;
    use crate::{CachePolicy, Providers, keyring::RotationPolicy};

    /// Two tenants bound to the local key `k1`, one to `k2`.
    async fn fixture() -> (
        tempfile::TempDir,
        Arc<Controlled<LocalProvider>>,
        Arc<Keyring>,
        KeyringEventSink,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let inner = LocalProvider::open(dir.path().join("kms")).unwrap();
        inner.create_key("k1").unwrap();
        inner.create_key("k2").unwrap();
        let kms = Arc::new(Controlled::new(inner));
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        let keyring = Arc::new(Keyring::new(
            store,
            Providers::default().with(kms.clone()),
            CachePolicy {
                ttl: Duration::from_secs(300),
                max_tenant_keys: 100,
                max_deks: 1000,
            },
            RotationPolicy {
                max_age: Duration::from_secs(3600),
                max_messages: 1 << 20,
                max_bytes: 1 << 30,
            },
            Arc::new(keyward_audit::IdentifierHasher::new([3; 32])),
        ));
        for (t, key) in [("a", "k1"), ("b", "k1"), ("c", "k2")] {
            let t = TenantId::try_from(t).unwrap();
            keyring.create_tenant(&t, "t", "test".into()).await.unwrap();
            keyring
                .register_key(&t, &KeyRef::new(ProviderKind::Local, key))
                .await
                .unwrap();
        }
        let sink = KeyringEventSink::new(
            Arc::clone(&keyring),
            Arc::new(Metrics::new(10)),
            "test_events",
        );
        (dir, kms, keyring, sink)
    }

    async fn state(keyring: &Keyring, t: &str) -> KekState {
        let t = TenantId::try_from(t).unwrap();
        keyring
            .tenant_state(&t)
            .await
            .unwrap()
            .current()
            .unwrap()
            .state
    }

    #[tokio::test]
    async fn the_kms_answer_decides_for_every_tenant_bound_to_the_key_and_no_other() {
        let (_dir, kms, keyring, sink) = fixture().await;
        assert_eq!(
            sink.bound_keys(ProviderKind::Local).await.unwrap(),
            ["k1", "k2"]
        );
        assert!(
            sink.bound_keys(ProviderKind::AwsKms)
                .await
                .unwrap()
                .is_empty()
        );

        // The key still works: checked, nothing changes.
        let s = sink.recheck(ProviderKind::Local, "k1").await.unwrap();
        assert_eq!(s, RecheckSummary::new(2, 0, 0, 0));
        assert!(s.complete());

        // An outage: no verdict, nothing revoked, the event is to be tried again.
        kms.set_outage(true);
        let s = sink.recheck(ProviderKind::Local, "k1").await.unwrap();
        assert_eq!((s.checked, s.revoked, s.unavailable), (2, 0, 2));
        assert!(!s.complete());
        kms.set_outage(false);

        // Disabled at the KMS: both tenants of k1 revoked, the tenant of k2 untouched.
        kms.inner().set_enabled("k1", false).unwrap();
        let s = sink.recheck(ProviderKind::Local, "k1").await.unwrap();
        assert_eq!(s, RecheckSummary::new(2, 2, 0, 0));
        assert_eq!(state(&keyring, "a").await, KekState::Revoked);
        assert_eq!(state(&keyring, "b").await, KekState::Revoked);
        assert_eq!(state(&keyring, "c").await, KekState::Active);

        // Enabled again: restored.
        kms.inner().set_enabled("k1", true).unwrap();
        let s = sink.recheck(ProviderKind::Local, "k1").await.unwrap();
        assert_eq!(s, RecheckSummary::new(2, 0, 2, 0));
        assert_eq!(state(&keyring, "a").await, KekState::Restored);

        // Tenant c rotates from k2 to k1: its older binding is still found by k2, which no
        // current binding names any more.
        let c = TenantId::try_from("c").unwrap();
        keyring
            .register_key(&c, &KeyRef::new(ProviderKind::Local, "k1"))
            .await
            .unwrap();
        assert_eq!(sink.bound_keys(ProviderKind::Local).await.unwrap(), ["k1"]);
        let s = sink.recheck(ProviderKind::Local, "k2").await.unwrap();
        assert_eq!(s, RecheckSummary::new(1, 0, 0, 0));

        // A key nobody is bound to: nothing checked.
        let s = sink.recheck(ProviderKind::Local, "k3").await.unwrap();
        assert_eq!(s, RecheckSummary::default());
    }
}
