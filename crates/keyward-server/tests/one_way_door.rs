//! Regression tests for the paths that reopened revoked data (issue #16): each test drives the
//! real keyring over the real SQLite store and the real local KEK provider through one
//! interleaving that broke the promise, and asserts that the data stays refused.
//!
//! The provider is wrapped in `keyward_kms::controlled::Controlled`, which can hold an unwrap (the
//! KMS has answered; the answer waits until the test releases it) or fail it as an unreachable KMS
//! would; the store in a
//! decorator that can run a step of "another replica" just before a write commits, or fail
//! standalone audit appends. Steps are ordered by these hooks, never by sleeps.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use keyward_audit::{AuditEvent, RevocationSource};
use keyward_envelope::{EncryptionContext, KeyId, TenantId};
use keyward_kms::{KeyRef, ProviderKind, controlled::Controlled, local::LocalProvider};
use keyward_server::{
    CachePolicy, Keyring, Providers, keyring::CheckOutcome, keyring::RotationPolicy,
};
use keyward_store::{
    AuditFn, AuditQuery, BindingChange, BindingCommit, ChainHead, Checkpoint, DekInsert, DekRecord,
    KekBinding, KekState, NewDek, NewKekBinding, Record, Scope, StateChange, StateUpdate, Store,
    StoreCounts, StoreError, TenantKeyRecord, TenantPolicy, TenantRecord, TenantState,
    sqlite::SqliteStore,
};

// ----- a store with hooks --------------------------------------------------------------------

type Hook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// Delegates to SQLite; can run one step of "another replica" right before the next
/// `set_binding_state` commits (after its caller decided), and fail standalone audit appends.
struct HookedStore {
    inner: Arc<SqliteStore>,
    before_state_write: Mutex<Option<Hook>>,
    fail_appends: AtomicBool,
    fail_binding_reads: AtomicBool,
    fail_state_writes: AtomicBool,
    /// `get_dek` calls so far.
    dek_reads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for HookedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn backend_down() -> StoreError {
    StoreError::Backend("test: the store refuses writes".into())
}

#[async_trait]
impl Store for HookedStore {
    async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        self.inner.create_tenant(id, display_name, audit).await
    }
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        self.inner.get_tenant(id).await
    }
    async fn set_tenant_policy(
        &self,
        id: &TenantId,
        policy: TenantPolicy,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantState, StoreError> {
        self.inner.set_tenant_policy(id, policy, audit).await
    }
    async fn bind_kek(
        &self,
        binding: NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<BindingCommit, StoreError> {
        self.inner.bind_kek(binding, audit).await
    }
    async fn active_binding(&self, tenant: &TenantId) -> Result<Option<KekBinding>, StoreError> {
        if self.fail_binding_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("test: the store cannot be read".into()));
        }
        self.inner.active_binding(tenant).await
    }
    async fn active_bindings(&self) -> Result<Vec<KekBinding>, StoreError> {
        self.inner.active_bindings().await
    }
    async fn list_bindings(&self, tenant: &TenantId) -> Result<Vec<KekBinding>, StoreError> {
        self.inner.list_bindings(tenant).await
    }

    async fn binding_usage(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<keyward_store::BindingUsage>, StoreError> {
        self.inner.binding_usage(tenant).await
    }

    async fn bindings_with_key(
        &self,
        provider: keyward_store::ProviderKind,
        key_ref: &str,
    ) -> Result<Vec<KekBinding>, StoreError> {
        self.inner.bindings_with_key(provider, key_ref).await
    }

    async fn hold_key(
        &self,
        tenant: &TenantId,
        binding_id: i64,
        until_ms: i64,
        check_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .hold_key(tenant, binding_id, until_ms, check_at_ms)
            .await
    }

    async fn claim_key_checks(
        &self,
        replica: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<keyward_store::KeyCheck>, StoreError> {
        self.inner
            .claim_key_checks(replica, now_ms, lease_until_ms, limit)
            .await
    }

    async fn finish_key_check(
        &self,
        replica: &str,
        binding_id: i64,
        now_ms: i64,
        next_due_ms: i64,
        unheld_due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.inner
            .finish_key_check(replica, binding_id, now_ms, next_due_ms, unheld_due_ms)
            .await
    }

    async fn next_key_check_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        self.inner.next_key_check_due(now_ms).await
    }
    async fn set_binding_state(
        &self,
        update: StateUpdate,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<BindingCommit, StoreError> {
        let hook = self.before_state_write.lock().unwrap().take();
        if let Some(hook) = hook {
            hook().await;
        }
        if self.fail_state_writes.load(Ordering::SeqCst) {
            return Err(backend_down());
        }
        self.inner.set_binding_state(update, audit).await
    }
    async fn scheduled_rekeys(&self) -> Result<Vec<TenantId>, StoreError> {
        self.inner.scheduled_rekeys().await
    }
    async fn rekey_state(
        &self,
        tenant: &TenantId,
    ) -> Result<keyward_store::RekeyState, StoreError> {
        self.inner.rekey_state(tenant).await
    }
    async fn rewrap_tenant_key(
        &self,
        rewrap: keyward_store::TenantKeyRewrap,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        self.inner.rewrap_tenant_key(rewrap, audit).await
    }
    async fn retire_bindings(
        &self,
        tenant: &TenantId,
        audit: AuditFn<'_, keyward_store::RetiredBindings>,
    ) -> Result<keyward_store::RetiredBindings, StoreError> {
        self.inner.retire_bindings(tenant, audit).await
    }
    async fn get_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<TenantKeyRecord>, StoreError> {
        self.inner.get_tenant_key(tenant, id).await
    }
    async fn unauthenticated_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>, StoreError> {
        self.inner.unauthenticated_tenant_keys().await
    }
    async fn authenticate_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        mac: Vec<u8>,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        self.inner
            .authenticate_tenant_key(tenant, id, mac, audit)
            .await
    }
    async fn insert_dek(
        &self,
        dek: NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError> {
        self.inner.insert_dek(dek, audit).await
    }
    async fn active_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<Option<DekRecord>, StoreError> {
        self.inner.active_dek(tenant, scope).await
    }
    async fn get_dek(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<DekRecord>, StoreError> {
        self.dek_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_dek(tenant, id).await
    }
    async fn add_dek_usage(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        messages: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        self.inner.add_dek_usage(tenant, id, messages, bytes).await
    }
    async fn shred_scope(
        &self,
        shred: keyward_store::ScopeShred,
        audit: keyward_store::AuditFn<'_, keyward_store::ShredResult>,
    ) -> Result<keyward_store::ShredResult, StoreError> {
        self.inner.shred_scope(shred, audit).await
    }
    async fn erase_shredded(&self) {
        self.inner.erase_shredded().await;
    }
    async fn shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &keyward_store::WrittenBefore,
        limit: u32,
    ) -> Result<Vec<keyward_store::ShredCandidate>, StoreError> {
        self.inner.shred_candidates(tenant, rule, limit).await
    }
    async fn count_shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &keyward_store::WrittenBefore,
    ) -> Result<(u64, u64), StoreError> {
        self.inner.count_shred_candidates(tenant, rule).await
    }
    async fn dek_tombstone(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<keyward_store::DekTombstone>, StoreError> {
        self.inner.dek_tombstone(tenant, id).await
    }
    async fn shreds_after(&self, after_seq: i64) -> Result<Vec<(TenantId, i64)>, StoreError> {
        self.inner.shreds_after(after_seq).await
    }
    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.inner.counts().await
    }
    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<Record>, StoreError> {
        if self.fail_appends.load(Ordering::SeqCst) {
            return Err(backend_down());
        }
        self.inner.append_audit(events).await
    }
    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        self.inner.audit_head().await
    }
    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<Record>, StoreError> {
        self.inner.audit_records(query).await
    }
    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.inner.insert_checkpoint(checkpoint).await
    }
    async fn checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, StoreError> {
        self.inner.checkpoints(from_seq, to_seq).await
    }

    async fn list_tenant_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<TenantKeyRecord>, StoreError> {
        self.inner.list_tenant_keys(tenant).await
    }
    async fn list_deks(
        &self,
        tenant: &TenantId,
        after: Option<&KeyId>,
        limit: u32,
    ) -> Result<Vec<DekRecord>, StoreError> {
        self.inner.list_deks(tenant, after, limit).await
    }
    async fn list_tombstones(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<keyward_store::DekTombstone>, StoreError> {
        self.inner.list_tombstones(tenant, after_seq, limit).await
    }
}

// ----- fixture -------------------------------------------------------------------------------

struct Fixture {
    _dir: tempfile::TempDir,
    kms_dir: std::path::PathBuf,
    store: Arc<HookedStore>,
    kms: Arc<Controlled<LocalProvider>>,
}

const LOOSE: RotationPolicy = RotationPolicy {
    max_age: Duration::from_secs(3600),
    max_messages: 1 << 20,
    max_bytes: 1 << 30,
};

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kms_dir = dir.path().join("kms");
        let inner = LocalProvider::open(&kms_dir).unwrap();
        inner.create_key("k1").unwrap();
        inner.create_key("k2").unwrap();
        let store = Arc::new(HookedStore {
            inner: Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap()),
            before_state_write: Mutex::new(None),
            fail_appends: AtomicBool::new(false),
            fail_state_writes: AtomicBool::new(false),
            dek_reads: std::sync::atomic::AtomicU64::new(0),
            fail_binding_reads: AtomicBool::new(false),
        });
        let kms = Arc::new(Controlled::new(inner));
        Self {
            _dir: dir,
            kms_dir,
            store,
            kms,
        }
    }

    /// One replica on the shared store.
    fn replica(&self, name: &str) -> Arc<Keyring> {
        self.replica_with_ttl(name, Duration::from_secs(300))
    }

    fn replica_with_ttl(&self, name: &str, ttl: Duration) -> Arc<Keyring> {
        Arc::new(
            Keyring::new(
                self.store.clone(),
                Providers::default().with(self.kms.clone()),
                CachePolicy {
                    ttl,
                    max_tenant_keys: 1000,
                    max_deks: 10_000,
                },
                LOOSE,
                Arc::new(keyward_audit::IdentifierHasher::new([7; 32])),
            )
            .with_replica_id(name),
        )
    }

    /// The customer's console: enables or disables a key at the KMS.
    fn set_key_enabled(&self, key: &str, enabled: bool) {
        LocalProvider::open(&self.kms_dir)
            .unwrap()
            .set_enabled(key, enabled)
            .unwrap();
    }

    fn unwraps(&self) -> u64 {
        self.kms.unwraps()
    }

    async fn binding(&self, t: &TenantId) -> KekBinding {
        self.store.active_binding(t).await.unwrap().unwrap()
    }

    async fn events(&self, t: &TenantId, kind: &str) -> Vec<AuditEvent> {
        self.store
            .audit_records(
                &AuditQuery::default()
                    .with_tenant(t.clone())
                    .with_event_type(kind.to_owned()),
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.event().clone())
            .collect()
    }
}

fn tenant(s: &str) -> TenantId {
    TenantId::try_from(s).unwrap()
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn onboard(k: &Keyring, t: &TenantId, key: &str) {
    k.create_tenant(t, "Test tenant", "test".to_owned())
        .await
        .unwrap();
    register(k, t, key).await;
}

async fn register(k: &Keyring, t: &TenantId, key: &str) -> KekBinding {
    k.register_key(t, &KeyRef::new(ProviderKind::Local, key))
        .await
        .unwrap()
        .binding
}

async fn seal(k: &Keyring, t: &TenantId, plaintext: &[u8]) -> Vec<u8> {
    k.encrypt(
        t,
        &Scope::default_scope(),
        &EncryptionContext::empty(),
        plaintext,
    )
    .await
    .unwrap()
    .0
}

async fn open_reason(k: &Keyring, t: &TenantId, envelope: &[u8]) -> &'static str {
    match k.decrypt(t, envelope, &EncryptionContext::empty()).await {
        Ok(_) => "OK",
        Err(e) => e.reason(),
    }
}

async fn revoke_explicitly(k: &Keyring, t: &TenantId) -> KekBinding {
    revoke_result(k, t).await.unwrap()
}

async fn revoke_result(
    k: &Keyring,
    t: &TenantId,
) -> Result<KekBinding, keyward_server::error::ServiceError> {
    k.revoke(
        t,
        KekState::Revoked,
        RevocationSource::Explicit,
        Some("ciso".to_owned()),
        "break glass",
        now_ms(),
    )
    .await
    .map(|commit| commit.binding)
}

// ----- 1. the monitor never lifts an explicit revocation --------------------------------------

#[tokio::test]
async fn revoke_key_after_the_monitor_revoked_is_sticky_and_audited() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("sticky");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;

    // The customer disables the key: the monitor revokes.
    fx.set_key_enabled("k1", false);
    let b = fx.binding(&t).await;
    assert_eq!(a.check_binding(&b).await.unwrap(), CheckOutcome::Revoked);
    assert_eq!(
        fx.binding(&t).await.state_cause,
        Some(RevocationSource::Monitor)
    );

    // Break glass on top: recorded, and the binding says explicit.
    let revoked = revoke_explicitly(&a, &t).await;
    assert_eq!(revoked.state, KekState::Revoked);
    assert_eq!(revoked.state_cause, Some(RevocationSource::Explicit));
    let transitions: Vec<_> = fx
        .events(&t, "revocation_state_changed")
        .await
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::RevocationStateChanged(s) => Some(s.source),
            _ => None,
        })
        .collect();
    assert_eq!(
        transitions,
        vec![RevocationSource::Monitor, RevocationSource::Explicit],
        "the upgrade to an explicit revocation is audited"
    );

    // The key comes back (the customer, or whoever holds their KMS): the monitor must not lift
    // the break-glass revocation, however many sweeps run.
    fx.set_key_enabled("k1", true);
    for _ in 0..3 {
        let b = fx.binding(&t).await;
        assert_eq!(a.check_binding(&b).await.unwrap(), CheckOutcome::Unchanged);
        assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
    }
    a.restore(
        &t,
        RevocationSource::Explicit,
        Some("ciso".into()),
        "all clear",
    )
    .await
    .unwrap();
    assert_eq!(open_reason(&a, &t, &env).await, "OK");
}

#[tokio::test]
async fn a_sweep_that_read_unavailable_before_revoke_key_does_not_restore() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("stale-sweep");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;

    fx.kms.set_outage(true);
    let b = fx.binding(&t).await;
    assert_eq!(
        a.check_binding(&b).await.unwrap(),
        CheckOutcome::Unavailable
    );
    // A sweep reads the work list now (unavailable) ...
    let stale = fx.binding(&t).await;
    assert_eq!(stale.state, KekState::Unavailable);
    // ... then RevokeKey commits, then the KMS is back and the sweep reaches the tenant.
    revoke_explicitly(&a, &t).await;
    fx.kms.set_outage(false);
    assert_eq!(
        a.check_binding(&stale).await.unwrap(),
        CheckOutcome::Unchanged,
        "a decision from the stale read must not lift the explicit revocation"
    );
    assert_eq!(fx.binding(&t).await.state, KekState::Revoked);
    assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
}

// ----- 2. replicas never overwrite a newer decision -------------------------------------------

#[tokio::test]
async fn a_replica_that_decided_from_an_older_read_does_not_overwrite_anothers_revocation() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let b = fx.replica("b");
    let t = tenant("two-replicas");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;
    assert_eq!(open_reason(&b, &t, &env).await, "OK");

    // B's sweep meets a KMS outage and decides "unavailable"; just before its write commits,
    // replica A records an explicit revocation.
    let a2 = Arc::clone(&a);
    let t2 = t.clone();
    *fx.store.before_state_write.lock().unwrap() = Some(Box::new(move || {
        Box::pin(async move {
            revoke_explicitly(&a2, &t2).await;
        })
    }));
    fx.kms.set_outage(true);
    let read = fx.binding(&t).await;
    let outcome = b.check_binding(&read).await.unwrap();
    assert_eq!(outcome, CheckOutcome::Unavailable);
    let now = fx.binding(&t).await;
    assert_eq!(now.state, KekState::Revoked, "A's revocation stands");
    assert_eq!(now.state_cause, Some(RevocationSource::Explicit));

    // B learns the state from the store (the notification, or reconciliation): closed, and its
    // cached keys purged; a later canary success on B does not reopen anything.
    fx.kms.set_outage(false);
    b.reconcile().await.unwrap();
    assert_eq!(open_reason(&b, &t, &env).await, "KEY_REVOKED");
    let read = fx.binding(&t).await;
    assert_eq!(
        b.check_binding(&read).await.unwrap(),
        CheckOutcome::Unchanged
    );
    b.reconcile().await.unwrap();
    assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
    assert_eq!(open_reason(&b, &t, &env).await, "KEY_REVOKED");
}

// ----- 3. a new registration serves new data only ---------------------------------------------

#[tokio::test]
async fn register_key_after_a_revocation_serves_new_data_only_until_that_binding_is_restored() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let b = fx.replica("b");
    let t = tenant("rebind");
    onboard(&a, &t, "k1").await;
    let old = seal(&a, &t, b"written under k1").await;
    assert_eq!(
        open_reason(&b, &t, &old).await,
        "OK",
        "B has k1's keys cached"
    );
    let revoked = revoke_explicitly(&a, &t).await;

    // A new key is registered on A. A serves new data at once (its own gate reopens) ...
    register(&a, &t, "k2").await;
    let new = seal(&a, &t, b"written under k2").await;
    assert_eq!(open_reason(&a, &t, &new).await, "OK");
    // ... but the data under the revoked binding stays refused, on A and on B once B has
    // applied the store's state (B still had k1's keys cached: they must be purged).
    assert_eq!(open_reason(&a, &t, &old).await, "KEY_REVOKED");
    b.apply_recorded_state(&t).await.unwrap();
    assert_eq!(open_reason(&b, &t, &old).await, "KEY_REVOKED");
    assert_eq!(open_reason(&b, &t, &new).await, "OK");
    // A replica that missed both notifications finds out at reconciliation.
    let c = fx.replica("c");
    assert_eq!(open_reason(&c, &t, &old).await, "KEY_REVOKED");
    assert!(
        fx.events(&t, "restored").await.is_empty(),
        "nothing was restored"
    );

    // Restoring that binding (the old key works) makes its data readable again, audited.
    a.restore_binding(
        &t,
        Some(revoked.id),
        RevocationSource::Explicit,
        Some("ciso".into()),
        "old key back",
    )
    .await
    .unwrap();
    assert_eq!(open_reason(&a, &t, &old).await, "OK");
    b.apply_recorded_state(&t).await.unwrap();
    assert_eq!(open_reason(&b, &t, &old).await, "OK");
    assert_eq!(fx.events(&t, "restored").await.len(), 1);
    assert_eq!(
        fx.binding(&t).await.key_ref,
        "k2",
        "the new binding stays current"
    );
}

// ----- 5. no per-tenant setting stretches the window past the server's TTL --------------------

#[tokio::test]
async fn a_tenant_cache_ttl_above_the_servers_is_refused_and_a_stored_one_is_clamped() {
    let fx = Fixture::new().await;
    let a = fx.replica_with_ttl("a", Duration::from_secs(60));
    let t = tenant("ttl");
    onboard(&a, &t, "k1").await;
    let err = a
        .set_tenant_policy(
            &t,
            TenantPolicy {
                cache_ttl_seconds: Some(61),
                monitor_interval_seconds: None,
                auto_rekey: false,
                decrypt_purposes: 0,
            },
            "admin".to_owned(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "INVALID_ARGUMENT");
    assert!(err.to_string().contains("60 s"), "names the bound: {err}");
    assert_eq!(
        fx.store.get_tenant(&t).await.unwrap().unwrap().policy,
        TenantPolicy::default(),
        "nothing changed"
    );
    a.set_tenant_policy(
        &t,
        TenantPolicy {
            cache_ttl_seconds: Some(60),
            monitor_interval_seconds: None,
            auto_rekey: false,
            decrypt_purposes: 0,
        },
        "admin".to_owned(),
    )
    .await
    .unwrap();

    // A longer value written before the bound existed (straight into the store) is clamped: a
    // replica with a 1 s TTL asks the KMS again after 1 s, not after the stored hour.
    fx.store
        .set_tenant_policy(
            &t,
            TenantPolicy {
                cache_ttl_seconds: Some(3600),
                monitor_interval_seconds: None,
                auto_rekey: false,
                decrypt_purposes: 0,
            },
            &|_| Vec::new(),
        )
        .await
        .unwrap();
    let short = fx.replica_with_ttl("short", Duration::from_secs(1));
    let env = seal(&short, &t, b"prompt").await;
    let before = fx.unwraps();
    assert_eq!(open_reason(&short, &t, &env).await, "OK");
    assert_eq!(fx.unwraps(), before, "cached");
    // Waiting out the TTL is what is under test here.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    short.run_cache_maintenance().await;
    assert_eq!(open_reason(&short, &t, &env).await, "OK");
    assert_eq!(
        fx.unwraps(),
        before + 1,
        "the tenant key was unwrapped again after the server's TTL"
    );
}

// ----- 6. aggregated counts are never lost -----------------------------------------------------

#[tokio::test]
async fn denial_counts_survive_a_failed_append_and_add_up_exactly() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("counts");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;
    revoke_explicitly(&a, &t).await;
    let denied = 7;
    for _ in 0..denied {
        assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
    }
    fx.store.fail_appends.store(true, Ordering::SeqCst);
    assert!(a.flush_all_denials().await.is_err(), "the store is down");
    // Purge records are standalone appends too: one more revocation-path purge while down.
    a.apply_recorded_state(&t).await.unwrap();
    fx.store.fail_appends.store(false, Ordering::SeqCst);
    a.flush_all_denials().await.unwrap();
    let counted: u64 = fx
        .events(&t, "revocation_denials")
        .await
        .iter()
        .map(|e| match e {
            AuditEvent::RevocationDenials { count, .. } => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(counted, denied, "every denial reached the audit log once");
    assert_eq!(a.pending_audit(), (0, 0));
}

/// Access counts (docs/justifications.md) from concurrent callers, several principals and
/// purposes, with the store refusing appends for a while: every call is in exactly one
/// `access_summary` record once the store is back, and the sums match what the callers did.
#[tokio::test]
async fn access_counts_from_concurrent_callers_survive_a_failed_append_and_add_up_exactly() {
    use keyward_server::justification::{Justification, Purpose};
    use keyward_server::keyring::AccessCall;
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("access-counts");
    onboard(&a, &t, "k1").await;
    let principals = ["Service::\"chat-api\"", "Service::\"support-tool\""];
    let purposes = [
        Some(Purpose::ModelInference),
        Some(Purpose::CustomerSupport),
        None,
    ];
    let per_task = 250u64;
    let mut tasks = Vec::new();
    for (p, principal) in principals.iter().enumerate() {
        for (q, purpose) in purposes.iter().enumerate() {
            let (a, t, principal, purpose) = (Arc::clone(&a), t.clone(), *principal, *purpose);
            tasks.push(tokio::spawn(async move {
                for i in 0..per_task {
                    a.record_access(AccessCall {
                        tenant: t.clone(),
                        principal: principal.into(),
                        action: "Decrypt",
                        justification: purpose.map(|purpose| Justification {
                            purpose,
                            reference: Some(format!("T-{p}{q}-{}", i % 3)),
                        }),
                        items: 1 + (i % 2),
                        errors: i % 5 / 4,
                        bytes: 100 + i,
                    });
                    if i == per_task / 2 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        // Half-way through the load the store goes down; the flush keeps what it took.
        if p == 0 {
            fx.store.fail_appends.store(true, Ordering::SeqCst);
            assert!(a.flush_all_denials().await.is_err(), "the store is down");
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        a.flush_all_denials().await.is_err(),
        "the store is still down"
    );
    fx.store.fail_appends.store(false, Ordering::SeqCst);
    a.flush_all_denials().await.unwrap();
    // (principal, purpose) -> (requests, items, errors, bytes, most references in a record)
    type Sums = HashMap<(String, Option<String>), (u64, u64, u64, u64, usize)>;
    let mut sums = Sums::new();
    for e in fx.events(&t, "access_summary").await {
        let AuditEvent::AccessSummary {
            principal,
            action,
            purpose,
            requests,
            items,
            errors,
            bytes,
            references,
            references_truncated,
            ..
        } = e
        else {
            panic!("{e:?}");
        };
        assert_eq!(action, "Decrypt");
        assert!(!references_truncated);
        let s = sums.entry((principal, purpose)).or_default();
        s.0 += requests;
        s.1 += items;
        s.2 += errors;
        s.3 += bytes;
        s.4 = s.4.max(references.len());
    }
    let n = per_task;
    let expected = (
        n,
        (0..n).map(|i| 1 + i % 2).sum::<u64>(),
        (0..n).map(|i| i % 5 / 4).sum::<u64>(),
        (0..n).map(|i| 100 + i).sum::<u64>(),
    );
    assert_eq!(sums.len(), principals.len() * purposes.len(), "{sums:?}");
    for ((principal, purpose), s) in &sums {
        assert_eq!((s.0, s.1, s.2, s.3), expected, "{principal} {purpose:?}");
        let refs = if purpose.is_some() { 3 } else { 0 };
        assert_eq!(s.4, refs, "{principal} {purpose:?}");
    }
    assert_eq!(a.pending_audit(), (0, 0));
}

/// Found by the PostgreSQL restart test (#27 item 13): a `RevokeKey` made while the store could
/// not be read failed before it closed anything, and the replica went on serving the tenant.
#[tokio::test]
async fn a_revoke_key_the_store_cannot_read_for_still_denies_and_purges_on_this_replica() {
    a_revoke_key_the_store_did_not_take(|s| &s.fail_binding_reads).await;
}

/// The same when the store can be read but does not take the revocation's write.
#[tokio::test]
async fn a_revoke_key_the_store_cannot_write_still_denies_and_purges_on_this_replica() {
    a_revoke_key_the_store_did_not_take(|s| &s.fail_state_writes).await;
}

/// A `RevokeKey` while the store `failing` (a switch of [`HookedStore`]) is on: refused with
/// `STORE_ERROR` and not recorded, but denied on this replica from the call on, its cached keys
/// purged (and the purge recorded), not reopened by reconciliation, no new key registered over
/// it; recorded when repeated.
async fn a_revoke_key_the_store_did_not_take(failing: fn(&HookedStore) -> &AtomicBool) {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("storedown");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;
    assert_eq!(open_reason(&a, &t, &env).await, "OK", "cached and served");

    failing(&fx.store).store(true, Ordering::SeqCst);
    let failed = revoke_result(&a, &t).await;
    assert_eq!(failed.unwrap_err().reason(), "STORE_ERROR");
    failing(&fx.store).store(false, Ordering::SeqCst);
    assert_eq!(fx.binding(&t).await.state, KekState::Active, "not recorded");

    assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
    let purged = fx.events(&t, "keys_purged").await;
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert!(matches!(purged[0], AuditEvent::KeysPurged { entries, .. } if entries > 0));
    a.apply_recorded_state(&t).await.unwrap();
    assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
    let refused = a
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "k2"))
        .await;
    assert_eq!(refused.unwrap_err().reason(), "CONFLICT");

    // Repeated once the store answers: recorded, and the gate stays closed.
    let recorded = revoke_explicitly(&a, &t).await;
    assert_eq!(recorded.state, KekState::Revoked);
    assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
    register(&a, &t, "k2").await;
}

/// A RevokeKey that failed on the store is lifted on its replica by RestoreKey there (the
/// operator's "it was a mistake"), even though the store never recorded it; another replica
/// never closed.
#[tokio::test]
async fn restore_key_lifts_a_revoke_key_that_failed_on_the_store() {
    let fx = Fixture::new().await;
    let (a, b) = (fx.replica("a"), fx.replica("b"));
    let t = tenant("mistake");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;
    fx.store.fail_binding_reads.store(true, Ordering::SeqCst);
    let failed = revoke_result(&a, &t).await;
    assert_eq!(failed.unwrap_err().reason(), "STORE_ERROR");
    fx.store.fail_binding_reads.store(false, Ordering::SeqCst);
    assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
    assert_eq!(
        open_reason(&b, &t, &env).await,
        "OK",
        "not recorded: b never closed"
    );

    let restored = a
        .restore(
            &t,
            RevocationSource::Explicit,
            Some("ciso".to_owned()),
            "mistake",
        )
        .await
        .unwrap()
        .binding;
    assert_eq!(restored.state, KekState::Active);
    assert_eq!(open_reason(&a, &t, &env).await, "OK");
}

#[tokio::test]
async fn a_purge_record_that_failed_is_appended_later() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("purge-record");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;
    assert_eq!(open_reason(&a, &t, &env).await, "OK");
    // The revocation commits (its record is in its transaction); the standalone keys_purged
    // append that follows fails.
    fx.store.fail_appends.store(true, Ordering::SeqCst);
    revoke_explicitly(&a, &t).await;
    assert!(fx.events(&t, "keys_purged").await.is_empty());
    fx.store.fail_appends.store(false, Ordering::SeqCst);
    a.flush_denials().await.unwrap();
    let purged = fx.events(&t, "keys_purged").await;
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert!(matches!(purged[0], AuditEvent::KeysPurged { entries, .. } if entries > 0));
}

// ----- 8. an older binding's refusal affects that binding only ---------------------------------

#[tokio::test]
async fn an_old_bindings_refusal_does_not_flush_the_tenants_cache_and_is_remembered() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("old-refusal");
    onboard(&a, &t, "k1").await;
    let old = seal(&a, &t, b"under k1").await;
    register(&a, &t, "k2").await;
    let new = seal(&a, &t, b"under k2").await;
    // The customer retires k1 at the KMS; k1's keys leave this replica's cache (TTL).
    fx.set_key_enabled("k1", false);
    a.purge_tenant(&t).await;
    assert_eq!(open_reason(&a, &t, &new).await, "OK");
    let warm = fx.unwraps();

    assert_eq!(open_reason(&a, &t, &old).await, "KEY_REFUSED");
    assert_eq!(fx.unwraps(), warm + 1, "one KMS call for the old key");
    for _ in 0..5 {
        assert_eq!(open_reason(&a, &t, &new).await, "OK");
        assert_eq!(open_reason(&a, &t, &old).await, "KEY_REVOKED");
    }
    assert_eq!(
        fx.unwraps(),
        warm + 1,
        "the refusal is remembered, and the new key's cached keys were never flushed"
    );
    assert_eq!(
        fx.binding(&t).await.state,
        KekState::Active,
        "the current binding is untouched"
    );
}

// ----- 4 (keyring part). plaintext held by a caller is checked again before it leaves ---------

#[tokio::test]
async fn plaintext_held_across_a_revocation_is_not_released() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("held");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;
    let (plaintext, generation) = a
        .decrypt_held(&t, &env, &EncryptionContext::empty())
        .await
        .unwrap();
    assert_eq!(&plaintext[..], b"prompt");
    a.release(&t, generation).unwrap();
    revoke_explicitly(&a, &t).await;
    assert_eq!(
        a.release(&t, generation).unwrap_err().reason(),
        "KEY_REVOKED"
    );
}

// ----- the hold hook: an unwrap in flight across RevokeKey + RegisterKey ----------------------

#[tokio::test]
async fn an_unwrap_in_flight_across_revoke_and_register_returns_no_plaintext() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("in-flight");
    onboard(&a, &t, "k1").await;
    let env = seal(&a, &t, b"prompt").await;
    a.purge_tenant(&t).await;
    fx.kms.hold_next_unwrap();
    let reader = {
        let a = Arc::clone(&a);
        let t = t.clone();
        let env = env.clone();
        tokio::spawn(async move { open_reason(&a, &t, &env).await })
    };
    fx.kms.held().await;
    revoke_explicitly(&a, &t).await;
    register(&a, &t, "k2").await;
    fx.kms.release();
    let reason = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(reason, "OK", "no plaintext of the revoked binding");
    assert_eq!(open_reason(&a, &t, &env).await, "KEY_REVOKED");
}

// ----- shredding: a shredded DEK is never used again (issue #21) -----------------------------

async fn seal_in(k: &Keyring, t: &TenantId, scope: &str, plaintext: &[u8]) -> (Vec<u8>, KeyId) {
    k.encrypt(
        t,
        &Scope::try_from(scope).unwrap(),
        &EncryptionContext::empty(),
        plaintext,
    )
    .await
    .unwrap()
}

async fn shred(k: &Keyring, t: &TenantId, scope: &str) -> keyward_store::ShredResult {
    k.shred_scope(
        t,
        &Scope::try_from(scope).unwrap(),
        "TenantAdmin::\"secops\"",
        "erasure request 7",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_shredded_scope_is_refused_with_its_own_reason_and_the_others_keep_working() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("shred-basic");
    onboard(&a, &t, "k1").await;
    let (gone, gone_dek) = seal_in(&a, &t, "conv-1", b"erase me").await;
    let (kept, _) = seal_in(&a, &t, "conv-2", b"keep me").await;
    assert_eq!(
        open_reason(&a, &t, &gone).await,
        "OK",
        "cached before the shred"
    );

    let result = shred(&a, &t, "conv-1").await;
    assert_eq!(result.tombstones.len(), 1);
    assert_eq!(result.tombstones[0].id, gone_dek);
    let err = a
        .decrypt(&t, &gone, &EncryptionContext::empty())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "DATA_KEY_SHREDDED");
    assert!(
        matches!(err.root(), keyward_server::error::ServiceError::DataKeyShredded { shredded_at_ms, .. } if *shredded_at_ms == result.shredded_at_ms),
        "{err:?}"
    );
    assert_eq!(open_reason(&a, &t, &kept).await, "OK");
    // An envelope of the tenant under a DEK that never existed in this store (sealed by
    // another deployment) is still DATA_KEY_NOT_FOUND, not "shredded".
    let elsewhere = Fixture::new().await;
    let other = elsewhere.replica("elsewhere");
    onboard(&other, &t, "k1").await;
    let (foreign, _) = seal_in(&other, &t, "conv-1", b"x").await;
    assert_eq!(open_reason(&a, &t, &foreign).await, "DATA_KEY_NOT_FOUND");
    // The scope takes a fresh DEK.
    let (fresh, fresh_dek) = seal_in(&a, &t, "conv-1", b"new turn").await;
    assert_ne!(fresh_dek, gone_dek);
    assert_eq!(open_reason(&a, &t, &fresh).await, "OK");
    // The signed log names it: a dek_retired (shredded) per DEK, then scope_shredded.
    let retired = fx.events(&t, "dek_retired").await;
    assert!(retired.iter().any(|e| matches!(
        e,
        AuditEvent::DekRetired { dek_id, reason: keyward_audit::DekRetireReason::Shredded, .. } if *dek_id == gone_dek
    )));
    let shreds = fx.events(&t, "scope_shredded").await;
    assert_eq!(shreds.len(), 1);
    assert!(
        matches!(
            &shreds[0],
            AuditEvent::ScopeShredded { deks: 1, actor, reason, retention_cutoff_ms: None, .. }
                if actor == "TenantAdmin::\"secops\"" && reason == "erasure request 7"
        ),
        "{:?}",
        shreds[0]
    );
}

#[tokio::test]
async fn a_dek_loading_across_a_shred_is_never_served() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let b = fx.replica("b");
    let t = tenant("shred-race-read");
    onboard(&a, &t, "k1").await;
    let (env, _) = seal_in(&a, &t, "conv-1", b"erase me").await;
    // Replica b reads the DEK's row, then waits on the KMS for its tenant key.
    fx.kms.hold_next_unwrap();
    let reader = {
        let (b, t, env) = (Arc::clone(&b), t.clone(), env.clone());
        tokio::spawn(async move { open_reason(&b, &t, &env).await })
    };
    fx.kms.held().await;
    // Meanwhile replica a shreds the scope, and b is told (the store's notification).
    shred(&a, &t, "conv-1").await;
    b.apply_recorded_shred(&t).await;
    fx.kms.release();
    let in_flight = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_flight, "DATA_KEY_SHREDDED");
    // The key b loaded from its earlier read never serves a later request either.
    assert_eq!(open_reason(&b, &t, &env).await, "DATA_KEY_SHREDDED");
}

#[tokio::test]
async fn an_encrypt_loading_its_dek_across_a_shred_seals_under_a_fresh_one() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let b = fx.replica("b");
    let t = tenant("shred-race-write");
    onboard(&a, &t, "k1").await;
    let (_, shredded) = seal_in(&a, &t, "conv-1", b"first turn").await;
    fx.kms.hold_next_unwrap();
    let writer = {
        let (b, t) = (Arc::clone(&b), t.clone());
        tokio::spawn(async move { seal_in(&b, &t, "conv-1", b"second turn").await })
    };
    fx.kms.held().await;
    shred(&a, &t, "conv-1").await;
    b.apply_recorded_shred(&t).await;
    fx.kms.release();
    let (env, dek) = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(dek, shredded, "sealed under the shredded DEK");
    assert_eq!(
        open_reason(&a, &t, &env).await,
        "OK",
        "written after the shred: kept"
    );
}

#[tokio::test]
async fn a_replica_that_missed_the_notification_catches_up_at_reconciliation() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let b = fx.replica("b");
    let t = tenant("shred-catch-up");
    onboard(&a, &t, "k1").await;
    let (env, _) = seal_in(&a, &t, "conv-1", b"erase me").await;
    let (kept, _) = seal_in(&a, &t, "conv-2", b"keep me").await;
    assert_eq!(open_reason(&b, &t, &env).await, "OK", "cached on b");
    shred(&a, &t, "conv-1").await;
    // No notification reaches b; its reconciliation finds the tombstones.
    assert_eq!(b.reconcile().await.unwrap(), 0, "no key state changed");
    assert_eq!(open_reason(&b, &t, &env).await, "DATA_KEY_SHREDDED");
    assert_eq!(open_reason(&b, &t, &kept).await, "OK");
    let unwraps = fx.unwraps();
    // Catching up drops DEKs only: the tenant key stays cached (no KMS call).
    b.reconcile().await.unwrap();
    assert_eq!(open_reason(&b, &t, &kept).await, "OK");
    assert_eq!(fx.unwraps(), unwraps);
}

#[tokio::test]
async fn a_copy_rewrapped_before_the_shred_survives_it_and_the_original_cannot_be_rewrapped_after()
{
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("shred-rewrap");
    onboard(&a, &t, "k1").await;
    let (original, _) = seal_in(&a, &t, "conv-1", b"keep this answer").await;
    let hold = Scope::try_from("legal-hold").unwrap();
    let (kept, _) = a
        .rewrap(&t, &original, &EncryptionContext::empty(), Some(&hold))
        .await
        .unwrap();
    shred(&a, &t, "conv-1").await;
    assert_eq!(open_reason(&a, &t, &original).await, "DATA_KEY_SHREDDED");
    assert_eq!(open_reason(&a, &t, &kept).await, "OK");
    let err = a
        .rewrap(&t, &original, &EncryptionContext::empty(), Some(&hold))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "DATA_KEY_SHREDDED");
}

#[tokio::test]
async fn envelopes_of_a_shredded_scope_sent_again_cost_no_store_read() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("shred-repeat");
    onboard(&a, &t, "k1").await;
    let (gone, _) = seal_in(&a, &t, "conv-1", b"erase me").await;
    shred(&a, &t, "conv-1").await;
    assert_eq!(open_reason(&a, &t, &gone).await, "DATA_KEY_SHREDDED");
    let reads = fx.store.dek_reads.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(open_reason(&a, &t, &gone).await, "DATA_KEY_SHREDDED");
    }
    assert_eq!(
        fx.store.dek_reads.load(Ordering::SeqCst),
        reads,
        "the tombstone is remembered"
    );
}

/// An export whose audit record cannot be written (the store refuses the append after every
/// item was sent) ends without its trailer, so `keyward export` keeps nothing; it is recorded as
/// incomplete once the store takes appends again: no export leaves without a record.
#[tokio::test]
async fn an_export_whose_record_fails_sends_no_trailer_and_is_recorded_incomplete_later() {
    let fx = Fixture::new().await;
    let a = fx.replica("a");
    let t = tenant("leaving");
    onboard(&a, &t, "k1").await;
    seal(&a, &t, b"prompt").await;
    fx.store.fail_appends.store(true, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let result = a.export_key_hierarchy(&t, "test".to_owned(), &tx).await;
    assert!(result.is_err(), "the record failed, so the export failed");
    drop(tx);
    let mut items = Vec::new();
    while let Some(item) = rx.recv().await {
        items.push(item.unwrap());
    }
    assert_eq!(items.len(), 3, "header, tenant key, data key");
    assert!(
        !items
            .iter()
            .any(|i| matches!(i, keyward_server::keyring::ExportItem::Trailer { .. })),
        "no trailer"
    );
    assert!(fx.events(&t, "key_hierarchy_exported").await.is_empty());
    fx.store.fail_appends.store(false, Ordering::SeqCst);
    a.flush_denials().await.unwrap();
    let recorded = fx.events(&t, "key_hierarchy_exported").await;
    assert!(
        matches!(
            recorded.as_slice(),
            [AuditEvent::KeyHierarchyExported {
                complete: false,
                tenant_keys: 1,
                data_keys: 1,
                tombstones: 0,
                ..
            }]
        ),
        "{recorded:?}"
    );
}
