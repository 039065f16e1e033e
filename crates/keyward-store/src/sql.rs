//! What the SQL backends share: the statements, row decoding, the write transactions, the audit
//! append, the retry loop and the classification of database errors.
//!
//! SQLite and PostgreSQL both accept `$N` placeholders, and the two schemas have the same tables
//! and columns (SQLite `INTEGER`/`BLOB` are PostgreSQL `BIGINT`/`BYTEA`), so every [`Store`]
//! method is written once, here, as a default method of [`SqlBackend`]. A backend supplies its
//! pool, its retry budget and — the one thing that really differs — how a write transaction
//! takes the backend's write lock ([`SqlBackend::begin_write`]): SQLite starts it with
//! `BEGIN IMMEDIATE`, PostgreSQL with `BEGIN ISOLATION LEVEL READ COMMITTED` followed by
//! `SELECT … FROM audit_chain_lock … FOR UPDATE`. Either way, once `begin_write` returns, no other
//! writer can append to the audit chain (or run another write transaction) until this one ends,
//! so the read-then-write sequences below (existence checks, the chain head) are atomic.
//!
//! [`impl_store_for_sql_backend!`] then implements [`Store`] for the backend by delegating to
//! these methods.
//!
//! [`Store`]: crate::Store

use std::future::Future;

use sqlx::error::ErrorKind;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::decode::{self, StoredRecord, now_ms};
use crate::{
    AuditError, AuditEvent, AuditFn, AuditQuery, BindingChange, ChainHead, Checkpoint, DekInsert,
    DekRecord, KekBinding, KekState, KeyId, NewDek, NewKekBinding, Record, Scope, StateChange,
    StateUpdate, StoreCounts, StoreError, TenantId, TenantKeyRecord, TenantPolicy, TenantRecord,
    WrappedKey,
};

/// What a write transaction announces to the other processes on the database
/// ([`SqlBackend::announce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// The tenant's current binding or a binding's state changed.
    KeyState,
    /// The tenant's policy (cache TTL, monitor interval) changed.
    TenantPolicy,
}

/// A schema migration: `migrations/<backend>/NNNN_name.sql`, applied once, in order. Both
/// backends use the same versions and names.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Refuses a database migrated by a newer build (its schema may mean things this build does
/// not know), rather than letting older code write to it.
fn refuse_newer_schema(
    newest_applied: Option<i64>,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    let newest_known = migrations.last().map_or(0, |m| m.version);
    match newest_applied {
        Some(applied) if applied > newest_known => Err(StoreError::Corrupt(format!(
            "schema_migrations.version: the database has schema version {applied}, \
             newer than this build's {newest_known}; refusing to use it"
        ))),
        _ => Ok(()),
    }
}

pub(crate) const TENANT_COLUMNS: &str = "SELECT id, display_name, created_at_ms, \
     cache_ttl_seconds, monitor_interval_seconds FROM tenants";

/// A binding with the id of its tenant key (one per binding; LEFT JOIN so that a missing one is
/// reported as corruption instead of hiding the binding).
pub(crate) const BINDING_COLUMNS: &str = "SELECT kb.id, kb.tenant_id, kb.provider, kb.key_ref, \
     kb.state, tk.id AS tenant_key_id, kb.created_at_ms, kb.deactivated_at_ms, \
     kb.state_changed_at_ms, kb.state_cause, kb.state_version \
     FROM kek_bindings kb LEFT JOIN tenant_keys tk ON tk.binding_id = kb.id";

pub(crate) const TENANT_KEY_COLUMNS: &str = "SELECT tk.id, tk.tenant_id, tk.binding_id, \
     kb.provider, kb.key_ref, tk.wrapped, tk.created_at_ms, tk.mac, kb.state AS binding_state, \
     kb.state_changed_at_ms AS binding_state_changed_at_ms \
     FROM tenant_keys tk JOIN kek_bindings kb ON kb.id = tk.binding_id";

pub(crate) const DEK_COLUMNS: &str = "SELECT id, tenant_id, scope, tenant_key_id, wrapped, \
     created_at_ms, retired_at_ms, messages, bytes FROM deks";

/// The SQL of an [`AuditQuery`]: `seq > $1`, then one placeholder per filter in the order
/// tenant, event type, from, to, and the limit last (see [`SqlBackend::audit_records`]).
fn audit_query_sql(query: &AuditQuery) -> String {
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
    sql
}

/// A tenant policy value as stored: `None`, or a positive `i64`.
fn policy_to_db(name: &str, value: Option<u64>) -> Result<Option<i64>, StoreError> {
    value
        .map(|v| {
            i64::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| StoreError::InvalidInput(format!("{name} must be positive")))
        })
        .transpose()
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

/// A SQL backend of the [`Store`](crate::Store): its pool and how it opens a write transaction;
/// every store operation is a default method here.
///
/// The where-clauses are the column and parameter types the shared statements use (`TEXT`,
/// 64-bit integers, byte strings), which both drivers provide.
pub(crate) trait SqlBackend: Send + Sync
where
    for<'c> &'c mut <Self::Db as Database>::Connection: Executor<'c, Database = Self::Db>,
    for<'q> <Self::Db as Database>::Arguments<'q>: IntoArguments<'q, Self::Db>,
    for<'q> &'q str: Encode<'q, Self::Db> + Type<Self::Db>,
    for<'q> String: Encode<'q, Self::Db> + Type<Self::Db>,
    for<'q> i64: Encode<'q, Self::Db> + Type<Self::Db>,
    for<'q> &'q [u8]: Encode<'q, Self::Db> + Type<Self::Db>,
    for<'q> Option<i64>: Encode<'q, Self::Db>,
    for<'q> Option<&'q str>: Encode<'q, Self::Db>,
    for<'q> Option<&'q [u8]>: Encode<'q, Self::Db>,
    for<'r> String: Decode<'r, Self::Db>,
    for<'r> &'r str: Decode<'r, Self::Db>,
    for<'r> i64: Decode<'r, Self::Db>,
    for<'r> Vec<u8>: Decode<'r, Self::Db> + Type<Self::Db>,
    for<'a> &'a str: ColumnIndex<<Self::Db as Database>::Row>,
    usize: ColumnIndex<<Self::Db as Database>::Row>,
{
    type Db: Database;

    /// Attempts of a write transaction that reported [`StoreError::Conflict`] (a concurrent
    /// writer won a race; nothing was changed) before that error is returned.
    const WRITE_ATTEMPTS: usize;

    fn sql_pool(&self) -> &Pool<Self::Db>;

    /// Opens a write transaction holding the backend's write lock: until it commits or rolls
    /// back, no other write transaction (of any process on the same database) gets past its own
    /// `begin_write`. Statements after it see everything committed before.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, StoreError>> + Send;

    /// Rejects text the backend cannot store (PostgreSQL: NUL characters), before any write.
    fn check_text(_field: &str, _value: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Called inside a write transaction, before commit: lets other processes on the same
    /// database learn that `tenant`'s key state or binding ([`Store::set_binding_state`],
    /// [`Store::bind_kek`]) or its policy ([`Store::set_tenant_policy`]) changed (PostgreSQL:
    /// `NOTIFY`, delivered only if and when the transaction commits). SQLite: nothing.
    fn announce<'t>(
        tx: &'t mut sqlx::Transaction<'static, Self::Db>,
        change: Announcement,
        tenant: &'t str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't {
        let _ = (tx, change, tenant);
        async { Ok(()) }
    }

    // ----- row decoding -----------------------------------------------------------------

    /// Reads one column, mapping a type mismatch or unexpected NULL to `Corrupt`.
    fn col<'r, T>(
        row: &'r <Self::Db as Database>::Row,
        table: &str,
        column: &str,
    ) -> Result<T, StoreError>
    where
        T: Decode<'r, Self::Db> + Type<Self::Db>,
    {
        row.try_get::<T, _>(column)
            .map_err(|e| StoreError::Corrupt(format!("{table}.{column}: {e}")))
    }

    fn tenant_from_row(row: &<Self::Db as Database>::Row) -> Result<TenantRecord, StoreError> {
        const T: &str = "tenants";
        Ok(TenantRecord {
            id: decode::tenant_id(T, "id", &Self::col::<String>(row, T, "id")?)?,
            display_name: Self::col(row, T, "display_name")?,
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            policy: TenantPolicy {
                cache_ttl_seconds: positive(
                    T,
                    "cache_ttl_seconds",
                    Self::col(row, T, "cache_ttl_seconds")?,
                )?,
                monitor_interval_seconds: positive(
                    T,
                    "monitor_interval_seconds",
                    Self::col(row, T, "monitor_interval_seconds")?,
                )?,
            },
        })
    }

    fn binding_from_row(row: &<Self::Db as Database>::Row) -> Result<KekBinding, StoreError> {
        const T: &str = "kek_bindings";
        let id: i64 = Self::col(row, T, "id")?;
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
            tenant: decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
            provider: Self::col(row, T, "provider")?,
            key_ref: Self::col(row, T, "key_ref")?,
            state: decode::kek_state(T, "state", &Self::col::<String>(row, T, "state")?)?,
            tenant_key_id: decode::key_id("tenant_keys", "id", &tenant_key_id)?,
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            deactivated_at_ms: Self::col(row, T, "deactivated_at_ms")?,
            state_changed_at_ms: Self::col(row, T, "state_changed_at_ms")?,
            state_cause: decode::cause(
                T,
                "state_cause",
                Self::col::<Option<String>>(row, T, "state_cause")?.as_deref(),
            )?,
            state_version: Self::col(row, T, "state_version")?,
        })
    }

    fn tenant_key_from_row(
        row: &<Self::Db as Database>::Row,
    ) -> Result<TenantKeyRecord, StoreError> {
        const T: &str = "tenant_keys";
        Ok(TenantKeyRecord {
            id: decode::key_id(T, "id", &Self::col::<String>(row, T, "id")?)?,
            tenant: decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
            binding_id: Self::col(row, T, "binding_id")?,
            provider: Self::col(row, "kek_bindings", "provider")?,
            key_ref: Self::col(row, "kek_bindings", "key_ref")?,
            wrapped: WrappedKey::new(Self::col(row, T, "wrapped")?),
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            binding_state: decode::kek_state(
                "kek_bindings",
                "state",
                &Self::col::<String>(row, "kek_bindings", "binding_state")?,
            )?,
            binding_state_changed_at_ms: Self::col(
                row,
                "kek_bindings",
                "binding_state_changed_at_ms",
            )?,
            mac: Self::col(row, T, "mac")?,
        })
    }

    fn dek_from_row(row: &<Self::Db as Database>::Row) -> Result<DekRecord, StoreError> {
        const T: &str = "deks";
        Ok(DekRecord {
            id: decode::key_id(T, "id", &Self::col::<String>(row, T, "id")?)?,
            tenant: decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
            scope: decode::scope(T, "scope", Self::col(row, T, "scope")?)?,
            tenant_key_id: decode::key_id(
                T,
                "tenant_key_id",
                &Self::col::<String>(row, T, "tenant_key_id")?,
            )?,
            wrapped: WrappedKey::new(Self::col(row, T, "wrapped")?),
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            retired_at_ms: Self::col(row, T, "retired_at_ms")?,
            messages: decode::counter(T, "messages", Self::col(row, T, "messages")?)?,
            bytes: decode::counter(T, "bytes", Self::col(row, T, "bytes")?)?,
        })
    }

    fn record_from_row(row: &<Self::Db as Database>::Row) -> Result<Record, StoreError> {
        const T: &str = "audit_records";
        decode::record(&StoredRecord {
            seq: Self::col(row, T, "seq")?,
            time_ms: Self::col(row, T, "time_ms")?,
            event_type: Self::col(row, T, "event_type")?,
            tenant_id: Self::col(row, T, "tenant_id")?,
            body: Self::col(row, T, "body")?,
            hash: Self::col(row, T, "hash")?,
        })
    }

    // ----- migrations ----------------------------------------------------------------------

    /// One step of a migration run, inside a transaction that holds the backend's migration
    /// lock and after `schema_migrations` exists: refuses a database with a newer schema than
    /// `all` knows, skips `migration` if it is recorded (`false`), else runs it and records it
    /// (`true`). The caller commits.
    async fn apply_migration(
        conn: &mut <Self::Db as Database>::Connection,
        migration: &Migration,
        all: &[Migration],
    ) -> Result<bool, StoreError> {
        // Read under the lock: a second process migrating the same database at the same time
        // waits for it and then sees the migration as applied.
        let newest_applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
                .fetch_one(&mut *conn)
                .await
                .map_err(backend)?;
        refuse_newer_schema(newest_applied, all)?;
        let applied = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = $1")
            .bind(migration.version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
        if applied.is_some() {
            return Ok(false);
        }
        sqlx::raw_sql(migration.sql)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied store migration"
        );
        Ok(true)
    }

    // ----- the audit append ---------------------------------------------------------------

    /// Appends `events`, in order, to the audit chain inside `conn`'s write transaction.
    ///
    /// The head is read here, under the write lock [`SqlBackend::begin_write`] took, so no other
    /// writer can append between this read and the commit. Every record of the batch gets the
    /// same time: the store clock now, or the previous record's time if the clock went
    /// backwards (times along the chain never decrease). Any failure is returned and the
    /// caller's transaction is dropped, i.e. rolled back together with the change the records
    /// describe.
    async fn append_events(
        conn: &mut <Self::Db as Database>::Connection,
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
                let head = decode::chain_head(
                    Self::col(&row, T, "seq")?,
                    &Self::col::<String>(&row, T, "hash")?,
                )?;
                let previous: i64 = Self::col(&row, T, "time_ms")?;
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
            .bind(body)
            .bind(hex::encode(record.hash()))
            .execute(&mut *conn)
            .await
            .map_err(|e| write_error(e, &format!("audit record {}", record.seq())))?;
            head = record.head();
            records.push(record);
        }
        Ok(records)
    }

    // ----- write transactions (one attempt each; see `with_retries`) ----------------------

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
        Self::append_events(&mut tx, audit(&tenant)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(tenant)
    }

    async fn try_set_tenant_policy(
        &self,
        id: &TenantId,
        ttl: Option<i64>,
        interval: Option<i64>,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        // `RETURNING` rather than rows_affected(), which sqlx does not offer generically.
        let updated = sqlx::query(
            "UPDATE tenants SET cache_ttl_seconds = $1, monitor_interval_seconds = $2 \
             WHERE id = $3 RETURNING id",
        )
        .bind(ttl)
        .bind(interval)
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if updated.is_none() {
            return Err(StoreError::NotFound(format!("tenant {id}")));
        }
        let row = sqlx::query(&format!("{TENANT_COLUMNS} WHERE id = $1"))
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let tenant = Self::tenant_from_row(&row)?;
        Self::append_events(&mut tx, audit(&tenant)).await?;
        Self::announce(&mut tx, Announcement::TenantPolicy, id.as_str()).await?;
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
            .bind(tenant_key_id.as_str())
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
            // The version moves too: a state change decided from a read of the binding while
            // it was current must not commit now that it no longer is.
            "UPDATE kek_bindings SET deactivated_at_ms = $1, state_version = state_version + 1 \
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
        .bind(b.provider.as_str())
        .bind(b.key_ref.as_str())
        .bind(KekState::Active.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("KEK binding for tenant {}", b.tenant)))?;

        sqlx::query(
            "INSERT INTO tenant_keys (id, tenant_id, binding_id, wrapped, created_at_ms, mac) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant_key_id.as_str())
        .bind(b.tenant.as_str())
        .bind(id)
        .bind(b.wrapped_tenant_key.as_bytes())
        .bind(now)
        .bind(b.tenant_key_mac.as_deref())
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
            state_cause: None,
            state_version: 0,
        };
        let change = BindingChange { binding, previous };
        Self::append_events(&mut tx, audit(&change)).await?;
        Self::announce(&mut tx, Announcement::KeyState, b.tenant.as_str()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(change.binding)
    }

    async fn try_set_binding_state(
        &self,
        update: StateUpdate,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<KekBinding, StoreError> {
        let binding_id = update.binding_id;
        let mut tx = self.begin_write().await?;
        // Read under the write lock: nothing can change the row between this read and the
        // update below, so comparing here is the compare-and-set.
        let row = sqlx::query(&format!("{BINDING_COLUMNS} WHERE kb.id = $1"))
            .bind(binding_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("KEK binding {binding_id}")));
        };
        let current = Self::binding_from_row(&row)?;
        if current.state_version != update.expected_version {
            return Err(StoreError::StateChanged(format!(
                "binding {binding_id} of tenant {} is {} (version {}), not version {} as read",
                current.tenant, current.state, current.state_version, update.expected_version
            )));
        }
        sqlx::query(
            "UPDATE kek_bindings SET state = $1, state_cause = $2, state_changed_at_ms = $3, \
             state_version = state_version + 1 WHERE id = $4 AND state_version = $5",
        )
        .bind(update.to.as_str())
        .bind(decode::cause_text(update.cause))
        .bind(now_ms())
        .bind(binding_id)
        .bind(update.expected_version)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let row = sqlx::query(&format!("{BINDING_COLUMNS} WHERE kb.id = $1"))
            .bind(binding_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let change = StateChange {
            binding: Self::binding_from_row(&row)?,
            from: current.state,
            from_cause: current.state_cause,
        };
        if change.binding.state_version != update.expected_version + 1 {
            // Unreachable under the write lock; refuse rather than commit something unexpected.
            return Err(StoreError::StateChanged(format!(
                "binding {binding_id} moved to version {} during its own update",
                change.binding.state_version
            )));
        }
        Self::append_events(&mut tx, audit(&change)).await?;
        Self::announce(
            &mut tx,
            Announcement::KeyState,
            change.binding.tenant.as_str(),
        )
        .await?;
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
            .bind(tenant_key_id.as_str())
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
            .bind(id.as_str())
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
        .bind(id.as_str())
        .bind(dek.tenant.as_str())
        .bind(dek.scope.as_str())
        .bind(tenant_key_id.as_str())
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
        Self::append_events(&mut tx, audit(&inserted)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(inserted)
    }

    async fn try_append_audit(&self, events: &[AuditEvent]) -> Result<Vec<Record>, StoreError> {
        let mut tx = self.begin_write().await?;
        let records = Self::append_events(&mut tx, events.to_vec()).await?;
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
        .bind(checkpoint.key_id.as_str())
        .bind(body)
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

    // ----- the Store methods (impl_store_for_sql_backend! delegates to these) -------------

    async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        Self::check_text("display_name", display_name)?;
        with_retries(Self::WRITE_ATTEMPTS, || {
            self.try_create_tenant(id, display_name, audit)
        })
        .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        sqlx::query(&format!("{TENANT_COLUMNS} WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(self.sql_pool())
            .await
            .map_err(backend)?
            .as_ref()
            .map(Self::tenant_from_row)
            .transpose()
    }

    async fn set_tenant_policy(
        &self,
        id: &TenantId,
        policy: TenantPolicy,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        let ttl = policy_to_db("cache_ttl_seconds", policy.cache_ttl_seconds)?;
        let interval = policy_to_db("monitor_interval_seconds", policy.monitor_interval_seconds)?;
        with_retries(Self::WRITE_ATTEMPTS, || {
            self.try_set_tenant_policy(id, ttl, interval, audit)
        })
        .await
    }

    async fn bind_kek(
        &self,
        binding: NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<KekBinding, StoreError> {
        decode::validate_binding_text("provider", &binding.provider)?;
        decode::validate_binding_text("key_ref", &binding.key_ref)?;
        let binding = &binding;
        with_retries(Self::WRITE_ATTEMPTS, || self.try_bind_kek(binding, audit)).await
    }

    async fn active_binding(&self, tenant: &TenantId) -> Result<Option<KekBinding>, StoreError> {
        sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.tenant_id = $1 AND kb.deactivated_at_ms IS NULL"
        ))
        .bind(tenant.as_str())
        .fetch_optional(self.sql_pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(Self::binding_from_row)
        .transpose()
    }

    async fn active_bindings(&self) -> Result<Vec<KekBinding>, StoreError> {
        sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.deactivated_at_ms IS NULL ORDER BY kb.tenant_id"
        ))
        .fetch_all(self.sql_pool())
        .await
        .map_err(backend)?
        .iter()
        .map(Self::binding_from_row)
        .collect()
    }

    async fn list_bindings(&self, tenant: &TenantId) -> Result<Vec<KekBinding>, StoreError> {
        sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.tenant_id = $1 ORDER BY kb.id"
        ))
        .bind(tenant.as_str())
        .fetch_all(self.sql_pool())
        .await
        .map_err(backend)?
        .iter()
        .map(Self::binding_from_row)
        .collect()
    }

    async fn set_binding_state(
        &self,
        update: StateUpdate,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<KekBinding, StoreError> {
        with_retries(Self::WRITE_ATTEMPTS, || {
            self.try_set_binding_state(update, audit)
        })
        .await
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
        .fetch_optional(self.sql_pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(Self::tenant_key_from_row)
        .transpose()
    }

    async fn insert_dek(
        &self,
        dek: NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError> {
        let dek = &dek;
        with_retries(Self::WRITE_ATTEMPTS, || self.try_insert_dek(dek, audit)).await
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
        .fetch_optional(self.sql_pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(Self::dek_from_row)
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
            .fetch_optional(self.sql_pool())
            .await
            .map_err(backend)?
            .as_ref()
            .map(Self::dek_from_row)
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
        // One statement, so atomic without an explicit transaction (and without the write
        // lock: it touches no uniqueness rule and appends nothing); saturates at i64::MAX
        // (SQLite would otherwise turn an overflowing sum into a REAL, PostgreSQL would fail).
        let updated = sqlx::query(
            "UPDATE deks SET \
               messages = CASE WHEN messages > $1 THEN $2 ELSE messages + $3 END, \
               bytes = CASE WHEN bytes > $4 THEN $2 ELSE bytes + $5 END \
             WHERE tenant_id = $6 AND id = $7 RETURNING id",
        )
        .bind(i64::MAX - messages)
        .bind(i64::MAX)
        .bind(messages)
        .bind(i64::MAX - bytes)
        .bind(bytes)
        .bind(tenant.as_str())
        .bind(decode::key_id_text(id))
        .fetch_optional(self.sql_pool())
        .await
        .map_err(backend)?;
        if updated.is_none() {
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
        .fetch_one(self.sql_pool())
        .await
        .map_err(backend)?;
        let count = |table: &str| -> Result<u64, StoreError> {
            decode::counter(table, "COUNT(*)", Self::col(&row, table, table)?)
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
        with_retries(Self::WRITE_ATTEMPTS, || self.try_append_audit(events)).await
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        const T: &str = "audit_records";
        let last = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(self.sql_pool())
            .await
            .map_err(backend)?;
        match last {
            None => Ok(ChainHead::GENESIS),
            Some(row) => decode::chain_head(
                Self::col(&row, T, "seq")?,
                &Self::col::<String>(&row, T, "hash")?,
            ),
        }
    }

    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<Record>, StoreError> {
        query.validate()?;
        let sql = audit_query_sql(query);
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
        select
            .bind(i64::from(query.effective_limit()))
            .fetch_all(self.sql_pool())
            .await
            .map_err(backend)?
            .iter()
            .map(Self::record_from_row)
            .collect()
    }

    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        with_retries(Self::WRITE_ATTEMPTS, || {
            self.try_insert_checkpoint(checkpoint)
        })
        .await
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
        .fetch_all(self.sql_pool())
        .await
        .map_err(backend)?
        .iter()
        .map(|row| {
            decode::checkpoint(
                Self::col(row, T, "seq")?,
                Self::col(row, T, "time_ms")?,
                Self::col(row, T, "key_id")?,
                Self::col(row, T, "body")?,
            )
        })
        .collect()
    }

    // ----- tenant-key authentication tags (schema version 5) ----------------------------

    async fn unauthenticated_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>, StoreError> {
        sqlx::query(&format!(
            "{TENANT_KEY_COLUMNS} WHERE tk.mac IS NULL ORDER BY tk.tenant_id, tk.id"
        ))
        .fetch_all(self.sql_pool())
        .await
        .map_err(backend)?
        .iter()
        .map(Self::tenant_key_from_row)
        .collect()
    }

    async fn authenticate_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        mac: Vec<u8>,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        if mac.is_empty() {
            return Err(StoreError::InvalidInput(
                "tenant_keys.mac: an authentication tag must not be empty".to_owned(),
            ));
        }
        let mac = &mac;
        with_retries(Self::WRITE_ATTEMPTS, || {
            self.try_authenticate_tenant_key(tenant, id, mac, audit)
        })
        .await
    }

    async fn try_authenticate_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        mac: &[u8],
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        let id_text = decode::key_id_text(id);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 AND tk.id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id_text.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("tenant key {id} of {tenant}")));
        };
        let mut record = Self::tenant_key_from_row(&row)?;
        if record.mac.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "an authentication tag for tenant key {id} of {tenant}"
            )));
        }
        // Read above in this write transaction: the row exists and its tag is NULL.
        sqlx::query("UPDATE tenant_keys SET mac = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(mac)
            .bind(tenant.as_str())
            .bind(id_text.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        record.mac = Some(mac.to_vec());
        Self::append_events(&mut tx, audit(&record)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }
}

/// Implements [`Store`](crate::Store) for a [`SqlBackend`] by delegating every method to it.
macro_rules! impl_store_for_sql_backend {
    ($backend:ty $(, { $($own:item)* })?) => {
        #[async_trait::async_trait]
        impl $crate::Store for $backend {
            async fn create_tenant(
                &self,
                id: &$crate::TenantId,
                display_name: &str,
                audit: $crate::AuditFn<'_, $crate::TenantRecord>,
            ) -> Result<$crate::TenantRecord, $crate::StoreError> {
                $crate::sql::SqlBackend::create_tenant(self, id, display_name, audit).await
            }

            async fn get_tenant(
                &self,
                id: &$crate::TenantId,
            ) -> Result<Option<$crate::TenantRecord>, $crate::StoreError> {
                $crate::sql::SqlBackend::get_tenant(self, id).await
            }

            async fn set_tenant_policy(
                &self,
                id: &$crate::TenantId,
                policy: $crate::TenantPolicy,
                audit: $crate::AuditFn<'_, $crate::TenantRecord>,
            ) -> Result<$crate::TenantRecord, $crate::StoreError> {
                $crate::sql::SqlBackend::set_tenant_policy(self, id, policy, audit).await
            }

            async fn bind_kek(
                &self,
                binding: $crate::NewKekBinding,
                audit: $crate::AuditFn<'_, $crate::BindingChange>,
            ) -> Result<$crate::KekBinding, $crate::StoreError> {
                $crate::sql::SqlBackend::bind_kek(self, binding, audit).await
            }

            async fn active_binding(
                &self,
                tenant: &$crate::TenantId,
            ) -> Result<Option<$crate::KekBinding>, $crate::StoreError> {
                $crate::sql::SqlBackend::active_binding(self, tenant).await
            }

            async fn active_bindings(&self) -> Result<Vec<$crate::KekBinding>, $crate::StoreError> {
                $crate::sql::SqlBackend::active_bindings(self).await
            }

            async fn list_bindings(
                &self,
                tenant: &$crate::TenantId,
            ) -> Result<Vec<$crate::KekBinding>, $crate::StoreError> {
                $crate::sql::SqlBackend::list_bindings(self, tenant).await
            }

            async fn set_binding_state(
                &self,
                update: $crate::StateUpdate,
                audit: $crate::AuditFn<'_, $crate::StateChange>,
            ) -> Result<$crate::KekBinding, $crate::StoreError> {
                $crate::sql::SqlBackend::set_binding_state(self, update, audit).await
            }

            async fn get_tenant_key(
                &self,
                tenant: &$crate::TenantId,
                id: &$crate::KeyId,
            ) -> Result<Option<$crate::TenantKeyRecord>, $crate::StoreError> {
                $crate::sql::SqlBackend::get_tenant_key(self, tenant, id).await
            }

            async fn unauthenticated_tenant_keys(
                &self,
            ) -> Result<Vec<$crate::TenantKeyRecord>, $crate::StoreError> {
                $crate::sql::SqlBackend::unauthenticated_tenant_keys(self).await
            }

            async fn authenticate_tenant_key(
                &self,
                tenant: &$crate::TenantId,
                id: &$crate::KeyId,
                mac: Vec<u8>,
                audit: $crate::AuditFn<'_, $crate::TenantKeyRecord>,
            ) -> Result<$crate::TenantKeyRecord, $crate::StoreError> {
                $crate::sql::SqlBackend::authenticate_tenant_key(self, tenant, id, mac, audit).await
            }

            async fn insert_dek(
                &self,
                dek: $crate::NewDek,
                audit: $crate::AuditFn<'_, $crate::DekInsert>,
            ) -> Result<$crate::DekInsert, $crate::StoreError> {
                $crate::sql::SqlBackend::insert_dek(self, dek, audit).await
            }

            async fn active_dek(
                &self,
                tenant: &$crate::TenantId,
                scope: &$crate::Scope,
            ) -> Result<Option<$crate::DekRecord>, $crate::StoreError> {
                $crate::sql::SqlBackend::active_dek(self, tenant, scope).await
            }

            async fn get_dek(
                &self,
                tenant: &$crate::TenantId,
                id: &$crate::KeyId,
            ) -> Result<Option<$crate::DekRecord>, $crate::StoreError> {
                $crate::sql::SqlBackend::get_dek(self, tenant, id).await
            }

            async fn add_dek_usage(
                &self,
                tenant: &$crate::TenantId,
                id: &$crate::KeyId,
                messages: u64,
                bytes: u64,
            ) -> Result<(), $crate::StoreError> {
                $crate::sql::SqlBackend::add_dek_usage(self, tenant, id, messages, bytes).await
            }

            async fn counts(&self) -> Result<$crate::StoreCounts, $crate::StoreError> {
                $crate::sql::SqlBackend::counts(self).await
            }

            async fn append_audit(
                &self,
                events: Vec<$crate::AuditEvent>,
            ) -> Result<Vec<$crate::Record>, $crate::StoreError> {
                $crate::sql::SqlBackend::append_audit(self, events).await
            }

            async fn audit_head(&self) -> Result<$crate::ChainHead, $crate::StoreError> {
                $crate::sql::SqlBackend::audit_head(self).await
            }

            async fn audit_records(
                &self,
                query: &$crate::AuditQuery,
            ) -> Result<Vec<$crate::Record>, $crate::StoreError> {
                $crate::sql::SqlBackend::audit_records(self, query).await
            }

            async fn insert_checkpoint(
                &self,
                checkpoint: &$crate::Checkpoint,
            ) -> Result<(), $crate::StoreError> {
                $crate::sql::SqlBackend::insert_checkpoint(self, checkpoint).await
            }

            async fn checkpoints(
                &self,
                from_seq: u64,
                to_seq: u64,
            ) -> Result<Vec<$crate::Checkpoint>, $crate::StoreError> {
                $crate::sql::SqlBackend::checkpoints(self, from_seq, to_seq).await
            }

            $($($own)*)?
        }
    };
}
pub(crate) use impl_store_for_sql_backend;

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
