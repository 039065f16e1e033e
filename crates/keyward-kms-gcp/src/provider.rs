//! [`GcpKmsProvider`]: the [`KeyProvider`] on Google Cloud KMS.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState as State;
use keyward_envelope::{SecretKey, WrappedKey};
use keyward_kms::{
    Capabilities, ErrorKind, KeyProvider, KeyRef, KeyState, KeyStatus, ProviderError, ProviderKind,
    WrapContext,
};
use zeroize::Zeroizing;

use crate::classify::{Method, classify};
use crate::config::{KMS_SCOPE, LoadedCredentials};
use crate::name::CryptoKeyName;
use crate::{GcpKmsConfig, remediation};

/// Google Cloud KMS as a KEK provider.
///
/// - KEKs are symmetric CryptoKeys (purpose `ENCRYPT_DECRYPT`), named by their resource name
///   `projects/P/locations/L/keyRings/R/cryptoKeys/K` ([`CryptoKeyName`]).
/// - Wraps are `Encrypt` on the CryptoKey (Cloud KMS uses its primary version) with
///   [`WrapContext::aad`] as `additional_authenticated_data`; unwraps are `Decrypt` with the
///   same AAD, so Cloud KMS itself authenticates the tenant, tenant key and purpose, and the
///   customer's Cloud Audit Logs (Data Access) record each use of the key.
/// - Every request carries CRC32C checksums of the plaintext/ciphertext and AAD, and every
///   response is checked against them (Google's recommended end-to-end integrity check).
/// - `describe` reads the CryptoKey and maps its primary version's state.
/// - Errors are classified once from the typed status code (`classify.rs`, table in
///   `docs/providers/gcp.md`); each call is bounded by `call_timeout_ms`, and `UNAVAILABLE` is
///   retried up to `max_attempts` times within it.
#[derive(Clone)]
pub struct GcpKmsProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: KeyManagementService,
    config: GcpKmsConfig,
    member: String,
}

impl fmt::Debug for GcpKmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpKmsProvider")
            .field("endpoint", &self.inner.config.endpoint_or_default())
            .field("member", &self.inner.member)
            .finish_non_exhaustive()
    }
}

impl GcpKmsProvider {
    /// Checks the configuration, reads the credentials file and builds the client. Makes no
    /// call to Cloud KMS (keys are checked when a tenant registers one).
    pub async fn new(config: GcpKmsConfig) -> Result<Self, ProviderError> {
        let loaded = config.validate_and_load()?;
        let member = config.member_for(&loaded);
        let credentials = match loaded {
            LoadedCredentials::ServiceAccount(json) => {
                google_cloud_auth::credentials::service_account::Builder::new(json)
                    .with_access_specifier(
                        google_cloud_auth::credentials::service_account::AccessSpecifier::from_scopes(
                            [KMS_SCOPE],
                        ),
                    )
                    .build()
            }
            LoadedCredentials::ExternalAccount(json) => {
                google_cloud_auth::credentials::external_account::Builder::new(json)
                    .with_scopes([KMS_SCOPE])
                    .build()
            }
            LoadedCredentials::Anonymous => {
                Ok(google_cloud_auth::credentials::anonymous::Builder::new().build())
            }
        }
        .map_err(|e| {
            ProviderError::new(
                ErrorKind::Misconfigured,
                "gcp.credentials: the credentials file is not usable",
            )
            .with_source(e)
        })?;
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_delay(Duration::from_millis(50))
            .with_maximum_delay(Duration::from_millis(1000))
            .with_scaling(2.0)
            .build()
            .map_err(|e| {
                ProviderError::new(ErrorKind::Misconfigured, "invalid retry backoff").with_source(e)
            })?;
        let client = KeyManagementService::builder()
            .with_endpoint(config.endpoint_or_default())
            .with_credentials(credentials)
            .with_retry_policy(
                Aip194Strict
                    .with_attempt_limit(config.max_attempts)
                    .with_time_limit(config.call_timeout()),
            )
            .with_backoff_policy(backoff)
            .build()
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Misconfigured,
                    format!(
                        "cannot build the Cloud KMS client for {}",
                        config.endpoint_or_default()
                    ),
                )
                .with_source(e)
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                member,
            }),
        })
    }

    /// The configuration this provider was built with.
    pub fn config(&self) -> &GcpKmsConfig {
        &self.inner.config
    }

    /// The IAM member remediation text asks customers to grant roles to.
    pub fn member(&self) -> &str {
        &self.inner.member
    }

    fn parse(&self, kek: &KeyRef) -> Result<CryptoKeyName, ProviderError> {
        if kek.kind() != ProviderKind::GcpKms {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!("the Cloud KMS provider cannot use key reference '{kek}'"),
            ));
        }
        kek.id()
            .parse::<CryptoKeyName>()
            .map_err(|e| ProviderError::new(ErrorKind::Misconfigured, e.to_string()).with_source(e))
    }

    /// Runs one client call under the per-call deadline and classifies its error.
    async fn call<T>(
        &self,
        method: Method,
        key: &CryptoKeyName,
        fut: impl Future<Output = Result<T, GaxError>>,
    ) -> Result<T, ProviderError> {
        let timeout = self.inner.config.call_timeout();
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(method, key, e)),
            Err(_) => Err(ProviderError::new(
                ErrorKind::Timeout,
                format!(
                    "{} on {key} did not finish within {} ms",
                    method.as_str(),
                    self.inner.config.call_timeout_ms
                ),
            )),
        }
    }

    fn error(&self, method: Method, key: &CryptoKeyName, e: GaxError) -> ProviderError {
        let c = classify(&e, method);
        let code = e
            .status()
            .map(|s| format!(" ({})", s.code.name()))
            .or_else(|| e.http_status_code().map(|s| format!(" (HTTP {s})")))
            .unwrap_or_default();
        tracing::debug!(kind = %c.kind, op = method.as_str(), key = %key, error = %e, "Cloud KMS call failed");
        let mut err = ProviderError::new(
            c.kind,
            format!("{} on {key} failed{code}: {}", method.as_str(), c.reason),
        );
        let remedy = match e.status().map(|s| s.code) {
            Some(google_cloud_gax::error::rpc::Code::PermissionDenied) => {
                Some(remediation::grant_access(key, &self.inner.member))
            }
            Some(google_cloud_gax::error::rpc::Code::FailedPrecondition) => {
                Some(remediation::reenable(key))
            }
            Some(google_cloud_gax::error::rpc::Code::NotFound) => {
                Some(remediation::create_key(key))
            }
            Some(google_cloud_gax::error::rpc::Code::InvalidArgument)
                if method != Method::Decrypt =>
            {
                Some(remediation::wrong_purpose(key))
            }
            _ => None,
        };
        if let Some(r) = remedy {
            err = err.with_remediation(r);
        }
        err.with_source(e)
    }
}

fn crc32c(bytes: &[u8]) -> i64 {
    i64::from(crc32c::crc32c(bytes))
}

/// A response that failed its integrity check: corrupted in transit (Google's guidance is to
/// retry), never a revocation.
fn integrity(method: Method, key: &CryptoKeyName, what: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Unavailable,
        format!(
            "{} on {key}: {what} (the request or response was corrupted in transit; retry)",
            method.as_str()
        ),
    )
}

/// The state of the primary version, as Keyward's [`KeyState`].
pub(crate) fn key_state(state: &State) -> KeyState {
    match state {
        State::Enabled => KeyState::Enabled,
        State::Disabled => KeyState::Disabled,
        State::DestroyScheduled | State::PendingExternalDestruction => KeyState::PendingDeletion,
        State::Destroyed => KeyState::Destroyed,
        // Not usable yet (or never): registration refuses anything but Enabled.
        _ => KeyState::Unknown,
    }
}

#[async_trait]
impl KeyProvider for GcpKmsProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::GcpKms
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
        let name = self.parse(kek)?;
        let aad = ctx.aad();
        let plaintext = key.expose_secret();
        let (pt_crc, aad_crc) = (crc32c(plaintext), crc32c(&aad));
        // The client takes `bytes::Bytes`, which cannot be zeroized: the copy lives until the
        // request is serialised (base64 in the JSON body, also not zeroizable). Documented in
        // docs/providers/gcp.md.
        let request = self
            .inner
            .client
            .encrypt()
            .set_name(name.to_string())
            .set_plaintext(plaintext.to_vec())
            .set_plaintext_crc32c(pt_crc)
            .set_additional_authenticated_data(aad.clone())
            .set_additional_authenticated_data_crc32c(aad_crc)
            // Encrypt changes no state: retrying an UNAVAILABLE attempt is safe.
            .with_idempotency(true)
            .send();
        let resp = self.call(Method::Encrypt, &name, request).await?;
        if !resp.verified_plaintext_crc32c || !resp.verified_additional_authenticated_data_crc32c {
            return Err(integrity(
                Method::Encrypt,
                &name,
                "Cloud KMS did not verify the plaintext/AAD checksums",
            ));
        }
        if resp.ciphertext_crc32c != Some(crc32c(&resp.ciphertext)) {
            return Err(integrity(
                Method::Encrypt,
                &name,
                "the ciphertext does not match its checksum",
            ));
        }
        let version_prefix = format!("{name}/cryptoKeyVersions/");
        if !resp.name.starts_with(&version_prefix) {
            return Err(ProviderError::new(
                ErrorKind::Unavailable,
                format!(
                    "Encrypt on {name}: Cloud KMS answered for '{}', not a version of this key",
                    resp.name
                ),
            ));
        }
        if resp.ciphertext.is_empty() {
            return Err(integrity(
                Method::Encrypt,
                &name,
                "Cloud KMS returned an empty ciphertext",
            ));
        }
        Ok(WrappedKey::new(resp.ciphertext.to_vec()))
    }

    async fn unwrap(
        &self,
        kek: &KeyRef,
        wrapped: &WrappedKey,
        ctx: &WrapContext,
    ) -> Result<SecretKey, ProviderError> {
        let name = self.parse(kek)?;
        let ciphertext = wrapped.as_bytes();
        if ciphertext.is_empty() {
            // Cloud KMS treats an empty field as missing (INVALID_ARGUMENT); say it plainly.
            return Err(ProviderError::new(
                ErrorKind::InvalidCiphertext,
                format!("Decrypt on {name}: the wrapped key is empty"),
            ));
        }
        let aad = ctx.aad();
        let request = self
            .inner
            .client
            .decrypt()
            .set_name(name.to_string())
            .set_ciphertext(ciphertext.to_vec())
            .set_ciphertext_crc32c(crc32c(ciphertext))
            .set_additional_authenticated_data(aad.clone())
            .set_additional_authenticated_data_crc32c(crc32c(&aad))
            .with_idempotency(true)
            .send();
        let resp = self.call(Method::Decrypt, &name, request).await?;
        let plaintext = Zeroizing::new(resp.plaintext.to_vec());
        if resp.plaintext_crc32c != Some(crc32c(&plaintext)) {
            return Err(integrity(
                Method::Decrypt,
                &name,
                "the plaintext does not match its checksum",
            ));
        }
        SecretKey::try_from_slice(&plaintext).map_err(|_| {
            ProviderError::new(
                ErrorKind::InvalidCiphertext,
                format!(
                    "Decrypt on {name}: the plaintext is {} bytes, not a 32-byte key: this was not wrapped by Keyward",
                    plaintext.len()
                ),
            )
        })
    }

    async fn describe(&self, kek: &KeyRef) -> Result<KeyStatus, ProviderError> {
        let name = self.parse(kek)?;
        let request = self
            .inner
            .client
            .get_crypto_key()
            .set_name(name.to_string())
            .send();
        let key = self.call(Method::GetCryptoKey, &name, request).await?;
        if key.purpose != CryptoKeyPurpose::EncryptDecrypt {
            return Err(ProviderError::new(
                ErrorKind::Misconfigured,
                format!(
                    "{name} has purpose {}, not ENCRYPT_DECRYPT",
                    key.purpose.name().unwrap_or("UNKNOWN")
                ),
            )
            .with_remediation(remediation::wrong_purpose(&name)));
        }
        let Some(primary) = key.primary else {
            return Ok(KeyStatus::new(KeyState::Unknown)
                .with_detail("the CryptoKey has no primary version"));
        };
        let state = key_state(&primary.state);
        Ok(KeyStatus::new(state).with_detail(format!(
            "primary version {} is {}",
            primary.name,
            primary.state.name().unwrap_or("UNKNOWN")
        )))
    }

    /// The resource name, re-rendered from its parsed form: a CryptoKey name is already stable
    /// (rotation changes the primary version, never the name).
    async fn canonicalize(&self, kek: &KeyRef) -> Result<KeyRef, ProviderError> {
        let name = self.parse(kek)?;
        Ok(KeyRef::new(ProviderKind::GcpKms, name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_version_states_map_to_key_states() {
        let cases = [
            (State::Enabled, KeyState::Enabled),
            (State::Disabled, KeyState::Disabled),
            (State::DestroyScheduled, KeyState::PendingDeletion),
            (State::PendingExternalDestruction, KeyState::PendingDeletion),
            (State::Destroyed, KeyState::Destroyed),
            (State::PendingGeneration, KeyState::Unknown),
            (State::PendingImport, KeyState::Unknown),
            (State::ImportFailed, KeyState::Unknown),
            (State::Unspecified, KeyState::Unknown),
            (State::from(99), KeyState::Unknown),
        ];
        for (gcp, ours) in cases {
            assert_eq!(key_state(&gcp), ours, "{gcp:?}");
        }
    }
}
