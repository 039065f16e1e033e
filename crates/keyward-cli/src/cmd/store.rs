//! `keyward store …`: operate on the store directly (no server needed): back up a SQLite
//! store, authenticate the tenant keys stored before schema version 5.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use keyward_server::Config;

use crate::cli::StoreCommand;

pub(crate) async fn store(cmd: StoreCommand) -> anyhow::Result<()> {
    let (database, output) = match cmd {
        StoreCommand::Backup { database, output } => (database, output),
        StoreCommand::AuthenticateTenantKeys {
            config,
            data_dir,
            actor,
            confirm,
        } => return authenticate_tenant_keys(config, data_dir, &actor, confirm).await,
    };
    if !database.is_file() {
        anyhow::bail!("{}: no such store file", database.display());
    }
    let store = keyward_store::sqlite::SqliteStore::open_read_only(&database)
        .await
        .with_context(|| format!("opening {}", database.display()))?;
    let result = store.backup(&output).await;
    store.close().await;
    result.with_context(|| format!("backing up {} to {}", database.display(), output.display()))?;
    eprintln!("backed up {} to {}", database.display(), output.display());
    Ok(())
}

/// `keyward store authenticate-tenant-keys`: the upgrade path of docs/adr/0007-tenant-key-mac.md.
async fn authenticate_tenant_keys(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    actor: &str,
    confirm: bool,
) -> anyhow::Result<()> {
    let mut config = Config::load(config.as_deref(), &crate::providers::registry())?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    let settings = config.resolve()?;
    // The servers' key, never a fresh one (that would tag rows no server accepts).
    let hasher = keyward_server::audit::load_identifier_key(&settings.audit_dir)?;
    match &settings.store {
        keyward_server::config::StoreLocation::Sqlite(path) => {
            if !path.is_file() {
                bail!("{}: no such store file", path.display());
            }
            let store = keyward_store::sqlite::SqliteStore::open(path).await?;
            let result = authenticate_in(&store, &hasher, actor, confirm).await;
            store.close().await;
            result
        }
        keyward_server::config::StoreLocation::Postgres { url, options, .. } => {
            let store =
                keyward_store::postgres::PostgresStore::connect(url, options.clone()).await?;
            let result = authenticate_in(&store, &hasher, actor, confirm).await;
            store.close().await;
            result
        }
    }
}

/// Lists (without `confirm`) or tags the untagged tenant keys of `store`.
async fn authenticate_in(
    store: &dyn keyward_store::Store,
    hasher: &keyward_audit::IdentifierHasher,
    actor: &str,
    confirm: bool,
) -> anyhow::Result<()> {
    if !confirm {
        let pending = store.unauthenticated_tenant_keys().await?;
        for key in &pending {
            println!(
                "untagged: tenant={} tenant_key_id={} binding_id={} provider={} key_ref={}",
                key.tenant, key.id, key.binding_id, key.provider, key.key_ref
            );
        }
        eprintln!(
            "{} tenant key(s) without an authentication tag; check them (nobody else could \
             write the store, or they match a trusted backup), then run again with --confirm",
            pending.len()
        );
        return Ok(());
    }
    let done =
        keyward_server::keyring::authenticate_stored_tenant_keys(store, hasher, actor).await?;
    for key in &done {
        println!("tagged: {key}");
    }
    eprintln!(
        "{} tenant key(s) tagged, each audited as admin_action",
        done.len()
    );
    Ok(())
}
