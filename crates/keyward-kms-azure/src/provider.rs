//! [`AzureKeyVaultProvider`]: the [`KeyProvider`] on Azure Key Vault and Managed HSM.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::time::{OffsetDateTime, to_rfc3339};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, Key, KeyClientGetKeyOptions, KeyClientWrapKeyOptions,
    KeyOperationParameters, KeyType,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use keyward_envelope::{SecretKey, WrappedKey};
use keyward_kms::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyState, KeyStatus, ProviderError, ProviderKind,
    WrapContext,
};
use zeroize::Zeroizing;

use crate::classify::{Failure, Op, classify, observe};
use crate::key_id::AzureKeyId;
use crate::wrapped_key_format::{self as layout, VaultAlg};
use crate::{AzureKeyVaultConfig, remediation};

/// Azure Key Vault (RSA keys) and Managed HSM (RSA or AES keys) as a KEK provider.
///
/// - Key references are Key Vault key ids ([`AzureKeyId`]):
///   `https://{vault}.vault.azure.net/keys/{name}[/{version}]` or
///   `https://{hsm}.managedhsm.azure.net/keys/{name}[/{version}]`.
/// - A wrap draws a fresh 256-bit intermediate key `K`, has the vault `wrapKey` it
///   (RSA-OAEP-256 for RSA keys, A256KW for Managed HSM AES keys), and seals the tenant key
///   under `K` locally with AES-256-GCM whose AAD carries the [`WrapContext`]: the vault's
///   algorithms take no AAD, so this is what binds a wrapped key to its tenant, tenant key and
///   purpose. Byte layout in `wrapped_key_format.rs` and `docs/providers/azure.md`. An unwrap has the vault
///   `unwrapKey` `K` with the key version recorded at wrap time, then opens the seal.
/// - Key attributes decide the state: `enabled = false`, an `exp` in the past or an `nbf` in
///   the future are all reported as [`KeyState::Disabled`] and refuse wraps *and unwraps* with
///   [`ErrorKind::Refused`] (Key Vault itself still unwraps with expired keys; Keyward treats
///   expiry as revocation). Every wrap and unwrap therefore also reads the key (`GET`, in
///   parallel with `unwrapKey`).
/// - Failures are classified once from the HTTP status and Key Vault's error code
///   (`classify.rs`); each call is bounded by `call_timeout_ms`.
/// - Credentials are always explicit ([`crate::AzureCredentialConfig`]).
#[derive(Clone)]
pub struct AzureKeyVaultProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: AzureKeyVaultConfig,
    credential: Arc<dyn TokenCredential>,
    http: reqwest::Client,
    principal: String,
    clients: Mutex<HashMap<String, Arc<KeyClient>>>,
}

impl fmt::Debug for AzureKeyVaultProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVaultProvider")
            .field("config", &self.inner.config)
            .field("principal", &self.inner.principal)
            .finish_non_exhaustive()
    }
}

/// What a `GET` of the key told us.
#[derive(Debug)]
struct KeyInfo {
    version: String,
    alg: VaultAlg,
    status: KeyStatus,
}

impl AzureKeyVaultProvider {
    /// Validates the configuration and builds the credential and HTTPS client. Makes no network
    /// call: a wrong secret shows up on the first key operation (at registration).
    pub fn new(config: AzureKeyVaultConfig) -> Result<Self, ProviderError> {
        let built = config.build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                credential: built.credential,
                http: built.http,
                principal: built.principal,
                clients: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &AzureKeyVaultConfig {
        &self.inner.config
    }

    /// How remediation texts name Keyward's identity (the client id, when configured).
    pub fn principal(&self) -> &str {
        &self.inner.principal
    }

    fn parse(&self, kek: &KeyRef) -> Result<AzureKeyId, ProviderError> {
        if kek.kind() != ProviderKind::AzureKeyVault {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!("the Azure Key Vault provider cannot use key reference '{kek}'"),
            ));
        }
        AzureKeyId::parse(kek.id())
            .map_err(|e| ProviderError::new(ErrorKind::Misconfigured, e.to_string()))
    }

    fn client(&self, key: &AzureKeyId) -> Result<Arc<KeyClient>, ProviderError> {
        let endpoint = key.endpoint();
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(&endpoint) {
            return Ok(c.clone());
        }
        let options = KeyClientOptions {
            client_options: self.inner.config.client_options(&self.inner.http),
            ..KeyClientOptions::default()
        };
        let client = KeyClient::new(&endpoint, self.inner.credential.clone(), Some(options))
            .map(Arc::new)
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Misconfigured,
                    format!("cannot build a Key Vault client for {endpoint}"),
                )
                .with_source(e)
            })?;
        clients.insert(endpoint, client.clone());
        Ok(client)
    }

    /// Runs one SDK call with the call timeout, classifying its failure.
    async fn timed<T>(
        &self,
        op: Op,
        key: &AzureKeyId,
        fut: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<T, ProviderError> {
        match tokio::time::timeout(self.inner.config.call_timeout(), fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.sdk_error(op, key, observe(&e)).with_source(e)),
            Err(_) => Err(self.sdk_error(op, key, Failure::Timeout)),
        }
    }

    fn sdk_error(&self, op: Op, key: &AzureKeyId, failure: Failure) -> ProviderError {
        let c = classify(op, &failure);
        let detail = match &failure {
            Failure::Vault {
                status,
                code,
                inner,
            } => {
                let codes: Vec<&str> = [code.as_deref(), inner.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                format!(" (HTTP {status} {})", codes.join("/"))
            }
            Failure::Identity { status } => format!(" (Entra ID token endpoint: HTTP {status})"),
            Failure::Timeout => format!(" (within {} ms)", self.inner.config.call_timeout_ms),
            _ => String::new(),
        };
        tracing::debug!(kind = %c.kind, op = op.as_str(), key = %key, ?failure, "Azure Key Vault call failed");
        let mut err = ProviderError::new(
            c.kind,
            format!("{} on {key} failed{detail}: {}", op.as_str(), c.reason),
        );
        if let Some(r) = remediation::for_hint(c.hint, key, &self.inner.principal) {
            err = err.with_remediation(r);
        }
        err
    }

    async fn get(&self, key: &AzureKeyId) -> Result<KeyInfo, ProviderError> {
        let client = self.client(key)?;
        let options = KeyClientGetKeyOptions {
            key_version: key.version().map(str::to_owned),
            ..Default::default()
        };
        let k = self
            .timed(Op::Get, key, async {
                client
                    .get_key(key.name(), Some(options))
                    .await?
                    .into_model()
            })
            .await?;
        key_info(key, k, OffsetDateTime::now_utc())
    }

    /// [`Self::get`] for a registered key (wrap, unwrap, describe). A key the vault no longer has
    /// is looked up among its deleted keys, so that a soft-deleted key, which the customer can
    /// still recover, is a revocation (`Refused`, lifted by the monitor after a recovery) and
    /// only a purged one is `NotFound` (the terminal `destroyed`). When the vault does not say
    /// (the identity may not read deleted keys, or the call fails), the key is taken as deleted
    /// and recoverable: nothing is recorded as destroyed without the vault saying so.
    async fn get_registered(&self, key: &AzureKeyId) -> Result<KeyInfo, ProviderError> {
        let not_found = match self.get(key).await {
            Err(e) if e.kind() == ErrorKind::NotFound => e,
            other => return other,
        };
        let client = self.client(key)?;
        let deleted = self
            .timed(Op::GetDeleted, key, async {
                client.get_deleted_key(key.name(), None).await?.into_model()
            })
            .await;
        Err(match deleted {
            Ok(d) => ProviderError::new(
                ErrorKind::Refused,
                format!(
                    "{key} was deleted{}; it can be recovered until {}",
                    d.deleted_date
                        .map_or_else(String::new, |t| format!(" at {}", to_rfc3339(&t))),
                    d.scheduled_purge_date
                        .map_or_else(|| "it is purged".to_owned(), |t| to_rfc3339(&t))
                ),
            )
            .with_remediation(remediation::recover(key)),
            Err(e) if e.kind() == ErrorKind::NotFound => ProviderError::new(
                ErrorKind::NotFound,
                format!(
                    "{key} does not exist and is not among the vault's deleted keys: purged ({})",
                    not_found.message()
                ),
            ),
            Err(e) => ProviderError::new(
                ErrorKind::Refused,
                format!(
                    "{key} is no longer in the vault: deleted, and whether it can still be recovered is unknown ({})",
                    e.message()
                ),
            )
            .with_remediation(remediation::recover(key)),
        })
    }

    fn refused_by_state(&self, key: &AzureKeyId, what: &str, status: &KeyStatus) -> ProviderError {
        ProviderError::new(
            ErrorKind::Refused,
            format!(
                "{what} on {key} refused: {}",
                status.detail.as_deref().unwrap_or("the key is not enabled")
            ),
        )
        .with_remediation(remediation::reenable(key))
    }
}

/// Reads what Keyward needs from a `GET` of the key, and checks that it can wrap.
fn key_info(key: &AzureKeyId, k: Key, now: OffsetDateTime) -> Result<KeyInfo, ProviderError> {
    let misconfigured = |msg: String| {
        ProviderError::new(ErrorKind::Misconfigured, msg)
            .with_remediation(remediation::create_key(key))
    };
    let jwk = k.key.ok_or_else(|| {
        misconfigured(format!(
            "the vault returned no key material description for {key}"
        ))
    })?;
    let version = jwk
        .kid
        .as_deref()
        .and_then(|kid| AzureKeyId::parse(kid).ok())
        .and_then(|id| id.version().map(str::to_owned))
        .ok_or_else(|| {
            misconfigured(format!("the vault returned no versioned key id for {key}"))
        })?;
    let alg = match jwk.kty {
        Some(KeyType::Rsa | KeyType::RsaHsm) => {
            let bits = jwk
                .n
                .as_ref()
                .map_or(0, |n| n.iter().skip_while(|b| **b == 0).count() * 8);
            if jwk.n.is_some() && bits < 2048 {
                return Err(misconfigured(format!(
                    "{key} is a {bits}-bit RSA key; Keyward needs at least 2048 bits (3072 recommended)"
                )));
            }
            VaultAlg::RsaOaep256
        }
        Some(KeyType::Oct | KeyType::OctHsm) => VaultAlg::A256Kw,
        other => {
            return Err(misconfigured(format!(
                "{key} is a {} key; Keyward needs an RSA key (Key Vault) or a 256-bit AES key (Managed HSM)",
                other.map_or_else(|| "typeless".to_owned(), |t| t.to_string())
            )));
        }
    };
    if let Some(ops) = &jwk.key_ops {
        let allows = |op: &str| ops.iter().any(|o| o.eq_ignore_ascii_case(op));
        if !(allows("wrapKey") && allows("unwrapKey")) {
            return Err(misconfigured(format!(
                "{key} does not permit wrapKey and unwrapKey (its key_ops are [{}])",
                ops.join(", ")
            )));
        }
    }
    Ok(KeyInfo {
        version,
        alg,
        status: status_of(k.attributes.as_ref(), now),
    })
}

/// `enabled`, `exp` and `nbf` as a [`KeyStatus`]: outside the validity window is `Disabled`.
pub(crate) fn status_of(
    attrs: Option<&azure_security_keyvault_keys::models::KeyAttributes>,
    now: OffsetDateTime,
) -> KeyStatus {
    let Some(a) = attrs else {
        return KeyStatus::new(KeyState::Unknown)
            .with_detail("the vault returned no key attributes");
    };
    if a.enabled == Some(false) {
        return KeyStatus::new(KeyState::Disabled)
            .with_detail("the key is disabled (enabled = false)");
    }
    if let Some(exp) = a.expires
        && exp <= now
    {
        return KeyStatus::new(KeyState::Disabled)
            .with_detail(format!("the key expired at {exp} (exp attribute)"));
    }
    if let Some(nbf) = a.not_before
        && nbf > now
    {
        return KeyStatus::new(KeyState::Disabled)
            .with_detail(format!("the key is not valid before {nbf} (nbf attribute)"));
    }
    KeyStatus::new(KeyState::Enabled)
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, ProviderError> {
    let mut b = Zeroizing::new([0u8; N]);
    aws_lc_rs::rand::fill(&mut *b).map_err(|_| {
        ProviderError::new(
            ErrorKind::Unavailable,
            "the system random number generator failed",
        )
    })?;
    Ok(b)
}

fn algorithm(alg: VaultAlg) -> EncryptionAlgorithm {
    match alg {
        VaultAlg::RsaOaep256 => EncryptionAlgorithm::RsaOaep256,
        VaultAlg::A256Kw => EncryptionAlgorithm::A256Kw,
    }
}

#[async_trait]
impl KeyProvider for AzureKeyVaultProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AzureKeyVault
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.reports_key_state = true;
        c.production_grade = true;
        c
    }

    async fn wrap(
        &self,
        kek: &KeyRef,
        key: &SecretKey,
        ctx: &WrapContext,
    ) -> Result<WrappedKey, ProviderError> {
        let id = self.parse(kek)?;
        let info = self.get_registered(&id).await?;
        if info.status.state != KeyState::Enabled {
            return Err(self.refused_by_state(&id, "wrap", &info.status));
        }
        let k = random::<32>()?;
        let nonce = random::<12>()?;
        let client = self.client(&id)?;
        let params = KeyOperationParameters {
            algorithm: Some(algorithm(info.alg)),
            value: Some(k.to_vec()),
            ..Default::default()
        };
        let options = KeyClientWrapKeyOptions {
            key_version: Some(info.version.clone()),
            ..Default::default()
        };
        let result = self
            .timed(Op::Wrap, &id, async {
                client
                    .wrap_key(id.name(), params.try_into()?, Some(options))
                    .await?
                    .into_model()
            })
            .await?;
        let version = result
            .kid
            .as_deref()
            .and_then(|kid| AzureKeyId::parse(kid).ok())
            .and_then(|k| k.version().map(str::to_owned))
            .unwrap_or(info.version);
        let vault_wrapped = result.result.unwrap_or_default();
        layout::seal(info.alg, &version, &vault_wrapped, &k, *nonce, key, ctx)
            .map(WrappedKey::new)
            .map_err(|why| {
                ProviderError::new(ErrorKind::Unavailable, format!("wrapKey on {id}: {why}"))
            })
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        let id = self.parse(kek)?;
        let bytes = wrapped.as_bytes();
        let parsed = layout::parse(bytes).map_err(|why| {
            ProviderError::new(
                ErrorKind::InvalidCiphertext,
                format!(
                    "unwrap on {id}: {}",
                    layout::describe_layout_error(why, bytes.len())
                ),
            )
        })?;
        let client = self.client(&id)?;
        let params = KeyOperationParameters {
            algorithm: Some(algorithm(parsed.alg)),
            value: Some(parsed.vault_wrapped.to_vec()),
            ..Default::default()
        };
        let unwrap_call = self.timed(Op::Unwrap, &id, async {
            client
                .unwrap_key(id.name(), parsed.key_version, params.try_into()?, None)
                .await?
                .into_model()
        });
        // The key's state is read in parallel: Key Vault unwraps with an expired or
        // not-yet-valid key, Keyward does not.
        let (info, result) = tokio::join!(self.get_registered(&id), unwrap_call);
        let info = info?;
        let intermediate = Zeroizing::new(match result {
            Ok(r) => r.result.unwrap_or_default(),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // The key exists (the GET succeeded) but not the version the wrapped key names.
                return Err(ProviderError::new(
                    ErrorKind::InvalidCiphertext,
                    format!(
                        "unwrap on {id}: the wrapped key names key version {}, which this key does not have (corrupted, or made under another key)",
                        parsed.key_version
                    ),
                ));
            }
            Err(e) => return Err(e),
        });
        if info.status.state != KeyState::Enabled {
            return Err(self.refused_by_state(&id, "unwrap", &info.status));
        }
        let k: Zeroizing<[u8; 32]> = Zeroizing::new(intermediate.as_slice().try_into().map_err(|_| {
            ProviderError::new(
                ErrorKind::InvalidCiphertext,
                format!(
                    "unwrap on {id}: the vault returned {} bytes, not a 32-byte intermediate key",
                    intermediate.len()
                ),
            )
        })?);
        layout::open(&parsed, &k, ctx).map_err(|()| {
            ProviderError::new(
                ErrorKind::InvalidCiphertext,
                format!(
                    "unwrap on {id}: the wrapped key does not authenticate under this wrap context (made for another tenant, tenant key or purpose, or corrupted)"
                ),
            )
        })
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        let id = self.parse(kek)?;
        Ok(self.get_registered(&id).await?.status)
    }

    /// The key id with a lower-cased host, after checking that the key exists and can wrap
    /// (RSA ≥ 2048 bits or AES, `wrapKey` and `unwrapKey` permitted). A versionless id stays
    /// versionless: new wraps follow the key's rotations, and each wrapped key records the
    /// version it was made with.
    async fn canonicalize(&self, kek: &KeyRef) -> Result<KeyRef, ProviderError> {
        let id = self.parse(kek)?;
        self.get(&id).await?;
        Ok(KeyRef::new(ProviderKind::AzureKeyVault, id.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;
    use azure_core::time::Duration;
    use azure_security_keyvault_keys::models::KeyAttributes;

    #[test]
    fn attributes_map_to_states() {
        let now = OffsetDateTime::now_utc();
        let attrs = |enabled, exp: Option<Duration>, nbf: Option<Duration>| KeyAttributes {
            enabled,
            expires: exp.map(|d| now + d),
            not_before: nbf.map(|d| now + d),
            ..Default::default()
        };
        let hour = Duration::hours(1);
        for (a, state, detail) in [
            (attrs(Some(true), None, None), KeyState::Enabled, None),
            (
                attrs(None, Some(hour), Some(-hour)),
                KeyState::Enabled,
                None,
            ),
            (
                attrs(Some(false), None, None),
                KeyState::Disabled,
                Some("disabled"),
            ),
            (
                attrs(Some(true), Some(-hour), None),
                KeyState::Disabled,
                Some("expired"),
            ),
            (
                attrs(Some(true), None, Some(hour)),
                KeyState::Disabled,
                Some("not valid before"),
            ),
            (
                attrs(Some(false), Some(-hour), None),
                KeyState::Disabled,
                Some("disabled"),
            ),
        ] {
            let s = status_of(Some(&a), now);
            assert_eq!(s.state, state, "{a:?}");
            if let Some(d) = detail {
                assert!(s.detail.as_deref().unwrap().contains(d), "{s:?}");
            }
        }
        assert_eq!(status_of(None, now).state, KeyState::Unknown);
    }
}
