//! `keyward serve`: run the gRPC server until SIGINT or SIGTERM.

use std::{io::Write as _, path::PathBuf};

use clap::Args;
use keyward_server::Config;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md); KEYWARD_* variables override it.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:50051 (port 0 picks a free port).
    #[arg(long)]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// Data directory (SQLite database and local keys).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let registry = crate::providers::registry();
    let mut config = Config::load(args.config.as_deref(), &registry)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let settings = config.resolve()?;
    // Before any key is loaded: keep them out of swap and core dumps ([memory]).
    keyward_server::memory::harden(&settings.memory)?;
    let running = keyward_server::ServerBuilder::new(&settings)
        .registry(registry)
        .start(shutdown_signal())
        .await?;
    // Scripts and tests read the bound addresses from these lines (the admin one first).
    if let Some(admin) = running.admin_addr() {
        println!("keyward admin listening on {admin}");
    }
    println!("keyward listening on {}", running.local_addr());
    std::io::stdout().flush()?;
    running.wait().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutdown signal received");
}
