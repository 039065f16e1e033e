//! What the unit tests of several modules share.

use std::sync::Arc;

use keyward_kms::ProviderRegistry;

/// Every provider factory, as the shipped binary registers them
/// (crates/keyward-cli/src/providers.rs): for the configuration's provider sections
/// (`config/tests.rs`) and RegisterKey's key references (`api/proptests.rs`, `api/fuzzing.rs`).
pub(crate) fn test_registry() -> ProviderRegistry {
    ProviderRegistry::default()
        .with(Arc::new(keyward_kms_aws::AwsKmsFactory))
        .with(Arc::new(keyward_kms_pkcs11::Pkcs11Factory))
        .with(Arc::new(keyward_kms_gcp::GcpKmsFactory))
        .with(Arc::new(keyward_kms_azure::AzureKeyVaultFactory))
        .with_event_source(Arc::new(keyward_kms_aws::AwsEventsFactory))
}
