//! Starting a server: [`ServerBuilder`], the [`Running`] handle that owns the background tasks,
//! and why a start fails ([`StartError`]). What runs once started is in `server/serve.rs`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use keyward_kms::{ProviderRegistry, local::LocalProvider};
use keyward_store::{postgres::PostgresStore, sqlite::SqliteStore};
use tokio::task::JoinHandle;

use crate::{
    Keyring, Providers, Settings, admin, audit, authz, builtin_policies, config, metrics, tls,
};

mod serve;

use serve::{create_private_dir, serve_replica};

/// What [`ServerBuilder::start`] has built by the time it serves: the store, the keyring over it
/// and the providers, the auditor, the policies, the TLS configuration, and the registry that
/// reads key references.
struct Parts<'a> {
    settings: &'a Settings,
    keyring: Arc<Keyring>,
    auditor: Arc<audit::Auditor>,
    authz: Arc<authz::Authz>,
    tls: Option<Arc<tls::ReloadableTls>>,
    store: Arc<dyn keyward_store::Store>,
    registry: &'a ProviderRegistry,
    /// The key-event sources the configuration enables (`[aws_events]`, docs/adr/0013).
    event_sources: Vec<Arc<dyn keyward_kms::KeyEventSource>>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] keyward_store::StoreError),
    #[error("cannot finish an interrupted audit signing key rotation: {0}")]
    AuditRecovery(String),
    #[error("cannot load the tenants' revocation states: {0}")]
    Revocations(String),
    #[error("cannot load the audit keys: {0}")]
    AuditKeys(#[from] audit::AuditKeyError),
    #[error("cannot set up a key provider: {0}")]
    Provider(#[from] keyward_kms::ProviderError),
    #[error("invalid configuration: {0}")]
    ProviderConfig(#[from] keyward_kms::ConfigSectionError),
    #[error("invalid authorization policies: {0}")]
    Policies(#[from] keyward_authz::LoadError),
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A server accepting connections.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    keyring: Arc<Keyring>,
    auditor: Arc<audit::Auditor>,
    authz: Arc<authz::Authz>,
    /// Checkpoints, denial aggregation, reloads, the acceptor and the key-state monitor.
    background: Vec<JoinHandle<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Readiness, draining and the shutdown grace period (docs/observability.md).
    readiness: Arc<admin::Readiness>,
    shutdown_grace: std::time::Duration,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<metrics::Metrics>,
}

impl Running {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The bound address of the admin listener (/metrics, /livez, /readyz), if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
    }

    pub fn readiness(&self) -> &Arc<admin::Readiness> {
        &self.readiness
    }

    /// Waits until the server stops (after the shutdown future resolves and the in-flight
    /// calls finished, or the shutdown grace period ran out), then records the last denials
    /// and signs a last checkpoint of the audit chain.
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        let mut task = self.task;
        let readiness = Arc::clone(&self.readiness);
        let grace = self.shutdown_grace;
        let joined = tokio::select! {
            joined = &mut task => Some(joined),
            () = async {
                readiness.drained_started().await;
                tokio::time::sleep(grace).await;
            } => None,
        };
        let result = match joined {
            Some(Ok(result)) => {
                if readiness.draining() {
                    tracing::info!("in-flight calls finished");
                }
                result
            }
            Some(Err(join)) => {
                tracing::error!(error = %join, "server task ended abnormally");
                Ok(())
            }
            None => {
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "in-flight calls did not finish within shutdown_grace_seconds: cutting them"
                );
                task.abort();
                Ok(())
            }
        };
        for task in &self.background {
            task.abort();
        }
        if let Err(e) = self.keyring.flush_all_denials().await {
            tracing::error!(error = %e, "could not record the last revocation denials");
        }
        self.keyring
            .record_audit(self.authz.take_finished_denials(i64::MAX))
            .await;
        if let Err(e) = self.auditor.checkpoint().await {
            tracing::error!(error = %e, "could not write the final audit checkpoint");
        }
        result
    }
}

/// Builds and starts a Keyward server: the one way to start one.
///
/// ```no_run
/// # async fn run(settings: &keyward_server::Settings, registry: keyward_kms::ProviderRegistry) -> Result<(), keyward_server::StartError> {
/// let running = keyward_server::ServerBuilder::new(settings)
///     .registry(registry)
///     .start(std::future::pending())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct ServerBuilder<'a> {
    settings: &'a Settings,
    registry: ProviderRegistry,
    providers: Option<Providers>,
}

impl<'a> ServerBuilder<'a> {
    /// A server with `settings`, no key provider factory and the configured providers.
    pub fn new(settings: &'a Settings) -> Self {
        Self {
            settings,
            registry: ProviderRegistry::default(),
            providers: None,
        }
    }

    /// The key providers' factories (the application's, as a rustls application picks its
    /// `CryptoProvider`): each provider the configuration enables is built at start, and
    /// RegisterKey's key references are read by the factory of their kind.
    pub fn registry(mut self, registry: ProviderRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// KEK providers built by the caller (benchmarks and tests that build a provider with
    /// their own SDK settings) instead of the local one and those the registry would build from
    /// the configuration. The registry still reads key references; with none, a reference is
    /// kept as given.
    pub fn providers(mut self, providers: Providers) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Opens the store, builds the providers (the local development one under the configured
    /// directory, and every one of the registry that the configuration enables), binds the
    /// listeners and serves until `shutdown`. The returned [`Running`] owns the background
    /// tasks.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Running, StartError> {
        let settings = self.settings;
        let providers = match self.providers {
            Some(providers) => providers,
            None => {
                let local = LocalProvider::open(&settings.local_kms_dir)?;
                // (every provider is wrapped with metrics in `start_serving`)
                let mut providers = Providers::default().with(Arc::new(local));
                for factory in self.registry.iter() {
                    let section = settings.providers.get(factory.config_section());
                    let Some(configured) = factory.configure(section)? else {
                        continue;
                    };
                    providers =
                        providers.with(with_kms_quota(settings, configured.build().await?)?);
                }
                providers
            }
        };
        start_serving(settings, providers, self.registry, shutdown).await
    }
}

/// A KMS provider behind the configured per-key request quota (`[kms_quota]`), if any. The local
/// development provider is not wrapped: it is a file on this host, with no quota to respect.
fn with_kms_quota(
    settings: &Settings,
    provider: Arc<dyn keyward_kms::KeyProvider>,
) -> Result<Arc<dyn keyward_kms::KeyProvider>, StartError> {
    Ok(match settings.kms_quota {
        Some(policy) => Arc::new(keyward_kms::QuotaProvider::new(provider, policy)?),
        None => provider,
    })
}

/// [`ServerBuilder::start`] once the providers are known.
async fn start_serving(
    settings: &Settings,
    providers: Providers,
    registry: keyward_kms::ProviderRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    create_private_dir(&settings.data_dir)?;
    // Authorization and TLS first: a bad policy or certificate stops the start before any
    // state is touched.
    let authz = Arc::new(load_authz(settings)?);
    let tls = settings
        .tls
        .clone()
        .map(tls::ReloadableTls::load)
        .transpose()?
        .map(Arc::new);
    let audit_keys = audit::AuditKeys::load_or_create(&settings.audit_dir)?;
    let hasher = Arc::clone(audit_keys.hasher());
    // Every record appended from now on is format v2 (docs/audit-format.md §3.3): salted event
    // digest and tenant tag, so that a per-tenant export can redact other tenants' records.
    let sealer = Arc::new(keyward_audit::RecordSealer::new(Arc::clone(&hasher)));
    let store: Arc<dyn keyward_store::Store> = match &settings.store {
        config::StoreLocation::Sqlite(path) => {
            Arc::new(SqliteStore::open(path).await?.with_record_sealer(sealer))
        }
        config::StoreLocation::Postgres { url, options, .. } => {
            let pg = PostgresStore::connect(url, options.clone())
                .await?
                .with_record_sealer(sealer);
            tracing::info!(replica = %settings.replica_id, url = %config::redact_url(url), "opened the PostgreSQL store");
            Arc::new(pg)
        }
    };
    let metrics = Arc::new(metrics::Metrics::new(
        settings.observability.max_tenant_labels,
    ));
    let providers = {
        let metrics = Arc::clone(&metrics);
        providers.map(move |p| -> Arc<dyn keyward_kms::KeyProvider> {
            Arc::new(metrics::MeteredProvider::new(p, Arc::clone(&metrics)))
        })
    };
    tracing::info!(public_key = %audit_keys.public_key().to_text(), "audit checkpoints are signed with this key");
    let auditor = Arc::new(audit::Auditor::new(Arc::clone(&store), audit_keys));
    auditor
        .recover_rotation()
        .await
        .map_err(|e| StartError::AuditRecovery(e.to_string()))?;
    let keyring = Arc::new(
        Keyring::new(
            Arc::clone(&store),
            providers,
            settings.cache,
            settings.rotation,
            hasher,
        )
        .with_replica_id(settings.replica_id.clone())
        .with_write_suite(settings.write_suite)
        .with_monitor(settings.monitor)
        .with_metrics(Arc::clone(&metrics)),
    );
    let revoked = keyring
        .load_revocations()
        .await
        .map_err(|e| StartError::Revocations(e.to_string()))?;
    if revoked > 0 {
        tracing::warn!(
            tenants = revoked,
            "tenants with a revoked or destroyed key are refused"
        );
    }
    let event_sources = build_event_sources(settings, &registry).await?;
    let parts = Parts {
        settings,
        keyring,
        auditor,
        authz,
        tls,
        store,
        registry: &registry,
        event_sources,
    };
    serve_replica(parts, shutdown).await
}

/// Every key-event source of `registry` whose section the configuration has, built.
async fn build_event_sources(
    settings: &Settings,
    registry: &ProviderRegistry,
) -> Result<Vec<Arc<dyn keyward_kms::KeyEventSource>>, StartError> {
    let mut sources = Vec::new();
    for factory in registry.event_sources() {
        let section = settings.providers.get(factory.config_section());
        if let Some(configured) = factory.configure(section)? {
            sources.push(configured.build().await?);
        }
    }
    Ok(sources)
}

/// The policies of `settings`; in development mode with `[authz]` left at its defaults and no
/// `./policies` directory, the built-in copy of the shipped policies.
fn load_authz(settings: &Settings) -> Result<authz::Authz, StartError> {
    let mut files = settings.policy_files.clone();
    if settings.tls.is_none() && settings.default_policies_dir && !files.policies_dir.exists() {
        files = builtin_policies::materialize(&settings.data_dir).map_err(|source| {
            StartError::DataDir {
                path: settings.data_dir.join(builtin_policies::DIR),
                source,
            }
        })?;
        tracing::warn!(copy = %files.policies_dir.display(), "no policies directory in the working directory (./policies): using a copy of the built-in policies written to the data directory");
    }
    Ok(authz::Authz::load(files)?)
}
