//! The key cache: unwrapped tenant keys, unwrapped DEKs and the active DEK of each scope, in
//! memory for at most their deadline, and the tenant keys refused recently.
//!
//! Each value carries its own deadline ([`UntilDeadline`]): a tenant key expires a TTL after
//! the KMS last vouched for it, and a DEK never outlives the tenant key it was unwrapped under
//! (docs/architecture.md, "Key hierarchy"). Purging removes a tenant's keys (or one tenant
//! key's) from every cache; the caches' own references go at the next maintenance
//! ([`KeyCache::run_maintenance`]), so that the last `Arc` (and so the zeroization) of a purged
//! or expired key does not wait for unrelated traffic.

use std::{
    collections::BTreeSet,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keyward_envelope::{KeyId, SecretKey, TenantId};
use keyward_store::{KekState, Scope, Store};
use moka::{Expiry, future::Cache};

use super::{ledger::AuditLedger, require_tenant};
use crate::fast_hash::FastState;
use crate::{error::ServiceError, keyring::gate::Closed};

/// Limits and lifetimes of the key caches.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub max_tenant_keys: u64,
    pub max_deks: u64,
}

/// An unwrapped key in memory, with the instant it must be forgotten.
pub(super) struct LiveKey {
    pub(super) key: SecretKey,
    /// The tenant key this key is (a tenant key) or was unwrapped under (a DEK): purging one
    /// binding's keys finds them by it.
    pub(super) tenant_key_id: KeyId,
    pub(super) expires_at: Instant,
    /// The tenant's gate generation when the key was unwrapped: a key from
    /// before a revocation (or restoration) is never used (see `gate`).
    pub(super) generation: u64,
    /// The tenant's shred count (`Gates::shreds`) when the key's store row was read: a DEK
    /// read before a shred of the tenant is looked up again before use (it may be shredded).
    pub(super) shreds: u64,
}

impl fmt::Debug for LiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveKey")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The active DEK of one (tenant, scope) with its usage on this replica.
pub(super) struct ActiveDek {
    pub(super) id: KeyId,
    pub(super) key: Arc<LiveKey>,
    pub(super) created_at_ms: i64,
    pub(super) messages: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) unflushed_messages: AtomicU64,
    pub(super) unflushed_bytes: AtomicU64,
}

impl fmt::Debug for ActiveDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveDek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ActiveDek {
    /// Writes this replica's not-yet-recorded usage of the DEK to the store (see
    /// [`AuditLedger::record_dek_usage`]).
    pub(super) async fn flush_usage(&self, ledger: &AuditLedger, tenant: &TenantId) {
        let messages = self.unflushed_messages.swap(0, Ordering::Relaxed);
        let bytes = self.unflushed_bytes.swap(0, Ordering::Relaxed);
        ledger
            .record_dek_usage(tenant, &self.id, messages, bytes)
            .await;
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
pub(super) struct Counters {
    pub(super) kek_unwraps: AtomicU64,
    pub(super) canary_checks: AtomicU64,
    pub(super) kek_generates: AtomicU64,
    pub(super) deks_created: AtomicU64,
}

/// A snapshot of [`Keyring`](super::Keyring) counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyringStats {
    /// Tenant-key unwraps sent to a KEK provider: the data path's only KMS call, and the
    /// key-state checks' canaries.
    pub kek_unwraps: u64,
    /// Of `kek_unwraps`, the canaries of key-state checks (the monitor, a key event).
    pub canary_checks: u64,
    /// Tenant keys generated through a KEK provider (registration).
    pub kek_generates: u64,
    /// DEKs created and stored.
    pub deks_created: u64,
}

/// A moka cache hashing its keys with [`FastState`] (every call looks keys up).
pub(super) type FastCache<K, V> = Cache<K, V, FastState>;
pub(super) type TenantKeyCache = FastCache<(TenantId, KeyId), Arc<LiveKey>>;
pub(super) type ActiveCache = FastCache<(TenantId, Scope), Arc<ActiveDek>>;

/// Why a tenant key is refused without asking the KMS or the store again, and where that
/// was learnt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refusal {
    pub(super) closed: Closed,
    /// Learnt from the store (its binding is revoked or destroyed) rather than from a KMS
    /// refusal: reconciliation checks it again.
    recorded: bool,
}
/// Tenant keys refused recently (an older binding's key the KMS refused, or a key whose
/// binding is revoked in the store), for at most the cache TTL.
type RefusalCache = FastCache<(TenantId, KeyId), Refusal>;

/// The unwrapped keys of this replica and the refusals it remembers.
pub(super) struct KeyCache {
    policy: CachePolicy,
    pub(super) tenant_keys: TenantKeyCache,
    pub(super) deks: TenantKeyCache,
    pub(super) active: ActiveCache,
    /// Tenant keys refused without a KMS call, each for at most the cache TTL.
    refused: RefusalCache,
    /// DEKs found shredded (their tombstone's time), for at most the cache TTL: a client that
    /// keeps sending envelopes of a shredded scope costs no store read per request. A
    /// tombstone is permanent, so remembering it is never wrong.
    shredded: FastCache<(TenantId, KeyId), i64>,
    counters: Counters,
}

impl KeyCache {
    /// Empty caches; an active DEK leaving its cache has its usage flushed through `ledger`.
    pub(super) fn new(policy: CachePolicy, ledger: Arc<AuditLedger>) -> Self {
        let active = Cache::builder()
            .max_capacity(policy.max_deks)
            .expire_after(UntilDeadline)
            .async_eviction_listener(move |key: Arc<(TenantId, Scope)>, dek: Arc<ActiveDek>, _| {
                let ledger = Arc::clone(&ledger);
                Box::pin(async move { dek.flush_usage(&ledger, &key.0).await })
            })
            .build_with_hasher(FastState::default());
        Self {
            tenant_keys: Cache::builder()
                .max_capacity(policy.max_tenant_keys)
                .expire_after(UntilDeadline)
                .build_with_hasher(FastState::default()),
            deks: Cache::builder()
                .max_capacity(policy.max_deks)
                .expire_after(UntilDeadline)
                .build_with_hasher(FastState::default()),
            active,
            refused: Cache::builder()
                .max_capacity(policy.max_tenant_keys)
                .time_to_live(policy.ttl)
                .build_with_hasher(FastState::default()),
            shredded: Cache::builder()
                .max_capacity(policy.max_deks)
                .time_to_live(policy.ttl)
                .build_with_hasher(FastState::default()),
            counters: Counters::default(),
            policy,
        }
    }

    pub(super) fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(super) fn stats(&self) -> KeyringStats {
        KeyringStats {
            kek_unwraps: self.counters.kek_unwraps.load(Ordering::Relaxed),
            canary_checks: self.counters.canary_checks.load(Ordering::Relaxed),
            kek_generates: self.counters.kek_generates.load(Ordering::Relaxed),
            deks_created: self.counters.deks_created.load(Ordering::Relaxed),
        }
    }

    /// Resident entries: (tenant keys, DEKs, active DEKs), for the metrics gauges.
    pub(super) fn entry_counts(&self) -> (u64, u64, u64) {
        (
            self.tenant_keys.entry_count(),
            self.deks.entry_count(),
            self.active.entry_count(),
        )
    }

    /// How long the tenant's unwrapped keys may stay in memory: its policy
    /// override, else the server's TTL, and never longer than the server's TTL (the hard bound
    /// of the revocation window; a larger value stored before that bound was enforced is
    /// clamped).
    /// Also returns the tenant's monitor interval override, read with it.
    pub(super) async fn ttl_for(
        &self,
        store: &dyn Store,
        tenant: &TenantId,
    ) -> Result<(Duration, Option<u64>), ServiceError> {
        let policy = require_tenant(store, tenant).await?.policy;
        let ttl = policy
            .cache_ttl_seconds
            .map_or(self.policy.ttl, Duration::from_secs)
            .min(self.policy.ttl);
        Ok((ttl, policy.monitor_interval_seconds))
    }

    /// The refusal remembered for tenant key `id` of `tenant`, if any.
    pub(super) async fn refusal(&self, tenant: &TenantId, id: &KeyId) -> Option<Refusal> {
        self.refused.get(&(tenant.clone(), *id)).await
    }

    /// Forgets every cached key of `tenant` (their bytes are zeroized when the
    /// last in-flight request using them finishes); returns how many entries.
    pub(super) async fn purge_tenant(&self, tenant: &TenantId) -> u64 {
        let removed = self
            .invalidate_where(&self.active, |(t, _)| t == tenant)
            .await
            + self
                .invalidate_where(&self.deks, |(t, _)| t == tenant)
                .await
            + self
                .invalidate_where(&self.tenant_keys, |(t, _)| t == tenant)
                .await;
        self.run_maintenance().await;
        removed
    }

    /// Forgets every cached DEK (active or not) of `tenant`, keeping its tenant keys: after a
    /// shred, whose DEKs are reloaded from the store (no KMS call). Returns how many entries.
    pub(super) async fn purge_deks(&self, tenant: &TenantId) -> u64 {
        let removed = self
            .invalidate_where(&self.active, |(t, _)| t == tenant)
            .await
            + self
                .invalidate_where(&self.deks, |(t, _)| t == tenant)
                .await;
        self.run_maintenance().await;
        removed
    }

    /// Forgets every cached key under tenant key `id` of `tenant` (the tenant key itself, the
    /// DEKs unwrapped under it, the active DEKs wrapped by it); the tenant's other keys stay.
    pub(super) async fn purge_tenant_key(&self, tenant: &TenantId, id: &KeyId) -> u64 {
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
        self.run_maintenance().await;
        removed
    }

    /// Drops the active DEKs of `tenant` (new DEKs must go under a new tenant key).
    pub(super) async fn invalidate_active(&self, tenant: &TenantId) -> u64 {
        self.invalidate_where(&self.active, |(t, _)| t == tenant)
            .await
    }

    /// The tenant keys of `tenant` this replica holds, cached themselves or as the tenant key
    /// of a cached DEK, `except` the one given.
    pub(super) fn cached_tenant_key_ids(
        &self,
        tenant: &TenantId,
        except: &KeyId,
    ) -> BTreeSet<KeyId> {
        let mut ids: BTreeSet<KeyId> = BTreeSet::new();
        ids.extend(
            self.tenant_keys
                .iter()
                .filter(|(k, _)| k.0 == *tenant)
                .map(|(k, _)| k.1),
        );
        ids.extend(
            self.deks
                .iter()
                .filter(|(k, _)| k.0 == *tenant)
                .map(|(_, v)| v.tenant_key_id),
        );
        ids.remove(except);
        ids
    }

    /// Refuses tenant key `id` of `tenant` without a KMS or store call for the cache TTL.
    /// When DEK `id` of `tenant` was shredded, if this replica found its tombstone recently.
    pub(super) async fn shredded(&self, tenant: &TenantId, id: &KeyId) -> Option<i64> {
        self.shredded.get(&(tenant.clone(), *id)).await
    }

    /// Remembers that DEK `id` of `tenant` was shredded at `at_ms` (its tombstone).
    pub(super) async fn remember_shredded(&self, tenant: &TenantId, id: &KeyId, at_ms: i64) {
        self.shredded.insert((tenant.clone(), *id), at_ms).await;
    }

    pub(super) async fn remember_refusal(
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
    pub(super) async fn forget_refusals(&self, tenant: &TenantId, id: Option<&KeyId>) {
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

    /// Forgets remembered refusals learnt from the store whose binding is no longer revoked
    /// (restored by another replica whose notification this replica missed).
    pub(super) async fn recheck_refusals(&self, store: &dyn Store) -> Result<(), ServiceError> {
        let recorded: Vec<Arc<(TenantId, KeyId)>> = self
            .refused
            .iter()
            .filter(|(_, r)| r.recorded)
            .map(|(k, _)| k)
            .collect();
        for key in recorded {
            let (tenant, id) = key.as_ref();
            let still = store.get_tenant_key(tenant, id).await?.is_some_and(|r| {
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
    pub(super) async fn run_maintenance(&self) {
        self.active.run_pending_tasks().await;
        self.deks.run_pending_tasks().await;
        self.tenant_keys.run_pending_tasks().await;
    }

    /// Runs [`KeyCache::run_maintenance`] every `interval`, so that
    /// expired keys leave memory within about `interval` of their expiry
    /// even on an idle replica. Runs until the task is aborted.
    pub(super) async fn run_sweeper(&self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.run_maintenance().await;
        }
    }

    async fn invalidate_entries<K, V>(
        &self,
        cache: &FastCache<K, V>,
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

    async fn invalidate_where<K, V>(
        &self,
        cache: &FastCache<K, V>,
        pred: impl Fn(&K) -> bool,
    ) -> u64
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        self.invalidate_entries(cache, |k, _| pred(k)).await
    }
}
