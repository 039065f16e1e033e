//! `keyward store …`: operate on the store directly (no server needed): back up a SQLite
//! store (and say what the copy holds and how old its oldest key is), authenticate the tenant
//! keys stored before schema version 5.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use keyward_server::Config;

use crate::cli::StoreCommand;

pub(crate) async fn store(cmd: StoreCommand) -> anyhow::Result<()> {
    let (database, output, json) = match cmd {
        StoreCommand::Backup {
            database,
            output,
            json,
        } => (database, output, json),
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
    // The copy holds every transaction committed before it started: it is at least this new.
    let taken_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let result = store.backup(&output).await;
    store.close().await;
    result.with_context(|| format!("backing up {} to {}", database.display(), output.display()))?;
    eprintln!("backed up {} to {}", database.display(), output.display());
    // What the copy holds, read from the copy itself.
    let copy = keyward_store::sqlite::SqliteStore::open_read_only(&output)
        .await
        .with_context(|| format!("opening the copy {}", output.display()))?;
    let contents = copy.contents().await;
    copy.close().await;
    let contents = contents.with_context(|| format!("reading the copy {}", output.display()))?;
    if json {
        println!("{}", backup_json(&output, taken_at_ms, &contents));
    } else {
        print!("{}", backup_text(taken_at_ms, &contents));
    }
    Ok(())
}

/// Why a backup's age matters, said after every backup (docs/store.md, "Backups").
const SHREDDING_CAVEAT: &str = "A backup keeps every key it holds, including keys shredded after \
     it was taken: crypto-shredding is only as strong as backup retention (docs/store.md, \
     \"Backups\").";

/// `3 days 4 h`, `5 h 12 min`, `12 min`, `40 s`: how long ago, to the unit that matters.
fn age_words(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (days, hours, minutes) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (1, h, _) => format!("1 day {h} h"),
        (d, h, _) => format!("{d} days {h} h"),
    }
}

/// The summary of a backup as people read it: when, what it holds, how old its oldest wrapped
/// DEK is, and the shredding caveat.
fn backup_text(taken_at_ms: i64, c: &keyward_store::StoreContents) -> String {
    use std::fmt::Write as _;
    let time = keyward_server::time::rfc3339_utc_ms;
    let mut out = String::new();
    let _ = writeln!(out, "backup time:  {}", time(taken_at_ms));
    let _ = writeln!(out, "wrapped DEKs: {}", c.deks);
    let tenants = if c.tenants == 1 { "tenant" } else { "tenants" };
    let _ = writeln!(
        out,
        "tenant keys:  {} (of {} {tenants})",
        c.tenant_keys, c.tenants
    );
    match c.oldest_dek_created_at_ms {
        Some(oldest) => {
            let _ = writeln!(
                out,
                "oldest DEK:   created {}, {} before the backup",
                time(oldest),
                age_words(taken_at_ms - oldest)
            );
        }
        None => {
            let _ = writeln!(out, "oldest DEK:   none (the backup holds no wrapped DEK)");
        }
    }
    let _ = writeln!(out, "{SHREDDING_CAVEAT}");
    out
}

/// `--json`: the same summary, times as RFC 3339 and ages in seconds.
fn backup_json(
    output: &std::path::Path,
    taken_at_ms: i64,
    c: &keyward_store::StoreContents,
) -> serde_json::Value {
    let time = keyward_server::time::rfc3339_utc_ms;
    let age = |ms: Option<i64>| ms.map(|ms| (taken_at_ms - ms).max(0) / 1000);
    serde_json::json!({
        "output": output.display().to_string(),
        "backup_time": time(taken_at_ms),
        "tenants": c.tenants,
        "tenant_keys": c.tenant_keys,
        "wrapped_deks": c.deks,
        "dek_tombstones": c.dek_tombstones,
        "oldest_dek_created_at": c.oldest_dek_created_at_ms.map(time),
        "oldest_dek_age_seconds": age(c.oldest_dek_created_at_ms),
        "oldest_tenant_key_created_at": c.oldest_tenant_key_created_at_ms.map(time),
        "oldest_tenant_key_age_seconds": age(c.oldest_tenant_key_created_at_ms),
        "last_record_at": c.last_record_at_ms.map(time),
        "note": SHREDDING_CAVEAT,
    })
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
    let hasher = std::sync::Arc::new(keyward_server::audit::load_identifier_key(
        &settings.audit_dir,
    )?);
    // Its audit records are format v2, like the servers' (docs/audit-format.md §3.3): a v1 record
    // after v2 ones could not be redacted by a per-tenant export.
    let sealer = std::sync::Arc::new(keyward_audit::RecordSealer::new(std::sync::Arc::clone(
        &hasher,
    )));
    match &settings.store {
        keyward_server::config::StoreLocation::Sqlite(path) => {
            if !path.is_file() {
                bail!("{}: no such store file", path.display());
            }
            let store = keyward_store::sqlite::SqliteStore::open(path)
                .await?
                .with_record_sealer(sealer);
            let result = authenticate_in(&store, &hasher, actor, confirm).await;
            store.close().await;
            result
        }
        keyward_server::config::StoreLocation::Postgres { url, options, .. } => {
            let store = keyward_store::postgres::PostgresStore::connect(url, options.clone())
                .await?
                .with_record_sealer(sealer);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn ages_are_in_the_unit_that_matters() {
        assert_eq!(age_words(40_999), "40 s");
        assert_eq!(age_words(-5), "0 s", "a clock step back is no age");
        assert_eq!(age_words(12 * 60_000 + 5), "12 min");
        assert_eq!(age_words((5 * 60 + 12) * 60_000), "5 h 12 min");
        assert_eq!(age_words((24 + 4) * 3_600_000), "1 day 4 h");
        assert_eq!(
            age_words((400 * 24 + 23) * 3_600_000 + 59_000),
            "400 days 23 h"
        );
    }

    /// The summary names the backup's time, what it holds, the oldest DEK's creation and age,
    /// and ends with the shredding caveat; without DEKs it says so.
    #[test]
    fn the_summary_says_how_old_the_oldest_key_is() {
        let taken = 1_796_570_581_000; // 2026-12-06T15:23:01Z
        let contents = keyward_store::StoreContents {
            tenants: 2,
            tenant_keys: 3,
            deks: 12,
            dek_tombstones: 1,
            oldest_dek_created_at_ms: Some(taken - (3 * 24 + 4) * 3_600_000),
            oldest_tenant_key_created_at_ms: Some(taken - 5 * 24 * 3_600_000),
            last_record_at_ms: Some(taken - 1000),
        };
        assert_eq!(
            backup_text(taken, &contents),
            format!(
                "backup time:  2026-12-06T15:23:01.000Z\n\
                 wrapped DEKs: 12\n\
                 tenant keys:  3 (of 2 tenants)\n\
                 oldest DEK:   created 2026-12-03T11:23:01.000Z, 3 days 4 h before the backup\n\
                 {SHREDDING_CAVEAT}\n"
            )
        );
        let json = backup_json(std::path::Path::new("/b/k.db"), taken, &contents);
        assert_eq!(json["wrapped_deks"], 12);
        assert_eq!(json["oldest_dek_created_at"], "2026-12-03T11:23:01.000Z");
        assert_eq!(json["oldest_dek_age_seconds"], (3 * 24 + 4) * 3600);
        assert_eq!(json["oldest_tenant_key_age_seconds"], 5 * 24 * 3600);
        assert_eq!(json["note"], SHREDDING_CAVEAT);

        let empty = keyward_store::StoreContents::default();
        let text = backup_text(taken, &empty);
        assert!(
            text.contains("oldest DEK:   none (the backup holds no wrapped DEK)\n"),
            "{text}"
        );
        let json = backup_json(std::path::Path::new("/b/k.db"), taken, &empty);
        assert_eq!(json["oldest_dek_created_at"], serde_json::Value::Null);
        assert_eq!(json["oldest_dek_age_seconds"], serde_json::Value::Null);
    }
}
