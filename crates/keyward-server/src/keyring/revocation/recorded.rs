//! Applying the key state recorded in the store (by any replica) to this replica's gates and
//! caches: at start-up ([`Revocation::load_revocations`]), on each notification
//! of another replica's change, and periodically as the safety net for notifications lost
//! while the listener was disconnected ([`Revocation::reconcile`]).

use keyward_envelope::{KeyId, TenantId};
use keyward_store::{KekBinding, KekState};

use super::Revocation;
use crate::{error::ServiceError, keyring::gate::Closed};

impl Revocation {
    /// Closes the gates of every tenant whose current binding is revoked or
    /// destroyed in the store (at start-up).
    pub(in crate::keyring) async fn load_revocations(&self) -> Result<usize, ServiceError> {
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

    /// Applies the tenant's key state as recorded in the store (by any replica) to this
    /// replica's gate and caches, exactly as the recording replica did: revoked or destroyed
    /// closes the gate and purges the tenant's cached keys (audited as `keys_purged` by this
    /// replica); active, restored or unavailable reopens a closed gate. Keys of the tenant's
    /// older bindings cached here are checked too: one whose binding is revoked or destroyed is
    /// purged (a new key may have been registered after a revocation this replica missed), and
    /// remembered refusals are forgotten (the binding may have been restored). Called for each
    /// notification of another replica's change and by [`Revocation::reconcile`].
    pub(in crate::keyring) async fn apply_recorded_state(
        &self,
        tenant: &TenantId,
    ) -> Result<bool, ServiceError> {
        let _transition = self.transitions.lock().await;
        match self.store.active_binding(tenant).await? {
            Some(binding) => {
                let changed = self.apply_binding(&binding).await;
                self.cache.forget_refusals(tenant, None).await;
                let purged = self.purge_revoked_older_keys(&binding).await?;
                Ok(changed || purged)
            }
            None => Ok(false),
        }
    }

    /// A tenant's policy changed (on any replica): its cached keys are dropped, so that a
    /// shortened cache TTL bounds this replica's keys at once.
    pub(in crate::keyring) async fn apply_recorded_policy(&self, tenant: &TenantId) -> u64 {
        self.cache.purge_tenant(tenant).await
    }

    /// Compares every tenant's current binding in the store with this replica's gates and
    /// applies the differences (see [`Revocation::apply_recorded_state`]): the safety net for
    /// notifications lost while the listener was disconnected. Returns how many tenants changed.
    pub(in crate::keyring) async fn reconcile(&self) -> Result<usize, ServiceError> {
        let _transition = self.transitions.lock().await;
        let mut changed = 0;
        for binding in self.store.active_bindings().await? {
            let gate = self.apply_binding(&binding).await;
            let purged = self.purge_revoked_older_keys(&binding).await?;
            if gate || purged {
                changed += 1;
            }
        }
        self.cache.recheck_refusals(self.store.as_ref()).await?;
        Ok(changed)
    }

    /// One tenant's recorded state onto its gate; the caller holds `transitions` (so a local
    /// transition cannot interleave between the store read and this). Returns whether the gate
    /// changed.
    pub(in crate::keyring) async fn apply_binding(&self, binding: &KekBinding) -> bool {
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

    /// Keys of `current.tenant`'s older bindings cached on this replica whose binding is
    /// revoked or destroyed in the store are purged (and refused for the TTL). Returns whether
    /// any was. Reads the store once per such key cached.
    async fn purge_revoked_older_keys(&self, current: &KekBinding) -> Result<bool, ServiceError> {
        let tenant = &current.tenant;
        let older: std::collections::BTreeSet<KeyId> = self
            .cache
            .cached_tenant_key_ids(tenant, &current.tenant_key_id);
        let mut purged = false;
        for id in older {
            let Some(record) = self.store.get_tenant_key(tenant, &id).await? else {
                continue;
            };
            if matches!(
                record.binding_state,
                KekState::Revoked | KekState::Destroyed
            ) {
                self.cache
                    .remember_refusal(
                        tenant,
                        &id,
                        Closed {
                            state: record.binding_state,
                            since_ms: record.binding_state_changed_at_ms,
                            cause: None,
                        },
                        true,
                    )
                    .await;
                let entries = self.cache.purge_tenant_key(tenant, &id).await;
                tracing::warn!(%tenant, replica = %self.replica_id, tenant_key = %id, state = record.binding_state.as_str(), entries, "keys of a revoked older binding purged");
                purged = true;
            }
        }
        Ok(purged)
    }
}
