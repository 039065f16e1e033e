//! The provider conformance kit (the suite every provider passes) against AWS KMS as emulated by
//! moto with AWS's key-state enforcement (`tests/kms-emulator/keyward_moto.py`).
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::conformance::{self, Harness};
use keyward_kms::{KeyProvider, KeyRef};
use keyward_kms_aws::AwsKmsProvider;
use keyward_test_support::aws::{ACCOUNT, MotoServer, REGION, key_ref};

struct MotoHarness {
    moto: MotoServer,
    provider: Arc<AwsKmsProvider>,
    key_arn: String,
    other_arn: String,
}

#[async_trait]
impl Harness for MotoHarness {
    fn provider(&self) -> Arc<dyn KeyProvider> {
        self.provider.clone()
    }

    fn usable_key(&self) -> KeyRef {
        key_ref(&self.key_arn)
    }

    fn missing_key(&self) -> KeyRef {
        key_ref(&format!(
            "arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-1111-2222-3333-444444444444"
        ))
    }

    fn other_key(&self) -> KeyRef {
        key_ref(&self.other_arn)
    }

    // moto applies state changes immediately; on AWS they are effective at once as well
    // (DisableKey is synchronous), so there is nothing to poll for.
    async fn disable(&self, key: &KeyRef) {
        self.moto.disable_key(key.id()).await;
    }

    async fn enable(&self, key: &KeyRef) {
        self.moto.enable_key(key.id()).await;
    }
}

#[tokio::test]
async fn aws_kms_provider_passes_the_conformance_kit_on_moto() {
    let moto = MotoServer::start();
    let provider = Arc::new(moto.provider().await);
    let key_arn = moto.create_symmetric_key().await;
    let other_arn = moto.create_symmetric_key().await;
    let h = MotoHarness {
        moto,
        provider,
        key_arn,
        other_arn,
    };
    conformance::run_all(&h).await;
}
