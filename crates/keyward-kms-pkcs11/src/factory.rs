//! [`Pkcs11Factory`]: how the server learns of this provider (docs/adr/0010-provider-factories.md):
//! the `[pkcs11]` section, the registration syntax (a `pkcs11:` URI), and building a
//! [`Pkcs11Provider`].

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::{
    ConfigSection, ConfigSectionError, ConfiguredProvider, InvalidKeyRef, KeyProvider, KeyRef,
    KeyRefFields, ProviderError, ProviderFactory, ProviderKind, configure_if_present,
};

use crate::{Pkcs11Config, Pkcs11KeyUri, Pkcs11Provider};

/// A PKCS#11 HSM token, as the server's provider registry sees it. Configured only by a
/// `[pkcs11]` section (docs/providers/pkcs11.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pkcs11Factory;

impl ProviderFactory for Pkcs11Factory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Pkcs11
    }

    fn config_section(&self) -> &'static str {
        "pkcs11"
    }

    fn configure(
        &self,
        section: Option<&ConfigSection>,
    ) -> Result<Option<Arc<dyn ConfiguredProvider>>, ConfigSectionError> {
        configure_if_present::<Pkcs11Config>(section)
    }

    /// A `pkcs11:` URI naming the key (docs/onboarding/pkcs11.md), from the `uri` field.
    fn parse_key_ref(&self, fields: &KeyRefFields<'_>) -> Result<KeyRef, InvalidKeyRef> {
        let uri = fields.get("uri");
        if uri.is_empty() {
            return Err(InvalidKeyRef::field("uri", "must not be empty"));
        }
        let parsed = Pkcs11KeyUri::from_key_ref_id(uri)
            .map_err(|e| InvalidKeyRef::field("uri", e.to_string()))?;
        Ok(KeyRef::new(ProviderKind::Pkcs11, parsed.to_string()))
    }
}

#[async_trait]
impl ConfiguredProvider for Pkcs11Config {
    async fn build(&self) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(Pkcs11Provider::new(self.clone()).await?))
    }
}
