//! [`GcpKmsFactory`]: how the server learns of this provider (docs/adr/0010-provider-factories.md):
//! the `[gcp]` section, the registration syntax (a CryptoKey resource name), and building a
//! [`GcpKmsProvider`].

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::{
    ConfigSection, ConfigSectionError, ConfiguredProvider, InvalidKeyRef, KeyProvider, KeyRef,
    KeyRefFields, ProviderError, ProviderFactory, ProviderKind, configure_if_present,
};

use crate::{CryptoKeyName, GcpKmsConfig, GcpKmsProvider};

/// Google Cloud KMS, as the server's provider registry sees it. Configured only by a `[gcp]`
/// section (docs/providers/gcp.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct GcpKmsFactory;

impl ProviderFactory for GcpKmsFactory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::GcpKms
    }

    fn config_section(&self) -> &'static str {
        "gcp"
    }

    fn configure(
        &self,
        section: Option<&ConfigSection>,
    ) -> Result<Option<Arc<dyn ConfiguredProvider>>, ConfigSectionError> {
        configure_if_present::<GcpKmsConfig>(section)
    }

    /// A CryptoKey resource name (docs/onboarding/gcp.md), from the `crypto_key` field; a
    /// CryptoKeyVersion name is refused.
    fn parse_key_ref(&self, fields: &KeyRefFields<'_>) -> Result<KeyRef, InvalidKeyRef> {
        let name = fields.get("crypto_key");
        if name.is_empty() {
            return Err(InvalidKeyRef::field("crypto_key", "must not be empty"));
        }
        let parsed = name
            .parse::<CryptoKeyName>()
            .map_err(|e| InvalidKeyRef::field("crypto_key", e.to_string()))?;
        Ok(KeyRef::new(ProviderKind::GcpKms, parsed.to_string()))
    }
}

#[async_trait]
impl ConfiguredProvider for GcpKmsConfig {
    async fn build(&self) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(GcpKmsProvider::new(self.clone()).await?))
    }
}
