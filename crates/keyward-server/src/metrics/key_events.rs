//! The metrics of the key-event sources (`[aws_events]`, docs/observability.md): what each source
//! did with the messages it received, and how long the re-checks they caused took. Every label is
//! bounded: `source` is a configuration section, `reason` one of a fixed set.

use std::time::Duration;

use keyward_kms::SourceEvent;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::LatencyBuckets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    source: &'static str,
    reason: &'static str,
}

/// The key-event families, registered with the server's others.
pub(super) struct KeyEventMetrics {
    received: Family<SourceLabels, Counter>,
    handled: Family<SourceLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    deferred: Family<ReasonLabels, Counter>,
    receive_errors: Family<SourceLabels, Counter>,
    delete_errors: Family<SourceLabels, Counter>,
    recheck_seconds: Family<SourceLabels, Histogram, LatencyBuckets>,
}

impl KeyEventMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self {
            received: Family::default(),
            handled: Family::default(),
            rejected: Family::default(),
            deferred: Family::default(),
            receive_errors: Family::default(),
            delete_errors: Family::default(),
            recheck_seconds: Family::new_with_constructor(LatencyBuckets),
        };
        r.register(
            "key_event_messages_received",
            "Key-event messages received, by source",
            m.received.clone(),
        );
        r.register(
            "key_event_messages_handled",
            "Key-event messages whose keys were re-checked with the KMS, then deleted, by source",
            m.handled.clone(),
        );
        r.register(
            "key_event_messages_rejected",
            "Key-event messages refused and deleted without a KMS call, by source and reason",
            m.rejected.clone(),
        );
        r.register(
            "key_event_messages_deferred",
            "Key-event messages left for redelivery (the KMS or the store did not answer), by source and reason",
            m.deferred.clone(),
        );
        r.register(
            "key_event_receive_errors",
            "Failed receives from a key-event source's queue, by source",
            m.receive_errors.clone(),
        );
        r.register(
            "key_event_delete_errors",
            "Key-event messages that could not be deleted (they come back and are handled again), by source",
            m.delete_errors.clone(),
        );
        r.register(
            "key_event_recheck_duration_seconds",
            "Time to re-check every tenant bound to the key an event names, by source",
            m.recheck_seconds.clone(),
        );
        m
    }

    pub(super) fn record(&self, source: &'static str, event: SourceEvent) {
        let by_source = SourceLabels { source };
        match event {
            SourceEvent::Received => self.received.get_or_create(&by_source).inc(),
            SourceEvent::Handled => self.handled.get_or_create(&by_source).inc(),
            SourceEvent::Rejected(reason) => self
                .rejected
                .get_or_create(&ReasonLabels {
                    source,
                    reason: reason.as_str(),
                })
                .inc(),
            SourceEvent::Deferred(reason) => self
                .deferred
                .get_or_create(&ReasonLabels {
                    source,
                    reason: reason.as_str(),
                })
                .inc(),
            SourceEvent::ReceiveFailed => self.receive_errors.get_or_create(&by_source).inc(),
            SourceEvent::DeleteFailed => self.delete_errors.get_or_create(&by_source).inc(),
            // A kind of event this build does not know yet: counted as received only.
            _ => 0,
        };
    }

    pub(super) fn recheck(&self, source: &'static str, elapsed: Duration) {
        self.recheck_seconds
            .get_or_create(&SourceLabels { source })
            .observe(elapsed.as_secs_f64());
    }
}
