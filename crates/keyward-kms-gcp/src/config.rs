//! [`GcpKmsConfig`]: the `[gcp]` section of the server configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_kms::{ErrorKind, ProviderError};

/// How Keyward reaches Google Cloud KMS.
///
/// Credentials are always explicit: Keyward never falls back to Application Default Credentials,
/// `GOOGLE_APPLICATION_CREDENTIALS` or the GCE/GKE metadata server, so that which identity
/// unwraps customers' tenant keys is written in this configuration and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcpKmsConfig {
    /// The Cloud KMS endpoint. Default `https://cloudkms.googleapis.com` (Google's global
    /// endpoint); set it for a regional endpoint (`https://cloudkms.<region>.rep.googleapis.com`),
    /// Private Service Connect, or the test double (`http://127.0.0.1:<port>`, with anonymous
    /// credentials only).
    pub endpoint: Option<String>,
    /// Which identity Keyward authenticates as. Required.
    pub credentials: Option<GcpCredentials>,
    /// The IAM member customers must grant the key roles to, shown in onboarding remediation:
    /// e.g. `serviceAccount:keyward@my-project.iam.gserviceaccount.com`. Default: derived from
    /// the service-account key file (`client_email`) or the external-account file's
    /// impersonated service account; otherwise a placeholder.
    pub member: Option<String>,
    /// The longest one Cloud KMS call may take, retries included, in milliseconds; past it the
    /// caller gets a `Timeout` error. Default 5000.
    pub call_timeout_ms: u64,
    /// How many attempts one call may make when Cloud KMS answers `UNAVAILABLE` (retried with
    /// exponential backoff from 50 ms, within `call_timeout_ms`). 1 = no retry. Default 3.
    pub max_attempts: u32,
}

/// The identity Keyward uses towards Cloud KMS.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GcpCredentials {
    /// A service-account key file (JSON, `"type": "service_account"`). It holds a private key:
    /// it must not be readable by group or others.
    ServiceAccount {
        /// The key file.
        file: PathBuf,
    },
    /// An external-account (workload identity federation) credential configuration file
    /// (JSON, `"type": "external_account"`), e.g. from `gcloud iam workload-identity-pools
    /// create-cred-config`.
    ExternalAccount {
        /// The credential configuration file.
        file: PathBuf,
    },
    /// No credentials at all. Only for the test double on a loopback `http://` endpoint:
    /// rejected for any other endpoint.
    Anonymous,
}

impl Default for GcpKmsConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            credentials: None,
            member: None,
            call_timeout_ms: 5000,
            max_attempts: 3,
        }
    }
}

/// Google's Cloud KMS endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://cloudkms.googleapis.com";

/// The OAuth scope Keyward asks for: Cloud KMS only.
pub(crate) const KMS_SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";

fn misconfigured(msg: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Misconfigured, msg)
}

/// A credentials file, read and checked.
#[derive(Debug)]
pub(crate) enum LoadedCredentials {
    ServiceAccount(serde_json::Value),
    ExternalAccount(serde_json::Value),
    Anonymous,
}

impl GcpKmsConfig {
    /// The endpoint calls go to.
    pub fn endpoint_or_default(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    }

    /// The per-call deadline.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// Checks the values and reads the credentials file.
    pub(crate) fn validate_and_load(&self) -> Result<LoadedCredentials, ProviderError> {
        if self.call_timeout_ms == 0 {
            return Err(misconfigured("gcp.call_timeout_ms must be positive"));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(misconfigured(format!(
                "gcp.max_attempts is {}; it must be 1 to 10",
                self.max_attempts
            )));
        }
        let endpoint = self.endpoint_or_default();
        let plain_loopback = is_loopback_http(endpoint);
        if !endpoint.starts_with("https://") && !plain_loopback {
            return Err(misconfigured(format!(
                "gcp.endpoint '{endpoint}' must be an https:// URL (plain http:// is accepted only on 127.0.0.1/localhost, for the test double)"
            )));
        }
        let Some(credentials) = &self.credentials else {
            return Err(misconfigured(
                "gcp.credentials is not set: Keyward never uses the default credential chain or the metadata server; \
                 set credentials = { kind = \"service-account\", file = \"/path/key.json\" } or \
                 { kind = \"external-account\", file = \"/path/cred-config.json\" } \
                 (kind = \"anonymous\" only for the test double)",
            ));
        };
        match credentials {
            GcpCredentials::ServiceAccount { file } => {
                check_private(file)?;
                let json = read_json(file, "service_account")?;
                Ok(LoadedCredentials::ServiceAccount(json))
            }
            GcpCredentials::ExternalAccount { file } => {
                let json = read_json(file, "external_account")?;
                Ok(LoadedCredentials::ExternalAccount(json))
            }
            GcpCredentials::Anonymous => {
                if !plain_loopback {
                    return Err(misconfigured(format!(
                        "gcp.credentials kind = \"anonymous\" is only for the test double on an http://127.0.0.1 endpoint, not {endpoint}"
                    )));
                }
                Ok(LoadedCredentials::Anonymous)
            }
        }
    }

    /// The IAM member to name in remediation text.
    pub(crate) fn member_for(&self, loaded: &LoadedCredentials) -> String {
        if let Some(m) = &self.member {
            return m.clone();
        }
        let sa = match loaded {
            LoadedCredentials::ServiceAccount(json) => json
                .get("client_email")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            // ".../serviceAccounts/NAME@PROJECT.iam.gserviceaccount.com:generateAccessToken"
            LoadedCredentials::ExternalAccount(json) => json
                .get("service_account_impersonation_url")
                .and_then(|v| v.as_str())
                .and_then(|url| url.rsplit('/').next())
                .and_then(|last| last.split(':').next())
                .filter(|email| email.contains('@'))
                .map(str::to_owned),
            LoadedCredentials::Anonymous => None,
        };
        sa.map_or_else(
            || "serviceAccount:<Keyward's service account>".to_owned(),
            |email| format!("serviceAccount:{email}"),
        )
    }
}

fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    matches!(host, "127.0.0.1" | "localhost")
}

fn check_private(path: &Path) -> Result<(), ProviderError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            misconfigured(format!("gcp.credentials file {shown} cannot be read")).with_source(e)
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(misconfigured(format!(
                "gcp.credentials file {shown} holds a private key and has mode {:o}; it must not be accessible to group or others",
                mode & 0o777
            ))
            .with_remediation(format!("chmod 600 {shown}")));
        }
    }
    Ok(())
}

fn read_json(path: &Path, expected_type: &str) -> Result<serde_json::Value, ProviderError> {
    let shown = path.display();
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        misconfigured(format!("gcp.credentials file {shown} cannot be read")).with_source(e)
    })?);
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        misconfigured(format!("gcp.credentials file {shown} is not JSON")).with_source(e)
    })?;
    let found = json.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if found != expected_type {
        return Err(misconfigured(format!(
            "gcp.credentials file {shown} has \"type\": \"{found}\", expected \"{expected_type}\""
        )));
    }
    Ok(json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keyward-gcp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn serde_names_defaults_and_unknown_fields() {
        let c: GcpKmsConfig = toml::from_str(
            "credentials = { kind = \"service-account\", file = \"/etc/keyward/sa.json\" }\n",
        )
        .unwrap();
        assert_eq!(c.call_timeout_ms, 5000);
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.endpoint_or_default(), DEFAULT_ENDPOINT);
        assert_eq!(
            c.credentials,
            Some(GcpCredentials::ServiceAccount {
                file: "/etc/keyward/sa.json".into()
            })
        );
        let c: GcpKmsConfig = toml::from_str(
            "endpoint = \"http://127.0.0.1:9\"\ncredentials = { kind = \"anonymous\" }\n",
        )
        .unwrap();
        assert_eq!(c.credentials, Some(GcpCredentials::Anonymous));
        let e = toml::from_str::<GcpKmsConfig>("key_file = \"/x\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e =
            toml::from_str::<GcpKmsConfig>("credentials = { kind = \"default\" }\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn missing_credentials_are_rejected_with_a_clear_message() {
        let e = GcpKmsConfig::default().validate_and_load().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("gcp.credentials is not set"), "{e}");
        assert!(
            e.message()
                .contains("never uses the default credential chain")
        );
        assert!(e.message().contains("service-account"));
    }

    #[test]
    fn anonymous_only_on_loopback_http() {
        let mut c = GcpKmsConfig {
            credentials: Some(GcpCredentials::Anonymous),
            ..GcpKmsConfig::default()
        };
        let e = c.validate_and_load().unwrap_err();
        assert!(e.message().contains("only for the test double"), "{e}");
        c.endpoint = Some("http://127.0.0.1:8080".into());
        assert!(matches!(
            c.validate_and_load().unwrap(),
            LoadedCredentials::Anonymous
        ));
        c.endpoint = Some("http://kms.example.com".into());
        let e = c.validate_and_load().unwrap_err();
        assert!(e.message().contains("must be an https:// URL"), "{e}");
        c.endpoint = Some("http://127.0.0.1.example.com/".into());
        assert!(c.validate_and_load().is_err());
    }

    #[test]
    fn bounds_are_checked() {
        let base = GcpKmsConfig {
            endpoint: Some("http://localhost:1".into()),
            credentials: Some(GcpCredentials::Anonymous),
            ..GcpKmsConfig::default()
        };
        let mut c = base.clone();
        c.call_timeout_ms = 0;
        assert!(
            c.validate_and_load()
                .unwrap_err()
                .message()
                .contains("call_timeout_ms")
        );
        let mut c = base;
        c.max_attempts = 0;
        assert!(
            c.validate_and_load()
                .unwrap_err()
                .message()
                .contains("max_attempts")
        );
    }

    #[cfg(unix)]
    #[test]
    fn service_account_file_is_checked_and_names_the_member() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp("sa.json");
        std::fs::write(
            &path,
            r#"{"type":"service_account","client_email":"keyward@p.iam.gserviceaccount.com","private_key":"x"}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = GcpKmsConfig {
            credentials: Some(GcpCredentials::ServiceAccount { file: path.clone() }),
            ..GcpKmsConfig::default()
        };
        let e = c.validate_and_load().unwrap_err();
        assert!(e.remediation().unwrap().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = c.validate_and_load().unwrap();
        assert_eq!(
            c.member_for(&loaded),
            "serviceAccount:keyward@p.iam.gserviceaccount.com"
        );

        std::fs::write(&path, r#"{"type":"authorized_user"}"#).unwrap();
        let e = c.validate_and_load().unwrap_err();
        assert!(e.message().contains("expected \"service_account\""), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn external_account_member_is_the_impersonated_service_account() {
        let path = temp("wif.json");
        std::fs::write(
            &path,
            r#"{"type":"external_account","audience":"//iam.googleapis.com/x","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"https://sts.googleapis.com/v1/token","service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/kw@p.iam.gserviceaccount.com:generateAccessToken","credential_source":{"file":"/var/run/token"}}"#,
        )
        .unwrap();
        let c = GcpKmsConfig {
            credentials: Some(GcpCredentials::ExternalAccount { file: path.clone() }),
            ..GcpKmsConfig::default()
        };
        let loaded = c.validate_and_load().unwrap();
        assert_eq!(
            c.member_for(&loaded),
            "serviceAccount:kw@p.iam.gserviceaccount.com"
        );
        let c = GcpKmsConfig {
            member: Some("principal://x".into()),
            ..c
        };
        assert_eq!(c.member_for(&loaded), "principal://x");
        std::fs::remove_file(&path).unwrap();
    }
}
