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
    self, Arg, Backdoor, backdoor, populate, revoke_fresh, state_changed, tenant_created,
};

mod common;
use common::applied_migrations;
use keyward_store::sqlite::SqliteStore;
use keyward_store::{KekState, Store, StoreError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("keyward.db")
}

async fn open_temp() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).await.unwrap();
    (dir, store)
}

/// A fresh database for the backdoor tests of the conformance suite.
struct Sqlite {
    dir: TempDir,
    store: SqliteStore,
    /// The raw connection (foreign keys off), opened at first use.
    raw: tokio::sync::OnceCell<tokio::sync::Mutex<SqliteConnection>>,
}

impl Sqlite {
    async fn new() -> Sqlite {
        let (dir, store) = open_temp().await;
        Sqlite {
            dir,
            store,
            raw: tokio::sync::OnceCell::new(),
        }
    }
}

impl Backdoor for Sqlite {
    const REFUSES_NUL_TEXT: bool = false;
    const RAW_SKIPS_FOREIGN_KEYS: bool = true;
    const MORE_TABLES: &'static [&'static str] = &[];
    const MORE_APPEND_ONLY_STATEMENTS: &'static [&'static str] = &[];
    const UNGUARD_AUDIT_RECORDS: &'static str = "DROP TRIGGER IF EXISTS audit_records_no_update";
    const BREAK_AUDIT_WRITES: &'static str = "CREATE TRIGGER fail_audit BEFORE INSERT ON \
         audit_records BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END";
    const REPAIR_AUDIT_WRITES: &'static str = "DROP TRIGGER fail_audit";
    const ALLOW_ANY_BINDING_STATE: &'static str = "PRAGMA ignore_check_constraints = ON";

    fn store(&self) -> &dyn Store {
        &self.store
    }

    async fn dump(&self) -> String {
        self.store.dump().await.unwrap()
    }

    fn dumped_bytes(bytes: &[u8]) -> String {
        format!("X'{}'", hex::encode_upper(bytes))
    }

    async fn execute(&self, sql: &str, args: Vec<Arg>) -> Result<(), String> {
        let raw = self
            .raw
            .get_or_init(|| async {
                tokio::sync::Mutex::new(raw_connection(&db_path(&self.dir)).await)
            })
            .await;
        backdoor::execute(&mut *raw.lock().await, sql, args).await
    }

    async fn execute_pooled(&self, sql: &str) -> Result<(), String> {
        backdoor::execute(self.store.pool(), sql, Vec::new()).await
    }

    async fn reopen(&self) -> Result<(), StoreError> {
        SqliteStore::open(&db_path(&self.dir)).await?.close().await;
        Ok(())
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

/// The whole suite again on a store that appends format-v2 records (docs/audit-format.md
/// §3.3), after format-v1 records (a mixed chain), and their round trip with salt and tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_format_v2_records() {
    let (_dir, store) = open_temp().await;
    populate(&store).await; // format v1
    let sealer = keyward_audit::RecordSealer::new(std::sync::Arc::new(
        keyward_audit::IdentifierHasher::new([9; 32]),
    ));
    let store = store.with_record_sealer(std::sync::Arc::new(sealer.clone()));
    conformance::check_v2_records_round_trip(&store, &sealer).await;
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
    let first = applied_migrations(store.pool(), "sqlite").await;
    let dump = store.dump().await.unwrap();
    store.close().await;

    for _ in 0..2 {
        let store = SqliteStore::open(&path).await.unwrap();
        let again = applied_migrations(store.pool(), "sqlite").await;
        assert_eq!(again, first, "nothing re-applied");
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

/// `contents()` (what `keyward store backup` reports of its copy): the counts of one snapshot
/// and the oldest DEK and tenant key; an empty store has no oldest anything. Read through a
/// read-only handle, as the backup command reads its copy.
#[tokio::test]
async fn contents_counts_keys_and_finds_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).await.unwrap();
    let empty = store.contents().await.unwrap();
    assert_eq!(empty, keyward_store::StoreContents::default());

    let (tenant, binding, dek) = populate(&store).await;
    let (_, _, second) = populate(&store).await;
    let first_dek = store.get_dek(&tenant, &dek.id).await.unwrap().unwrap();
    let key = store
        .get_tenant_key(&tenant, &binding.tenant_key_id)
        .await
        .unwrap()
        .unwrap();
    let head = store.audit_head().await.unwrap();
    let last = store
        .audit_records(
            &keyward_store::AuditQuery::default()
                .with_after_seq(head.seq - 1)
                .with_limit(1),
        )
        .await
        .unwrap();
    let reader = SqliteStore::open_read_only(&path).await.unwrap();
    let contents = reader.contents().await.unwrap();
    assert_eq!(
        contents,
        keyward_store::StoreContents {
            tenants: 2,
            tenant_keys: 2,
            deks: 2,
            dek_tombstones: 0,
            oldest_dek_created_at_ms: Some(first_dek.created_at_ms),
            oldest_tenant_key_created_at_ms: Some(key.created_at_ms),
            last_record_at_ms: Some(last[0].time_ms()),
        }
    );
    assert!(
        store
            .get_dek(&second.tenant, &second.id)
            .await
            .unwrap()
            .unwrap()
            .created_at_ms
            >= first_dek.created_at_ms
    );
}

// ----- the backdoor tests of the conformance suite ----------------------------------------------

keyward_store::backdoor_tests!(Sqlite::new);

/// Crypto-shredding leaves no copy of a shredded wrapped DEK in the database's files: not in
/// free pages (`secure_delete`), not in the WAL nor in an old page of the main file (the
/// checkpoint of `erase_shredded`). The wrapped key is found in the files before the shred, so
/// the search is known to work.
#[tokio::test]
async fn a_shredded_wrapped_dek_is_nowhere_in_the_files() {
    use keyward_store::{NewDek, NewKekBinding, ProviderKind, Scope, ScopeShred, WrappedKey};
    let (dir, store) = open_temp().await;
    let tenant = conformance::unique_tenant_id();
    store
        .create_tenant(&tenant, "Shred", &tenant_created)
        .await
        .unwrap();
    let binding = store
        .bind_kek(
            NewKekBinding {
                tenant: tenant.clone(),
                provider: ProviderKind::Local,
                key_ref: "kek".to_owned(),
                tenant_key_id: keyward_store::KeyId::generate().unwrap(),
                wrapped_tenant_key: WrappedKey::new(vec![0x11; 60]),
                tenant_key_mac: Some(vec![0x22; 32]),
            },
            &conformance::binding_changed,
        )
        .await
        .unwrap()
        .binding;
    // A wrapped key no other bytes in the files can look like.
    let secret: Vec<u8> = (0u8..60).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let keep: Vec<u8> = (0u8..60).map(|i| i.wrapping_mul(53) ^ 0x3c).collect();
    for (scope, wrapped) in [("conv-erase", &secret), ("conv-keep", &keep)] {
        store
            .insert_dek(
                NewDek {
                    id: keyward_store::KeyId::generate().unwrap(),
                    tenant: tenant.clone(),
                    scope: Scope::try_from(scope).unwrap(),
                    tenant_key_id: binding.tenant_key_id,
                    wrapped: WrappedKey::new(wrapped.clone()),
                },
                &conformance::dek_events,
            )
            .await
            .unwrap();
    }
    // Some rows after it, so that the page it sits on is not simply the last one written.
    for i in 0..200 {
        store
            .insert_dek(
                NewDek {
                    id: keyward_store::KeyId::generate().unwrap(),
                    tenant: tenant.clone(),
                    scope: Scope::try_from(format!("filler-{i}")).unwrap(),
                    tenant_key_id: binding.tenant_key_id,
                    wrapped: WrappedKey::new(vec![0x77; 60]),
                },
                &conformance::dek_events,
            )
            .await
            .unwrap();
    }
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect()
    };
    let holds = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        files(dir.path()).iter().any(|(_, b)| holds(b, &secret)),
        "the wrapped DEK is in the files before the shred (else this test proves nothing)"
    );

    let result = store
        .shred_scope(
            ScopeShred {
                tenant: tenant.clone(),
                scope: Scope::try_from("conv-erase").unwrap(),
                scope_hmac: "hmac:conv-erase".to_owned(),
                shredded_by: "test".to_owned(),
                reason: "raw bytes".to_owned(),
                only_if: None,
            },
            &conformance::shred_events,
        )
        .await
        .unwrap();
    assert_eq!(result.tombstones.len(), 1);
    store.erase_shredded().await;

    for (name, bytes) in files(dir.path()) {
        assert!(
            !holds(&bytes, &secret),
            "the shredded wrapped DEK is still in {name}"
        );
    }
    assert!(
        files(dir.path()).iter().any(|(_, b)| holds(b, &keep)),
        "the other scope's wrapped DEK is kept"
    );
    store.close().await;
    for (name, bytes) in files(dir.path()) {
        assert!(!holds(&bytes, &secret), "after closing: still in {name}");
    }
}

/// A database written by schema version 7 (before re-keying) upgrades to 8 in place: each
/// tenant key is then wrapped by the binding it was created with (`kek_binding_id` filled in),
/// bindings are not retired, tenants do not re-key on their own, and the store reads it all.
#[tokio::test]
async fn a_schema_7_database_upgrades_to_re_keying() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let mut conn = SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations (version INTEGER NOT NULL PRIMARY KEY, \
             applied_at_ms INTEGER NOT NULL) STRICT",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(&migrations)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files.iter().filter(|f| {
            let name = f.file_name().unwrap().to_str().unwrap();
            name[..4].parse::<i64>().unwrap() <= 7
        }) {
            let version: i64 = file.file_name().unwrap().to_str().unwrap()[..4]
                .parse()
                .unwrap();
            sqlx::raw_sql(&std::fs::read_to_string(file).unwrap())
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query("INSERT INTO schema_migrations VALUES ($1, 0)")
                .bind(version)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let tk = "0123456789abcdef0123456789abcdef";
        sqlx::raw_sql(&format!(
            "INSERT INTO tenants (id, display_name, created_at_ms) VALUES ('acme', 'Acme', 1); \
             INSERT INTO kek_bindings (tenant_id, provider, key_ref, state, created_at_ms, \
                 deactivated_at_ms, state_changed_at_ms) VALUES ('acme', 'local', 'k1', 'active', 1, NULL, 1); \
             INSERT INTO tenant_keys (id, tenant_id, binding_id, wrapped, created_at_ms, mac) \
                 VALUES ('{tk}', 'acme', 1, x'0102', 1, x'0304');"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    applied_migrations(store.pool(), "sqlite").await;
    let tenant = keyward_store::TenantId::try_from("acme").unwrap();
    let id: keyward_store::KeyId = "0123456789abcdef0123456789abcdef".parse().unwrap();
    let record = store.get_tenant_key(&tenant, &id).await.unwrap().unwrap();
    assert_eq!(record.binding_id, 1);
    assert_eq!(record.key_ref, "k1");
    assert_eq!(record.binding_state, KekState::Active);
    assert_eq!(record.wrapped.as_bytes(), [1, 2]);
    let state = store.rekey_state(&tenant).await.unwrap();
    assert_eq!(state.bindings[0].state, KekState::Active);
    assert_eq!(state.tenant_keys, [record]);
    let tenant_row = store.get_tenant(&tenant).await.unwrap().unwrap();
    assert!(!tenant_row.policy.auto_rekey);
    assert!(store.scheduled_rekeys().await.unwrap().is_empty());
}
