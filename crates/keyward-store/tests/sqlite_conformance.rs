//! The store conformance suite on SQLite, plus what only SQLite can show: PRAGMAs on pooled
//! connections, persistence across reopening, idempotent migrations, read-only handles and
//! `dump()`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failure must abort with a message"
)]

use std::path::{Path, PathBuf};

use keyward_store::conformance::{
    self, binding_changed, dek_events, state_changed, tenant_created,
};

mod common;
use common::{Arg, Backend, migration_versions, populate, revoke_fresh, usage_event};
use keyward_store::sqlite::SqliteStore;
use keyward_store::{
    AuditQuery, KekState, KeyId, NewDek, NewKekBinding, Record, Store, StoreError,
};
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

/// A fresh database for the shared tests of `common`.
struct Sqlite {
    dir: TempDir,
    store: SqliteStore,
    raw: tokio::sync::Mutex<Option<SqliteConnection>>,
}

impl Sqlite {
    async fn new() -> Sqlite {
        let (dir, store) = open_temp().await;
        Sqlite {
            dir,
            store,
            raw: tokio::sync::Mutex::new(None),
        }
    }

    /// The raw connection, opened at first use with the audit records' update guard dropped.
    async fn raw(&self) -> tokio::sync::MappedMutexGuard<'_, SqliteConnection> {
        let mut guard = self.raw.lock().await;
        if guard.is_none() {
            let mut conn = raw_connection(&db_path(&self.dir)).await;
            sqlx::raw_sql("DROP TRIGGER audit_records_no_update")
                .execute(&mut conn)
                .await
                .unwrap();
            *guard = Some(conn);
        }
        tokio::sync::MutexGuard::map(guard, |c| c.as_mut().unwrap())
    }
}

impl Backend for Sqlite {
    const REFUSES_NUL_TEXT: bool = false;

    fn store(&self) -> &dyn Store {
        &self.store
    }

    async fn dump(&self) -> String {
        self.store.dump().await.unwrap()
    }

    async fn tamper(&self, sql: &str, args: Vec<Arg>) {
        let mut query = sqlx::query(sql);
        for arg in args {
            query = match arg {
                Arg::Int(i) => query.bind(i),
                Arg::Text(t) => query.bind(t),
            };
        }
        query.execute(&mut *self.raw().await).await.unwrap();
    }

    async fn fetch_text(&self, sql: &str, arg: i64) -> String {
        sqlx::query_scalar(sql)
            .bind(arg)
            .fetch_one(&mut *self.raw().await)
            .await
            .unwrap()
    }
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
    assert_eq!(
        first.iter().map(|m| m.0).collect::<Vec<_>>(),
        migration_versions("sqlite"),
        "every migration applied once, in order"
    );
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
    let err = reader
        .create_tenant(&other, "nope", &tenant_created)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = reader
        .add_dek_usage(&tenant, &dek.id, 1, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = reader
        .set_binding_state(
            revoke_fresh(writer.active_binding(&tenant).await.unwrap().unwrap().id),
            &state_changed,
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
            revoke_fresh(writer.active_binding(&tenant).await.unwrap().unwrap().id),
            &state_changed,
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
            .create_tenant(&conformance::unique_tenant_id(), "x", &tenant_created)
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
        "audit_checkpoints",
        "audit_records",
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

// ----- the audit log ----------------------------------------------------------------------

/// Installs a trigger that makes every audit append fail, as a full or broken audit table would.
async fn break_audit_writes(path: &Path) {
    let mut raw = raw_connection(path).await;
    sqlx::raw_sql(
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_records \
         BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    raw.close().await.unwrap();
}

async fn repair_audit_writes(path: &Path) {
    let mut raw = raw_connection(path).await;
    sqlx::raw_sql("DROP TRIGGER fail_audit")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();
}

#[tokio::test]
async fn lifecycle_changes_fail_closed_when_the_audit_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    let (tenant, binding, dek) = populate(&store).await;
    let binding_id = store.active_binding(&tenant).await.unwrap().unwrap().id;
    break_audit_writes(&path).await;
    let before = store.dump().await.unwrap();

    let new_tenant = conformance::unique_tenant_id();
    let new_binding = NewKekBinding {
        tenant_key_id: KeyId::generate().unwrap(),
        key_ref: "local:kek-2".to_owned(),
        ..binding.clone()
    };
    let new_dek = NewDek {
        id: KeyId::generate().unwrap(),
        ..dek.clone()
    };
    let is_backend = |e: StoreError| matches!(e, StoreError::Backend(_));

    let err = store
        .create_tenant(&new_tenant, "Unaudited", &tenant_created)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .bind_kek(new_binding.clone(), &binding_changed)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .insert_dek(new_dek.clone(), &dek_events)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .set_binding_state(revoke_fresh(binding_id), &state_changed)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .append_audit(vec![usage_event(&tenant, 1)])
        .await
        .unwrap_err();
    assert!(is_backend(err));
    assert_eq!(
        store.dump().await.unwrap(),
        before,
        "no change without its record"
    );

    // Once the audit log accepts writes again, the same calls succeed, each with its records.
    repair_audit_writes(&path).await;
    let head = store.audit_head().await.unwrap();
    store
        .create_tenant(&new_tenant, "Audited", &tenant_created)
        .await
        .unwrap();
    store.bind_kek(new_binding, &binding_changed).await.unwrap();
    let inserted = store.insert_dek(new_dek, &dek_events).await.unwrap();
    assert_eq!(inserted.retired, Some(dek.id));
    // The new binding deactivated this one: its version moved to 1.
    store
        .set_binding_state(
            keyward_store::StateUpdate {
                expected_version: 1,
                ..revoke_fresh(binding_id)
            },
            &state_changed,
        )
        .await
        .unwrap();
    store
        .append_audit(vec![usage_event(&tenant, 1)])
        .await
        .unwrap();
    let after = store
        .audit_records(&AuditQuery::default().with_after_seq(head.seq))
        .await
        .unwrap();
    // tenant_created 1, binding 2, DEK (retired + created) 2, state 1, usage 1.
    assert_eq!(after.len(), 7);
    assert_eq!(store.audit_head().await.unwrap(), after[6].head());
}

#[tokio::test]
async fn audit_tables_are_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    let (tenant, _, _) = populate(&store).await;
    let head = store.audit_head().await.unwrap();
    let key = keyward_audit::SigningKey::generate().unwrap();
    store
        .insert_checkpoint(&key.sign_checkpoint(&head, 1).unwrap())
        .await
        .unwrap();
    let before = store.dump().await.unwrap();

    // Through the store's own pool and through a raw connection alike.
    let mut raw = raw_connection(&path).await;
    for sql in [
        "UPDATE audit_records SET time_ms = 0",
        "UPDATE audit_records SET body = body || ' '",
        "DELETE FROM audit_records",
        "DELETE FROM audit_records WHERE seq = (SELECT MAX(seq) FROM audit_records)",
        "UPDATE audit_checkpoints SET time_ms = 0",
        "DELETE FROM audit_checkpoints",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        let err = sqlx::query(sql).execute(&mut raw).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // A record must extend the chain by exactly one: no gaps, no reuse of a seq.
    let next = Record::append(&head, 1, usage_event(&tenant, 1)).unwrap();
    let skipped = Record::append(&next.head(), 1, usage_event(&tenant, 1)).unwrap();
    for (seq, record) in [(skipped.seq(), &skipped), (head.seq, &next)] {
        let err = sqlx::query(
            "INSERT INTO audit_records (seq, time_ms, event_type, tenant_id, body, hash) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(i64::try_from(seq).unwrap())
        .bind(record.time_ms())
        .bind(record.event().event_type())
        .bind(tenant.as_str())
        .bind(String::from_utf8(record.canonical_bytes()).unwrap())
        .bind(hex::encode(record.hash()))
        .execute(&mut raw)
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("extend the chain by one"),
            "seq {seq}: {err}"
        );
    }
    raw.close().await.unwrap();
    assert_eq!(store.dump().await.unwrap(), before);
}

// ----- the backend-generic tests of `common` --------------------------------------------------

#[tokio::test]
async fn bad_requests_change_nothing() {
    common::bad_requests_change_nothing(&Sqlite::new().await).await;
}

#[tokio::test]
async fn checkpoint_of_the_empty_chain() {
    common::checkpoint_of_the_empty_chain(&Sqlite::new().await).await;
}

#[tokio::test]
async fn tampered_audit_records_are_reported_as_corrupt() {
    common::tampered_audit_records_are_reported_as_corrupt(&Sqlite::new().await).await;
}

#[tokio::test]
async fn record_times_never_go_backwards() {
    common::record_times_never_go_backwards(&Sqlite::new().await).await;
}
