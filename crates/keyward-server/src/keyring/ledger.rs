//! The audit ledger: every record written outside a lifecycle transaction, and the DEK usage
//! counts that steer rotation (docs/audit-format.md, "Records written outside a lifecycle
//! transaction").
//!
//! Lifecycle changes append their records in the same store transaction (fail closed). The rest
//! — per-second denial counts, per-minute usage summaries, authorization-denial counts,
//! `keys_purged` and failed registrations — are appended on their own, through
//! [`AuditLedger`]. If such an append fails (the store is down), the records are kept here, in
//! order, and sent again ahead of newer ones at the next flush (every second), so a count leaves
//! memory only once its record committed.
//!
//! The queue is bounded ([`MAX_PENDING`] records): during a store outage long enough to fill it
//! the oldest records are dropped, counted in [`PendingAudit::dropped`] and logged. At one
//! denial record per closed tenant per second plus one usage record per active tenant per minute,
//! that takes hours for a few tenants and minutes only for thousands of simultaneously denied
//! tenants — during which no key-state change can commit either (they need the same store).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use keyward_audit::AuditEvent;
use keyward_envelope::{KeyId, TenantId};
use keyward_store::Store;

use crate::{
    error::ServiceError,
    keyring::access::{AccessCall, AccessMeter},
    keyring::gate::Gates,
    keyring::usage::{Usage, UsageMeter},
};

/// Most records kept while the store refuses appends.
pub const MAX_PENDING: usize = 1 << 16;

/// Writes the records that are not part of a lifecycle transaction to the store, keeping
/// those whose append failed for the next flush.
pub(super) struct AuditLedger {
    store: Arc<dyn Store>,
    /// Per-tenant usage per minute, for `usage_summary` audit records.
    usage: UsageMeter,
    /// Per-tenant accesses per minute, caller, action and purpose, for `access_summary` records.
    access: AccessMeter,
    /// Audit records whose standalone append failed, kept for the next flush.
    pending: PendingAudit,
    /// Names this replica in log lines.
    replica_id: String,
}

impl AuditLedger {
    pub(super) fn new(store: Arc<dyn Store>, replica_id: String) -> Self {
        Self {
            store,
            usage: UsageMeter::default(),
            access: AccessMeter::default(),
            pending: PendingAudit::default(),
            replica_id,
        }
    }

    /// Counts one request (or KMS call) of `tenant` in the current minute's usage.
    pub(super) fn count_usage(&self, tenant: &TenantId, update: impl FnOnce(&mut Usage)) {
        self.usage.record(tenant, crate::now_ms(), update);
    }

    /// Counts one data-path call in the current minute's access summaries.
    pub(super) fn count_access(&self, call: AccessCall) {
        self.access.record(call, crate::now_ms());
    }

    /// Writes the per-tenant, per-second counts of requests denied because of revocation
    /// (taken from `gates`, each second once it is over) and the per-tenant usage summaries
    /// (each minute once it is over) before `now_ms` to the audit log, after any records still
    /// pending.
    pub(super) async fn flush_before(
        &self,
        gates: &Gates,
        now_ms: i64,
    ) -> Result<usize, ServiceError> {
        let denials =
            gates
                .take_finished_denials(now_ms)
                .into_iter()
                .map(|(tenant, second, count)| AuditEvent::RevocationDenials {
                    tenant,
                    second,
                    count,
                });
        let usage = self
            .usage
            .take_finished(now_ms)
            .into_iter()
            .map(|(tenant, minute, u)| AuditEvent::UsageSummary {
                tenant,
                minute,
                encrypts: u.encrypts,
                decrypts: u.decrypts,
                bytes_in: u.bytes_in,
                bytes_out: u.bytes_out,
                kms_calls: u.kms_calls,
                cache_hits: u.cache_hits,
                errors: u.errors,
            });
        let access = self.access.take_finished(now_ms);
        let events = self
            .pending
            .take_with(denials.chain(usage).chain(access).collect());
        let count = events.len();
        if count > 0 {
            self.append_or_keep(events).await?;
        }
        Ok(count)
    }

    /// Every second, writes the previous seconds' revocation denials (from `gates`) and usage
    /// summaries, then the authorization denials `authz_denials` takes for the seconds over
    /// before the time it is given, to the audit log. Runs until the task is aborted.
    pub(super) async fn run(&self, gates: &Gates, authz_denials: impl Fn(i64) -> Vec<AuditEvent>) {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            ticker.tick().await;
            if let Err(e) = self.flush_before(gates, crate::now_ms()).await {
                tracing::error!(error = %e, "could not record revocation denials");
            }
            self.record(authz_denials(crate::now_ms())).await;
        }
    }

    /// Appends records that are not part of a lifecycle transaction (denial and usage counts,
    /// `keys_purged`, failed registrations, authorization denials), after any still pending; if
    /// the append fails they all stay pending for the next flush, and the failure is logged.
    pub(super) async fn record(&self, events: Vec<AuditEvent>) {
        let events = self.pending.take_with(events);
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.append_or_keep(events).await {
            tracing::error!(replica = %self.replica_id, error = %e, pending = self.pending.len(), "could not append audit records; they are kept and retried at the next flush");
        }
    }

    async fn append_or_keep(&self, events: Vec<AuditEvent>) -> Result<(), ServiceError> {
        // The records are cloned only so that a failed append can keep them.
        match self.store.append_audit(events.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.pending.put_back(events);
                Err(e.into())
            }
        }
    }

    /// Audit records waiting for the store, and those dropped because too many waited.
    pub(super) fn pending(&self) -> (usize, u64) {
        (self.pending.len(), self.pending.dropped())
    }

    /// Writes this replica's not-yet-recorded usage of an active DEK to the store.
    /// Usage only steers rotation, so a failure is logged, not returned.
    pub(super) async fn record_dek_usage(
        &self,
        tenant: &TenantId,
        dek: &KeyId,
        messages: u64,
        bytes: u64,
    ) {
        if messages == 0 && bytes == 0 {
            return;
        }
        match self.store.add_dek_usage(tenant, dek, messages, bytes).await {
            // The DEK was shredded since it was used: its usage no longer steers anything.
            Err(keyward_store::StoreError::NotFound(_)) => {
                tracing::debug!(%tenant, dek = %dek, "usage of a shredded DEK not recorded");
            }
            Err(e) => {
                tracing::warn!(%tenant, dek = %dek, error = %e, "could not record DEK usage");
            }
            Ok(()) => {}
        }
    }
}

/// Records waiting for a successful append.
#[derive(Debug, Default)]
struct PendingAudit {
    events: Mutex<VecDeque<AuditEvent>>,
    dropped: AtomicU64,
}

impl PendingAudit {
    /// Takes every waiting record (oldest first), to be appended ahead of `newer`.
    fn take_with(&self, newer: Vec<AuditEvent>) -> Vec<AuditEvent> {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<AuditEvent> = events.drain(..).collect();
        all.extend(newer);
        all
    }

    /// Puts back records whose append failed, ahead of anything queued since (they are older).
    fn put_back(&self, failed: Vec<AuditEvent>) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        for event in failed.into_iter().rev() {
            events.push_front(event);
        }
        let excess = events.len().saturating_sub(MAX_PENDING);
        if excess > 0 {
            events.drain(..excess);
            let total = self.dropped.fetch_add(excess as u64, Ordering::Relaxed) + excess as u64;
            tracing::error!(
                dropped = excess,
                total_dropped = total,
                "the store has refused audit appends for too long: the oldest pending audit records were dropped"
            );
        }
    }

    /// Records waiting now.
    fn len(&self) -> usize {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Records dropped since start because the queue was full.
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn denial(second: i64) -> AuditEvent {
        AuditEvent::RevocationDenials {
            tenant: TenantId::try_from("t").unwrap(),
            second,
            count: 1,
        }
    }

    #[test]
    fn failed_records_go_back_ahead_of_newer_ones_and_the_oldest_are_dropped_when_full() {
        let pending = PendingAudit::default();
        let batch = pending.take_with(vec![denial(1), denial(2)]);
        pending.put_back(batch);
        assert_eq!(
            pending.take_with(vec![denial(3)]),
            vec![denial(1), denial(2), denial(3)]
        );
        assert_eq!(pending.len(), 0);

        let many: Vec<AuditEvent> = (0..MAX_PENDING as i64 + 5).map(denial).collect();
        pending.put_back(many);
        assert_eq!(pending.len(), MAX_PENDING);
        assert_eq!(pending.dropped(), 5);
        assert_eq!(
            pending.take_with(Vec::new())[0],
            denial(5),
            "the oldest went first"
        );
    }
}
