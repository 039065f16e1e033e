//! A started server's listeners and background tasks: the gRPC services, health, reflection,
//! the admin listener, checkpoints, the audit ledger's flush, reloads, the cache sweeper, the
//! monitor and, on PostgreSQL, the revocation fan-out between replicas.

use std::{future::Future, sync::Arc};

use keyward_proto::v1::{
    audit_service_server::AuditServiceServer, crypto_service_server::CryptoServiceServer,
    tenant_service_server::TenantServiceServer,
};
use tokio::net::TcpListener;

use super::{Parts, Running, StartError};
use crate::{admin, api, authz, config, limits, metrics, replication, telemetry, tls};

/// Serves the keyring of `parts` on the configured address until `shutdown`; on a PostgreSQL
/// store, with the revocation fan-out between replicas ([`replication`]) and the configured
/// health-check interval.
pub(super) async fn serve_replica(
    parts: Parts<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let Parts {
        settings,
        keyring,
        auditor,
        authz,
        tls,
        store,
        registry,
        event_sources,
    } = parts;
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
    // Tenants whose policy asks for it are re-keyed in the background when a new key is
    // registered, and resumed here after a restart (docs/rekey.md, "Scheduled re-key").
    background.push(tokio::spawn(
        Arc::clone(&keyring).run_scheduled_rekeys(crate::keyring::SCHEDULED_REKEY_INTERVAL),
    ));
    background.push(tokio::spawn(
        Arc::clone(&keyring).run_cache_sweeper(std::time::Duration::from_secs(1)),
    ));
    // Committed audit records to the SIEM feed's file (docs/observability.md, "SIEM feed").
    if let Some(policy) = settings.siem.clone() {
        background.push(tokio::spawn(crate::siem::run(Arc::clone(&store), policy)));
    }
    if let Some(policy) = settings.monitor {
        background.push(tokio::spawn(Arc::clone(&keyring).run_monitor(policy)));
    }
    // Key events that arrive on their own (`[aws_events]`): hints to re-check keys at once.
    for source in event_sources {
        background.push(tokio::spawn(crate::key_events::run_source(
            source,
            Arc::clone(&keyring),
            Arc::clone(&metrics),
        )));
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

pub(super) fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
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
