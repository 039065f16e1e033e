//! What the configuration resolves into: the validated [`Settings`] the server runs with.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use keyward_kms::ConfigSection;

use super::StoreLocation;
use crate::{
    authz::PolicyFiles,
    keyring::{CachePolicy, MonitorPolicy, RotationPolicy},
    telemetry::LogFormat,
    tls::TlsFiles,
};

/// The resolved observability settings (docs/observability.md).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ObservabilitySettings {
    /// The admin listener's address; `None` = disabled.
    pub admin: Option<SocketAddr>,
    pub max_tenant_labels: usize,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// OTLP/gRPC collector endpoint; `None` = no trace export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of exported spans.
    pub otlp_service_name: String,
}

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The SQLite database file when `store` is SQLite (`<data_dir>/keyward.db` by default).
    pub database_path: PathBuf,
    /// The configured store.
    pub store: StoreLocation,
    /// This replica's name in logs and in its PostgreSQL listener connection.
    pub replica_id: String,
    /// The audit signing and identifier keys.
    pub audit_dir: PathBuf,
    pub checkpoint_interval: Duration,
    /// `[audit.siem]`: the SIEM feed, if configured.
    pub siem: Option<crate::siem::SiemPolicy>,
    /// The key-state monitor, if enabled.
    pub monitor: Option<MonitorPolicy>,
    /// The request quota per KMS key, if enabled (`[kms_quota]`).
    pub kms_quota: Option<keyward_kms::QuotaPolicy>,
    pub local_kms_dir: PathBuf,
    pub max_plaintext_bytes: usize,
    /// `[cache]`: the TTL (the hard upper bound of every tenant's revocation window) and the
    /// caches' sizes.
    pub cache: CachePolicy,
    pub rotation: RotationPolicy,
    /// The envelope suite new messages are sealed with (`envelope.write_suite`).
    pub write_suite: keyward_envelope::Suite,
    /// Mutual TLS; `None` is development mode (plaintext on loopback, development principal).
    pub tls: Option<TlsFiles>,
    /// How often TLS and policy files are checked for changes.
    pub reload_interval: Duration,
    pub policy_files: PolicyFiles,
    /// `[authz]` was left at its defaults (development mode may then fall back to the
    /// built-in policies when `./policies` does not exist).
    pub default_policies_dir: bool,
    /// Memory locking and core-dump exclusion, applied by `keyward serve` with
    /// [`crate::memory::harden`] before the server starts.
    pub memory: crate::memory::MemoryConfig,
    /// `limits.max_in_flight_per_caller` ([`crate::limits`]).
    pub max_in_flight_per_caller: usize,
    /// The key providers' sections as read (`[aws_kms]`, `[gcp]`, …), by name; each provider
    /// crate types its own when the server starts ([`keyward_kms::ProviderFactory::configure`]).
    pub providers: std::collections::BTreeMap<String, ConfigSection>,
    /// Admin listener, metrics bounds, shutdown grace, log format, trace export.
    pub observability: ObservabilitySettings,
}
