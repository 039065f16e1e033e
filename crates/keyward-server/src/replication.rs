//! Several replicas on one PostgreSQL store (docs/operations.md, "Several replicas"): the
//! revocation fan-out and the store's health.
//!
//! * **Fan-out.** Every committed key-state change and new binding (`Store::set_binding_state`,
//!   `Store::bind_kek`, whichever replica made it) sends a `NOTIFY` on [`KEY_STATE_CHANNEL`]
//!   inside its transaction, naming the tenant; every policy change (`Store::set_tenant_policy`)
//!   one on [`TENANT_POLICY_CHANNEL`]. Each replica keeps one dedicated listening connection
//!   (application name `keyward-listener-<replica id>`) and, per key-state notification, reads
//!   the tenant's binding from the store and applies it through
//!   [`Keyring::apply_recorded_state`] — the same gate close and purge as a local revocation, the
//!   gate reopened by a new binding, the keys of revoked older bindings purged; per policy
//!   notification it drops the tenant's cached keys ([`Keyring::apply_recorded_policy`]), so a
//!   shortened TTL bounds every replica at once.
//! * **Reconciliation.** Notifications sent while a listener is disconnected are lost, so every
//!   replica also compares all key states with its gates every `reconcile_interval`, and at once
//!   after each (re)connection of its listener, before it waits for notifications.
//! * **Health.** A ping of the store every `health_check_interval` sets the gRPC health status of
//!   every service: `NOT_SERVING` while the store does not answer.

use std::{str::FromStr as _, sync::Arc, time::Duration};

use keyward_envelope::TenantId;
use keyward_store::postgres::{KEY_STATE_CHANNEL, TENANT_POLICY_CHANNEL};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::Keyring;

/// Longest pause between two attempts to reconnect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on opening the listening connection.
const LISTENER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The application name of a replica's listening connection (visible in `pg_stat_activity`).
pub fn listener_application_name(replica_id: &str) -> String {
    format!("keyward-listener-{replica_id}")
}

/// Listens for key-state changes of other replicas until the task is dropped; reconnects with
/// backoff and reconciles after every (re)connection.
pub(crate) async fn run_listener(keyring: Arc<Keyring>, url: String) {
    let options = match PgConnectOptions::from_str(&url) {
        Ok(options) => options.application_name(&listener_application_name(keyring.replica_id())),
        Err(e) => {
            // The URL was checked when the configuration was resolved and used to open the store.
            tracing::error!(error = %e, "invalid PostgreSQL URL: no revocation fan-out (reconciliation only)");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&options).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(100);
                tracing::info!(replica = %keyring.replica_id(), channel = KEY_STATE_CHANNEL, "listening for key-state changes");
                // Changes committed while this replica was not listening were never delivered.
                reconcile_once(&keyring, "after the listener connected").await;
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            apply_notification(
                                &keyring,
                                notification.channel(),
                                notification.payload(),
                            )
                            .await;
                        }
                        Ok(None) => {
                            tracing::warn!(replica = %keyring.replica_id(), "the key-state listener lost its connection; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(replica = %keyring.replica_id(), error = %e, "the key-state listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(replica = %keyring.replica_id(), error = %e, retry_in = ?backoff, "cannot listen for key-state changes");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A fresh dedicated connection, subscribed to [`KEY_STATE_CHANNEL`] and
/// [`TENANT_POLICY_CHANNEL`].
async fn listen(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(LISTENER_CONNECT_TIMEOUT)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener
        .listen_all([KEY_STATE_CHANNEL, TENANT_POLICY_CHANNEL])
        .await?;
    Ok(listener)
}

async fn apply_notification(keyring: &Keyring, channel: &str, payload: &str) {
    let tenant = match TenantId::try_from(payload) {
        Ok(tenant) => tenant,
        Err(e) => {
            tracing::warn!(replica = %keyring.replica_id(), error = %e, "ignoring a key-state notification that names no tenant; reconciling");
            reconcile_once(keyring, "after an unreadable notification").await;
            return;
        }
    };
    if channel == TENANT_POLICY_CHANNEL {
        let entries = keyring.apply_recorded_policy(&tenant).await;
        tracing::info!(replica = %keyring.replica_id(), %tenant, entries, "tenant policy changed by another replica; cached keys dropped");
        return;
    }
    if let Err(e) = keyring.apply_recorded_state(&tenant).await {
        // The periodic reconciliation retries.
        tracing::error!(replica = %keyring.replica_id(), %tenant, error = %e, "could not apply another replica's key-state change");
    }
}

async fn reconcile_once(keyring: &Keyring, when: &str) {
    match keyring.reconcile().await {
        Ok(0) => {}
        Ok(changed) => {
            tracing::warn!(replica = %keyring.replica_id(), changed, "reconciliation {when} applied key-state changes")
        }
        Err(e) => {
            tracing::error!(replica = %keyring.replica_id(), error = %e, "key-state reconciliation {when} failed")
        }
    }
}

/// Reconciles every `interval` until the task is dropped.
pub(crate) async fn run_reconciliation(keyring: Arc<Keyring>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        reconcile_once(&keyring, "(periodic)").await;
    }
}

/// How the health task reaches the store.
#[derive(Debug, Clone)]
pub(crate) enum Pinger {
    Postgres(keyward_store::postgres::PostgresStore),
    /// Any store: a read of the audit chain head.
    Store(Arc<dyn keyward_store::Store>),
}

impl Pinger {
    async fn ping(&self) -> Result<(), keyward_store::StoreError> {
        match self {
            Pinger::Postgres(store) => store.ping().await,
            Pinger::Store(store) => store.audit_head().await.map(drop),
        }
    }
}

/// Pings the store every `interval` (each ping bounded by `interval`) and sets every service's
/// gRPC health status: `SERVING` while it answers, `NOT_SERVING` while it does not.
pub(crate) async fn run_health(
    pinger: Pinger,
    reporter: tonic_health::server::HealthReporter,
    services: Vec<&'static str>,
    interval: Duration,
    readiness: std::sync::Arc<crate::admin::Readiness>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(interval, pinger.ping()).await {
            Ok(result) => result,
            Err(_) => Err(keyward_store::StoreError::Backend(
                format!("the store did not answer within {interval:?}").into(),
            )),
        };
        // /readyz and the gRPC health service say the same thing: a draining server stays
        // NOT_SERVING whatever the store says.
        readiness.set_store_ok(result.is_ok());
        let status = if readiness.ready() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        match (&result, healthy) {
            (Err(e), true) => {
                tracing::error!(error = %e, "the store does not answer: health is NOT_SERVING")
            }
            (Ok(()), false) => tracing::info!("the store answers again: health is SERVING"),
            _ => {}
        }
        healthy = result.is_ok();
        for service in &services {
            reporter.set_service_status(*service, status).await;
        }
    }
}
