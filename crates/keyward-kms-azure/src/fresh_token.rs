//! [`FreshTokens`]: a credential that asks Entra ID for a new token whenever the SDK asks it for
//! one, instead of answering from the SDK credential's own cache.
//!
//! Why: the Key Vault client caches its token and, when the vault answers `401` (the token was
//! revoked, the vault moved to another tenant, a Conditional Access policy changed), drops it and
//! asks the credential again. `azure_identity`'s credentials keep their own cache until 5 minutes
//! before expiry (about 55 minutes), so they would hand back the very token the vault just
//! refused, and every call would fail until it expired (found with
//! `keyward_test_support::azure::KeyVaultDouble::revoke_tokens`, `tests/refusals.rs`). The
//! client asks the credential only for its first request, near expiry and after a `401`, so
//! building a fresh SDK credential each time costs one token request per vault client and hour,
//! plus one per refusal.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};

/// Builds a new SDK credential (with an empty cache).
pub(crate) type MakeCredential =
    Arc<dyn Fn() -> azure_core::Result<Arc<dyn TokenCredential>> + Send + Sync>;

/// See the module documentation.
pub(crate) struct FreshTokens {
    make: MakeCredential,
}

impl FreshTokens {
    /// Checks that `make` builds a credential (so that a bad configuration fails at start-up),
    /// then wraps it.
    pub(crate) fn new(make: MakeCredential) -> azure_core::Result<Arc<Self>> {
        make()?;
        Ok(Arc::new(Self { make }))
    }
}

impl fmt::Debug for FreshTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreshTokens").finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenCredential for FreshTokens {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        (self.make)()?.get_token(scopes, options).await
    }
}
