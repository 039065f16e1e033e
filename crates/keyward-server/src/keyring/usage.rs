//! Per-tenant usage per minute (encrypts, decrypts, bytes, KMS calls, cache
//! hits, errors): what support needs to answer "why did our KMS bill triple?".
//! Counted in memory, written to the audit log as `usage_summary` records once
//! each minute is over.

use crate::fast_hash::FastMap;
use std::sync::{Mutex, PoisonError};

use keyward_envelope::TenantId;

/// One tenant's counts for one minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) encrypts: u64,
    pub(crate) decrypts: u64,
    /// Plaintext bytes encrypted.
    pub(crate) bytes_in: u64,
    /// Plaintext bytes returned by decrypt.
    pub(crate) bytes_out: u64,
    pub(crate) kms_calls: u64,
    /// Requests served from cached keys (no store read, no KMS call).
    pub(crate) cache_hits: u64,
    pub(crate) errors: u64,
}

/// Counts by tenant, then by minute (Unix seconds of its start).
#[derive(Debug, Default)]
pub(crate) struct UsageMeter {
    tenants: Mutex<FastMap<TenantId, FastMap<i64, Usage>>>,
}

impl UsageMeter {
    /// Called on every request: the tenant id is cloned only for a tenant's
    /// first request since its counts were last taken.
    pub(crate) fn record(&self, tenant: &TenantId, now_ms: i64, update: impl FnOnce(&mut Usage)) {
        let minute = now_ms.div_euclid(60_000) * 60;
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let minutes = match tenants.get_mut(tenant) {
            Some(minutes) => minutes,
            None => tenants.entry(tenant.clone()).or_default(),
        };
        update(minutes.entry(minute).or_default());
    }

    /// Takes the counts of minutes that ended before `now_ms`, oldest first.
    pub(crate) fn take_finished(&self, now_ms: i64) -> Vec<(TenantId, i64, Usage)> {
        let current = now_ms.div_euclid(60_000).saturating_mul(60);
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (tenant, minutes) in tenants.iter_mut() {
            minutes.retain(|minute, usage| {
                if *minute < current {
                    out.push((tenant.clone(), *minute, *usage));
                    false
                } else {
                    true
                }
            });
        }
        tenants.retain(|_, minutes| !minutes.is_empty());
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn counts_are_kept_per_tenant_and_minute_until_the_minute_is_over() {
        let meter = UsageMeter::default();
        let a = TenantId::try_from("a").unwrap();
        meter.record(&a, 60_000, |u| u.encrypts += 1);
        meter.record(&a, 119_999, |u| u.encrypts += 1);
        meter.record(&a, 120_000, |u| u.decrypts += 1);
        assert!(
            meter.take_finished(119_999).is_empty(),
            "minute 60 is not over"
        );
        let done = meter.take_finished(120_000);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].1, done[0].2.encrypts), (60, 2));
        assert_eq!(meter.take_finished(i64::MAX)[0].2.decrypts, 1);
        assert!(meter.take_finished(i64::MAX).is_empty());
    }
}
