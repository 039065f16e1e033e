//! The key hierarchy on the data path: KEK (customer's KMS) -> tenant key ->
//! DEKs, with TTL-bounded in-memory caches of the unwrapped keys.
//!
//! Invariants (docs/architecture.md, "Key hierarchy"):
//! - The only KEK call on the data path is the unwrap of a tenant key, once
//!   per TTL per replica, single-flight under concurrent misses.
//! - A cached DEK never outlives the tenant key it was unwrapped under: its
//!   expiry is `min(now + ttl, tenant_key.expires_at)`, so the TTL bounds the
//!   time from the KEK last agreeing to the last plaintext served.
//! - A DEK is committed to the store before any envelope under it is returned.

use std::{
    fmt,
    str::FromStr as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyward_audit::{AuditEvent, DekRetireReason, IdentifierHasher, RegistrationOutcome};
use keyward_envelope::{
    EncryptionContext, EnvelopeError, KeyId, SecretKey, Suite, TenantId, parse, seal_with_suite,
    unwrap_key, wrap_key,
};
use keyward_kms::{
    ErrorKind, KeyProvider, KeyRef, KeyState, ProviderError, ProviderKind, Purpose, WrapContext,
};
use keyward_store::{
    BindingChange, DekInsert, DekRecord, KekBinding, KekState, NewDek, NewKekBinding, Scope, Store,
    TenantRecord,
};
use moka::{Expiry, future::Cache, ops::compute::Op};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::{
    config::RotationPolicy,
    error::ServiceError,
    gate::{Closed, Gates},
    now_ms,
    usage::UsageMeter,
};

mod pending_audit;
mod revocation;
pub use pending_audit::MAX_PENDING as MAX_PENDING_AUDIT_RECORDS;
pub use revocation::{CheckOutcome, MonitorPolicy, RevocationSource};
mod tenant_key_auth;
pub use tenant_key_auth::{
    AuthenticatedTenantKey, TAG_PURPOSE, authenticate_stored_tenant_keys, tag_tenant_key,
};

/// How often one Encrypt may find its scope's DEK exhausted and rotate it.
const MAX_ENCRYPT_ATTEMPTS: usize = 32;

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

    fn get(&self, kind: ProviderKind) -> Result<&Arc<dyn KeyProvider>, ServiceError> {
        self.by_kind
            .iter()
            .find(|p| p.kind() == kind)
            .ok_or(ServiceError::ProviderNotConfigured(kind))
    }
}

/// Limits and lifetimes of the key caches.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub max_tenant_keys: u64,
    pub max_deks: u64,
}

/// An unwrapped key in memory, with the instant it must be forgotten.
struct LiveKey {
    key: SecretKey,
    /// The tenant key this key is (a tenant key) or was unwrapped under (a DEK): purging one
    /// binding's keys finds them by it.
    tenant_key_id: KeyId,
    expires_at: Instant,
    /// The tenant's gate generation when the key was unwrapped: a key from
    /// before a revocation (or restoration) is never used (see `gate`).
    generation: u64,
}

impl fmt::Debug for LiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveKey")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The active DEK of one (tenant, scope) with its usage on this replica.
struct ActiveDek {
    id: KeyId,
    key: Arc<LiveKey>,
    created_at_ms: i64,
    messages: AtomicU64,
    bytes: AtomicU64,
    unflushed_messages: AtomicU64,
    unflushed_bytes: AtomicU64,
}

impl fmt::Debug for ActiveDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveDek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ActiveDek {
    /// Counts one message of `len` bytes against the rotation limits; the
    /// limit reached (and nothing counted) when the DEK must be rotated first.
    fn try_reserve(&self, len: u64, policy: &RotationPolicy) -> Result<(), DekRetireReason> {
        if age(self.created_at_ms) >= policy.max_age {
            return Err(DekRetireReason::MaxAge);
        }
        if self.messages.fetch_add(1, Ordering::Relaxed) >= policy.max_messages {
            self.messages.fetch_sub(1, Ordering::Relaxed);
            return Err(DekRetireReason::MaxMessages);
        }
        if self
            .bytes
            .fetch_add(len, Ordering::Relaxed)
            .saturating_add(len)
            > policy.max_bytes
        {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            self.messages.fetch_sub(1, Ordering::Relaxed);
            return Err(DekRetireReason::MaxBytes);
        }
        self.unflushed_messages.fetch_add(1, Ordering::Relaxed);
        self.unflushed_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

trait Expiring {
    fn expires_at(&self) -> Instant;
}
impl Expiring for LiveKey {
    fn expires_at(&self) -> Instant {
        self.expires_at
    }
}
impl Expiring for ActiveDek {
    fn expires_at(&self) -> Instant {
        self.key.expires_at
    }
}

/// Per-entry expiry: each value carries its own deadline.
struct UntilDeadline;
impl<K, V: Expiring> Expiry<K, Arc<V>> for UntilDeadline {
    fn expire_after_create(&self, _: &K, value: &Arc<V>, now: Instant) -> Option<Duration> {
        Some(value.expires_at().saturating_duration_since(now))
    }
}

/// Counters of the expensive operations, for tests, metrics and benchmarks.
#[derive(Debug, Default)]
struct Counters {
    kek_unwraps: AtomicU64,
    kek_generates: AtomicU64,
    deks_created: AtomicU64,
}

/// A snapshot of [`Keyring`] counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyringStats {
    /// Tenant-key unwraps sent to a KEK provider (the data path's only KMS call).
    pub kek_unwraps: u64,
    /// Tenant keys generated through a KEK provider (registration).
    pub kek_generates: u64,
    /// DEKs created and stored.
    pub deks_created: u64,
}

type TenantKeyCache = Cache<(TenantId, KeyId), Arc<LiveKey>>;
type ActiveCache = Cache<(TenantId, Scope), Arc<ActiveDek>>;

/// Why a tenant key is refused without asking the KMS or the store again, and where that
/// was learnt.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    closed: Closed,
    /// Learnt from the store (its binding is revoked or destroyed) rather than from a KMS
    /// refusal: reconciliation checks it again.
    recorded: bool,
}
/// Tenant keys refused recently (an older binding's key the KMS refused, or a key whose
/// binding is revoked in the store), for at most the cache TTL.
type RefusalCache = Cache<(TenantId, KeyId), Refusal>;

/// Tenant onboarding and the encrypt/decrypt data path.
pub struct Keyring {
    store: Arc<dyn Store>,
    providers: Providers,
    cache: CachePolicy,
    rotation: RotationPolicy,
    /// The envelope suite new messages are sealed with ([`Suite::SEAL`] unless configured).
    write_suite: Suite,
    tenant_keys: TenantKeyCache,
    deks: TenantKeyCache,
    active: ActiveCache,
    counters: Arc<Counters>,
    /// Revocation state on the request path, generations, denial counts.
    gates: Gates,
    /// Serialises revocation-state transitions (revoke, restore, monitor).
    transitions: tokio::sync::Mutex<()>,
    /// Per-tenant usage per minute, for `usage_summary` audit records.
    usage: UsageMeter,
    /// When the monitor last checked each tenant (for per-tenant intervals).
    last_checked: std::sync::Mutex<std::collections::HashMap<TenantId, Instant>>,
    /// HMACs caller-chosen scope labels before they enter the audit log.
    hasher: Arc<IdentifierHasher>,
    /// Names this replica in log lines (revocations, purges); "local" by default.
    replica_id: String,
    /// Tenants closed by a revocation whose store write failed: reconciliation with the store
    /// (which still says active) must not reopen them.
    unrecorded_closures: std::sync::Mutex<std::collections::HashSet<TenantId>>,
    /// Cache hit/miss counters (docs/observability.md); none in tests that build a bare keyring.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Tenant keys refused without a KMS call, each for at most the cache TTL.
    refused: RefusalCache,
    /// Audit records whose standalone append failed, kept for the next flush.
    pending_audit: pending_audit::PendingAudit,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("store", &self.store)
            .field("providers", &self.providers)
            .field("cache", &self.cache)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn new(
        store: Arc<dyn Store>,
        providers: Providers,
        cache: CachePolicy,
        rotation: RotationPolicy,
        hasher: Arc<IdentifierHasher>,
    ) -> Self {
        let flush_store = Arc::clone(&store);
        let active = Cache::builder()
            .max_capacity(cache.max_deks)
            .expire_after(UntilDeadline)
            .async_eviction_listener(move |key: Arc<(TenantId, Scope)>, dek: Arc<ActiveDek>, _| {
                let store = Arc::clone(&flush_store);
                Box::pin(async move { flush_usage(store.as_ref(), &key.0, &dek).await })
            })
            .build();
        Self {
            tenant_keys: Cache::builder()
                .max_capacity(cache.max_tenant_keys)
                .expire_after(UntilDeadline)
                .build(),
            deks: Cache::builder()
                .max_capacity(cache.max_deks)
                .expire_after(UntilDeadline)
                .build(),
            active,
            store,
            providers,
            cache,
            rotation,
            counters: Arc::default(),
            gates: Gates::default(),
            transitions: tokio::sync::Mutex::new(()),
            last_checked: std::sync::Mutex::default(),
            usage: UsageMeter::default(),
            hasher,
            replica_id: "local".to_owned(),
            unrecorded_closures: std::sync::Mutex::default(),
            metrics: None,
            write_suite: Suite::SEAL,
            refused: Cache::builder()
                .max_capacity(cache.max_tenant_keys)
                .time_to_live(cache.ttl)
                .build(),
            pending_audit: pending_audit::PendingAudit::default(),
        }
    }

    /// Seals new envelopes with `suite` instead of [`Suite::SEAL`] (`envelope.write_suite`: a
    /// rolling upgrade keeps writing the suite the oldest replica reads). Reading is unchanged.
    pub fn with_write_suite(mut self, suite: Suite) -> Self {
        self.write_suite = suite;
        self
    }

    /// Counts data-key cache hits and misses in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The metrics given to [`Keyring::with_metrics`].
    pub fn metrics(&self) -> Option<&Arc<crate::metrics::Metrics>> {
        self.metrics.as_ref()
    }

    /// Resident keys and closed tenants, read at each metrics scrape.
    pub fn scrape_gauges(&self) -> crate::metrics::ScrapeGauges {
        crate::metrics::ScrapeGauges {
            tenant_keys: self.tenant_keys.entry_count(),
            deks: self.deks.entry_count(),
            active_deks: self.active.entry_count(),
            closed: self.gates.closed_counts(),
        }
    }

    /// Names this replica in log lines (several replicas on one PostgreSQL store).
    pub fn with_replica_id(mut self, replica_id: impl Into<String>) -> Self {
        self.replica_id = replica_id.into();
        self
    }

    /// This replica's name in log lines.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub fn stats(&self) -> KeyringStats {
        KeyringStats {
            kek_unwraps: self.counters.kek_unwraps.load(Ordering::Relaxed),
            kek_generates: self.counters.kek_generates.load(Ordering::Relaxed),
            deks_created: self.counters.deks_created.load(Ordering::Relaxed),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // ----- onboarding -------------------------------------------------------

    pub async fn create_tenant(
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

    pub async fn tenant(
        &self,
        id: &TenantId,
    ) -> Result<(TenantRecord, Option<KekBinding>), ServiceError> {
        let tenant = self.require_tenant(id).await?;
        let binding = self.store.active_binding(id).await?;
        Ok((tenant, binding))
    }

    /// Validates `kek` (it exists, is enabled, and a generate + unwrap round
    /// trip under the tenant's real wrap context returns the same key), then
    /// stores a new tenant key wrapped by it as the tenant's active binding.
    /// Success is audited in the same transaction as the binding; a failed
    /// attempt on an existing tenant is audited with its reason.
    pub async fn register_key(
        &self,
        tenant: &TenantId,
        kek: &KeyRef,
    ) -> Result<KekBinding, ServiceError> {
        self.require_tenant(tenant).await?;
        let unrecorded = self
            .unrecorded_closures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(tenant);
        if unrecorded {
            // The revocation lives only in this replica's gate: a new binding would reopen the
            // gate while the store still calls the old binding active, and its data readable.
            return Err(ServiceError::Conflict(format!(
                "a revocation of tenant {tenant} could not be recorded in the store yet; repeat RevokeKey until it succeeds, then register the new key"
            )));
        }
        let result = self.validate_and_bind(tenant, kek).await;
        if let Err(e) = &result {
            let attempt = AuditEvent::KeyRegistrationAttempted {
                tenant: tenant.clone(),
                provider: kek.kind().as_str().to_owned(),
                key_ref: kek.id().to_owned(),
                outcome: RegistrationOutcome::Failed {
                    reason: format!("{}: {e}", e.reason()),
                },
            };
            self.record_audit(vec![attempt]).await;
        }
        result
    }

    async fn validate_and_bind(
        &self,
        tenant: &TenantId,
        kek: &KeyRef,
    ) -> Result<KekBinding, ServiceError> {
        let provider = self.providers.get(kek.kind())?;
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
        self.counters.kek_generates.fetch_add(1, Ordering::Relaxed);
        self.usage.record(tenant, now_ms(), |u| u.kms_calls += 2); // generate + unwrap
        // The new tenant key's TTL runs from before the KMS produced it.
        let vouched_at = Instant::now();
        let (key, wrapped) = provider
            .generate(kek, &ctx)
            .await
            .map_err(ServiceError::from_provider)?;
        self.counters.kek_unwraps.fetch_add(1, Ordering::Relaxed);
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
        let tag = self.tenant_key_tag(tenant, &tenant_key_id, kek, &wrapped); // ADR 0007
        let binding = self
            .store
            .bind_kek(
                NewKekBinding {
                    tenant: tenant.clone(),
                    provider: kek.kind().as_str().to_owned(),
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
                            provider: b.provider.clone(),
                            key_ref: b.key_ref.clone(),
                            outcome: RegistrationOutcome::Succeeded,
                        },
                        AuditEvent::KekBindingChanged {
                            tenant: b.tenant.clone(),
                            binding_id: b.id,
                            provider: b.provider.clone(),
                            key_ref: b.key_ref.clone(),
                            tenant_key_id: b.tenant_key_id,
                            previous_binding_id: change.previous,
                        },
                    ]
                },
            )
            .await?;
        // The new binding serves new data: a gate closed by the previous binding's revocation
        // opens (on other replicas through the store's notification). Data under a revoked
        // binding stays refused: its tenant key never loads while the binding is revoked.
        {
            let _transition = self.transitions.lock().await;
            if let Some(current) = self.store.active_binding(tenant).await?
                && current.id == binding.id
            {
                self.apply_binding(&current).await;
            }
        }
        let ttl = self.ttl_for(tenant).await?;
        self.tenant_keys
            .insert(
                (tenant.clone(), tenant_key_id),
                Arc::new(LiveKey {
                    key,
                    tenant_key_id,
                    expires_at: vouched_at + ttl,
                    generation: self.gates.generation(tenant),
                }),
            )
            .await;
        // New DEKs must go under the new tenant key: drop the active ones.
        self.invalidate_where(&self.active, |(t, _)| t == tenant)
            .await;
        Ok(binding)
    }

    // ----- data path --------------------------------------------------------

    /// Encrypts under the active DEK of (tenant, scope), rotating it first if
    /// it reached a limit. Returns the envelope and the DEK id.
    pub async fn encrypt(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        ctx: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, KeyId), ServiceError> {
        let hit = self.active.contains_key(&(tenant.clone(), scope.clone()));
        let result = self.encrypt_inner(tenant, scope, ctx, plaintext).await;
        if let (Some(m), Ok(_)) = (&self.metrics, &result) {
            m.cache_lookup("encrypt", hit);
        }
        self.count_if_revoked(tenant, result.as_ref().err());
        self.usage.record(tenant, now_ms(), |u| match &result {
            Ok(_) => {
                u.encrypts += 1;
                u.bytes_in += plaintext.len() as u64;
                u.cache_hits += u64::from(hit);
            }
            Err(_) => u.errors += 1,
        });
        result
    }

    async fn encrypt_inner(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        ctx: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, KeyId), ServiceError> {
        let len = u64::try_from(plaintext.len()).map_err(internal)?;
        let generation = self.admit(tenant)?;
        // A fresh DEK accepts any message within the limits (config validation
        // guarantees max_bytes >= max plaintext), but under heavy concurrency
        // with tiny limits other requests may fill it first: retry, bounded.
        for _ in 0..MAX_ENCRYPT_ATTEMPTS {
            let active = self.active_dek(tenant, scope).await?;
            if active.key.generation != generation || active.key.expires_at <= Instant::now() {
                // Loaded before a revocation or restoration of this tenant, or vouched for by
                // the KMS a TTL ago or more (this request stalled after the unwrap answered):
                // never used past the TTL. No await from here until the envelope is sealed.
                self.active
                    .invalidate(&(tenant.clone(), scope.clone()))
                    .await;
                self.admit(tenant)?;
                continue;
            }
            match active.try_reserve(len, &self.rotation) {
                Ok(()) => {
                    let envelope = seal_with_suite(
                        self.write_suite,
                        &active.key.key,
                        tenant,
                        &active.id,
                        ctx,
                        plaintext,
                    )
                    .map_err(internal)?;
                    self.still_open(tenant, generation)?;
                    return Ok((envelope, active.id));
                }
                Err(reason) => self.rotate(tenant, scope, &active, reason).await?,
            }
        }
        // The scope label is the caller's data (a conversation or user id): not repeated here.
        Err(ServiceError::Conflict(format!(
            "the data key of the requested scope was exhausted by concurrent requests {MAX_ENCRYPT_ATTEMPTS} times"
        )))
    }

    pub async fn decrypt(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        self.decrypt_held(tenant, envelope, ctx)
            .await
            .map(|(plaintext, _)| plaintext)
    }

    /// [`Keyring::decrypt`], also returning the gate generation the plaintext was released at.
    /// A caller that holds the plaintext before sending it (a batch, until its last item is
    /// done) calls [`Keyring::release`] with it right before the response leaves, so that a
    /// revocation committed meanwhile still wins.
    pub async fn decrypt_held(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(Zeroizing<Vec<u8>>, u64), ServiceError> {
        let mut hit = false;
        let result = self.decrypt_inner(tenant, envelope, ctx, &mut hit).await;
        if let (Some(m), Ok(_)) = (&self.metrics, &result) {
            m.cache_lookup("decrypt", hit);
        }
        self.count_if_revoked(tenant, result.as_ref().err());
        self.usage.record(tenant, now_ms(), |u| match &result {
            Ok((plaintext, _)) => {
                u.decrypts += 1;
                u.bytes_out += plaintext.len() as u64;
                u.cache_hits += u64::from(hit);
            }
            Err(_) => u.errors += 1,
        });
        result
    }

    async fn decrypt_inner(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
        hit: &mut bool,
    ) -> Result<(Zeroizing<Vec<u8>>, u64), ServiceError> {
        let envelope = parse(envelope).map_err(classify_parse_error)?;
        let header = envelope.header();
        if header.tenant() != tenant {
            return Err(ServiceError::TenantMismatch);
        }
        let key = (tenant.clone(), *header.dek_id());
        for attempt in 0..2 {
            let generation = self.admit(tenant)?;
            // One lookup on the hot path; the single-flight loader only on a miss.
            let dek = match self.deks.get(&key).await {
                Some(dek) => {
                    *hit = attempt == 0;
                    dek
                }
                None => self.dek(tenant, header.dek_id()).await?,
            };
            if dek.generation != generation {
                // Loaded before a revocation or restoration of this tenant.
                *hit = false;
                self.deks.invalidate(&key).await;
                continue;
            }
            if dek.expires_at <= Instant::now() {
                // The KMS vouched for this key a TTL ago or more: this request stalled that
                // long after the unwrap answered (or the cache handed out an entry at its
                // edge). Never used past the TTL: ask again. No await from here until the
                // plaintext is released, so the check cannot go stale.
                *hit = false;
                self.deks.invalidate(&key).await;
                continue;
            }
            let plaintext = envelope.open(&dek.key, ctx).map_err(|e| match e {
                EnvelopeError::DecryptFailed => ServiceError::DecryptFailed,
                other => classify_parse_error(other),
            })?;
            // The last check before plaintext leaves: a revocation recorded while
            // this request was in flight wins (the plaintext is zeroized on drop).
            match self.gates.release_plaintext(tenant, generation, now_ms()) {
                Ok(()) => return Ok((plaintext, generation)),
                Err(Some(closed)) => return Err(revoked(tenant, closed)),
                Err(None) => continue,
            }
        }
        Err(ServiceError::Conflict(format!(
            "the key state of tenant {tenant} changed, or its key expired, during the request"
        )))
    }

    /// The last check before plaintext held since [`Keyring::decrypt_held`] (at `generation`)
    /// leaves: fails if the tenant was revoked (or its key state changed) since, else records
    /// now as this replica's last plaintext time for the tenant (`keys_purged` reports it).
    pub fn release(&self, tenant: &TenantId, generation: u64) -> Result<(), ServiceError> {
        match self.gates.release_plaintext(tenant, generation, now_ms()) {
            Ok(()) => Ok(()),
            Err(Some(closed)) => {
                self.gates.count_denial(tenant, now_ms());
                Err(revoked(tenant, closed))
            }
            Err(None) => Err(ServiceError::Conflict(format!(
                "the key state of tenant {tenant} changed during the request"
            ))),
        }
    }

    /// Forgets every cached key of `tenant` (their bytes are zeroized when the
    /// last in-flight request using them finishes); returns how many entries.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> u64 {
        let removed = self
            .invalidate_where(&self.active, |(t, _)| t == tenant)
            .await
            + self
                .invalidate_where(&self.deks, |(t, _)| t == tenant)
                .await
            + self
                .invalidate_where(&self.tenant_keys, |(t, _)| t == tenant)
                .await;
        self.run_cache_maintenance().await;
        removed
    }

    /// Forgets every cached key under tenant key `id` of `tenant` (the tenant key itself, the
    /// DEKs unwrapped under it, the active DEKs wrapped by it); the tenant's other keys stay.
    async fn purge_tenant_key(&self, tenant: &TenantId, id: &KeyId) -> u64 {
        let removed = self
            .invalidate_entries(&self.active, |(t, _), v| {
                t == tenant && v.key.tenant_key_id == *id
            })
            .await
            + self
                .invalidate_entries(&self.deks, |(t, _), v| {
                    t == tenant && v.tenant_key_id == *id
                })
                .await
            + self
                .invalidate_where(&self.tenant_keys, |(t, k)| t == tenant && k == id)
                .await;
        self.run_cache_maintenance().await;
        removed
    }

    /// Refuses tenant key `id` of `tenant` without a KMS or store call for the cache TTL.
    async fn remember_refusal(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        closed: Closed,
        recorded: bool,
    ) {
        self.refused
            .insert((tenant.clone(), *id), Refusal { closed, recorded })
            .await;
    }

    /// Forgets the refusals remembered for `tenant` (of one tenant key, or all of them).
    async fn forget_refusals(&self, tenant: &TenantId, id: Option<&KeyId>) {
        let doomed: Vec<Arc<(TenantId, KeyId)>> = self
            .refused
            .iter()
            .filter(|(k, _)| k.0 == *tenant && id.is_none_or(|id| k.1 == *id))
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            self.refused.invalidate(key.as_ref()).await;
        }
    }

    /// Keys of `current.tenant`'s older bindings cached on this replica whose binding is
    /// revoked or destroyed in the store are purged (and refused for the TTL). Returns whether
    /// any was. Reads the store once per such key cached.
    async fn purge_revoked_older_keys(&self, current: &KekBinding) -> Result<bool, ServiceError> {
        let tenant = &current.tenant;
        let mut older: std::collections::BTreeSet<KeyId> = std::collections::BTreeSet::new();
        older.extend(
            self.tenant_keys
                .iter()
                .filter(|(k, _)| k.0 == *tenant)
                .map(|(k, _)| k.1),
        );
        older.extend(
            self.deks
                .iter()
                .filter(|(k, _)| k.0 == *tenant)
                .map(|(_, v)| v.tenant_key_id),
        );
        older.remove(&current.tenant_key_id);
        let mut purged = false;
        for id in older {
            let Some(record) = self.store.get_tenant_key(tenant, &id).await? else {
                continue;
            };
            if matches!(
                record.binding_state,
                KekState::Revoked | KekState::Destroyed
            ) {
                self.remember_refusal(
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
                let entries = self.purge_tenant_key(tenant, &id).await;
                tracing::warn!(%tenant, replica = %self.replica_id, tenant_key = %id, state = record.binding_state.as_str(), entries, "keys of a revoked older binding purged");
                purged = true;
            }
        }
        Ok(purged)
    }

    /// Forgets remembered refusals learnt from the store whose binding is no longer revoked
    /// (restored by another replica whose notification this replica missed).
    async fn recheck_refusals(&self) -> Result<(), ServiceError> {
        let recorded: Vec<Arc<(TenantId, KeyId)>> = self
            .refused
            .iter()
            .filter(|(_, r)| r.recorded)
            .map(|(k, _)| k)
            .collect();
        for key in recorded {
            let (tenant, id) = key.as_ref();
            let still = self
                .store
                .get_tenant_key(tenant, id)
                .await?
                .is_some_and(|r| {
                    matches!(r.binding_state, KekState::Revoked | KekState::Destroyed)
                });
            if !still {
                self.refused.invalidate(key.as_ref()).await;
            }
        }
        Ok(())
    }

    /// Drops the caches' own references to removed and expired keys now.
    ///
    /// moka keeps a removed or expired value referenced from its internal write
    /// log and entry table until its housekeeping runs, which it otherwise does
    /// only on later cache activity: without this, the last `Arc` of a purged
    /// key (and so its zeroization) would wait for the next request of any
    /// tenant, and an expired key of an idle replica would stay in memory
    /// indefinitely (not served, but readable in a memory image).
    pub async fn run_cache_maintenance(&self) {
        self.active.run_pending_tasks().await;
        self.deks.run_pending_tasks().await;
        self.tenant_keys.run_pending_tasks().await;
    }

    /// Runs [`Keyring::run_cache_maintenance`] every `interval`, so that
    /// expired keys leave memory within about `interval` of their expiry
    /// even on an idle replica. Runs until the task is aborted.
    pub async fn run_cache_sweeper(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.run_cache_maintenance().await;
        }
    }

    async fn invalidate_entries<K, V>(
        &self,
        cache: &Cache<K, V>,
        pred: impl Fn(&K, &V) -> bool,
    ) -> u64
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let doomed: Vec<Arc<K>> = cache
            .iter()
            .filter(|(k, v)| pred(k, v))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for key in doomed {
            if cache.remove(key.as_ref()).await.is_some() {
                removed += 1;
            }
        }
        removed
    }

    async fn invalidate_where<K, V>(&self, cache: &Cache<K, V>, pred: impl Fn(&K) -> bool) -> u64
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        self.invalidate_entries(cache, |k, _| pred(k)).await
    }

    /// How long the tenant's unwrapped keys may stay in memory: its policy
    /// override, else the server's TTL, and never longer than the server's TTL (the hard bound
    /// of the revocation window; a larger value stored before that bound was enforced is
    /// clamped).
    async fn ttl_for(&self, tenant: &TenantId) -> Result<Duration, ServiceError> {
        let policy = self.require_tenant(tenant).await?.policy;
        Ok(policy
            .cache_ttl_seconds
            .map_or(self.cache.ttl, Duration::from_secs)
            .min(self.cache.ttl))
    }

    /// The server's cache TTL: the hard upper bound of every tenant's revocation window.
    pub fn server_ttl(&self) -> Duration {
        self.cache.ttl
    }

    /// Sets the tenant's overrides of the cache TTL and monitor interval
    /// (audited). A shorter TTL applies to keys loaded from now on.
    pub async fn set_tenant_policy(
        &self,
        tenant: &TenantId,
        policy: keyward_store::TenantPolicy,
        actor: String,
    ) -> Result<TenantRecord, ServiceError> {
        let bound = self.cache.ttl.as_secs();
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
        let detail = format!(
            "cache_ttl_seconds={:?} monitor_interval_seconds={:?}",
            policy.cache_ttl_seconds, policy.monitor_interval_seconds
        );
        let record = self
            .store
            .set_tenant_policy(tenant, policy, &|t: &TenantRecord| {
                vec![AuditEvent::AdminAction {
                    actor: actor.clone(),
                    action: "set_tenant_policy".to_owned(),
                    detail: format!("tenant={} {detail}", t.id),
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
        self.purge_tenant(tenant).await;
        Ok(record)
    }

    /// Counts a request refused `KEY_REVOKED` (by any check) for the `revocation_denials`
    /// records: every such request once, whatever refused it.
    fn count_if_revoked(&self, tenant: &TenantId, error: Option<&ServiceError>) {
        if error.is_some_and(|e| matches!(e.root(), ServiceError::KeyRevoked { .. })) {
            self.gates.count_denial(tenant, now_ms());
        }
    }

    /// Whether requests for `tenant` may proceed, and under which generation.
    fn admit(&self, tenant: &TenantId) -> Result<u64, ServiceError> {
        self.gates
            .admit(tenant)
            .map_err(|closed| revoked(tenant, closed))
    }

    /// Fails if `tenant` was closed since `generation` was observed.
    fn still_open(&self, tenant: &TenantId, generation: u64) -> Result<(), ServiceError> {
        match self.gates.closed(tenant) {
            Some(closed) => Err(revoked(tenant, closed)),
            None if self.gates.generation(tenant) != generation => Err(ServiceError::Conflict(
                format!("the key state of tenant {tenant} changed during the request"),
            )),
            None => Ok(()),
        }
    }

    // ----- loaders (single flight through the caches) ------------------------

    async fn require_tenant(&self, id: &TenantId) -> Result<TenantRecord, ServiceError> {
        self.store
            .get_tenant(id)
            .await?
            .ok_or_else(|| ServiceError::TenantNotFound(id.to_string()))
    }

    /// The unwrapped tenant key `id`: the one KEK call of the data path.
    async fn tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Arc<LiveKey>, ServiceError> {
        if let Some(refusal) = self.refused.get(&(tenant.clone(), *id)).await {
            return Err(revoked(tenant, refusal.closed));
        }
        let result = self
            .tenant_keys
            .try_get_with((tenant.clone(), *id), async {
                let generation = self.gates.generation(tenant);
                let ttl = self.ttl_for(tenant).await?;
                let record = self
                    .store
                    .get_tenant_key(tenant, id)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::Internal(format!(
                            "tenant key {id} of {tenant} is not in the store"
                        ))
                    })?;
                self.check_tenant_key_mac(&record)?; // before the KMS sees it (ADR 0007)
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
                    self.remember_refusal(tenant, id, closed, true).await;
                    return Err(revoked(tenant, closed));
                }
                let kind = ProviderKind::from_str(&record.provider).map_err(|_| {
                    ServiceError::Internal(format!(
                        "unknown provider {:?} in store",
                        record.provider
                    ))
                })?;
                let kek = KeyRef::new(kind, record.key_ref.clone());
                let provider = self.providers.get(kind)?;
                self.counters.kek_unwraps.fetch_add(1, Ordering::Relaxed);
                self.usage.record(tenant, now_ms(), |u| u.kms_calls += 1);
                // The TTL runs from before the call: the KMS vouched for the key at some
                // moment during it, and a slow answer must not stretch the window.
                let asked_at = Instant::now();
                let key = provider
                    .unwrap(
                        &kek,
                        &record.wrapped,
                        &WrapContext::new(tenant, id, Purpose::TenantKey),
                    )
                    .await
                    .map_err(ServiceError::from_provider)?;
                // An unwrap that was in flight while the tenant was revoked must not
                // put its key back in the cache (an error is never cached).
                self.still_open(tenant, generation)?;
                Ok(Arc::new(LiveKey {
                    key,
                    tenant_key_id: *id,
                    expires_at: asked_at + ttl,
                    generation,
                }))
            })
            .await;
        match result {
            Ok(key) => Ok(key),
            Err(shared) => {
                let err = unshare(shared);
                if let ServiceError::KeyRefused(e) = err.root() {
                    tracing::warn!(%tenant, error = %e, "KEK refused");
                    self.on_kms_refusal(tenant, id, e.message()).await;
                }
                Err(err)
            }
        }
    }

    /// The unwrapped DEK `id` of `tenant`, for decryption.
    async fn dek(&self, tenant: &TenantId, id: &KeyId) -> Result<Arc<LiveKey>, ServiceError> {
        self.deks
            .try_get_with((tenant.clone(), *id), async {
                let Some(record) = self.store.get_dek(tenant, id).await? else {
                    self.require_tenant(tenant).await?;
                    return Err(ServiceError::DataKeyNotFound(tenant.to_string()));
                };
                self.unwrap_dek(&record).await
            })
            .await
            .map_err(unshare)
    }

    async fn unwrap_dek(&self, record: &DekRecord) -> Result<Arc<LiveKey>, ServiceError> {
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
            expires_at: (Instant::now() + self.cache.ttl).min(tenant_key.expires_at),
            generation: tenant_key.generation,
        }))
    }

    /// The active DEK of (tenant, scope): the stored one if still usable
    /// (current tenant key, within age and usage limits), else a new one.
    async fn active_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<Arc<ActiveDek>, ServiceError> {
        self.active
            .try_get_with((tenant.clone(), scope.clone()), async {
                let binding = self.usable_binding(tenant).await?;
                let existing = self.store.active_dek(tenant, scope).await?;
                let retire_reason = existing
                    .as_ref()
                    .and_then(|record| self.retire_reason(record, &binding));
                match existing {
                    Some(record) if retire_reason.is_none() => {
                        let key = self.unwrap_dek(&record).await?;
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
                        self.create_dek(tenant, scope, &binding, retire_reason)
                            .await
                    }
                }
            })
            .await
            .map_err(unshare)
    }

    async fn usable_binding(&self, tenant: &TenantId) -> Result<KekBinding, ServiceError> {
        let Some(binding) = self.store.active_binding(tenant).await? else {
            self.require_tenant(tenant).await?;
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
    fn retire_reason(&self, record: &DekRecord, binding: &KekBinding) -> Option<DekRetireReason> {
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
    /// to the store (retiring the scope's previous active DEK) before use.
    async fn create_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        binding: &KekBinding,
        retire_reason: Option<DekRetireReason>,
    ) -> Result<Arc<ActiveDek>, ServiceError> {
        let tenant_key = self.tenant_key(tenant, &binding.tenant_key_id).await?;
        let scope_hmac = self.hasher.hash("scope", scope.as_str());
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
        self.counters.deks_created.fetch_add(1, Ordering::Relaxed);
        // The scope is the caller's label (a conversation or user id): only its HMAC is logged,
        // as in the audit log.
        tracing::debug!(%tenant, scope = %scope_hmac, dek = %id, "created data key");
        let live = Arc::new(LiveKey {
            key,
            tenant_key_id: binding.tenant_key_id,
            expires_at: (Instant::now() + self.cache.ttl).min(tenant_key.expires_at),
            generation: tenant_key.generation,
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

    /// Replaces an exhausted active DEK, once, however many requests noticed.
    async fn rotate(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        exhausted: &Arc<ActiveDek>,
        reason: DekRetireReason,
    ) -> Result<(), ServiceError> {
        flush_usage(self.store.as_ref(), tenant, exhausted).await;
        self.active
            .entry((tenant.clone(), scope.clone()))
            .and_try_compute_with(|current| async move {
                if current.is_some_and(|c| c.value().id != exhausted.id) {
                    return Ok(Op::Nop); // someone else already rotated
                }
                let binding = self.usable_binding(tenant).await?;
                let fresh = self
                    .create_dek(tenant, scope, &binding, Some(reason))
                    .await?;
                Ok::<_, ServiceError>(Op::Put(fresh))
            })
            .await?;
        Ok(())
    }
}

/// Writes this replica's not-yet-recorded usage of an active DEK to the store.
/// Usage only steers rotation, so a failure is logged, not returned.
async fn flush_usage(store: &dyn Store, tenant: &TenantId, dek: &ActiveDek) {
    let messages = dek.unflushed_messages.swap(0, Ordering::Relaxed);
    let bytes = dek.unflushed_bytes.swap(0, Ordering::Relaxed);
    if messages == 0 && bytes == 0 {
        return;
    }
    if let Err(e) = store.add_dek_usage(tenant, &dek.id, messages, bytes).await {
        tracing::warn!(%tenant, dek = %dek.id, error = %e, "could not record DEK usage");
    }
}

/// AAD of a DEK wrapped under its tenant key: binds tenant, scope and DEK id,
/// so a wrapped DEK cannot be moved to another tenant, scope or id.
fn dek_aad(tenant: &TenantId, scope: &Scope, id: &KeyId) -> Result<Vec<u8>, ServiceError> {
    let pairs = [
        ("keyward:purpose", "dek".to_owned()),
        ("keyward:tenant", tenant.to_string()),
        ("keyward:scope", scope.to_string()),
        ("keyward:dek-id", id.to_string()),
    ];
    let map = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Ok(EncryptionContext::with_reserved(map)
        .map_err(internal)?
        .canonical_bytes())
}

fn classify_parse_error(e: EnvelopeError) -> ServiceError {
    match e {
        EnvelopeError::UnsupportedVersion(_) | EnvelopeError::UnsupportedSuite(_) => {
            ServiceError::UnsupportedEnvelope(e)
        }
        EnvelopeError::DecryptFailed => ServiceError::DecryptFailed,
        other => ServiceError::MalformedEnvelope(other),
    }
}

fn age(created_at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms().saturating_sub(created_at_ms)).unwrap_or(0))
}

fn revoked(tenant: &TenantId, closed: Closed) -> ServiceError {
    ServiceError::KeyRevoked {
        tenant: tenant.to_string(),
        state: closed.state,
        since_ms: closed.since_ms,
        cause: closed.cause,
    }
}

fn internal(e: impl fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// moka hands loader errors out as `Arc<E>`; take ours back out of it,
/// without stacking `Shared` layers when loaders nest.
fn unshare(e: Arc<ServiceError>) -> ServiceError {
    match Arc::try_unwrap(e) {
        Ok(owned) => owned,
        Err(shared) => match shared.as_ref() {
            ServiceError::Shared(inner) => ServiceError::Shared(Arc::clone(inner)),
            _ => ServiceError::Shared(shared),
        },
    }
}
