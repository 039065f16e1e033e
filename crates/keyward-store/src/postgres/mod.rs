//! The PostgreSQL backend: several Keyward replicas on one database.
//!
//! Same tables, columns, statements and semantics as the SQLite backend (the statements, row
//! decoding and write transactions are shared: [`SqlStore`], module `crate::sql`); what is
//! PostgreSQL's own is here: connecting, the write lock, `NOTIFY` and the change listener
//! ([`PostgresDialect`], module `changes`), the migration lock and `dump()`. See `docs/store.md`,
//! section "PostgreSQL", for the design.
//!
//! Concurrency: every write transaction runs at `READ COMMITTED` (set explicitly, whatever the
//! server's default) and its first statement locks the single row of `audit_chain_lock`
//! (`SELECT id FROM audit_chain_lock WHERE id = 1 FOR UPDATE`). That row lock is held until
//! commit or rollback, so write transactions of all replicas run one at a time, exactly like
//! SQLite's `BEGIN IMMEDIATE`; because each statement of a `READ COMMITTED` transaction sees
//! everything committed before it started, every statement after the lock sees the previous
//! writer's commit. Hence the existence checks, the retirement of the active DEK and the read of
//! the audit chain head cannot race: two replicas minting a DEK for one (tenant, scope) both
//! succeed, the later retiring the earlier, and the chain never forks. The partial unique
//! indexes, the `seq` primary key and the gap-free trigger remain as a backstop; a violation of
//! one (or a deadlock) is [`StoreError::Conflict`] and the whole transaction is retried (5
//! attempts in all). `add_dek_usage` (one `UPDATE`) and reads take no lock.
//!
//! Durability: `synchronous_commit` is left at the server's default, `on`, so `COMMIT` returns
//! only after the commit record is flushed to the server's WAL (and, with synchronous
//! replication configured, acknowledged by the standbys the server is configured to wait for).
//! [`PostgresStore::connect`] logs a warning if the server runs with `synchronous_commit = off`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use crate::sql::{self, Announcement, Dialect, Migration, SqlStore, backend, quote_ident, sealed};
use crate::{StoreChanges, StoreError};

mod changes;

/// Attempts of a write transaction that reported [`StoreError::Conflict`] before that error is
/// returned. With the chain lock taken first such conflicts should not happen between Keyward
/// replicas; the budget covers deadlocks with other clients of the database.
const WRITE_ATTEMPTS: usize = 5;

/// Key of the transaction-level advisory lock that serializes migration runs of concurrently
/// starting replicas ("keyward\0" in ASCII). Advisory locks are per database.
const MIGRATION_LOCK: i64 = 0x6b65_7977_6172_6400;

/// The `LISTEN`/`NOTIFY` channel on which every committed [`Store::set_binding_state`] and
/// [`Store::bind_kek`] announces its tenant (the payload is the tenant id; the state itself is
/// read from the store). Replicas listen on it to apply revocations, restorations and new
/// bindings recorded by other replicas.
///
/// [`Store::set_binding_state`]: crate::Store::set_binding_state
/// [`Store::bind_kek`]: crate::Store::bind_kek
pub const KEY_STATE_CHANNEL: &str = "keyward_key_state";

/// The `LISTEN`/`NOTIFY` channel on which every committed [`Store::set_tenant_policy`]
/// announces its tenant: replicas drop the tenant's cached keys, so a shortened cache TTL bounds
/// every replica's keys at once.
///
/// [`Store::set_tenant_policy`]: crate::Store::set_tenant_policy
pub const TENANT_POLICY_CHANNEL: &str = "keyward_tenant_policy";

/// The `LISTEN`/`NOTIFY` channel on which every committed [`Store::shred_scope`] that destroyed
/// DEKs announces its tenant: replicas drop the tenant's cached DEKs, so none serves a shredded
/// one after it arrives.
///
/// [`Store::shred_scope`]: crate::Store::shred_scope
pub const DEK_SHRED_CHANNEL: &str = "keyward_dek_shred";

/// Oldest server accepted: the migrations use `EXECUTE FUNCTION` (PostgreSQL 11).
const MIN_SERVER_VERSION: i64 = 110_000;

/// Every migration (`migrations/postgres/NNNN_name.sql`), in order.
const MIGRATIONS: &[Migration] = sql::migrations!("postgres");

/// Connection-pool settings of a [`PostgresStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Most connections the pool opens (default 10). Write transactions run one at a time across
    /// all replicas (they serialize on the audit chain lock), so more connections help readers
    /// and `add_dek_usage`, not writers. Must be at least 1.
    pub max_connections: u32,
    /// How long a call waits for a free pooled connection, and `connect` for the first
    /// connection, before failing with [`StoreError::Backend`] (default 5 s). Must not be zero.
    pub acquire_timeout: Duration,
    /// Server-side bound on any one statement, waiting for the chain lock included (default
    /// 30 s; `None`: the server's setting). It also sets `idle_in_transaction_session_timeout`,
    /// so a replica that stalls while holding the chain lock releases it after that long
    /// instead of blocking every writer. Migrations run without it. Must not be zero.
    pub statement_timeout: Option<Duration>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl PostgresOptions {
    fn validate(&self) -> Result<(), StoreError> {
        if self.max_connections == 0 {
            return Err(StoreError::InvalidInput(
                "max_connections must be at least 1".to_owned(),
            ));
        }
        if self.acquire_timeout.is_zero() {
            return Err(StoreError::InvalidInput(
                "acquire_timeout must not be zero".to_owned(),
            ));
        }
        if self.statement_timeout.is_some_and(|t| t.is_zero()) {
            return Err(StoreError::InvalidInput(
                "statement_timeout must not be zero (use None for the server's setting)".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The PostgreSQL [`Store`](crate::Store): [`SqlStore`] on [`PostgresDialect`]. Cheap to clone
/// (a pool handle).
pub type PostgresStore = SqlStore<PostgresDialect>;

/// What is PostgreSQL's own in [`PostgresStore`]: the chain lock, NUL-free text, `NOTIFY`, the
/// retry budget, the ping and the change listener (see the module docs).
#[derive(Debug, Clone)]
pub struct PostgresDialect {
    /// The URL's connection options as given (no pool settings): the listening connections of
    /// [`Store::key_state_changes`](crate::Store::key_state_changes).
    listen_options: PgConnectOptions,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/database[?…]`,
    /// the libpq URL syntax), checks the server (version 11 or newer, `UTF8` encoding), runs the
    /// migrations not yet applied (serialized across replicas by an advisory lock, so replicas
    /// may start at once) and opens the pool. A database migrated by a newer build is refused
    /// (`Corrupt`). Sets `application_name=keyward` unless the URL names one.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let listen_options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidInput(format!("invalid PostgreSQL URL: {e}")))?;
        let mut connect = listen_options.clone();
        if connect.get_application_name().is_none() {
            connect = connect.application_name("keyward");
        }
        if let Some(timeout) = options.statement_timeout {
            // Whole milliseconds, at least 1 (0 would mean "no timeout").
            let ms = timeout.as_millis().max(1);
            connect = connect.options([
                ("statement_timeout", ms),
                ("idle_in_transaction_session_timeout", ms),
            ]);
        }

        let mut conn = tokio::time::timeout(
            options.acquire_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| {
            StoreError::Backend(
                format!(
                    "could not connect to PostgreSQL at {}:{} within {:?}",
                    connect.get_host(),
                    connect.get_port(),
                    options.acquire_timeout
                )
                .into(),
            )
        })?
        .map_err(backend)?;
        check_server(&mut conn).await?;
        migrate(&mut conn).await?;
        conn.close().await.map_err(backend)?;

        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(backend)?;
        tracing::debug!(
            max_connections = options.max_connections,
            "opened PostgreSQL store"
        );
        Ok(SqlStore {
            pool,
            sealer: None,
            dialect: PostgresDialect { listen_options },
        })
    }

    /// Deterministic textual dump of every row of every table of the current schema, ordered:
    /// lets tests assert "this bad request changed nothing".
    ///
    /// Each table is a line `table name (col, …)` followed by its rows, each rendered as
    /// PostgreSQL's row text (`(v1,v2,…)`, byte strings as `\x…` hex), sorted bytewise.
    pub async fn dump(&self) -> Result<String, StoreError> {
        // One read-only REPEATABLE READ transaction: a consistent snapshot across tables.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(backend)?;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
             ORDER BY table_name COLLATE \"C\"",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;

        let mut out = String::new();
        for table in tables {
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 \
                 ORDER BY ordinal_position",
            )
            .bind(&table)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            out.push_str(&format!("table {} ({})\n", table, columns.join(", ")));
            let sql = format!(
                "SELECT t::text FROM {} t ORDER BY t::text COLLATE \"C\"",
                quote_ident(&table)
            );
            let rows: Vec<String> = sqlx::query_scalar(&sql)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            for row in rows {
                out.push_str("  ");
                out.push_str(&row);
                out.push('\n');
            }
        }
        tx.rollback().await.map_err(backend)?;
        Ok(out)
    }
}

/// Refuses servers the schema cannot work on; warns if commits are not durable.
async fn check_server(conn: &mut PgConnection) -> Result<(), StoreError> {
    let version: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    if version.parse::<i64>().is_ok_and(|v| v < MIN_SERVER_VERSION) {
        return Err(StoreError::Backend(
            format!("PostgreSQL server version {version} is too old: 11 or newer is required")
                .into(),
        ));
    }
    let encoding: String = sqlx::query_scalar("SHOW server_encoding")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    if encoding != "UTF8" {
        return Err(StoreError::Backend(
            format!("the database's encoding is {encoding}; Keyward needs a UTF8 database").into(),
        ));
    }
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    if synchronous_commit == "off" {
        tracing::warn!(
            "PostgreSQL runs with synchronous_commit = off: a server crash can lose \
             acknowledged writes, including DEKs whose envelopes were already returned"
        );
    }
    Ok(())
}

/// Runs every migration not yet recorded in `schema_migrations`, each in its own transaction
/// holding a transaction-level advisory lock, so that replicas starting at once take turns (the
/// second one then sees the migrations as applied). Migrations run without a statement timeout.
async fn migrate(conn: &mut PgConnection) -> Result<(), StoreError> {
    async fn begin_locked(
        conn: &mut PgConnection,
    ) -> Result<Transaction<'_, Postgres>, StoreError> {
        let mut tx = conn
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(backend)?;
        // The wait for the lock is bounded by the connection's statement timeout, if any.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::raw_sql(
            "SET LOCAL statement_timeout = 0; \
             SET LOCAL idle_in_transaction_session_timeout = 0; \
             SET LOCAL client_min_messages = warning",
        )
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        Ok(tx)
    }

    let mut tx = begin_locked(conn).await?;
    // Only if missing: CREATE TABLE IF NOT EXISTS would still need the CREATE privilege on the
    // schema, which a server role that does not own the tables should not have.
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('schema_migrations')::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
    if exists.is_none() {
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations (\
                 version       BIGINT NOT NULL PRIMARY KEY, \
                 applied_at_ms BIGINT NOT NULL\
             )",
        )
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;

    for migration in MIGRATIONS {
        let tx = begin_locked(conn).await?;
        PostgresStore::apply_migration(tx, migration, MIGRATIONS).await?;
    }
    Ok(())
}

impl sealed::Sealed for PostgresDialect {}

impl Dialect for PostgresDialect {
    type Db = Postgres;

    const WRITE_ATTEMPTS: usize = WRITE_ATTEMPTS;

    /// A round trip on a pooled connection: fails with [`StoreError::Backend`] if no connection
    /// can be had within the acquire timeout or the server does not answer.
    const PING_CONNECTION: bool = true;

    const CLAIM_LOCK: &'static str = " FOR UPDATE SKIP LOCKED";

    /// `VACUUM deks`: removes the deleted row versions (which a table scan of dead tuples, e.g.
    /// `pageinspect`, could still read) and makes their space reusable. PostgreSQL has no secure
    /// delete: the bytes may stay in the table's free space until overwritten, in WAL segments
    /// until they are recycled and in WAL archives (docs/deleting-data.md). Runs outside a
    /// transaction (VACUUM refuses one), on the simple query protocol.
    async fn after_shred(pool: &sqlx::PgPool) {
        if let Err(e) = sqlx::raw_sql("VACUUM deks").execute(pool).await {
            tracing::warn!(error = %e, "VACUUM after a shred failed; autovacuum will do it later");
        }
    }

    /// `READ COMMITTED`, then the audit chain lock (module docs). Not the server's default
    /// isolation level: under `REPEATABLE READ` the snapshot would be taken before the lock wait
    /// and miss the previous writer's commit.
    async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE")
            .await
            .map_err(backend)?;
        let locked = sqlx::query("SELECT id FROM audit_chain_lock WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if locked.is_none() {
            return Err(StoreError::Corrupt(
                "audit_chain_lock.id: the lock row (id = 1) is missing, so writers cannot be \
                 serialized; refusing to write"
                    .to_owned(),
            ));
        }
        Ok(tx)
    }

    /// `NOTIFY` on [`KEY_STATE_CHANNEL`] or [`TENANT_POLICY_CHANNEL`] in the transaction:
    /// PostgreSQL delivers it to every listening session when (and only if) the transaction
    /// commits.
    async fn announce(
        tx: &mut Transaction<'static, Postgres>,
        change: Announcement,
        tenant: &str,
    ) -> Result<(), StoreError> {
        let channel = match change {
            Announcement::KeyState => KEY_STATE_CHANNEL,
            Announcement::TenantPolicy => TENANT_POLICY_CHANNEL,
            Announcement::Shred => DEK_SHRED_CHANNEL,
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(tenant)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// PostgreSQL text cannot hold NUL characters; reject them as input instead of failing in
    /// the database.
    fn check_text(field: &str, value: &str) -> Result<(), StoreError> {
        if value.contains('\0') {
            return Err(StoreError::InvalidInput(format!(
                "{field} must not contain NUL characters"
            )));
        }
        Ok(())
    }

    /// A dedicated `LISTEN`ing connection (module `changes`).
    fn key_state_changes(&self, listener_name: &str) -> Option<StoreChanges> {
        Some(changes::subscribe(&self.listen_options, listener_name))
    }
}

/// Checks a PostgreSQL URL the way [`PostgresStore::connect`] will parse it, plus what the
/// driver would only default silently (a host and a database name); the error says what is
/// wrong.
pub fn validate_url(url: &str) -> Result<(), String> {
    PgConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() && !tail.contains("host=") {
        return Err("it names no host".to_owned());
    }
    let database = tail
        .strip_prefix('/')
        .map(|t| t.split('?').next().unwrap_or_default())
        .unwrap_or_default();
    if database.is_empty() && !tail.contains("dbname=") {
        return Err("it names no database (postgres://user@host:5432/database)".to_owned());
    }
    Ok(())
}
