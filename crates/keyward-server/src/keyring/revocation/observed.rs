//! What the KMS said about a binding's key (a canary check of the monitor, or a refusal on the
//! data path), turned into the transition it calls for.

use keyward_envelope::{KeyId, TenantId};
use keyward_store::{KekBinding, KekState};

use super::{MAX_DECISIONS, Revocation, RevocationSource, Transition, changed_too_often};
use crate::{error::ServiceError, keyring::gate::Closed, now_ms};

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

/// What the KMS said about a binding's key (a canary unwrap, or a call on the data path).
#[derive(Debug)]
pub(in crate::keyring) enum Observation {
    /// The key unwraps.
    Works,
    /// The KMS refused (disabled key, removed grant, …): a revocation signal.
    Refused(String),
    /// The key no longer exists at the KMS.
    Gone(String),
    /// The KMS could not be reached: not a refusal.
    Unreachable(String),
}

impl Revocation {
    /// The KMS refused an unwrap of tenant key `tenant_key_id` on the data path, asked of the
    /// KEK of binding `asked` (`None`: unknown, the binding that wraps the key now). If that is
    /// the tenant's current binding, that is a revocation; an older binding's refusal affects
    /// that binding only: its cached keys are dropped and the refusal is remembered for the
    /// cache TTL (no KMS call, no purge of the tenant's other keys, until then). A refusal of a
    /// KEK that no longer wraps the key (a re-key moved it under a newer binding meanwhile) is
    /// about nothing: the next load unwraps the key's new wrap.
    pub(in crate::keyring) async fn on_kms_refusal(
        &self,
        tenant: &TenantId,
        tenant_key_id: &KeyId,
        asked: Option<i64>,
        message: &str,
    ) {
        let observed = now_ms();
        let wrapping = match self.store.get_tenant_key(tenant, tenant_key_id).await {
            Ok(Some(record)) => Some(record.binding_id),
            _ => None,
        };
        let asked = asked.or(wrapping);
        if let (Some(asked), Some(now)) = (asked, wrapping)
            && asked != now
        {
            tracing::info!(%tenant, tenant_key = %tenant_key_id, refused_binding = asked, binding = now, "a KEK that no longer wraps the tenant key refused it (re-keyed meanwhile); nothing recorded");
            return;
        }
        match self.store.active_binding(tenant).await {
            Ok(Some(binding)) if Some(binding.id) == asked => {
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
                self.cache
                    .remember_refusal(
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
                self.cache.purge_tenant_key(tenant, tenant_key_id).await;
            }
        }
    }

    /// [`Revocation::observe`] under the transition lock, observed at the time the lock was
    /// taken (the monitor's canary checks).
    pub(in crate::keyring) async fn observe_now(
        &self,
        read: &KekBinding,
        observation: Observation,
        source: RevocationSource,
    ) -> Result<CheckOutcome, ServiceError> {
        let _transition = self.transitions.lock().await;
        self.observe(read, observation, source, now_ms()).await
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
                // Destroyed is final; retired too (nothing depends on its key any more).
                (_, KekState::Destroyed | KekState::Retired) => {
                    return Ok(CheckOutcome::Unchanged);
                }
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
}
