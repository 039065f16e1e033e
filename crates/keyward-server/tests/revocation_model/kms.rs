//! The KMS as the model test sees it: per KEK, the test decides whether the KMS answers
//! (`Ok`), refuses ([`ErrorKind::Refused`], the customer disabled the key) or cannot be reached
//! ([`ErrorKind::Unavailable`]); the cryptography is the real [`LocalProvider`]'s.
//!
//! Each replica gets its own [`ReplicaKms`] (one control shared by all), so that the test knows
//! which replica the KMS last vouched to for which tenant key (successful unwraps, per tenant
//! key id), and can hold one replica's next unwrap *after* the KMS answered: a sweep or request
//! that then completes with a stale answer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use async_trait::async_trait;
use keyward_envelope::{KeyId, SecretKey, WrappedKey};
use keyward_kms::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyState, KeyStatus, ProviderError, ProviderKind,
    WrapContext, local::LocalProvider,
};

use super::hold::Hold;

/// What the KMS answers for one KEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wraps and unwraps.
    Ok,
    /// Refuses (disabled key, removed grant): the revocation signal.
    Refused,
    /// Cannot be reached: not a revocation.
    Unreachable,
}

/// The KMS's state, shared by every replica's view of it.
#[derive(Debug, Default)]
pub(crate) struct KmsControl {
    modes: Mutex<HashMap<String, Mode>>,
}

impl KmsControl {
    pub(crate) fn set(&self, kek: &str, mode: Mode) {
        self.modes.lock().unwrap().insert(kek.to_owned(), mode);
    }

    fn mode(&self, kek: &KeyRef) -> Mode {
        self.modes
            .lock()
            .unwrap()
            .get(kek.id())
            .copied()
            .unwrap_or(Mode::Ok)
    }

    fn gate(&self, kek: &KeyRef) -> Result<(), ProviderError> {
        match self.mode(kek) {
            Mode::Ok => Ok(()),
            Mode::Refused => Err(ProviderError::new(
                ErrorKind::Refused,
                format!("model test: key {kek} is disabled"),
            )),
            Mode::Unreachable => Err(ProviderError::new(
                ErrorKind::Unavailable,
                "model test: KMS unreachable",
            )),
        }
    }
}

/// One replica's KMS client.
pub(crate) struct ReplicaKms {
    inner: LocalProvider,
    control: Arc<KmsControl>,
    /// When the KMS last returned each tenant key to this replica.
    vouched: Mutex<HashMap<KeyId, Instant>>,
    /// Holds the next unwrap after the KMS answered.
    pub(crate) hold: Hold,
}

impl std::fmt::Debug for ReplicaKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaKms").finish_non_exhaustive()
    }
}

impl ReplicaKms {
    pub(crate) fn new(inner: LocalProvider, control: Arc<KmsControl>) -> Self {
        Self {
            inner,
            control,
            vouched: Mutex::default(),
            hold: Hold::default(),
        }
    }

    /// When the KMS last returned `tenant_key` to this replica (an unwrap that succeeded).
    pub(crate) fn last_vouched(&self, tenant_key: &KeyId) -> Option<Instant> {
        self.vouched.lock().unwrap().get(tenant_key).copied()
    }
}

#[async_trait]
impl KeyProvider for ReplicaKms {
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
        self.control.gate(kek)?;
        self.inner.wrap(kek, key, ctx).await
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        // The KMS answers now; a held call returns this answer later.
        let answer = match self.control.gate(kek) {
            Ok(()) => self.inner.unwrap(kek, wrapped, ctx).await,
            Err(e) => Err(e),
        };
        if answer.is_ok() {
            self.vouched
                .lock()
                .unwrap()
                .insert(*ctx.tenant_key_id(), Instant::now());
        }
        self.hold.pass().await;
        answer
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        match self.control.mode(kek) {
            Mode::Ok => self.inner.describe(kek).await,
            Mode::Refused => Ok(KeyStatus::new(KeyState::Disabled)),
            Mode::Unreachable => Err(ProviderError::new(
                ErrorKind::Unavailable,
                "model test: KMS unreachable",
            )),
        }
    }
}
