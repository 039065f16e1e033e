//! Audit records that could not be appended yet (docs/audit-format.md, "Records written
//! outside a lifecycle transaction").
//!
//! Lifecycle changes append their records in the same store transaction (fail closed). The rest
//! — per-second denial counts, per-minute usage summaries, authorization-denial counts,
//! `keys_purged` and failed registrations — are appended on their own. If such an append fails
//! (the store is down), the records are kept here, in order, and sent again ahead of newer ones at
//! the next flush (every second), so a count leaves memory only once its record committed.
//!
//! The queue is bounded ([`MAX_PENDING`] records): during a store outage long enough to fill it
//! the oldest records are dropped, counted in [`PendingAudit::dropped`] and logged. At one
//! denial record per closed tenant per second plus one usage record per active tenant per minute,
//! that takes hours for a few tenants and minutes only for thousands of simultaneously denied
//! tenants — during which no key-state change can commit either (they need the same store).

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use keyward_audit::AuditEvent;

/// Most records kept while the store refuses appends.
pub const MAX_PENDING: usize = 1 << 16;

/// Records waiting for a successful append.
#[derive(Debug, Default)]
pub(crate) struct PendingAudit {
    events: Mutex<VecDeque<AuditEvent>>,
    dropped: AtomicU64,
}

impl PendingAudit {
    /// Takes every waiting record (oldest first), to be appended ahead of `newer`.
    pub(crate) fn take_with(&self, newer: Vec<AuditEvent>) -> Vec<AuditEvent> {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<AuditEvent> = events.drain(..).collect();
        all.extend(newer);
        all
    }

    /// Puts back records whose append failed, ahead of anything queued since (they are older).
    pub(crate) fn put_back(&self, failed: Vec<AuditEvent>) {
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
    pub(crate) fn len(&self) -> usize {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Records dropped since start because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use keyward_envelope::TenantId;

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
