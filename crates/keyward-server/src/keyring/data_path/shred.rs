//! Crypto-shredding on the data path (docs/deleting-data.md): one scope (`ShredScope`), or the
//! scopes a retention rule selects (`ShredScopes`), and what a replica does when DEKs of a
//! tenant were shredded, here or on another replica.
//!
//! A shred deletes the scope's wrapped DEKs from the store (the only copy there is) and leaves a
//! tombstone each, with its `dek_retired` (reason `shredded`) and `scope_shredded` records, in
//! one store transaction. Then the replica bumps the tenant's shred count (`Gates::shreds`) and
//! drops the tenant's cached DEKs. The count closes the race with a DEK loaded from the store
//! just before the shred and cached just after the purge: every cached DEK carries the count it
//! was read under, and the data path uses it only at the current count (else it reads the store
//! again, finding the tombstone). Other replicas do the same when the store's notification
//! arrives (PostgreSQL), or at their next reconciliation if it was lost.

use keyward_audit::{AuditEvent, DekRetireReason};
use keyward_envelope::TenantId;
use keyward_store::{Scope, ScopeShred, ShredResult, StoreError, WrittenBefore};

use std::sync::atomic::Ordering;

use super::DataPath;
use crate::error::ServiceError;

/// What a retention run (or its dry run) did: scopes and DEKs shredded (or that would be), and
/// the scopes that still match afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub scopes: u64,
    pub deks: u64,
    pub remaining: u64,
}

impl DataPath {
    /// Shreds one scope of `tenant` (see the module docs); `only_if`: a retention run's rule,
    /// checked again in the store's transaction.
    pub(in crate::keyring) async fn shred_scope(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        actor: &str,
        reason: &str,
        only_if: Option<WrittenBefore>,
    ) -> Result<ShredResult, ServiceError> {
        let scope_hmac = self.kek.hasher.hash("scope", scope.as_str());
        let retention_cutoff_ms = only_if.as_ref().map(|rule| rule.cutoff_ms);
        let request = ScopeShred {
            tenant: tenant.clone(),
            scope: scope.clone(),
            scope_hmac: scope_hmac.clone(),
            shredded_by: actor.to_owned(),
            reason: reason.to_owned(),
            only_if,
        };
        let result = self
            .store
            .shred_scope(request, &|result: &ShredResult| {
                if result.skipped {
                    return Vec::new();
                }
                let mut events: Vec<AuditEvent> = result
                    .tombstones
                    .iter()
                    .map(|t| AuditEvent::DekRetired {
                        tenant: t.tenant.clone(),
                        scope_hmac: t.scope_hmac.clone(),
                        dek_id: t.id,
                        reason: DekRetireReason::Shredded,
                    })
                    .collect();
                events.push(AuditEvent::ScopeShredded {
                    tenant: result.tenant.clone(),
                    scope_hmac: scope_hmac.clone(),
                    deks: result.tombstones.len() as u64,
                    actor: actor.to_owned(),
                    reason: reason.to_owned(),
                    retention_cutoff_ms,
                });
                events
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => ServiceError::TenantNotFound(tenant.to_string()),
                other => other.into(),
            })?;
        if !result.tombstones.is_empty() {
            if let Some(metrics) = self.metrics() {
                metrics.deks_shredded(result.tombstones.len());
            }
            let entries = self.forget_shredded(tenant).await;
            tracing::info!(%tenant, scope = %scope_hmac, deks = result.tombstones.len(), entries, "scope shredded");
        }
        Ok(result)
    }

    /// Retention: shreds up to `max_scopes` scopes of `tenant` that match `rule`, one store
    /// transaction each (a crash leaves every DEK usable or shredded; calling again resumes),
    /// or with `dry_run` counts every matching scope and changes nothing.
    pub(in crate::keyring) async fn shred_scopes(
        &self,
        tenant: &TenantId,
        rule: WrittenBefore,
        dry_run: bool,
        max_scopes: u32,
        actor: &str,
        reason: &str,
    ) -> Result<RetentionOutcome, ServiceError> {
        super::super::require_tenant(self.store.as_ref(), tenant).await?;
        if dry_run {
            let (scopes, deks) = self.store.count_shred_candidates(tenant, &rule).await?;
            return Ok(RetentionOutcome {
                scopes,
                deks,
                remaining: 0,
            });
        }
        let candidates = self
            .store
            .shred_candidates(tenant, &rule, max_scopes)
            .await?;
        let mut outcome = RetentionOutcome::default();
        for candidate in candidates {
            let shredded = self
                .shred_scope(tenant, &candidate.scope, actor, reason, Some(rule.clone()))
                .await?;
            if !shredded.skipped {
                outcome.scopes += 1;
                outcome.deks += shredded.tombstones.len() as u64;
            }
        }
        if outcome.deks > 0 {
            self.store.erase_shredded().await;
        }
        outcome.remaining = self.store.count_shred_candidates(tenant, &rule).await?.0;
        Ok(outcome)
    }

    /// Erases what the store still keeps of shredded rows (best effort; see
    /// `Store::erase_shredded`).
    pub(in crate::keyring) async fn erase_shredded(&self) {
        self.store.erase_shredded().await;
    }

    /// Applies the shreds of every tenant with tombstones newer than the last this replica
    /// caught up with (a notification lost while the listener was down). Returns how many
    /// tenants. The first run, at start-up, finds every tenant that ever shredded: harmless,
    /// their DEKs are only reloaded from the store.
    pub(in crate::keyring) async fn catch_up_shreds(&self) -> Result<usize, ServiceError> {
        let seen = self.shreds_seen.load(Ordering::Acquire);
        let shredded = self.store.shreds_after(seen).await?;
        let mut newest = seen;
        for (tenant, seq) in &shredded {
            self.forget_shredded(tenant).await;
            newest = newest.max(*seq);
        }
        self.shreds_seen.fetch_max(newest, Ordering::AcqRel);
        Ok(shredded.len())
    }

    /// DEKs of `tenant` were shredded (here, or on another replica as the store announced):
    /// every DEK loaded before is stale, and the cached ones are dropped now. Returns how many
    /// cache entries.
    pub(in crate::keyring) async fn forget_shredded(&self, tenant: &TenantId) -> u64 {
        // The count first: a load racing with the purge caches its key under the old count,
        // which the data path then refuses to use.
        self.revocation.gates().count_shred(tenant);
        self.cache.purge_deks(tenant).await
    }
}
