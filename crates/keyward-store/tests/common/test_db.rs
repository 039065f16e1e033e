//! One fresh PostgreSQL database per test, for every test that needs PostgreSQL: this crate's
//! `postgres_conformance`, and through a `#[path]` module keyward-server's tests (the audit
//! rotation and revocation model suites) and the end-to-end tests (docs/store.md, "How the tests
//! get a database"). The only copy: a test that needs a database takes it from here.
//!
//! `KEYWARD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) must name a
//! role that may `CREATE DATABASE`. Without a server the tests fail, they are never skipped.
//! Each database is `kw_test_<16 hex>`, dropped by [`TestDb::finish`] when the test passed (a
//! failed test leaves its database behind for inspection).
#![allow(dead_code, clippy::panic, clippy::unwrap_used, reason = "test support")]

use std::time::Duration;

use keyward_store::KeyId;
use keyward_store::postgres::{PostgresOptions, PostgresStore};
use sqlx::{Connection as _, PgConnection};

pub(crate) const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub(crate) const URL_VAR: &str = "KEYWARD_TEST_POSTGRES_URL";

/// The server the tests create their databases on.
pub(crate) fn admin_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` with its password (if any) replaced by `***`, for messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// `url` with its database (the path) replaced by `database`; query parameters are kept.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{URL_VAR} is not a URL: {}", redacted(url)));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{database}{query}")
}

pub(crate) async fn connect_admin(url: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL is not reachable at {} ({e}). These tests need a server and are never \
             skipped: run them through scripts/test (which sources scripts/ensure-postgres.sh), \
             or start one and set {URL_VAR} to a URL whose role may CREATE DATABASE.",
            redacted(url)
        ),
        Err(_) => panic!(
            "PostgreSQL at {} did not answer within 10 s. These tests need a server: run them \
             through scripts/test, or set {URL_VAR}.",
            redacted(url)
        ),
    }
}

/// A fresh database for one test.
pub(crate) struct TestDb {
    admin_url: String,
    name: String,
    /// The test database's URL.
    pub(crate) url: String,
}

impl TestDb {
    /// A database on the shared server ([`URL_VAR`]).
    pub(crate) async fn create() -> TestDb {
        TestDb::create_on(&admin_url()).await
    }

    /// A database on the server of `admin_url` (e.g. a private cluster a test stops and starts).
    pub(crate) async fn create_on(admin_url: &str) -> TestDb {
        let admin_url = admin_url.to_owned();
        let mut admin = connect_admin(&admin_url).await;
        let name = format!("kw_test_{}", &KeyId::generate().unwrap().to_string()[..16]);
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a test database on {} ({e}): the role must be allowed to \
                     CREATE DATABASE",
                    redacted(&admin_url)
                )
            });
        admin.close().await.unwrap();
        let url = with_database(&admin_url, &name);
        TestDb {
            admin_url,
            name,
            url,
        }
    }

    pub(crate) async fn store(&self) -> PostgresStore {
        self.store_with(PostgresOptions::default()).await
    }

    pub(crate) async fn store_with(&self, options: PostgresOptions) -> PostgresStore {
        PostgresStore::connect(&self.url, options).await.unwrap()
    }

    /// A connection that bypasses the store (to plant rows, or to try what the store never does).
    pub(crate) async fn raw(&self) -> PgConnection {
        connect_admin(&self.url).await
    }

    /// Drops the database now (the test goes on without it, e.g. to see replicas fail).
    pub(crate) async fn drop_database(&self) {
        let mut admin = connect_admin(&self.admin_url).await;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        let _ = admin.close().await;
    }

    /// Drops the database (best effort); called at the end of a test that passed.
    pub(crate) async fn finish(self) {
        let Ok(mut admin) = PgConnection::connect(&self.admin_url).await else {
            return;
        };
        let forced = sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await;
        if forced.is_err() {
            // Before PostgreSQL 13 there is no FORCE.
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {}", self.name))
                .execute(&mut admin)
                .await;
        }
        let _ = admin.close().await;
    }
}
