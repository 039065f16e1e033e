//! Who accessed each tenant's data and why (docs/justifications.md): per tenant, per minute, per
//! (caller, action, purpose), exact counts, bytes, first and last time and the distinct
//! references, written to the audit log as `access_summary` records once each minute is over
//! (through [`super::ledger::AuditLedger`], which keeps them until their append commits); and
//! the tenants' rules on the purposes that may decrypt, cached per replica.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use keyward_audit::AuditEvent;
use keyward_envelope::TenantId;
use keyward_store::Store;

use crate::{
    error::ServiceError,
    justification::{Justification, Purpose, RuleViolation, check_decrypt_rule},
};

/// One data-path call, as the API layer saw it once it was over.
#[derive(Debug, Clone)]
pub struct AccessCall {
    pub tenant: TenantId,
    /// The Cedar principal (`Service::"chat-api"`).
    pub principal: Arc<str>,
    /// The Cedar action (`Encrypt`, `Decrypt`, `Rewrap`).
    pub action: &'static str,
    pub justification: Option<Justification>,
    /// Messages sealed or opened.
    pub items: u64,
    /// Items that failed after authorization.
    pub errors: u64,
    /// Plaintext bytes (Rewrap: envelope bytes).
    pub bytes: u64,
}

/// Most distinct (tenant, minute, principal, action, purpose) keys counted at once (≈ 250 bytes
/// each: ≈ 64 MB; fewer in unit tests, which fill it). Keys exist only for tenants that exist (a call whose tenant is unknown is not
/// an access), so this is reached only by a deployment with more than this many active
/// (tenant, caller, purpose) combinations in a minute on one replica; the calls of new keys are
/// then not counted, and said in an error log line and [`AccessMeter::take_finished`]'s count.
pub(crate) const MAX_ACCESS_KEYS: usize = if cfg!(test) { 1 << 10 } else { 1 << 18 };

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AccessKey {
    tenant: TenantId,
    minute: i64,
    principal: Arc<str>,
    action: &'static str,
    purpose: Option<Purpose>,
}

#[derive(Debug, Clone, Default)]
struct AccessCounts {
    requests: u64,
    items: u64,
    errors: u64,
    bytes: u64,
    first_ms: i64,
    last_ms: i64,
    references: BTreeSet<String>,
    references_truncated: bool,
}

/// The access counts of the minutes not yet written.
#[derive(Debug, Default)]
pub(super) struct AccessMeter {
    counts: Mutex<crate::fast_hash::FastMap<AccessKey, AccessCounts>>,
    /// Calls not counted because [`MAX_ACCESS_KEYS`] was reached.
    dropped: std::sync::atomic::AtomicU64,
}

impl AccessMeter {
    pub(super) fn record(&self, call: AccessCall, now_ms: i64) {
        let minute = now_ms.div_euclid(60_000) * 60;
        let reference = call
            .justification
            .as_ref()
            .and_then(|j| j.reference.clone());
        let key = AccessKey {
            tenant: call.tenant,
            minute,
            principal: call.principal,
            action: call.action,
            purpose: call.justification.map(|j| j.purpose),
        };
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_ACCESS_KEYS && !counts.contains_key(&key) {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let c = counts.entry(key).or_insert_with(|| AccessCounts {
            first_ms: now_ms,
            ..AccessCounts::default()
        });
        c.requests += 1;
        c.items += call.items;
        c.errors += call.errors;
        c.bytes += call.bytes;
        c.first_ms = c.first_ms.min(now_ms);
        c.last_ms = c.last_ms.max(now_ms);
        if let Some(reference) = reference
            && !c.references.contains(&reference)
        {
            if c.references.len() < AuditEvent::MAX_ACCESS_REFERENCES {
                c.references.insert(reference);
            } else {
                c.references_truncated = true;
            }
        }
    }

    /// The `access_summary` records of the minutes over before `now_ms`, oldest minute first.
    pub(super) fn take_finished(&self, now_ms: i64) -> Vec<AuditEvent> {
        let current = now_ms.div_euclid(60_000).saturating_mul(60);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let done: Vec<AccessKey> = counts
            .keys()
            .filter(|k| k.minute < current)
            .cloned()
            .collect();
        let mut out: Vec<(AccessKey, AccessCounts)> = done
            .into_iter()
            .filter_map(|k| counts.remove_entry(&k))
            .collect();
        drop(counts);
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            tracing::error!(
                dropped,
                limit = MAX_ACCESS_KEYS,
                "access counts full: calls of new (tenant, caller, purpose) combinations were not counted"
            );
        }
        out.sort_by(|(a, _), (b, _)| {
            (
                a.minute,
                a.tenant.as_str(),
                &a.principal,
                a.action,
                a.purpose,
            )
                .cmp(&(
                    b.minute,
                    b.tenant.as_str(),
                    &b.principal,
                    b.action,
                    b.purpose,
                ))
        });
        out.into_iter()
            .map(|(k, c)| AuditEvent::AccessSummary {
                tenant: k.tenant,
                minute: k.minute,
                principal: k.principal.to_string(),
                action: k.action.to_owned(),
                purpose: k.purpose.map(|p| p.as_str().to_owned()),
                requests: c.requests,
                items: c.items,
                errors: c.errors,
                bytes: c.bytes,
                first_ms: c.first_ms,
                last_ms: c.last_ms,
                references: c.references.into_iter().collect(),
                references_truncated: c.references_truncated,
            })
            .collect()
    }
}

/// The tenants' `decrypt_purposes`, cached per replica for at most the server's key-cache TTL;
/// dropped when this replica sets a policy and when another replica's change is announced
/// (`Keyring::apply_recorded_policy`).
pub(super) struct DecryptRules {
    store: Arc<dyn Store>,
    rules: moka::future::Cache<TenantId, u32, crate::fast_hash::FastState>,
    /// Bumped by every [`DecryptRules::forget`]: a rule read from the store is cached only if
    /// no change was announced while it was read (else a read that raced a change could cache
    /// the old rule after the change dropped it).
    changes: std::sync::atomic::AtomicU64,
}

impl DecryptRules {
    pub(super) fn new(store: Arc<dyn Store>, ttl: Duration, capacity: u64) -> Self {
        Self {
            store,
            rules: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build_with_hasher(crate::fast_hash::FastState::default()),
            changes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Refuses a decrypt of `tenant` whose justification its rule does not allow. An unknown
    /// tenant has no rule (the data path then answers TENANT_NOT_FOUND as before); a store
    /// failure refuses (fail closed).
    pub(super) async fn check(
        &self,
        tenant: &TenantId,
        justification: Option<&Justification>,
    ) -> Result<(), ServiceError> {
        let bits = match self.rules.get(tenant).await {
            Some(bits) => bits,
            // Boxed: the store read stays out of every Decrypt's future.
            None => Box::pin(self.load(tenant)).await?,
        };
        let allowed = || {
            Purpose::from_bits(bits)
                .into_iter()
                .map(Purpose::as_str)
                .collect()
        };
        check_decrypt_rule(bits, justification).map_err(|v| match v {
            RuleViolation::Missing => ServiceError::JustificationRequired {
                tenant: tenant.to_string(),
                allowed: allowed(),
            },
            RuleViolation::NotAllowed(p) => ServiceError::PurposeNotAllowed {
                tenant: tenant.to_string(),
                purpose: p.as_str(),
                allowed: allowed(),
            },
        })
    }

    /// `tenant`'s rule from the store, cached unless a change was announced meanwhile.
    async fn load(&self, tenant: &TenantId) -> Result<u32, ServiceError> {
        let seen = self.changes.load(std::sync::atomic::Ordering::SeqCst);
        Ok(match self.store.get_tenant(tenant).await? {
            Some(record) => {
                let bits = record.policy.decrypt_purposes;
                // A change announced before the insert is seen by the second load: the
                // insert is undone; one announced after it invalidates it itself.
                if self.changes.load(std::sync::atomic::Ordering::SeqCst) == seen {
                    self.rules.insert(tenant.clone(), bits).await;
                    if self.changes.load(std::sync::atomic::Ordering::SeqCst) != seen {
                        self.rules.invalidate(tenant).await;
                    }
                }
                bits
            }
            None => 0,
        })
    }

    /// Forgets `tenant`'s rule: the next check reads it from the store.
    pub(super) async fn forget(&self, tenant: &TenantId) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.rules.invalidate(tenant).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;

    fn call(
        tenant: &str,
        principal: &str,
        purpose: Option<Purpose>,
        reference: Option<&str>,
    ) -> AccessCall {
        AccessCall {
            tenant: TenantId::try_from(tenant).unwrap(),
            principal: Arc::from(principal),
            action: "Decrypt",
            justification: purpose.map(|purpose| Justification {
                purpose,
                reference: reference.map(str::to_owned),
            }),
            items: 2,
            errors: 1,
            bytes: 10,
        }
    }

    #[test]
    fn counts_are_exact_per_caller_and_purpose_and_written_once_the_minute_is_over() {
        let meter = AccessMeter::default();
        for i in 0..5 {
            meter.record(
                call("a", "p1", Some(Purpose::LegalHold), Some("T-1")),
                60_000 + i,
            );
        }
        meter.record(
            call("a", "p1", Some(Purpose::LegalHold), Some("T-2")),
            60_500,
        );
        meter.record(call("a", "p2", None, None), 61_000);
        meter.record(call("a", "p1", Some(Purpose::LegalHold), None), 120_000);
        assert!(meter.take_finished(119_999).is_empty());
        let events = meter.take_finished(120_000);
        assert_eq!(events.len(), 2, "{events:?}");
        let AuditEvent::AccessSummary {
            principal,
            purpose,
            requests,
            items,
            errors,
            bytes,
            first_ms,
            last_ms,
            references,
            references_truncated,
            minute,
            ..
        } = &events[0]
        else {
            panic!("{:?}", events[0]);
        };
        assert_eq!(
            (principal.as_str(), purpose.as_deref()),
            ("p1", Some("legal_hold"))
        );
        assert_eq!((*requests, *items, *errors, *bytes), (6, 12, 6, 60));
        assert_eq!((*minute, *first_ms, *last_ms), (60, 60_000, 60_500));
        assert_eq!(references, &vec!["T-1".to_owned(), "T-2".to_owned()]);
        assert!(!references_truncated);
        assert!(
            matches!(&events[1], AuditEvent::AccessSummary { principal, purpose: None, .. } if principal == "p2")
        );
        assert!(meter.take_finished(120_000).is_empty());
        assert_eq!(meter.take_finished(i64::MAX).len(), 1);
    }

    #[test]
    fn references_are_bounded_and_the_truncation_is_said() {
        let meter = AccessMeter::default();
        for i in 0..(AuditEvent::MAX_ACCESS_REFERENCES + 3) {
            let r = format!("T-{i:03}");
            meter.record(
                call("a", "p", Some(Purpose::CustomerSupport), Some(&r)),
                1_000,
            );
        }
        let events = meter.take_finished(i64::MAX);
        let AuditEvent::AccessSummary {
            references,
            references_truncated,
            requests,
            ..
        } = &events[0]
        else {
            panic!()
        };
        assert_eq!(references.len(), AuditEvent::MAX_ACCESS_REFERENCES);
        assert!(*references_truncated);
        assert_eq!(*requests, AuditEvent::MAX_ACCESS_REFERENCES as u64 + 3);
    }

    #[test]
    fn memory_is_bounded_by_the_key_limit_and_known_keys_keep_counting() {
        let meter = AccessMeter::default();
        for i in 0..(MAX_ACCESS_KEYS + 10) {
            meter.record(call(&format!("t{i}"), "p", None, None), 1_000);
        }
        // A key counted already keeps counting when the meter is full.
        meter.record(call("t0", "p", None, None), 1_001);
        assert_eq!(meter.dropped.load(std::sync::atomic::Ordering::Relaxed), 10);
        let events = meter.take_finished(i64::MAX);
        assert_eq!(events.len(), MAX_ACCESS_KEYS);
        assert!(events.iter().any(|e| matches!(e, AuditEvent::AccessSummary { tenant, requests: 2, .. } if tenant.as_str() == "t0")));
    }
}
