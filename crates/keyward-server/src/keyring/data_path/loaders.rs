//! The loaders of the data path: each key comes from the cache, or is loaded once however many
//! requests miss it at the same time (moka's single flight): the tenant key (the data path's one
//! KEK call), a DEK for decryption, the active DEK of a scope (the stored one, or a new one).

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use keyward_audit::{AuditEvent, DekRetireReason};
use keyward_envelope::{KeyId, SecretKey, TenantId, dek_wrap_aad, unwrap_key, wrap_key};
use keyward_store::{DekInsert, DekRecord, KekBinding, KekState, NewDek, Scope};

use super::{
    super::{
        cache::{ActiveDek, LiveKey},
        internal, require_tenant, revoked, unshare,
    },
    DataPath, age,
};
use crate::{error::ServiceError, keyring::gate::Closed, now_ms};

impl DataPath {
    /// The unwrapped tenant key `id`: the one KEK call of the data path.
    pub(super) async fn tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Arc<LiveKey>, ServiceError> {
        if let Some(refusal) = self.cache.refusal(tenant, id).await {
            return Err(revoked(tenant, refusal.closed));
        }
        // The binding whose KEK this load asked (a re-key may move the key under another
        // between the read and a refusal): what a refusal is about.
        let asked = AtomicI64::new(0);
        let result = self
            .cache
            .tenant_keys
            .try_get_with((tenant.clone(), *id), async {
                let generation = self.revocation.gates().generation(tenant);
                let (ttl, monitor_interval) =
                    self.cache.ttl_for(self.store.as_ref(), tenant).await?;
                let record = self
                    .store
                    .get_tenant_key(tenant, id)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::Internal(format!(
                            "tenant key {id} of {tenant} is not in the store"
                        ))
                    })?;
                self.kek.check_tenant_key_mac(&record)?; // before the KMS sees it (ADR 0007)
                if matches!(
                    record.binding_state,
                    KekState::Revoked | KekState::Destroyed
                ) {
                    // Data under a revoked binding stays unreadable until that binding is
                    // restored, whichever binding is current (a newer key serves new data only).
                    let closed = Closed {
                        state: record.binding_state,
                        since_ms: record.binding_state_changed_at_ms,
                        cause: None,
                    };
                    self.cache.remember_refusal(tenant, id, closed, true).await;
                    return Err(revoked(tenant, closed));
                }
                // The TTL runs from before the call: the KMS vouched for the key at some
                // moment during it, and a slow answer must not stretch the window.
                let asked_at = Instant::now();
                let asked_at_ms = now_ms();
                asked.store(record.binding_id, Ordering::Relaxed);
                let key = self.kek.unwrap_tenant_key(tenant, id, &record).await?;
                // Published before the key is cached: every cached key is on the monitor's
                // schedule, or cached for at most the monitor interval.
                let ttl = self
                    .schedule
                    .hold(
                        tenant,
                        record.binding_id,
                        asked_at_ms,
                        ttl,
                        monitor_interval,
                    )
                    .await;
                // An unwrap that was in flight while the tenant was revoked must not
                // put its key back in the cache (an error is never cached).
                self.still_open(tenant, generation)?;
                Ok(Arc::new(LiveKey {
                    key,
                    tenant_key_id: *id,
                    expires_at: asked_at + ttl,
                    generation,
                    // Not a DEK: shreds do not concern it.
                    shreds: 0,
                }))
            })
            .await;
        match result {
            Ok(key) => Ok(key),
            Err(shared) => {
                let err = unshare(shared);
                if let ServiceError::KeyRefused(e) = err.root() {
                    tracing::warn!(%tenant, error = %e, "KEK refused");
                    // 0: another request's load (single flight) was refused; the binding that
                    // wraps the key now is the best guess.
                    let binding = Some(asked.load(Ordering::Relaxed)).filter(|b| *b != 0);
                    self.revocation
                        .on_kms_refusal(tenant, id, binding, e.message())
                        .await;
                }
                Err(err)
            }
        }
    }

    /// The unwrapped DEK `id` of `tenant`, for decryption.
    pub(super) async fn dek(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Arc<LiveKey>, ServiceError> {
        let shredded = |shredded_at_ms| ServiceError::DataKeyShredded {
            tenant: tenant.to_string(),
            shredded_at_ms,
        };
        if let Some(at_ms) = self.cache.shredded(tenant, id).await {
            return Err(shredded(at_ms));
        }
        self.cache
            .deks
            .try_get_with((tenant.clone(), *id), async {
                // Read before the row: a shred committed after this read bumps it.
                let shreds = self.revocation.gates().shreds(tenant);
                let Some(record) = self.store.get_dek(tenant, id).await? else {
                    if let Some(tombstone) = self.store.dek_tombstone(tenant, id).await? {
                        self.cache
                            .remember_shredded(tenant, id, tombstone.shredded_at_ms)
                            .await;
                        return Err(shredded(tombstone.shredded_at_ms));
                    }
                    require_tenant(self.store.as_ref(), tenant).await?;
                    return Err(ServiceError::DataKeyNotFound(tenant.to_string()));
                };
                self.unwrap_dek(&record, shreds).await
            })
            .await
            .map_err(unshare)
    }

    /// Unwraps a DEK read from the store when the tenant's shred count was `shreds`.
    pub(super) async fn unwrap_dek(
        &self,
        record: &DekRecord,
        shreds: u64,
    ) -> Result<Arc<LiveKey>, ServiceError> {
        let tenant_key = self
            .tenant_key(&record.tenant, &record.tenant_key_id)
            .await?;
        let aad = dek_aad(&record.tenant, &record.scope, &record.id)?;
        let key = unwrap_key(&tenant_key.key, &record.wrapped, &aad).map_err(|_| {
            ServiceError::WrappedKeyRejected(format!(
                "DEK {} of tenant {} does not unwrap under its tenant key",
                record.id, record.tenant
            ))
        })?;
        self.still_open(&record.tenant, tenant_key.generation)?;
        Ok(Arc::new(LiveKey {
            key,
            tenant_key_id: record.tenant_key_id,
            expires_at: (Instant::now() + self.cache.policy().ttl).min(tenant_key.expires_at),
            generation: tenant_key.generation,
            shreds,
        }))
    }

    /// The active DEK of (tenant, scope): the stored one if still usable
    /// (current tenant key, within age and usage limits), else a new one; and whether it was
    /// already in the cache.
    ///
    /// A hit is one cache lookup; the loader is a separate, boxed future, so its state (store
    /// reads, the KMS unwrap, the DEK creation) does not inflate every call's future: the
    /// server moves each call's future into its task, and a larger one is a larger copy.
    pub(super) async fn active_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<(Arc<ActiveDek>, bool), ServiceError> {
        let key = (tenant.clone(), scope.clone());
        if let Some(active) = self.cache.active.get(&key).await {
            return Ok((active, true));
        }
        Ok((Box::pin(self.load_active_dek(key)).await?, false))
    }

    /// [`DataPath::active_dek`] on a miss: loaded once however many requests miss it.
    async fn load_active_dek(
        &self,
        key: (TenantId, Scope),
    ) -> Result<Arc<ActiveDek>, ServiceError> {
        let (tenant, scope) = (&key.0, &key.1);
        self.cache
            .active
            .try_get_with(key.clone(), async {
                let shreds = self.revocation.gates().shreds(tenant);
                let binding = self.usable_binding(tenant).await?;
                let existing = self.store.active_dek(tenant, scope).await?;
                let retire_reason = existing
                    .as_ref()
                    .and_then(|record| self.retire_reason(record, &binding));
                match existing {
                    Some(record) if retire_reason.is_none() => {
                        let key = self.unwrap_dek(&record, shreds).await?;
                        Ok(Arc::new(ActiveDek {
                            id: record.id,
                            key,
                            created_at_ms: record.created_at_ms,
                            messages: AtomicU64::new(record.messages),
                            bytes: AtomicU64::new(record.bytes),
                            unflushed_messages: AtomicU64::new(0),
                            unflushed_bytes: AtomicU64::new(0),
                        }))
                    }
                    _ => {
                        self.create_dek(tenant, scope, &binding, retire_reason, shreds)
                            .await
                    }
                }
            })
            .await
            .map_err(unshare)
    }

    pub(super) async fn usable_binding(
        &self,
        tenant: &TenantId,
    ) -> Result<KekBinding, ServiceError> {
        let Some(binding) = self.store.active_binding(tenant).await? else {
            require_tenant(self.store.as_ref(), tenant).await?;
            return Err(ServiceError::NoKeyRegistered(tenant.to_string()));
        };
        match binding.state {
            KekState::Active | KekState::Restored | KekState::Unavailable => Ok(binding),
            state => Err(revoked(
                tenant,
                Closed {
                    state,
                    since_ms: binding.state_changed_at_ms,
                    cause: binding.state_cause,
                },
            )),
        }
    }

    /// Why a stored active DEK must be replaced before use, if it must.
    pub(super) fn retire_reason(
        &self,
        record: &DekRecord,
        binding: &KekBinding,
    ) -> Option<DekRetireReason> {
        if record.tenant_key_id != binding.tenant_key_id {
            Some(DekRetireReason::KekBindingChanged)
        } else if age(record.created_at_ms) >= self.rotation.max_age {
            Some(DekRetireReason::MaxAge)
        } else if record.messages >= self.rotation.max_messages {
            Some(DekRetireReason::MaxMessages)
        } else if record.bytes >= self.rotation.max_bytes {
            Some(DekRetireReason::MaxBytes)
        } else {
            None
        }
    }

    /// Generates a DEK, wraps it under the binding's tenant key and commits it
    /// to the store (retiring the scope's previous active DEK) before use. `shreds`: the
    /// tenant's shred count read before the decision to create it.
    pub(super) async fn create_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        binding: &KekBinding,
        retire_reason: Option<DekRetireReason>,
        shreds: u64,
    ) -> Result<Arc<ActiveDek>, ServiceError> {
        let tenant_key = self.tenant_key(tenant, &binding.tenant_key_id).await?;
        let scope_hmac = self.kek.hasher.hash("scope", scope.as_str());
        let id = KeyId::generate().map_err(internal)?;
        let key = SecretKey::generate().map_err(internal)?;
        let wrapped =
            wrap_key(&tenant_key.key, &key, &dek_aad(tenant, scope, &id)?).map_err(internal)?;
        let record = self
            .store
            .insert_dek(
                NewDek {
                    id,
                    tenant: tenant.clone(),
                    scope: scope.clone(),
                    tenant_key_id: binding.tenant_key_id,
                    wrapped,
                },
                &|insert: &DekInsert| {
                    let mut events = Vec::with_capacity(2);
                    if let Some(retired) = insert.retired {
                        events.push(AuditEvent::DekRetired {
                            tenant: insert.dek.tenant.clone(),
                            scope_hmac: scope_hmac.clone(),
                            dek_id: retired,
                            // A first DEK retires nothing; a replaced one always has a reason,
                            // except a stored DEK exhausted by another replica's counting.
                            reason: retire_reason.unwrap_or(DekRetireReason::MaxMessages),
                        });
                    }
                    events.push(AuditEvent::DekCreated {
                        tenant: insert.dek.tenant.clone(),
                        scope_hmac: scope_hmac.clone(),
                        dek_id: insert.dek.id,
                        tenant_key_id: insert.dek.tenant_key_id,
                    });
                    events
                },
            )
            .await?
            .dek;
        self.cache
            .counters()
            .deks_created
            .fetch_add(1, Ordering::Relaxed);
        // The scope is the caller's label (a conversation or user id): only its HMAC is logged,
        // as in the audit log.
        tracing::debug!(%tenant, scope = %scope_hmac, dek = %id, "created data key");
        let live = Arc::new(LiveKey {
            key,
            tenant_key_id: binding.tenant_key_id,
            expires_at: (Instant::now() + self.cache.policy().ttl).min(tenant_key.expires_at),
            generation: tenant_key.generation,
            shreds,
        });
        Ok(Arc::new(ActiveDek {
            id,
            key: live,
            created_at_ms: record.created_at_ms,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            unflushed_messages: AtomicU64::new(0),
            unflushed_bytes: AtomicU64::new(0),
        }))
    }
}

/// AAD of a DEK wrapped under its tenant key: binds tenant, scope and DEK id,
/// so a wrapped DEK cannot be moved to another tenant, scope or id
/// ([`keyward_envelope::dek_wrap_aad`], the layout the exit kit documents).
fn dek_aad(tenant: &TenantId, scope: &Scope, id: &KeyId) -> Result<Vec<u8>, ServiceError> {
    dek_wrap_aad(tenant, scope.as_str(), id).map_err(internal)
}
