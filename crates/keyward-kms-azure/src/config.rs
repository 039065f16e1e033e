//! [`AzureKeyVaultConfig`]: the `[azure]` section of the server configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use keyward_kms::{ErrorKind, ProviderError};
use zeroize::Zeroizing;

use crate::fresh_token::{FreshTokens, MakeCredential};

/// Microsoft Entra ID in the public cloud.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// How Keyward reaches Azure Key Vault and Managed HSM.
///
/// The credential is always explicit (`credential`): Keyward never falls back to the SDK's
/// default credential chain, so it can never pick up a developer's `az login` or a VM identity
/// by accident.
///
/// ```toml
/// [azure]
/// call_timeout_ms = 5000
/// [azure.credential]
/// kind = "client-secret"            # or "workload-identity", "managed-identity"
/// tenant_id = "00000000-0000-0000-0000-000000000000"
/// client_id = "11111111-1111-1111-1111-111111111111"
/// secret_file = "/run/secrets/keyward-azure-client-secret"   # or secret_env = "VAR_NAME"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureKeyVaultConfig {
    /// Keyward's identity in Microsoft Entra ID. Required.
    pub credential: Option<AzureCredentialConfig>,
    /// The Entra ID authority for client-secret and workload-identity tokens. Default
    /// `https://login.microsoftonline.com`; `https://login.microsoftonline.us` (US Government),
    /// `https://login.chinacloudapi.cn` (China). Must be https.
    pub authority_host: Option<String>,
    /// A PEM file of extra CA certificates to trust besides the system's (a TLS-inspecting
    /// proxy's CA, or the test double's CA).
    pub ca_file: Option<PathBuf>,
    /// Host name → address overrides used instead of DNS, like `curl --resolve` (a private
    /// endpoint without private DNS, or the test double). TLS still verifies the certificate for
    /// the host name. The port of the address is used (URLs of key ids have none).
    pub resolve: BTreeMap<String, SocketAddr>,
    /// The longest one provider call (token, retries and all) may take, in milliseconds.
    /// Default 5000.
    pub call_timeout_ms: u64,
    /// Timeout for establishing a connection, in milliseconds. Default 2000.
    pub connect_timeout_ms: u64,
    /// HTTP attempts per request, including the first, with the SDK's exponential backoff
    /// (retried: 408, 429, 500, 502, 503, 504 and connection errors). Default 2; 1 disables
    /// retries.
    pub max_attempts: u32,
}

impl Default for AzureKeyVaultConfig {
    fn default() -> Self {
        Self {
            credential: None,
            authority_host: None,
            ca_file: None,
            resolve: BTreeMap::new(),
            call_timeout_ms: 5000,
            connect_timeout_ms: 2000,
            max_attempts: 2,
        }
    }
}

/// Keyward's identity in Microsoft Entra ID: exactly one of these, chosen explicitly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AzureCredentialConfig {
    /// An app registration with a client secret. The secret comes from `secret_file` (a file
    /// readable only by Keyward) or the environment variable named by `secret_env` — exactly
    /// one, never inline.
    ClientSecret {
        /// The directory (tenant) id.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// A file holding the secret; one trailing newline is ignored.
        secret_file: Option<PathBuf>,
        /// The name of an environment variable holding the secret.
        secret_env: Option<String>,
    },
    /// Workload identity federation (e.g. AKS): a federated token file exchanged for Entra ID
    /// tokens.
    WorkloadIdentity {
        /// The directory (tenant) id.
        tenant_id: String,
        /// The application (client) id of the federated identity.
        client_id: String,
        /// The projected service-account token file (AKS: `AZURE_FEDERATED_TOKEN_FILE`).
        token_file: PathBuf,
    },
    /// The managed identity of the Azure resource Keyward runs on. Only when chosen here.
    ManagedIdentity {
        /// The client id of a user-assigned identity; `None`: the system-assigned identity.
        client_id: Option<String>,
    },
}

fn misconfigured(msg: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Misconfigured, msg)
}

/// An explicit Azure credential, and how to name its principal in remediation texts.
pub(crate) struct Built {
    pub(crate) credential: Arc<dyn TokenCredential>,
    pub(crate) principal: String,
    pub(crate) http: reqwest::Client,
}

impl AzureKeyVaultConfig {
    /// Checks the values that the SDK would otherwise reject late or silently misuse.
    pub fn validate(&self) -> Result<(), ProviderError> {
        if self.credential.is_none() {
            return Err(misconfigured(
                "azure.credential is not set: Keyward never uses Azure's default credential chain; \
                 set [azure.credential] kind = \"client-secret\" (tenant_id, client_id, secret_file or secret_env), \
                 \"workload-identity\" (tenant_id, client_id, token_file) or \"managed-identity\" (optional client_id)",
            ));
        }
        if let Some(host) = &self.authority_host
            && !host.starts_with("https://")
        {
            return Err(misconfigured(format!(
                "azure.authority_host '{host}' must be an https URL, e.g. {PUBLIC_AUTHORITY_HOST}"
            )));
        }
        if self.call_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(misconfigured(
                "azure.call_timeout_ms and azure.connect_timeout_ms must be positive",
            ));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(misconfigured(format!(
                "azure.max_attempts is {}; it must be 1 to 10",
                self.max_attempts
            )));
        }
        if let Some(host) = self
            .resolve
            .keys()
            .find(|h| h.is_empty() || h.contains(['/', ':']))
        {
            return Err(misconfigured(format!(
                "azure.resolve key '{host}' must be a bare host name"
            )));
        }
        match &self.credential {
            Some(AzureCredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                ..
            })
            | Some(AzureCredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                ..
            }) if tenant_id.is_empty() || client_id.is_empty() => Err(misconfigured(
                "azure.credential: tenant_id and client_id must not be empty",
            )),
            _ => Ok(()),
        }
    }

    /// The per-call timeout.
    pub(crate) fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// The SDK client options: our HTTP client as transport, our retry policy, our authority.
    pub(crate) fn client_options(&self, http: &reqwest::Client) -> ClientOptions {
        let retry = if self.max_attempts <= 1 {
            RetryOptions::none()
        } else {
            let exp = ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(100),
                max_retries: self.max_attempts - 1,
                max_delay: azure_core::time::Duration::seconds(1),
                max_total_elapsed: azure_core::time::Duration::milliseconds(
                    i64::try_from(self.call_timeout_ms).unwrap_or(i64::MAX),
                ),
            };
            RetryOptions::exponential(exp)
        };
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self
            .authority_host
            .clone()
            .unwrap_or_else(|| PUBLIC_AUTHORITY_HOST.to_owned());
        ClientOptions {
            transport: Some(Transport::new(Arc::new(http.clone()))),
            retry,
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..ClientOptions::default()
        }
    }

    fn http_client(&self) -> Result<reqwest::Client, ProviderError> {
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            .timeout(self.call_timeout())
            // Key Vault and Entra ID do not redirect; a redirect is not followed.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                misconfigured(format!("azure.ca_file {} cannot be read", path.display()))
                    .with_source(e)
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                misconfigured(format!(
                    "azure.ca_file {} is not a PEM certificate bundle",
                    path.display()
                ))
                .with_source(e)
            })?;
            b = b.tls_certs_merge(certs);
        }
        for (host, addr) in &self.resolve {
            b = b.resolve(host, *addr);
        }
        b.build()
            .map_err(|e| misconfigured("could not build the HTTPS client for Azure").with_source(e))
    }

    /// Validates, reads the secret and builds the credential and HTTP client.
    pub(crate) fn build(&self) -> Result<Built, ProviderError> {
        self.validate()?;
        let http = self.http_client()?;
        let options = self.client_options(&http);
        let sdk = |e: azure_core::Error| {
            misconfigured("the Azure credential configuration was rejected").with_source(e)
        };
        // Every variant is a factory: `FreshTokens` builds a new SDK credential per token request
        // (fresh_token.rs says why).
        let (make, principal): (MakeCredential, String) = match &self.credential {
            None => return Err(misconfigured("azure.credential is not set")),
            Some(AzureCredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                secret_file,
                secret_env,
            }) => {
                let secret = read_secret(secret_file.as_deref(), secret_env.as_deref())?;
                let (tenant_id, client_id_, options) =
                    (tenant_id.clone(), client_id.clone(), options.clone());
                let make: MakeCredential = Arc::new(move || {
                    let c: Arc<dyn TokenCredential> = ClientSecretCredential::new(
                        &tenant_id,
                        client_id_.clone(),
                        Secret::new(secret.to_string()),
                        Some(ClientSecretCredentialOptions {
                            client_options: options.clone(),
                        }),
                    )?;
                    Ok(c)
                });
                (make, client_id.clone())
            }
            Some(AzureCredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            }) => {
                let (tenant_id, client_id_, token_file, options) = (
                    tenant_id.clone(),
                    client_id.clone(),
                    token_file.clone(),
                    options.clone(),
                );
                let make: MakeCredential = Arc::new(move || {
                    let o = WorkloadIdentityCredentialOptions {
                        credential_options: ClientAssertionCredentialOptions {
                            client_options: options.clone(),
                        },
                        tenant_id: Some(tenant_id.clone()),
                        client_id: Some(client_id_.clone()),
                        token_file_path: Some(token_file.clone()),
                    };
                    let c: Arc<dyn TokenCredential> = WorkloadIdentityCredential::new(Some(o))?;
                    Ok(c)
                });
                (make, client_id.clone())
            }
            Some(AzureCredentialConfig::ManagedIdentity { client_id }) => {
                let (id, options) = (client_id.clone(), options.clone());
                let make: MakeCredential = Arc::new(move || {
                    let o = ManagedIdentityCredentialOptions {
                        user_assigned_id: id.clone().map(UserAssignedId::ClientId),
                        client_options: options.clone(),
                    };
                    let c: Arc<dyn TokenCredential> = ManagedIdentityCredential::new(Some(o))?;
                    Ok(c)
                });
                (
                    make,
                    client_id.clone().unwrap_or_else(|| {
                        "<principal id of Keyward's system-assigned managed identity>".to_owned()
                    }),
                )
            }
        };
        let credential: Arc<dyn TokenCredential> = FreshTokens::new(make).map_err(sdk)?;
        Ok(Built {
            credential,
            principal,
            http,
        })
    }
}

fn read_secret(file: Option<&Path>, env: Option<&str>) -> Result<Zeroizing<String>, ProviderError> {
    let raw = Zeroizing::new(match (file, env) {
        (Some(path), None) => read_secret_file(path)?,
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            misconfigured(format!(
                "azure.credential.secret_env names the environment variable '{var}', which is not set (or not UTF-8)"
            ))
        })?,
        (None, None) => {
            return Err(misconfigured(
                "azure.credential: no client secret source; set secret_file (a file readable only by Keyward) or secret_env (an environment variable name)",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(misconfigured(
                "azure.credential: both secret_file and secret_env are set; set exactly one",
            ));
        }
    });
    let trimmed = raw.strip_suffix('\n').unwrap_or(&raw);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(misconfigured(
            "azure.credential: the client secret is empty",
        ));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

fn read_secret_file(path: &Path) -> Result<String, ProviderError> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| {
            misconfigured(format!(
                "azure.credential.secret_file {shown} cannot be read"
            ))
            .with_source(e)
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(misconfigured(format!(
                "azure.credential.secret_file {shown} has mode {:o}; it must not be accessible to group or others",
                mode & 0o777
            ))
            .with_remediation(format!("chmod 600 {shown}")));
        }
    }
    std::fs::read_to_string(path).map_err(|e| {
        misconfigured(format!(
            "azure.credential.secret_file {shown} cannot be read as UTF-8 text"
        ))
        .with_source(e)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn secret_env(var: &str) -> AzureKeyVaultConfig {
        AzureKeyVaultConfig {
            credential: Some(AzureCredentialConfig::ClientSecret {
                tenant_id: "t".into(),
                client_id: "c".into(),
                secret_file: None,
                secret_env: Some(var.into()),
            }),
            ..AzureKeyVaultConfig::default()
        }
    }

    #[test]
    fn serde_names_defaults_and_unknown_fields() {
        let c: AzureKeyVaultConfig = toml::from_str(
            "[credential]\nkind = \"client-secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nsecret_file = \"/s\"\n",
        )
        .unwrap();
        assert_eq!(
            (c.call_timeout_ms, c.connect_timeout_ms, c.max_attempts),
            (5000, 2000, 2)
        );
        assert!(matches!(
            c.credential,
            Some(AzureCredentialConfig::ClientSecret { ref secret_file, .. }) if secret_file.as_deref() == Some(Path::new("/s"))
        ));
        let c: AzureKeyVaultConfig = toml::from_str(
            "[credential]\nkind = \"workload-identity\"\ntenant_id = \"t\"\nclient_id = \"c\"\ntoken_file = \"/var/run/token\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.credential,
            Some(AzureCredentialConfig::WorkloadIdentity { .. })
        ));
        let c: AzureKeyVaultConfig =
            toml::from_str("[credential]\nkind = \"managed-identity\"\n").unwrap();
        assert_eq!(
            c.credential,
            Some(AzureCredentialConfig::ManagedIdentity { client_id: None })
        );
        // A secret inline is not a field.
        let e = toml::from_str::<AzureKeyVaultConfig>(
            "[credential]\nkind = \"client-secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nsecret = \"hunter2\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = toml::from_str::<AzureKeyVaultConfig>("[credential]\nkind = \"default\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn a_config_without_credentials_is_rejected_with_a_clear_message() {
        let e = AzureKeyVaultConfig::default().validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("azure.credential is not set"), "{e}");
        assert!(
            e.message()
                .contains("never uses Azure's default credential chain"),
            "{e}"
        );
        assert!(AzureKeyVaultConfig::default().build().is_err());
    }

    #[test]
    fn validation_errors() {
        let mut c = secret_env("X");
        c.authority_host = Some("http://login".into());
        assert!(c.validate().unwrap_err().message().contains("https"));
        let mut c = secret_env("X");
        c.max_attempts = 0;
        assert!(c.validate().unwrap_err().message().contains("max_attempts"));
        let mut c = secret_env("X");
        c.call_timeout_ms = 0;
        assert!(c.validate().unwrap_err().message().contains("positive"));
        let e = secret_env("KEYWARD_TEST_AZURE_SECRET_SURELY_UNSET")
            .build()
            .err()
            .unwrap();
        assert!(e.message().contains("not set"), "{e}");
        let mut c = secret_env("X");
        c.credential = Some(AzureCredentialConfig::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            secret_file: None,
            secret_env: None,
        });
        assert!(
            c.build()
                .err()
                .unwrap()
                .message()
                .contains("no client secret source")
        );
    }

    #[cfg(unix)]
    #[test]
    fn secret_file_permissions_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(Some(&path), None).unwrap_err();
        assert!(e.remediation().unwrap().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(Some(&path), None).unwrap().as_str(), "s3cret");
    }
}
