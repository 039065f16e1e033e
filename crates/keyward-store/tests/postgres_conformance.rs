//! The store conformance suite on PostgreSQL, plus what only this backend can show: several
//! replicas (separate pools) on one database, the append-only and gap-free triggers, migrations
//! run by replicas starting at once, connection settings and `dump()`.
//!
//! Needs a PostgreSQL server: `KEYWARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) must name a role that may `CREATE DATABASE`;
//! `scripts/test` makes sure one is there (`scripts/ensure-postgres.sh`). Without a server these
//! tests fail, they are never skipped. Each test creates its own database `kw_test_<hex>` and
//! drops it when it passes (a failed test leaves its database behind for inspection).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failure must abort with a message"
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_store::conformance::{
    self, Arg, Backdoor, backdoor, binding_changed, dek_events, populate, tenant_created,
    usage_event,
};
use keyward_store::postgres::{PostgresOptions, PostgresStore};
use keyward_store::{
    AuditQuery, DekInsert, KeyId, NewDek, NewKekBinding, Record, Scope, Store, StoreError,
    WrappedKey,
};
use sqlx::{Connection, PgConnection};

mod common;
use common::applied_migrations;
use common::test_db::{DEFAULT_URL, TestDb, admin_url, redacted, with_database};

/// A fresh database for the backdoor tests of the conformance suite.
struct Postgres {
    db: TestDb,
    store: PostgresStore,
    /// The raw (superuser) connection, opened at first use.
    raw: tokio::sync::OnceCell<tokio::sync::Mutex<PgConnection>>,
}

impl Postgres {
    async fn new() -> Postgres {
        let db = TestDb::create().await;
        let store = db.store().await;
        Postgres {
            db,
            store,
            raw: tokio::sync::OnceCell::new(),
        }
    }
}

impl Backdoor for Postgres {
    const REFUSES_NUL_TEXT: bool = true;
    const RAW_SKIPS_FOREIGN_KEYS: bool = false;
    const MORE_TABLES: &'static [&'static str] = &["audit_chain_lock"];
    const MORE_APPEND_ONLY_STATEMENTS: &'static [&'static str] = &[
        "TRUNCATE audit_records",
        "TRUNCATE audit_checkpoints",
        "DELETE FROM audit_chain_lock",
        "UPDATE audit_chain_lock SET id = 1",
        "INSERT INTO audit_chain_lock (id) VALUES (1)",
        "TRUNCATE audit_chain_lock",
    ];
    const UNGUARD_AUDIT_RECORDS: &'static str =
        "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only";
    const BREAK_AUDIT_WRITES: &'static str = "CREATE FUNCTION fail_audit() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit unavailable'; END; $$; \
         CREATE TRIGGER fail_audit BEFORE INSERT ON audit_records \
         FOR EACH ROW EXECUTE FUNCTION fail_audit();";
    const REPAIR_AUDIT_WRITES: &'static str = "DROP TRIGGER fail_audit ON audit_records";
    const ALLOW_ANY_BINDING_STATE: &'static str =
        "ALTER TABLE kek_bindings DROP CONSTRAINT kek_bindings_state_check";

    fn store(&self) -> &dyn Store {
        &self.store
    }

    async fn dump(&self) -> String {
        self.store.dump().await.unwrap()
    }

    fn dumped_bytes(bytes: &[u8]) -> String {
        // bytea as `\\x…` inside the row text (its backslash doubled).
        format!("\\\\x{}", hex::encode(bytes))
    }

    async fn execute(&self, sql: &str, args: Vec<Arg>) -> Result<(), String> {
        let raw = self
            .raw
            .get_or_init(|| async { tokio::sync::Mutex::new(self.db.raw().await) })
            .await;
        backdoor::execute(&mut *raw.lock().await, sql, args).await
    }

    async fn execute_pooled(&self, sql: &str) -> Result<(), String> {
        backdoor::execute(self.store.pool(), sql, Vec::new()).await
    }

    async fn reopen(&self) -> Result<(), StoreError> {
        PostgresStore::connect(&self.db.url, PostgresOptions::default())
            .await?
            .close()
            .await;
        Ok(())
    }

    /// Closes everything and drops the database (after a passing test).
    async fn finish(self) {
        if let Some(raw) = self.raw.into_inner() {
            raw.into_inner().close().await.unwrap();
        }
        self.store.close().await;
        self.db.finish().await;
    }
}

/// Every record of the chain, seq ascending.
async fn whole_chain(store: &dyn Store) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    loop {
        let after_seq = out.last().map_or(0, Record::seq);
        let page = store
            .audit_records(&AuditQuery::default().with_after_seq(after_seq))
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

// ----- the conformance suite ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let db = TestDb::create().await;
    let store = db.store().await;
    conformance::run_all(&store).await;
    store.close().await;
    db.finish().await;
}

/// The whole suite again on a store that appends format-v2 records (docs/audit-format.md
/// §3.3), after format-v1 records (a mixed chain), and their round trip with salt and tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_format_v2_records() {
    let db = TestDb::create().await;
    let store = db.store().await;
    populate(&store).await; // format v1
    let sealer = keyward_audit::RecordSealer::new(std::sync::Arc::new(
        keyward_audit::IdentifierHasher::new([9; 32]),
    ));
    let store = store.with_record_sealer(std::sync::Arc::new(sealer.clone()));
    conformance::check_v2_records_round_trip(&store, &sealer).await;
    conformance::run_all(&store).await;
    store.close().await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_shared_database_from_two_replicas() {
    // Consecutive runs on one database that already holds other data, the second through
    // another pool, as a second replica would. (Runs must not overlap: the "nothing inserted"
    // checks compare global counts.)
    let db = TestDb::create().await;
    let first = db.store().await;
    populate(&first).await;
    conformance::run_all(&first).await;
    let second = db.store().await;
    conformance::run_all(&second).await;
    first.close().await;
    second.close().await;
    db.finish().await;
}

// ----- several replicas ---------------------------------------------------------------------

/// Two replicas (two pools on one database) hammer one (tenant, scope) with `insert_dek` and
/// the chain with `append_audit`, all at once: exactly one DEK stays active, every DEK either
/// replica was told about is stored and readable from both, the DEKs form one line of
/// retirements (as if the inserts had run one after another), and the audit chain is one
/// gap-free, linked chain holding every record each replica was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_mint_deks_and_append_audit_concurrently() {
    const TASKS_PER_REPLICA: u64 = 8;
    const ROUNDS: u64 = 5;
    let db = TestDb::create().await;
    let options = PostgresOptions {
        max_connections: 4,
        ..PostgresOptions::default()
    };
    let a = Arc::new(db.store_with(options.clone()).await);
    let b = Arc::new(db.store_with(options).await);
    let tenant = conformance::unique_tenant_id();
    a.create_tenant(&tenant, "Hammered", &tenant_created)
        .await
        .unwrap();
    let binding = b
        .bind_kek(
            NewKekBinding {
                tenant: tenant.clone(),
                provider: keyward_store::ProviderKind::Local,
                key_ref: "local:kek".to_owned(),
                tenant_key_id: KeyId::generate().unwrap(),
                wrapped_tenant_key: WrappedKey::new(vec![7; 61]),
                tenant_key_mac: Some(vec![0x6d; 32]),
            },
            &binding_changed,
        )
        .await
        .unwrap()
        .binding;
    let scope = Scope::try_from("hammered").unwrap();

    let tasks = usize::try_from(2 * TASKS_PER_REPLICA).unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(tasks));
    let mut handles = Vec::new();
    for (replica, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for task in 0..TASKS_PER_REPLICA {
            let store = store.clone();
            let start = start.clone();
            let tenant = tenant.clone();
            let scope = scope.clone();
            let tenant_key_id = binding.tenant_key_id;
            let base = u64::try_from(replica).unwrap() * 1000 + task * 100;
            handles.push(tokio::spawn(async move {
                // All tasks of both replicas race for the first DEK, then for every next one.
                start.wait().await;
                let mut inserted: Vec<(NewDek, Result<DekInsert, StoreError>)> = Vec::new();
                let mut appended: Vec<Record> = Vec::new();
                for round in 0..ROUNDS {
                    let id = KeyId::generate().unwrap();
                    let dek = NewDek {
                        id,
                        tenant: tenant.clone(),
                        scope: scope.clone(),
                        tenant_key_id,
                        wrapped: WrappedKey::new(id.to_string().into_bytes()),
                    };
                    let result = store.insert_dek(dek.clone(), &dek_events).await;
                    inserted.push((dek, result));
                    let records = store
                        .append_audit(vec![
                            usage_event(&tenant, base + round),
                            usage_event(&tenant, 10_000 + base + round),
                        ])
                        .await
                        .unwrap();
                    appended.extend(records);
                }
                (inserted, appended)
            }));
        }
    }
    let mut succeeded: Vec<(NewDek, DekInsert)> = Vec::new();
    let mut conflicts = Vec::new();
    let mut appended: Vec<Record> = Vec::new();
    for handle in handles {
        let (inserted, records) = handle.await.unwrap();
        for (dek, result) in inserted {
            match result {
                Ok(done) => succeeded.push((dek, done)),
                Err(StoreError::Conflict(m)) => conflicts.push((dek, m)),
                Err(other) => panic!("insert_dek failed uncleanly: {other:?}"),
            }
        }
        appended.extend(records);
    }
    let total = usize::try_from(2 * TASKS_PER_REPLICA * ROUNDS).unwrap();
    // A Conflict would be allowed by the Store contract, but the chain lock serializes the
    // writers of all replicas, so none should lose a race here.
    assert!(
        conflicts.is_empty(),
        "insert_dek conflicts despite the chain lock: {conflicts:?}"
    );
    assert_eq!(succeeded.len(), total);

    // Exactly one active DEK, seen alike from both replicas and in the table itself.
    let active = a.active_dek(&tenant, &scope).await.unwrap().unwrap();
    assert_eq!(
        b.active_dek(&tenant, &scope).await.unwrap(),
        Some(active.clone())
    );
    let mut raw = db.raw().await;
    let active_rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deks WHERE tenant_id = $1 AND scope = $2 AND retired_at_ms IS NULL",
    )
    .bind(tenant.as_str())
    .bind(scope.as_str())
    .fetch_one(&mut raw)
    .await
    .unwrap();
    assert_eq!(active_rows, 1, "exactly one active DEK");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deks WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        rows,
        i64::try_from(total).unwrap(),
        "one row per acknowledged DEK"
    );

    // No lost key: every acknowledged DEK is stored, readable from both replicas, byte for byte.
    for (dek, done) in &succeeded {
        assert_eq!(done.dek.id, dek.id);
        for store in [&a, &b] {
            let got = store.get_dek(&tenant, &dek.id).await.unwrap().unwrap();
            assert_eq!(got.wrapped, dek.wrapped);
            assert_eq!(got.scope, scope);
            assert_eq!(got.tenant_key_id, binding.tenant_key_id);
        }
    }
    // One line of retirements: exactly one insert retired nothing (the first), every other DEK
    // was retired by exactly one insert, and the active one by none.
    let ids: HashSet<KeyId> = succeeded.iter().map(|(dek, _)| dek.id).collect();
    let retired: Vec<KeyId> = succeeded.iter().filter_map(|(_, d)| d.retired).collect();
    assert_eq!(
        retired.len(),
        total - 1,
        "exactly one insert found no active DEK"
    );
    let retired_set: HashSet<KeyId> = retired.iter().copied().collect();
    assert_eq!(retired_set.len(), retired.len(), "no DEK retired twice");
    assert!(retired_set.is_subset(&ids));
    assert!(!retired_set.contains(&active.id));
    assert_eq!(retired_set.len() + 1, ids.len());
    for id in &retired_set {
        assert!(
            a.get_dek(&tenant, id)
                .await
                .unwrap()
                .unwrap()
                .retired_at_ms
                .is_some()
        );
    }

    // One chain: gap-free from genesis, every record verifies and links to its predecessor,
    // and it ends at the head both replicas report.
    conformance::check_audit_chain_links(&*a).await;
    conformance::check_audit_chain_links(&*b).await;
    let head = a.audit_head().await.unwrap();
    assert_eq!(b.audit_head().await.unwrap(), head);
    let chain = whole_chain(&*b).await;
    assert_eq!(u64::try_from(chain.len()).unwrap(), head.seq, "no gaps");
    for (i, record) in chain.iter().enumerate() {
        assert_eq!(record.seq(), u64::try_from(i).unwrap() + 1);
    }
    for pair in chain.windows(2) {
        assert!(
            pair[1].time_ms() >= pair[0].time_ms(),
            "times never go back"
        );
    }
    // What each replica was told it appended is exactly what the chain holds at that seq.
    assert_eq!(appended.len(), 2 * total);
    for record in &appended {
        let stored = &chain[usize::try_from(record.seq() - 1).unwrap()];
        assert_eq!(stored, record, "seq {} forked", record.seq());
    }
    let count = |event_type: &str| {
        chain
            .iter()
            .filter(|r| r.event().event_type() == event_type)
            .filter(|r| r.event().tenant() == Some(&tenant))
            .count()
    };
    assert_eq!(count("dek_created"), total);
    assert_eq!(count("dek_retired"), total - 1);
    assert_eq!(count("usage_summary"), 2 * total);

    a.close().await;
    b.close().await;
    db.finish().await;
}

/// Both replicas rebind one tenant at once: every call succeeds, exactly one binding stays
/// current, and each new binding names the one it replaced (one line of bindings).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_rebind_one_tenant_concurrently() {
    let db = TestDb::create().await;
    let a = Arc::new(db.store().await);
    let b = Arc::new(db.store().await);
    let tenant = conformance::unique_tenant_id();
    a.create_tenant(&tenant, "Rebound", &tenant_created)
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..12usize {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let tenant = tenant.clone();
        let seen = seen.clone();
        handles.push(tokio::spawn(async move {
            let record = move |change: &keyward_store::BindingChange| {
                seen.lock()
                    .unwrap()
                    .push((change.binding.id, change.previous));
                binding_changed(change)
            };
            store
                .bind_kek(
                    NewKekBinding {
                        tenant: tenant.clone(),
                        provider: keyward_store::ProviderKind::Local,
                        key_ref: format!("local:kek-{i}"),
                        tenant_key_id: KeyId::generate().unwrap(),
                        wrapped_tenant_key: WrappedKey::new(vec![u8::try_from(i).unwrap(); 61]),
                        tenant_key_mac: Some(vec![0x6d; 32]),
                    },
                    &record,
                )
                .await
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await.unwrap().unwrap().binding.id);
    }
    let all = b.list_bindings(&tenant).await.unwrap();
    assert_eq!(all.len(), 12);
    let current: Vec<_> = all
        .iter()
        .filter(|x| x.deactivated_at_ms.is_none())
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(
        a.active_binding(&tenant).await.unwrap().as_ref(),
        Some(current[0])
    );
    // Committed closures (one call each, no retries needed) name their predecessor: the ids in
    // commit order, each pointing at the one before.
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen.len(), 12);
    assert_eq!(seen[0].1, None);
    for pair in seen.windows(2) {
        assert_eq!(pair[1].1, Some(pair[0].0));
    }
    assert_eq!(seen.last().unwrap().0, current[0].id);
    conformance::check_audit_chain_links(&*a).await;
    a.close().await;
    b.close().await;
    db.finish().await;
}

/// Three replicas claim the monitor's due checks at once, each from its own pool (issue #20):
/// `FOR UPDATE SKIP LOCKED` gives each check to exactly one of them (one canary per binding for
/// the fleet), without one waiting for another's batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_claiming_at_once_take_each_check_once() {
    let db = TestDb::create().await;
    let stores = [
        Arc::new(db.store().await),
        Arc::new(db.store().await),
        Arc::new(db.store().await),
    ];
    let mut all = HashSet::new();
    for i in 0..120usize {
        let tenant = conformance::unique_tenant_id();
        stores[0]
            .create_tenant(&tenant, "Claimed", &tenant_created)
            .await
            .unwrap();
        let binding = stores[0]
            .bind_kek(
                NewKekBinding {
                    tenant: tenant.clone(),
                    provider: keyward_store::ProviderKind::Local,
                    key_ref: format!("local:kek-{i}"),
                    tenant_key_id: KeyId::generate().unwrap(),
                    wrapped_tenant_key: WrappedKey::new(vec![7; 61]),
                    tenant_key_mac: Some(vec![0x6d; 32]),
                },
                &binding_changed,
            )
            .await
            .unwrap()
            .binding;
        stores[0]
            .hold_key(
                &tenant,
                binding.id,
                10_000,
                1_000 + i64::try_from(i % 7).unwrap(),
            )
            .await
            .unwrap();
        all.insert(binding.id);
    }
    let mut handles = Vec::new();
    for (r, store) in stores.iter().enumerate() {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_key_checks(&format!("replica-{r}"), 2_000, 60_000, 5)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|c| c.binding.id));
            }
        }));
    }
    let mut claimed = Vec::new();
    let mut per_replica = Vec::new();
    for handle in handles {
        let mine = handle.await.unwrap();
        per_replica.push(mine.len());
        claimed.extend(mine);
    }
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "a check was claimed twice");
    assert_eq!(unique, all, "every due check was claimed: {per_replica:?}");
    for store in &stores {
        store.close().await;
    }
    db.finish().await;
}

// ----- the audit log ------------------------------------------------------------------------

/// A raw writer bypassing the store still cannot leave two active DEKs for one scope or two
/// current bindings for one tenant: the partial unique indexes hold on their own.
#[tokio::test]
async fn unique_indexes_hold_for_writers_that_bypass_the_store() {
    let b = Postgres::new().await;
    let (tenant, binding, _) = populate(&b.store).await;
    let tenant_arg = || Arg::Text(tenant.as_str().to_owned());
    let dek = vec![
        Arg::Text(KeyId::generate().unwrap().to_string()),
        tenant_arg(),
        Arg::Text(binding.tenant_key_id.to_string()),
    ];
    let err = b
        .execute(
            "INSERT INTO deks (id, tenant_id, scope, tenant_key_id, wrapped, created_at_ms) \
             VALUES ($1, $2, 'default', $3, '\\x00', 0)",
            dek,
        )
        .await
        .unwrap_err();
    assert!(err.contains("deks_one_active_per_scope"), "{err}");
    let err = b
        .execute(
            "INSERT INTO kek_bindings (tenant_id, provider, key_ref, state, created_at_ms, \
             state_changed_at_ms) VALUES ($1, 'local', 'x', 'active', 0, 0)",
            vec![tenant_arg()],
        )
        .await
        .unwrap_err();
    assert!(err.contains("kek_bindings_one_current_per_tenant"), "{err}");
    b.finish().await;
}

/// Without the chain lock row the store cannot serialize writers, so it refuses to write
/// (reads go on).
#[tokio::test]
async fn a_missing_chain_lock_row_stops_writes() {
    let b = Postgres::new().await;
    let store = &b.store;
    let (tenant, _, dek) = populate(store).await;
    let drop_lock_row = "ALTER TABLE audit_chain_lock DISABLE TRIGGER audit_chain_lock_fixed; \
         DELETE FROM audit_chain_lock;";
    b.execute(drop_lock_row, Vec::new()).await.unwrap();
    let err = store
        .append_audit(vec![usage_event(&tenant, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.starts_with("audit_chain_lock.id:")),
        "{err:?}"
    );
    let err = store
        .create_tenant(&conformance::unique_tenant_id(), "x", &tenant_created)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(store.get_dek(&tenant, &dek.id).await.unwrap().is_some());
    b.finish().await;
}

// ----- migrations and connections -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_once() {
    let db = TestDb::create().await;
    let (a, b, c) = tokio::join!(
        PostgresStore::connect(&db.url, PostgresOptions::default()),
        PostgresStore::connect(&db.url, PostgresOptions::default()),
        PostgresStore::connect(&db.url, PostgresOptions::default()),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    populate(&a).await;
    let first = applied_migrations(a.pool(), "postgres").await;
    let dump = a.dump().await.unwrap();
    assert_eq!(b.dump().await.unwrap(), dump);
    assert_eq!(c.dump().await.unwrap(), dump);
    for store in [a, b, c] {
        store.close().await;
    }
    // Reconnecting applies nothing again.
    let again = db.store().await;
    let applied = applied_migrations(again.pool(), "postgres").await;
    assert_eq!(applied, first, "nothing re-applied");
    assert_eq!(again.dump().await.unwrap(), dump);
    again.close().await;
    db.finish().await;
}

/// `SHOW setting` on one connection.
async fn show(conn: &mut PgConnection, setting: &str) -> String {
    sqlx::query_scalar(&format!("SHOW {setting}"))
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Pooled connections commit durably (synchronous_commit on, the server default left alone),
/// carry the statement and idle-in-transaction timeouts, and name themselves; ping works until
/// the pool is closed.
#[tokio::test]
async fn pooled_connections_are_durable_and_bounded() {
    let db = TestDb::create().await;
    let options = PostgresOptions {
        max_connections: 3,
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Some(Duration::from_millis(1500)),
    };
    let store = db.store_with(options).await;
    store.ping().await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(store.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        assert_eq!(show(conn, "synchronous_commit").await, "on");
        assert_eq!(show(conn, "statement_timeout").await, "1500ms");
        assert_eq!(
            show(conn, "idle_in_transaction_session_timeout").await,
            "1500ms"
        );
        assert_eq!(show(conn, "application_name").await, "keyward");
        assert_eq!(show(conn, "server_encoding").await, "UTF8");
    }
    // The pool is bounded: a fourth acquire waits for the acquire timeout and fails.
    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The statement timeout bounds a statement (here: a sleep).
    let started = Instant::now();
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut *conns[0])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(conns);
    store.ping().await.unwrap();
    store.close().await;
    assert!(store.ping().await.is_err(), "closed");

    // Without a statement timeout the server's setting applies.
    let unbounded = db
        .store_with(PostgresOptions {
            statement_timeout: None,
            ..PostgresOptions::default()
        })
        .await;
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(unbounded.pool())
        .await
        .unwrap();
    assert_eq!(timeout, "0");
    unbounded.close().await;
    db.finish().await;
}

#[tokio::test]
async fn bad_urls_options_and_unreachable_servers_fail_cleanly() {
    assert_eq!(
        PostgresOptions::default(),
        PostgresOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(30)),
        }
    );
    let err = PostgresStore::connect("not a url", PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    for bad in [
        PostgresOptions {
            max_connections: 0,
            ..PostgresOptions::default()
        },
        PostgresOptions {
            acquire_timeout: Duration::ZERO,
            ..PostgresOptions::default()
        },
        PostgresOptions {
            statement_timeout: Some(Duration::ZERO),
            ..PostgresOptions::default()
        },
    ] {
        let err = PostgresStore::connect(&admin_url(), bad).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
    // Nothing listens on port 1: a Backend error, quickly.
    let started = Instant::now();
    let err = PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1/nothing",
        PostgresOptions {
            acquire_timeout: Duration::from_secs(2),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn test_database_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "kw_test_1"),
        "postgres://postgres@127.0.0.1:5432/kw_test_1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:5433", "x"),
        "postgres://u@h:5433/x"
    );
    assert_eq!(
        with_database("postgresql:///test?host=/run/postgresql", "x"),
        "postgresql:///x?host=/run/postgresql"
    );
    assert_eq!(
        redacted("postgres://u:secret@h:1/db"),
        "postgres://u:***@h:1/db"
    );
    assert_eq!(redacted(DEFAULT_URL), DEFAULT_URL);
}

// ----- the backdoor tests of the conformance suite ----------------------------------------------

keyward_store::backdoor_tests!(Postgres::new);

/// After a shred, `erase_shredded` vacuums `deks` (docs/deleting-data.md: PostgreSQL keeps
/// deleted row versions until a VACUUM removes them; it has no secure delete).
#[tokio::test]
async fn erasing_after_a_shred_vacuums_the_deks_table() {
    let b = Postgres::new().await;
    let (tenant, _, _) = populate(&b.store).await;
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'deks'",
        )
        .fetch_one(b.store.pool())
        .await
        .unwrap()
    };
    let before = vacuums().await;
    let result = b
        .store
        .shred_scope(
            keyward_store::ScopeShred {
                tenant: tenant.clone(),
                scope: keyward_store::Scope::default_scope(),
                scope_hmac: "hmac:default".to_owned(),
                shredded_by: "test".to_owned(),
                reason: "vacuum".to_owned(),
                only_if: None,
            },
            &conformance::shred_events,
        )
        .await
        .unwrap();
    assert_eq!(result.tombstones.len(), 1);
    b.store.erase_shredded().await;
    // The statistics of another backend's VACUUM are visible within a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while vacuums().await <= before {
        assert!(
            Instant::now() < deadline,
            "no VACUUM of deks after the shred"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.finish().await;
}
