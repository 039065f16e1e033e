//! The KEK side of the hierarchy: the providers this server can reach, and the one unwrap of a
//! stored tenant key, shared by the data path's loader (`DataPath::tenant_key`) and the
//! monitor's canary ([`Kek::canary`]). Both check the stored key's tag first (ADR 0007,
//! `tenant_key_auth`); the loader also refuses a key whose binding is revoked in the store
//! between that check and the unwrap, which the canary must not (it is how a revoked binding is
//! found usable again), so the check of the tag stays with each caller.

use std::sync::{Arc, atomic::Ordering};

use keyward_envelope::{KeyId, SecretKey, TenantId, WrappedKey};
use keyward_kms::{KeyProvider, KeyRef, ProviderKind, Purpose, WrapContext};
use keyward_store::{KekBinding, NewKekBinding, Store, TenantKeyRecord};

use super::{
    cache::KeyCache,
    internal,
    ledger::AuditLedger,
    tenant_key_auth::{self, tag_tenant_key},
};
use crate::error::ServiceError;

/// The KEK providers this server can reach, by kind.
#[derive(Debug, Default, Clone)]
pub struct Providers {
    by_kind: Vec<Arc<dyn KeyProvider>>,
}

impl Providers {
    #[must_use]
    pub fn with(mut self, provider: Arc<dyn KeyProvider>) -> Self {
        self.by_kind.retain(|p| p.kind() != provider.kind());
        self.by_kind.push(provider);
        self
    }

    /// Every provider replaced by `wrap(provider)` (decorators such as metrics).
    #[must_use]
    pub fn map(self, wrap: impl Fn(Arc<dyn KeyProvider>) -> Arc<dyn KeyProvider>) -> Self {
        Self {
            by_kind: self.by_kind.into_iter().map(wrap).collect(),
        }
    }

    pub(super) fn get(&self, kind: ProviderKind) -> Result<&Arc<dyn KeyProvider>, ServiceError> {
        self.by_kind
            .iter()
            .find(|p| p.kind() == kind)
            .ok_or(ServiceError::ProviderNotConfigured(kind))
    }
}

/// The providers, the tenant-key tags (`tenant_key_auth`) and the KEK calls on stored tenant
/// keys.
pub(super) struct Kek {
    pub(super) providers: Providers,
    /// HMACs caller-chosen scope labels before they enter the audit log, and tags tenant keys.
    pub(super) hasher: Arc<keyward_audit::IdentifierHasher>,
    store: Arc<dyn Store>,
    cache: Arc<KeyCache>,
    ledger: Arc<AuditLedger>,
}

impl Kek {
    pub(super) fn new(
        providers: Providers,
        hasher: Arc<keyward_audit::IdentifierHasher>,
        store: Arc<dyn Store>,
        cache: Arc<KeyCache>,
        ledger: Arc<AuditLedger>,
    ) -> Self {
        Self {
            providers,
            hasher,
            store,
            cache,
            ledger,
        }
    }

    /// Counts a KEK call for `tenant` (the keyring's counters and the tenant's usage).
    fn count_unwrap(&self, tenant: &TenantId) {
        self.cache
            .counters()
            .kek_unwraps
            .fetch_add(1, Ordering::Relaxed);
        self.ledger.count_usage(tenant, |u| u.kms_calls += 1);
    }

    /// Asks the KEK provider of `record`'s binding to unwrap tenant key `id` of `tenant` as
    /// stored in `record` (counted as one KMS call of the tenant). The caller checked the
    /// record's tag first ([`Kek::check_tenant_key_mac`]): a planted blob never reaches the KMS.
    pub(super) async fn unwrap_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        record: &TenantKeyRecord,
    ) -> Result<SecretKey, ServiceError> {
        let kind = record.provider;
        let provider = self.providers.get(kind)?;
        self.count_unwrap(tenant);
        provider
            .unwrap(
                &KeyRef::new(kind, record.key_ref.clone()),
                &record.wrapped,
                &WrapContext::new(tenant, id, Purpose::TenantKey),
            )
            .await
            .map_err(ServiceError::from_provider)
    }

    /// One live unwrap of a tenant key the binding's KEK wraps now (the key is discarded):
    /// shows a removed grant or policy statement that metadata would not. `Ok(false)`: the
    /// binding wraps no tenant key any more (a re-key moved them under a newer binding), so
    /// there is nothing to check and nothing depends on its key.
    pub(super) async fn canary(&self, binding: &KekBinding) -> Result<bool, ServiceError> {
        match self.key_wrapped_by(binding).await? {
            Some(record) => self.canary_of(&record).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// A tenant key `binding`'s KEK wraps now: its own (always, for the current binding), or
    /// after a re-key moved its own away, another one moved under it; `None` when it wraps
    /// none.
    pub(super) async fn key_wrapped_by(
        &self,
        binding: &KekBinding,
    ) -> Result<Option<TenantKeyRecord>, ServiceError> {
        let own = self
            .store
            .get_tenant_key(&binding.tenant, &binding.tenant_key_id)
            .await?
            .ok_or_else(|| internal("the binding's tenant key is not in the store"))?;
        if own.binding_id == binding.id {
            return Ok(Some(own));
        }
        Ok(self
            .keys_wrapped_by(&binding.tenant, binding.id)
            .await?
            .into_iter()
            .next())
    }

    /// Every tenant key of `tenant` that binding `binding_id`'s KEK wraps now.
    pub(super) async fn keys_wrapped_by(
        &self,
        tenant: &TenantId,
        binding_id: i64,
    ) -> Result<Vec<TenantKeyRecord>, ServiceError> {
        Ok(self
            .store
            .list_tenant_keys(tenant)
            .await?
            .into_iter()
            .filter(|k| k.binding_id == binding_id)
            .collect())
    }

    /// [`Kek::canary`] of a tenant key already read (a claimed check carries it).
    pub(super) async fn canary_of(&self, record: &TenantKeyRecord) -> Result<(), ServiceError> {
        self.check_tenant_key_mac(record)?; // before the KMS sees it (ADR 0007)
        self.cache
            .counters()
            .canary_checks
            .fetch_add(1, Ordering::Relaxed);
        self.unwrap_tenant_key(&record.tenant, &record.id, record)
            .await
            .map(drop)
    }

    /// `binding` with the tag of its wrapped tenant key set (`tenant_keys.mac`). The keyring
    /// tags every binding it registers; tools that bind through the store directly (the
    /// benchmark's bulk population) use this so that the keyring accepts what they stored.
    pub(super) fn with_tenant_key_mac(&self, mut binding: NewKekBinding) -> NewKekBinding {
        binding.tenant_key_mac = Some(tag_tenant_key(
            &self.hasher,
            &binding.tenant,
            &binding.tenant_key_id,
            binding.provider,
            &binding.key_ref,
            binding.wrapped_tenant_key.as_bytes(),
        ));
        binding
    }

    /// Refuses a stored tenant key whose tag is missing or wrong (`WRAPPED_KEY_REJECTED`, never
    /// a KMS refusal: nothing is revoked), before anything asks the KMS to unwrap it.
    pub(super) fn check_tenant_key_mac(
        &self,
        record: &TenantKeyRecord,
    ) -> Result<(), ServiceError> {
        tenant_key_auth::verify(&self.hasher, record)
    }

    /// The tag of a new tenant key wrapped by `kek` (stored as `provider = kek.kind()`,
    /// `key_ref = kek.id()`), for registration (`Onboarding::register_key`).
    pub(super) fn tenant_key_tag(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        kek: &KeyRef,
        wrapped: &WrappedKey,
    ) -> Vec<u8> {
        tag_tenant_key(
            &self.hasher,
            tenant,
            id,
            kek.kind(),
            kek.id(),
            wrapped.as_bytes(),
        )
    }
}
