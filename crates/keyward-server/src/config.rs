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

use keyward_store::postgres::PostgresOptions;

use crate::{
    admin::AdminConfig,
    authz::PolicyFiles,
    keyring::MonitorPolicy,
    metrics::{MAX_TENANT_LABELS_CEILING, MetricsConfig},
    telemetry::{LogFormat, OtlpConfig},
    tls::TlsFiles,
};

/// Raw configuration as written in `keyward.toml`. See `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
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
    /// The AWS KMS provider (docs/providers/aws.md); present in builds with the `aws` feature.
    #[cfg(feature = "aws")]
    pub aws_kms: keyward_kms_aws::AwsKmsConfig,
    /// A PKCS#11 HSM token (docs/providers/pkcs11.md); unset = no PKCS#11 provider. Present in
    /// builds with the `pkcs11` feature.
    #[cfg(feature = "pkcs11")]
    pub pkcs11: Option<keyward_kms_pkcs11::Pkcs11Config>,
    /// Google Cloud KMS (docs/providers/gcp.md); unset = no Cloud KMS provider. Present in
    /// builds with the `gcp` feature.
    #[cfg(feature = "gcp")]
    pub gcp: Option<keyward_kms_gcp::GcpKmsConfig>,
    /// Azure Key Vault / Managed HSM (docs/providers/azure.md); unset = no Azure provider.
    /// Present in builds with the `azure` feature.
    #[cfg(feature = "azure")]
    pub azure: Option<keyward_kms_azure::AzureKeyVaultConfig>,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long an unwrapped tenant key or DEK stays in memory after the KEK
    /// last agreed to unwrap its tenant key. This is the upper bound of the
    /// revocation window when nothing else signals revocation.
    pub ttl_seconds: u64,
    /// Maximum number of unwrapped tenant keys held.
    pub max_tenant_keys: u64,
    /// Maximum number of unwrapped DEKs held (decrypt and encrypt caches each).
    pub max_deks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// A scope's active DEK is replaced once it is this old.
    pub max_age_seconds: u64,
    /// ... or once it has encrypted this many messages (per replica).
    pub max_messages: u64,
    /// ... or this many plaintext bytes (per replica).
    pub max_bytes: u64,
}

/// `[envelope]`: what new envelopes are sealed with. Every suite this build implements is read,
/// whatever is written (docs/envelope-format.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnvelopeConfig {
    /// The suite id written: 2 (`0x0002`, the default) or 1 (`0x0001`). Keep 1 while replicas
    /// built before suite `0x0002` existed still serve: they cannot read suite 2 envelopes.
    pub write_suite: u16,
}

impl Default for EnvelopeConfig {
    fn default() -> Self {
        Self {
            write_suite: keyward_envelope::Suite::SEAL.id(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LocalKmsConfig {
    /// Directory of the local development KEKs; default `<data_dir>/local-kms`.
    pub dir: Option<PathBuf>,
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
            #[cfg(feature = "aws")]
            aws_kms: keyward_kms_aws::AwsKmsConfig::default(),
            #[cfg(feature = "pkcs11")]
            pkcs11: None,
            #[cfg(feature = "gcp")]
            gcp: None,
            #[cfg(feature = "azure")]
            azure: None,
            log_format: LogFormat::default(),
            shutdown_grace_seconds: DEFAULT_SHUTDOWN_GRACE_SECONDS,
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
            otlp: OtlpConfig::default(),
        }
    }
}

/// `[tls]`: all three files set = mutual TLS; none set = development mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that every client certificate must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// How often the TLS files and the policy files are checked for changes (SIGHUP reloads
    /// at once).
    pub reload_interval_seconds: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval_seconds: 10,
        }
    }
}

/// `[authz]`: where the Cedar policies and the identity mapping are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Directory holding `schema.cedarschema` and the `*.cedar` policies.
    pub policies_dir: PathBuf,
    /// Certificate identities -> principals; default `<policies_dir>/identities.toml`.
    pub identities_file: Option<PathBuf>,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            policies_dir: PathBuf::from("policies"),
            identities_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often the head of the audit chain is signed (if it moved).
    pub checkpoint_interval_seconds: u64,
    /// Directory of the signing and identifier keys; default `<data_dir>/audit`. Every replica
    /// of a deployment must use the same keys (docs/operations.md, "Several replicas").
    pub keys_dir: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_seconds: 60,
            keys_dir: None,
        }
    }
}

/// `[postgres]`: the pool of a PostgreSQL `store` and the revocation fan-out between replicas.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Most pooled connections per replica (the listener's connection is extra).
    pub max_connections: u32,
    /// How long a call waits for a pooled connection (and the start for the first one).
    pub acquire_timeout_seconds: u64,
    /// Server-side bound on any one statement; 0 = the server's setting.
    pub statement_timeout_seconds: u64,
    /// How often every replica re-reads all key states and applies those its gates missed
    /// (lost notifications, reconnects).
    pub reconcile_interval_seconds: u64,
    /// How often the store is pinged for the gRPC health service.
    pub health_check_interval_seconds: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout_seconds: 5,
            statement_timeout_seconds: 30,
            reconcile_interval_seconds: 5,
            health_check_interval_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// Interval of the key-state monitor's sweeps (a canary unwrap per tenant); 0 disables it
    /// (revocation is then still bounded by cache.ttl_seconds).
    pub monitor_interval_seconds: u64,
    /// Global cap on the monitor's KMS calls per second.
    pub monitor_max_checks_per_second: u32,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            monitor_interval_seconds: 60,
            monitor_max_checks_per_second: 20,
        }
    }
}

/// `[kms_quota]`: a token bucket per KMS key in front of every KMS provider, so that Keyward
/// stays under the customer's KMS request quota (docs/configuration.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KmsQuotaConfig {
    /// Sustained requests per second to one KMS key; 0 disables the quota.
    pub requests_per_second: u32,
    /// Requests to one key that may go out at once after an idle period.
    pub burst: u32,
    /// Longest a request waits for its turn before failing `UNAVAILABLE` (throttled).
    pub max_wait_ms: u64,
    /// Most keys tracked at once; idle keys are dropped first.
    pub max_keys: usize,
}

impl Default for KmsQuotaConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 50,
            burst: 100,
            max_wait_ms: 1000,
            max_keys: 100_000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: 300,
            max_tenant_keys: 100_000,
            max_deks: 1_000_000,
        }
    }
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            max_age_seconds: 24 * 60 * 60,
            max_messages: 1 << 20,
            max_bytes: 1 << 30,
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
    /// Defaults, then `file` (if given; it must exist), then `KEYWARD_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
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
        figment = figment.merge(
            Env::prefixed("KEYWARD_")
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    let section = key.split("__").next().unwrap_or_default();
                    CONFIG_SECTIONS.contains(&section)
                })
                .split("__"),
        );
        figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    /// Defaults, then the TOML `text`, nothing from the environment: what [`Config::load`] reads
    /// from a file, for the coverage-guided fuzz target `server_config` (`fuzz/`). Not part of
    /// the API.
    #[doc(hidden)]
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
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
        let Some(write_suite) = keyward_envelope::Suite::from_id(self.envelope.write_suite) else {
            return Err(ConfigError::Invalid(format!(
                "envelope.write_suite is {}; it must be 1 or 2 (the envelope suites this build implements)",
                self.envelope.write_suite
            )));
        };
        if self.audit.checkpoint_interval_seconds == 0 {
            return invalid("audit.checkpoint_interval_seconds must be at least 1");
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
            monitor: (self.revocation.monitor_interval_seconds > 0).then(|| MonitorPolicy {
                interval: Duration::from_secs(self.revocation.monitor_interval_seconds),
                max_checks_per_second: self.revocation.monitor_max_checks_per_second,
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
            cache_ttl: Duration::from_secs(self.cache.ttl_seconds),
            max_tenant_keys: self.cache.max_tenant_keys,
            max_deks: self.cache.max_deks,
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
            #[cfg(feature = "aws")]
            aws_kms: self.aws_kms.clone(),
            #[cfg(feature = "pkcs11")]
            pkcs11: self.pkcs11.clone(),
            #[cfg(feature = "gcp")]
            gcp: self.gcp.clone(),
            #[cfg(feature = "azure")]
            azure: self.azure.clone(),
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

/// Top-level keys of [`Config`], which `KEYWARD_*` environment variables may set.
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
    #[cfg(feature = "aws")]
    "aws_kms",
    #[cfg(feature = "pkcs11")]
    "pkcs11",
    #[cfg(feature = "gcp")]
    "gcp",
    #[cfg(feature = "azure")]
    "azure",
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

/// gRPC itself caps messages; a plaintext above this would not be a sensible
/// single Encrypt call anyway.
const MAX_PLAINTEXT_CEILING: usize = 64 * 1024 * 1024;
/// docs/envelope-format.md: per-message keys keep 2^40 messages per DEK safe.
const MAX_MESSAGES_PER_DEK: u64 = 1 << 40;

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
    /// The key-state monitor, if enabled.
    pub monitor: Option<MonitorPolicy>,
    /// The request quota per KMS key, if enabled (`[kms_quota]`).
    pub kms_quota: Option<keyward_kms::QuotaPolicy>,
    pub local_kms_dir: PathBuf,
    pub max_plaintext_bytes: usize,
    pub cache_ttl: Duration,
    pub max_tenant_keys: u64,
    pub max_deks: u64,
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
    #[cfg(feature = "aws")]
    pub aws_kms: keyward_kms_aws::AwsKmsConfig,
    #[cfg(feature = "pkcs11")]
    pub pkcs11: Option<keyward_kms_pkcs11::Pkcs11Config>,
    #[cfg(feature = "gcp")]
    pub gcp: Option<keyward_kms_gcp::GcpKmsConfig>,
    /// Azure Key Vault / Managed HSM (docs/providers/azure.md); unset = no Azure provider.
    /// Present in builds with the `azure` feature.
    #[cfg(feature = "azure")]
    pub azure: Option<keyward_kms_azure::AzureKeyVaultConfig>,
    /// Admin listener, metrics bounds, shutdown grace, log format, trace export.
    pub observability: ObservabilitySettings,
}

/// When a scope's active DEK is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    pub max_age: Duration,
    pub max_messages: u64,
    pub max_bytes: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;

    #[test]
    fn defaults_resolve() {
        let s = Config::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.database_path, PathBuf::from("./keyward-data/keyward.db"));
        assert_eq!(s.local_kms_dir, PathBuf::from("./keyward-data/local-kms"));
        assert_eq!(s.cache_ttl, Duration::from_secs(300));
        let q = s.kms_quota.unwrap();
        assert_eq!((q.requests_per_second, q.burst), (50.0, 100));
        assert_eq!(q.max_wait, Duration::from_millis(1000));
    }

    #[test]
    fn envelope_write_suite_defaults_to_the_newest_and_is_validated() {
        use keyward_envelope::Suite;
        assert_eq!(
            Config::default().resolve().unwrap().write_suite,
            Suite::SEAL
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(&path, "[envelope]\nwrite_suite = 1\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(
            c.resolve().unwrap().write_suite,
            Suite::Aes256GcmHkdfSha512Committing
        );
        for bad in [0, 3, 0x0478] {
            let c = Config {
                envelope: EnvelopeConfig { write_suite: bad },
                ..Config::default()
            };
            assert!(
                matches!(c.resolve(), Err(ConfigError::Invalid(m)) if m.contains("envelope.write_suite is")),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn kms_quota_can_be_disabled_and_is_validated() {
        let mut c = Config::default();
        c.kms_quota.requests_per_second = 0;
        assert!(c.resolve().unwrap().kms_quota.is_none());
        for bad in [
            KmsQuotaConfig {
                burst: 0,
                ..KmsQuotaConfig::default()
            },
            KmsQuotaConfig {
                max_wait_ms: 120_000,
                ..KmsQuotaConfig::default()
            },
        ] {
            let c = Config {
                kms_quota: bad,
                ..Config::default()
            };
            assert!(
                matches!(c.resolve(), Err(ConfigError::Invalid(m)) if m.contains("kms_quota")),
                "accepted"
            );
        }
    }

    #[test]
    fn every_config_section_can_come_from_the_environment() {
        use figment::Provider as _;
        let data = Figment::from(Serialized::defaults(Config::default()))
            .data()
            .unwrap();
        let mut keys: Vec<&str> = data
            .values()
            .flat_map(|d| d.keys())
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut sections = CONFIG_SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(keys, sections);
    }

    #[test]
    fn file_values_override_defaults_and_unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\n[cache]\nttl_seconds = 7\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.cache.ttl_seconds, 7);
        assert_eq!(c.listen.port(), 0);

        std::fs::write(&path, "lisen = \"127.0.0.1:0\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn toml_text_is_read_like_a_file() {
        let text = "listen = \"127.0.0.1:0\"\n[cache]\nttl_seconds = 7\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(&path, text).unwrap();
        let from_text = Config::from_toml_str(text).unwrap();
        assert_eq!(from_text, Config::load(Some(&path)).unwrap());
        assert_eq!(from_text.cache.ttl_seconds, 7);
        let err = Config::from_toml_str("lisen = \"127.0.0.1:0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[cfg(feature = "gcp")]
    #[test]
    fn the_gcp_section_is_read_with_explicit_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(
            &path,
            "[gcp]\ncredentials = { kind = \"service-account\", file = \"/etc/keyward/sa.json\" }\ncall_timeout_ms = 900\n",
        )
        .unwrap();
        let s = Config::load(Some(&path)).unwrap().resolve().unwrap();
        let gcp = s.gcp.unwrap();
        assert_eq!(gcp.call_timeout_ms, 900);
        assert_eq!(
            gcp.credentials,
            Some(keyward_kms_gcp::GcpCredentials::ServiceAccount {
                file: "/etc/keyward/sa.json".into()
            })
        );
        assert!(Config::default().resolve().unwrap().gcp.is_none());
        std::fs::write(
            &path,
            "[gcp]\ncredentials = { kind = \"metadata-server\" }\n",
        )
        .unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("metadata-server"), "{err}");
    }

    #[test]
    fn the_store_is_sqlite_by_default_or_a_sqlite_path_or_a_postgres_url() {
        let s = Config::default().resolve().unwrap();
        assert_eq!(
            s.store,
            StoreLocation::Sqlite(PathBuf::from("./keyward-data/keyward.db"))
        );
        let c = Config {
            store: Some("sqlite:/var/lib/keyward/k.db".into()),
            ..Config::default()
        };
        assert_eq!(
            c.resolve().unwrap().store,
            StoreLocation::Sqlite(PathBuf::from("/var/lib/keyward/k.db"))
        );
        for url in [
            "postgres://keyward@db:5432/keyward",
            "postgresql://keyward:pw@db/keyward?sslmode=require",
        ] {
            let mut c = Config {
                store: Some(url.into()),
                replica_id: Some("r-1".into()),
                ..Config::default()
            };
            c.postgres.statement_timeout_seconds = 0;
            let s = c.resolve().unwrap();
            assert_eq!(s.replica_id, "r-1");
            let StoreLocation::Postgres {
                url: got, options, ..
            } = s.store
            else {
                panic!("not postgres");
            };
            assert_eq!(got, url);
            assert_eq!(options.statement_timeout, None);
            assert_eq!(options.max_connections, 10);
        }
    }

    #[test]
    fn an_invalid_store_is_a_precise_error_without_the_password() {
        for (store, expected) in [
            ("mysql://u:secret@h/db", "is neither"),
            ("sqlite:", "needs a path"),
            ("postgres://u:secret@h:port/db", "invalid PostgreSQL URL"),
            ("postgres://u:secret@h:5432", "names no database"),
            ("postgres:///db", "names no host"),
        ] {
            let c = Config {
                store: Some(store.into()),
                ..Config::default()
            };
            let err = c.resolve().unwrap_err().to_string();
            assert!(err.contains(expected), "{store}: {err}");
            assert!(!err.contains("secret"), "{store}: {err}");
        }
        let mut c = Config {
            store: Some("postgres://h/db".into()),
            ..Config::default()
        };
        c.postgres.max_connections = 0;
        assert!(
            c.resolve()
                .unwrap_err()
                .to_string()
                .contains("postgres.max_connections")
        );
        let c = Config {
            replica_id: Some("no spaces".into()),
            ..Config::default()
        };
        assert!(c.resolve().unwrap_err().to_string().contains("replica_id"));
        assert_eq!(
            redact_url("postgres://u:pw@h/db?password=x&sslmode=require"),
            "postgres://u:***@h/db?password=***&sslmode=require"
        );
    }

    /// One row per rule of [`Config::resolve`]: the value just past the bound is refused with
    /// exactly this message, and the value at the bound (`edge`) is accepted, so that deleting a
    /// rule or moving its bound by one fails a row.
    #[test]
    fn each_out_of_range_value_is_refused_with_its_precise_error() {
        type Edit = fn(&mut Config);
        const PG: &str = "postgres://keyward@db:5432/keyward";
        let rows: &[(&str, Edit, Edit, &str)] = &[
            (
                "max_plaintext_bytes = 0",
                |c| c.max_plaintext_bytes = 0,
                |c| c.max_plaintext_bytes = 1,
                "max_plaintext_bytes must be between 1 and 64 MiB",
            ),
            (
                "max_plaintext_bytes over 64 MiB",
                |c| {
                    c.max_plaintext_bytes = MAX_PLAINTEXT_CEILING + 1;
                    c.rotation.max_bytes = u64::MAX;
                },
                |c| {
                    c.max_plaintext_bytes = MAX_PLAINTEXT_CEILING;
                    c.rotation.max_bytes = u64::MAX;
                },
                "max_plaintext_bytes must be between 1 and 64 MiB",
            ),
            (
                "cache.ttl_seconds = 0",
                |c| c.cache.ttl_seconds = 0,
                |c| c.cache.ttl_seconds = 1,
                "cache.ttl_seconds must be at least 1",
            ),
            (
                "cache.max_tenant_keys = 0",
                |c| c.cache.max_tenant_keys = 0,
                |c| c.cache.max_tenant_keys = 1,
                "cache.max_tenant_keys and cache.max_deks must be at least 1",
            ),
            (
                "cache.max_deks = 0",
                |c| c.cache.max_deks = 0,
                |c| c.cache.max_deks = 1,
                "cache.max_tenant_keys and cache.max_deks must be at least 1",
            ),
            (
                "rotation.max_age_seconds = 0",
                |c| c.rotation.max_age_seconds = 0,
                |c| c.rotation.max_age_seconds = 1,
                "rotation.max_age_seconds and rotation.max_messages must be at least 1",
            ),
            (
                "rotation.max_messages = 0",
                |c| c.rotation.max_messages = 0,
                |c| c.rotation.max_messages = 1,
                "rotation.max_age_seconds and rotation.max_messages must be at least 1",
            ),
            (
                "rotation.max_messages over 2^40",
                |c| c.rotation.max_messages = MAX_MESSAGES_PER_DEK + 1,
                |c| c.rotation.max_messages = MAX_MESSAGES_PER_DEK,
                "rotation.max_messages must be at most 2^40 (the envelope format's bound)",
            ),
            (
                "rotation.max_bytes below max_plaintext_bytes",
                |c| c.rotation.max_bytes = c.max_plaintext_bytes as u64 - 1,
                |c| c.rotation.max_bytes = c.max_plaintext_bytes as u64,
                "rotation.max_bytes must be at least max_plaintext_bytes",
            ),
            (
                "revocation.monitor_max_checks_per_second = 0",
                |c| c.revocation.monitor_max_checks_per_second = 0,
                |c| c.revocation.monitor_max_checks_per_second = 1,
                "revocation.monitor_max_checks_per_second must be at least 1",
            ),
            (
                "envelope.write_suite = 3",
                |c| c.envelope.write_suite = 3,
                |c| c.envelope.write_suite = 2,
                "envelope.write_suite is 3; it must be 1 or 2 (the envelope suites this build implements)",
            ),
            (
                "audit.checkpoint_interval_seconds = 0",
                |c| c.audit.checkpoint_interval_seconds = 0,
                |c| c.audit.checkpoint_interval_seconds = 1,
                "audit.checkpoint_interval_seconds must be at least 1",
            ),
            (
                "tls.reload_interval_seconds = 0",
                |c| c.tls.reload_interval_seconds = 0,
                |c| c.tls.reload_interval_seconds = 1,
                "tls.reload_interval_seconds must be at least 1",
            ),
            (
                "kms_quota.burst = 0",
                |c| c.kms_quota.burst = 0,
                |c| c.kms_quota.burst = 1,
                "kms_quota.burst and kms_quota.max_keys must be at least 1 and kms_quota.max_wait_ms at most 60000",
            ),
            (
                "kms_quota.max_keys = 0",
                |c| c.kms_quota.max_keys = 0,
                |c| c.kms_quota.max_keys = 1,
                "kms_quota.burst and kms_quota.max_keys must be at least 1 and kms_quota.max_wait_ms at most 60000",
            ),
            (
                "kms_quota.max_wait_ms over 60000",
                |c| c.kms_quota.max_wait_ms = 60_001,
                |c| c.kms_quota.max_wait_ms = 60_000,
                "kms_quota.burst and kms_quota.max_keys must be at least 1 and kms_quota.max_wait_ms at most 60000",
            ),
            (
                "limits.max_in_flight_per_caller = 0",
                |c| c.limits.max_in_flight_per_caller = 0,
                |c| c.limits.max_in_flight_per_caller = 1,
                "limits.max_in_flight_per_caller must be between 1 and 1000000",
            ),
            (
                "limits.max_in_flight_per_caller over the ceiling",
                |c| c.limits.max_in_flight_per_caller = 1_000_001,
                |c| c.limits.max_in_flight_per_caller = 1_000_000,
                "limits.max_in_flight_per_caller must be between 1 and 1000000",
            ),
            (
                "admin listener off loopback",
                |c| c.admin.listen = "0.0.0.0:9000".parse().unwrap(),
                |c| {
                    c.admin.listen = "0.0.0.0:9000".parse().unwrap();
                    c.admin.allow_remote = true;
                },
                "refusing to serve the admin listener (plain HTTP, no authentication) on 0.0.0.0:9000, \
                 which is not a loopback address: set admin.allow_remote = true if the network in \
                 front of it restricts who can reach it, or listen on 127.0.0.1",
            ),
            (
                "metrics.max_tenant_labels over the ceiling",
                |c| c.metrics.max_tenant_labels = MAX_TENANT_LABELS_CEILING + 1,
                |c| c.metrics.max_tenant_labels = MAX_TENANT_LABELS_CEILING,
                "metrics.max_tenant_labels must be at most 100000",
            ),
            (
                "shutdown_grace_seconds over an hour",
                |c| c.shutdown_grace_seconds = 3601,
                |c| c.shutdown_grace_seconds = 3600,
                "shutdown_grace_seconds must be at most 3600",
            ),
            (
                "otlp.endpoint without a scheme",
                |c| c.otlp.endpoint = Some("127.0.0.1:4317".into()),
                |c| c.otlp.endpoint = Some("https://127.0.0.1:4317".into()),
                "otlp.endpoint must be an http:// or https:// URL (OTLP/gRPC, e.g. \
                 http://127.0.0.1:4317), not \"127.0.0.1:4317\"",
            ),
            (
                "postgres.max_connections = 0",
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.max_connections = 0;
                },
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.max_connections = 1;
                },
                "postgres.max_connections must be at least 1",
            ),
            (
                "postgres.acquire_timeout_seconds = 0",
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.acquire_timeout_seconds = 0;
                },
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.acquire_timeout_seconds = 1;
                },
                "postgres.acquire_timeout_seconds must be at least 1",
            ),
            (
                "postgres.reconcile_interval_seconds = 0",
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.reconcile_interval_seconds = 0;
                },
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.reconcile_interval_seconds = 1;
                },
                "postgres.reconcile_interval_seconds and postgres.health_check_interval_seconds must be at least 1",
            ),
            (
                "postgres.health_check_interval_seconds = 0",
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.health_check_interval_seconds = 0;
                },
                |c| {
                    c.store = Some(PG.into());
                    c.postgres.health_check_interval_seconds = 1;
                },
                "postgres.reconcile_interval_seconds and postgres.health_check_interval_seconds must be at least 1",
            ),
            (
                "replica_id empty",
                |c| c.replica_id = Some(String::new()),
                |c| c.replica_id = Some("r".into()),
                "replica_id must be 1 to 40 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
            ),
            (
                "replica_id of 41 characters",
                |c| c.replica_id = Some("r".repeat(41)),
                |c| c.replica_id = Some("r".repeat(40)),
                "replica_id must be 1 to 40 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
            ),
            (
                "replica_id with a '/'",
                |c| c.replica_id = Some("eu/1".into()),
                |c| c.replica_id = Some("eu-1_a.B".into()),
                "replica_id must be 1 to 40 characters of A-Z, a-z, 0-9, '-', '_' and '.'",
            ),
        ];
        for (name, refused, accepted, message) in rows {
            let mut c = Config::default();
            refused(&mut c);
            match c.resolve() {
                Err(ConfigError::Invalid(m)) => assert_eq!(m, *message, "{name}"),
                Err(other) => panic!("{name}: {other}"),
                Ok(_) => panic!("{name}: accepted"),
            }
            let mut c = Config::default();
            accepted(&mut c);
            if let Err(e) = c.resolve() {
                panic!("{name}: the value at the bound is refused: {e}");
            }
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/keyward.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn invalid_values_are_rejected_with_the_field_named() {
        let mut c = Config::default();
        c.cache.ttl_seconds = 0;
        assert!(
            c.resolve()
                .unwrap_err()
                .to_string()
                .contains("cache.ttl_seconds")
        );
        let mut c = Config::default();
        c.rotation.max_bytes = 10;
        assert!(
            c.resolve()
                .unwrap_err()
                .to_string()
                .contains("rotation.max_bytes")
        );
        let mut c = Config::default();
        c.rotation.max_messages = (1 << 40) + 1;
        assert!(c.resolve().unwrap_err().to_string().contains("2^40"));
    }

    #[test]
    fn plaintext_is_refused_off_loopback_and_tls_files_go_together() {
        let mut c = Config {
            listen: "0.0.0.0:50051".parse().unwrap(),
            ..Config::default()
        };
        let err = c.resolve().unwrap_err().to_string();
        assert!(
            err.contains("refusing to serve plaintext on 0.0.0.0:50051"),
            "{err}"
        );
        c.listen = "[::1]:50051".parse().unwrap();
        assert!(c.resolve().unwrap().tls.is_none());

        c.tls.cert_file = Some("server.pem".into());
        let err = c.resolve().unwrap_err().to_string();
        assert!(err.contains("must be set together"), "{err}");
        c.tls.key_file = Some("server.key".into());
        c.tls.client_ca_file = Some("ca.pem".into());
        c.listen = "0.0.0.0:50051".parse().unwrap();
        let s = c.resolve().unwrap();
        assert_eq!(s.tls.unwrap().client_ca_file, PathBuf::from("ca.pem"));
        assert_eq!(
            s.policy_files.identities_file,
            PathBuf::from("policies/identities.toml")
        );
    }
}
