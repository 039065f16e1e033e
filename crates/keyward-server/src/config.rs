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

use crate::{authz::PolicyFiles, keyring::MonitorPolicy, tls::TlsFiles};

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
    pub cache: CacheConfig,
    pub rotation: RotationConfig,
    pub local_kms: LocalKmsConfig,
    pub audit: AuditConfig,
    pub revocation: RevocationConfig,
    /// Mutual TLS for the gRPC listener; unset = development mode (plaintext, loopback only).
    pub tls: TlsConfig,
    /// The authorization policies and the certificate-identity mapping.
    pub authz: AuthzConfig,
    /// The AWS KMS provider (docs/providers/aws.md); present in builds with the `aws` feature.
    #[cfg(feature = "aws")]
    pub aws_kms: keyward_kms_aws::AwsKmsConfig,
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
            cache: CacheConfig::default(),
            rotation: RotationConfig::default(),
            local_kms: LocalKmsConfig::default(),
            audit: AuditConfig::default(),
            revocation: RevocationConfig::default(),
            tls: TlsConfig::default(),
            authz: AuthzConfig::default(),
            #[cfg(feature = "aws")]
            aws_kms: keyward_kms_aws::AwsKmsConfig::default(),
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
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_seconds: 60,
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
            database_path: self.data_dir.join("keyward.db"),
            audit_dir: self.data_dir.join("audit"),
            checkpoint_interval: Duration::from_secs(self.audit.checkpoint_interval_seconds),
            monitor: (self.revocation.monitor_interval_seconds > 0).then(|| MonitorPolicy {
                interval: Duration::from_secs(self.revocation.monitor_interval_seconds),
                max_checks_per_second: self.revocation.monitor_max_checks_per_second,
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
            tls,
            reload_interval: Duration::from_secs(self.tls.reload_interval_seconds),
            policy_files,
            default_policies_dir: self.authz == AuthzConfig::default(),
            #[cfg(feature = "aws")]
            aws_kms: self.aws_kms.clone(),
        })
    }
}

/// Top-level keys of [`Config`], which `KEYWARD_*` environment variables may set.
const CONFIG_SECTIONS: &[&str] = &[
    "listen",
    "data_dir",
    "max_plaintext_bytes",
    "cache",
    "rotation",
    "local_kms",
    "audit",
    "revocation",
    "tls",
    "authz",
    #[cfg(feature = "aws")]
    "aws_kms",
];

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
    pub database_path: PathBuf,
    /// The audit signing and identifier keys.
    pub audit_dir: PathBuf,
    pub checkpoint_interval: Duration,
    /// The key-state monitor, if enabled.
    pub monitor: Option<MonitorPolicy>,
    pub local_kms_dir: PathBuf,
    pub max_plaintext_bytes: usize,
    pub cache_ttl: Duration,
    pub max_tenant_keys: u64,
    pub max_deks: u64,
    pub rotation: RotationPolicy,
    /// Mutual TLS; `None` is development mode (plaintext on loopback, development principal).
    pub tls: Option<TlsFiles>,
    /// How often TLS and policy files are checked for changes.
    pub reload_interval: Duration,
    pub policy_files: PolicyFiles,
    /// `[authz]` was left at its defaults (development mode may then fall back to the
    /// built-in policies when `./policies` does not exist).
    pub default_policies_dir: bool,
    #[cfg(feature = "aws")]
    pub aws_kms: keyward_kms_aws::AwsKmsConfig,
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
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn defaults_resolve() {
        let s = Config::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.database_path, PathBuf::from("./keyward-data/keyward.db"));
        assert_eq!(s.local_kms_dir, PathBuf::from("./keyward-data/local-kms"));
        assert_eq!(s.cache_ttl, Duration::from_secs(300));
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
