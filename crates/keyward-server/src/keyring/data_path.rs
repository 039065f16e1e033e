//! The data path: Encrypt and Decrypt under the key hierarchy, the loaders that fill the key
//! cache (single flight under concurrent misses), and the rotation of active DEKs.
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
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use keyward_audit::DekRetireReason;
use keyward_envelope::Wiped;
use keyward_envelope::{EncryptionContext, EnvelopeError, KeyId, Sealer, Suite, TenantId, parse};
use keyward_store::{Scope, Store};
use moka::ops::compute::Op;

use super::{
    cache::{ActiveDek, KeyCache},
    internal,
    kek::Kek,
    ledger::AuditLedger,
    monitor::Schedule,
    revocation::Revocation,
    revoked,
};
use crate::{error::ServiceError, keyring::usage::Usage, metrics::Metrics, now_ms};

mod loaders;
mod rewrap;
mod shred;
mod stream;

pub use shred::RetentionOutcome;
pub use stream::{PlainFrame, StreamDecryption, StreamEncryption, StreamKey};

/// How often one Encrypt may find its scope's DEK exhausted and rotate it.
const MAX_ENCRYPT_ATTEMPTS: usize = 32;

/// When a scope's active DEK is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    pub max_age: Duration,
    pub max_messages: u64,
    pub max_bytes: u64,
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

/// Encrypt and Decrypt, and the loaders and rotation they need.
pub(super) struct DataPath {
    pub(super) store: Arc<dyn Store>,
    pub(super) cache: Arc<KeyCache>,
    pub(super) kek: Arc<Kek>,
    pub(super) revocation: Arc<Revocation>,
    pub(super) ledger: Arc<AuditLedger>,
    /// The monitor's schedule: every tenant key loaded is published there.
    pub(super) schedule: Arc<Schedule>,
    pub(super) rotation: RotationPolicy,
    /// The envelope suite new messages are sealed with ([`Suite::SEAL`] unless configured).
    pub(super) write_suite: Suite,
    /// Cache hit/miss counters (docs/observability.md); none in tests that build a bare keyring.
    pub(super) metrics: Option<Arc<Metrics>>,
    /// The highest tombstone `seq` this replica has caught up with (reconciliation).
    pub(super) shreds_seen: std::sync::atomic::AtomicI64,
}

impl fmt::Debug for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPath")
            .field("rotation", &self.rotation)
            .field("write_suite", &self.write_suite)
            .finish_non_exhaustive()
    }
}

impl DataPath {
    pub(super) fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Encrypts under the active DEK of (tenant, scope), rotating it first if
    /// it reached a limit. Returns the envelope and the DEK id.
    pub(super) async fn encrypt(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        ctx: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, KeyId), ServiceError> {
        let mut hit = false;
        let result = self
            .encrypt_inner(tenant, scope, ctx, plaintext, &mut hit)
            .await;
        self.account(tenant, "encrypt", hit, &result, |u, _| {
            u.encrypts += 1;
            u.bytes_in += plaintext.len() as u64;
        });
        result
    }

    async fn encrypt_inner(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        ctx: &EncryptionContext,
        plaintext: &[u8],
        hit: &mut bool,
    ) -> Result<(Vec<u8>, KeyId), ServiceError> {
        let len = u64::try_from(plaintext.len()).map_err(internal)?;
        let (active, generation) = self.reserve_active(tenant, scope, len, hit).await?;
        // No await from the checks in `reserve_active` until the envelope is sealed.
        let envelope = Sealer::new(&active.key.key, tenant, &active.id)
            .suite(self.write_suite)
            .seal(ctx, plaintext)
            .map_err(internal)?;
        self.still_open(tenant, generation)?;
        Ok((envelope, active.id))
    }

    /// The active DEK of (tenant, scope) with one message of `len` bytes counted against its
    /// rotation limits (rotating it first if it reached one), and the gate generation it was
    /// checked at. Returns with no await after its last check, so a caller that seals at once
    /// (no await) seals under a key that was fresh, unshredded and admitted. `hit` tells
    /// whether the first lookup found a usable key in the cache (the cache-lookup metric).
    pub(super) async fn reserve_active(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        len: u64,
        hit: &mut bool,
    ) -> Result<(Arc<ActiveDek>, u64), ServiceError> {
        let generation = self.admit(tenant)?;
        // A fresh DEK accepts any message within the limits (config validation
        // guarantees max_bytes >= max plaintext), but under heavy concurrency
        // with tiny limits other requests may fill it first: retry, bounded.
        for attempt in 0..MAX_ENCRYPT_ATTEMPTS {
            let (active, cached) = self.active_dek(tenant, scope).await?;
            *hit = cached && attempt == 0;
            // Read after the lookup, with no await until the caller seals: a shred this
            // replica applied while the DEK was being loaded is seen.
            if active.key.generation != generation
                || active.key.shreds != self.revocation.gates().shreds(tenant)
                || active.key.expires_at <= Instant::now()
            {
                // Loaded before a revocation or restoration of this tenant, or read from the
                // store before a shred of the tenant (it may be gone), or vouched for by the
                // KMS a TTL ago or more (this request stalled after the unwrap answered):
                // never used past the TTL.
                Box::pin(
                    self.cache
                        .active
                        .invalidate(&(tenant.clone(), scope.clone())),
                )
                .await;
                self.admit(tenant)?;
                continue;
            }
            match active.try_reserve(len, &self.rotation) {
                Ok(()) => return Ok((active, generation)),
                Err(reason) => Box::pin(self.rotate(tenant, scope, &active, reason)).await?,
            }
        }
        // The scope label is the caller's data (a conversation or user id): not repeated here.
        Err(ServiceError::Conflict(format!(
            "the data key of the requested scope was exhausted by concurrent requests {MAX_ENCRYPT_ATTEMPTS} times"
        )))
    }

    pub(super) async fn decrypt(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Wiped, ServiceError> {
        self.decrypt_held(tenant, envelope, ctx)
            .await
            .map(|(plaintext, _)| plaintext)
    }

    /// [`DataPath::decrypt`], also returning the gate generation the plaintext was released at.
    /// A caller that holds the plaintext before sending it (a batch, until its last item is
    /// done) calls [`DataPath::release`] with it right before the response leaves, so that a
    /// revocation committed meanwhile still wins.
    pub(super) async fn decrypt_held(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(Wiped, u64), ServiceError> {
        let mut hit = false;
        let result = self.decrypt_inner(tenant, envelope, ctx, &mut hit).await;
        self.account(tenant, "decrypt", hit, &result, |u, (plaintext, _)| {
            u.decrypts += 1;
            u.bytes_out += plaintext.len() as u64;
        });
        result
    }

    async fn decrypt_inner(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
        hit: &mut bool,
    ) -> Result<(Wiped, u64), ServiceError> {
        let envelope = parse(envelope).map_err(classify_parse_error)?;
        let header = envelope.header();
        if header.tenant() != tenant {
            return Err(ServiceError::TenantMismatch);
        }
        let key = (tenant.clone(), *header.dek_id());
        for attempt in 0..2 {
            let generation = self.admit(tenant)?;
            // One lookup on the hot path; the single-flight loader only on a miss.
            let dek = match self.cache.deks.get(&key).await {
                Some(dek) => {
                    *hit = attempt == 0;
                    dek
                }
                // Boxed: the loader's state stays out of every call's future (see
                // `active_dek`).
                None => Box::pin(self.dek(tenant, header.dek_id())).await?,
            };
            // The shred count is read after the lookup (no await from here until the plaintext
            // is released): a shred this replica applied while the DEK was loading is seen.
            if dek.generation != generation || dek.shreds != self.revocation.gates().shreds(tenant)
            {
                // Loaded before a revocation or restoration of this tenant, or read from the
                // store before a shred of the tenant (it may be gone: look it up again).
                *hit = false;
                Box::pin(self.cache.deks.invalidate(&key)).await;
                continue;
            }
            if dek.expires_at <= Instant::now() {
                // The KMS vouched for this key a TTL ago or more: this request stalled that
                // long after the unwrap answered (or the cache handed out an entry at its
                // edge). Never used past the TTL: ask again. No await from here until the
                // plaintext is released, so the check cannot go stale.
                *hit = false;
                Box::pin(self.cache.deks.invalidate(&key)).await;
                continue;
            }
            let plaintext = envelope.open(&dek.key, ctx).map_err(|e| match e {
                EnvelopeError::DecryptFailed => ServiceError::DecryptFailed,
                other => classify_parse_error(other),
            })?;
            // The last check before plaintext leaves: a revocation recorded while
            // this request was in flight wins (the plaintext is zeroized on drop).
            match self
                .revocation
                .gates()
                .release_plaintext(tenant, generation, now_ms())
            {
                Ok(()) => return Ok((plaintext, generation)),
                Err(Some(closed)) => return Err(revoked(tenant, closed)),
                Err(None) => continue,
            }
        }
        Err(ServiceError::Conflict(format!(
            "the key state of tenant {tenant} changed, or its key expired, during the request"
        )))
    }

    /// The last check before plaintext held since [`DataPath::decrypt_held`] (at `generation`)
    /// leaves: fails if the tenant was revoked (or its key state changed) since, else records
    /// now as this replica's last plaintext time for the tenant (`keys_purged` reports it).
    pub(super) fn release(&self, tenant: &TenantId, generation: u64) -> Result<(), ServiceError> {
        match self
            .revocation
            .gates()
            .release_plaintext(tenant, generation, now_ms())
        {
            Ok(()) => Ok(()),
            Err(Some(closed)) => {
                self.revocation.gates().count_denial(tenant, now_ms());
                Err(revoked(tenant, closed))
            }
            Err(None) => Err(ServiceError::Conflict(format!(
                "the key state of tenant {tenant} changed during the request"
            ))),
        }
    }

    /// Counts a finished request of `operation` (Encrypt or Decrypt): its cache lookup in the
    /// metrics (on success), a refusal because of a revocation, and the tenant's usage (`count`
    /// and the cache hit on success, an error otherwise).
    fn account<T>(
        &self,
        tenant: &TenantId,
        operation: &'static str,
        hit: bool,
        result: &Result<T, ServiceError>,
        count: impl FnOnce(&mut Usage, &T),
    ) {
        if let (Some(m), Ok(_)) = (&self.metrics, result) {
            m.cache_lookup(operation, hit);
        }
        self.count_if_revoked(tenant, result.as_ref().err());
        self.ledger.count_usage(tenant, |u| match result {
            Ok(value) => {
                count(u, value);
                u.cache_hits += u64::from(hit);
            }
            Err(_) => u.errors += 1,
        });
    }

    /// Counts a request refused `KEY_REVOKED` (by any check) for the `revocation_denials`
    /// records: every such request once, whatever refused it.
    fn count_if_revoked(&self, tenant: &TenantId, error: Option<&ServiceError>) {
        if error.is_some_and(|e| matches!(e.root(), ServiceError::KeyRevoked { .. })) {
            self.revocation.gates().count_denial(tenant, now_ms());
        }
    }

    /// Whether requests for `tenant` may proceed, and under which generation.
    fn admit(&self, tenant: &TenantId) -> Result<u64, ServiceError> {
        self.revocation
            .gates()
            .admit(tenant)
            .map_err(|closed| revoked(tenant, closed))
    }

    /// Fails if `tenant` was closed since `generation` was observed.
    fn still_open(&self, tenant: &TenantId, generation: u64) -> Result<(), ServiceError> {
        match self.revocation.gates().open_at(tenant, generation) {
            Ok(()) => Ok(()),
            Err(Some(closed)) => Err(revoked(tenant, closed)),
            Err(None) => Err(ServiceError::Conflict(format!(
                "the key state of tenant {tenant} changed during the request"
            ))),
        }
    }

    /// Replaces an exhausted active DEK, once, however many requests noticed.
    async fn rotate(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        exhausted: &Arc<ActiveDek>,
        reason: DekRetireReason,
    ) -> Result<(), ServiceError> {
        exhausted.flush_usage(&self.ledger, tenant).await;
        self.cache
            .active
            .entry((tenant.clone(), scope.clone()))
            .and_try_compute_with(|current| async move {
                if current.is_some_and(|c| c.value().id != exhausted.id) {
                    return Ok(Op::Nop); // someone else already rotated
                }
                let shreds = self.revocation.gates().shreds(tenant);
                let binding = self.usable_binding(tenant).await?;
                let fresh = self
                    .create_dek(tenant, scope, &binding, Some(reason), shreds)
                    .await?;
                Ok::<_, ServiceError>(Op::Put(fresh))
            })
            .await?;
        Ok(())
    }
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
