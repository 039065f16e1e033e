//! The SQLite backend: the embedded default, one file next to the server.
//!
//! Durability: every connection runs with `journal_mode=WAL` and `synchronous=FULL`, so a
//! committed transaction has been fsynced to the WAL before `commit` returns. Every write method
//! is one transaction, so once a write method returns `Ok` its rows survive a crash or power loss.
//!
//! Concurrency: write transactions start with `BEGIN IMMEDIATE`, taking SQLite's single write
//! lock up front (waiting up to the 5 s busy timeout) instead of upgrading a read lock mid-way,
//! which in WAL mode fails at once with `SQLITE_BUSY` rather than waiting. Writers are therefore
//! serialized; the partial unique indexes still guard the invariants on their own.
//!
//! Audit: lifecycle methods append their audit records inside the same `BEGIN IMMEDIATE`
//! transaction, after reading the chain head (`SELECT … ORDER BY seq DESC LIMIT 1`). The write
//! lock makes that read-then-append atomic; triggers (`0002_audit.sql`) make `audit_records` and
//! `audit_checkpoints` append-only and the sequence gap-free.
//!
//! The statements, row decoding and write transactions are shared with the PostgreSQL backend
//! ([`SqlStore`], module `crate::sql`); this module holds what is SQLite's own: opening the
//! file, the PRAGMAs, the write lock ([`SqliteDialect`]), migrations, `backup()` and `dump()`.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use crate::StoreError;
use crate::sql::{self, Dialect, Migration, SqlStore, backend, quote_ident, sealed};

/// Connections in the pool of a file database. SQLite allows one writer at a time, so more
/// connections only help concurrent readers.
const MAX_CONNECTIONS: u32 = 4;
/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a write transaction that lost a race on a uniqueness rule before reporting
/// [`StoreError::Conflict`]. With `BEGIN IMMEDIATE` such races cannot happen on SQLite; the
/// loop exists so that both backends behave alike.
const WRITE_ATTEMPTS: usize = 3;

/// Every migration (`migrations/sqlite/NNNN_name.sql`), in order.
const MIGRATIONS: &[Migration] = sql::migrations!("sqlite");

/// The SQLite [`Store`](crate::Store): [`SqlStore`] on [`SqliteDialect`]. Cheap to clone (a
/// pool handle).
pub type SqliteStore = SqlStore<SqliteDialect>;

/// What is SQLite's own in [`SqliteStore`]: `BEGIN IMMEDIATE` (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteDialect;

impl SqliteStore {
    /// Creates the file if needed; WAL journal, synchronous=FULL, foreign_keys=ON, busy_timeout
    /// 5s; runs migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        // The store holds every wrapped key: a new database is readable by its owner only.
        // SQLite gives the -wal and -shm files the database file's permissions.
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Backend(Box::new(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Deleted content (a shredded DEK's wrapped key) is overwritten with zeros instead
            // of lingering in free space (docs/deleting-data.md).
            .pragma("secure_delete", "ON")
            .busy_timeout(BUSY_TIMEOUT);

        // Switching a new database into WAL mode needs an exclusive lock that the busy timeout
        // does not wait for, so do it (and the migrations) on one connection before the pool
        // opens several at once. Afterwards `journal_mode=WAL` is a no-op per connection.
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(backend)?;
        migrate(&mut conn).await?;
        conn.close().await.map_err(backend)?;

        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(backend)?;
        tracing::debug!(path = %path.display(), "opened SQLite store");
        Ok(SqlStore {
            pool,
            sealer: None,
            dialect: SqliteDialect,
        })
    }

    /// Read-only connection to an existing database (for tests and ops tools reading while the
    /// server runs). No migrations.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Ok(SqlStore {
            pool,
            sealer: None,
            dialect: SqliteDialect,
        })
    }

    /// Writes a consistent copy of the whole database to `destination` (which must not exist)
    /// while the server keeps running: `VACUUM INTO` reads one snapshot in a single read
    /// transaction, so the copy holds every transaction committed before it started and none
    /// of the later ones — never half a lifecycle operation, never an audit record without its
    /// state change. The copy is a complete SQLite database (WAL content folded in) that
    /// `keyward serve` opens as its store. docs/operations.md, "Back up the store".
    pub async fn backup(&self, destination: &Path) -> Result<(), StoreError> {
        if destination.exists() {
            return Err(StoreError::InvalidInput(format!(
                "{} already exists: a backup never overwrites a file",
                destination.display()
            )));
        }
        let Some(target) = destination.to_str() else {
            return Err(StoreError::InvalidInput(format!(
                "{} is not valid UTF-8",
                destination.display()
            )));
        };
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Deterministic textual dump of every row of every table (wrapped bytes as hex), ordered:
    /// lets tests assert "this bad request changed nothing".
    ///
    /// Values are rendered by SQLite's `quote()`: text quoted, integers bare, `NULL`, blobs as
    /// `X'…'` upper-case hex. Tables are ordered by name, rows by all their columns.
    pub async fn dump(&self) -> Result<String, StoreError> {
        // One read transaction: a consistent snapshot across tables.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;

        let mut out = String::new();
        for table in tables {
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                    .bind(&table)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(backend)?;
            out.push_str(&format!("table {} ({})\n", table, columns.join(", ")));
            if columns.is_empty() {
                continue;
            }
            let select = columns
                .iter()
                .map(|c| format!("quote({})", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let order = (1..=columns.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {select} FROM {} ORDER BY {order}",
                quote_ident(&table)
            );
            let rows = sqlx::query(&sql)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            for row in rows {
                let values = (0..columns.len())
                    .map(|i| row.try_get::<String, _>(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                out.push_str("  ");
                out.push_str(&values.join(" | "));
                out.push('\n');
            }
        }
        tx.rollback().await.map_err(backend)?;
        Ok(out)
    }
}

/// Runs every migration not yet recorded in `schema_migrations`, each in its own transaction.
async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version       INTEGER NOT NULL PRIMARY KEY, \
             applied_at_ms INTEGER NOT NULL\
         ) STRICT",
    )
    .execute(&mut *conn)
    .await
    .map_err(backend)?;

    for migration in MIGRATIONS {
        // BEGIN IMMEDIATE is the migration lock: a second process opening the same file at the
        // same time waits here and then sees the migration as applied.
        let tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
        SqliteStore::apply_migration(tx, migration, MIGRATIONS).await?;
    }
    Ok(())
}

impl sealed::Sealed for SqliteDialect {}

impl Dialect for SqliteDialect {
    type Db = Sqlite;

    const WRITE_ATTEMPTS: usize = WRITE_ATTEMPTS;

    /// `BEGIN IMMEDIATE`: SQLite's single write lock from the first statement.
    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
        pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend)
    }

    /// With `secure_delete` the shred's transaction already zeroed the deleted cells, but the
    /// WAL still holds earlier versions of those pages (and the frames that first wrote the
    /// DEK), and the database file holds them until a checkpoint copies the new pages over:
    /// `wal_checkpoint(TRUNCATE)` does both and empties the WAL file. It cannot finish while a
    /// reader still uses an older snapshot, so it is retried for up to
    /// 20 × 50 ms.
    async fn after_shred(pool: &SqlitePool) {
        for attempt in 1..=SHRED_CHECKPOINT_ATTEMPTS {
            match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(pool)
                .await
            {
                Ok(row) if row.try_get::<i64, _>(0).unwrap_or(1) == 0 => return,
                Ok(_) if attempt < SHRED_CHECKPOINT_ATTEMPTS => {
                    tokio::time::sleep(SHRED_CHECKPOINT_PAUSE).await;
                }
                Ok(_) => tracing::warn!(
                    "the WAL checkpoint after a shred stayed busy (a long reader); the next \
                     checkpoint erases the shredded keys' old pages"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "the WAL checkpoint after a shred failed");
                    return;
                }
            }
        }
    }
}

/// How often [`SqliteDialect::after_shred`] tries its checkpoint.
const SHRED_CHECKPOINT_ATTEMPTS: u32 = 20;
/// The pause between two of those attempts.
const SHRED_CHECKPOINT_PAUSE: Duration = Duration::from_millis(50);
