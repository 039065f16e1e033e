//! Schema migrations, shared by both dialects: the same versions and names; each dialect
//! brings its own SQL files and its own migration lock (see `sqlite.rs`, `postgres/mod.rs`).

use sqlx::Database;

use super::{backend, sql_impl};
use crate::StoreError;
use crate::decode::now_ms;

/// A schema migration: `migrations/<backend>/NNNN_name.sql`, applied once, in order. Both
/// backends use the same versions and names.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Every migration of the backend whose SQL files are in `migrations/<$dir>/`, in order: the
/// same versions and names for both backends (`NNNN_name.sql`). Never edit a released one:
/// append.
macro_rules! migrations {
    ($dir:literal) => {
        $crate::sql::migrations!(@files $dir;
            1 "init" "0001_init",
            2 "audit" "0002_audit",
            3 "tenant_policy" "0003_tenant_policy",
            4 "binding_state_cause" "0004_binding_state_cause",
            5 "tenant_key_mac" "0005_tenant_key_mac",
            6 "key_checks" "0006_key_checks",
            7 "dek_tombstones" "0007_dek_tombstones",
            8 "rekey" "0008_rekey",
            9 "export" "0009_export",
            10 "decrypt_purposes" "0010_decrypt_purposes",
        )
    };
    (@files $dir:literal; $($version:literal $name:literal $file:literal,)*) => {
        &[$($crate::sql::Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"), "/migrations/", $dir, "/", $file, ".sql"
            )),
        }),*]
    };
}
pub(crate) use migrations;

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

sql_impl!(impl => {
    /// One step of a migration run, in `tx`, a transaction that holds the backend's migration
    /// lock, after `schema_migrations` exists: refuses a database with a newer schema than
    /// `all` knows, skips `migration` if it is recorded (rolling back), else runs it, records
    /// it and commits.
    pub(crate) async fn apply_migration(
        mut tx: sqlx::Transaction<'_, D::Db>,
        migration: &Migration,
        all: &[Migration],
    ) -> Result<(), StoreError> {
        let conn: &mut <D::Db as Database>::Connection = &mut tx;
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
            return tx.rollback().await.map_err(backend);
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
        tx.commit().await.map_err(backend)
    }
});
