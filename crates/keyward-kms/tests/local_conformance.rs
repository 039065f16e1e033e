//! The provider conformance kit run against [`LocalProvider`] in a temporary directory.
//!
//! Needs the `conformance` feature (declared as `required-features` in Cargo.toml); the
//! workspace test command is `cargo test --workspace --all-features`.
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::sync::Arc;

use async_trait::async_trait;
use keyward_kms::conformance::{self, Harness};
use keyward_kms::local::{DEFAULT_KEY_NAME, LocalProvider};
use keyward_kms::{KeyProvider, KeyRef, ProviderKind};
use tempfile::TempDir;

/// The second key the conformance kit's `wrong_key` check unwraps with.
const OTHER_KEY_NAME: &str = "other";

struct LocalHarness {
    provider: Arc<LocalProvider>,
    // Second instance on the same directory, standing in for `keyward key disable` run in
    // another process while the server holds `provider`.
    cli: LocalProvider,
    _dir: TempDir,
}

impl LocalHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let provider = LocalProvider::open(&keys).unwrap();
        provider.create_key(OTHER_KEY_NAME).unwrap();
        Self {
            provider: Arc::new(provider),
            cli: LocalProvider::open(&keys).unwrap(),
            _dir: dir,
        }
    }
}

#[async_trait]
impl Harness for LocalHarness {
    fn provider(&self) -> Arc<dyn KeyProvider> {
        self.provider.clone()
    }

    fn usable_key(&self) -> KeyRef {
        KeyRef::new(ProviderKind::Local, DEFAULT_KEY_NAME)
    }

    fn missing_key(&self) -> KeyRef {
        KeyRef::new(ProviderKind::Local, "no-such-key")
    }

    fn other_key(&self) -> KeyRef {
        KeyRef::new(ProviderKind::Local, OTHER_KEY_NAME)
    }

    async fn disable(&self, key: &KeyRef) {
        self.cli.set_enabled(key.id(), false).unwrap();
    }

    async fn enable(&self, key: &KeyRef) {
        self.cli.set_enabled(key.id(), true).unwrap();
    }
}

#[tokio::test]
async fn local_provider_passes_the_conformance_kit() {
    let h = LocalHarness::new();
    conformance::run_all(&h).await;
    // The kit leaves the usable key enabled.
    let status = h.provider.status(DEFAULT_KEY_NAME).unwrap();
    assert_eq!(status.state, keyward_kms::KeyState::Enabled);
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_kit_also_passes_on_a_current_thread_runtime() {
    conformance::run_all(&LocalHarness::new()).await;
}
