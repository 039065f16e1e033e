//! The key providers compiled into this binary: one line per provider feature. The server names
//! no provider; it is handed this registry (docs/adr/0010-provider-factories.md).

use keyward_kms::ProviderRegistry;

/// Every provider factory this build has, in the order their sections are documented, and the
/// key-event sources.
pub(crate) fn registry() -> ProviderRegistry {
    let registry = ProviderRegistry::default();
    #[cfg(feature = "aws")]
    let registry = registry
        .with(std::sync::Arc::new(keyward_kms_aws::AwsKmsFactory))
        // `[aws_events]`: KMS key events from an SQS queue (docs/adr/0013-key-event-sources.md).
        .with_event_source(std::sync::Arc::new(keyward_kms_aws::AwsEventsFactory));
    #[cfg(feature = "pkcs11")]
    let registry = registry.with(std::sync::Arc::new(keyward_kms_pkcs11::Pkcs11Factory));
    #[cfg(feature = "gcp")]
    let registry = registry.with(std::sync::Arc::new(keyward_kms_gcp::GcpKmsFactory));
    #[cfg(feature = "azure")]
    let registry = registry.with(std::sync::Arc::new(keyward_kms_azure::AzureKeyVaultFactory));
    registry
}
