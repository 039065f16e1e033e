//! The provider conformance kit (the suite every provider passes), run by the unmodified
//! provider and Azure SDK client against the Key Vault test double (there is no emulator).
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::conformance::{self, Harness};
use keyward_kms::{KeyProvider, KeyRef};
use keyward_kms_azure::{AzureKeyVaultProvider, VaultKind};
use keyward_test_support::azure::KeyVaultDouble;

/// The second key the kit's `wrong_key` check unwraps with (created by each test, of the same
/// type as the usable key).
const OTHER_KEY: &str = "kek-other";

struct DoubleHarness {
    double: KeyVaultDouble,
    provider: Arc<AzureKeyVaultProvider>,
    key: KeyRef,
    name: &'static str,
}

#[async_trait]
impl Harness for DoubleHarness {
    fn provider(&self) -> Arc<dyn KeyProvider> {
        self.provider.clone()
    }

    fn usable_key(&self) -> KeyRef {
        self.key.clone()
    }

    fn missing_key(&self) -> KeyRef {
        self.double.key_ref("no-such-key")
    }

    fn other_key(&self) -> KeyRef {
        self.double.key_ref(OTHER_KEY)
    }

    // The double applies attribute changes to the next request: nothing to poll.
    async fn disable(&self, _key: &KeyRef) {
        self.double.set_enabled(self.name, false);
    }

    async fn enable(&self, _key: &KeyRef) {
        self.double.set_enabled(self.name, true);
    }
}

#[tokio::test]
async fn rsa_key_in_a_key_vault_passes_the_conformance_kit() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let provider = Arc::new(double.provider());
    let key = double.create_rsa_key("kek-rsa");
    double.create_rsa_key(OTHER_KEY);
    let h = DoubleHarness {
        double,
        provider,
        key,
        name: "kek-rsa",
    };
    conformance::run_all(&h).await;
}

#[tokio::test]
async fn aes_key_in_a_managed_hsm_passes_the_conformance_kit() {
    let double = KeyVaultDouble::start(VaultKind::ManagedHsm).await;
    let provider = Arc::new(double.provider());
    let key = double.create_aes_key("kek-aes");
    double.create_aes_key(OTHER_KEY);
    let h = DoubleHarness {
        double,
        provider,
        key,
        name: "kek-aes",
    };
    conformance::run_all(&h).await;
}

#[tokio::test]
async fn versioned_key_id_with_workload_identity_passes_the_conformance_kit() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let provider = Arc::new(AzureKeyVaultProvider::new(double.workload_identity_config()).unwrap());
    double.create_rsa_key("kek-pinned");
    double.create_rsa_key(OTHER_KEY);
    let version = double.versions("kek-pinned").pop().unwrap();
    let key = KeyRef::new(
        keyward_kms::ProviderKind::AzureKeyVault,
        format!("{}/{version}", double.key_id("kek-pinned")),
    );
    let h = DoubleHarness {
        double,
        provider,
        key,
        name: "kek-pinned",
    };
    conformance::run_all(&h).await;
}
