//! [`AzureKeyVaultFactory`]: how the server learns of this provider
//! (docs/adr/0010-provider-factories.md): the `[azure]` section, the registration syntax (a Key
//! Vault or Managed HSM key id), and building an [`AzureKeyVaultProvider`].

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::{
    ConfigSection, ConfigSectionError, ConfiguredProvider, InvalidKeyRef, KeyProvider, KeyRef,
    KeyRefFields, ProviderError, ProviderFactory, ProviderKind, configure_if_present,
};

use crate::{AzureKeyId, AzureKeyVaultConfig, AzureKeyVaultProvider};

/// Azure Key Vault and Managed HSM, as the server's provider registry sees them. Configured only
/// by an `[azure]` section (docs/providers/azure.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct AzureKeyVaultFactory;

impl ProviderFactory for AzureKeyVaultFactory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AzureKeyVault
    }

    fn config_section(&self) -> &'static str {
        "azure"
    }

    fn configure(
        &self,
        section: Option<&ConfigSection>,
    ) -> Result<Option<Arc<dyn ConfiguredProvider>>, ConfigSectionError> {
        configure_if_present::<AzureKeyVaultConfig>(section)
    }

    /// A key id (docs/onboarding/azure.md), from the `key_id` field.
    fn parse_key_ref(&self, fields: &KeyRefFields<'_>) -> Result<KeyRef, InvalidKeyRef> {
        let key_id = fields.get("key_id");
        if key_id.is_empty() {
            return Err(InvalidKeyRef::field("key_id", "must not be empty"));
        }
        let parsed =
            AzureKeyId::parse(key_id).map_err(|e| InvalidKeyRef::field("key_id", e.to_string()))?;
        Ok(KeyRef::new(ProviderKind::AzureKeyVault, parsed.to_string()))
    }
}

#[async_trait]
impl ConfiguredProvider for AzureKeyVaultConfig {
    async fn build(&self) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(AzureKeyVaultProvider::new(self.clone())?))
    }
}
