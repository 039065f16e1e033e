//! The revocation engine (docs/revocation.md): durable state transitions of a
//! tenant's KEK binding, the purge they trigger, the key-state monitor, and
//! the aggregation of denied requests into the audit log.
//!
//! Order of a revocation: the in-memory gate closes first (no request is
//! admitted and no plaintext released from then on), then the transition and
//! its audit record commit in one store transaction, then every cached key of
//! the tenant is removed (zeroized when its last user drops it) and the purge
//! is audited.
//!
//! Every transition is a compare-and-set on the binding as it was read
//! ([`StateUpdate`]): a decision made from an older read (a sweep that read the
//! state before another replica, or `RevokeKey`, changed it) never commits; it is
//! made again from a fresh read, with the same KMS observation. Why a binding is
//! in its state is stored with it (`state_cause`): an explicit revocation
//! (`RevokeKey`) is lifted only by `RestoreKey`, whatever the KMS says later.

use std::{str::FromStr as _, sync::Arc, time::Duration};

use keyward_audit::{AuditEvent, KeyState as AuditKeyState, StateTransition};
use keyward_envelope::TenantId;
use keyward_kms::{ErrorKind, KeyRef, ProviderKind, Purpose, WrapContext};
use keyward_store::{KekBinding, KekState, StateChange, StateUpdate, StoreError};

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

/// Times a transition is decided again after its compare-and-set found the binding changed
/// (each retry follows a change committed by someone else, so this is never reached in practice).
const MAX_DECISIONS: usize = 8;

/// What the KMS said about a binding's key (a canary unwrap, or a call on the data path).
#[derive(Debug)]
enum Observation {
    /// The key unwraps.
    Works,
    /// The KMS refused (disabled key, removed grant, …): a revocation signal.
    Refused(String),
    /// The key no longer exists at the KMS.
    Gone(String),
    /// The KMS could not be reached: not a refusal.
    Unreachable(String),
}

/// One decided transition of a binding.
struct Transition<'a> {
    to: KekState,
    source: RevocationSource,
    actor: Option<String>,
    reason: &'a str,
    observed_at_ms: i64,
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
                        cause: binding.state_cause,
                    },
                );
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// Revokes the tenant's current binding: gate closed, state and audit
    /// record committed together, caches purged, purge audited. Idempotent; an
    /// explicit revocation (`source` [`RevocationSource::Explicit`]) of a binding
    /// the KMS or the monitor already revoked makes it explicit (audited), so
    /// that only `RestoreKey` lifts it.
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
        let transition = Transition {
            to,
            source,
            actor,
            reason,
            observed_at_ms,
        };
        let result = self.revoke_locked(tenant, &transition).await;
        if closing(to) && matches!(result, Err(ServiceError::Store(_))) {
            // The store did not take it (not read, not written, or not re-read after a lost
            // compare-and-set): deny here anyway, from this instant, and keep the tenant closed
            // on this replica until a revocation is recorded (the caller gets the error and
            // must repeat the call).
            if self.gates.closed(tenant).is_none() {
                self.close_gate(tenant, to, source);
            }
            self.keep_closed_unrecorded(tenant, to).await;
        }
        result
    }

    /// [`Keyring::revoke`]'s decision loop; the caller holds `transitions`.
    async fn revoke_locked(
        &self,
        tenant: &TenantId,
        transition: &Transition<'_>,
    ) -> Result<KekBinding, ServiceError> {
        let (to, source) = (transition.to, transition.source);
        for _ in 0..MAX_DECISIONS {
            let binding = self.current_binding(tenant).await?;
            let already = binding.state == KekState::Destroyed
                || binding.state == KekState::Revoked
                    && to != KekState::Destroyed
                    && (source != RevocationSource::Explicit || binding.explicitly_revoked());
            if already {
                // Already recorded (perhaps by another replica whose notification has not
                // arrived yet): close and purge here too if this replica has not. "Already" was
                // decided from a read: confirm it with a fresh one, so that a RestoreKey that
                // committed after that read is not answered with OK and left standing.
                self.apply_binding(&binding).await;
                let confirmed = self.current_binding(tenant).await?;
                if confirmed.id == binding.id && confirmed.state_version == binding.state_version {
                    return Ok(binding);
                }
                continue;
            }
            if let Some(updated) = self.commit(&binding, transition).await? {
                return Ok(updated);
            }
        }
        Err(changed_too_often(tenant))
    }

    /// Closes the tenant's gate on this replica: every use of its keys is denied from this
    /// instant.
    fn close_gate(&self, tenant: &TenantId, to: KekState, source: RevocationSource) {
        self.gates.close(
            tenant,
            Closed {
                state: to,
                since_ms: now_ms(),
                cause: Some(source),
            },
        );
    }

    /// For a revocation the store could not take (not read, or not written) after the gate was
    /// closed: remembers the closure as unrecorded, so that reconciliation does not reopen it and
    /// `RegisterKey` is refused until a revocation is recorded, and purges the tenant's cached
    /// keys on this replica.
    /// Once per closure: nothing is cached for a closed tenant, so a second failure has nothing
    /// more to purge.
    async fn keep_closed_unrecorded(&self, tenant: &TenantId, to: KekState) {
        let first = self
            .unrecorded_closures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tenant.clone());
        if !first {
            return;
        }
        let entries = self.purge_and_audit(tenant).await;
        tracing::warn!(%tenant, replica = %self.replica_id, state = to.as_str(), entries, "the store did not take the revocation: tenant closed and cached keys purged on this replica only; the revocation is not recorded: repeat it");
    }

    /// Commits `transition` of `binding` (as read) with a compare-and-set, and applies it to
    /// this replica: a revocation closes the gate first and purges after; a restoration reopens
    /// the gate (of the tenant's current binding) or forgets the refusals remembered for an older
    /// binding's key. `Ok(None)`: the binding changed since it was read (nothing committed; the
    /// gate is back in line with the store): decide again. The caller holds `transitions`.
    async fn commit(
        &self,
        binding: &KekBinding,
        t: &Transition<'_>,
    ) -> Result<Option<KekBinding>, ServiceError> {
        let tenant = &binding.tenant;
        let current = binding.deactivated_at_ms.is_none();
        let closing = closing(t.to);
        if closing && current {
            // Deny from this instant on; if the record cannot be written, the tenant stays
            // closed on this replica (safe) and the caller gets the error.
            self.close_gate(tenant, t.to, t.source);
        }
        let restoring = matches!(t.to, KekState::Active | KekState::Restored)
            && matches!(binding.state, KekState::Revoked | KekState::Unavailable);
        let audit = |change: &StateChange| {
            let transition = StateTransition {
                tenant: change.binding.tenant.clone(),
                binding_id: change.binding.id,
                from: audit_state(change.from),
                to: audit_state(t.to),
                source: t.source,
                actor: t.actor.clone(),
                reason: t.reason.to_owned(),
                observed_at_ms: t.observed_at_ms,
            };
            vec![if restoring {
                AuditEvent::Restored(transition)
            } else {
                AuditEvent::RevocationStateChanged(transition)
            }]
        };
        let result = self
            .store
            .set_binding_state(StateUpdate::of(binding, t.to, t.source), &audit)
            .await;
        let updated = match result {
            Ok(updated) => updated,
            Err(StoreError::StateChanged(why)) => {
                tracing::info!(%tenant, replica = %self.replica_id, %why, "key state changed since it was read; deciding again");
                if let Some(fresh) = self.store.active_binding(tenant).await? {
                    self.apply_binding(&fresh).await;
                }
                return Ok(None);
            }
            Err(e) => {
                if closing && current {
                    // Closed here but not in the store: reconciliation must not reopen it.
                    self.keep_closed_unrecorded(tenant, t.to).await;
                }
                return Err(e.into());
            }
        };
        if closing {
            let entries = if current {
                self.forget_unrecorded(tenant);
                self.purge_and_audit(tenant).await
            } else {
                self.purge_tenant_key(tenant, &binding.tenant_key_id).await
            };
            tracing::warn!(%tenant, replica = %self.replica_id, binding = binding.id, state = t.to.as_str(), source = ?t.source, entries, "tenant key revoked; cached keys purged");
        } else if restoring {
            self.forget_refusals(tenant, Some(&binding.tenant_key_id))
                .await;
            if current {
                if t.source == RevocationSource::Explicit || !self.is_unrecorded(tenant) {
                    self.forget_unrecorded(tenant);
                    self.gates.open(tenant);
                } else {
                    // A RevokeKey on this replica failed on the store and was not recorded: an
                    // automatic restoration (the monitor seeing the KMS answer again) does not
                    // lift it; a recorded revocation or RestoreKey does.
                    tracing::warn!(%tenant, replica = %self.replica_id, binding = binding.id, "restored in the store; stays closed on this replica until the RevokeKey that failed here is recorded or RestoreKey is called");
                }
            }
            tracing::info!(%tenant, replica = %self.replica_id, binding = binding.id, source = ?t.source, "tenant key restored");
        }
        Ok(Some(updated))
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
            replica: Some(self.replica_id.to_string()),
        };
        self.record_audit(vec![purged]).await;
        entries
    }

    fn is_unrecorded(&self, tenant: &TenantId) -> bool {
        self.unrecorded_closures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(tenant)
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
    /// replica); active, restored or unavailable reopens a closed gate. Keys of the tenant's
    /// older bindings cached here are checked too: one whose binding is revoked or destroyed is
    /// purged (a new key may have been registered after a revocation this replica missed), and
    /// remembered refusals are forgotten (the binding may have been restored). Called for each
    /// notification of another replica's change and by [`Keyring::reconcile`].
    pub async fn apply_recorded_state(&self, tenant: &TenantId) -> Result<bool, ServiceError> {
        let _transition = self.transitions.lock().await;
        match self.store.active_binding(tenant).await? {
            Some(binding) => {
                let changed = self.apply_binding(&binding).await;
                self.forget_refusals(tenant, None).await;
                let purged = self.purge_revoked_older_keys(&binding).await?;
                Ok(changed || purged)
            }
            None => Ok(false),
        }
    }

    /// A tenant's policy changed (on any replica): its cached keys are dropped, so that a
    /// shortened cache TTL bounds this replica's keys at once.
    pub async fn apply_recorded_policy(&self, tenant: &TenantId) -> u64 {
        self.purge_tenant(tenant).await
    }

    /// Compares every tenant's current binding in the store with this replica's gates and
    /// applies the differences (see [`Keyring::apply_recorded_state`]): the safety net for
    /// notifications lost while the listener was disconnected. Returns how many tenants changed.
    pub async fn reconcile(&self) -> Result<usize, ServiceError> {
        let _transition = self.transitions.lock().await;
        let mut changed = 0;
        for binding in self.store.active_bindings().await? {
            let gate = self.apply_binding(&binding).await;
            let purged = self.purge_revoked_older_keys(&binding).await?;
            if gate || purged {
                changed += 1;
            }
        }
        self.recheck_refusals().await?;
        Ok(changed)
    }

    /// One tenant's recorded state onto its gate; the caller holds `transitions` (so a local
    /// transition cannot interleave between the store read and this). Returns whether the gate
    /// changed.
    pub(super) async fn apply_binding(&self, binding: &KekBinding) -> bool {
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
                    cause: binding.state_cause,
                },
            );
            let entries = self.purge_and_audit(tenant).await;
            tracing::warn!(%tenant, replica = %self.replica_id, state = binding.state.as_str(), entries, "tenant key revoked by another replica; cached keys purged");
            return true;
        }
        if current.is_none() || self.is_unrecorded(tenant) {
            return false;
        }
        self.gates.open(tenant);
        tracing::info!(%tenant, replica = %self.replica_id, state = binding.state.as_str(), "tenant key usable again (restored, or a new key registered)");
        true
    }

    /// Restores the tenant's current binding after proving with a live canary unwrap that the
    /// KMS accepts the key again (`RestoreKey`). A binding revoked by `RevokeKey` is restored
    /// only with `source` [`RevocationSource::Explicit`].
    pub async fn restore(
        &self,
        tenant: &TenantId,
        source: RevocationSource,
        actor: Option<String>,
        reason: &str,
    ) -> Result<KekBinding, ServiceError> {
        self.restore_binding(tenant, None, source, actor, reason)
            .await
    }

    /// [`Keyring::restore`] of one binding of the tenant: `None` is the current one; an older
    /// binding (revoked before a newer key was registered) makes the data written under it
    /// readable again.
    pub async fn restore_binding(
        &self,
        tenant: &TenantId,
        binding_id: Option<i64>,
        source: RevocationSource,
        actor: Option<String>,
        reason: &str,
    ) -> Result<KekBinding, ServiceError> {
        let _transition = self.transitions.lock().await;
        let binding = match binding_id {
            None => self.current_binding(tenant).await?,
            Some(id) => self.binding_of(tenant, id).await?,
        };
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
            _ => {
                // Nothing to restore in the store. A RevokeKey that failed on this replica
                // (closed here, never recorded) is lifted by RestoreKey here, as a recorded
                // revocation would be.
                if source == RevocationSource::Explicit
                    && binding.deactivated_at_ms.is_none()
                    && self.is_unrecorded(tenant)
                {
                    self.forget_unrecorded(tenant);
                    self.apply_binding(&binding).await;
                    tracing::warn!(%tenant, replica = %self.replica_id, binding = binding.id, "RestoreKey lifted this replica's unrecorded closure (a RevokeKey here had failed on the store)");
                }
                return Ok(binding);
            }
        }
        if binding.explicitly_revoked() && source != RevocationSource::Explicit {
            return Ok(binding); // only RestoreKey lifts an explicit revocation
        }
        self.canary(&binding).await?;
        let to = if binding.state == KekState::Unavailable {
            KekState::Active
        } else {
            KekState::Restored
        };
        let transition = Transition {
            to,
            source,
            actor,
            reason,
            observed_at_ms: now_ms(),
        };
        // The caller decided to restore what it saw; if the binding changed since (a newer
        // revocation, perhaps an explicit one by someone else), that decision is stale:
        // nothing is lifted, and the caller sees the new state and decides again.
        match self.commit(&binding, &transition).await? {
            Some(updated) => Ok(updated),
            None => Err(ServiceError::Conflict(format!(
                "the key state of tenant {tenant} changed while it was being restored; nothing was restored: check it (`keyward tenant show`) and repeat RestoreKey if it should still be lifted"
            ))),
        }
    }

    /// Binding `id` of `tenant` (current or older).
    async fn binding_of(&self, tenant: &TenantId, id: i64) -> Result<KekBinding, ServiceError> {
        self.require_tenant(tenant).await?;
        self.store
            .list_bindings(tenant)
            .await?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| {
                ServiceError::invalid(
                    "binding_id",
                    format!("tenant {tenant} has no KEK binding {id}"),
                )
            })
    }

    /// The KMS refused an unwrap on the data path. If the refused key is the
    /// tenant's current one, that is a revocation; an older binding's refusal
    /// affects that binding only: its cached keys are dropped and the refusal is
    /// remembered for the cache TTL (no KMS call, no purge of the tenant's other
    /// keys, until then).
    pub(super) async fn on_kms_refusal(
        &self,
        tenant: &TenantId,
        tenant_key_id: &keyward_envelope::KeyId,
        message: &str,
    ) {
        let observed = now_ms();
        match self.store.active_binding(tenant).await {
            Ok(Some(binding)) if binding.tenant_key_id == *tenant_key_id => {
                let _transition = self.transitions.lock().await;
                if let Err(e) = self
                    .observe(
                        &binding,
                        Observation::Refused(message.to_owned()),
                        RevocationSource::KmsRefusal,
                        observed,
                    )
                    .await
                {
                    tracing::error!(%tenant, error = %e, "could not record a KMS refusal as a revocation");
                }
            }
            _ => {
                self.remember_refusal(
                    tenant,
                    tenant_key_id,
                    Closed {
                        state: KekState::Revoked,
                        since_ms: observed,
                        cause: Some(RevocationSource::KmsRefusal),
                    },
                    false,
                )
                .await;
                self.purge_tenant_key(tenant, tenant_key_id).await;
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

    /// Checks one tenant's key with a canary unwrap and applies the outcome. `binding` may be
    /// an older read (a sweep's work list): the outcome is applied to the binding as it is now
    /// (compare-and-set), never to the state that was read.
    pub async fn check_binding(&self, binding: &KekBinding) -> Result<CheckOutcome, ServiceError> {
        if binding.state == KekState::Destroyed {
            return Ok(CheckOutcome::Unchanged);
        }
        let observation = match self.canary(binding).await {
            Ok(()) => Observation::Works,
            Err(ServiceError::KeyRefused(e)) => Observation::Refused(e.message().to_owned()),
            Err(ServiceError::KeyNotFound(e)) => Observation::Gone(e.message().to_owned()),
            Err(ServiceError::KmsUnavailable(e)) => {
                Observation::Unreachable(e.message().to_owned())
            }
            Err(other) => return Err(other),
        };
        let _transition = self.transitions.lock().await;
        self.observe(binding, observation, RevocationSource::Monitor, now_ms())
            .await
    }

    /// Applies what the KMS said about `read` (a read of a binding, perhaps stale) to the
    /// binding as it is in the store now, deciding again after every lost compare-and-set. The
    /// caller holds `transitions`.
    async fn observe(
        &self,
        read: &KekBinding,
        observation: Observation,
        source: RevocationSource,
        observed_at_ms: i64,
    ) -> Result<CheckOutcome, ServiceError> {
        let mut binding = read.clone();
        for attempt in 0..MAX_DECISIONS {
            if attempt > 0 {
                match self.store.active_binding(&read.tenant).await? {
                    // The observation was about this binding's key; a newer binding is not
                    // judged by it.
                    Some(fresh) if fresh.id == read.id => binding = fresh,
                    _ => return Ok(CheckOutcome::Unchanged),
                }
            }
            let (to, reason, outcome) = match (&observation, binding.state) {
                (_, KekState::Destroyed) => return Ok(CheckOutcome::Unchanged),
                (Observation::Works, KekState::Revoked) if binding.explicitly_revoked() => {
                    // Only RestoreKey lifts a break-glass revocation.
                    return Ok(CheckOutcome::Unchanged);
                }
                (Observation::Works, KekState::Revoked) => (
                    KekState::Restored,
                    "the KMS accepts the key again",
                    CheckOutcome::Restored,
                ),
                (Observation::Works, KekState::Unavailable) => (
                    KekState::Active,
                    "the KMS is reachable again",
                    CheckOutcome::Restored,
                ),
                (Observation::Works, _) => return Ok(CheckOutcome::Healthy),
                (Observation::Refused(_), KekState::Revoked) => {
                    return Ok(CheckOutcome::Unchanged);
                }
                (Observation::Refused(why), _) => {
                    (KekState::Revoked, why.as_str(), CheckOutcome::Revoked)
                }
                // The key no longer exists at the KMS: everything under it is gone for good.
                (Observation::Gone(why), _) => {
                    (KekState::Destroyed, why.as_str(), CheckOutcome::Revoked)
                }
                (Observation::Unreachable(why), KekState::Active | KekState::Restored) => {
                    // KMS unreachable: recorded, but nothing is revoked and cached keys keep
                    // serving until their TTL.
                    (
                        KekState::Unavailable,
                        why.as_str(),
                        CheckOutcome::Unavailable,
                    )
                }
                (Observation::Unreachable(_), _) => return Ok(CheckOutcome::Unavailable),
            };
            let transition = Transition {
                to,
                source,
                actor: None,
                reason,
                observed_at_ms,
            };
            if self.commit(&binding, &transition).await?.is_some() {
                return Ok(outcome);
            }
        }
        Err(changed_too_often(&read.tenant))
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
        let events = self.pending_audit.take_with(denials.chain(usage).collect());
        let count = events.len();
        if count > 0 {
            self.append_or_keep(events).await?;
        }
        Ok(count)
    }

    /// Appends records that are not part of a lifecycle transaction (denial and usage counts,
    /// `keys_purged`, failed registrations, authorization denials), after any still pending; if
    /// the append fails they all stay pending for the next flush (see `pending_audit`), and the
    /// failure is logged.
    pub async fn record_audit(&self, events: Vec<AuditEvent>) {
        let events = self.pending_audit.take_with(events);
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.append_or_keep(events).await {
            tracing::error!(replica = %self.replica_id, error = %e, pending = self.pending_audit.len(), "could not append audit records; they are kept and retried at the next flush");
        }
    }

    async fn append_or_keep(&self, events: Vec<AuditEvent>) -> Result<(), ServiceError> {
        // The records are cloned only so that a failed append can keep them.
        match self.store.append_audit(events.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.pending_audit.put_back(events);
                Err(e.into())
            }
        }
    }

    /// Audit records waiting for the store, and those dropped because too many waited.
    pub fn pending_audit(&self) -> (usize, u64) {
        (self.pending_audit.len(), self.pending_audit.dropped())
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
}

/// Whether a transition to `to` denies the tenant's data (revoked or destroyed).
fn closing(to: KekState) -> bool {
    matches!(to, KekState::Revoked | KekState::Destroyed)
}

/// A transition that kept losing its compare-and-set (every loss is another writer's commit).
fn changed_too_often(tenant: &TenantId) -> ServiceError {
    ServiceError::Conflict(format!(
        "the key state of tenant {tenant} changed {MAX_DECISIONS} times while this change was decided"
    ))
}

/// A uniformly random fraction in [0, 0.2): the jitter of one monitor sweep.
fn jitter_fraction() -> f64 {
    let mut byte = [0u8; 1];
    if aws_lc_rs::rand::fill(&mut byte).is_err() {
        return 0.1;
    }
    f64::from(byte[0]) / 256.0 * 0.2
}
