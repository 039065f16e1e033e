//! Several replicas on one PostgreSQL store (docs/operations.md, "Several replicas"): the
//! revocation fan-out and the store's health.
//!
//! * **Fan-out.** Every committed key-state change and new binding (`Store::set_binding_state`,
//!   `Store::bind_kek`, whichever replica made it) sends a `NOTIFY` on [`KEY_STATE_CHANNEL`]
//!   inside its transaction, naming the tenant; every policy change (`Store::set_tenant_policy`)
//!   one on [`TENANT_POLICY_CHANNEL`]. Each replica subscribes with
//!   [`Store::key_state_changes`] (the store keeps one dedicated listening connection,
//!   application name `keyward-listener-<replica id>`, reconnecting with backoff) and, per
//!   key-state notification, reads the tenant's binding from the store and applies it through
//!   [`Keyring::apply_recorded_state`] — the same gate close and purge as a local revocation, the
//!   gate reopened by a new binding, the keys of revoked older bindings purged; per policy
//!   notification it drops the tenant's cached keys ([`Keyring::apply_recorded_policy`]), so a
//!   shortened TTL bounds every replica at once.
//! * **Reconciliation.** Notifications sent while a listener is disconnected are lost, so every
//!   replica also compares all key states with its gates every `reconcile_interval`, and at once
//!   after each (re)connection of its listener, before it waits for notifications.
//! * **Health.** A ping of the store ([`Store::ping`]) every `health_check_interval` sets the
//!   gRPC health status of every service: `NOT_SERVING` while the store does not answer.
//!
//! [`TENANT_POLICY_CHANNEL`]: keyward_store::postgres::TENANT_POLICY_CHANNEL
//! [`Store::key_state_changes`]: keyward_store::Store::key_state_changes
//! [`Store::ping`]: keyward_store::Store::ping

use std::{sync::Arc, time::Duration};

use keyward_store::postgres::KEY_STATE_CHANNEL;
use keyward_store::{StoreChange, StoreChanges};
use tokio_stream::StreamExt as _;

use crate::Keyring;

/// The application name of a replica's listening connection (visible in `pg_stat_activity`).
pub fn listener_application_name(replica_id: &str) -> String {
    format!("keyward-listener-{replica_id}")
}

/// Applies the key-state and policy changes of other replicas, as the store delivers them
/// ([`keyward_store::Store::key_state_changes`]: it keeps the listening connection up, with
/// backoff), until the task is dropped; reconciles after every (re)connection.
pub(crate) async fn run_listener(keyring: Arc<Keyring>, mut changes: StoreChanges) {
    while let Some(change) = changes.next().await {
        match change {
            StoreChange::Subscribed => {
                tracing::info!(replica = %keyring.replica_id(), channel = KEY_STATE_CHANNEL, "listening for key-state changes");
                // Changes committed while this replica was not listening were never delivered.
                reconcile_once(&keyring, "after the listener connected").await;
            }
            StoreChange::Policy(tenant) => {
                let entries = keyring.apply_recorded_policy(&tenant).await;
                tracing::info!(replica = %keyring.replica_id(), %tenant, entries, "tenant policy changed by another replica; cached keys dropped");
            }
            StoreChange::Shredded(tenant) => {
                let entries = keyring.apply_recorded_shred(&tenant).await;
                tracing::info!(replica = %keyring.replica_id(), %tenant, entries, "data keys shredded by another replica; cached data keys dropped");
            }
            StoreChange::KeyState(tenant) => {
                if let Err(e) = keyring.apply_recorded_state(&tenant).await {
                    // The periodic reconciliation retries.
                    tracing::error!(replica = %keyring.replica_id(), %tenant, error = %e, "could not apply another replica's key-state change");
                }
            }
            StoreChange::Unreadable(error) => {
                tracing::warn!(replica = %keyring.replica_id(), %error, "ignoring a key-state notification that names no tenant; reconciling");
                reconcile_once(&keyring, "after an unreadable notification").await;
            }
            // A kind of change this build does not know: reconcile, which catches up with any.
            _ => reconcile_once(&keyring, "after an unknown change notification").await,
        }
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

/// Pings the store every `interval` (each ping bounded by `interval`) and sets every service's
/// gRPC health status: `SERVING` while it answers, `NOT_SERVING` while it does not.
pub(crate) async fn run_health(
    store: Arc<dyn keyward_store::Store>,
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
        let result = match tokio::time::timeout(interval, store.ping()).await {
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
