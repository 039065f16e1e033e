//! The server's own sections of `keyward.toml`, as written (docs/configuration.md); each is
//! checked and resolved by [`super::Config::resolve`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// `[audit.siem]`: the SIEM feed, committed records as JSON Lines (`crate::siem`); off
    /// when absent.
    pub siem: Option<SiemConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_seconds: 60,
            keys_dir: None,
            siem: None,
        }
    }
}

/// `[audit.siem]`: committed audit records streamed to a rotated JSON Lines file
/// (docs/observability.md, "SIEM feed").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiemConfig {
    /// The file written (required); rotated files are `<path>.1` … `<path>.<files_kept>`.
    pub path: PathBuf,
    /// Rotate before the file would pass this size.
    #[serde(default = "SiemConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "SiemConfig::default_files_kept")]
    pub files_kept: u32,
    /// How often the store is asked for new records once the feed has caught up.
    #[serde(default = "SiemConfig::default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

impl SiemConfig {
    fn default_max_bytes() -> u64 {
        100 * 1024 * 1024
    }
    fn default_files_kept() -> u32 {
        5
    }
    fn default_poll_interval_ms() -> u64 {
        1000
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
    /// Time between two key-state checks (a canary unwrap) of each binding whose tenant key some
    /// replica holds; 0 disables the monitor (revocation is then still bounded by
    /// cache.ttl_seconds).
    pub monitor_interval_seconds: u64,
    /// The budget: most key-state checks (KMS calls) this replica starts per second. The
    /// replicas share the schedule, so the fleet's budget is the sum of theirs.
    pub monitor_max_checks_per_second: u32,
    /// Most key-state checks in flight at once on this replica, per provider kind.
    pub monitor_max_concurrent_checks: u32,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            monitor_interval_seconds: 60,
            monitor_max_checks_per_second: crate::keyring::DEFAULT_CHECKS_PER_SECOND,
            monitor_max_concurrent_checks: crate::keyring::DEFAULT_CONCURRENT_CHECKS,
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
