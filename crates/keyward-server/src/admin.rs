//! The admin HTTP listener, separate from the gRPC port: `/metrics` (Prometheus text format),
//! `/livez` and `/readyz`. docs/observability.md describes each; docs/configuration.md the
//! `[admin]` section.
//!
//! It is plain HTTP without authentication, so by default it listens on loopback only and a
//! non-loopback address needs `admin.allow_remote = true`, an explicit statement that the
//! network in front of it (a pod network policy, a firewall) decides who may scrape. It serves
//! counts, tenant ids and states, never key material, plaintext or request contents.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::watch};

use crate::{keyring::Keyring, metrics::Metrics};

/// `[admin]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin listener at all.
    pub enabled: bool,
    /// Its address; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` (the endpoint has no TLS and no authentication).
    pub allow_remote: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            allow_remote: false,
        }
    }
}

impl AdminConfig {
    /// No admin listener (embedders that run several servers in one process).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The address to serve on, `None` when disabled; an error for a non-loopback address
    /// without `allow_remote`.
    pub fn resolve(&self) -> Result<Option<SocketAddr>, String> {
        if !self.enabled {
            return Ok(None);
        }
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "refusing to serve the admin listener (plain HTTP, no authentication) on {}, which is not a loopback address: set admin.allow_remote = true if the network in front of it restricts who can reach it, or listen on 127.0.0.1",
                self.listen
            ));
        }
        Ok(Some(self.listen))
    }
}

/// The runtime is considered stuck when its heartbeat task has not ticked for this long.
const LIVENESS_STALE: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What `/readyz`, `/livez` and the gRPC health service report.
#[derive(Debug)]
pub struct Readiness {
    store_ok: AtomicBool,
    draining: watch::Sender<bool>,
    heartbeat_ms: AtomicI64,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            store_ok: AtomicBool::new(true),
            draining: watch::Sender::new(false),
            heartbeat_ms: AtomicI64::new(crate::now_ms()),
        }
    }
}

impl Readiness {
    /// The last store ping's result (the health check loop sets it).
    pub fn set_store_ok(&self, ok: bool) {
        self.store_ok.store(ok, Ordering::Relaxed);
    }

    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    /// Shutdown has begun: not ready any more, for good.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once [`Readiness::start_draining`] was called.
    pub async fn drained_started(&self) {
        let mut rx = self.draining.subscribe();
        // The sender lives in self, so wait_for cannot fail while we hold &self.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Ready to take traffic: the store answers and shutdown has not begun.
    pub fn ready(&self) -> bool {
        self.store_ok() && !self.draining()
    }

    /// Ticks the liveness heartbeat every second, forever.
    pub(crate) async fn run_heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(HEARTBEAT);
        loop {
            ticker.tick().await;
            self.heartbeat_ms.store(crate::now_ms(), Ordering::Relaxed);
        }
    }

    fn alive(&self) -> bool {
        let age = crate::now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        u128::try_from(age).unwrap_or(0) < LIVENESS_STALE.as_millis()
    }
}

#[derive(Debug, Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    keyring: Arc<Keyring>,
    readiness: Arc<Readiness>,
}

/// Binds the admin listener (so that a taken port stops the start).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves the admin endpoints on `listener` until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    keyring: Arc<Keyring>,
    readiness: Arc<Readiness>,
) {
    let state = AdminState {
        metrics,
        keyring,
        readiness,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the admin listener stopped");
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    let gauges = state.keyring.scrape_gauges();
    match state.metrics.encode(&gauges) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                // What prometheus-client encodes (counters as `<name>_total`, `# EOF`);
                // Prometheus scrapes it natively.
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn livez(State(state): State<AdminState>) -> Response {
    if state.readiness.alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the runtime's heartbeat is stale\n",
        )
            .into_response()
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let r = &state.readiness;
    if r.ready() {
        // Ready; a monitor that does not keep up is a detail to act on, not a reason to take
        // this replica out of rotation (its keys are cached for at most the interval meanwhile).
        let monitor = state.keyring.monitor_status();
        if monitor.overcommitted {
            let detail = format!(
                "ready\nmonitor: overcommitted: key-state checks start up to {} ms late; tenant keys are cached for at most the monitor interval until the budget (revocation.monitor_max_checks_per_second) covers the schedule\n",
                monitor.lag_ms
            );
            return (StatusCode::OK, detail).into_response();
        }
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut why = String::new();
    if r.draining() {
        why.push_str("draining: shutting down\n");
    }
    if !r.store_ok() {
        why.push_str("store: not answering\n");
    }
    (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn remote_admin_needs_an_explicit_yes() {
        let mut config = AdminConfig {
            listen: "0.0.0.0:9464".parse().unwrap(),
            ..AdminConfig::default()
        };
        assert!(config.resolve().unwrap_err().contains("allow_remote"));
        config.allow_remote = true;
        assert_eq!(config.resolve().unwrap(), Some(config.listen));
        config.enabled = false;
        assert_eq!(config.resolve().unwrap(), None);
        assert_eq!(
            AdminConfig::default().resolve().unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    fn load(toml: &str) -> Result<crate::Settings, crate::config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(&path, toml).unwrap();
        crate::Config::load(Some(&path), &keyward_kms::ProviderRegistry::default())?.resolve()
    }

    #[test]
    fn observability_settings_load_and_are_checked() {
        let settings = load(
            r#"
log_format = "json"
shutdown_grace_seconds = 7
[admin]
listen = "127.0.0.1:0"
[metrics]
max_tenant_labels = 5
[otlp]
endpoint = "http://127.0.0.1:4317"
"#,
        )
        .unwrap();
        let o = &settings.observability;
        assert_eq!(o.log_format, crate::telemetry::LogFormat::Json);
        assert_eq!(o.shutdown_grace, Duration::from_secs(7));
        assert_eq!(o.admin, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(o.max_tenant_labels, 5);
        assert_eq!(o.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(o.otlp_service_name, "keyward");

        let defaults = load("").unwrap().observability;
        assert_eq!(defaults.log_format, crate::telemetry::LogFormat::Text);
        assert_eq!(defaults.shutdown_grace, Duration::from_secs(20));
        assert_eq!(defaults.max_tenant_labels, 1000);
        assert_eq!(defaults.otlp_endpoint, None);

        for (bad, expected) in [
            ("log_format = \"xml\"", "log_format"),
            ("shutdown_grace_seconds = 3601", "shutdown_grace_seconds"),
            ("[metrics]\nmax_tenant_labels = 100001", "max_tenant_labels"),
            ("[otlp]\nendpoint = \"127.0.0.1:4317\"", "otlp.endpoint"),
            ("[admin]\nlisten = \"10.0.0.1:9464\"", "allow_remote"),
            ("[admin]\nport = 1", "port"),
        ] {
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn draining_is_final_and_observable() {
        let r = Arc::new(Readiness::default());
        assert!(r.ready());
        r.set_store_ok(false);
        assert!(!r.ready());
        r.set_store_ok(true);
        let waiter = tokio::spawn({
            let r = Arc::clone(&r);
            async move { r.drained_started().await }
        });
        r.start_draining();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!r.ready());
        assert!(r.alive());
    }
}
