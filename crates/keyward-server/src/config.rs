//! Server configuration: raw values from defaults, an optional TOML file and
//! `KEYWARD_*` environment variables, resolved into validated [`Settings`].
//!
//! Precedence (later wins): built-in defaults, the config file, environment
//! variables (`KEYWARD_LISTEN`, `KEYWARD_DATA_DIR`, nested keys with a double
//! underscore: `KEYWARD_CACHE__TTL_SECONDS`), then command-line flags applied
//! by the CLI.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format as _, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use keyward_kms::{ConfigSection, ProviderRegistry};
use keyward_store::postgres::PostgresOptions;

use crate::{
    admin::AdminConfig,
    authz::PolicyFiles,
    keyring::{CachePolicy, MonitorPolicy, RotationPolicy},
    metrics::{MAX_TENANT_LABELS_CEILING, MetricsConfig},
    telemetry::{LogFormat, OtlpConfig},
    tls::TlsFiles,
};

mod sections;
mod settings;

pub use sections::{
    AuditConfig, AuthzConfig, CacheConfig, EnvelopeConfig, KmsQuotaConfig, LocalKmsConfig,
    PostgresConfig, RevocationConfig, RotationConfig, SiemConfig, TlsConfig,
};
pub use settings::{ObservabilitySettings, Settings};

/// Raw configuration as written in `keyward.toml`. See `docs/configuration.md`.
///
/// Unknown top-level keys are refused by [`Config::load`]: every key is either one of the
/// server's own sections or the section of a key provider in the [`ProviderRegistry`] the
/// application was built with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Address of the gRPC listener. Port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// Directory for the SQLite database and, by default, the local key directory.
    pub data_dir: PathBuf,
    /// Largest plaintext accepted by `Encrypt`, in bytes.
    pub max_plaintext_bytes: usize,
    /// The store: unset = SQLite at `<data_dir>/keyward.db`; `"sqlite:<path>"`; or a
    /// `postgres://…` / `postgresql://…` URL (several replicas on one database).
    pub store: Option<String>,
    /// Names this replica in logs and in its PostgreSQL listener connection
    /// (`keyward-listener-<replica_id>`); default: random at each start.
    pub replica_id: Option<String>,
    /// The PostgreSQL store's pool and the revocation fan-out (used only with a PostgreSQL `store`).
    pub postgres: PostgresConfig,
    pub cache: CacheConfig,
    pub rotation: RotationConfig,
    /// The envelope suite new messages are sealed with (`[envelope]`).
    pub envelope: EnvelopeConfig,
    pub local_kms: LocalKmsConfig,
    pub audit: AuditConfig,
    pub revocation: RevocationConfig,
    /// Keyward's own request quota per KMS key (every provider but the local development one).
    pub kms_quota: KmsQuotaConfig,
    /// Mutual TLS for the gRPC listener; unset = development mode (plaintext, loopback only).
    pub tls: TlsConfig,
    /// The authorization policies and the certificate-identity mapping.
    pub authz: AuthzConfig,
    /// Memory locking and core-dump exclusion (docs/adr/0005-memory-locking.md).
    pub memory: crate::memory::MemoryConfig,
    /// Limits at the gRPC edge (docs/configuration.md, `[limits]`).
    pub limits: crate::limits::LimitsConfig,
    /// Every other top-level section: the key providers' (`[aws_kms]`, `[pkcs11]`, `[gcp]`,
    /// `[azure]`, docs/providers/), as read. Each provider crate types and checks its own
    /// ([`keyward_kms::ProviderFactory::configure`]); [`Config::load`] refuses a section no
    /// provider of the registry claims.
    #[serde(flatten)]
    pub providers: std::collections::BTreeMap<String, figment::value::Value>,
    // --- observability (docs/observability.md) ---
    /// `"text"` or `"json"` log lines (read by the `keyward serve` command).
    pub log_format: LogFormat,
    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before they are cut.
    pub shutdown_grace_seconds: u64,
    /// The admin HTTP listener: /metrics, /livez, /readyz.
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    /// OpenTelemetry trace export (builds with the `otlp` feature of keyward-cli).
    pub otlp: OtlpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./keyward-data"),
            max_plaintext_bytes: 1024 * 1024,
            store: None,
            replica_id: None,
            postgres: PostgresConfig::default(),
            cache: CacheConfig::default(),
            rotation: RotationConfig::default(),
            envelope: EnvelopeConfig::default(),
            local_kms: LocalKmsConfig::default(),
            audit: AuditConfig::default(),
            revocation: RevocationConfig::default(),
            kms_quota: KmsQuotaConfig::default(),
            tls: TlsConfig::default(),
            authz: AuthzConfig::default(),
            memory: crate::memory::MemoryConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            providers: std::collections::BTreeMap::new(),
            log_format: LogFormat::default(),
            shutdown_grace_seconds: DEFAULT_SHUTDOWN_GRACE_SECONDS,
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
            otlp: OtlpConfig::default(),
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then `file` (if given; it must exist), then `KEYWARD_*` variables. The
    /// sections of `registry`'s key providers are read too, and each is checked by its provider
    /// crate; any other unknown top-level key is an error.
    pub fn load(file: Option<&Path>, registry: &ProviderRegistry) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only variables naming a configuration section are configuration: others with the
        // prefix belong to the CLI (KEYWARD_LOG, KEYWARD_ENDPOINT) or to tools. Inside a known
        // section, unknown keys are still errors (deny_unknown_fields).
        let provider_sections: Vec<&'static str> = registry.sections().collect();
        figment = figment.merge(
            Env::prefixed("KEYWARD_")
                .filter(move |key| {
                    let key = key.as_str().to_ascii_lowercase();
                    let section = key.split("__").next().unwrap_or_default();
                    CONFIG_SECTIONS.contains(&section) || provider_sections.contains(&section)
                })
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.check_provider_sections(registry)?;
        Ok(config)
    }

    /// Defaults, then the TOML `text`, nothing from the environment: what [`Config::load`] reads
    /// from a file, for the coverage-guided fuzz target `server_config` (`fuzz/`). Not part of
    /// the API.
    #[doc(hidden)]
    pub fn from_toml_str(text: &str, registry: &ProviderRegistry) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.check_provider_sections(registry)?;
        Ok(config)
    }

    /// Every top-level key that is not the server's names a section of one of `registry`'s
    /// key providers, and that provider accepts it.
    fn check_provider_sections(&self, registry: &ProviderRegistry) -> Result<(), ConfigError> {
        let sections = self.provider_sections()?;
        for name in self.providers.keys() {
            if let Some(events) = registry.event_source_by_section(name) {
                events
                    .configure(sections.get(name))
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                continue;
            }
            let Some(factory) = registry.by_section(name) else {
                let mut known: Vec<&str> = CONFIG_SECTIONS.to_vec();
                known.extend(registry.sections());
                return Err(ConfigError::Invalid(format!(
                    "unknown field `{name}`, expected one of {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            factory
                .configure(sections.get(name))
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// The providers' sections, untyped.
    fn provider_sections(
        &self,
    ) -> Result<std::collections::BTreeMap<String, ConfigSection>, ConfigError> {
        self.providers
            .iter()
            .map(|(name, value)| {
                let value = serde_json::to_value(value)
                    .map_err(|e| ConfigError::Invalid(format!("[{name}]: cannot be read: {e}")))?;
                Ok((name.clone(), ConfigSection::new(name.clone(), value)))
            })
            .collect()
    }

    /// Checks the values and resolves derived paths.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.max_plaintext_bytes == 0 || self.max_plaintext_bytes > MAX_PLAINTEXT_CEILING {
            return invalid("max_plaintext_bytes must be between 1 and 64 MiB");
        }
        if self.cache.ttl_seconds == 0 {
            return invalid("cache.ttl_seconds must be at least 1");
        }
        if self.cache.max_tenant_keys == 0 || self.cache.max_deks == 0 {
            return invalid("cache.max_tenant_keys and cache.max_deks must be at least 1");
        }
        if self.rotation.max_age_seconds == 0 || self.rotation.max_messages == 0 {
            return invalid(
                "rotation.max_age_seconds and rotation.max_messages must be at least 1",
            );
        }
        if self.revocation.monitor_max_checks_per_second == 0 {
            return invalid("revocation.monitor_max_checks_per_second must be at least 1");
        }
        if !(1..=1024).contains(&self.revocation.monitor_max_concurrent_checks) {
            return invalid("revocation.monitor_max_concurrent_checks must be 1 to 1024");
        }
        let Some(write_suite) = keyward_envelope::Suite::from_id(self.envelope.write_suite) else {
            return Err(ConfigError::Invalid(format!(
                "envelope.write_suite is {}; it must be 1 or 2 (the envelope suites this build implements)",
                self.envelope.write_suite
            )));
        };
        if self.audit.checkpoint_interval_seconds == 0 {
            return invalid("audit.checkpoint_interval_seconds must be at least 1");
        }
        if let Some(siem) = &self.audit.siem {
            if siem.path.as_os_str().is_empty() {
                return invalid("audit.siem.path must name a file");
            }
            if siem.max_bytes < 4096 {
                return invalid("audit.siem.max_bytes must be at least 4096");
            }
            if siem.files_kept > 1000 {
                return invalid("audit.siem.files_kept must be at most 1000");
            }
            if !(10..=60_000).contains(&siem.poll_interval_ms) {
                return invalid("audit.siem.poll_interval_ms must be between 10 and 60000");
            }
        }
        if self.rotation.max_messages > MAX_MESSAGES_PER_DEK {
            return invalid(
                "rotation.max_messages must be at most 2^40 (the envelope format's bound)",
            );
        }
        if self.rotation.max_bytes < self.max_plaintext_bytes as u64 {
            return invalid("rotation.max_bytes must be at least max_plaintext_bytes");
        }
        if self.tls.reload_interval_seconds == 0 {
            return invalid("tls.reload_interval_seconds must be at least 1");
        }
        let q = &self.kms_quota;
        if q.requests_per_second > 0 && (q.burst == 0 || q.max_keys == 0 || q.max_wait_ms > 60_000)
        {
            return invalid(
                "kms_quota.burst and kms_quota.max_keys must be at least 1 and \
                 kms_quota.max_wait_ms at most 60000",
            );
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        let observability = self.observability()?;
        let store = self.store_location()?;
        let replica_id = match &self.replica_id {
            Some(id) => {
                if id.is_empty()
                    || id.len() > 40
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                {
                    return invalid(
                        "replica_id must be 1 to 40 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
                    );
                }
                id.clone()
            }
            None => random_replica_id(),
        };
        let tls = match (
            &self.tls.cert_file,
            &self.tls.key_file,
            &self.tls.client_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: ca.clone(),
            }),
            (None, None, None) => None,
            _ => {
                return invalid(
                    "tls.cert_file, tls.key_file and tls.client_ca_file must be set together (mutual TLS) or not at all (development mode)",
                );
            }
        };
        if tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve plaintext on {}, which is not a loopback address: set [tls] cert_file, key_file and client_ca_file (mutual TLS), or listen on 127.0.0.1 for development",
                self.listen
            )));
        }
        let policy_files = PolicyFiles {
            policies_dir: self.authz.policies_dir.clone(),
            identities_file: self
                .authz
                .identities_file
                .clone()
                .unwrap_or_else(|| self.authz.policies_dir.join("identities.toml")),
        };
        let local_kms_dir = self
            .local_kms
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("local-kms"));
        Ok(Settings {
            listen: self.listen,
            database_path: match &store {
                StoreLocation::Sqlite(path) => path.clone(),
                StoreLocation::Postgres { .. } => self.data_dir.join("keyward.db"),
            },
            store,
            replica_id,
            audit_dir: self
                .audit
                .keys_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("audit")),
            checkpoint_interval: Duration::from_secs(self.audit.checkpoint_interval_seconds),
            siem: self.audit.siem.as_ref().map(|s| {
                crate::siem::SiemPolicy::new(
                    s.path.clone(),
                    s.max_bytes,
                    s.files_kept,
                    Duration::from_millis(s.poll_interval_ms),
                )
            }),
            monitor: (self.revocation.monitor_interval_seconds > 0).then(|| MonitorPolicy {
                interval: Duration::from_secs(self.revocation.monitor_interval_seconds),
                max_checks_per_second: self.revocation.monitor_max_checks_per_second,
                max_concurrent_checks: self.revocation.monitor_max_concurrent_checks,
            }),
            kms_quota: (q.requests_per_second > 0).then(|| keyward_kms::QuotaPolicy {
                requests_per_second: f64::from(q.requests_per_second),
                burst: q.burst,
                max_wait: Duration::from_millis(q.max_wait_ms),
                max_keys: q.max_keys,
            }),
            data_dir: self.data_dir.clone(),
            local_kms_dir,
            max_plaintext_bytes: self.max_plaintext_bytes,
            cache: CachePolicy {
                ttl: Duration::from_secs(self.cache.ttl_seconds),
                max_tenant_keys: self.cache.max_tenant_keys,
                max_deks: self.cache.max_deks,
            },
            rotation: RotationPolicy {
                max_age: Duration::from_secs(self.rotation.max_age_seconds),
                max_messages: self.rotation.max_messages,
                max_bytes: self.rotation.max_bytes,
            },
            write_suite,
            tls,
            reload_interval: Duration::from_secs(self.tls.reload_interval_seconds),
            policy_files,
            default_policies_dir: self.authz == AuthzConfig::default(),
            memory: self.memory,
            max_in_flight_per_caller: self.limits.max_in_flight_per_caller,
            providers: self.provider_sections()?,
            observability,
        })
    }

    /// The admin listener, metrics bounds, shutdown grace and trace export, checked.
    fn observability(&self) -> Result<ObservabilitySettings, ConfigError> {
        let admin = self.admin.resolve().map_err(ConfigError::Invalid)?;
        if self.metrics.max_tenant_labels > MAX_TENANT_LABELS_CEILING {
            return Err(ConfigError::Invalid(format!(
                "metrics.max_tenant_labels must be at most {MAX_TENANT_LABELS_CEILING}"
            )));
        }
        if self.shutdown_grace_seconds > MAX_SHUTDOWN_GRACE_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "shutdown_grace_seconds must be at most {MAX_SHUTDOWN_GRACE_SECONDS}"
            )));
        }
        let otlp_endpoint = match self.otlp.endpoint.as_deref() {
            None => None,
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => Some(e.to_owned()),
            Some(e) => {
                return Err(ConfigError::Invalid(format!(
                    "otlp.endpoint must be an http:// or https:// URL (OTLP/gRPC, e.g. http://127.0.0.1:4317), not {e:?}"
                )));
            }
        };
        Ok(ObservabilitySettings {
            admin,
            max_tenant_labels: self.metrics.max_tenant_labels,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            log_format: self.log_format,
            otlp_endpoint,
            otlp_service_name: self
                .otlp
                .service_name
                .clone()
                .unwrap_or_else(|| "keyward".to_owned()),
        })
    }

    /// Where the store is, from `store` and `[postgres]`, with a precise error for a bad value.
    fn store_location(&self) -> Result<StoreLocation, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let Some(store) = self.store.as_deref() else {
            return Ok(StoreLocation::Sqlite(self.data_dir.join("keyward.db")));
        };
        if let Some(path) = store.strip_prefix("sqlite:") {
            // `sqlite://path` is accepted too (the URL spelling).
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return invalid(
                    "store: \"sqlite:\" needs a path, e.g. \"sqlite:/var/lib/keyward/keyward.db\""
                        .to_owned(),
                );
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if store.starts_with("postgres://") || store.starts_with("postgresql://") {
            let p = &self.postgres;
            if p.max_connections == 0 {
                return invalid("postgres.max_connections must be at least 1".to_owned());
            }
            if p.acquire_timeout_seconds == 0 {
                return invalid("postgres.acquire_timeout_seconds must be at least 1".to_owned());
            }
            if p.reconcile_interval_seconds == 0 || p.health_check_interval_seconds == 0 {
                return invalid(
                    "postgres.reconcile_interval_seconds and postgres.health_check_interval_seconds must be at least 1"
                        .to_owned(),
                );
            }
            if let Err(e) = keyward_store::postgres::validate_url(store) {
                return invalid(format!(
                    "store: invalid PostgreSQL URL {}: {e}",
                    redact_url(store)
                ));
            }
            return Ok(StoreLocation::Postgres {
                url: store.to_owned(),
                options: PostgresOptions {
                    max_connections: p.max_connections,
                    acquire_timeout: Duration::from_secs(p.acquire_timeout_seconds),
                    statement_timeout: (p.statement_timeout_seconds > 0)
                        .then(|| Duration::from_secs(p.statement_timeout_seconds)),
                },
                reconcile_interval: Duration::from_secs(p.reconcile_interval_seconds),
                health_check_interval: Duration::from_secs(p.health_check_interval_seconds),
            });
        }
        invalid(format!(
            "store: {} is neither \"sqlite:<path>\" nor a \"postgres://\" or \"postgresql://\" URL (unset = SQLite at <data_dir>/keyward.db)",
            redact_url(store)
        ))
    }
}

/// Where the server keeps its state.
#[derive(Clone, PartialEq)]
pub enum StoreLocation {
    /// A SQLite database file (one replica).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several replicas.
    Postgres {
        /// The libpq URL; may hold a password, so never logged (see [`redact_url`]).
        url: String,
        options: PostgresOptions,
        /// Period of the reconciliation of key states against the store.
        reconcile_interval: Duration,
        /// Period of the store ping behind the gRPC health service.
        health_check_interval: Duration,
    },
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreLocation::Postgres {
                url,
                options,
                reconcile_interval,
                health_check_interval,
            } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .field("options", options)
                .field("reconcile_interval", reconcile_interval)
                .field("health_check_interval", health_check_interval)
                .finish(),
        }
    }
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = match tail.find("password=") {
        Some(_) => tail
            .split('&')
            .map(|part| match part.find("password=") {
                Some(i) => format!("{}password=***", &part[..i]),
                None => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&"),
        None => tail.to_owned(),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => format!("{scheme}://{authority}{tail}"),
    }
}

/// A fresh replica id: 8 random hex digits.
fn random_replica_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// The server's own top-level keys of [`Config`], which `KEYWARD_*` environment variables may
/// set (as may the sections of the registry's key providers).
const CONFIG_SECTIONS: &[&str] = &[
    "listen",
    "data_dir",
    "max_plaintext_bytes",
    "store",
    "replica_id",
    "postgres",
    "cache",
    "rotation",
    "envelope",
    "local_kms",
    "audit",
    "revocation",
    "kms_quota",
    "tls",
    "memory",
    "authz",
    "limits",
    "log_format",
    "shutdown_grace_seconds",
    "admin",
    "metrics",
    "otlp",
];

/// Default of `shutdown_grace_seconds`: under Kubernetes' default 30 s termination grace, with
/// room for the final audit flush.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 20;
const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 3600;

/// gRPC itself caps messages; a plaintext above this would not be a sensible
/// single Encrypt call anyway.
const MAX_PLAINTEXT_CEILING: usize = 64 * 1024 * 1024;
/// docs/envelope-format.md: per-message keys keep 2^40 messages per DEK safe.
const MAX_MESSAGES_PER_DEK: u64 = 1 << 40;

#[cfg(test)]
mod tests;
