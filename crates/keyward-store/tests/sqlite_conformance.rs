//! The store conformance suite on SQLite, plus what only SQLite can show: PRAGMAs on pooled
//! connections, persistence across reopening, idempotent migrations, read-only handles and
//! `dump()`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failure must abort with a message"
)]

use std::path::{Path, PathBuf};

use keyward_store::conformance;
use keyward_store::sqlite::SqliteStore;
use keyward_store::{KekState, KeyId, NewDek, NewKekBinding, Scope, Store, StoreError, WrappedKey};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};
use tempfile::TempDir;

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("keyward.db")
}

async fn open_temp() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).await.unwrap();
    (dir, store)
}

/// A tenant with a binding and an active DEK in the default scope.
async fn populate(store: &SqliteStore) -> (keyward_store::TenantId, NewKekBinding, NewDek) {
    let tenant = conformance::unique_tenant_id();
    store.create_tenant(&tenant, "Persisted").await.unwrap();
    let binding = NewKekBinding {
        tenant: tenant.clone(),
        provider: "local".to_owned(),
        key_ref: "local:kek".to_owned(),
        tenant_key_id: KeyId::generate().unwrap(),
        wrapped_tenant_key: WrappedKey::new(vec![0, 1, 2, 255]),
    };
    store.bind_kek(binding.clone()).await.unwrap();
    let dek = NewDek {
        id: KeyId::generate().unwrap(),
        tenant: tenant.clone(),
        scope: Scope::default_scope(),
        tenant_key_id: binding.tenant_key_id,
        wrapped: WrappedKey::new(vec![255, 0, 7]),
    };
    store.insert_dek(dek.clone()).await.unwrap();
    (tenant, binding, dek)
}

/// A raw connection that bypasses the store (to plant corrupt rows).
async fn raw_connection(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .foreign_keys(false);
    SqliteConnection::connect_with(&options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let (_dir, store) = open_temp().await;
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_shared_database() {
    // Consecutive runs on one database that already holds other data, as a long-lived
    // PostgreSQL CI database would see. (Runs must not overlap: the "nothing inserted" checks
    // compare global counts.)
    let (_dir, store) = open_temp().await;
    populate(&store).await;
    conformance::run_all(&store).await;
    let reopened = store.clone();
    conformance::run_all(&reopened).await;
}

#[tokio::test]
async fn every_pooled_connection_is_wal_and_synchronous_full() {
    let (_dir, store) = open_temp().await;
    // Hold several connections at once so that more than the first one is checked.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(store.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "synchronous=FULL");
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(foreign_keys, 1);
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(busy_timeout, 5000);
    }
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    let (tenant, binding, dek) = populate(&store).await;
    store.add_dek_usage(&tenant, &dek.id, 3, 300).await.unwrap();
    let tenant_before = store.get_tenant(&tenant).await.unwrap();
    let binding_before = store.active_binding(&tenant).await.unwrap();
    let dek_before = store.get_dek(&tenant, &dek.id).await.unwrap();
    let dump_before = store.dump().await.unwrap();
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_tenant(&tenant).await.unwrap(), tenant_before);
    assert_eq!(store.active_binding(&tenant).await.unwrap(), binding_before);
    let got = store.get_dek(&tenant, &dek.id).await.unwrap();
    assert_eq!(got, dek_before);
    let got = got.unwrap();
    assert_eq!(got.wrapped, dek.wrapped);
    assert_eq!((got.messages, got.bytes), (3, 300));
    let tk = store
        .get_tenant_key(&tenant, &binding.tenant_key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tk.wrapped, binding.wrapped_tenant_key);
    assert_eq!(store.dump().await.unwrap(), dump_before);
}

#[tokio::test]
async fn migrations_are_idempotent_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    populate(&store).await;
    let migrations = |store: SqliteStore| async move {
        sqlx::query("SELECT version, applied_at_ms FROM schema_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get::<i64, _>(0), row.get::<i64, _>(1)))
            .collect::<Vec<_>>()
    };
    let first = migrations(store.clone()).await;
    assert_eq!(first.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1]);
    let dump = store.dump().await.unwrap();
    store.close().await;

    for _ in 0..2 {
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(migrations(store.clone()).await, first, "nothing re-applied");
        assert_eq!(store.dump().await.unwrap(), dump);
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, b) = (a.unwrap(), b.unwrap());
    populate(&a).await;
    assert_eq!(a.dump().await.unwrap(), b.dump().await.unwrap());
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (9999, 0)")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("9999")),
        "{err:?}"
    );
}

#[tokio::test]
async fn read_only_handle_reads_but_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let writer = SqliteStore::open(&path).await.unwrap();
    let (tenant, binding, dek) = populate(&writer).await;

    let reader = SqliteStore::open_read_only(&path).await.unwrap();
    assert!(reader.get_tenant(&tenant).await.unwrap().is_some());
    assert_eq!(
        reader.get_dek(&tenant, &dek.id).await.unwrap(),
        writer.get_dek(&tenant, &dek.id).await.unwrap()
    );
    assert_eq!(reader.dump().await.unwrap(), writer.dump().await.unwrap());
    let dump = writer.dump().await.unwrap();

    let other = conformance::unique_tenant_id();
    let err = reader.create_tenant(&other, "nope").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = reader
        .add_dek_usage(&tenant, &dek.id, 1, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = reader
        .set_binding_state(
            writer.active_binding(&tenant).await.unwrap().unwrap().id,
            KekState::Revoked,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert_eq!(
        writer.dump().await.unwrap(),
        dump,
        "read-only changed nothing"
    );

    // The reader sees the writer's later commits.
    writer
        .set_binding_state(
            writer.active_binding(&tenant).await.unwrap().unwrap().id,
            KekState::Revoked,
        )
        .await
        .unwrap();
    assert_eq!(
        reader.active_binding(&tenant).await.unwrap().unwrap().state,
        KekState::Revoked
    );
    assert_eq!(
        reader
            .active_binding(&tenant)
            .await
            .unwrap()
            .unwrap()
            .tenant_key_id,
        binding.tenant_key_id
    );
}

#[tokio::test]
async fn read_only_handle_opens_a_closed_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let writer = SqliteStore::open(&path).await.unwrap();
    let (tenant, _, dek) = populate(&writer).await;
    let dump = writer.dump().await.unwrap();
    writer.close().await;
    drop(writer);

    let reader = SqliteStore::open_read_only(&path).await.unwrap();
    assert!(reader.get_dek(&tenant, &dek.id).await.unwrap().is_some());
    assert_eq!(reader.dump().await.unwrap(), dump);
    assert!(
        reader
            .create_tenant(&conformance::unique_tenant_id(), "x")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn read_only_open_of_a_missing_file_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    assert!(SqliteStore::open_read_only(&path).await.is_err());
    assert!(!path.exists());
}

#[tokio::test]
async fn dump_is_deterministic_and_sees_every_write() {
    let (_dir, store) = open_temp().await;
    let empty = store.dump().await.unwrap();
    assert_eq!(store.dump().await.unwrap(), empty);
    for table in [
        "deks",
        "kek_bindings",
        "schema_migrations",
        "tenant_keys",
        "tenants",
    ] {
        assert!(empty.contains(&format!("table {table} (")), "{empty}");
    }

    let (tenant, _, dek) = populate(&store).await;
    let populated = store.dump().await.unwrap();
    assert_ne!(populated, empty);
    assert_eq!(store.dump().await.unwrap(), populated);
    // Wrapped bytes appear as hex.
    assert!(
        populated.contains("X'0001 02FF'".replace(' ', "").as_str()),
        "{populated}"
    );
    assert!(populated.contains(&dek.id.to_string()));

    store.add_dek_usage(&tenant, &dek.id, 1, 1).await.unwrap();
    let used = store.dump().await.unwrap();
    assert_ne!(used, populated);
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let (_dir, store) = open_temp().await;
    let (tenant, binding, dek) = populate(&store).await;
    let before = store.dump().await.unwrap();

    // Duplicate tenant.
    assert!(store.create_tenant(&tenant, "again").await.is_err());
    // Binding for an unknown tenant; binding reusing a tenant key id.
    let mut bad_binding = binding.clone();
    bad_binding.tenant = conformance::unique_tenant_id();
    bad_binding.tenant_key_id = KeyId::generate().unwrap();
    assert!(store.bind_kek(bad_binding).await.is_err());
    assert!(store.bind_kek(binding.clone()).await.is_err());
    // DEK under an unknown tenant key; duplicate DEK id.
    let mut bad_dek = dek.clone();
    bad_dek.id = KeyId::generate().unwrap();
    bad_dek.tenant_key_id = KeyId::generate().unwrap();
    assert!(store.insert_dek(bad_dek).await.is_err());
    assert!(store.insert_dek(dek.clone()).await.is_err());
    // Usage for an unknown DEK; state of an unknown binding.
    assert!(
        store
            .add_dek_usage(&tenant, &KeyId::generate().unwrap(), 1, 1)
            .await
            .is_err()
    );
    assert!(
        store
            .set_binding_state(-1, KekState::Revoked)
            .await
            .is_err()
    );

    assert_eq!(store.dump().await.unwrap(), before);
}

#[tokio::test]
async fn corrupt_rows_are_reported_with_table_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    let (tenant, _, dek) = populate(&store).await;

    let mut raw = raw_connection(&path).await;
    sqlx::query("UPDATE deks SET scope = '' WHERE id = $1")
        .bind(dek.id.to_string())
        .execute(&mut raw)
        .await
        .unwrap();
    let err = store.get_dek(&tenant, &dek.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.starts_with("deks.scope:")),
        "{err:?}"
    );

    sqlx::query(
        "UPDATE deks SET tenant_key_id = 'not hex at all, but 32 chars long' WHERE id = $1",
    )
    .bind(dek.id.to_string())
    .execute(&mut raw)
    .await
    .unwrap();
    sqlx::query("UPDATE deks SET scope = 'default' WHERE id = $1")
        .bind(dek.id.to_string())
        .execute(&mut raw)
        .await
        .unwrap();
    let err = store.get_dek(&tenant, &dek.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.starts_with("deks.tenant_key_id:")),
        "{err:?}"
    );

    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE kek_bindings SET state = 'sleepy' WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .execute(&mut raw)
        .await
        .unwrap();
    let err = store.active_binding(&tenant).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.starts_with("kek_bindings.state:")),
        "{err:?}"
    );
    raw.close().await.unwrap();
}

#[tokio::test]
async fn database_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    populate(&store).await;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
    }
}
