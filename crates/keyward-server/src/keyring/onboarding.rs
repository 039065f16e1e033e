//! Onboarding: tenants, the registration of a tenant's KEK (validated with a live generate and
//! unwrap round trip before it is bound), and the tenant's policy overrides.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use keyward_audit::{AuditEvent, RegistrationOutcome};
use keyward_envelope::{KeyId, TenantId};
use keyward_kms::{ErrorKind, KeyRef, KeyState, ProviderError, Purpose, WrapContext};
use keyward_store::{
    BindingChange, BindingCommit, BindingUsage, NewKekBinding, Store, TenantRecord, TenantState,
};
use subtle::ConstantTimeEq as _;

use super::{
    cache::{KeyCache, LiveKey},
    internal,
    kek::Kek,
    ledger::AuditLedger,
    monitor::Schedule,
    require_tenant,
    revocation::Revocation,
};
use crate::error::ServiceError;

/// Tenants, KEK registration and tenant policies.
pub(super) struct Onboarding {
    pub(super) store: Arc<dyn Store>,
    pub(super) cache: Arc<KeyCache>,
    pub(super) kek: Arc<Kek>,
    pub(super) revocation: Arc<Revocation>,
    pub(super) ledger: Arc<AuditLedger>,
    pub(super) schedule: Arc<Schedule>,
}

impl Onboarding {
    pub(super) async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        actor: String,
    ) -> Result<TenantRecord, ServiceError> {
        self.store
            .create_tenant(id, display_name, &|t: &TenantRecord| {
                vec![AuditEvent::TenantCreated {
                    tenant: t.id.clone(),
                    actor: Some(actor.clone()),
                }]
            })
            .await
            .map_err(|e| match e {
                keyward_store::StoreError::AlreadyExists(_) => {
                    ServiceError::TenantAlreadyExists(id.to_string())
                }
                other => ServiceError::Store(other),
            })
    }

    /// The tenant and every binding of it, as the store has them now.
    pub(super) async fn tenant_state(&self, id: &TenantId) -> Result<TenantState, ServiceError> {
        let tenant = require_tenant(self.store.as_ref(), id).await?;
        let bindings = self.store.list_bindings(id).await?;
        Ok(TenantState { tenant, bindings })
    }

    /// Every binding of the tenant with what depends on it and who bound it.
    pub(super) async fn key_history(
        &self,
        id: &TenantId,
    ) -> Result<Vec<BindingUsage>, ServiceError> {
        require_tenant(self.store.as_ref(), id).await?;
        Ok(self.store.binding_usage(id).await?)
    }

    /// Validates `kek` (it exists, is enabled, and a generate + unwrap round
    /// trip under the tenant's real wrap context returns the same key), then
    /// stores a new tenant key wrapped by it as the tenant's active binding.
    /// Success is audited in the same transaction as the binding, naming `actor`
    /// (the caller) as who bound it; a failed attempt on an existing tenant is
    /// audited with its reason.
    pub(super) async fn register_key(
        &self,
        tenant: &TenantId,
        kek: &KeyRef,
        actor: Option<String>,
    ) -> Result<BindingCommit, ServiceError> {
        require_tenant(self.store.as_ref(), tenant).await?;
        self.revocation.refuse_if_unrecorded(tenant)?;
        let result = self.validate_and_bind(tenant, kek, actor).await;
        if let Err(e) = &result {
            let attempt = AuditEvent::KeyRegistrationAttempted {
                tenant: tenant.clone(),
                provider: kek.kind().as_str().to_owned(),
                key_ref: kek.id().to_owned(),
                outcome: RegistrationOutcome::Failed {
                    reason: format!("{}: {e}", e.reason()),
                },
            };
            self.ledger.record(vec![attempt]).await;
        }
        result
    }

    async fn validate_and_bind(
        &self,
        tenant: &TenantId,
        kek: &KeyRef,
        actor: Option<String>,
    ) -> Result<BindingCommit, ServiceError> {
        let provider = self.kek.providers.get(kek.kind())?;
        let kek = &provider
            .canonicalize(kek)
            .await
            .map_err(ServiceError::from_provider)?;
        let status = provider
            .describe(kek)
            .await
            .map_err(ServiceError::from_provider)?;
        if status.state != KeyState::Enabled {
            // The key as its owner named it (an AWS key's `?role_arn=…` suffix is the stored
            // form, not something they wrote), the provider's detail and its fix, if any.
            let named = kek.id().split_once('?').map_or(kek.id(), |(key, _)| key);
            let state = status.state.as_str();
            let message = match &status.detail {
                Some(detail) => format!("key {named} is {state} ({detail})"),
                None => format!("key {named} is {state}"),
            };
            let refused = ProviderError::new(ErrorKind::Refused, message);
            return Err(ServiceError::KeyRefused(match status.remediation {
                Some(fix) => refused.with_remediation(fix),
                None => refused,
            }));
        }
        let tenant_key_id = KeyId::generate().map_err(internal)?;
        let ctx = WrapContext::new(tenant, &tenant_key_id, Purpose::TenantKey);
        self.cache
            .counters()
            .kek_generates
            .fetch_add(1, Ordering::Relaxed);
        self.ledger.count_usage(tenant, |u| u.kms_calls += 2); // generate + unwrap
        // The new tenant key's TTL runs from before the KMS produced it.
        let vouched_at = Instant::now();
        let vouched_at_ms = crate::now_ms();
        let (key, wrapped) = provider
            .generate(kek, &ctx)
            .await
            .map_err(ServiceError::from_provider)?;
        self.cache
            .counters()
            .kek_unwraps
            .fetch_add(1, Ordering::Relaxed);
        let back = provider
            .unwrap(kek, &wrapped, &ctx)
            .await
            .map_err(ServiceError::from_provider)?;
        if !bool::from(key.expose_secret().ct_eq(back.expose_secret())) {
            return Err(ServiceError::KeyMisconfigured(ProviderError::new(
                ErrorKind::Misconfigured,
                format!("key {kek} did not return the wrapped key on unwrap"),
            )));
        }
        let tag = self
            .kek
            .tenant_key_tag(tenant, &tenant_key_id, kek, &wrapped); // ADR 0007
        let commit = self
            .store
            .bind_kek(
                NewKekBinding {
                    tenant: tenant.clone(),
                    provider: kek.kind(),
                    key_ref: kek.id().to_owned(),
                    tenant_key_id,
                    tenant_key_mac: Some(tag),
                    wrapped_tenant_key: wrapped,
                },
                &|change: &BindingChange| {
                    let b = &change.binding;
                    vec![
                        AuditEvent::KeyRegistrationAttempted {
                            tenant: b.tenant.clone(),
                            provider: b.provider.to_string(),
                            key_ref: b.key_ref.clone(),
                            outcome: RegistrationOutcome::Succeeded,
                        },
                        AuditEvent::KekBindingChanged {
                            tenant: b.tenant.clone(),
                            binding_id: b.id,
                            provider: b.provider.to_string(),
                            key_ref: b.key_ref.clone(),
                            tenant_key_id: b.tenant_key_id,
                            previous_binding_id: change.previous,
                            actor: actor.clone(),
                        },
                    ]
                },
            )
            .await?;
        // The new binding serves new data: a gate closed by the previous binding's revocation
        // opens (on other replicas through the store's notification). Data under a revoked
        // binding stays refused: its tenant key never loads while the binding is revoked.
        self.revocation
            .apply_new_binding(tenant, commit.binding.id)
            .await?;
        let (ttl, monitor_interval) = self.cache.ttl_for(self.store.as_ref(), tenant).await?;
        let ttl = self
            .schedule
            .hold(
                tenant,
                commit.binding.id,
                vouched_at_ms,
                ttl,
                monitor_interval,
            )
            .await;
        self.cache
            .tenant_keys
            .insert(
                (tenant.clone(), tenant_key_id),
                Arc::new(LiveKey {
                    key,
                    tenant_key_id,
                    expires_at: vouched_at + ttl,
                    generation: self.revocation.gates().generation(tenant),
                    // Not a DEK: shreds do not concern it (as in the data path's loader).
                    shreds: 0,
                }),
            )
            .await;
        // New DEKs must go under the new tenant key: drop the active ones.
        self.cache.invalidate_active(tenant).await;
        Ok(commit)
    }

    /// Sets the tenant's overrides of the cache TTL and monitor interval
    /// (audited). A shorter TTL applies to keys loaded from now on.
    pub(super) async fn set_tenant_policy(
        &self,
        tenant: &TenantId,
        policy: keyward_store::TenantPolicy,
        actor: String,
    ) -> Result<TenantState, ServiceError> {
        let bound = self.cache.policy().ttl.as_secs();
        if let Some(ttl) = policy.cache_ttl_seconds
            && ttl > bound
        {
            // A tenant may shorten its revocation window, never stretch it.
            return Err(ServiceError::invalid(
                "policy.cache_ttl_seconds",
                format!(
                    "{ttl} s is longer than this server's cache TTL of {bound} s (cache.ttl_seconds), the upper bound of every tenant's revocation window"
                ),
            ));
        }
        let decrypt_purposes: Vec<String> =
            crate::justification::Purpose::from_bits(policy.decrypt_purposes)
                .into_iter()
                .map(|p| p.as_str().to_owned())
                .collect();
        let state = self
            .store
            .set_tenant_policy(tenant, policy, &|t: &TenantRecord| {
                vec![AuditEvent::TenantPolicySet {
                    tenant: t.id.clone(),
                    actor: actor.clone(),
                    cache_ttl_seconds: policy.cache_ttl_seconds,
                    monitor_interval_seconds: policy.monitor_interval_seconds,
                    auto_rekey: policy.auto_rekey,
                    decrypt_purposes: decrypt_purposes.clone(),
                }]
            })
            .await
            .map_err(|e| match e {
                keyward_store::StoreError::NotFound(_) => {
                    ServiceError::TenantNotFound(tenant.to_string())
                }
                keyward_store::StoreError::InvalidInput(m) => ServiceError::invalid("policy", m),
                other => ServiceError::Store(other),
            })?;
        // Keys cached under a longer TTL must not outlive a shortened one (other replicas drop
        // theirs on the store's notification, see `apply_recorded_policy`).
        self.cache.purge_tenant(tenant).await;
        Ok(state)
    }
}
