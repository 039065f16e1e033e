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
//! SQL uses `$N` placeholders, which SQLite and PostgreSQL both accept, so that the PostgreSQL
//! backend can share most statements.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use crate::TenantPolicy;
use crate::decode::{self, StoredRecord, now_ms};
use crate::{
    AuditError, AuditEvent, AuditFn, AuditQuery, BindingChange, ChainHead, Checkpoint, DekInsert,
    DekRecord, KekBinding, KekState, KeyId, NewDek, NewKekBinding, Record, Scope, StateChange,
    Store, StoreCounts, StoreError, TenantId, TenantKeyRecord, TenantRecord, WrappedKey,
};

/// Connections in the pool of a file database. SQLite allows one writer at a time, so more
/// connections only help concurrent readers.
const MAX_CONNECTIONS: u32 = 4;
/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a write transaction that lost a race on a uniqueness rule before reporting
/// [`StoreError::Conflict`]. With `BEGIN IMMEDIATE` such races cannot happen on SQLite; the
/// loop exists so that both backends behave alike.
const WRITE_ATTEMPTS: usize = 3;

/// A schema migration: `migrations/sqlite/NNNN_name.sql`, applied once, in order.
#[derive(Debug)]
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Never edit a released one: append.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "audit",
        sql: include_str!("../migrations/sqlite/0002_audit.sql"),
    },
    Migration {
        version: 3,
        name: "tenant_policy",
        sql: include_str!("../migrations/sqlite/0003_tenant_policy.sql"),
    },
];

/// The SQLite [`Store`]. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

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
        Ok(SqliteStore { pool })
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
        Ok(SqliteStore { pool })
    }

    /// The connection pool, for backend-specific checks (tests, ops tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection of the pool (waiting for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
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

    /// A write transaction holding SQLite's write lock from its first statement.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }

    async fn try_set_tenant_policy(
        &self,
        id: &TenantId,
        policy: TenantPolicy,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        let to_db = |name: &str, v: Option<u64>| -> Result<Option<i64>, StoreError> {
            v.map(|v| {
                i64::try_from(v)
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| StoreError::InvalidInput(format!("{name} must be positive")))
            })
            .transpose()
        };
        let ttl = to_db("cache_ttl_seconds", policy.cache_ttl_seconds)?;
        let interval = to_db("monitor_interval_seconds", policy.monitor_interval_seconds)?;
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE tenants SET cache_ttl_seconds = $1, monitor_interval_seconds = $2 WHERE id = $3",
        )
        .bind(ttl)
        .bind(interval)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("tenant {id}")));
        }
        let row = sqlx::query(&format!("{TENANT_COLUMNS} WHERE id = $1"))
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let tenant = tenant_from_row(&row)?;
        append_events(&mut tx, audit(&tenant)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(tenant)
    }

    async fn try_create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO tenants (id, display_name, created_at_ms) VALUES ($1, $2, $3)")
            .bind(id.as_str())
            .bind(display_name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| match write_error(e, "") {
                StoreError::Conflict(_) => StoreError::AlreadyExists(format!("tenant {id}")),
                other => other,
            })?;
        let tenant = TenantRecord {
            id: id.clone(),
            display_name: display_name.to_owned(),
            created_at_ms: now,
            policy: TenantPolicy::default(),
        };
        append_events(&mut tx, audit(&tenant)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(tenant)
    }

    async fn try_bind_kek(
        &self,
        b: &NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<KekBinding, StoreError> {
        let now = now_ms();
        let tenant_key_id = decode::key_id_text(&b.tenant_key_id);
        let mut tx = self.begin_write().await?;

        let tenant = sqlx::query("SELECT 1 FROM tenants WHERE id = $1")
            .bind(b.tenant.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if tenant.is_none() {
            return Err(StoreError::NotFound(format!("tenant {}", b.tenant)));
        }
        let existing = sqlx::query("SELECT 1 FROM tenant_keys WHERE id = $1")
            .bind(&tenant_key_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if existing.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "tenant key {}",
                b.tenant_key_id
            )));
        }

        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM kek_bindings WHERE tenant_id = $1 AND deactivated_at_ms IS NULL",
        )
        .bind(b.tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "UPDATE kek_bindings SET deactivated_at_ms = $1 \
             WHERE tenant_id = $2 AND deactivated_at_ms IS NULL",
        )
        .bind(now)
        .bind(b.tenant.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, "deactivating the current KEK binding"))?;

        let id: i64 = sqlx::query_scalar(
            "INSERT INTO kek_bindings \
             (tenant_id, provider, key_ref, state, created_at_ms, deactivated_at_ms, state_changed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, NULL, $5) RETURNING id",
        )
        .bind(b.tenant.as_str())
        .bind(&b.provider)
        .bind(&b.key_ref)
        .bind(KekState::Active.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("KEK binding for tenant {}", b.tenant)))?;

        sqlx::query(
            "INSERT INTO tenant_keys (id, tenant_id, binding_id, wrapped, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&tenant_key_id)
        .bind(b.tenant.as_str())
        .bind(id)
        .bind(b.wrapped_tenant_key.as_bytes())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("tenant key {}", b.tenant_key_id)))?;

        let binding = KekBinding {
            id,
            tenant: b.tenant.clone(),
            provider: b.provider.clone(),
            key_ref: b.key_ref.clone(),
            state: KekState::Active,
            tenant_key_id: b.tenant_key_id,
            created_at_ms: now,
            deactivated_at_ms: None,
            state_changed_at_ms: now,
        };
        let change = BindingChange { binding, previous };
        append_events(&mut tx, audit(&change)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(change.binding)
    }

    async fn try_set_binding_state(
        &self,
        binding_id: i64,
        state: KekState,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<KekBinding, StoreError> {
        let mut tx = self.begin_write().await?;
        let from: Option<String> =
            sqlx::query_scalar("SELECT state FROM kek_bindings WHERE id = $1")
                .bind(binding_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        let Some(from) = from else {
            return Err(StoreError::NotFound(format!("KEK binding {binding_id}")));
        };
        let from = from.parse::<KekState>().map_err(|_| {
            StoreError::Corrupt(format!(
                "kek_bindings.state of binding {binding_id}: {from:?}"
            ))
        })?;
        // The row exists (read above, in this write transaction).
        sqlx::query("UPDATE kek_bindings SET state = $1, state_changed_at_ms = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(now_ms())
            .bind(binding_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let row = sqlx::query(&format!("{BINDING_COLUMNS} WHERE kb.id = $1"))
            .bind(binding_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let change = StateChange {
            binding: binding_from_row(&row)?,
            from,
        };
        append_events(&mut tx, audit(&change)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(change.binding)
    }

    async fn try_insert_dek(
        &self,
        dek: &NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError> {
        let now = now_ms();
        let id = decode::key_id_text(&dek.id);
        let tenant_key_id = decode::key_id_text(&dek.tenant_key_id);
        let mut tx = self.begin_write().await?;

        // Checked explicitly for a precise error; the composite foreign key
        // deks(tenant_id, tenant_key_id) -> tenant_keys(tenant_id, id) enforces it regardless.
        let tenant_key = sqlx::query("SELECT 1 FROM tenant_keys WHERE tenant_id = $1 AND id = $2")
            .bind(dek.tenant.as_str())
            .bind(&tenant_key_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if tenant_key.is_none() {
            return Err(StoreError::NotFound(format!(
                "tenant key {} of tenant {}",
                dek.tenant_key_id, dek.tenant
            )));
        }
        let existing = sqlx::query("SELECT 1 FROM deks WHERE id = $1")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if existing.is_some() {
            return Err(StoreError::AlreadyExists(format!("DEK {}", dek.id)));
        }

        // At most one row: the partial unique index deks_one_active_per_scope.
        let retired: Option<String> = sqlx::query_scalar(
            "UPDATE deks SET retired_at_ms = $1 \
             WHERE tenant_id = $2 AND scope = $3 AND retired_at_ms IS NULL RETURNING id",
        )
        .bind(now)
        .bind(dek.tenant.as_str())
        .bind(dek.scope.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| write_error(e, "retiring the active DEK"))?;
        let retired = retired
            .map(|id| decode::key_id("deks", "id", &id))
            .transpose()?;

        sqlx::query(
            "INSERT INTO deks \
             (id, tenant_id, scope, tenant_key_id, wrapped, created_at_ms, retired_at_ms, messages, bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, 0, 0)",
        )
        .bind(&id)
        .bind(dek.tenant.as_str())
        .bind(dek.scope.as_str())
        .bind(&tenant_key_id)
        .bind(dek.wrapped.as_bytes())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("DEK {}", dek.id)))?;

        let inserted = DekInsert {
            dek: DekRecord {
                id: dek.id,
                tenant: dek.tenant.clone(),
                scope: dek.scope.clone(),
                tenant_key_id: dek.tenant_key_id,
                wrapped: dek.wrapped.clone(),
                created_at_ms: now,
                retired_at_ms: None,
                messages: 0,
                bytes: 0,
            },
            retired,
        };
        append_events(&mut tx, audit(&inserted)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(inserted)
    }

    async fn try_append_audit(&self, events: &[AuditEvent]) -> Result<Vec<Record>, StoreError> {
        let mut tx = self.begin_write().await?;
        let records = append_events(&mut tx, events.to_vec()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(records)
    }

    async fn try_insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let seq = decode::seq_to_db(checkpoint.seq)?;
        let body = checkpoint.to_canonical_json().map_err(StoreError::Audit)?;
        let mut tx = self.begin_write().await?;
        let expected = if checkpoint.seq == 0 {
            ChainHead::GENESIS.hash
        } else {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = $1")
                    .bind(seq)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            let Some(stored) = stored else {
                return Err(StoreError::InvalidInput(format!(
                    "checkpoint at seq {seq} is beyond the head of the audit chain"
                )));
            };
            decode::hash("audit_records", "hash", &stored)?
        };
        if checkpoint.head_hash != expected {
            return Err(StoreError::InvalidInput(format!(
                "checkpoint head_hash {} is not the hash of audit record {seq}",
                hex::encode(checkpoint.head_hash)
            )));
        }
        let existing = sqlx::query("SELECT 1 FROM audit_checkpoints WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if existing.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "checkpoint at seq {seq}"
            )));
        }
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, time_ms, key_id, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(seq)
        .bind(checkpoint.time_ms)
        .bind(&checkpoint.key_id)
        .bind(&body)
        .execute(&mut *tx)
        .await
        .map_err(|e| match write_error(e, "") {
            StoreError::Conflict(_) => {
                StoreError::AlreadyExists(format!("checkpoint at seq {seq}"))
            }
            other => other,
        })?;
        tx.commit().await.map_err(backend)?;
        Ok(())
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

    let newest_known = MIGRATIONS.last().map_or(0, |m| m.version);
    for migration in MIGRATIONS {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
        // Read under the write lock: a second process opening the same file at the same time
        // waits here and then sees the migration as applied.
        let newest_applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        if let Some(applied) = newest_applied
            && applied > newest_known
        {
            return Err(StoreError::Corrupt(format!(
                "schema_migrations.version: the database has schema version {applied}, \
                 newer than this build's {newest_known}; refusing to use it"
            )));
        }
        let applied = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = $1")
            .bind(migration.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if applied.is_some() {
            tx.rollback().await.map_err(backend)?;
            continue;
        }
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied store migration"
        );
    }
    Ok(())
}

/// Runs a write transaction again (up to [`WRITE_ATTEMPTS`] in all) while it reports
/// [`StoreError::Conflict`]: a concurrent writer won a race and nothing was changed.
async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 1;
    loop {
        let result = attempt().await;
        if tries < WRITE_ATTEMPTS && is_conflict(&result) {
            tries += 1;
            continue;
        }
        return result;
    }
}

/// Appends `events`, in order, to the audit chain inside `conn`'s write transaction.
///
/// The head is read here, under the write lock `BEGIN IMMEDIATE` took, so no other writer can
/// append between this read and the commit. Every record of the batch gets the same time:
/// the store clock now, or the previous record's time if the clock went backwards (times along
/// the chain never decrease). Any failure is returned and the caller's transaction is dropped,
/// i.e. rolled back together with the change the records describe.
async fn append_events(
    conn: &mut SqliteConnection,
    events: Vec<AuditEvent>,
) -> Result<Vec<Record>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let last =
        sqlx::query("SELECT seq, hash, time_ms FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
    let (mut head, time_ms) = match last {
        None => (ChainHead::GENESIS, now_ms()),
        Some(row) => {
            const T: &str = "audit_records";
            let head = decode::chain_head(col(&row, T, "seq")?, &col::<String>(&row, T, "hash")?)?;
            let previous: i64 = col(&row, T, "time_ms")?;
            (head, now_ms().max(previous))
        }
    };
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        let record = Record::append(&head, time_ms, event).map_err(StoreError::Audit)?;
        let body = String::from_utf8(record.canonical_bytes())
            .map_err(|e| StoreError::Audit(AuditError::Encoding(e.to_string())))?;
        let event = record.event();
        sqlx::query(
            "INSERT INTO audit_records (seq, time_ms, event_type, tenant_id, body, hash) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(decode::seq_to_db(record.seq())?)
        .bind(record.time_ms())
        .bind(event.event_type())
        .bind(event.tenant().map(TenantId::as_str))
        .bind(&body)
        .bind(hex::encode(record.hash()))
        .execute(&mut *conn)
        .await
        .map_err(|e| write_error(e, &format!("audit record {}", record.seq())))?;
        head = record.head();
        records.push(record);
    }
    Ok(records)
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// Classifies a failed write by the database's typed error kind (never by message text).
///
/// Callers check existence and ownership before writing, so a uniqueness violation here means a
/// concurrent writer won a race (retry-safe [`StoreError::Conflict`]) and a foreign-key violation
/// means a referenced row vanished or belongs to another tenant ([`StoreError::NotFound`]).
fn write_error(e: sqlx::Error, what: &str) -> StoreError {
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

fn is_conflict(result: &Result<impl Sized, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict(_)))
}

/// `"name"` with embedded quotes doubled (SQL identifier quoting).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads one column, mapping a type mismatch or unexpected NULL to `Corrupt`.
fn col<'r, T>(row: &'r SqliteRow, table: &str, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get::<T, _>(column)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{column}: {e}")))
}

const TENANT_COLUMNS: &str = "SELECT id, display_name, created_at_ms, cache_ttl_seconds, \
     monitor_interval_seconds FROM tenants";

fn tenant_from_row(row: &SqliteRow) -> Result<TenantRecord, StoreError> {
    const T: &str = "tenants";
    Ok(TenantRecord {
        id: decode::tenant_id(T, "id", &col::<String>(row, T, "id")?)?,
        display_name: col(row, T, "display_name")?,
        created_at_ms: col(row, T, "created_at_ms")?,
        policy: TenantPolicy {
            cache_ttl_seconds: positive(T, "cache_ttl_seconds", col(row, T, "cache_ttl_seconds")?)?,
            monitor_interval_seconds: positive(
                T,
                "monitor_interval_seconds",
                col(row, T, "monitor_interval_seconds")?,
            )?,
        },
    })
}

fn positive(table: &str, column: &str, value: Option<i64>) -> Result<Option<u64>, StoreError> {
    value
        .map(|v| {
            u64::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| StoreError::Corrupt(format!("{table}.{column}: {v}")))
        })
        .transpose()
}

/// A binding with the id of its tenant key (one per binding; LEFT JOIN so that a missing one is
/// reported as corruption instead of hiding the binding).
const BINDING_COLUMNS: &str = "SELECT kb.id, kb.tenant_id, kb.provider, kb.key_ref, kb.state, \
     tk.id AS tenant_key_id, kb.created_at_ms, kb.deactivated_at_ms, kb.state_changed_at_ms \
     FROM kek_bindings kb LEFT JOIN tenant_keys tk ON tk.binding_id = kb.id";

fn binding_from_row(row: &SqliteRow) -> Result<KekBinding, StoreError> {
    const T: &str = "kek_bindings";
    let id: i64 = col(row, T, "id")?;
    let tenant_key_id = row
        .try_get::<Option<String>, _>("tenant_key_id")
        .map_err(|e| StoreError::Corrupt(format!("tenant_keys.id: {e}")))?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "tenant_keys.binding_id: KEK binding {id} has no tenant key"
            ))
        })?;
    Ok(KekBinding {
        id,
        tenant: decode::tenant_id(T, "tenant_id", &col::<String>(row, T, "tenant_id")?)?,
        provider: col(row, T, "provider")?,
        key_ref: col(row, T, "key_ref")?,
        state: decode::kek_state(T, "state", &col::<String>(row, T, "state")?)?,
        tenant_key_id: decode::key_id("tenant_keys", "id", &tenant_key_id)?,
        created_at_ms: col(row, T, "created_at_ms")?,
        deactivated_at_ms: col(row, T, "deactivated_at_ms")?,
        state_changed_at_ms: col(row, T, "state_changed_at_ms")?,
    })
}

const TENANT_KEY_COLUMNS: &str = "SELECT tk.id, tk.tenant_id, tk.binding_id, kb.provider, \
     kb.key_ref, tk.wrapped, tk.created_at_ms \
     FROM tenant_keys tk JOIN kek_bindings kb ON kb.id = tk.binding_id";

fn tenant_key_from_row(row: &SqliteRow) -> Result<TenantKeyRecord, StoreError> {
    const T: &str = "tenant_keys";
    Ok(TenantKeyRecord {
        id: decode::key_id(T, "id", &col::<String>(row, T, "id")?)?,
        tenant: decode::tenant_id(T, "tenant_id", &col::<String>(row, T, "tenant_id")?)?,
        binding_id: col(row, T, "binding_id")?,
        provider: col(row, "kek_bindings", "provider")?,
        key_ref: col(row, "kek_bindings", "key_ref")?,
        wrapped: WrappedKey::new(col(row, T, "wrapped")?),
        created_at_ms: col(row, T, "created_at_ms")?,
    })
}

const DEK_COLUMNS: &str = "SELECT id, tenant_id, scope, tenant_key_id, wrapped, created_at_ms, \
     retired_at_ms, messages, bytes FROM deks";

fn dek_from_row(row: &SqliteRow) -> Result<DekRecord, StoreError> {
    const T: &str = "deks";
    Ok(DekRecord {
        id: decode::key_id(T, "id", &col::<String>(row, T, "id")?)?,
        tenant: decode::tenant_id(T, "tenant_id", &col::<String>(row, T, "tenant_id")?)?,
        scope: decode::scope(T, "scope", col(row, T, "scope")?)?,
        tenant_key_id: decode::key_id(
            T,
            "tenant_key_id",
            &col::<String>(row, T, "tenant_key_id")?,
        )?,
        wrapped: WrappedKey::new(col(row, T, "wrapped")?),
        created_at_ms: col(row, T, "created_at_ms")?,
        retired_at_ms: col(row, T, "retired_at_ms")?,
        messages: decode::counter(T, "messages", col(row, T, "messages")?)?,
        bytes: decode::counter(T, "bytes", col(row, T, "bytes")?)?,
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        with_retries(|| self.try_create_tenant(id, display_name, audit)).await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        sqlx::query(&format!("{TENANT_COLUMNS} WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }

    async fn set_tenant_policy(
        &self,
        id: &TenantId,
        policy: TenantPolicy,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        with_retries(|| self.try_set_tenant_policy(id, policy, audit)).await
    }

    async fn bind_kek(
        &self,
        binding: NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<KekBinding, StoreError> {
        decode::validate_binding_text("provider", &binding.provider)?;
        decode::validate_binding_text("key_ref", &binding.key_ref)?;
        let binding = &binding;
        with_retries(|| self.try_bind_kek(binding, audit)).await
    }

    async fn active_binding(&self, tenant: &TenantId) -> Result<Option<KekBinding>, StoreError> {
        sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.tenant_id = $1 AND kb.deactivated_at_ms IS NULL"
        ))
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .as_ref()
        .map(binding_from_row)
        .transpose()
    }

    async fn active_bindings(&self) -> Result<Vec<KekBinding>, StoreError> {
        sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.deactivated_at_ms IS NULL ORDER BY kb.tenant_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(binding_from_row)
        .collect()
    }

    async fn list_bindings(&self, tenant: &TenantId) -> Result<Vec<KekBinding>, StoreError> {
        sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.tenant_id = $1 ORDER BY kb.id"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(binding_from_row)
        .collect()
    }

    async fn set_binding_state(
        &self,
        binding_id: i64,
        state: KekState,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<KekBinding, StoreError> {
        with_retries(|| self.try_set_binding_state(binding_id, state, audit)).await
    }

    async fn get_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<TenantKeyRecord>, StoreError> {
        sqlx::query(&format!(
            "{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 AND tk.id = $2"
        ))
        .bind(tenant.as_str())
        .bind(decode::key_id_text(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .as_ref()
        .map(tenant_key_from_row)
        .transpose()
    }

    async fn insert_dek(
        &self,
        dek: NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError> {
        let dek = &dek;
        with_retries(|| self.try_insert_dek(dek, audit)).await
    }

    async fn active_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<Option<DekRecord>, StoreError> {
        sqlx::query(&format!(
            "{DEK_COLUMNS} WHERE tenant_id = $1 AND scope = $2 AND retired_at_ms IS NULL"
        ))
        .bind(tenant.as_str())
        .bind(scope.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .as_ref()
        .map(dek_from_row)
        .transpose()
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<DekRecord>, StoreError> {
        sqlx::query(&format!("{DEK_COLUMNS} WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant.as_str())
            .bind(decode::key_id_text(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(dek_from_row)
            .transpose()
    }

    async fn add_dek_usage(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        messages: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let messages = decode::counter_delta(messages);
        let bytes = decode::counter_delta(bytes);
        // One statement, so atomic without an explicit transaction; saturates at i64::MAX
        // (SQLite would otherwise turn an overflowing sum into a REAL, PostgreSQL would fail).
        let updated = sqlx::query(
            "UPDATE deks SET \
               messages = CASE WHEN messages > $1 THEN $2 ELSE messages + $3 END, \
               bytes = CASE WHEN bytes > $4 THEN $2 ELSE bytes + $5 END \
             WHERE tenant_id = $6 AND id = $7",
        )
        .bind(i64::MAX - messages)
        .bind(i64::MAX)
        .bind(messages)
        .bind(i64::MAX - bytes)
        .bind(bytes)
        .bind(tenant.as_str())
        .bind(decode::key_id_text(id))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("DEK {id} of tenant {tenant}")));
        }
        Ok(())
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tenants) AS tenants, \
                    (SELECT COUNT(*) FROM kek_bindings) AS bindings, \
                    (SELECT COUNT(*) FROM tenant_keys) AS tenant_keys, \
                    (SELECT COUNT(*) FROM deks) AS deks",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let count = |table: &str| -> Result<u64, StoreError> {
            decode::counter(table, "COUNT(*)", col(&row, table, table)?)
        };
        Ok(StoreCounts {
            tenants: count("tenants")?,
            bindings: count("bindings")?,
            tenant_keys: count("tenant_keys")?,
            deks: count("deks")?,
        })
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<Record>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events.as_slice();
        with_retries(|| self.try_append_audit(events)).await
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        const T: &str = "audit_records";
        let last = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match last {
            None => Ok(ChainHead::GENESIS),
            Some(row) => decode::chain_head(col(&row, T, "seq")?, &col::<String>(&row, T, "hash")?),
        }
    }

    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<Record>, StoreError> {
        const T: &str = "audit_records";
        query.validate()?;
        let mut sql = String::from(
            "SELECT seq, time_ms, event_type, tenant_id, body, hash FROM audit_records \
             WHERE seq > $1",
        );
        let mut n = 1;
        let mut clause = |sql: &mut String, condition: &str| {
            n += 1;
            sql.push_str(&format!(" AND {condition} ${n}"));
        };
        if query.tenant.is_some() {
            clause(&mut sql, "tenant_id =");
        }
        if query.event_type.is_some() {
            clause(&mut sql, "event_type =");
        }
        if query.from_ms.is_some() {
            clause(&mut sql, "time_ms >=");
        }
        if query.to_ms.is_some() {
            clause(&mut sql, "time_ms <");
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));

        let mut select = sqlx::query(&sql).bind(decode::seq_bound(query.after_seq));
        if let Some(tenant) = &query.tenant {
            select = select.bind(tenant.as_str());
        }
        if let Some(event_type) = &query.event_type {
            select = select.bind(event_type.as_str());
        }
        if let Some(from_ms) = query.from_ms {
            select = select.bind(from_ms);
        }
        if let Some(to_ms) = query.to_ms {
            select = select.bind(to_ms);
        }
        let rows = select
            .bind(i64::from(query.effective_limit()))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                decode::record(&StoredRecord {
                    seq: col(row, T, "seq")?,
                    time_ms: col(row, T, "time_ms")?,
                    event_type: col(row, T, "event_type")?,
                    tenant_id: col(row, T, "tenant_id")?,
                    body: col(row, T, "body")?,
                    hash: col(row, T, "hash")?,
                })
            })
            .collect()
    }

    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        with_retries(|| self.try_insert_checkpoint(checkpoint)).await
    }

    async fn checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, StoreError> {
        const T: &str = "audit_checkpoints";
        if from_seq > to_seq {
            return Ok(Vec::new());
        }
        sqlx::query(
            "SELECT seq, time_ms, key_id, body FROM audit_checkpoints \
             WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(decode::seq_bound(from_seq))
        .bind(decode::seq_bound(to_seq))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(|row| {
            decode::checkpoint(
                col(row, T, "seq")?,
                col(row, T, "time_ms")?,
                col(row, T, "key_id")?,
                col(row, T, "body")?,
            )
        })
        .collect()
    }
}
