//! The customer's own access to their KEK: the provider a tenant key's KEK needs, built from
//! settings the customer controls (their credentials, their endpoint), never Keyward's.
//!
//! Each cloud provider is configured as the Keyward server configures it, by its section of a
//! TOML file (`--config`: `[aws_kms]`, `[pkcs11]`, `[azure]`, `[gcp]`, the keys of
//! docs/configuration.md), built through the provider crate's own factory; the common cases
//! also have flags, which override the file. Only the provider the data key's tenant key needs
//! is built.
//!
//! - AWS KMS needs nothing: credentials from the standard AWS chain (environment, profile, SSO,
//!   instance role), the region from the key ARN; `--aws-endpoint-url` for a VPC/FIPS endpoint
//!   or an emulator. A key reference with Keyward's cross-account role (`?role_arn=…`) is used
//!   without it: the customer calls their own key with their own credentials.
//! - PKCS#11: the vendor's module, the token's label (default: the key URI's `token`), the user
//!   PIN from an environment variable.
//! - Local development keys: the key directory.
//! - Azure Key Vault: an `[azure]` section (credentials, as the server's).
//! - Google Cloud KMS (feature `gcp`): a `[gcp]` section.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use keyward_kms::{
    ConfigSection, ErrorKind, KeyProvider, KeyRef, ProviderError, ProviderFactory, ProviderKind,
};

/// The PIN variable read when neither `--pkcs11-pin-env` nor the `[pkcs11]` section names one.
pub const DEFAULT_PKCS11_PIN_ENV: &str = "KEYWARD_OPEN_PKCS11_PIN";

/// The customer's settings for reaching their KEKs.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    /// Provider sections by name, as read from `--config` (TOML tables as JSON values).
    pub sections: BTreeMap<String, serde_json::Value>,
    /// AWS KMS endpoint override (`[aws_kms] endpoint_url`).
    pub aws_endpoint_url: Option<String>,
    /// The local development provider's key directory.
    pub local_kms_dir: Option<PathBuf>,
    /// The PKCS#11 module (`[pkcs11] module_path`).
    pub pkcs11_module: Option<PathBuf>,
    /// The token's label (`[pkcs11] token_label`; default: the key URI's `token`).
    pub pkcs11_token: Option<String>,
    /// The environment variable holding the user PIN (`[pkcs11] pin_env`).
    pub pkcs11_pin_env: Option<String>,
}

fn misconfigured(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Misconfigured, message)
}

impl ProviderSettings {
    /// Reads the provider sections of a TOML file (other sections are ignored, so a server's
    /// `keyward.toml` works as it is).
    pub fn with_config_toml(mut self, text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, value) in table {
            let value = serde_json::to_value(value).map_err(|e| format!("[{name}]: {e}"))?;
            self.sections.insert(name, value);
        }
        Ok(self)
    }

    /// The provider for a KEK of `kind` named `key_ref` (as the export has it), and the key
    /// reference to call it with.
    pub async fn provider(
        &self,
        kind: ProviderKind,
        key_ref: &str,
    ) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        match kind {
            ProviderKind::Local => {
                let dir = self.local_kms_dir.as_ref().ok_or_else(|| {
                    misconfigured(format!(
                        "the tenant key is wrapped by the local development key {key_ref:?}: \
                         give its key directory with --local-kms-dir"
                    ))
                })?;
                let provider = keyward_kms::local::LocalProvider::open_existing(dir)?;
                Ok((Arc::new(provider), KeyRef::new(kind, key_ref)))
            }
            ProviderKind::AwsKms => self.aws(key_ref).await,
            ProviderKind::Pkcs11 => self.pkcs11(key_ref).await,
            ProviderKind::AzureKeyVault => self.azure(key_ref).await,
            ProviderKind::GcpKms => self.gcp(key_ref).await,
            other => Err(misconfigured(format!(
                "this keyward-open cannot reach {other} keys"
            ))),
        }
    }

    /// Builds a provider through its factory from `section`.
    #[cfg_attr(
        not(any(
            feature = "aws",
            feature = "pkcs11",
            feature = "azure",
            feature = "gcp"
        )),
        allow(
            dead_code,
            reason = "a build without providers (keyward-cli's, for the format) builds none"
        )
    )]
    async fn build(
        factory: &dyn ProviderFactory,
        section: serde_json::Value,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        let name = factory.config_section();
        let configured = factory
            .configure(Some(&ConfigSection::new(name, section)))
            .map_err(|e| misconfigured(e.to_string()))?
            .ok_or_else(|| misconfigured(format!("[{name}] configures no provider")))?;
        configured.build().await
    }

    #[cfg_attr(
        not(any(
            feature = "aws",
            feature = "pkcs11",
            feature = "azure",
            feature = "gcp"
        )),
        allow(
            dead_code,
            reason = "a build without providers (keyward-cli's, for the format) builds none"
        )
    )]
    fn section(&self, name: &str) -> serde_json::Map<String, serde_json::Value> {
        match self.sections.get(name) {
            Some(serde_json::Value::Object(map)) => map.clone(),
            _ => serde_json::Map::new(),
        }
    }

    #[cfg(feature = "aws")]
    async fn aws(&self, key_ref: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        let mut section = self.section("aws_kms");
        if let Some(url) = &self.aws_endpoint_url {
            section.insert("endpoint_url".to_owned(), url.clone().into());
        }
        let mut key: keyward_kms_aws::AwsKeyRef = key_ref.parse()?;
        // Keyward's role into the customer's account is for Keyward's principal only.
        key.role = None;
        let provider = Self::build(&keyward_kms_aws::AwsKmsFactory, section.into()).await?;
        Ok((provider, KeyRef::new(ProviderKind::AwsKms, key.to_string())))
    }

    #[cfg(not(feature = "aws"))]
    async fn aws(&self, _: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        Err(not_built("aws"))
    }

    #[cfg(feature = "pkcs11")]
    async fn pkcs11(&self, key_ref: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        let uri = keyward_kms_pkcs11::Pkcs11KeyUri::from_key_ref_id(key_ref)
            .map_err(|e| misconfigured(format!("key_ref {key_ref:?}: {e}")))?;
        let mut section = self.section("pkcs11");
        if let Some(module) = &self.pkcs11_module {
            section.insert(
                "module_path".to_owned(),
                module.display().to_string().into(),
            );
        }
        if !section.contains_key("module_path") {
            return Err(misconfigured(
                "the tenant key is wrapped by a PKCS#11 key: give the HSM vendor's module with \
                 --pkcs11-module (e.g. /usr/lib/softhsm/libsofthsm2.so)",
            ));
        }
        match (&self.pkcs11_token, &uri.token) {
            (Some(label), _) | (None, Some(label)) => {
                section.insert("token_label".to_owned(), label.clone().into());
            }
            (None, None) if section.contains_key("token_label") => {}
            (None, None) => {
                return Err(misconfigured(
                    "the key's URI names no token: give its label with --pkcs11-token",
                ));
            }
        }
        if let Some(var) = &self.pkcs11_pin_env {
            section.remove("pin_file");
            section.insert("pin_env".to_owned(), var.clone().into());
        } else if !section.contains_key("pin_file") && !section.contains_key("pin_env") {
            section.insert("pin_env".to_owned(), DEFAULT_PKCS11_PIN_ENV.into());
        }
        // One session is plenty for one unwrap.
        section
            .entry("sessions".to_owned())
            .or_insert_with(|| 1.into());
        let provider = Self::build(&keyward_kms_pkcs11::Pkcs11Factory, section.into()).await?;
        Ok((provider, KeyRef::new(ProviderKind::Pkcs11, key_ref)))
    }

    #[cfg(not(feature = "pkcs11"))]
    async fn pkcs11(&self, _: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        Err(not_built("pkcs11"))
    }

    #[cfg(feature = "azure")]
    async fn azure(&self, key_ref: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        if !self.sections.contains_key("azure") {
            return Err(misconfigured(
                "the tenant key is wrapped by an Azure Key Vault key: give --config with an \
                 [azure] section (your credentials, as docs/providers/azure.md describes)",
            ));
        }
        let provider = Self::build(
            &keyward_kms_azure::AzureKeyVaultFactory,
            self.section("azure").into(),
        )
        .await?;
        Ok((provider, KeyRef::new(ProviderKind::AzureKeyVault, key_ref)))
    }

    #[cfg(not(feature = "azure"))]
    async fn azure(&self, _: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        Err(not_built("azure"))
    }

    #[cfg(feature = "gcp")]
    async fn gcp(&self, key_ref: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        if !self.sections.contains_key("gcp") {
            return Err(misconfigured(
                "the tenant key is wrapped by a Google Cloud KMS key: give --config with a [gcp] \
                 section (your credentials, as docs/providers/gcp.md describes)",
            ));
        }
        let provider =
            Self::build(&keyward_kms_gcp::GcpKmsFactory, self.section("gcp").into()).await?;
        Ok((provider, KeyRef::new(ProviderKind::GcpKms, key_ref)))
    }

    #[cfg(not(feature = "gcp"))]
    async fn gcp(&self, _: &str) -> Result<(Arc<dyn KeyProvider>, KeyRef), ProviderError> {
        Err(not_built("gcp"))
    }
}

/// A provider this build was compiled without.
#[allow(dead_code, reason = "unused when every provider feature is on")]
fn not_built(feature: &str) -> ProviderError {
    misconfigured(format!(
        "this keyward-open was built without the `{feature}` feature: rebuild it with \
         `cargo build -p keyward-open --features {feature}`"
    ))
}
