//! A provider decorator whose answers a test controls (feature `test-support`): it counts the
//! unwraps that reach it, can answer every unwrap as an unreachable KMS would (`outage`), and can
//! hold the next unwrap after the inner provider answered, until the test releases it — so that
//! a test can put another step (a revocation, a registration, another replica's sweep) exactly
//! between a KMS answer and its use, without sleeps.
//!
//! Real cryptography stays with the inner provider (usually [`crate::local::LocalProvider`]); a
//! refusal is produced the real way, by disabling the key there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use keyward_envelope::{SecretKey, WrappedKey};

use crate::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyStatus, ProviderError, ProviderKind,
    WrapContext,
};

/// See the module documentation.
#[derive(Debug)]
pub struct Controlled<P> {
    inner: P,
    unwraps: AtomicU64,
    outage: AtomicBool,
    hold_next: AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl<P: KeyProvider> Controlled<P> {
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            unwraps: AtomicU64::new(0),
            outage: AtomicBool::new(false),
            hold_next: AtomicBool::new(false),
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        }
    }

    /// The decorated provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Unwraps that reached this provider (answered or not).
    pub fn unwraps(&self) -> u64 {
        self.unwraps.load(Ordering::SeqCst)
    }

    /// While on, every unwrap fails `Unavailable` ("connection refused").
    pub fn set_outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }

    /// Holds the next unwrap once it has its answer; [`Controlled::held`] waits for it to get
    /// there, [`Controlled::release`] lets it return.
    pub fn hold_next_unwrap(&self) {
        self.hold_next.store(true, Ordering::SeqCst);
    }

    /// Waits until the held unwrap has its answer.
    pub async fn held(&self) {
        self.entered.notified().await;
    }

    /// Lets the held unwrap return its answer.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

#[async_trait]
impl<P: KeyProvider> KeyProvider for Controlled<P> {
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
        self.inner.wrap(kek, key, ctx).await
    }
    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        let answer = if self.outage.load(Ordering::SeqCst) {
            Err(ProviderError::new(
                ErrorKind::Unavailable,
                "test outage: connection refused",
            ))
        } else {
            self.inner.unwrap(kek, wrapped, ctx).await
        };
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        answer
    }
    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        self.inner.describe(kek).await
    }
}
