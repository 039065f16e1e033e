//! The key hierarchy: KEK (customer's KMS) -> tenant key -> DEKs, with TTL-bounded in-memory
//! caches of the unwrapped keys, and the revocation engine that closes it.
//!
//! [`Keyring`] wires the parts, one module per job:
//! - `cache`: the key cache (live tenant keys, DEKs, active DEKs, remembered refusals), its
//!   purge, sweeper and counters;
//! - `kek`: the providers and the one unwrap of a stored tenant key (shared by the data path's
//!   loader and the monitor's canary), with `tenant_key_auth`, the tags of stored tenant keys;
//! - `data_path`: Encrypt, Decrypt, the cache loaders and DEK rotation ([`RotationPolicy`]);
//! - `onboarding`: tenants, KEK registration, tenant policies;
//! - `export`: the exit kit's export of a tenant's wrapped key hierarchy, and its audit record;
//! - `revocation`: the only writer of binding state, with the transition lock, the gates
//!   (`gate`: admission, generations, denial counts) and the closures not recorded yet;
//! - `monitor`: when each tenant's key is checked with the KMS ([`MonitorPolicy`]);
//! - `ledger`: the audit records written outside a lifecycle transaction (denial, usage
//!   (`usage`: per-tenant counts per minute) and authorization-denial counts, purges, failed
//!   registrations) and the DEK usage counts.
//!
//! Invariants (docs/architecture.md, "Key hierarchy"): see `data_path`.

use keyward_envelope::Wiped;
use std::{fmt, sync::Arc, time::Duration};

use keyward_audit::{AuditEvent, IdentifierHasher};
use keyward_envelope::{EncryptionContext, KeyId, Suite, TenantId};
use keyward_kms::KeyRef;
use keyward_store::{
    BindingCommit, KekBinding, KekState, NewKekBinding, Scope, Store, TenantRecord, TenantState,
};

use crate::{error::ServiceError, metrics::Metrics, now_ms};

pub use self::access::AccessCall;
use self::{
    access::DecryptRules,
    cache::KeyCache,
    data_path::DataPath,
    gate::Closed,
    kek::Kek,
    ledger::AuditLedger,
    monitor::{Monitor, Schedule},
    onboarding::Onboarding,
    revocation::Revocation,
};

mod access;
mod cache;
mod data_path;
mod export;
mod gate;
mod kek;
mod ledger;
mod monitor;
mod onboarding;
mod rekey;
mod revocation;
mod tenant_key_auth;
mod usage;

pub use cache::{CachePolicy, KeyringStats};
pub use data_path::{
    PlainFrame, RetentionOutcome, RotationPolicy, StreamDecryption, StreamEncryption, StreamKey,
};
pub use export::{EXPORT_PAGE, ExportCounts, ExportEnd, ExportItem};
pub use kek::Providers;
pub use ledger::MAX_PENDING as MAX_PENDING_AUDIT_RECORDS;
pub use monitor::{
    DEFAULT_CHECKS_PER_SECOND, DEFAULT_CONCURRENT_CHECKS, MonitorPolicy, MonitorStatus,
};
pub use rekey::{RekeyStatus, SCHEDULED_REKEY_ACTOR, SCHEDULED_REKEY_INTERVAL};
pub use revocation::{CheckOutcome, RevocationSource};
pub use tenant_key_auth::{
    AuthenticatedTenantKey, TAG_PURPOSE, authenticate_stored_tenant_keys, tag_tenant_key,
};

/// What a keyring is built from (kept so that the `with_*` builders can wire it again).
#[derive(Clone)]
struct Wiring {
    store: Arc<dyn Store>,
    providers: Providers,
    cache: CachePolicy,
    rotation: RotationPolicy,
    hasher: Arc<IdentifierHasher>,
    /// Names this replica in log lines (revocations, purges); "local" by default.
    replica_id: String,
    /// The envelope suite new messages are sealed with ([`Suite::SEAL`] unless configured).
    write_suite: Suite,
    /// Cache hit/miss counters (docs/observability.md); none in tests that build a bare keyring.
    metrics: Option<Arc<Metrics>>,
    /// The key-state monitor's policy, which the holdings this replica publishes are scheduled
    /// with; `None`: the monitor is off and nothing is published ([`MonitorPolicy::default`]
    /// unless configured).
    monitor: Option<MonitorPolicy>,
}

/// Tenant onboarding, the encrypt/decrypt data path and the revocation engine, wired from
/// their parts (see the module docs).
pub struct Keyring {
    wiring: Wiring,
    cache: Arc<KeyCache>,
    ledger: Arc<AuditLedger>,
    kek: Arc<Kek>,
    revocation: Arc<Revocation>,
    schedule: Arc<Schedule>,
    monitor: Monitor,
    data: DataPath,
    onboarding: Onboarding,
    /// The re-keys running on this replica and the scheduled re-key's state (`rekey`).
    rekeys: Arc<rekey::Rekeys>,
    /// The tenants' rules on the purposes that may decrypt (`access`).
    rules: DecryptRules,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("store", &self.wiring.store)
            .field("providers", &self.wiring.providers)
            .field("cache", &self.wiring.cache)
            .field("rotation", &self.wiring.rotation)
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
        Self::wire(Wiring {
            store,
            providers,
            cache,
            rotation,
            hasher,
            replica_id: "local".to_owned(),
            write_suite: Suite::SEAL,
            metrics: None,
            monitor: Some(MonitorPolicy::default()),
        })
    }

    /// The parts, each given the others it works with. The builders below wire a keyring
    /// again: they are for its construction, before any use (its caches start empty).
    fn wire(wiring: Wiring) -> Self {
        let w = wiring.clone();
        let ledger = Arc::new(AuditLedger::new(Arc::clone(&w.store), w.replica_id.clone()));
        let cache = Arc::new(KeyCache::new(w.cache, Arc::clone(&ledger)));
        let kek = Arc::new(Kek::new(
            w.providers,
            w.hasher,
            Arc::clone(&w.store),
            Arc::clone(&cache),
            Arc::clone(&ledger),
        ));
        let revocation = Arc::new(Revocation::new(
            Arc::clone(&w.store),
            Arc::clone(&cache),
            Arc::clone(&kek),
            Arc::clone(&ledger),
            w.replica_id,
        ));
        let schedule = Arc::new(Schedule::new(
            Arc::clone(&w.store),
            w.monitor,
            w.metrics.clone(),
        ));
        let monitor = Monitor::new(
            Arc::clone(&w.store),
            Arc::clone(&kek),
            Arc::clone(&revocation),
            Arc::clone(&schedule),
            wiring.replica_id.clone(),
        );
        let data = DataPath {
            store: Arc::clone(&w.store),
            cache: Arc::clone(&cache),
            kek: Arc::clone(&kek),
            revocation: Arc::clone(&revocation),
            ledger: Arc::clone(&ledger),
            schedule: Arc::clone(&schedule),
            rotation: w.rotation,
            write_suite: w.write_suite,
            metrics: w.metrics,
            shreds_seen: std::sync::atomic::AtomicI64::new(0),
        };
        let rules = DecryptRules::new(Arc::clone(&w.store), w.cache.ttl, w.cache.max_tenant_keys);
        let onboarding = Onboarding {
            store: w.store,
            cache: Arc::clone(&cache),
            kek: Arc::clone(&kek),
            revocation: Arc::clone(&revocation),
            ledger: Arc::clone(&ledger),
            schedule: Arc::clone(&schedule),
        };
        Self {
            wiring,
            cache,
            ledger,
            kek,
            revocation,
            schedule,
            monitor,
            data,
            onboarding,
            rekeys: Arc::default(),
            rules,
        }
    }

    /// Seals new envelopes with `suite` instead of [`Suite::SEAL`] (`envelope.write_suite`: a
    /// rolling upgrade keeps writing the suite the oldest replica reads). Reading is unchanged.
    pub fn with_write_suite(self, suite: Suite) -> Self {
        Self::wire(Wiring {
            write_suite: suite,
            ..self.wiring
        })
    }

    /// Counts data-key cache hits and misses in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self::wire(Wiring {
            metrics: Some(metrics),
            ..self.wiring
        })
    }

    /// Publishes the tenant keys this replica loads on the key-state monitor's schedule with
    /// `policy` (`None`: the monitor is off, nothing is published). Default:
    /// [`MonitorPolicy::default`].
    pub fn with_monitor(self, policy: Option<MonitorPolicy>) -> Self {
        Self::wire(Wiring {
            monitor: policy,
            ..self.wiring
        })
    }

    /// Names this replica in log lines (several replicas on one PostgreSQL store).
    pub fn with_replica_id(self, replica_id: impl Into<String>) -> Self {
        Self::wire(Wiring {
            replica_id: replica_id.into(),
            ..self.wiring
        })
    }

    /// The metrics given to [`Keyring::with_metrics`].
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.data.metrics()
    }

    /// Resident keys and closed tenants, read at each metrics scrape.
    pub fn scrape_gauges(&self) -> crate::metrics::ScrapeGauges {
        let (tenant_keys, deks, active_deks) = self.cache.entry_counts();
        crate::metrics::ScrapeGauges {
            tenant_keys,
            deks,
            active_deks,
            closed: self.revocation.gates().closed_counts(),
            monitor: self.schedule.status(),
        }
    }

    /// Whether the key-state monitor keeps up with its schedule on this replica.
    pub fn monitor_status(&self) -> MonitorStatus {
        self.schedule.status()
    }

    /// This replica's name in log lines.
    pub fn replica_id(&self) -> &str {
        &self.wiring.replica_id
    }

    pub fn stats(&self) -> KeyringStats {
        self.cache.stats()
    }

    /// The server's cache TTL: the hard upper bound of every tenant's revocation window.
    pub fn server_ttl(&self) -> Duration {
        self.wiring.cache.ttl
    }

    // ----- onboarding (`onboarding`) ------------------------------------------------------

    pub async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        actor: String,
    ) -> Result<TenantRecord, ServiceError> {
        self.onboarding.create_tenant(id, display_name, actor).await
    }

    /// The tenant and every binding of it, current and older, as the store has them now.
    pub async fn tenant_state(&self, id: &TenantId) -> Result<TenantState, ServiceError> {
        self.onboarding.tenant_state(id).await
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
    ) -> Result<BindingCommit, ServiceError> {
        let commit = self.onboarding.register_key(tenant, kek, None).await?;
        self.after_registration(&commit);
        Ok(commit)
    }

    /// A new key of a tenant whose policy asks for a scheduled re-key wakes it.
    fn after_registration(&self, commit: &BindingCommit) {
        if commit.tenant.tenant.policy.auto_rekey {
            self.rekeys.wake();
        }
    }

    /// [`Keyring::register_key`] for a caller: its `kek_binding_changed` record names `actor`
    /// as who bound the key (`ListKeyBindings`' `bound_by`). `register_key` records none (for
    /// in-process callers: tests, tools).
    pub async fn register_key_as(
        &self,
        tenant: &TenantId,
        kek: &KeyRef,
        actor: String,
    ) -> Result<BindingCommit, ServiceError> {
        let commit = self
            .onboarding
            .register_key(tenant, kek, Some(actor))
            .await?;
        self.after_registration(&commit);
        Ok(commit)
    }

    /// The tenant's key history: every binding, oldest first, with the DEKs and scopes that
    /// depend on it, its shredded DEKs and who bound it (`ListKeyBindings`). Unknown tenant:
    /// `TenantNotFound`.
    pub async fn key_history(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<keyward_store::BindingUsage>, ServiceError> {
        self.onboarding.key_history(tenant).await
    }

    /// Sets the tenant's overrides of the cache TTL and monitor interval
    /// (audited). A shorter TTL applies to keys loaded from now on.
    pub async fn set_tenant_policy(
        &self,
        tenant: &TenantId,
        policy: keyward_store::TenantPolicy,
        actor: String,
    ) -> Result<TenantState, ServiceError> {
        let state = self
            .onboarding
            .set_tenant_policy(tenant, policy, actor)
            .await?;
        self.rules.forget(tenant).await;
        if state.tenant.policy.auto_rekey {
            self.rekeys.wake();
        }
        Ok(state)
    }

    // ----- justifications (`access`, docs/justifications.md) ------------------------------

    /// Refuses a decrypt (Decrypt, DecryptBatch, DecryptStream, Rewrap) of `tenant` whose
    /// justification the tenant's rule (`TenantPolicy::decrypt_purposes`) does not allow:
    /// `JustificationRequired` or `PurposeNotAllowed`. The rule is cached for at most the
    /// server's key-cache TTL, and dropped when a policy change is set here or announced.
    pub async fn check_decrypt_justification(
        &self,
        tenant: &TenantId,
        justification: Option<&crate::justification::Justification>,
    ) -> Result<(), ServiceError> {
        self.rules.check(tenant, justification).await
    }

    /// Counts one data-path call in its tenant's access summaries (`access_summary` records,
    /// written once each minute is over).
    pub fn record_access(&self, call: AccessCall) {
        self.ledger.count_access(call);
    }

    /// `binding` with the tag of its wrapped tenant key set (`tenant_keys.mac`). The keyring
    /// tags every binding it registers; tools that bind through the store directly (the
    /// benchmark's bulk population) use this so that the keyring accepts what they stored.
    pub fn with_tenant_key_mac(&self, binding: NewKekBinding) -> NewKekBinding {
        self.kek.with_tenant_key_mac(binding)
    }

    // ----- data path (`data_path`) --------------------------------------------------------

    /// Encrypts under the active DEK of (tenant, scope), rotating it first if
    /// it reached a limit. Returns the envelope and the DEK id.
    pub async fn encrypt(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        ctx: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, KeyId), ServiceError> {
        self.data.encrypt(tenant, scope, ctx, plaintext).await
    }

    pub async fn decrypt(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Wiped, ServiceError> {
        self.data.decrypt(tenant, envelope, ctx).await
    }

    /// Re-encrypts `envelope` (sealed with `ctx`) under the active DEK of `target`, or of the
    /// envelope's own DEK's scope when `None`, with the same context and the configured write
    /// suite; the plaintext never leaves the keyring. Returns the new envelope and its DEK id.
    pub async fn rewrap(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
        target: Option<&Scope>,
    ) -> Result<(Vec<u8>, KeyId), ServiceError> {
        self.data.rewrap(tenant, envelope, ctx, target).await
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
    ) -> Result<(Wiped, u64), ServiceError> {
        self.data.decrypt_held(tenant, envelope, ctx).await
    }

    /// The last check before plaintext held since [`Keyring::decrypt_held`] (at `generation`)
    /// leaves: fails if the tenant was revoked (or its key state changed) since, else records
    /// now as this replica's last plaintext time for the tenant (`keys_purged` reports it).
    pub fn release(&self, tenant: &TenantId, generation: u64) -> Result<(), ServiceError> {
        self.data.release(tenant, generation)
    }

    // ----- streams (`data_path::stream`) ----------------------------------------------------

    /// Starts an EncryptStream under the active DEK of (tenant, scope) with `frame_size`
    /// plaintext bytes per frame; returns the stream and the framed envelope's header.
    pub async fn begin_stream_encryption(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        ctx: &EncryptionContext,
        frame_size: u32,
    ) -> Result<(StreamEncryption, Vec<u8>), ServiceError> {
        self.data
            .begin_stream_encryption(tenant, scope, ctx, frame_size)
            .await
    }

    /// More plaintext for an EncryptStream; the frames it completed, sealed (each one checked
    /// against the tenant's gate and its DEK's deadline first).
    pub async fn stream_encrypt_push(
        &self,
        stream: &mut StreamEncryption,
        plaintext: &[u8],
    ) -> Result<Vec<Vec<u8>>, ServiceError> {
        self.data.stream_encrypt_push(stream, plaintext).await
    }

    /// The end of an EncryptStream's plaintext: the final frame.
    pub async fn stream_encrypt_finish(
        &self,
        stream: &mut StreamEncryption,
    ) -> Result<Vec<u8>, ServiceError> {
        self.data.stream_encrypt_finish(stream).await
    }

    /// Starts a DecryptStream of `tenant`'s data bound to `ctx`.
    pub fn begin_stream_decryption(
        &self,
        tenant: &TenantId,
        ctx: EncryptionContext,
    ) -> StreamDecryption {
        self.data.begin_stream_decryption(tenant, ctx)
    }

    /// More envelope bytes for a DecryptStream; the plaintext frames they completed,
    /// authenticated (release each with [`Keyring::release`] right before it leaves), and the
    /// error that ends the stream, if one came after them.
    pub async fn stream_decrypt_push(
        &self,
        stream: &mut StreamDecryption,
        envelope: &[u8],
    ) -> (Vec<PlainFrame>, Option<ServiceError>) {
        self.data.stream_decrypt_push(stream, envelope).await
    }

    /// The end of a DecryptStream's input: the final frame, if the message is complete.
    pub fn stream_decrypt_finish(
        &self,
        stream: &mut StreamDecryption,
    ) -> Result<PlainFrame, ServiceError> {
        self.data.stream_decrypt_finish(stream)
    }

    /// Counts a finished stream (its plaintext bytes, or its error) in the tenant's usage.
    pub fn stream_finished(
        &self,
        tenant: &TenantId,
        encrypt: bool,
        result: &Result<u64, ServiceError>,
    ) {
        self.data.stream_finished(tenant, encrypt, result);
    }

    // ----- key cache (`cache`) ------------------------------------------------------------

    /// Forgets every cached key of `tenant` (their bytes are zeroized when the
    /// last in-flight request using them finishes); returns how many entries.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> u64 {
        self.cache.purge_tenant(tenant).await
    }

    /// Drops the caches' own references to removed and expired keys now (see the key cache's
    /// maintenance: the last `Arc` of a purged key, and so its zeroization, must not wait for
    /// unrelated traffic).
    pub async fn run_cache_maintenance(&self) {
        self.cache.run_maintenance().await;
    }

    /// Runs [`Keyring::run_cache_maintenance`] every `interval`, so that
    /// expired keys leave memory within about `interval` of their expiry
    /// even on an idle replica. Runs until the task is aborted.
    pub async fn run_cache_sweeper(self: Arc<Self>, interval: Duration) {
        self.cache.run_sweeper(interval).await;
    }

    // ----- revocation (`revocation`) ------------------------------------------------------

    /// Closes the gates of every tenant whose current binding is revoked or
    /// destroyed in the store (at start-up).
    pub async fn load_revocations(&self) -> Result<usize, ServiceError> {
        self.revocation.load_revocations().await
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
    ) -> Result<BindingCommit, ServiceError> {
        let outcome = self
            .revocation
            .revoke(tenant, to, source, actor, reason, observed_at_ms)
            .await?;
        self.answer(outcome).await
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
    ) -> Result<BindingCommit, ServiceError> {
        let outcome = self
            .revocation
            .restore(tenant, source, actor, reason)
            .await?;
        self.answer(outcome).await
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
    ) -> Result<BindingCommit, ServiceError> {
        let outcome = self
            .revocation
            .restore_binding(tenant, binding_id, source, actor, reason)
            .await?;
        self.answer(outcome).await
    }

    /// A revocation's or restoration's answer: the tenant as its store write left it, or, when
    /// nothing needed writing, as the store has it now (read after the transition, outside it: a
    /// failed read fails the answer, never the transition).
    async fn answer(&self, outcome: revocation::Outcome) -> Result<BindingCommit, ServiceError> {
        let tenant = match outcome.committed {
            Some(tenant) => tenant,
            None => {
                self.onboarding
                    .tenant_state(&outcome.binding.tenant)
                    .await?
            }
        };
        Ok(BindingCommit {
            binding: outcome.binding,
            tenant,
        })
    }

    /// Applies the tenant's key state as recorded in the store (by any replica) to this
    /// replica's gate and caches, exactly as the recording replica did (see
    /// `Revocation::apply_recorded_state`). Called for each notification of another replica's
    /// change and by [`Keyring::reconcile`].
    pub async fn apply_recorded_state(&self, tenant: &TenantId) -> Result<bool, ServiceError> {
        self.revocation.apply_recorded_state(tenant).await
    }

    /// A tenant's policy changed (on any replica): its cached keys are dropped, so that a
    /// shortened cache TTL bounds this replica's keys at once.
    pub async fn apply_recorded_policy(&self, tenant: &TenantId) -> u64 {
        self.rules.forget(tenant).await;
        self.revocation.apply_recorded_policy(tenant).await
    }

    /// Compares every tenant's current binding in the store with this replica's gates and
    /// applies the differences (see [`Keyring::apply_recorded_state`]), and drops the cached
    /// DEKs of every tenant with a shred this replica has not applied yet (see
    /// [`Keyring::apply_recorded_shred`]): the safety net for notifications lost while the
    /// listener was disconnected. Returns how many tenants' key states changed (shreds caught
    /// up with are not counted: a shred this replica was told of is applied again, which only
    /// reloads DEKs from the store).
    pub async fn reconcile(&self) -> Result<usize, ServiceError> {
        let changed = self.revocation.reconcile().await?;
        let shredded = self.data.catch_up_shreds().await?;
        if shredded > 0 {
            tracing::debug!(replica = %self.replica_id(), tenants = shredded, "reconciliation applied shreds");
        }
        Ok(changed)
    }

    // ----- shredding (`data_path/shred`) --------------------------------------------------

    /// Crypto-shreds one scope of `tenant`: its DEKs are deleted from the store (tombstones and
    /// audit records in the same transaction), this replica drops its cached DEKs of the tenant
    /// before returning, other replicas when the store announces it (docs/deleting-data.md).
    pub async fn shred_scope(
        &self,
        tenant: &TenantId,
        scope: &Scope,
        actor: &str,
        reason: &str,
    ) -> Result<keyward_store::ShredResult, ServiceError> {
        let result = self
            .data
            .shred_scope(tenant, scope, actor, reason, None)
            .await?;
        if !result.tombstones.is_empty() {
            self.data.erase_shredded().await;
        }
        Ok(result)
    }

    /// Retention shredding: up to `max_scopes` scopes of `tenant` that match `rule`, each in
    /// its own transaction; with `dry_run`, counts every matching scope and changes nothing.
    pub async fn shred_scopes(
        &self,
        tenant: &TenantId,
        rule: keyward_store::WrittenBefore,
        dry_run: bool,
        max_scopes: u32,
        actor: &str,
        reason: &str,
    ) -> Result<RetentionOutcome, ServiceError> {
        self.data
            .shred_scopes(tenant, rule, dry_run, max_scopes, actor, reason)
            .await
    }

    /// DEKs of `tenant` were shredded by another replica (the store's notification): this
    /// replica drops its cached DEKs of the tenant, and stops using any loaded before. Returns
    /// how many cache entries were dropped.
    pub async fn apply_recorded_shred(&self, tenant: &TenantId) -> u64 {
        self.data.forget_shredded(tenant).await
    }

    /// The rotation age after which a DEK never encrypts again (the retention rule's
    /// `max_age_ms`).
    pub fn dek_max_age(&self) -> Duration {
        self.data.rotation.max_age
    }

    // ----- monitor (`monitor`) ------------------------------------------------------------

    /// Checks one tenant's key with a canary unwrap and applies the outcome. `binding` may be
    /// an older read (a sweep's work list): the outcome is applied to the binding as it is now
    /// (compare-and-set), never to the state that was read.
    pub async fn check_binding(&self, binding: &KekBinding) -> Result<CheckOutcome, ServiceError> {
        self.monitor.check_binding(binding).await
    }

    /// Checks every tenant's current binding now, whether or not its key is held anywhere,
    /// paced by `max_checks_per_second`, outside the schedule (a full sweep, for operators and
    /// tests). Returns the outcomes, in tenant order.
    pub async fn check_all(
        &self,
        max_checks_per_second: u32,
    ) -> Result<Vec<(TenantId, CheckOutcome)>, ServiceError> {
        self.monitor.check_all(max_checks_per_second).await
    }

    /// One pass of the monitor: claims the checks due now from the shared schedule and runs
    /// them (concurrently, within the budget). Returns the outcomes of the checks that called
    /// the KMS, and how long to wait before the next pass (at most a second).
    pub async fn check_due(
        &self,
        policy: MonitorPolicy,
    ) -> Result<(Vec<(TenantId, CheckOutcome)>, Duration), ServiceError> {
        self.monitor.check_due(policy).await
    }

    /// The key-state monitor: passes over the shared schedule until the task is dropped.
    pub async fn run_monitor(self: Arc<Self>, policy: MonitorPolicy) {
        self.monitor.run(policy).await;
    }

    /// A pushed key-state event names a key: every binding registered with it (current or
    /// older) is checked with the KMS now (the event is a hint, the KMS is the truth).
    /// Returns (checked, revoked).
    pub async fn recheck_key(
        &self,
        provider: keyward_kms::ProviderKind,
        key_ref: &str,
    ) -> Result<(u32, u32), ServiceError> {
        self.monitor.recheck_key(provider, key_ref).await
    }

    /// [`Keyring::recheck_key`] with what each tenant's check found, for a key-event source
    /// (`crate::key_events`): it must know whether the KMS answered for every tenant
    /// ([`CheckOutcome::Unavailable`]: no verdict, the event is kept to be tried again). A failed
    /// check of one tenant (its stored key rejected, a store error) is that tenant's answer and
    /// does not stop the checks of the others bound to the key.
    pub async fn recheck_key_outcomes(
        &self,
        provider: keyward_kms::ProviderKind,
        key_ref: &str,
    ) -> Result<Vec<(TenantId, Result<CheckOutcome, ServiceError>)>, ServiceError> {
        self.monitor.recheck_key_outcomes(provider, key_ref).await
    }

    /// The distinct key references of `provider` that tenants' current bindings name (a key
    /// event's source matches its key against them; older bindings are found by
    /// [`Keyring::recheck_key_outcomes`] from the exact reference).
    pub async fn bound_key_refs(
        &self,
        provider: keyward_kms::ProviderKind,
    ) -> Result<Vec<String>, ServiceError> {
        let mut refs: Vec<String> = self
            .wiring
            .store
            .active_bindings()
            .await?
            .into_iter()
            .filter(|b| b.provider == provider)
            .map(|b| b.key_ref)
            .collect();
        refs.sort_unstable();
        refs.dedup();
        Ok(refs)
    }

    // ----- audit ledger (`ledger`) --------------------------------------------------------

    /// Writes the per-tenant, per-second counts of requests denied because of
    /// revocation (each second once it is over) and the per-tenant usage
    /// summaries (each minute once it is over) to the audit log.
    pub async fn flush_denials(&self) -> Result<usize, ServiceError> {
        self.ledger
            .flush_before(self.revocation.gates(), now_ms())
            .await
    }

    /// At shutdown: writes every pending count, the current second's included.
    pub async fn flush_all_denials(&self) -> Result<usize, ServiceError> {
        self.ledger
            .flush_before(self.revocation.gates(), i64::MAX)
            .await
    }

    /// Appends records that are not part of a lifecycle transaction (authorization denials
    /// here; the keyring's own: `keys_purged`, failed registrations), after any still pending;
    /// if the append fails they all stay pending for the next flush, never lost, and the
    /// failure is logged.
    pub async fn record_audit(&self, events: Vec<AuditEvent>) {
        self.ledger.record(events).await;
    }

    /// Every second, writes the previous seconds' revocation denials and usage summaries, then
    /// the authorization denials that `authz_denials` takes for the seconds over before the
    /// time it is given, to the audit log. Runs until the task is aborted.
    pub async fn run_audit_flush(
        self: Arc<Self>,
        authz_denials: impl Fn(i64) -> Vec<AuditEvent> + Send + Sync,
    ) {
        self.ledger
            .run(self.revocation.gates(), authz_denials)
            .await;
    }

    /// Audit records waiting for the store, and those dropped because too many waited.
    pub fn pending_audit(&self) -> (usize, u64) {
        self.ledger.pending()
    }
}

// ----- shared by the parts ------------------------------------------------------------------

async fn require_tenant(store: &dyn Store, id: &TenantId) -> Result<TenantRecord, ServiceError> {
    store
        .get_tenant(id)
        .await?
        .ok_or_else(|| ServiceError::TenantNotFound(id.to_string()))
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
