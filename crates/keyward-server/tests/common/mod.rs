//! Shared by the tenant-key authentication tests (docs/adr/0007-tenant-key-mac.md): a keyring on
//! a real SQLite store, SQL access to `tenant_keys` as a database writer has it, and the
//! assertion that a refused tenant key is refused everywhere without revoking anything.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test support shared by several test binaries, each using a part of it"
)]

pub(crate) mod bound;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use keyward_audit::IdentifierHasher;
use keyward_envelope::{EncryptionContext, KeyId, SecretKey, TenantId, WrappedKey};
use keyward_kms::{
    Capabilities, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind, WrapContext,
    local::LocalProvider,
};
use keyward_server::{CachePolicy, Keyring, Providers, keyring::RotationPolicy};
use keyward_store::{KekState, Scope, Store as _, sqlite::SqliteStore};

/// The deployment's audit identifier key in these tests.
pub(crate) const IDENTIFIER_KEY: [u8; 32] = [7; 32];

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) store: Arc<SqliteStore>,
    pub(crate) providers: Providers,
}

impl Fixture {
    pub(crate) async fn new(providers: Providers) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        Self {
            _dir: dir,
            store,
            providers,
        }
    }

    /// A keyring with cold caches on the fixture's store, as a replica that just started.
    pub(crate) fn keyring(&self) -> Keyring {
        Keyring::new(
            self.store.clone(),
            self.providers.clone(),
            CachePolicy {
                ttl: Duration::from_secs(300),
                max_tenant_keys: 1000,
                max_deks: 1000,
            },
            RotationPolicy {
                max_age: Duration::from_secs(3600),
                max_messages: 1 << 20,
                max_bytes: 1 << 30,
            },
            Arc::new(IdentifierHasher::new(IDENTIFIER_KEY)),
        )
    }

    /// `tenant_keys.<column>` of tenant key `id`, read with SQL.
    pub(crate) async fn column(&self, id: &KeyId, column: &str) -> Option<Vec<u8>> {
        sqlx::query_scalar(&format!("SELECT {column} FROM tenant_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// Writes `tenant_keys.<column>` of tenant key `id` with SQL, as anyone who can write the
    /// database can, behind Keyward's back.
    pub(crate) async fn set_column(&self, id: &KeyId, column: &str, value: Option<Vec<u8>>) {
        let done = sqlx::query(&format!(
            "UPDATE tenant_keys SET {column} = $1 WHERE id = $2"
        ))
        .bind(value)
        .bind(id.to_string())
        .execute(self.store.pool())
        .await
        .unwrap();
        assert_eq!(done.rows_affected(), 1);
    }
}

pub(crate) fn tenant(s: &str) -> TenantId {
    TenantId::try_from(s).unwrap()
}

pub(crate) fn scope(s: &str) -> Scope {
    Scope::try_from(s).unwrap()
}

pub(crate) fn ctx() -> EncryptionContext {
    let map: BTreeMap<String, String> = [("conversation".to_owned(), "42".to_owned())].into();
    EncryptionContext::try_from_map(map).unwrap()
}

/// With the tenant key of `t` tampered with in the store: a replica with cold caches refuses
/// it for decrypt, encrypt (no DEK goes under it) and the monitor's canary, each with
/// WRAPPED_KEY_REJECTED, before the KMS is asked (`kms_unwraps` does not move); and nothing is
/// revoked, because a rejected stored key is not the customer's KMS refusing.
pub(crate) async fn assert_refused_without_revoking(
    fx: &Fixture,
    t: &TenantId,
    envelope: &[u8],
    kms_unwraps: impl Fn() -> u64,
) {
    let keyring = fx.keyring();
    let unwraps = kms_unwraps();
    let e = keyring
        .encrypt(t, &scope("new-scope"), &ctx(), b"new data")
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.reason(), "WRAPPED_KEY_REJECTED", "encrypt: {e}");
    for _ in 0..2 {
        let e = keyring
            .decrypt(t, envelope, &ctx())
            .await
            .map(drop)
            .unwrap_err();
        assert_eq!(e.reason(), "WRAPPED_KEY_REJECTED", "decrypt: {e}");
    }
    let binding = fx.store.active_binding(t).await.unwrap().unwrap();
    let e = keyring.check_binding(&binding).await.map(drop).unwrap_err();
    assert_eq!(e.reason(), "WRAPPED_KEY_REJECTED", "monitor: {e}");
    assert_eq!(
        kms_unwraps(),
        unwraps,
        "the tampered key never reached the KMS"
    );
    assert_eq!(
        fx.store.active_binding(t).await.unwrap().unwrap().state,
        KekState::Active,
        "not revoked"
    );
}

/// The local development provider, counting the unwraps that reach it.
#[derive(Debug)]
pub(crate) struct Counting {
    pub(crate) inner: LocalProvider,
    pub(crate) unwraps: AtomicU64,
}

impl Counting {
    pub(crate) fn open(dir: &std::path::Path) -> Arc<Self> {
        Arc::new(Self {
            inner: LocalProvider::open(dir).unwrap(),
            unwraps: AtomicU64::new(0),
        })
    }

    pub(crate) fn unwraps(&self) -> u64 {
        self.unwraps.load(Ordering::SeqCst)
    }
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
        self.inner.wrap(kek, key, ctx).await
    }
    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(kek, wrapped, ctx).await
    }
    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        self.inner.describe(kek).await
    }
}
