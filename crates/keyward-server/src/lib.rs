//! Keyward's server: tonic services over the key hierarchy ([`keyring`]),
//! configuration ([`config`]) and the error-to-status mapping ([`error`]).
//!
//! Data flows one way: proto -> [`api`] -> [`keyring`] -> (store, KEK
//! providers) -> envelope. Nothing below this crate knows about gRPC.

pub mod admin;
pub mod api;
pub mod audit;
pub mod authz;
mod builtin_policies;
pub mod config;
pub mod error;
pub mod keyring;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod replication;
pub mod telemetry;
pub mod time;
pub mod tls;

use std::{future::Future, net::SocketAddr, sync::Arc};

use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{
    audit_service_server::AuditServiceServer, crypto_service_server::CryptoServiceServer,
    tenant_service_server::TenantServiceServer,
};
use keyward_store::{postgres::PostgresStore, sqlite::SqliteStore};
use tokio::{net::TcpListener, task::JoinHandle};

pub use crate::{
    config::{Config, Settings},
    keyring::{CachePolicy, Keyring, Providers},
};

/// Milliseconds since the UNIX epoch, the unit of every stored and audited time.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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

/// Opens the store and the local key provider under the configured data
/// directory, builds every key provider of `registry` that the configuration enables, binds the
/// listener and starts serving until `shutdown`.
pub async fn start(
    settings: &Settings,
    registry: &keyward_kms::ProviderRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let local = LocalProvider::open(&settings.local_kms_dir)?;
    // (the providers are wrapped with metrics in start_with_providers)
    let mut providers = Providers::default().with(Arc::new(local));
    for factory in registry.iter() {
        let section = settings.providers.get(factory.config_section());
        let Some(configured) = factory.configure(section)? else {
            continue;
        };
        providers = providers.with(with_kms_quota(settings, configured.build().await?)?);
    }
    start_serving(settings, providers, registry.clone(), shutdown).await
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

/// [`start`] with the given KEK providers instead of the configured ones
/// (benchmarks and tests that build a provider with their own SDK settings). No provider
/// factory reads RegisterKey's key references: each is kept as given.
pub async fn start_with_providers(
    settings: &Settings,
    providers: Providers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    start_serving(
        settings,
        providers,
        keyward_kms::ProviderRegistry::default(),
        shutdown,
    )
    .await
}

/// [`start_with_providers`], with `registry`'s factories reading RegisterKey's key references.
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
    let store: Arc<dyn keyward_store::Store> = match &settings.store {
        config::StoreLocation::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
        config::StoreLocation::Postgres { url, options, .. } => {
            let pg = PostgresStore::connect(url, options.clone()).await?;
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
    let audit_keys = audit::AuditKeys::load_or_create(&settings.audit_dir)?;
    let hasher = Arc::clone(audit_keys.hasher());
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
            CachePolicy {
                ttl: settings.cache_ttl,
                max_tenant_keys: settings.max_tenant_keys,
                max_deks: settings.max_deks,
            },
            settings.rotation,
            hasher,
        )
        .with_replica_id(settings.replica_id.clone())
        .with_write_suite(settings.write_suite)
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
    serve_replica(
        settings, keyring, auditor, authz, tls, store, &registry, shutdown,
    )
    .await
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

/// Serves `keyring` on the configured address until `shutdown`; on a PostgreSQL `store`, with
/// the revocation fan-out between replicas ([`replication`]) and the configured health-check
/// interval.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of a server until one builder owns them (issue #19, item 4)"
)]
async fn serve_replica(
    settings: &Settings,
    keyring: Arc<Keyring>,
    auditor: Arc<audit::Auditor>,
    authz: Arc<authz::Authz>,
    tls: Option<Arc<tls::ReloadableTls>>,
    store: Arc<dyn keyward_store::Store>,
    registry: &keyward_kms::ProviderRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    // The keyring's metrics (KMS calls and cache lookups are counted in them); a keyring built
    // without metrics gets fresh ones for the calls, bytes and denials counted here.
    let metrics = keyring.metrics().cloned().unwrap_or_else(|| {
        Arc::new(metrics::Metrics::new(
            settings.observability.max_tenant_labels,
        ))
    });
    let readiness = Arc::new(admin::Readiness::default());
    let admin_listener = match settings.observability.admin {
        Some(addr) => Some(
            admin::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })?,
        ),
        None => None,
    };
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: settings.listen,
                source,
            })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: settings.listen,
        source,
    })?;

    let max_message = settings.max_plaintext_bytes + limits::MESSAGE_OVERHEAD_BYTES;
    let crypto = CryptoServiceServer::new(api::CryptoApi::new(
        Arc::clone(&keyring),
        Arc::clone(&authz),
        settings.max_plaintext_bytes,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let tenants = TenantServiceServer::new(
        api::TenantApi::new(Arc::clone(&keyring), Arc::clone(&authz))
            .with_key_ref_syntax(registry.clone())
            .with_monitor_interval(settings.monitor.as_ref().map(|m| m.interval)),
    )
    .max_decoding_message_size(limits::ADMIN_MAX_REQUEST_BYTES);
    let audit_api =
        AuditServiceServer::new(api::AuditApi::new(Arc::clone(&auditor), Arc::clone(&authz)))
            .max_decoding_message_size(limits::ADMIN_MAX_REQUEST_BYTES);
    let mut background = vec![tokio::spawn(
        Arc::clone(&auditor).run_checkpoints(settings.checkpoint_interval),
    )];
    background.push(tokio::spawn(Arc::clone(&keyring).run_audit_flush({
        let authz = Arc::clone(&authz);
        move |now_ms| authz.take_finished_denials(now_ms)
    })));
    background.push(tokio::spawn(watch_reloads(
        tls.clone(),
        Arc::clone(&authz),
        settings.reload_interval,
    )));
    if tls.is_none() {
        tracing::warn!(
            %local_addr,
            "DEVELOPMENT MODE: plaintext gRPC without client authentication; every caller is the development principal, which may do everything. Configure [tls] for any real use."
        );
    }
    // Expired keys leave memory within a second of their expiry, even when idle.
    background.push(tokio::spawn(
        Arc::clone(&keyring).run_cache_sweeper(std::time::Duration::from_secs(1)),
    ));
    if let Some(policy) = settings.monitor {
        background.push(tokio::spawn(Arc::clone(&keyring).run_monitor(policy)));
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CryptoServiceServer<api::CryptoApi>>()
        .await;
    health_reporter
        .set_serving::<TenantServiceServer<api::TenantApi>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<api::AuditApi>>()
        .await;
    let services = {
        use tonic::server::NamedService;
        vec![
            "",
            <CryptoServiceServer<api::CryptoApi> as NamedService>::NAME,
            <TenantServiceServer<api::TenantApi> as NamedService>::NAME,
            <AuditServiceServer<api::AuditApi> as NamedService>::NAME,
        ]
    };
    let health_task = {
        let interval = match &settings.store {
            config::StoreLocation::Postgres {
                health_check_interval,
                ..
            } => *health_check_interval,
            _ => std::time::Duration::from_secs(5),
        };
        tokio::spawn(replication::run_health(
            Arc::clone(&store),
            health_reporter.clone(),
            services.clone(),
            interval,
            Arc::clone(&readiness),
        ))
    };
    if let config::StoreLocation::Postgres {
        reconcile_interval, ..
    } = &settings.store
        && let Some(changes) = store.key_state_changes(&replication::listener_application_name(
            keyring.replica_id(),
        ))
    {
        background.push(tokio::spawn(replication::run_listener(
            Arc::clone(&keyring),
            changes,
        )));
        background.push(tokio::spawn(replication::run_reconciliation(
            Arc::clone(&keyring),
            *reconcile_interval,
        )));
        tracing::info!(replica = %keyring.replica_id(), "revocation fan-out between replicas: on (LISTEN/NOTIFY and reconciliation)");
    }
    // Server reflection in both protocol versions: v1, and v1alpha, the only one many clients
    // speak (grpcio-reflection's Python client, older grpcurl and Postman). Both describe the
    // same files, each reflection service included, so either version lists all six services.
    let reflection_error = |e| StartError::Listen {
        addr: local_addr,
        source: std::io::Error::other(e),
    };
    let reflection_files = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keyward_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection = reflection_files().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection_files()
        .build_v1alpha()
        .map_err(reflection_error)?;

    let caller_limit = limits::CallerLimitLayer::new(Arc::new(limits::CallerLimiter::new(
        settings.max_in_flight_per_caller,
    )));
    let admin_addr = match admin_listener {
        Some((admin_listener, addr)) => {
            background.push(tokio::spawn(admin::serve(
                admin_listener,
                Arc::clone(&metrics),
                Arc::clone(&keyring),
                Arc::clone(&readiness),
            )));
            tracing::info!(%addr, "admin listener: /metrics, /livez, /readyz");
            Some(addr)
        }
        None => None,
    };
    background.push(tokio::spawn(Arc::clone(&readiness).run_heartbeat()));
    let router = tonic::transport::Server::builder()
        // Outermost: every call, including one the caller limit refuses, gets its request id,
        // span and metrics.
        .layer(telemetry::RpcLayer::new(Arc::clone(&metrics)))
        .layer(caller_limit)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(crypto)
        .add_service(tenants)
        .add_service(audit_api);
    let (incoming, acceptor) = tls::incoming(listener, tls.clone());
    // Shutdown, in order: not ready (/readyz 503, gRPC health NOT_SERVING), stop accepting
    // connections, then tonic's graceful shutdown drains the in-flight calls (GOAWAY on open
    // connections); Running::wait bounds the drain by shutdown_grace_seconds.
    let shutdown = {
        let readiness = Arc::clone(&readiness);
        let reporter = health_reporter.clone();
        let stop = [acceptor.abort_handle(), health_task.abort_handle()];
        let grace = settings.observability.shutdown_grace;
        async move {
            shutdown.await;
            readiness.start_draining();
            for handle in &stop {
                handle.abort();
            }
            for service in &services {
                reporter
                    .set_service_status(*service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            tracing::info!(
                grace_seconds = grace.as_secs(),
                "shutting down: not ready, no new connections, draining in-flight calls"
            );
        }
    };
    background.push(acceptor);
    background.push(health_task);
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
    tracing::info!(%local_addr, mtls = tls.is_some(), "keyward serving");
    Ok(Running {
        local_addr,
        keyring,
        auditor,
        authz,
        background,
        task,
        readiness,
        shutdown_grace: settings.observability.shutdown_grace,
        admin_addr,
        metrics,
    })
}

/// Reloads the TLS configuration and the policies when their files change (checked every
/// `interval`) or on SIGHUP. A file that fails to load leaves the previous configuration in
/// force and is reported in the log; the next change is tried again.
async fn watch_reloads(
    tls: Option<Arc<tls::ReloadableTls>>,
    authz: Arc<authz::Authz>,
    interval: std::time::Duration,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let tls_paths = |tls: &Option<Arc<tls::ReloadableTls>>| -> Vec<std::path::PathBuf> {
        tls.as_ref()
            .map(|t| t.files().paths().iter().map(|p| p.to_path_buf()).collect())
            .unwrap_or_default()
    };
    let mut tls_stamp = file_stamps(&tls_paths(&tls));
    let mut policy_stamp = file_stamps(&authz.sources());
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads only on file change");
            None
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if forced {
            tracing::info!("SIGHUP: reloading TLS files and policies");
        }
        if let Some(t) = &tls {
            let stamp = file_stamps(&tls_paths(&tls));
            if forced || stamp != tls_stamp {
                match t.reload() {
                    Ok(()) => tracing::info!("TLS certificate and client CA reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload failed; the previous configuration stays in force")
                    }
                }
                tls_stamp = stamp;
            }
        }
        // The policy directory itself too: a new *.cedar file is a change.
        let stamp = file_stamps(&authz.sources());
        if forced || stamp != policy_stamp {
            match authz.reload() {
                Ok(()) => tracing::info!("authorization policies reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "policy reload failed; the previous policies stay in force")
                }
            }
            policy_stamp = file_stamps(&authz.sources());
        }
    }
}

/// Modification time and length of each file (`None` when unreadable): a cheap change test
/// that also sees an atomic rename or a Kubernetes secret's symlink swap.
fn file_stamps(paths: &[std::path::PathBuf]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StartError::DataDir {
            path: path.to_owned(),
            source,
        })
}
