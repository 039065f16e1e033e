//! The revocation engine (docs/revocation.md): the only writer of a tenant's KEK binding
//! state, the gate that mirrors it on this replica, and the purge a revocation triggers.
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
//!
//! Every transition of this replica (revoke, restore, an observation of the KMS by the
//! monitor or the data path, the state recorded by another replica, a new binding) runs under
//! one lock, [`Revocation`]'s `transitions` (loading the recorded states at start-up, before
//! anything else runs, does not take it). The key-state monitor that makes the canary
//! observations is `monitor`; turning an observation into a transition is
//! `revocation::observed`; applying what other replicas recorded is `revocation::recorded`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use keyward_audit::{AuditEvent, KeyState as AuditKeyState, StateTransition};
use keyward_envelope::TenantId;
use keyward_kms::ErrorKind;
use keyward_store::{
    BindingCommit, KekBinding, KekState, StateChange, StateUpdate, Store, StoreError, TenantState,
};

use super::{cache::KeyCache, kek::Kek, ledger::AuditLedger, require_tenant};
use crate::{
    error::ServiceError,
    keyring::gate::{Closed, Gates},
    now_ms,
};

mod observed;
mod recorded;

pub use observed::CheckOutcome;
pub(super) use observed::Observation;

/// Who or what revoked or restored a key.
pub use keyward_audit::RevocationSource;

fn audit_state(state: KekState) -> AuditKeyState {
    match state {
        KekState::Revoked => AuditKeyState::Revoked,
        KekState::Unavailable => AuditKeyState::Unavailable,
        KekState::Restored => AuditKeyState::Restored,
        KekState::Destroyed => AuditKeyState::Destroyed,
        _ => AuditKeyState::Active,
    }
}

/// What a revocation or restoration left: the binding, and its tenant as the store's write left
/// it (`None` when nothing needed writing: the binding already was in the state asked for).
pub(super) struct Outcome {
    pub(super) binding: KekBinding,
    pub(super) committed: Option<TenantState>,
}

impl Outcome {
    fn unchanged(binding: KekBinding) -> Self {
        Self {
            binding,
            committed: None,
        }
    }
}

impl From<BindingCommit> for Outcome {
    fn from(c: BindingCommit) -> Self {
        Self {
            binding: c.binding,
            committed: Some(c.tenant),
        }
    }
}

/// Times a transition is decided again after its compare-and-set found the binding changed
/// (each retry follows a change committed by someone else, so this is never reached in practice).
const MAX_DECISIONS: usize = 8;

/// One decided transition of a binding.
struct Transition<'a> {
    to: KekState,
    source: RevocationSource,
    actor: Option<String>,
    reason: &'a str,
    observed_at_ms: i64,
}

/// The revocation state of this replica's tenants and the one writer of binding state.
pub(super) struct Revocation {
    store: Arc<dyn Store>,
    cache: Arc<KeyCache>,
    kek: Arc<Kek>,
    ledger: Arc<AuditLedger>,
    /// Revocation state on the request path, generations, denial counts.
    gates: Gates,
    /// Serialises revocation-state transitions (revoke, restore, monitor, other replicas'
    /// changes, a new binding).
    transitions: tokio::sync::Mutex<()>,
    /// Tenants closed by a revocation whose store write failed: reconciliation with the store
    /// (which still says active) must not reopen them.
    unrecorded_closures: Mutex<HashSet<TenantId>>,
    /// Names this replica in log lines (revocations, purges) and in `keys_purged` records.
    replica_id: String,
}

impl Revocation {
    pub(super) fn new(
        store: Arc<dyn Store>,
        cache: Arc<KeyCache>,
        kek: Arc<Kek>,
        ledger: Arc<AuditLedger>,
        replica_id: String,
    ) -> Self {
        Self {
            store,
            cache,
            kek,
            ledger,
            gates: Gates::default(),
            transitions: tokio::sync::Mutex::new(()),
            unrecorded_closures: Mutex::default(),
            replica_id,
        }
    }

    /// The gates: every request's admission and last check before plaintext leaves.
    pub(super) fn gates(&self) -> &Gates {
        &self.gates
    }

    /// Revokes the tenant's current binding: gate closed, state and audit
    /// record committed together, caches purged, purge audited. Idempotent; an
    /// explicit revocation (`source` [`RevocationSource::Explicit`]) of a binding
    /// the KMS or the monitor already revoked makes it explicit (audited), so
    /// that only `RestoreKey` lifts it. Returns the binding and its tenant as the store's write
    /// left them (as read, when there was nothing to write).
    pub(super) async fn revoke(
        &self,
        tenant: &TenantId,
        to: KekState,
        source: RevocationSource,
        actor: Option<String>,
        reason: &str,
        observed_at_ms: i64,
    ) -> Result<Outcome, ServiceError> {
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

    /// [`Revocation::revoke`]'s decision loop; the caller holds `transitions`.
    async fn revoke_locked(
        &self,
        tenant: &TenantId,
        transition: &Transition<'_>,
    ) -> Result<Outcome, ServiceError> {
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
                    return Ok(Outcome::unchanged(binding));
                }
                continue;
            }
            if let Some(updated) = self.commit(&binding, transition).await? {
                return Ok(updated.into());
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
            .unwrap_or_else(PoisonError::into_inner)
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
    ) -> Result<Option<BindingCommit>, ServiceError> {
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
                // An older binding: only the keys it wraps go, and the purge is recorded like
                // any revocation's (the auditor pairs each revocation with its purges).
                let mut entries = 0;
                for id in self.keys_wrapped_by(binding).await {
                    entries += self.cache.purge_tenant_key(tenant, &id).await;
                }
                self.ledger
                    .record(vec![AuditEvent::KeysPurged {
                        tenant: tenant.clone(),
                        purged_at_ms: now_ms(),
                        entries,
                        last_plaintext_at_ms: self.gates.last_plaintext_ms(tenant),
                        replica: Some(self.replica_id.to_string()),
                    }])
                    .await;
                entries
            };
            tracing::warn!(%tenant, replica = %self.replica_id, binding = binding.id, state = t.to.as_str(), source = ?t.source, entries, "tenant key revoked; cached keys purged");
        } else if restoring {
            for id in self.keys_wrapped_by(binding).await {
                self.cache.forget_refusals(tenant, Some(&id)).await;
            }
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

    /// The tenant keys `binding`'s KEK wraps now (its own, and any a re-key moved under it),
    /// and its own in any case. If the store cannot say, its own only (logged): a revocation
    /// of an older binding is recorded all the same, and the keys it wraps are refused by the
    /// loader from the store's state.
    async fn keys_wrapped_by(&self, binding: &KekBinding) -> Vec<keyward_envelope::KeyId> {
        let mut ids = vec![binding.tenant_key_id];
        match self.kek.keys_wrapped_by(&binding.tenant, binding.id).await {
            Ok(keys) => ids.extend(keys.into_iter().map(|k| k.id)),
            Err(e) => {
                tracing::warn!(tenant = %binding.tenant, binding = binding.id, error = %e, "could not list the tenant keys wrapped by the binding; purging its own only");
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Removes every cached key of a closed tenant and records the purge (`keys_purged`, with
    /// this replica's last plaintext time). Returns the number of entries removed.
    async fn purge_and_audit(&self, tenant: &TenantId) -> u64 {
        let entries = self.cache.purge_tenant(tenant).await;
        let purged = AuditEvent::KeysPurged {
            tenant: tenant.clone(),
            purged_at_ms: now_ms(),
            entries,
            last_plaintext_at_ms: self.gates.last_plaintext_ms(tenant),
            replica: Some(self.replica_id.to_string()),
        };
        self.ledger.record(vec![purged]).await;
        entries
    }

    fn is_unrecorded(&self, tenant: &TenantId) -> bool {
        self.unrecorded_closures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(tenant)
    }

    fn forget_unrecorded(&self, tenant: &TenantId) {
        self.unrecorded_closures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
    }

    /// Restores the tenant's current binding after proving with a live canary unwrap that the
    /// KMS accepts the key again (`RestoreKey`). A binding revoked by `RevokeKey` is restored
    /// only with `source` [`RevocationSource::Explicit`].
    pub(super) async fn restore(
        &self,
        tenant: &TenantId,
        source: RevocationSource,
        actor: Option<String>,
        reason: &str,
    ) -> Result<Outcome, ServiceError> {
        self.restore_binding(tenant, None, source, actor, reason)
            .await
    }

    /// [`Revocation::restore`] of one binding of the tenant: `None` is the current one; an older
    /// binding (revoked before a newer key was registered) makes the data written under it
    /// readable again.
    pub(super) async fn restore_binding(
        &self,
        tenant: &TenantId,
        binding_id: Option<i64>,
        source: RevocationSource,
        actor: Option<String>,
        reason: &str,
    ) -> Result<Outcome, ServiceError> {
        let _transition = self.transitions.lock().await;
        let binding = match binding_id {
            None => self.current_binding(tenant).await?,
            Some(id) => self.binding_of(tenant, id).await?,
        };
        match binding.state {
            KekState::Revoked | KekState::Unavailable => {}
            KekState::Retired => {
                return Err(ServiceError::invalid(
                    "binding_id",
                    format!(
                        "binding {} of tenant {tenant} is retired (re-keyed): nothing depends on its key, nothing to restore",
                        binding.id
                    ),
                ));
            }
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
                return Ok(Outcome::unchanged(binding));
            }
        }
        if binding.explicitly_revoked() && source != RevocationSource::Explicit {
            return Ok(Outcome::unchanged(binding)); // only RestoreKey lifts an explicit revocation
        }
        if !self.kek.canary(&binding).await? {
            // Its tenant keys were re-keyed under a newer binding before it was revoked: no
            // data depends on it, so there is nothing to restore (a re-key retires it).
            return Err(ServiceError::invalid(
                "binding_id",
                format!(
                    "binding {} of tenant {tenant} wraps no tenant key any more (re-keyed): nothing depends on it, nothing to restore",
                    binding.id
                ),
            ));
        }
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
            Some(updated) => Ok(updated.into()),
            None => Err(ServiceError::Conflict(format!(
                "the key state of tenant {tenant} changed while it was being restored; nothing was restored: check it (`keyward tenant show`) and repeat RestoreKey if it should still be lifted"
            ))),
        }
    }

    /// Binding `id` of `tenant` (current or older).
    async fn binding_of(&self, tenant: &TenantId, id: i64) -> Result<KekBinding, ServiceError> {
        require_tenant(self.store.as_ref(), tenant).await?;
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

    async fn current_binding(&self, tenant: &TenantId) -> Result<KekBinding, ServiceError> {
        match self.store.active_binding(tenant).await? {
            Some(binding) => Ok(binding),
            None => {
                require_tenant(self.store.as_ref(), tenant).await?;
                Err(ServiceError::NoKeyRegistered(tenant.to_string()))
            }
        }
    }

    /// Refuses a new binding while a revocation of `tenant` lives only in this replica's gate.
    pub(super) fn refuse_if_unrecorded(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        let unrecorded = self
            .unrecorded_closures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(tenant);
        if unrecorded {
            // The revocation lives only in this replica's gate: a new binding would reopen the
            // gate while the store still calls the old binding active, and its data readable.
            return Err(ServiceError::Conflict(format!(
                "a revocation of tenant {tenant} could not be recorded in the store yet; repeat RevokeKey until it succeeds, then register the new key"
            )));
        }
        Ok(())
    }

    /// The new binding `binding_id` of `tenant` serves new data: a gate closed by the previous
    /// binding's revocation opens (on other replicas through the store's notification), if it
    /// is still the tenant's current binding. Data under a revoked binding stays refused: its
    /// tenant key never loads while the binding is revoked.
    pub(super) async fn apply_new_binding(
        &self,
        tenant: &TenantId,
        binding_id: i64,
    ) -> Result<(), ServiceError> {
        let _transition = self.transitions.lock().await;
        if let Some(current) = self.store.active_binding(tenant).await?
            && current.id == binding_id
        {
            self.apply_binding(&current).await;
        }
        Ok(())
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
