//! The provider conformance kit (the suite every provider passes) against a real SoftHSM2 token.
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::conformance::{self, Harness};
use keyward_kms::{KeyProvider, KeyRef};
use keyward_kms_pkcs11::Pkcs11Provider;
use keyward_test_support::pkcs11::SoftHsm;

/// The second key the kit's `wrong_key` check unwraps with (created by each test).
const OTHER_KEY: &str = "kek-other";

struct SoftHsmHarness {
    hsm: SoftHsm,
    provider: Arc<Pkcs11Provider>,
    key: KeyRef,
}

#[async_trait]
impl Harness for SoftHsmHarness {
    fn provider(&self) -> Arc<dyn KeyProvider> {
        self.provider.clone()
    }

    fn usable_key(&self) -> KeyRef {
        self.key.clone()
    }

    fn missing_key(&self) -> KeyRef {
        SoftHsm::key_ref("no-such-key")
    }

    fn other_key(&self) -> KeyRef {
        SoftHsm::key_ref(OTHER_KEY)
    }

    // C_SetAttributeValue is effective for the next call on every session: nothing to poll.
    async fn disable(&self, key: &KeyRef) {
        self.hsm.disable_key(key);
    }

    async fn enable(&self, key: &KeyRef) {
        self.hsm.enable_key(key);
    }
}

#[tokio::test]
async fn pkcs11_provider_passes_the_conformance_kit_on_softhsm2() {
    let Some(hsm) = SoftHsm::isolate("pkcs11_provider_passes_the_conformance_kit_on_softhsm2")
    else {
        return;
    };
    let provider = Arc::new(hsm.provider().await);
    let key = hsm.create_key("kek-conformance");
    hsm.create_key(OTHER_KEY);
    let h = SoftHsmHarness { hsm, provider, key };
    conformance::run_all(&h).await;
}

#[tokio::test]
async fn conformance_kit_passes_with_an_id_only_reference() {
    let Some(hsm) = SoftHsm::isolate("conformance_kit_passes_with_an_id_only_reference") else {
        return;
    };
    let provider = Arc::new(hsm.provider().await);
    hsm.create_key("kek-by-id");
    let key: KeyRef = "pkcs11:token=keyward-test;id=%6b%65%6b-by-id"
        .parse()
        .unwrap();
    hsm.create_key(OTHER_KEY);
    let h = SoftHsmHarness { hsm, provider, key };
    conformance::run_all(&h).await;
}
