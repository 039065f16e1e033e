//! Helpers both backends' test files use: the PostgreSQL test databases (`test_db`, also used by
//! keyward-server's and the end-to-end tests) and the migration files. The backend-generic tests
//! themselves, those that need more than the `Store` trait included, live in
//! `keyward_store::conformance` (its `backdoor` module and `Backdoor` trait).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test support shared by two test binaries"
)]

pub(crate) mod test_db;

/// The versions of the migration files of `backend` (`migrations/<backend>/NNNN_name.sql`), in
/// order: the store must have applied exactly these.
pub(crate) fn migration_versions(backend: &str) -> Vec<i64> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name[..4].parse().unwrap()
        })
        .collect();
    versions.sort_unstable();
    versions
}

/// The rows of `schema_migrations` (version, applied_at_ms) read on `executor`, after checking
/// that they are exactly the migration files of `backend`, each applied once, in order.
pub(crate) async fn applied_migrations<'e, E>(executor: E, backend: &str) -> Vec<(i64, i64)>
where
    E: sqlx::Executor<'e>,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
    for<'r> (i64, i64): sqlx::FromRow<'r, <E::Database as sqlx::Database>::Row>,
{
    let applied: Vec<(i64, i64)> =
        sqlx::query_as("SELECT version, applied_at_ms FROM schema_migrations ORDER BY version")
            .fetch_all(executor)
            .await
            .unwrap();
    assert_eq!(
        applied.iter().map(|m| m.0).collect::<Vec<_>>(),
        migration_versions(backend),
        "every migration applied once, in order"
    );
    applied
}
