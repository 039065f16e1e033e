//! `keyward key …`: the local development key-encryption keys of a server (not for production).

use anyhow::bail;
use keyward_kms::local::LocalProvider;
use keyward_server::Config;

use crate::cli::KeyCommand;

pub(crate) fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    let dir = match &cmd {
        KeyCommand::Create { dir, .. }
        | KeyCommand::Disable { dir, .. }
        | KeyCommand::Enable { dir, .. }
        | KeyCommand::List { dir } => dir,
    };
    let path = match &dir.local_kms_dir {
        Some(path) => path.clone(),
        None => {
            let mut config = Config::load(dir.config.as_deref(), &crate::providers::registry())?;
            if let Some(data_dir) = &dir.data_dir {
                config.data_dir = data_dir.clone();
            }
            config.resolve()?.local_kms_dir
        }
    };
    // The provider's own words, without its error-kind prefix.
    let plain = |e: keyward_kms::ProviderError| anyhow::anyhow!("{}", e.message());
    if let KeyCommand::Create { name, .. } = &cmd {
        // Only the directory: the key asked for may be `default` itself.
        let provider = LocalProvider::open_dir(&path).map_err(plain)?;
        provider.create_key(name).map_err(plain)?;
        println!("created local key {name:?} in {}", path.display());
        return Ok(());
    }
    // Acting on a server's keys: a directory or key that does not exist is an error (nothing is
    // created), since a wrong directory would otherwise be silently changed instead of the
    // server's.
    let provider = match LocalProvider::open_existing(&path) {
        Ok(provider) => provider,
        Err(e) if e.kind() == keyward_kms::ErrorKind::NotFound => bail!(
            "{}: no such local key directory, so nothing was changed; name the server's with \
             --data-dir DIR (as given to `keyward serve`), --config FILE or --local-kms-dir DIR",
            path.display()
        ),
        Err(e) => return Err(plain(e)),
    };
    match &cmd {
        KeyCommand::Disable { name, .. } => {
            provider.set_enabled(name, false).map_err(plain)?;
            println!(
                "disabled local key {name:?} in {}: Keyward's calls to it are now refused; cached keys stop serving within the cache TTL",
                path.display()
            );
        }
        KeyCommand::Enable { name, .. } => {
            provider.set_enabled(name, true).map_err(plain)?;
            println!(
                "enabled local key {name:?} in {}: a tenant revoked because the key refused gets access back at the monitor's next check, or at once with `keyward tenant restore-key TENANT --reason …`",
                path.display()
            );
        }
        KeyCommand::List { .. } => {
            eprintln!("local keys in {}:", path.display());
            for (name, state) in provider.list_keys().map_err(plain)? {
                println!("{name}\t{}", state.as_str());
            }
        }
        KeyCommand::Create { .. } => {}
    }
    Ok(())
}
