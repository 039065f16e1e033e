//! The key hierarchy against the real SQLite store and the real local KEK
//! provider. The provider is wrapped in a delegating decorator that counts
//! the calls that reach it, so "one KEK unwrap per TTL" is measured at the
//! provider, not taken from the keyring's own bookkeeping.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use keyward_audit::{AuditEvent, DekRetireReason};
use keyward_envelope::{EncryptionContext, SecretKey, Suite, TenantId, WrappedKey, parse};
use keyward_kms::{
    Capabilities, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind, WrapContext,
    local::LocalProvider,
};
use keyward_server::keyring::{CheckOutcome, MonitorPolicy, RevocationSource};
use keyward_server::{
    CachePolicy, Keyring, Providers, error::ServiceError, keyring::RotationPolicy,
};
use keyward_store::KekState;
use keyward_store::{AuditQuery, Scope, Store as _, sqlite::SqliteStore};

mod common;
use common::bound;

#[derive(Debug)]
struct Counting {
    inner: LocalProvider,
    unwraps: AtomicU64,
    wraps: AtomicU64,
    /// Test hook: while set, an unwrap that reached the KMS answer waits for `release`.
    hold: std::sync::atomic::AtomicBool,
    /// Test hook: while set, every unwrap fails as an unreachable KMS would.
    outage: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait]
impl KeyProvider for Counting {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        self.wraps.fetch_add(1, Ordering::SeqCst);
        self.inner.wrap(kek, key, ctx).await
    }
    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        if self.outage.load(Ordering::SeqCst) {
            return Err(ProviderError::new(
                keyward_kms::ErrorKind::Unavailable,
                "test outage: connection refused",
            ));
        }
        let answer = self.inner.unwrap(kek, wrapped, ctx).await;
        if self.hold.load(Ordering::SeqCst) {
            // The KMS has answered; hold the answer until the test says so.
            self.entered.notify_one();
            self.release.notified().await;
        }
        answer
    }
    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        self.inner.describe(kek).await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    kms_dir: std::path::PathBuf,
    store: Arc<SqliteStore>,
    provider: Arc<Counting>,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kms_dir = dir.path().join("kms");
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        let provider = Arc::new(Counting {
            inner: LocalProvider::open(&kms_dir).unwrap(),
            unwraps: AtomicU64::new(0),
            wraps: AtomicU64::new(0),
            hold: std::sync::atomic::AtomicBool::new(false),
            outage: std::sync::atomic::AtomicBool::new(false),
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        });
        Self {
            _dir: dir,
            kms_dir,
            store,
            provider,
        }
    }

    fn keyring(&self, ttl: Duration, rotation: RotationPolicy) -> Keyring {
        Keyring::new(
            self.store.clone(),
            Providers::default().with(self.provider.clone()),
            CachePolicy {
                ttl,
                max_tenant_keys: 1000,
                max_deks: 100_000,
            },
            rotation,
            Arc::new(keyward_audit::IdentifierHasher::new([7; 32])),
        )
    }

    fn unwraps(&self) -> u64 {
        self.provider.unwraps.load(Ordering::SeqCst)
    }

    /// A second provider handle on the same key directory, as the CLI would be.
    fn operator(&self) -> LocalProvider {
        LocalProvider::open(&self.kms_dir).unwrap()
    }
}

const LOOSE: RotationPolicy = RotationPolicy {
    max_age: Duration::from_secs(3600),
    max_messages: 1 << 20,
    max_bytes: 1 << 30,
};

fn tenant(s: &str) -> TenantId {
    TenantId::try_from(s).unwrap()
}

fn scope(s: &str) -> Scope {
    Scope::try_from(s).unwrap()
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    EncryptionContext::try_from_map(map).unwrap()
}

async fn onboard(keyring: &Keyring, id: &TenantId, key: &str) {
    keyring
        .create_tenant(id, "Test tenant", "test".to_owned())
        .await
        .unwrap();
    keyring
        .register_key(id, &KeyRef::new(ProviderKind::Local, key))
        .await
        .unwrap();
}

#[tokio::test]
async fn many_scopes_and_messages_cost_one_kek_unwrap_per_ttl() {
    let fx = Fixture::new().await;
    // A TTL no run reaches: the counts below do not depend on how fast the machine is.
    let long = Duration::from_secs(3600);
    let keyring = fx.keyring(long, LOOSE);
    let t = tenant("acme");
    onboard(&keyring, &t, "default").await;
    // Registration: one generate (a wrap) and one unwrap for the live round trip.
    assert_eq!(fx.unwraps(), 1);
    let c = ctx(&[("conversation", "42")]);

    let mut envelopes = Vec::new();
    for s in 0..40 {
        for m in 0..10 {
            let pt = format!("prompt {s}/{m}");
            let (env, _) = keyring
                .encrypt(&t, &scope(&format!("s{s}")), &c, pt.as_bytes())
                .await
                .unwrap();
            envelopes.push((env, pt));
        }
    }
    for (env, pt) in &envelopes {
        assert_eq!(
            keyring.decrypt(&t, env, &c).await.unwrap().as_slice(),
            pt.as_bytes()
        );
    }
    assert_eq!(
        fx.unwraps(),
        1,
        "400 messages in 40 scopes must reuse the cached tenant key"
    );
    assert_eq!(keyring.stats().deks_created, 40);

    // A fresh replica (cold caches) decrypting everything concurrently: one unwrap.
    let cold = Arc::new(fx.keyring(long, LOOSE));
    let mut tasks = Vec::new();
    for (env, pt) in envelopes.iter().take(64) {
        let (env, pt) = (env.clone(), pt.clone());
        let cold = cold.clone();
        let (t, c) = (t.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            assert_eq!(
                cold.decrypt(&t, &env, &c).await.unwrap().as_slice(),
                pt.as_bytes()
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        fx.unwraps(),
        2,
        "concurrent cold misses are loaded once (single flight)"
    );

    // With a short TTL: every decrypt that finished within the TTL of the unwrap's start used
    // the cached key; once the TTL is over, the next decrypt unwraps again, once. The TTL runs
    // from before the KMS call, so `asked` (taken before the call) is the right instant.
    let ttl = Duration::from_secs(1);
    let short = fx.keyring(ttl, LOOSE);
    let asked = std::time::Instant::now();
    short.decrypt(&t, &envelopes[0].0, &c).await.unwrap();
    assert_eq!(fx.unwraps(), 3);
    for (env, pt) in envelopes.iter().cycle().step_by(7).take(200) {
        assert_eq!(
            short.decrypt(&t, env, &c).await.unwrap().as_slice(),
            pt.as_bytes()
        );
        if asked.elapsed() < ttl {
            assert_eq!(fx.unwraps(), 3, "unwrapped again within the TTL");
        }
    }
    // Every unwrap so far started before now: a TTL from now, every cached key has expired.
    let quiet = std::time::Instant::now();
    tokio::time::sleep_until((quiet + ttl + bound::CACHE_CLOCK_SLACK).into()).await;
    let (before, again) = (fx.unwraps(), std::time::Instant::now());
    for (env, pt) in envelopes.iter().step_by(7) {
        assert_eq!(
            short.decrypt(&t, env, &c).await.unwrap().as_slice(),
            pt.as_bytes()
        );
    }
    // One more unwrap after the TTL, and only one unless this loop itself outlived a TTL.
    let unwraps = fx.unwraps();
    assert!(unwraps > before, "the expired key was not unwrapped again");
    if again.elapsed() < ttl {
        assert_eq!(unwraps, before + 1);
    }
}

#[tokio::test]
async fn rotation_by_message_count_and_bytes_keeps_every_envelope_readable() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(
        Duration::from_secs(60),
        RotationPolicy {
            max_age: Duration::from_secs(3600),
            max_messages: 3,
            max_bytes: 100,
        },
    );
    let t = tenant("rot");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let s = Scope::default_scope();

    let mut ids = Vec::new();
    let mut envs = Vec::new();
    for i in 0..10u8 {
        let (env, id) = keyring.encrypt(&t, &s, &c, &[i; 10]).await.unwrap();
        ids.push(id);
        envs.push(env);
    }
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "10 messages at 3 per DEK need 4 DEKs");
    assert_eq!(ids[0], ids[2]);
    assert_ne!(ids[2], ids[3]);

    // 60-byte messages: the second would exceed 100 bytes, so each gets a new DEK.
    let (_, a) = keyring.encrypt(&t, &s, &c, &[1; 60]).await.unwrap();
    let (_, b) = keyring.encrypt(&t, &s, &c, &[2; 60]).await.unwrap();
    assert_ne!(a, b);

    // Every rotation is in the audit log with its reason, in the DEK's transaction.
    let records = fx
        .store
        .audit_records(&AuditQuery::default().with_tenant(t.clone()))
        .await
        .unwrap();
    let reasons: Vec<DekRetireReason> = records
        .iter()
        .filter_map(|r| match r.event() {
            AuditEvent::DekRetired { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            DekRetireReason::MaxMessages,
            DekRetireReason::MaxMessages,
            DekRetireReason::MaxMessages,
            // 10 + 60 bytes fit the fourth DEK; the next 60 do not.
            DekRetireReason::MaxBytes,
        ]
    );
    let created = records
        .iter()
        .filter(|r| matches!(r.event(), AuditEvent::DekCreated { .. }))
        .count();
    assert_eq!(created, 5);

    for (i, env) in envs.iter().enumerate() {
        assert_eq!(
            keyring.decrypt(&t, env, &c).await.unwrap().as_slice(),
            &[i as u8; 10]
        );
    }
}

#[tokio::test]
async fn concurrent_encrypts_on_one_scope_rotate_cleanly() {
    let fx = Fixture::new().await;
    let keyring = Arc::new(fx.keyring(
        Duration::from_secs(60),
        RotationPolicy {
            max_age: Duration::from_secs(3600),
            max_messages: 5,
            max_bytes: 1 << 20,
        },
    ));
    let t = tenant("busy");
    onboard(&keyring, &t, "default").await;
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let keyring = keyring.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let c = EncryptionContext::empty();
            let (env, id) = keyring
                .encrypt(&t, &Scope::default_scope(), &c, &i.to_be_bytes())
                .await
                .unwrap();
            (env, id, i)
        }));
    }
    let mut per_dek: BTreeMap<String, u32> = BTreeMap::new();
    for task in tasks {
        let (env, id, i) = task.await.unwrap();
        *per_dek.entry(id.to_string()).or_default() += 1;
        let pt = keyring
            .decrypt(&t, &env, &EncryptionContext::empty())
            .await
            .unwrap();
        assert_eq!(pt.as_slice(), &i.to_be_bytes());
    }
    assert!(
        per_dek.values().all(|&n| n <= 5),
        "no DEK exceeds its message limit: {per_dek:?}"
    );
    assert!(
        per_dek.len() >= 13,
        "64 messages at 5 per DEK need at least 13 DEKs"
    );
}

#[tokio::test]
async fn kek_rotation_keeps_old_data_and_moves_new_deks_to_the_new_tenant_key() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(60), LOOSE);
    let t = tenant("rotkek");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let s = Scope::default_scope();
    let (old_env, old_dek) = keyring.encrypt(&t, &s, &c, b"before").await.unwrap();

    fx.operator().create_key("second").unwrap();
    let binding = keyring
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "second"))
        .await
        .unwrap()
        .binding;
    let (new_env, new_dek) = keyring.encrypt(&t, &s, &c, b"after").await.unwrap();
    assert_ne!(old_dek, new_dek);
    let record = fx.store.get_dek(&t, &new_dek).await.unwrap().unwrap();
    assert_eq!(record.tenant_key_id, binding.tenant_key_id);
    assert_eq!(
        keyring.decrypt(&t, &old_env, &c).await.unwrap().as_slice(),
        b"before"
    );
    assert_eq!(
        keyring.decrypt(&t, &new_env, &c).await.unwrap().as_slice(),
        b"after"
    );
}

#[tokio::test]
async fn a_disabled_kek_stops_service_within_the_ttl_and_comes_back_when_enabled() {
    let fx = Fixture::new().await;
    let ttl = Duration::from_secs(1);
    let keyring = fx.keyring(ttl, LOOSE);
    let t = tenant("revoke");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let s = Scope::default_scope();
    let (env, _) = keyring.encrypt(&t, &s, &c, b"secret").await.unwrap();

    fx.operator().set_enabled("default", false).unwrap();
    let disabled_at = std::time::Instant::now();
    // The KMS last vouched for the key before `disabled_at`: nothing sent a TTL later is served.
    let (err, _) = bound::stops_serving(disabled_at, bound::ttl(ttl), || {
        keyring.decrypt(&t, &env, &c)
    })
    .await;
    // The first request to meet the refusal reports it; it is recorded as a
    // revocation, so later requests fail fast without asking the KMS.
    assert!(matches!(err.root(), ServiceError::KeyRefused(_)), "{err:?}");
    let unwraps = fx.unwraps();
    let err = keyring.encrypt(&t, &s, &c, b"more").await.unwrap_err();
    assert_eq!(err.reason(), "KEY_REVOKED");
    assert_eq!(fx.unwraps(), unwraps);
    let changes = events_of(&fx, &t, "revocation_state_changed").await;
    assert!(
        matches!(&changes[..], [AuditEvent::RevocationStateChanged(tr)] if tr.source == RevocationSource::KmsRefusal)
    );

    // Re-enabled at the KMS: the monitor's next check restores access.
    fx.operator().set_enabled("default", true).unwrap();
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap_err().reason(),
        "KEY_REVOKED"
    );
    assert_eq!(
        keyring.check_all(1000).await.unwrap(),
        vec![(t.clone(), CheckOutcome::Restored)]
    );
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap().as_slice(),
        b"secret"
    );
}

/// `envelope.write_suite`: a keyring writing suite 0x0001 (a rolling upgrade from a build that
/// reads only that suite) and one writing the default 0x0002 share a store and read each
/// other's envelopes.
#[tokio::test]
async fn the_write_suite_is_configurable_and_every_suite_is_read() {
    let fx = Fixture::new().await;
    let newest = fx.keyring(Duration::from_secs(60), LOOSE);
    let oldest = fx
        .keyring(Duration::from_secs(60), LOOSE)
        .with_write_suite(Suite::Aes256GcmHkdfSha512Committing);
    let t = tenant("upgrading");
    onboard(&newest, &t, "default").await;
    let (c, s) = (ctx(&[("k", "v")]), Scope::default_scope());
    let (new_env, _) = newest.encrypt(&t, &s, &c, b"sealed in 2").await.unwrap();
    let (old_env, _) = oldest.encrypt(&t, &s, &c, b"sealed in 1").await.unwrap();
    assert_eq!(parse(&new_env).unwrap().header().suite(), Suite::SEAL);
    assert_eq!(
        parse(&old_env).unwrap().header().suite().id(),
        0x0001,
        "written in the configured suite"
    );
    for keyring in [&newest, &oldest] {
        assert_eq!(
            keyring.decrypt(&t, &new_env, &c).await.unwrap().as_slice(),
            b"sealed in 2"
        );
        assert_eq!(
            keyring.decrypt(&t, &old_env, &c).await.unwrap().as_slice(),
            b"sealed in 1"
        );
    }
}

#[tokio::test]
async fn tenants_are_isolated() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(60), LOOSE);
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    onboard(&keyring, &a, "default").await;
    onboard(&keyring, &b, "default").await;
    let c = EncryptionContext::empty();
    let (env, _) = keyring
        .encrypt(&a, &Scope::default_scope(), &c, b"a's data")
        .await
        .unwrap();

    assert!(matches!(
        keyring.decrypt(&b, &env, &c).await,
        Err(ServiceError::TenantMismatch)
    ));
    // Rewriting the tenant id in the header (same length) does not help either.
    let forged = rewrite(&env, b"tenant-a", b"tenant-b");
    let err = keyring.decrypt(&b, &forged, &c).await.unwrap_err();
    assert_eq!(err.reason(), "DATA_KEY_NOT_FOUND");
}

fn rewrite(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let pos = haystack
        .windows(from.len())
        .position(|w| w == from)
        .unwrap();
    let mut out = haystack.to_vec();
    out[pos..pos + to.len()].copy_from_slice(to);
    out
}

// ----- revocation engine ----------------------------------------------------

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn events_of(fx: &Fixture, t: &TenantId, kind: &str) -> Vec<AuditEvent> {
    fx.store
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

#[tokio::test]
async fn explicit_revocation_fails_fast_without_the_kms_and_only_restore_key_lifts_it() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(60), LOOSE);
    let t = tenant("breakglass");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let s = Scope::default_scope();
    let (env, _) = keyring.encrypt(&t, &s, &c, b"secret").await.unwrap();
    keyring.decrypt(&t, &env, &c).await.unwrap();
    let unwraps = fx.unwraps();

    keyring
        .revoke(
            &t,
            KekState::Revoked,
            RevocationSource::Explicit,
            Some("ciso".into()),
            "incident 42",
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap_err().reason(),
        "KEY_REVOKED"
    );
    assert_eq!(
        keyring
            .encrypt(&t, &s, &c, b"more")
            .await
            .unwrap_err()
            .reason(),
        "KEY_REVOKED"
    );
    assert_eq!(
        fx.unwraps(),
        unwraps,
        "a revoked tenant is refused without any KMS call"
    );

    let changes = events_of(&fx, &t, "revocation_state_changed").await;
    assert!(
        matches!(&changes[..], [AuditEvent::RevocationStateChanged(tr)]
        if tr.source == RevocationSource::Explicit && tr.actor.as_deref() == Some("ciso") && tr.reason == "incident 42")
    );
    let purges = events_of(&fx, &t, "keys_purged").await;
    assert!(
        matches!(&purges[..], [AuditEvent::KeysPurged { entries, last_plaintext_at_ms: Some(_), .. }] if *entries >= 3),
        "tenant key, DEK and active DEK purged, last plaintext recorded: {purges:?}"
    );

    // The monitor sees the key working but never lifts a break-glass revocation.
    let binding = fx.store.active_binding(&t).await.unwrap().unwrap();
    assert_eq!(
        keyring.check_binding(&binding).await.unwrap(),
        CheckOutcome::Unchanged
    );
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap_err().reason(),
        "KEY_REVOKED"
    );

    // The denied requests are counted, per second, exactly.
    let second = now_ms() / 1000;
    while now_ms() / 1000 == second {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    keyring.flush_denials().await.unwrap();
    let denied: u64 = events_of(&fx, &t, "revocation_denials")
        .await
        .iter()
        .map(|e| match e {
            AuditEvent::RevocationDenials { count, .. } => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(denied, 3);

    keyring
        .restore(
            &t,
            RevocationSource::Explicit,
            Some("ciso".into()),
            "resolved",
        )
        .await
        .unwrap();
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap().as_slice(),
        b"secret"
    );
    assert_eq!(events_of(&fx, &t, "restored").await.len(), 1);
}

#[tokio::test]
async fn the_monitor_revokes_a_disabled_key_and_restores_it_when_enabled() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(300), LOOSE);
    let t = tenant("monitored");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let (env, _) = keyring
        .encrypt(&t, &Scope::default_scope(), &c, b"data")
        .await
        .unwrap();
    assert_eq!(
        keyring.check_all(1000).await.unwrap(),
        vec![(t.clone(), CheckOutcome::Healthy)]
    );

    // Disabled at the KMS: one sweep revokes, although the caches (TTL 300 s) are warm.
    fx.operator().set_enabled("default", false).unwrap();
    assert_eq!(
        keyring.check_all(1000).await.unwrap(),
        vec![(t.clone(), CheckOutcome::Revoked)]
    );
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap_err().reason(),
        "KEY_REVOKED"
    );
    let binding = fx.store.active_binding(&t).await.unwrap().unwrap();
    assert_eq!(binding.state, KekState::Revoked);

    // Enabled again: the next sweep restores (a monitor revocation, not a break-glass one).
    fx.operator().set_enabled("default", true).unwrap();
    assert_eq!(
        keyring.check_all(1000).await.unwrap(),
        vec![(t.clone(), CheckOutcome::Restored)]
    );
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap().as_slice(),
        b"data"
    );
}

#[tokio::test]
async fn an_unwrap_in_flight_during_a_revocation_is_not_cached_and_returns_no_plaintext() {
    let fx = Fixture::new().await;
    let warm = fx.keyring(Duration::from_secs(300), LOOSE);
    let t = tenant("racing");
    onboard(&warm, &t, "default").await;
    let c = EncryptionContext::empty();
    let (env, _) = warm
        .encrypt(&t, &Scope::default_scope(), &c, b"plaintext")
        .await
        .unwrap();

    // A replica with cold caches starts a decrypt; the KMS answer is held.
    let cold = Arc::new(fx.keyring(Duration::from_secs(300), LOOSE));
    fx.provider.hold.store(true, Ordering::SeqCst);
    let entered = fx.provider.entered.notified();
    let decrypt = tokio::spawn({
        let (cold, t, env, c) = (cold.clone(), t.clone(), env.clone(), c.clone());
        async move { cold.decrypt(&t, &env, &c).await }
    });
    entered.await;
    // Revoked while the unwrap is in flight, then the KMS answer is released.
    fx.provider.hold.store(false, Ordering::SeqCst);
    cold.revoke(
        &t,
        KekState::Revoked,
        RevocationSource::Explicit,
        None,
        "race",
        now_ms(),
    )
    .await
    .unwrap();
    fx.provider.release.notify_one();
    let err = decrypt.await.unwrap().unwrap_err();
    assert_eq!(err.reason(), "KEY_REVOKED", "{err:?}");

    // The key unwrapped in flight was not cached: after restoring, the KMS is asked again.
    cold.restore(&t, RevocationSource::Explicit, None, "done")
        .await
        .unwrap();
    let before = fx.unwraps();
    assert_eq!(
        cold.decrypt(&t, &env, &c).await.unwrap().as_slice(),
        b"plaintext"
    );
    assert_eq!(fx.unwraps(), before + 1);
}

#[tokio::test]
async fn a_thousand_concurrent_cold_decrypts_cost_one_kms_unwrap() {
    let fx = Fixture::new().await;
    let warm = fx.keyring(Duration::from_secs(300), LOOSE);
    let t = tenant("thundering");
    onboard(&warm, &t, "default").await;
    let c = EncryptionContext::empty();
    let (env, _) = warm
        .encrypt(&t, &Scope::default_scope(), &c, b"herd")
        .await
        .unwrap();

    let cold = Arc::new(fx.keyring(Duration::from_secs(300), LOOSE));
    let before = fx.unwraps();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (cold, t, env, c) = (cold.clone(), t.clone(), env.clone(), c.clone());
            tokio::spawn(async move { cold.decrypt(&t, &env, &c).await.map(|p| p.to_vec()) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), b"herd");
    }
    assert_eq!(fx.unwraps(), before + 1);
}

#[tokio::test]
async fn a_pushed_key_event_rechecks_every_tenant_on_that_key_with_the_kms() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(300), LOOSE);
    let (a, b, other) = (tenant("evt-a"), tenant("evt-b"), tenant("evt-other"));
    fx.operator().create_key("second").unwrap();
    onboard(&keyring, &a, "default").await;
    onboard(&keyring, &b, "default").await;
    onboard(&keyring, &other, "second").await;

    // An event about a key that still works changes nothing: the KMS is the truth.
    assert_eq!(
        keyring
            .recheck_key(ProviderKind::Local, "default")
            .await
            .unwrap(),
        (2, 0)
    );
    fx.operator().set_enabled("default", false).unwrap();
    assert_eq!(
        keyring
            .recheck_key(ProviderKind::Local, "default")
            .await
            .unwrap(),
        (2, 2)
    );
    let c = EncryptionContext::empty();
    for t in [&a, &b] {
        let err = keyring
            .encrypt(t, &Scope::default_scope(), &c, b"x")
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "KEY_REVOKED");
    }
    keyring
        .encrypt(&other, &Scope::default_scope(), &c, b"x")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refusal_met_while_rotating_a_dek_revokes_without_deadlock() {
    let fx = Fixture::new().await;
    let ttl = Duration::from_secs(1);
    let keyring = fx.keyring(
        ttl,
        RotationPolicy {
            max_age: Duration::from_secs(3600),
            max_messages: 1,
            max_bytes: 1 << 20,
        },
    );
    let t = tenant("rotating");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let s = Scope::default_scope();
    keyring.encrypt(&t, &s, &c, b"one").await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    fx.operator().set_enabled("default", false).unwrap();
    // The stored DEK is exhausted, so this encrypt must create one, which needs the
    // tenant key, which the KMS refuses: the revocation purges the very cache entry
    // being loaded. It must finish (bounded), refused.
    let err = tokio::time::timeout(Duration::from_secs(10), keyring.encrypt(&t, &s, &c, b"two"))
        .await
        .expect("no deadlock")
        .unwrap_err();
    assert_eq!(err.reason(), "KEY_REFUSED");
    let err = keyring.encrypt(&t, &s, &c, b"three").await.unwrap_err();
    assert_eq!(err.reason(), "KEY_REVOKED");
}

#[tokio::test]
async fn a_tenant_ttl_override_bounds_that_tenants_revocation_window() {
    let fx = Fixture::new().await;
    // Server-wide TTL 300 s, monitor off: only the tenant's own TTL can end service.
    let keyring = fx.keyring(Duration::from_secs(300), LOOSE);
    let (strict, relaxed) = (tenant("strict"), tenant("relaxed"));
    onboard(&keyring, &strict, "default").await;
    fx.operator().create_key("other").unwrap();
    onboard(&keyring, &relaxed, "other").await;
    let policy = keyward_store::TenantPolicy {
        cache_ttl_seconds: Some(1),
        monitor_interval_seconds: None,
        auto_rekey: false,
        decrypt_purposes: 0,
    };
    let record = keyring
        .set_tenant_policy(&strict, policy, "ops".into())
        .await
        .unwrap()
        .tenant;
    assert_eq!(record.policy, policy);
    let c = EncryptionContext::empty();
    let s = Scope::default_scope();
    let (strict_env, _) = keyring.encrypt(&strict, &s, &c, b"strict").await.unwrap();
    let (relaxed_env, _) = keyring.encrypt(&relaxed, &s, &c, b"relaxed").await.unwrap();

    fx.operator().set_enabled("default", false).unwrap();
    fx.operator().set_enabled("other", false).unwrap();
    let since = std::time::Instant::now();
    // The tenant's own 1 s TTL, not the server's 300 s, bounds its window.
    let (err, _) = bound::stops_serving(since, bound::ttl(Duration::from_secs(1)), || {
        keyring.decrypt(&strict, &strict_env, &c)
    })
    .await;
    assert_eq!(err.reason(), "KEY_REFUSED");
    // The other tenant keeps the server-wide 300 s TTL (its cached keys still serve).
    assert_eq!(
        keyring
            .decrypt(&relaxed, &relaxed_env, &c)
            .await
            .unwrap()
            .as_slice(),
        b"relaxed"
    );
    // The change is audited, as a record of the tenant (its own export shows it).
    let set = events_of(&fx, &strict, "tenant_policy_set").await;
    assert!(
        matches!(set.last().unwrap(), AuditEvent::TenantPolicySet { actor, cache_ttl_seconds: Some(_), .. } if actor == "ops"),
        "{set:?}"
    );
}

/// The monitor's policy in these tests: an hour between checks unless a tenant's policy says
/// otherwise, and no pacing to speak of.
fn hourly() -> MonitorPolicy {
    MonitorPolicy::new(Duration::from_secs(3600), 1000)
}

#[tokio::test]
async fn the_monitor_checks_held_keys_at_each_tenants_own_interval() {
    let fx = Fixture::new().await;
    let keyring = fx
        .keyring(Duration::from_secs(300), LOOSE)
        .with_monitor(Some(hourly()));
    let (fast, slow) = (tenant("fast"), tenant("slow"));
    onboard(&keyring, &fast, "default").await;
    onboard(&keyring, &slow, "default").await;
    keyring
        .set_tenant_policy(
            &fast,
            keyward_store::TenantPolicy {
                cache_ttl_seconds: None,
                monitor_interval_seconds: Some(1),
                auto_rekey: false,
                decrypt_purposes: 0,
            },
            "ops".into(),
        )
        .await
        .unwrap();
    // Both keys are held (registration cached them); the fast tenant's key is loaded again
    // under its new policy and so scheduled a second from now, the slow one's in an hour.
    let c = EncryptionContext::empty();
    for t in [&fast, &slow] {
        keyring
            .encrypt(t, &Scope::default_scope(), &c, b"x")
            .await
            .unwrap();
    }
    let (checked, next) = keyring.check_due(hourly()).await.unwrap();
    assert!(checked.is_empty(), "nothing is due yet: {checked:?}");
    assert!(next <= Duration::from_secs(1), "next pass in {next:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (checked, _) = keyring.check_due(hourly()).await.unwrap();
    assert_eq!(checked, vec![(fast.clone(), CheckOutcome::Healthy)]);
    // Checked once per interval, not once per pass.
    assert!(keyring.check_due(hourly()).await.unwrap().0.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (checked, _) = keyring.check_due(hourly()).await.unwrap();
    assert_eq!(checked, vec![(fast.clone(), CheckOutcome::Healthy)]);
}

#[tokio::test]
async fn a_key_no_replica_holds_gets_no_canary_until_it_is_loaded_again() {
    let fx = Fixture::new().await;
    // Keys are cached for two seconds and checked every second.
    let every_second = MonitorPolicy::new(Duration::from_secs(1), 1000);
    let keyring = fx
        .keyring(Duration::from_secs(2), LOOSE)
        .with_monitor(Some(every_second));
    let t = tenant("idle");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let (env, _) = keyring
        .encrypt(&t, &Scope::default_scope(), &c, b"x")
        .await
        .unwrap();
    // Held: checked when due.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let (checked, _) = keyring.check_due(every_second).await.unwrap();
    assert_eq!(checked, vec![(t.clone(), CheckOutcome::Healthy)]);
    // The key lapses from every cache (2 s after it was loaded) before its next check: that
    // check calls no KMS, and none is scheduled any more.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let unwraps = fx.unwraps();
    assert!(keyring.check_due(every_second).await.unwrap().0.is_empty());
    assert_eq!(fx.unwraps(), unwraps, "an idle tenant costs no KMS call");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(keyring.check_due(every_second).await.unwrap().0.is_empty());
    assert_eq!(fx.unwraps(), unwraps);
    // Used again: loaded (one unwrap), held, and checked when its interval comes.
    keyring.decrypt(&t, &env, &c).await.unwrap();
    assert_eq!(fx.unwraps(), unwraps + 1);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let (checked, _) = keyring.check_due(every_second).await.unwrap();
    assert_eq!(checked, vec![(t.clone(), CheckOutcome::Healthy)]);
}

#[tokio::test]
async fn an_overcommitted_monitor_says_so_and_caches_keys_for_at_most_the_interval() {
    let fx = Fixture::new().await;
    // Four held keys due every second, and a budget of one check per second: it cannot keep up.
    let starved = MonitorPolicy::new(Duration::from_secs(1), 1);
    let keyring = fx
        .keyring(Duration::from_secs(300), LOOSE)
        .with_monitor(Some(starved));
    let c = EncryptionContext::empty();
    let mut envelopes = Vec::new();
    for i in 0..4 {
        let t = tenant(&format!("busy-{i}"));
        onboard(&keyring, &t, "default").await;
        let (env, _) = keyring
            .encrypt(&t, &Scope::default_scope(), &c, b"x")
            .await
            .unwrap();
        envelopes.push((t, env));
    }
    assert!(!keyring.monitor_status().overcommitted);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (checked, _) = keyring.check_due(starved).await.unwrap();
    assert_eq!(checked.len(), 4, "every due check ran, late: {checked:?}");
    let status = keyring.monitor_status();
    assert!(status.overcommitted, "{status:?}");
    assert!(status.lag_ms > 1000, "{status:?}");
    assert_eq!(
        keyring.scrape_gauges().monitor,
        status,
        "the metrics and /readyz read the same status"
    );

    // While overcommitted, a key loaded now is cached for the interval (1 s), not the TTL.
    let cold = fx
        .keyring(Duration::from_secs(300), LOOSE)
        .with_monitor(Some(starved));
    let (t, env) = &envelopes[0];
    // `cold` learns of the overcommitment from its own pass (each replica judges its own).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cold.check_due(starved).await.unwrap();
    assert!(cold.monitor_status().overcommitted);
    let before = fx.unwraps();
    cold.decrypt(t, env, &c).await.unwrap();
    cold.decrypt(t, env, &c).await.unwrap();
    assert_eq!(fx.unwraps(), before + 1, "cached while fresh");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cold.decrypt(t, env, &c).await.unwrap();
    assert_eq!(
        fx.unwraps(),
        before + 2,
        "unwrapped again after the interval, not the TTL"
    );
}

/// The local provider presented as another kind (PKCS#11 here), so that one test has two
/// provider kinds; counts its unwraps.
#[derive(Debug)]
struct OtherKind {
    inner: LocalProvider,
    unwraps: AtomicU64,
}

impl OtherKind {
    fn local(kek: &KeyRef) -> KeyRef {
        KeyRef::new(ProviderKind::Local, kek.id())
    }
}

#[async_trait]
impl KeyProvider for OtherKind {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Pkcs11
    }
    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        self.inner.wrap(&Self::local(kek), key, ctx).await
    }
    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(&Self::local(kek), wrapped, ctx).await
    }
    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        self.inner.describe(&Self::local(kek)).await
    }
}

#[tokio::test]
async fn a_stalled_kms_does_not_hold_up_the_checks_of_keys_at_another_provider() {
    let fx = Fixture::new().await;
    let other = Arc::new(OtherKind {
        inner: fx.operator(),
        unwraps: AtomicU64::new(0),
    });
    // One check in flight per provider kind.
    let policy = MonitorPolicy {
        max_concurrent_checks: 1,
        ..MonitorPolicy::new(Duration::from_secs(1), 1000)
    };
    let keyring = Keyring::new(
        fx.store.clone(),
        Providers::default()
            .with(fx.provider.clone())
            .with(other.clone()),
        CachePolicy {
            ttl: Duration::from_secs(300),
            max_tenant_keys: 1000,
            max_deks: 1000,
        },
        LOOSE,
        Arc::new(keyward_audit::IdentifierHasher::new([7; 32])),
    )
    .with_monitor(Some(policy));
    let keyring = Arc::new(keyring);
    // The local tenant's check comes due first.
    let (slow, fast) = (tenant("at-local"), tenant("at-other"));
    onboard(&keyring, &slow, "default").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    keyring
        .create_tenant(&fast, "Test tenant", "test".to_owned())
        .await
        .unwrap();
    keyring
        .register_key(&fast, &KeyRef::new(ProviderKind::Pkcs11, "default"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The local KMS stalls after answering; the other provider's check must still run.
    fx.provider.hold.store(true, Ordering::SeqCst);
    let before = other.unwraps.load(Ordering::SeqCst);
    let pass = {
        let keyring = Arc::clone(&keyring);
        tokio::spawn(async move { keyring.check_due(policy).await.unwrap().0 })
    };
    fx.provider.entered.notified().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while other.unwraps.load(Ordering::SeqCst) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the other provider's check waited for the stalled one"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fx.provider.hold.store(false, Ordering::SeqCst);
    fx.provider.release.notify_one();
    let mut outcomes = pass.await.unwrap();
    outcomes.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(
        outcomes,
        vec![
            (slow.clone(), CheckOutcome::Healthy),
            (fast.clone(), CheckOutcome::Healthy)
        ]
    );
}

#[tokio::test]
async fn the_budget_paces_checks_across_passes() {
    let fx = Fixture::new().await;
    // Two checks per second at most; six keys due every second, each at its own moment, so that
    // most passes find a single check due.
    let policy = MonitorPolicy::new(Duration::from_secs(1), 2);
    let keyring = fx
        .keyring(Duration::from_secs(300), LOOSE)
        .with_monitor(Some(policy));
    for i in 0..6 {
        onboard(&keyring, &tenant(&format!("paced-{i}")), "default").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let start = std::time::Instant::now();
    let before = keyring.stats().canary_checks;
    while start.elapsed() < Duration::from_millis(2500) {
        let (_, wait) = keyring.check_due(policy).await.unwrap();
        tokio::time::sleep(wait).await;
    }
    let canaries = keyring.stats().canary_checks - before;
    let allowed = (start.elapsed().as_secs_f64() * 2.0).ceil() as u64 + 1;
    assert!(
        (2..=allowed).contains(&canaries),
        "{canaries} canaries in {:?} at 2 per second",
        start.elapsed()
    );
}

#[tokio::test]
async fn disabling_a_rotated_out_key_is_caught_by_the_monitor_while_its_data_is_cached() {
    let fx = Fixture::new().await;
    let every_second = MonitorPolicy::new(Duration::from_secs(1), 1000);
    let keyring = fx
        .keyring(Duration::from_secs(300), LOOSE)
        .with_monitor(Some(every_second));
    let t = tenant("rotating");
    fx.operator().create_key("old-kek").unwrap();
    fx.operator().create_key("new-kek").unwrap();
    onboard(&keyring, &t, "old-kek").await;
    let c = EncryptionContext::empty();
    let (old_env, _) = keyring
        .encrypt(&t, &Scope::default_scope(), &c, b"old")
        .await
        .unwrap();
    keyring
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "new-kek"))
        .await
        .unwrap();
    let (new_env, _) = keyring
        .encrypt(&t, &Scope::default_scope(), &c, b"new")
        .await
        .unwrap();
    // The old data is read (its tenant key cached, TTL 300 s); then the customer disables the
    // old key.
    assert_eq!(
        keyring.decrypt(&t, &old_env, &c).await.unwrap().as_slice(),
        b"old"
    );
    fx.operator().set_enabled("old-kek", false).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (checked, _) = keyring.check_due(every_second).await.unwrap();
    assert!(
        checked.contains(&(t.clone(), CheckOutcome::Revoked)),
        "the old binding's check revokes it: {checked:?}"
    );
    assert_eq!(
        keyring
            .decrypt(&t, &old_env, &c)
            .await
            .unwrap_err()
            .reason(),
        "KEY_REVOKED"
    );
    // Data under the current key is untouched.
    assert_eq!(
        keyring.decrypt(&t, &new_env, &c).await.unwrap().as_slice(),
        b"new"
    );
    let bindings = keyring.tenant_state(&t).await.unwrap().bindings;
    assert_eq!(bindings[0].state, KekState::Revoked);
    assert_eq!(bindings[1].state, KekState::Active);
}

#[tokio::test]
async fn a_key_event_rechecks_every_binding_of_that_key_older_ones_included() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(300), LOOSE);
    let t = tenant("evented");
    fx.operator().create_key("shared-old").unwrap();
    fx.operator().create_key("fresh").unwrap();
    onboard(&keyring, &t, "shared-old").await;
    keyring
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "fresh"))
        .await
        .unwrap();
    fx.operator().set_enabled("shared-old", false).unwrap();
    assert_eq!(
        keyring
            .recheck_key(ProviderKind::Local, "shared-old")
            .await
            .unwrap(),
        (1, 1)
    );
    assert_eq!(
        keyring
            .recheck_key(ProviderKind::Local, "no-such-key")
            .await
            .unwrap(),
        (0, 0)
    );
    let bindings = keyring.tenant_state(&t).await.unwrap().bindings;
    assert_eq!(bindings[0].state, KekState::Revoked);
    assert_eq!(bindings[1].state, KekState::Active);
}

#[tokio::test]
async fn usage_per_tenant_per_minute_reaches_the_audit_log() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(300), LOOSE);
    let t = tenant("metered");
    onboard(&keyring, &t, "default").await; // 2 KMS calls: generate + verifying unwrap
    let c = EncryptionContext::empty();
    let s = Scope::default_scope();
    let mut envs = Vec::new();
    for pt in [&b"aa"[..], b"bbb", b"cccc"] {
        envs.push(keyring.encrypt(&t, &s, &c, pt).await.unwrap().0); // miss, hit, hit
    }
    keyring.decrypt(&t, &envs[0], &c).await.unwrap(); // DEK not yet in the decrypt cache
    keyring.decrypt(&t, &envs[1], &c).await.unwrap(); // hit
    let wrong = ctx(&[("k", "v")]);
    keyring.decrypt(&t, &envs[2], &wrong).await.unwrap_err(); // an error
    keyring.flush_all_denials().await.unwrap();

    let mut total = (0, 0, 0, 0, 0, 0, 0);
    for e in events_of(&fx, &t, "usage_summary").await {
        if let AuditEvent::UsageSummary {
            encrypts,
            decrypts,
            bytes_in,
            bytes_out,
            kms_calls,
            cache_hits,
            errors,
            ..
        } = e
        {
            total.0 += encrypts;
            total.1 += decrypts;
            total.2 += bytes_in;
            total.3 += bytes_out;
            total.4 += kms_calls;
            total.5 += cache_hits;
            total.6 += errors;
        }
    }
    assert_eq!(total, (3, 2, 9, 5, 2, 3, 1));
}

/// Regression (soak run 2026-11-27): after a KMS outage the monitor moves the binding from
/// `unavailable` back to `active`; tenant keys cached before the outage must keep working,
/// instead of every DEK load through them failing ABORTED until their TTL runs out.
#[tokio::test]
async fn recovery_from_a_kms_outage_keeps_cached_tenant_keys_usable() {
    let fx = Fixture::new().await;
    let keyring = fx.keyring(Duration::from_secs(300), LOOSE);
    let t = tenant("outage");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let (env, _) = keyring.encrypt(&t, &scope("s1"), &c, b"one").await.unwrap();

    fx.provider.outage.store(true, Ordering::SeqCst);
    assert_eq!(
        keyring.check_all(1000).await.unwrap(),
        vec![(t.clone(), CheckOutcome::Unavailable)]
    );
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap().as_slice(),
        b"one",
        "warm keys serve through the outage"
    );
    fx.provider.outage.store(false, Ordering::SeqCst);
    assert_eq!(
        keyring.check_all(1000).await.unwrap(),
        vec![(t.clone(), CheckOutcome::Restored)]
    );
    let binding = fx.store.active_binding(&t).await.unwrap().unwrap();
    assert_eq!(binding.state, KekState::Active);

    // The cached DEK and a new one (new scope) both work through the tenant key cached before
    // the outage; no KMS call is needed for either.
    let unwraps = fx.unwraps();
    let (env2, _) = keyring.encrypt(&t, &scope("s2"), &c, b"two").await.unwrap();
    for (envelope, plaintext) in [(&env, &b"one"[..]), (&env2, &b"two"[..])] {
        assert_eq!(
            keyring.decrypt(&t, envelope, &c).await.unwrap().as_slice(),
            plaintext
        );
    }
    assert_eq!(fx.unwraps(), unwraps, "served from the cached tenant key");
}

/// A binding revoked by what the KMS said stays on the monitor's schedule while the KMS keeps
/// refusing, and is restored by the first check after the customer enables the key again. (A
/// check that found the key still refused used to answer "unchanged" and park the binding: with
/// its key purged, no replica held it, so nothing checked it again and the tenant stayed revoked
/// after the key was enabled; seen in tests/e2e/tests/aws.rs when a check ran between a
/// data-path refusal and the re-enable.)
#[tokio::test]
async fn a_key_the_kms_still_refuses_stays_scheduled_and_is_restored_once_enabled() {
    let fx = Fixture::new().await;
    let every_second = MonitorPolicy::new(Duration::from_secs(1), 1000);
    // Keys cached for a second: the holding lapses before the checks below.
    let keyring = fx
        .keyring(Duration::from_secs(1), LOOSE)
        .with_monitor(Some(every_second));
    let t = tenant("still-refused");
    onboard(&keyring, &t, "default").await;
    let c = EncryptionContext::empty();
    let (env, _) = keyring
        .encrypt(&t, &Scope::default_scope(), &c, b"data")
        .await
        .unwrap();
    // The customer disables the key; the next cold decrypt meets the refusal and revokes.
    fx.operator().set_enabled("default", false).unwrap();
    keyring.purge_tenant(&t).await;
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap_err().reason(),
        "KEY_REFUSED"
    );
    let binding = fx.store.active_binding(&t).await.unwrap().unwrap();
    assert_eq!(binding.state, KekState::Revoked);
    // The check the revocation scheduled finds the key still refused: nothing changes...
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let (checked, _) = keyring.check_due(every_second).await.unwrap();
    assert_eq!(checked, vec![(t.clone(), CheckOutcome::Unchanged)]);
    // ...and the binding stays scheduled, although no replica holds its key.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let (checked, _) = keyring.check_due(every_second).await.unwrap();
        assert_eq!(checked, vec![(t.clone(), CheckOutcome::Unchanged)]);
    }
    // Enabled again: the next check restores.
    fx.operator().set_enabled("default", true).unwrap();
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let (checked, _) = keyring.check_due(every_second).await.unwrap();
    assert_eq!(checked, vec![(t.clone(), CheckOutcome::Restored)]);
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap().as_slice(),
        b"data"
    );
}
