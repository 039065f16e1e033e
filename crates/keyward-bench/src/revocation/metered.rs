//! The local development provider as a stand-in for a cloud KMS at scale: every call waits an
//! artificial latency first (a cloud KMS answers in ~10 to 30 ms; the local provider in µs),
//! and every unwrap is counted per key, so that the benchmark can say which keys the KMS was
//! asked about and when (idle tenants' keys must not be asked about at all).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use keyward_envelope::{SecretKey, WrappedKey};
use keyward_kms::{
    Capabilities, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind, WrapContext,
    local::LocalProvider,
};

/// [`LocalProvider`] behind a fixed latency, counting unwraps per key name.
pub(crate) struct MeteredKms {
    inner: Arc<LocalProvider>,
    latency: Duration,
    unwraps: Mutex<HashMap<String, u64>>,
}

impl fmt::Debug for MeteredKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredKms")
            .field("inner", &self.inner)
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

impl MeteredKms {
    pub(crate) fn new(inner: Arc<LocalProvider>, latency: Duration) -> Self {
        Self {
            inner,
            latency,
            unwraps: Mutex::default(),
        }
    }

    /// Unwraps asked of key `name` so far (the data path's loads, registrations' round trips
    /// and the monitor's canaries alike).
    pub(crate) fn unwraps(&self, name: &str) -> u64 {
        self.unwraps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    async fn delay(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

#[async_trait]
impl KeyProvider for MeteredKms {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        self.delay().await;
        self.inner.wrap(kek, key, ctx).await
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        // Counted when asked, whatever the answer: a refused unwrap is a KMS call too.
        *self
            .unwraps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kek.id().to_owned())
            .or_default() += 1;
        self.delay().await;
        self.inner.unwrap(kek, wrapped, ctx).await
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        self.delay().await;
        self.inner.describe(kek).await
    }
}
