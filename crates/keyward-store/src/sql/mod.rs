//! The SQL code of the store, written once: [`SqlStore<D>`] runs the same statements, row
//! decoding, write transactions, audit append and retry loop on every [`Dialect`].
//!
//! SQLite and PostgreSQL both accept `$N` placeholders, and the two schemas have the same tables
//! and columns (SQLite `INTEGER`/`BLOB` are PostgreSQL `BIGINT`/`BYTEA`), so every statement is
//! written once, here, generic over the dialect's sqlx [`Database`]. A dialect keeps only what
//! really differs: how a write transaction takes the backend's write lock
//! ([`Dialect::begin_write`]: SQLite starts it with `BEGIN IMMEDIATE`, PostgreSQL with
//! `BEGIN ISOLATION LEVEL READ COMMITTED` followed by `SELECT … FROM audit_chain_lock … FOR
//! UPDATE`), the text it cannot store ([`Dialect::check_text`]), how a commit is announced to
//! other processes ([`Dialect::announce`]), its retry budget, its health check and its change
//! notifications. Either way, once `begin_write` returns, no other writer can append to the audit
//! chain (or run another write transaction) until this one ends, so the read-then-write sequences
//! (existence checks, the chain head) are atomic.
//!
//! By topic: `tenants`, `bindings` (KEK bindings and tenant keys), `deks`, `audit`,
//! `history` (a tenant's key history, what a store holds), `export` (the exit kit's paged reads),
//! `migrations`; `store` implements
//! [`Store`] on top of them. Why a generic struct with its sqlx bounds spelled out once
//! (`sql_impl!`): docs/adr/0009-sql-store-written-once.md.
//!
//! [`Store`]: crate::Store

use std::fmt;
use std::future::Future;

use sqlx::error::ErrorKind;
use sqlx::{Database, Decode, Pool, Row, Type};

use std::sync::Arc;

use keyward_audit::RecordSealer;

use crate::{StoreChanges, StoreError};

mod audit;
mod bindings;
mod checks;
mod deks;
mod export;
mod history;
mod migrations;
mod rekey;
mod shred;
mod store;
mod tenants;

pub use export::MAX_EXPORT_PAGE;
pub(crate) use migrations::{Migration, migrations};

/// The [`Store`](crate::Store) on a SQL database, written once for every [`Dialect`]:
/// [`SqliteStore`](crate::sqlite::SqliteStore) and, with the `postgres` feature,
/// `PostgresStore`. Cheap to clone (a pool handle).
pub struct SqlStore<D: Dialect> {
    pub(crate) pool: Pool<D::Db>,
    pub(crate) dialect: D,
    /// Appends format-v2 records (docs/audit-format.md §3.3) when set; format v1 otherwise.
    pub(crate) sealer: Option<Arc<RecordSealer>>,
}

// By hand: the derives would also require the driver type (`D::Db`) to be `Clone`/`Debug`.
impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            dialect: self.dialect.clone(),
            sealer: self.sealer.clone(),
        }
    }
}

impl<D: Dialect> fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("pool", &self.pool)
            .field("dialect", &self.dialect)
            .finish()
    }
}

impl<D: Dialect> SqlStore<D> {
    /// The connection pool, for backend-specific checks (tests, ops tools) and `LISTEN`/`NOTIFY`.
    pub fn pool(&self) -> &Pool<D::Db> {
        &self.pool
    }

    /// Appends format-v2 audit records from now on (docs/audit-format.md §3.3): each with a
    /// fresh salt and its tenant's tag, so that a per-tenant export can redact the others.
    /// Without a sealer the store appends format-v1 records, as before.
    pub fn with_record_sealer(mut self, sealer: Arc<RecordSealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// Closes every connection of the pool (waiting for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) mod sealed {
    /// Only this crate's dialects implement [`Dialect`](super::Dialect).
    pub trait Sealed {}
}

/// What differs between the SQL backends; everything else is [`SqlStore`]'s. Implemented by
/// [`SqliteDialect`](crate::sqlite::SqliteDialect) and, with the `postgres` feature,
/// `PostgresDialect` only (sealed).
pub trait Dialect: sealed::Sealed + Clone + fmt::Debug + Send + Sync + 'static {
    /// The sqlx driver.
    type Db: Database;

    /// Attempts of a write transaction that reported [`StoreError::Conflict`] (a concurrent
    /// writer won a race; nothing was changed) before that error is returned.
    const WRITE_ATTEMPTS: usize;

    /// [`Store::ping`](crate::Store::ping): a round trip on a pooled connection (`true`), or the
    /// read of the audit chain head, the trait's default (`false`).
    const PING_CONNECTION: bool = false;

    /// Appended to the sub-select that picks the rows a claim takes
    /// ([`Store::claim_key_checks`](crate::Store::claim_key_checks)): PostgreSQL
    /// `FOR UPDATE SKIP LOCKED`, so that replicas claiming at the same time take disjoint rows
    /// without waiting for each other; SQLite: nothing (one writer at a time).
    const CLAIM_LOCK: &'static str = "";

    /// Opens a write transaction holding the backend's write lock: until it commits or rolls
    /// back, no other write transaction (of any process on the same database) gets past its own
    /// `begin_write`. Statements after it see everything committed before.
    fn begin_write(
        pool: &Pool<Self::Db>,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, StoreError>> + Send;

    /// Rejects text the backend cannot store (PostgreSQL: NUL characters), before any write.
    fn check_text(_field: &str, _value: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Called inside a write transaction, before commit: lets other processes on the same
    /// database learn that `tenant`'s key state or binding ([`Store::set_binding_state`],
    /// [`Store::bind_kek`]) or its policy ([`Store::set_tenant_policy`]) changed (PostgreSQL:
    /// `NOTIFY`, delivered only if and when the transaction commits). SQLite: nothing.
    ///
    /// [`Store::set_binding_state`]: crate::Store::set_binding_state
    /// [`Store::bind_kek`]: crate::Store::bind_kek
    /// [`Store::set_tenant_policy`]: crate::Store::set_tenant_policy
    fn announce<'t>(
        tx: &'t mut sqlx::Transaction<'static, Self::Db>,
        change: Announcement,
        tenant: &'t str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't {
        let _ = (tx, change, tenant);
        async { Ok(()) }
    }

    /// Runs after a committed shred that destroyed DEKs, outside any transaction, to erase what
    /// the backend keeps of the deleted rows where it can (SQLite: a WAL checkpoint that
    /// truncates the WAL; PostgreSQL: `VACUUM` of the table). Best effort: a failure is logged,
    /// the shred itself is committed (docs/deleting-data.md).
    fn after_shred(pool: &Pool<Self::Db>) -> impl Future<Output = ()> + Send {
        let _ = pool;
        async {}
    }

    /// [`Store::key_state_changes`](crate::Store::key_state_changes); `None` (the default):
    /// no other process writes to the database.
    fn key_state_changes(&self, listener_name: &str) -> Option<StoreChanges> {
        let _ = listener_name;
        None
    }
}

/// What a write transaction announces to the other processes on the database
/// ([`Dialect::announce`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// The tenant's current binding or a binding's state changed.
    KeyState,
    /// The tenant's policy (cache TTL, monitor interval) changed.
    TenantPolicy,
    /// DEKs of the tenant were shredded ([`Store::shred_scope`](crate::Store::shred_scope)).
    Shred,
}

/// `impl<D: Dialect> [Trait for] SqlStore<D> where …`, with the bounds every statement needs
/// written once: the column and parameter types the statements use (`TEXT`, 64-bit integers,
/// byte strings), which both drivers provide, and executors for connections and pools. (Bounds
/// on a projection such as `&mut <D::Db as Database>::Connection` are not implied by a trait, so
/// every impl block must repeat them; this macro is that repetition.)
macro_rules! sql_impl {
    ($(#[$attr:meta])* impl $($trait_:path)? => { $($body:tt)* }) => {
        $(#[$attr])*
        impl<D: $crate::sql::Dialect> $($trait_ for)? $crate::sql::SqlStore<D>
        where
            for<'c> &'c mut <D::Db as sqlx::Database>::Connection:
                sqlx::Executor<'c, Database = D::Db>,
            for<'q> <D::Db as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, D::Db>,
            for<'q> &'q str: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
            for<'q> String: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
            for<'q> i64: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
            for<'q> &'q [u8]: sqlx::Encode<'q, D::Db> + sqlx::Type<D::Db>,
            for<'q> Option<i64>: sqlx::Encode<'q, D::Db>,
            for<'q> Option<&'q str>: sqlx::Encode<'q, D::Db>,
            for<'q> Option<&'q [u8]>: sqlx::Encode<'q, D::Db>,
            for<'r> String: sqlx::Decode<'r, D::Db>,
            for<'r> &'r str: sqlx::Decode<'r, D::Db>,
            for<'r> i64: sqlx::Decode<'r, D::Db>,
            for<'r> Vec<u8>: sqlx::Decode<'r, D::Db> + sqlx::Type<D::Db>,
            for<'a> &'a str: sqlx::ColumnIndex<<D::Db as sqlx::Database>::Row>,
            usize: sqlx::ColumnIndex<<D::Db as sqlx::Database>::Row>,
        {
            $($body)*
        }
    };
}
use sql_impl;

/// A statement with its bound parameters, as `sqlx::query(…).bind(…)` builds it.
pub(crate) type Query<'q, D> =
    sqlx::query::Query<'q, <D as Dialect>::Db, <<D as Dialect>::Db as Database>::Arguments<'q>>;

/// Decodes one row into a domain value (`Corrupt` when a column fails validation).
pub(crate) type FromRow<D, T> = fn(&<<D as Dialect>::Db as Database>::Row) -> Result<T, StoreError>;

sql_impl!(impl => {
    /// The row `query` finds on the pool, if any, decoded by `from_row`.
    pub(crate) async fn fetch_optional<T>(
        &self,
        query: Query<'_, D>,
        from_row: FromRow<D, T>,
    ) -> Result<Option<T>, StoreError> {
        let row = query.fetch_optional(&self.pool).await.map_err(backend)?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every row `query` finds on the pool, in its order, decoded by `from_row`.
    pub(crate) async fn fetch_all<T>(
        &self,
        query: Query<'_, D>,
        from_row: FromRow<D, T>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(from_row).collect()
    }

    /// Reads one column, mapping a type mismatch or unexpected NULL to `Corrupt`.
    pub(crate) fn col<'r, T>(
        row: &'r <D::Db as Database>::Row,
        table: &str,
        column: &str,
    ) -> Result<T, StoreError>
    where
        T: Decode<'r, D::Db> + Type<D::Db>,
    {
        row.try_get::<T, _>(column)
            .map_err(|e| StoreError::Corrupt(format!("{table}.{column}: {e}")))
    }

    /// Whether `sql` (a `SELECT 1 …` whose `$1`, `$2`, … are `keys`) finds a row on `conn`
    /// (inside a write transaction: under the write lock).
    pub(crate) async fn exists(
        conn: &mut <D::Db as Database>::Connection,
        sql: &str,
        keys: &[&str],
    ) -> Result<bool, StoreError> {
        let query = keys
            .iter()
            .fold(sqlx::query(sql), |query, key| query.bind(*key));
        let row = query.fetch_optional(&mut *conn).await.map_err(backend)?;
        Ok(row.is_some())
    }
});

/// Runs a write transaction again (up to `attempts` in all) while it reports
/// [`StoreError::Conflict`]: a concurrent writer won a race and nothing was changed.
pub(crate) async fn with_retries<T, F, Fut>(
    attempts: usize,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 1;
    loop {
        let result = attempt().await;
        if tries < attempts && matches!(result, Err(StoreError::Conflict(_))) {
            tries += 1;
            tracing::debug!(tries, "retrying a store write that lost a race");
            continue;
        }
        return result;
    }
}

/// SQLSTATEs after which the transaction was rolled back by the server and may simply be run
/// again: `serialization_failure` and `deadlock_detected` (PostgreSQL; SQLite's result codes are
/// small numbers and never match).
const RETRYABLE_SQLSTATES: [&str; 2] = ["40001", "40P01"];

fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| RETRYABLE_SQLSTATES.contains(&code.as_ref())),
        _ => false,
    }
}

/// A database failure: [`StoreError::Backend`] with the `sqlx::Error` as its source, except a
/// serialization failure or deadlock, after which the server rolled the transaction back
/// ([`StoreError::Conflict`], retried by [`with_retries`]).
pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    if is_retryable(&e) {
        return StoreError::Conflict(format!("the transaction was rolled back: {e}"));
    }
    StoreError::Backend(Box::new(e))
}

/// Classifies a failed write by the database's typed error kind (never by message text).
///
/// Callers check existence and ownership before writing, so a uniqueness violation here means a
/// concurrent writer won a race (retry-safe [`StoreError::Conflict`]) and a foreign-key violation
/// means a referenced row vanished or belongs to another tenant ([`StoreError::NotFound`]).
pub(crate) fn write_error(e: sqlx::Error, what: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation => StoreError::Conflict(what.to_owned()),
            ErrorKind::ForeignKeyViolation => {
                StoreError::NotFound(format!("a row referenced by {what}"))
            }
            _ => backend(e),
        },
        _ => backend(e),
    }
}

/// `"name"` with embedded quotes doubled (SQL identifier quoting; both dialects).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
