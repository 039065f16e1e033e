//! The revocation engine (docs/revocation.md): durable state transitions of a
//! tenant's KEK binding, the purge they trigger, the key-state monitor, and
//! the aggregation of denied requests into the audit log.
//!
//! Order of a revocation: the in-memory gate closes first (no request is
//! admitted and no plaintext released from then on), then the transition and
//! its audit record commit in one store transaction, then every cached key of
//! the tenant is removed (zeroized when its last user drops it) and the purge
//! is audited.

use std::{str::FromStr as _, sync::Arc, time::Duration};

use keyward_audit::{AuditEvent, KeyState as AuditKeyState, StateTransition};
use keyward_envelope::TenantId;
use keyward_kms::{ErrorKind, KeyRef, ProviderKind, Purpose, WrapContext};
use keyward_store::{AuditQuery, KekBinding, KekState, StateChange};

use super::{Keyring, internal};
use crate::{error::ServiceError, gate::Closed, now_ms};

/// Who or what revoked or restored a key.
pub use keyward_audit::RevocationSource;

/// How the key-state monitor paces itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorPolicy {
    /// Time between the starts of two sweeps over every tenant.
    pub interval: Duration,
    /// Global cap on canary checks (KMS calls) per second, so that many tenants
    /// do not burst the KMS; a sweep takes at least tenants / rate seconds.
    pub max_checks_per_second: u32,
}

/// The outcome of checking one tenant's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckOutcome {
    /// The key works and the binding was already usable.
    Healthy,
    /// The key works again: the binding was restored.
    Restored,
    /// The KMS refused: the tenant was revoked (or destroyed).
    Revoked,
    /// The KMS could not be reached: marked unavailable, nothing revoked.
    Unavailable,
    /// Nothing to do (destroyed, or explicitly revoked and still working).
    Unchanged,
}

fn audit_state(state: KekState) -> AuditKeyState {
    match state {
        KekState::Revoked => AuditKeyState::Revoked,
        KekState::Unavailable => AuditKeyState::Unavailable,
        KekState::Restored => AuditKeyState::Restored,
        KekState::Destroyed => AuditKeyState::Destroyed,
        _ => AuditKeyState::Active,
    }
}

impl Keyring {
    /// Closes the gates of every tenant whose current binding is revoked or
    /// destroyed in the store (at start-up).
    pub async fn load_revocations(&self) -> Result<usize, ServiceError> {
        let mut closed = 0;
        for binding in self.store.active_bindings().await? {
            if matches!(binding.state, KekState::Revoked | KekState::Destroyed) {
                self.gates.close(
                    &binding.tenant,
                    Closed {
                        state: binding.state,
                        since_ms: binding.state_changed_at_ms,
                    },
                );
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// Revokes the tenant's current binding: gate closed, state and audit
    /// record committed together, caches purged, purge audited. Idempotent.
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        to: KekState,
        source: RevocationSource,
        actor: Option<String>,
        reason: &str,
        observed_at_ms: i64,
    ) -> Result<KekBinding, ServiceError> {
        let _transition = self.transitions.lock().await;
        let binding = self.current_binding(tenant).await?;
        if matches!(binding.state, KekState::Revoked | KekState::Destroyed)
            && to != KekState::Destroyed
            || binding.state == KekState::Destroyed
        {
            // Already recorded (perhaps by another replica whose notification has not arrived
            // yet): close and purge here too if this replica has not.
            self.apply_binding(&binding).await;
            return Ok(binding);
        }
        let now = now_ms();
        // Deny from this instant on; if the record cannot be written, the
        // tenant stays closed on this replica (safe) and the caller gets the error.
        self.gates.close(
            tenant,
            Closed {
                state: to,
                since_ms: now,
            },
        );
        let updated = self
            .store
            .set_binding_state(binding.id, to, &|change: &StateChange| {
                vec![AuditEvent::RevocationStateChanged(StateTransition {
                    tenant: change.binding.tenant.clone(),
                    binding_id: change.binding.id,
                    from: audit_state(change.from),
                    to: audit_state(to),
                    source,
                    actor: actor.clone(),
                    reason: reason.to_owned(),
                    observed_at_ms,
                })]
            })
            .await
            .inspect_err(|_| {
                // Closed here but not in the store: reconciliation must not reopen it.
                self.unrecorded_closures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(tenant.clone());
            })?;
        self.forget_unrecorded(tenant);
        let entries = self.purge_and_audit(tenant).await;
        tracing::warn!(%tenant, replica = %self.replica_id, state = to.as_str(), source = ?source, entries, "tenant key revoked; cached keys purged");
        Ok(updated)
    }

    /// Removes every cached key of a closed tenant and records the purge (`keys_purged`, with
    /// this replica's last plaintext time). Returns the number of entries removed.
    async fn purge_and_audit(&self, tenant: &TenantId) -> u64 {
        let entries = self.purge_tenant(tenant).await;
        let purged = AuditEvent::KeysPurged {
            tenant: tenant.clone(),
            purged_at_ms: now_ms(),
            entries,
            last_plaintext_at_ms: self.gates.last_plaintext_ms(tenant),
        };
        if let Err(e) = self.store.append_audit(vec![purged]).await {
            tracing::error!(%tenant, replica = %self.replica_id, error = %e, "could not audit the purge of a revoked tenant");
        }
        entries
    }

    fn forget_unrecorded(&self, tenant: &TenantId) {
        self.unrecorded_closures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
    }

    /// Applies the tenant's key state as recorded in the store (by any replica) to this
    /// replica's gate and caches, exactly as the recording replica did: revoked or destroyed
    /// closes the gate and purges the tenant's cached keys (audited as `keys_purged` by this
    /// replica); active, restored or unavailable reopens a closed gate. Called for each
    /// notification of another replica's change and by [`Keyring::reconcile`].
    pub async fn apply_recorded_state(&self, tenant: &TenantId) -> Result<bool, ServiceError> {
        let _transition = self.transitions.lock().await;
        match self.store.active_binding(tenant).await? {
            Some(binding) => Ok(self.apply_binding(&binding).await),
            None => Ok(false),
        }
    }

    /// Compares every tenant's current binding in the store with this replica's gates and
    /// applies the differences (see [`Keyring::apply_recorded_state`]): the safety net for
    /// notifications lost while the listener was disconnected. Returns how many tenants changed.
    pub async fn reconcile(&self) -> Result<usize, ServiceError> {
        let _transition = self.transitions.lock().await;
        let mut changed = 0;
        for binding in self.store.active_bindings().await? {
            if self.apply_binding(&binding).await {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// One tenant's recorded state onto its gate; the caller holds `transitions` (so a local
    /// transition cannot interleave between the store read and this). Returns whether the gate
    /// changed.
    async fn apply_binding(&self, binding: &KekBinding) -> bool {
        let tenant = &binding.tenant;
        let current = self.gates.closed(tenant);
        if matches!(binding.state, KekState::Revoked | KekState::Destroyed) {
            self.forget_unrecorded(tenant);
            if current.is_some_and(|c| c.state == binding.state) {
                return false;
            }
            self.gates.close(
                tenant,
                Closed {
                    state: binding.state,
                    since_ms: binding.state_changed_at_ms,
                },
            );
            let entries = self.purge_and_audit(tenant).await;
            tracing::warn!(%tenant, replica = %self.replica_id, state = binding.state.as_str(), entries, "tenant key revoked by another replica; cached keys purged");
            return true;
        }
        let unrecorded = self
            .unrecorded_closures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(tenant);
        if current.is_none() || unrecorded {
            return false;
        }
        self.gates.open(tenant);
        tracing::info!(%tenant, replica = %self.replica_id, state = binding.state.as_str(), "tenant key restored by another replica");
        true
    }

    /// Restores a revoked (not destroyed) binding after proving with a live
    /// canary unwrap that the KMS accepts the key again.
    pub async fn restore(
        &self,
        tenant: &TenantId,
        source: RevocationSource,
        actor: Option<String>,
        reason: &str,
    ) -> Result<KekBinding, ServiceError> {
        let _transition = self.transitions.lock().await;
        let binding = self.current_binding(tenant).await?;
        match binding.state {
            KekState::Revoked | KekState::Unavailable => {}
            KekState::Destroyed => {
                return Err(ServiceError::KeyMisconfigured(
                    keyward_kms::ProviderError::new(
                        ErrorKind::Misconfigured,
                        "the key is destroyed: data under it is permanently unreadable; register a new key for new data",
                    ),
                ));
            }
            _ => return Ok(binding), // nothing to restore
        }
        self.canary(&binding).await?;
        let to = if binding.state == KekState::Unavailable {
            KekState::Active
        } else {
            KekState::Restored
        };
        let updated = self
            .store
            .set_binding_state(binding.id, to, &|change: &StateChange| {
                vec![AuditEvent::Restored(StateTransition {
                    tenant: change.binding.tenant.clone(),
                    binding_id: change.binding.id,
                    from: audit_state(change.from),
                    to: audit_state(to),
                    source,
                    actor: actor.clone(),
                    reason: reason.to_owned(),
                    observed_at_ms: now_ms(),
                })]
            })
            .await?;
        self.forget_unrecorded(tenant);
        self.gates.open(tenant);
        tracing::info!(%tenant, replica = %self.replica_id, source = ?source, "tenant key restored");
        Ok(updated)
    }

    /// The KMS refused an unwrap on the data path. If the refused key is the
    /// tenant's current one, that is a revocation; an old binding's key only
    /// makes that binding's data unreadable (its cached keys are dropped).
    pub(super) async fn on_kms_refusal(
        &self,
        tenant: &TenantId,
        tenant_key_id: &keyward_envelope::KeyId,
        message: &str,
    ) {
        let observed = now_ms();
        match self.store.active_binding(tenant).await {
            Ok(Some(binding)) if binding.tenant_key_id == *tenant_key_id => {
                if let Err(e) = self
                    .revoke(
                        tenant,
                        KekState::Revoked,
                        RevocationSource::KmsRefusal,
                        None,
                        message,
                        observed,
                    )
                    .await
                {
                    tracing::error!(%tenant, error = %e, "could not record a KMS refusal as a revocation");
                }
            }
            _ => {
                self.purge_tenant(tenant).await;
            }
        }
    }

    /// One live unwrap of the binding's tenant key (the key is discarded):
    /// shows a removed grant or policy statement that metadata would not.
    async fn canary(&self, binding: &KekBinding) -> Result<(), ServiceError> {
        let record = self
            .store
            .get_tenant_key(&binding.tenant, &binding.tenant_key_id)
            .await?
            .ok_or_else(|| internal("the binding's tenant key is not in the store"))?;
        self.check_tenant_key_mac(&record)?; // before the KMS sees it (ADR 0007)
        let kind = ProviderKind::from_str(&record.provider)
            .map_err(|_| internal(format!("unknown provider {:?} in store", record.provider)))?;
        let provider = self.providers.get(kind)?;
        self.counters
            .kek_unwraps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.usage
            .record(&binding.tenant, now_ms(), |u| u.kms_calls += 1);
        provider
            .unwrap(
                &KeyRef::new(kind, record.key_ref.clone()),
                &record.wrapped,
                &WrapContext::new(&binding.tenant, &binding.tenant_key_id, Purpose::TenantKey),
            )
            .await
            .map(drop)
            .map_err(ServiceError::from_provider)
    }

    /// Checks one tenant's key with a canary unwrap and applies the outcome.
    pub async fn check_binding(&self, binding: &KekBinding) -> Result<CheckOutcome, ServiceError> {
        if binding.state == KekState::Destroyed {
            return Ok(CheckOutcome::Unchanged);
        }
        let tenant = &binding.tenant;
        match self.canary(binding).await {
            Ok(()) => match binding.state {
                KekState::Revoked => {
                    if self.last_revocation_source(tenant).await?
                        == Some(RevocationSource::Explicit)
                    {
                        // Only RestoreKey lifts a break-glass revocation.
                        Ok(CheckOutcome::Unchanged)
                    } else {
                        self.restore(
                            tenant,
                            RevocationSource::Monitor,
                            None,
                            "the KMS accepts the key again",
                        )
                        .await?;
                        Ok(CheckOutcome::Restored)
                    }
                }
                KekState::Unavailable => {
                    self.restore(
                        tenant,
                        RevocationSource::Monitor,
                        None,
                        "the KMS is reachable again",
                    )
                    .await?;
                    Ok(CheckOutcome::Restored)
                }
                _ => Ok(CheckOutcome::Healthy),
            },
            Err(ServiceError::KeyRefused(e)) => {
                if binding.state == KekState::Revoked {
                    return Ok(CheckOutcome::Unchanged);
                }
                self.revoke(
                    tenant,
                    KekState::Revoked,
                    RevocationSource::Monitor,
                    None,
                    e.message(),
                    now_ms(),
                )
                .await?;
                Ok(CheckOutcome::Revoked)
            }
            Err(ServiceError::KeyNotFound(e)) => {
                // The key no longer exists at the KMS: everything under it is gone for good.
                self.revoke(
                    tenant,
                    KekState::Destroyed,
                    RevocationSource::Monitor,
                    None,
                    e.message(),
                    now_ms(),
                )
                .await?;
                Ok(CheckOutcome::Revoked)
            }
            Err(ServiceError::KmsUnavailable(e)) => {
                if matches!(binding.state, KekState::Active | KekState::Restored) {
                    self.mark_unavailable(binding, e.message()).await?;
                }
                Ok(CheckOutcome::Unavailable)
            }
            Err(other) => Err(other),
        }
    }

    /// KMS unreachable: recorded, but nothing is revoked and cached keys keep
    /// serving until their TTL.
    async fn mark_unavailable(
        &self,
        binding: &KekBinding,
        reason: &str,
    ) -> Result<(), ServiceError> {
        let _transition = self.transitions.lock().await;
        let current = self.current_binding(&binding.tenant).await?;
        if current.id != binding.id
            || !matches!(current.state, KekState::Active | KekState::Restored)
        {
            return Ok(());
        }
        self.store
            .set_binding_state(
                binding.id,
                KekState::Unavailable,
                &|change: &StateChange| {
                    vec![AuditEvent::RevocationStateChanged(StateTransition {
                        tenant: change.binding.tenant.clone(),
                        binding_id: change.binding.id,
                        from: audit_state(change.from),
                        to: AuditKeyState::Unavailable,
                        source: RevocationSource::Monitor,
                        actor: None,
                        reason: reason.to_owned(),
                        observed_at_ms: now_ms(),
                    })]
                },
            )
            .await?;
        Ok(())
    }

    /// One sweep of the monitor over every tenant's current binding, paced by
    /// the global rate limit. Returns the outcomes, in tenant order.
    pub async fn check_all(
        &self,
        max_checks_per_second: u32,
    ) -> Result<Vec<(TenantId, CheckOutcome)>, ServiceError> {
        let pause = Duration::from_secs(1) / max_checks_per_second.max(1);
        let mut outcomes = Vec::new();
        for (i, binding) in self.store.active_bindings().await?.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            match self.check_binding(&binding).await {
                Ok(outcome) => outcomes.push((binding.tenant.clone(), outcome)),
                Err(e) => {
                    tracing::error!(tenant = %binding.tenant, error = %e, "key-state check failed")
                }
            }
        }
        Ok(outcomes)
    }

    /// One pass of the monitor: checks every tenant whose interval (its
    /// policy override, else `policy.interval`) has passed since its last
    /// check, paced by the global rate limit. Returns the outcomes and how long
    /// to wait before the next pass (the shortest interval in use).
    pub async fn check_due(
        &self,
        policy: MonitorPolicy,
    ) -> Result<(Vec<(TenantId, CheckOutcome)>, Duration), ServiceError> {
        let pause = Duration::from_secs(1) / policy.max_checks_per_second.max(1);
        let mut next = policy.interval;
        let mut outcomes = Vec::new();
        for binding in self.store.active_bindings().await? {
            let interval = self
                .store
                .get_tenant(&binding.tenant)
                .await?
                .and_then(|t| t.policy.monitor_interval_seconds)
                .map_or(policy.interval, Duration::from_secs);
            next = next.min(interval);
            let due = self
                .last_checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&binding.tenant)
                .is_none_or(|last| last.elapsed() + interval.mul_f64(0.05) >= interval);
            if !due {
                continue;
            }
            if !outcomes.is_empty() {
                tokio::time::sleep(pause).await;
            }
            self.last_checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(binding.tenant.clone(), std::time::Instant::now());
            match self.check_binding(&binding).await {
                Ok(outcome) => outcomes.push((binding.tenant.clone(), outcome)),
                Err(e) => {
                    tracing::error!(tenant = %binding.tenant, error = %e, "key-state check failed")
                }
            }
        }
        Ok((outcomes, next))
    }

    /// The key-state monitor: passes every shortest interval in use (with ±10 %
    /// jitter, so replicas drift apart) until the task is dropped.
    pub async fn run_monitor(self: Arc<Self>, policy: MonitorPolicy) {
        let mut wait = policy.interval;
        loop {
            let jitter = wait.mul_f64(jitter_fraction());
            tokio::time::sleep(wait.mul_f64(0.9) + jitter).await;
            match self.check_due(policy).await {
                Ok((_, next)) => wait = next,
                Err(e) => tracing::error!(error = %e, "key-state monitor pass failed"),
            }
        }
    }

    /// Writes the per-tenant, per-second counts of requests denied because of
    /// revocation (each second once it is over) and the per-tenant usage
    /// summaries (each minute once it is over) to the audit log.
    pub async fn flush_denials(&self) -> Result<usize, ServiceError> {
        self.flush_denials_before(now_ms()).await
    }

    /// At shutdown: writes every pending count, the current second's included.
    pub async fn flush_all_denials(&self) -> Result<usize, ServiceError> {
        self.flush_denials_before(i64::MAX).await
    }

    async fn flush_denials_before(&self, now_ms: i64) -> Result<usize, ServiceError> {
        let denials =
            self.gates
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
        let events: Vec<AuditEvent> = denials.chain(usage).collect();
        let count = events.len();
        if count > 0 {
            self.store.append_audit(events).await?;
        }
        Ok(count)
    }

    /// A pushed key-state event names a key: every tenant currently bound to it
    /// is checked with the KMS (the event is a hint, the KMS is the truth).
    /// Returns (checked, revoked).
    pub async fn recheck_key(
        &self,
        provider: &str,
        key_ref: &str,
    ) -> Result<(u32, u32), ServiceError> {
        let mut checked = 0;
        let mut revoked = 0;
        for binding in self.store.active_bindings().await? {
            if binding.provider != provider || binding.key_ref != key_ref {
                continue;
            }
            checked += 1;
            if self.check_binding(&binding).await? == CheckOutcome::Revoked {
                revoked += 1;
            }
        }
        Ok((checked, revoked))
    }

    async fn current_binding(&self, tenant: &TenantId) -> Result<KekBinding, ServiceError> {
        match self.store.active_binding(tenant).await? {
            Some(binding) => Ok(binding),
            None => {
                self.require_tenant(tenant).await?;
                Err(ServiceError::NoKeyRegistered(tenant.to_string()))
            }
        }
    }

    /// The source of the tenant's most recent revocation, from the audit log.
    async fn last_revocation_source(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<RevocationSource>, ServiceError> {
        let mut last = None;
        crate::audit::scan_audit(
            self.store.as_ref(),
            AuditQuery::default()
                .with_tenant(tenant.clone())
                .with_event_type("revocation_state_changed"),
            |record| {
                if let AuditEvent::RevocationStateChanged(t) = record.event()
                    && t.to != AuditKeyState::Unavailable
                {
                    last = Some(t.source);
                }
            },
        )
        .await?;
        Ok(last)
    }
}

/// A uniformly random fraction in [0, 0.2): the jitter of one monitor sweep.
fn jitter_fraction() -> f64 {
    let mut byte = [0u8; 1];
    if aws_lc_rs::rand::fill(&mut byte).is_err() {
        return 0.1;
    }
    f64::from(byte[0]) / 256.0 * 0.2
}
