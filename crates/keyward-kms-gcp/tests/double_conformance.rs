//! The provider conformance kit (the suite every provider passes) against the unmodified
//! official Cloud KMS client talking to the test double.
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::conformance::{self, Harness};
use keyward_kms::{KeyProvider, KeyRef};
use keyward_kms_gcp::GcpKmsProvider;
use keyward_test_support::gcp::KmsDouble;

/// The second key the kit's `wrong_key` check unwraps with (created by each test).
const OTHER_KEY: &str = "kek-other";

struct DoubleHarness {
    kms: KmsDouble,
    provider: Arc<GcpKmsProvider>,
    key: KeyRef,
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
        KmsDouble::key_ref("no-such-key")
    }

    fn other_key(&self) -> KeyRef {
        KmsDouble::key_ref(OTHER_KEY)
    }

    // The double applies a state change to the next request: nothing to poll.
    async fn disable(&self, key: &KeyRef) {
        self.kms.disable_primary(key);
    }

    async fn enable(&self, key: &KeyRef) {
        self.kms.enable_primary(key);
    }
}

#[tokio::test]
async fn gcp_provider_passes_the_conformance_kit_on_the_double() {
    let kms = KmsDouble::start();
    let provider = Arc::new(kms.provider().await);
    let key = kms.create_key("kek-conformance");
    kms.create_key(OTHER_KEY);
    // The kit's missing-key check needs Cloud KMS to say NOT_FOUND, which it says only to a
    // caller that may read the key ring (without, it is PERMISSION_DENIED: tests/provider.rs).
    kms.set_key_ring_viewer(true);
    let h = DoubleHarness { kms, provider, key };
    conformance::run_all(&h).await;
    // The kit really went through the double.
    assert!(h.kms.calls(&h.key, "encrypt") >= 10);
    assert!(h.kms.calls(&h.key, "decrypt") >= 10);
    assert!(h.kms.calls(&h.key, "get") >= 2);
}

#[tokio::test]
async fn conformance_kit_passes_after_a_rotation() {
    let kms = KmsDouble::start();
    let provider = Arc::new(kms.provider().await);
    let key = kms.create_key("kek-rotated");
    let v2 = kms.rotate(&key);
    assert!(v2.ends_with("/cryptoKeyVersions/2"), "{v2}");
    kms.create_key(OTHER_KEY);
    // The kit's missing-key check needs Cloud KMS to say NOT_FOUND, which it says only to a
    // caller that may read the key ring (without, it is PERMISSION_DENIED: tests/provider.rs).
    kms.set_key_ring_viewer(true);
    let h = DoubleHarness { kms, provider, key };
    conformance::run_all(&h).await;
}
