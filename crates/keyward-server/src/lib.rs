//! Keyward's server: tonic services over the key hierarchy ([`keyring`]),
//! configuration ([`config`]) and the error-to-status mapping ([`error`]).
//!
//! Data flows one way: proto -> [`service`] -> [`keyring`] -> (store, KEK
//! providers) -> envelope. Nothing below this crate knows about gRPC.

pub mod audit;
pub mod config;
pub mod error;
mod gate;
pub mod keyring;
pub mod service;
mod usage;

use std::{future::Future, net::SocketAddr, sync::Arc};

use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{
    audit_service_server::AuditServiceServer, crypto_service_server::CryptoServiceServer,
    tenant_service_server::TenantServiceServer,
};
use keyward_store::sqlite::SqliteStore;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::transport::server::TcpIncoming;

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

/// Room for the envelope header, the encryption context and protobuf framing
/// on top of the largest accepted plaintext.
const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;

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
    /// Checkpoints, denial aggregation and the key-state monitor.
    background: Vec<JoinHandle<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Waits until the server stops (after the shutdown future resolves),
    /// then signs a last checkpoint of the audit chain.
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        let result = match self.task.await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(error = %join, "server task ended abnormally");
                Ok(())
            }
        };
        for task in &self.background {
            task.abort();
        }
        if let Err(e) = self.keyring.flush_all_denials().await {
            tracing::error!(error = %e, "could not record the last revocation denials");
        }
        if let Err(e) = self.auditor.checkpoint().await {
            tracing::error!(error = %e, "could not write the final audit checkpoint");
        }
        result
    }
}

/// Opens the store and the local key provider under the configured data
/// directory, binds the listener and starts serving until `shutdown`.
pub async fn start(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let local = LocalProvider::open(&settings.local_kms_dir)?;
    let providers = Providers::default().with(Arc::new(local));
    #[cfg(feature = "aws")]
    let providers = providers.with(Arc::new(
        keyward_kms_aws::AwsKmsProvider::new(settings.aws_kms.clone()).await?,
    ));
    start_with_providers(settings, providers, shutdown).await
}

/// [`start`] with the given KEK providers instead of the configured ones
/// (benchmarks and tests that build a provider with their own SDK settings).
pub async fn start_with_providers(
    settings: &Settings,
    providers: Providers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    create_private_dir(&settings.data_dir)?;
    let store: Arc<dyn keyward_store::Store> =
        Arc::new(SqliteStore::open(&settings.database_path).await?);
    let audit_keys = audit::AuditKeys::load_or_create(&settings.audit_dir)?;
    let hasher = Arc::clone(audit_keys.hasher());
    tracing::info!(public_key = %audit_keys.public_key().to_text(), "audit checkpoints are signed with this key");
    let auditor = Arc::new(audit::Auditor::new(Arc::clone(&store), audit_keys));
    auditor
        .recover_rotation()
        .await
        .map_err(|e| StartError::AuditRecovery(e.to_string()))?;
    let keyring = Arc::new(Keyring::new(
        store,
        providers,
        CachePolicy {
            ttl: settings.cache_ttl,
            max_tenant_keys: settings.max_tenant_keys,
            max_deks: settings.max_deks,
        },
        settings.rotation,
        hasher,
    ));
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
    serve(settings, keyring, auditor, shutdown).await
}

/// Serves `keyring` on the configured address until `shutdown`.
pub async fn serve(
    settings: &Settings,
    keyring: Arc<Keyring>,
    auditor: Arc<audit::Auditor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
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

    let max_message = settings.max_plaintext_bytes + MESSAGE_OVERHEAD_BYTES;
    let crypto = CryptoServiceServer::new(service::CryptoApi::new(
        Arc::clone(&keyring),
        settings.max_plaintext_bytes,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let tenants = TenantServiceServer::new(service::TenantApi::new(Arc::clone(&keyring)));
    let audit_api = AuditServiceServer::new(audit::AuditApi::new(Arc::clone(&auditor)));
    let mut background = vec![tokio::spawn(
        Arc::clone(&auditor).run_checkpoints(settings.checkpoint_interval),
    )];
    background.push(tokio::spawn(flush_denials(Arc::clone(&keyring))));
    if let Some(policy) = settings.monitor {
        background.push(tokio::spawn(Arc::clone(&keyring).run_monitor(policy)));
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CryptoServiceServer<service::CryptoApi>>()
        .await;
    health_reporter
        .set_serving::<TenantServiceServer<service::TenantApi>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<audit::AuditApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keyward_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Listen {
            addr: local_addr,
            source: std::io::Error::other(e),
        })?;

    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(crypto)
        .add_service(tenants)
        .add_service(audit_api);
    let task = tokio::spawn(
        // TCP_NODELAY: small unary calls must not wait for Nagle + delayed ACK (~40 ms).
        router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        ),
    );
    tracing::info!(%local_addr, "keyward serving");
    Ok(Running {
        local_addr,
        keyring,
        auditor,
        background,
        task,
    })
}

/// Every second, writes the previous seconds' revocation denials to the audit log.
async fn flush_denials(keyring: Arc<Keyring>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        if let Err(e) = keyring.flush_denials().await {
            tracing::error!(error = %e, "could not record revocation denials");
        }
    }
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
