//! Backend-generic tests that need more than the [`Store`] trait: a dump of the whole database,
//! SQL run behind the store's back (corrupt rows, tampered or planted audit records, the
//! append-only triggers), a broken audit table, reopening. Each backend's test file implements
//! [`Backdoor`] and runs every test here, so the backends cannot drift apart
//! (docs/store.md, "The conformance suite"). Each test wants a fresh, empty database.

use std::future::Future;

mod audit;
pub use audit::*;
// Written with the key history checks it belongs to.
pub use super::history::binding_usage_counts_shredded_deks;

use super::{
    binding_changed, dek_events, new_binding, new_dek, state_changed, tenant_created,
    unique_tenant_id,
};
use crate::{
    ChainHead, KekState, KeyId, NewDek, NewKekBinding, Record, RevocationSource, Scope,
    StateUpdate, Store, StoreError, TenantId, WrappedKey,
};

/// A value bound to a placeholder (`$1`, `$2`, …) of a [`Backdoor`] statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Text(String),
}

/// What a backend's test file gives the tests of this module: its store, and a way around it,
/// as anyone who can write the database has. The statements differ per backend; the tests
/// run them through [`Backdoor::execute`].
pub trait Backdoor: Sync {
    /// Whether text columns refuse NUL characters (PostgreSQL's text type cannot hold them;
    /// SQLite stores them as given).
    const REFUSES_NUL_TEXT: bool;
    /// Whether [`Backdoor::execute`] bypasses foreign keys (SQLite: a connection opened with
    /// `foreign_keys` off; PostgreSQL enforces them on every connection).
    const RAW_SKIPS_FOREIGN_KEYS: bool;
    /// The backend's tables besides the seven every backend has (PostgreSQL: the chain lock).
    const MORE_TABLES: &'static [&'static str];
    /// Statements the audit tables' append-only triggers refuse besides the six every backend
    /// refuses (PostgreSQL: `TRUNCATE`, and any change to the chain lock row).
    const MORE_APPEND_ONLY_STATEMENTS: &'static [&'static str];
    /// Disables the guard that refuses updates of `audit_records` (idempotent), as anyone who
    /// may alter the tables can.
    const UNGUARD_AUDIT_RECORDS: &'static str;
    /// Installs a trigger `fail_audit` that makes every audit append fail inside the database,
    /// as a full or broken audit table would.
    const BREAK_AUDIT_WRITES: &'static str;
    /// Drops that trigger.
    const REPAIR_AUDIT_WRITES: &'static str;
    /// Lets `kek_bindings.state` hold any text on the raw connection (drops or ignores its
    /// `CHECK` constraint).
    const ALLOW_ANY_BINDING_STATE: &'static str;

    /// The store under test, on a fresh database.
    fn store(&self) -> &dyn Store;
    /// The whole database as text (the backend's `dump()`).
    fn dump(&self) -> impl Future<Output = String>;
    /// How [`Backdoor::dump`] renders a byte-string value.
    fn dumped_bytes(bytes: &[u8]) -> String;
    /// Runs `sql` on a connection that bypasses the store (one connection for the whole test,
    /// triggers and constraints as they are); on failure, the database's error message. The
    /// free function [`execute`] does it on any sqlx connection.
    fn execute(&self, sql: &str, args: Vec<Arg>) -> impl Future<Output = Result<(), String>>;
    /// Runs `sql` on a connection of the store's own pool; on failure, the database's error
    /// message.
    fn execute_pooled(&self, sql: &str) -> impl Future<Output = Result<(), String>>;
    /// Opens the same database again as a new store, as a restart would (its migration run
    /// included), and closes it; the result of opening.
    fn reopen(&self) -> impl Future<Output = Result<(), StoreError>>;
    /// Cleans up after a passing test (PostgreSQL: closes the connections and drops the
    /// database); nothing by default.
    fn finish(self) -> impl Future<Output = ()>
    where
        Self: Sized,
    {
        async {}
    }
}

/// Runs `sql` on `executor`: as is (several statements allowed) without `args`, else as one
/// statement with `args` bound to `$1`, `$2`, …; on failure, the database's error message.
/// For [`Backdoor::execute`] and [`Backdoor::execute_pooled`] implementations.
pub async fn execute<'e, E>(executor: E, sql: &'e str, args: Vec<Arg>) -> Result<(), String>
where
    E: sqlx::Executor<'e>,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
    for<'q> i64: sqlx::Encode<'q, E::Database> + sqlx::Type<E::Database>,
    for<'q> String: sqlx::Encode<'q, E::Database> + sqlx::Type<E::Database>,
{
    let done = if args.is_empty() {
        sqlx::raw_sql(sql).execute(executor).await
    } else {
        let query = args
            .into_iter()
            .fold(sqlx::query(sql), |query, arg| match arg {
                Arg::Int(i) => query.bind(i),
                Arg::Text(t) => query.bind(t),
            });
        query.execute(executor).await
    };
    done.map(drop).map_err(|e| e.to_string())
}

/// [`Backdoor::execute`], which must succeed.
async fn run<B: Backdoor>(b: &B, sql: &str, args: Vec<Arg>) {
    if let Err(e) = b.execute(sql, args).await {
        panic!("{sql}: {e}");
    }
}

/// [`run`] with the audit records' update guard disabled first.
async fn tamper<B: Backdoor>(b: &B, sql: &str, args: Vec<Arg>) {
    run(b, B::UNGUARD_AUDIT_RECORDS, Vec::new()).await;
    run(b, sql, args).await;
}

/// Defines one `#[tokio::test]` per test of [`backdoor`](self), each on a fresh backend from
/// `$new` (an `async fn() -> impl Backdoor`) and [`Backdoor::finish`]ed after it passes:
/// `keyward_store::backdoor_tests!(Sqlite::new);` in a backend's test file runs them all there.
#[macro_export]
macro_rules! backdoor_tests {
    ($new:expr) => {
        $crate::backdoor_tests!(
            @each $new;
            dump_is_deterministic_and_sees_every_write,
            corrupt_rows_are_reported_with_table_and_column,
            a_newer_schema_is_refused,
            bad_requests_change_nothing,
            audit_tables_are_append_only,
            lifecycle_changes_fail_closed_when_the_audit_write_fails,
            checkpoint_of_the_empty_chain,
            tampered_audit_records_are_reported_as_corrupt,
            record_times_never_go_backwards,
            binding_usage_counts_shredded_deks,
        );
    };
    (@each $new:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let backend = $new().await;
                $crate::conformance::backdoor::$name(&backend).await;
                $crate::conformance::Backdoor::finish(backend).await;
            }
        )*
    };
}

/// A tenant with a binding (wrapped tenant key `00 01 02 ff`) and an active DEK in the default
/// scope.
pub async fn populate(store: &dyn Store) -> (TenantId, NewKekBinding, NewDek) {
    let tenant = unique_tenant_id();
    store
        .create_tenant(&tenant, "Persisted", &tenant_created)
        .await
        .unwrap();
    let binding = NewKekBinding {
        wrapped_tenant_key: WrappedKey::new(vec![0, 1, 2, 255]),
        ..new_binding(&tenant, "local:kek")
    };
    store
        .bind_kek(binding.clone(), &binding_changed)
        .await
        .unwrap();
    let dek = NewDek {
        wrapped: WrappedKey::new(vec![255, 0, 7]),
        ..new_dek(&tenant, Scope::DEFAULT, binding.tenant_key_id)
    };
    store.insert_dek(dek.clone(), &dek_events).await.unwrap();
    (tenant, binding, dek)
}

/// Revokes a binding that never changed state since registration (version 0).
pub fn revoke_fresh(binding_id: i64) -> StateUpdate {
    StateUpdate {
        binding_id,
        expected_version: 0,
        to: KekState::Revoked,
        cause: RevocationSource::Explicit,
    }
}

/// The `INSERT` of one audit record, bypassing the store.
const INSERT_RECORD: &str = "INSERT INTO audit_records (seq, time_ms, event_type, tenant_id, body, hash) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// The arguments of [`INSERT_RECORD`] for `record` at `seq`.
fn record_args(seq: u64, record: &Record, tenant: &TenantId) -> Vec<Arg> {
    vec![
        Arg::Int(i64::try_from(seq).unwrap()),
        Arg::Int(record.time_ms()),
        Arg::Text(record.event().event_type().to_owned()),
        Arg::Text(tenant.as_str().to_owned()),
        Arg::Text(String::from_utf8(record.canonical_bytes()).unwrap()),
        Arg::Text(hex::encode(record.hash())),
    ]
}

// ----- data and requests ----------------------------------------------------------------------

/// `dump()` is deterministic, lists every table, and changes with every write.
pub async fn dump_is_deterministic_and_sees_every_write<B: Backdoor>(b: &B) {
    let store = b.store();
    let empty = b.dump().await;
    assert_eq!(b.dump().await, empty);
    let tables = [
        "audit_checkpoints",
        "audit_records",
        "deks",
        "kek_bindings",
        "schema_migrations",
        "tenant_keys",
        "tenants",
    ];
    for table in tables.iter().chain(B::MORE_TABLES) {
        assert!(empty.contains(&format!("table {table} (")), "{empty}");
    }
    let (tenant, _, dek) = populate(store).await;
    let populated = b.dump().await;
    assert_ne!(populated, empty);
    assert_eq!(b.dump().await, populated);
    // Wrapped bytes appear as hex.
    let wrapped = B::dumped_bytes(&[0, 1, 2, 255]);
    assert!(populated.contains(&wrapped), "{wrapped} in {populated}");
    assert!(populated.contains(&dek.id.to_string()));
    store.add_dek_usage(&tenant, &dek.id, 1, 1).await.unwrap();
    assert_ne!(b.dump().await, populated);
}

/// Rows that fail validation on the way out are `Corrupt`, naming the table and the column.
pub async fn corrupt_rows_are_reported_with_table_and_column<B: Backdoor>(b: &B) {
    let store = b.store();
    let (tenant, _, dek) = populate(store).await;
    let corrupt = |err: StoreError, expected: &str| {
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.starts_with(expected)),
            "{err:?}"
        );
    };
    let dek_id = || vec![Arg::Text(dek.id.to_string())];
    run(b, "UPDATE deks SET scope = '' WHERE id = $1", dek_id()).await;
    corrupt(
        store.get_dek(&tenant, &dek.id).await.unwrap_err(),
        "deks.scope:",
    );
    if B::RAW_SKIPS_FOREIGN_KEYS {
        // Only a writer that skips the foreign key can store a tenant key id that is no key id.
        let bad_key = "UPDATE deks SET tenant_key_id = 'not hex at all, but 32 chars long' \
             WHERE id = $1";
        run(b, bad_key, dek_id()).await;
        run(
            b,
            "UPDATE deks SET scope = 'default' WHERE id = $1",
            dek_id(),
        )
        .await;
        corrupt(
            store.get_dek(&tenant, &dek.id).await.unwrap_err(),
            "deks.tenant_key_id:",
        );
    }
    let tenant_arg = || vec![Arg::Text(tenant.as_str().to_owned())];
    // A provider name no kind has: the binding and the tenant keys it wraps are unreadable
    // rather than handed to the keyring to guess at.
    let provider = "UPDATE kek_bindings SET provider = $2 WHERE tenant_id = $1";
    let with = |name: &str| {
        let mut args = tenant_arg();
        args.push(Arg::Text(name.to_owned()));
        args
    };
    run(b, provider, with("vault-9000")).await;
    let binding = store.active_binding(&tenant).await.unwrap_err();
    corrupt(
        binding,
        "kek_bindings.provider: unknown key provider 'vault-9000'",
    );
    let key = store.get_tenant_key(&tenant, &dek.tenant_key_id).await;
    corrupt(key.unwrap_err(), "kek_bindings.provider:");
    run(b, provider, with("local")).await;
    assert!(store.active_binding(&tenant).await.is_ok());

    run(b, B::ALLOW_ANY_BINDING_STATE, Vec::new()).await;
    run(
        b,
        "UPDATE kek_bindings SET state = 'sleepy' WHERE tenant_id = $1",
        tenant_arg(),
    )
    .await;
    corrupt(
        store.active_binding(&tenant).await.unwrap_err(),
        "kek_bindings.state:",
    );
}

/// A database migrated by a newer build (a schema version this build does not know) is refused.
pub async fn a_newer_schema_is_refused<B: Backdoor>(b: &B) {
    b.execute_pooled("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (9999, 0)")
        .await
        .unwrap();
    let err = b.reopen().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("9999")),
        "{err:?}"
    );
}

/// Every refused request leaves the database exactly as it was (the dump is unchanged).
pub async fn bad_requests_change_nothing<B: Backdoor>(b: &B) {
    let store = b.store();
    let (tenant, binding, dek) = populate(store).await;
    let before = b.dump().await;

    // Duplicate tenant.
    assert!(
        store
            .create_tenant(&tenant, "again", &tenant_created)
            .await
            .is_err()
    );
    // Binding for an unknown tenant; binding reusing a tenant key id.
    let mut bad_binding = binding.clone();
    bad_binding.tenant = unique_tenant_id();
    bad_binding.tenant_key_id = KeyId::generate().unwrap();
    assert!(store.bind_kek(bad_binding, &binding_changed).await.is_err());
    assert!(
        store
            .bind_kek(binding.clone(), &binding_changed)
            .await
            .is_err()
    );
    // DEK under an unknown tenant key; duplicate DEK id.
    let mut bad_dek = dek.clone();
    bad_dek.id = KeyId::generate().unwrap();
    bad_dek.tenant_key_id = KeyId::generate().unwrap();
    assert!(store.insert_dek(bad_dek, &dek_events).await.is_err());
    assert!(store.insert_dek(dek.clone(), &dek_events).await.is_err());
    // Usage for an unknown DEK; state of an unknown binding.
    assert!(
        store
            .add_dek_usage(&tenant, &KeyId::generate().unwrap(), 1, 1)
            .await
            .is_err()
    );
    assert!(
        store
            .set_binding_state(revoke_fresh(-1), &state_changed)
            .await
            .is_err()
    );
    // A checkpoint over a hash that is not the chain's, or beyond its head.
    let key = keyward_audit::SigningKey::generate().unwrap();
    let head = store.audit_head().await.unwrap();
    for bad in [
        ChainHead {
            seq: head.seq,
            hash: [9; 32],
        },
        ChainHead {
            seq: head.seq + 1,
            hash: head.hash,
        },
    ] {
        let checkpoint = key.sign_checkpoint(&bad, 1).unwrap();
        assert!(store.insert_checkpoint(&checkpoint).await.is_err());
    }
    assert_eq!(b.dump().await, before);

    // A display name with a NUL: refused as invalid input where text cannot hold it (nothing
    // written), stored exactly where it can. (The API refuses control characters before the
    // store sees them.)
    let nul = unique_tenant_id();
    let result = store
        .create_tenant(&nul, "nul\0name", &tenant_created)
        .await;
    if B::REFUSES_NUL_TEXT {
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        assert_eq!(b.dump().await, before);
    } else {
        result.unwrap();
        assert_eq!(
            store.get_tenant(&nul).await.unwrap().unwrap().display_name,
            "nul\0name"
        );
    }
}
