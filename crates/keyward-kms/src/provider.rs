//! The [`KeyProvider`] trait and the small value types around it.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use keyward_envelope::{SecretKey, WrappedKey};

use crate::{ErrorKind, ProviderError, WrapContext};

/// Which kind of KMS or HSM holds a KEK.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// [`crate::local::LocalProvider`]: a key file on local disk, for development only.
    Local,
    /// AWS KMS.
    AwsKms,
    /// Google Cloud KMS.
    GcpKms,
    /// Azure Key Vault (or Managed HSM).
    AzureKeyVault,
    /// A PKCS#11 HSM.
    Pkcs11,
}

impl ProviderKind {
    /// Every kind, in declaration order.
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Local,
        ProviderKind::AwsKms,
        ProviderKind::GcpKms,
        ProviderKind::AzureKeyVault,
        ProviderKind::Pkcs11,
    ];

    /// The stable name used in configuration, key references and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::AwsKms => "aws-kms",
            ProviderKind::GcpKms => "gcp-kms",
            ProviderKind::AzureKeyVault => "azure-key-vault",
            ProviderKind::Pkcs11 => "pkcs11",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string did not name a [`ProviderKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown key provider '{0}': expected one of local, aws-kms, gcp-kms, azure-key-vault, pkcs11"
)]
pub struct UnknownProviderKind(pub String);

impl FromStr for ProviderKind {
    type Err = UnknownProviderKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownProviderKind(s.to_owned()))
    }
}

/// A reference to one KEK: which provider holds it, and the provider-specific id (an AWS key
/// ARN, a GCP CryptoKey resource name, an Azure key id, a PKCS#11 URI, a local key name).
///
/// Only a reference: it is not validated against the provider until the provider is called.
/// Displays (and parses) as `<kind>:<id>`, e.g. `local:default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    kind: ProviderKind,
    id: String,
}

impl KeyRef {
    /// A reference to the key `id` of a `kind` provider.
    pub fn new(kind: ProviderKind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }

    /// The provider that holds the key.
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// The provider-specific key id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// The string is not a `<kind>:<id>` key reference.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseKeyRefError {
    /// No `:` separating the kind from the id.
    #[error("key reference '{0}' is not of the form <provider>:<key id>, e.g. local:default")]
    MissingSeparator(String),
    /// The part before the first `:` is not a provider kind.
    #[error(transparent)]
    UnknownKind(#[from] UnknownProviderKind),
    /// Nothing after the `:`.
    #[error("key reference '{0}' has an empty key id")]
    EmptyId(String),
}

impl FromStr for KeyRef {
    type Err = ParseKeyRefError;

    /// Splits at the first `:`, so ids that contain colons (AWS ARNs, PKCS#11 URIs) survive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, id) = s
            .split_once(':')
            .ok_or_else(|| ParseKeyRefError::MissingSeparator(s.to_owned()))?;
        let kind = kind.parse()?;
        if id.is_empty() {
            return Err(ParseKeyRefError::EmptyId(s.to_owned()));
        }
        Ok(KeyRef::new(kind, id))
    }
}

/// The lifecycle state of a KEK as the provider reports it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable for wrap and unwrap.
    Enabled,
    /// Disabled by the customer; may be re-enabled.
    Disabled,
    /// Scheduled for deletion; usually unusable, may still be cancelled.
    PendingDeletion,
    /// Gone for good: everything wrapped under it is crypto-shredded.
    Destroyed,
    /// The provider reported a state Keyward does not know, or cannot report states at all.
    Unknown,
}

impl KeyState {
    /// A stable, lower-case, kebab-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending-deletion",
            KeyState::Destroyed => "destroyed",
            KeyState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`KeyProvider::describe`] found out about a KEK.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key's lifecycle state.
    pub state: KeyState,
    /// Provider-specific detail for humans (e.g. the scheduled deletion date). No secrets.
    pub detail: Option<String>,
    /// For a key that is not usable: what its owner does to make it usable again (e.g. the
    /// command that enables it), shown to them as "To fix it". No secrets.
    pub remediation: Option<String>,
}

impl KeyStatus {
    /// A status with no detail.
    pub fn new(state: KeyState) -> Self {
        Self {
            state,
            detail: None,
            remediation: None,
        }
    }

    /// Adds a human-readable detail.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds what the key's owner does to make the key usable again.
    #[must_use]
    pub fn with_remediation(mut self, remediation: impl Into<String>) -> Self {
        self.remediation = Some(remediation.into());
        self
    }
}

/// What a provider can do beyond wrap and unwrap. All `false` by default; adapters switch on
/// what they support.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    /// [`KeyProvider::generate`] has the KMS generate the key (e.g. AWS `GenerateDataKey`)
    /// rather than using the default local generation followed by a wrap.
    pub generates_keys: bool,
    /// [`KeyProvider::describe`] reports real key states; otherwise the revocation monitor must
    /// rely on canary unwraps alone.
    pub reports_key_state: bool,
    /// Fit for production. Only `false` for the local development provider; the server refuses
    /// or warns loudly when a non-production provider is configured.
    pub production_grade: bool,
    /// A key the KMS does not have is [`ErrorKind::Refused`] on wrap, unwrap and describe, and
    /// [`ErrorKind::NotFound`] only from [`KeyProvider::canonicalize`] (onboarding, where a typo
    /// must read as "not found"). For KMSs that cannot tell a destroyed key from a removed or
    /// never-created one, and whose keys can come back (an HSM key object restored from the
    /// token's backup): the server's `NotFound` on a registered key is the terminal `destroyed`
    /// state, `Refused` a revocation the monitor lifts if the key returns. PKCS#11 sets this.
    pub missing_keys_refused: bool,
}

/// One KMS or HSM, seen through the only operations Keyward needs from it.
///
/// A provider wraps and unwraps opaque 256-bit keys under a KEK and never sees payloads.
/// The [`WrapContext`] must be bound into every wrap (as the KMS's encryption context, or as
/// AES-GCM AAD), so that a wrapped key can only be unwrapped for the same tenant, tenant key and
/// purpose, and so that the customer's KMS audit log shows which tenant key Keyward touched.
///
/// Every failure is a [`ProviderError`] whose [`ErrorKind`] the adapter classified once from
/// typed error codes. The conformance kit (feature `conformance`) checks all of this.
#[async_trait]
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Which kind of provider this is; [`KeyRef`]s of another kind are
    /// [`ErrorKind::Misconfigured`].
    fn kind(&self) -> ProviderKind;

    /// What this provider supports beyond the required operations.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Wraps `key` under the KEK `kek`, bound to `ctx`.
    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError>;

    /// Unwraps a key made by [`KeyProvider::wrap`] (or [`KeyProvider::generate`]) under the same
    /// KEK and the same `ctx`. Anything else is [`ErrorKind::InvalidCiphertext`] (or
    /// [`ErrorKind::Refused`] where the KMS reports it so), never a wrong key.
    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError>;

    /// The KEK's current state. A key that does not exist is an [`ErrorKind::NotFound`] error.
    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError>;

    /// The stable reference to store for `kek` at registration: e.g. an AWS alias ARN is
    /// resolved to the key ARN it points to, so that re-pointing the alias later cannot
    /// silently change which key protects a tenant. Default: `kek` unchanged.
    async fn canonicalize(&self, kek: &KeyRef) -> Result<KeyRef, ProviderError> {
        Ok(kek.clone())
    }

    /// A new key plus its wrapped form.
    ///
    /// Default: generate locally with [`SecretKey::generate`], then [`KeyProvider::wrap`].
    /// Providers whose KMS can generate keys (AWS `GenerateDataKey`) override this and set
    /// [`Capabilities::generates_keys`].
    async fn generate(
        &self,
        kek: &KeyRef,
        ctx: &WrapContext,
    ) -> Result<(SecretKey, WrappedKey), ProviderError> {
        // A failing system RNG is a fault of this host, not of the customer's key: classify it
        // as unavailable (transient) so that it is never mistaken for a revocation.
        let key = SecretKey::generate().map_err(|e| {
            ProviderError::new(
                ErrorKind::Unavailable,
                "could not generate a key: the system random number generator failed",
            )
            .with_source(e)
        })?;
        let wrapped = self.wrap(kek, &key, ctx).await?;
        Ok((key, wrapped))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn provider_kind_names_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(kind.as_str().parse::<ProviderKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(ProviderKind::AzureKeyVault.as_str(), "azure-key-vault");
        let err = "aws".parse::<ProviderKind>().unwrap_err();
        assert!(err.to_string().contains("aws-kms"), "{err}");
    }

    #[test]
    fn key_ref_display_and_parse() {
        let local = KeyRef::new(ProviderKind::Local, "default");
        assert_eq!(local.to_string(), "local:default");
        assert_eq!("local:default".parse::<KeyRef>().unwrap(), local);

        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let aws: KeyRef = format!("aws-kms:{arn}").parse().unwrap();
        assert_eq!(aws.kind(), ProviderKind::AwsKms);
        assert_eq!(aws.id(), arn);

        assert!(matches!(
            "default".parse::<KeyRef>(),
            Err(ParseKeyRefError::MissingSeparator(_))
        ));
        assert!(matches!(
            "vault:x".parse::<KeyRef>(),
            Err(ParseKeyRefError::UnknownKind(_))
        ));
        assert!(matches!(
            "local:".parse::<KeyRef>(),
            Err(ParseKeyRefError::EmptyId(_))
        ));
    }

    #[test]
    fn key_status_and_capabilities_defaults() {
        let s = KeyStatus::new(KeyState::Disabled).with_detail("by the customer");
        assert_eq!(s.state, KeyState::Disabled);
        assert_eq!(s.detail.as_deref(), Some("by the customer"));
        assert_eq!(KeyState::PendingDeletion.as_str(), "pending-deletion");

        let c = Capabilities::default();
        assert!(!c.generates_keys && !c.reports_key_state && !c.production_grade);
    }
}
