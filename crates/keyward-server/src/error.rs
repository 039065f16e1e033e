//! Domain errors of the service and their one exhaustive mapping to gRPC
//! status codes with `google.rpc.ErrorInfo` details. The table in
//! `docs/errors.md` mirrors [`ServiceError::to_status`]; keep them together.

use std::{collections::HashMap, time::Duration};

use keyward_audit::RevocationSource;
use keyward_envelope::EnvelopeError;
use keyward_kms::{ErrorKind, ProviderError, ProviderKind};
use keyward_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::time::rfc3339_utc_ms;

/// `ErrorInfo.domain` of every error Keyward returns.
pub const ERROR_DOMAIN: &str = "keyward.v1";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("{field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    #[error(
        "plaintext is {size} bytes; the limit of one call is {limit} bytes: use EncryptStream for larger data (docs/streaming.md)"
    )]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    MalformedEnvelope(#[source] EnvelopeError),
    #[error("{0}")]
    UnsupportedEnvelope(#[source] EnvelopeError),
    #[error("the envelope belongs to another tenant than the one named in the request")]
    TenantMismatch,
    /// Deliberately coarse: wrong context, wrong key and tampering look alike.
    #[error(
        "the envelope could not be decrypted: the encryption context differs from the one used to encrypt, or the envelope was altered"
    )]
    DecryptFailed,
    #[error("tenant {0} does not exist")]
    TenantNotFound(String),
    #[error("tenant {0} already exists")]
    TenantAlreadyExists(String),
    #[error("the data key of this envelope does not exist for tenant {0}")]
    DataKeyNotFound(String),
    /// The envelope's data key was crypto-shredded (ShredScope/ShredScopes): its data is gone
    /// for good. Distinct from a key that never existed.
    #[error(
        "the data key of this envelope was shredded at {} (tenant {tenant}): its data is unreadable for good",
        rfc3339_utc_ms(*shredded_at_ms)
    )]
    DataKeyShredded { tenant: String, shredded_at_ms: i64 },
    #[error("tenant {0} has no key registered; call RegisterKey first")]
    NoKeyRegistered(String),
    // Provider errors show their message only: the kind is the reason already, and its
    // `refused: ` prefix read like part of the customer's key reference.
    #[error("the tenant's key-encryption key refused the operation: {}", .0.message())]
    KeyRefused(#[source] ProviderError),
    /// The tenant's key is revoked (or destroyed): refused without any KMS call. The message
    /// says the state, since when and what decided it, as the metadata does.
    #[error("{}", revoked_message(tenant, *state, *since_ms, *cause))]
    KeyRevoked {
        tenant: String,
        state: keyward_store::KekState,
        since_ms: i64,
        /// What decided it (the `source` metadata); `None` when this replica does not know
        /// (an older binding's key). Not named `source`: thiserror reserves that name.
        cause: Option<RevocationSource>,
    },
    /// A re-key cannot move the tenant keys of an older binding in this state (revoked or
    /// destroyed): revocation stays a one-way door, so the customer restores the key first.
    #[error(
        "the re-key of tenant {tenant} cannot move the data under binding {binding_id} ({provider} key {key_ref}): it is {state}; {remedy}",
        state = state.as_str(),
        remedy = if *state == keyward_store::KekState::Destroyed {
            "its data is unreadable for good and cannot be re-keyed"
        } else {
            "restore it first (RestoreKey with its binding id) if that data should be kept"
        }
    )]
    RekeyBlocked {
        tenant: String,
        binding_id: i64,
        provider: String,
        key_ref: String,
        state: keyward_store::KekState,
    },
    #[error("the key-encryption key was not found: {}", .0.message())]
    KeyNotFound(#[source] ProviderError),
    #[error("the key-encryption key is misconfigured: {}", .0.message())]
    KeyMisconfigured(#[source] ProviderError),
    /// The key names a provider this server does not run: the operator's to fix, not the
    /// key owner's (whose key may be perfectly fine).
    #[error("the {} provider ({}) is not configured on this server", provider_name(*.0), .0.as_str())]
    ProviderNotConfigured(ProviderKind),
    #[error("the key management service is unavailable: {}", .0.message())]
    KmsUnavailable(#[source] ProviderError),
    #[error("a stored wrapped key was rejected as invalid ciphertext: {0}")]
    WrappedKeyRejected(String),
    #[error("storage error: {0}")]
    Store(#[source] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    /// No policy permits the call. Says nothing about whether the tenant exists.
    #[error("the caller is not permitted to do this")]
    PermissionDenied,
    /// The tenant allows decrypts for listed purposes only (`TenantPolicy.decrypt_purposes`)
    /// and the call declared none (docs/justifications.md).
    #[error(
        "tenant {tenant} requires a justification to decrypt: set `justification` with one of the purposes it allows ({})",
        .allowed.join(", ")
    )]
    JustificationRequired {
        tenant: String,
        allowed: Vec<&'static str>,
    },
    /// The call's declared purpose is not one the tenant allows to decrypt.
    #[error(
        "tenant {tenant} does not allow decrypts for the purpose {purpose}; it allows: {}",
        .allowed.join(", ")
    )]
    PurposeNotAllowed {
        tenant: String,
        purpose: &'static str,
        allowed: Vec<&'static str>,
    },
    /// The caller's certificate carries no identity this server knows.
    #[error("the caller's certificate identity is not known to this server")]
    Unauthenticated,
    /// A concurrent writer won a race; nothing changed and a retry is safe.
    #[error("conflict: {0}; retry the request")]
    Conflict(String),
    /// The same failure handed to several waiters of one single-flight load.
    #[error(transparent)]
    Shared(std::sync::Arc<ServiceError>),
}

impl ServiceError {
    pub(crate) fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }

    /// Classifies a KEK provider error (the provider already classified its SDK's error).
    pub(crate) fn from_provider(e: ProviderError) -> Self {
        match e.kind() {
            ErrorKind::Refused => Self::KeyRefused(e),
            ErrorKind::NotFound => Self::KeyNotFound(e),
            ErrorKind::Misconfigured => Self::KeyMisconfigured(e),
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Timeout => {
                Self::KmsUnavailable(e)
            }
            ErrorKind::InvalidCiphertext => Self::WrappedKeyRejected(e.to_string()),
            // ErrorKind is non_exhaustive: a kind added later is treated as a
            // transient failure until it is classified here, never as success.
            _ => Self::KmsUnavailable(e),
        }
    }

    /// Stable machine-readable reason (`ErrorInfo.reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::MalformedEnvelope(_) => "MALFORMED_ENVELOPE",
            Self::UnsupportedEnvelope(_) => "UNSUPPORTED_ENVELOPE",
            Self::TenantMismatch => "TENANT_MISMATCH",
            Self::DecryptFailed => "DECRYPT_FAILED",
            Self::TenantNotFound(_) => "TENANT_NOT_FOUND",
            Self::TenantAlreadyExists(_) => "TENANT_ALREADY_EXISTS",
            Self::DataKeyNotFound(_) => "DATA_KEY_NOT_FOUND",
            Self::DataKeyShredded { .. } => "DATA_KEY_SHREDDED",
            Self::NoKeyRegistered(_) => "NO_KEY_REGISTERED",
            Self::KeyRefused(_) => "KEY_REFUSED",
            Self::KeyRevoked { .. } => "KEY_REVOKED",
            Self::RekeyBlocked { .. } => "REKEY_BLOCKED",
            Self::KeyNotFound(_) => "KEY_NOT_FOUND",
            Self::KeyMisconfigured(_) => "KEY_MISCONFIGURED",
            Self::ProviderNotConfigured(_) => "PROVIDER_NOT_CONFIGURED",
            Self::KmsUnavailable(_) => "KMS_UNAVAILABLE",
            Self::WrappedKeyRejected(_) => "WRAPPED_KEY_REJECTED",
            Self::Store(_) => "STORE_ERROR",
            Self::Internal(_) => "INTERNAL",
            Self::Conflict(_) => "CONFLICT",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::JustificationRequired { .. } => "JUSTIFICATION_REQUIRED",
            Self::PurposeNotAllowed { .. } => "PURPOSE_NOT_ALLOWED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Shared(inner) => inner.reason(),
        }
    }

    /// gRPC status code; the one place the domain meets the transport.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. }
            | Self::PayloadTooLarge { .. }
            | Self::MalformedEnvelope(_)
            | Self::UnsupportedEnvelope(_)
            | Self::TenantMismatch
            | Self::DecryptFailed => Code::InvalidArgument,
            Self::TenantNotFound(_) | Self::DataKeyNotFound(_) => Code::NotFound,
            Self::TenantAlreadyExists(_) => Code::AlreadyExists,
            Self::NoKeyRegistered(_)
            | Self::DataKeyShredded { .. }
            | Self::KeyRefused(_)
            | Self::KeyRevoked { .. }
            | Self::RekeyBlocked { .. }
            | Self::KeyNotFound(_)
            | Self::KeyMisconfigured(_)
            | Self::ProviderNotConfigured(_) => Code::FailedPrecondition,
            Self::KmsUnavailable(_) => Code::Unavailable,
            Self::WrappedKeyRejected(_) => Code::DataLoss,
            Self::Store(_) | Self::Internal(_) => Code::Internal,
            Self::Conflict(_) => Code::Aborted,
            Self::PermissionDenied
            | Self::JustificationRequired { .. }
            | Self::PurposeNotAllowed { .. } => Code::PermissionDenied,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Shared(inner) => inner.code(),
        }
    }

    /// The status returned to the caller. Internal failures are logged with the
    /// call's request id (a fresh one outside a call) and the caller gets only that id,
    /// never the cause.
    pub fn to_status(&self) -> Status {
        if let Self::Shared(inner) = self {
            return inner.to_status();
        }
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        let message = match self {
            Self::InvalidArgument { field, description } => {
                details.add_bad_request_violation(*field, description.clone());
                self.to_string()
            }
            Self::UnsupportedEnvelope(EnvelopeError::UnsupportedVersion(
                keyward_envelope::framed::FRAMED_VERSION,
            )) => format!(
                "{self}: a framed envelope (from EncryptStream); decrypt it with DecryptStream (docs/streaming.md)"
            ),
            Self::UnsupportedEnvelope(EnvelopeError::UnsupportedVersion(
                keyward_envelope::FORMAT_VERSION,
            )) => format!(
                "{self}: an envelope of one Encrypt call; decrypt it with Decrypt, not DecryptStream"
            ),
            Self::KeyRevoked {
                state,
                since_ms,
                cause,
                ..
            } => {
                metadata.insert("state".to_owned(), state.as_str().to_owned());
                metadata.insert("since_ms".to_owned(), since_ms.to_string());
                if let Some(cause) = cause {
                    metadata.insert("source".to_owned(), source_name(*cause).to_owned());
                }
                self.to_string()
            }
            Self::RekeyBlocked {
                binding_id,
                key_ref,
                state,
                ..
            } => {
                metadata.insert("binding_id".to_owned(), binding_id.to_string());
                metadata.insert("key_ref".to_owned(), key_ref.clone());
                metadata.insert("state".to_owned(), state.as_str().to_owned());
                self.to_string()
            }
            Self::DataKeyShredded { shredded_at_ms, .. } => {
                metadata.insert("shredded_at".to_owned(), rfc3339_utc_ms(*shredded_at_ms));
                metadata.insert("shredded_at_ms".to_owned(), shredded_at_ms.to_string());
                self.to_string()
            }
            Self::ProviderNotConfigured(kind) => {
                metadata.insert("provider".to_owned(), kind.as_str().to_owned());
                metadata.insert("remediation".to_owned(), provider_setup(*kind));
                self.to_string()
            }
            Self::JustificationRequired { allowed, .. } => {
                metadata.insert("allowed_purposes".to_owned(), allowed.join(","));
                details.add_bad_request_violation("justification", self.to_string());
                self.to_string()
            }
            Self::PurposeNotAllowed {
                purpose, allowed, ..
            } => {
                metadata.insert("purpose".to_owned(), (*purpose).to_owned());
                metadata.insert("allowed_purposes".to_owned(), allowed.join(","));
                details.add_bad_request_violation("justification.purpose", self.to_string());
                self.to_string()
            }
            Self::PayloadTooLarge { limit, .. } => {
                metadata.insert("limit_bytes".to_owned(), limit.to_string());
                details.add_bad_request_violation("plaintext", self.to_string());
                self.to_string()
            }
            Self::KeyRefused(e)
            | Self::KeyNotFound(e)
            | Self::KeyMisconfigured(e)
            | Self::KmsUnavailable(e) => {
                metadata.insert("provider_error".to_owned(), e.kind().as_str().to_owned());
                if let Some(remediation) = e.remediation() {
                    metadata.insert("remediation".to_owned(), remediation.to_owned());
                }
                if matches!(self, Self::KmsUnavailable(_)) {
                    details.set_retry_info(Some(Duration::from_secs(1)));
                }
                self.to_string()
            }
            Self::WrappedKeyRejected(_) | Self::Store(_) | Self::Internal(_) => {
                // The call's own id (crate::telemetry) when served through the RPC layer.
                let request_id = crate::telemetry::current_request_id()
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), |id| id.to_string());
                tracing::error!(%request_id, error = %self, reason = self.reason(), "request failed");
                details.set_request_info(request_id.clone(), "");
                format!(
                    "internal error ({}); request id {request_id}",
                    self.reason().to_lowercase()
                )
            }
            _ => self.to_string(),
        };
        details.set_error_info(self.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(self.code(), message, details)
    }
}

/// The stored and wire name of a revocation source (`KekBinding.state_cause`, the `source`
/// metadata of `KEY_REVOKED`).
pub fn source_name(source: RevocationSource) -> &'static str {
    match source {
        RevocationSource::Explicit => "explicit",
        RevocationSource::Monitor => "monitor",
        RevocationSource::KmsRefusal => "kms_refusal",
        RevocationSource::Event => "event",
        _ => "other",
    }
}

/// What a revocation source means, for people.
fn source_words(source: RevocationSource) -> &'static str {
    match source {
        RevocationSource::Explicit => "revoked explicitly (RevokeKey)",
        RevocationSource::Monitor => "the key-state monitor found the customer's KMS refusing",
        RevocationSource::KmsRefusal => "the customer's KMS refused a call",
        RevocationSource::Event => "a key-state event, confirmed with the customer's KMS",
        _ => "another source",
    }
}

fn revoked_message(
    tenant: &str,
    state: keyward_store::KekState,
    since_ms: i64,
    source: Option<RevocationSource>,
) -> String {
    let cause = source.map_or_else(String::new, |s| format!(" ({})", source_words(s)));
    let consequence = if state == keyward_store::KekState::Destroyed {
        "its data is unreadable for good"
    } else {
        "requests are refused until the key is restored"
    };
    format!(
        "the key of tenant {tenant} is {state} since {since}{cause}: {consequence}",
        state = state.as_str(),
        since = rfc3339_utc_ms(since_ms),
    )
}

/// A provider kind in words.
fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Local => "local development key",
        ProviderKind::AwsKms => "AWS KMS",
        ProviderKind::GcpKms => "Google Cloud KMS",
        ProviderKind::AzureKeyVault => "Azure Key Vault",
        ProviderKind::Pkcs11 => "PKCS#11 HSM",
        _ => "key",
    }
}

/// The operator's fix for a provider this server does not run.
fn provider_setup(kind: ProviderKind) -> String {
    let (needs, feature) = match kind {
        ProviderKind::AwsKms => (
            "a keyward built with AWS support (it is on whenever built; docs/providers/aws.md)",
            "aws",
        ),
        ProviderKind::GcpKms => (
            "a [gcp] section in its configuration (docs/providers/gcp.md)",
            "gcp",
        ),
        ProviderKind::AzureKeyVault => (
            "an [azure] section in its configuration (docs/providers/azure.md)",
            "azure",
        ),
        ProviderKind::Pkcs11 => (
            "a [pkcs11] section in its configuration (docs/providers/pkcs11.md)",
            "pkcs11",
        ),
        _ => ("the provider configured (docs/configuration.md)", "default"),
    };
    format!(
        "This is for the operator of the Keyward server, not for the key's owner: the server \
         needs {needs}, then a restart. A keyward built without the `{feature}` cargo feature \
         must be rebuilt with it. The key itself was not checked."
    )
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        e.to_status()
    }
}

impl ServiceError {
    /// The error itself, seen through any [`ServiceError::Shared`] wrapping.
    pub fn root(&self) -> &ServiceError {
        match self {
            Self::Shared(inner) => inner.root(),
            other => other,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) | StoreError::StateChanged(what) => Self::Conflict(what),
            other => Self::Store(other),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn info(status: &Status) -> (String, HashMap<String, String>) {
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.domain, "keyward.v1");
        (info.reason, info.metadata)
    }

    /// The code and the reason of each error as docs/errors.md lists them: clients match on
    /// both, so they are written out here rather than read back from `code()` and `reason()`.
    #[test]
    fn every_status_carries_error_info_with_its_reason() {
        let cases = [
            (
                ServiceError::invalid("tenant_id", "empty"),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                ServiceError::TenantMismatch,
                Code::InvalidArgument,
                "TENANT_MISMATCH",
            ),
            (
                ServiceError::DecryptFailed,
                Code::InvalidArgument,
                "DECRYPT_FAILED",
            ),
            (
                ServiceError::TenantNotFound("t".into()),
                Code::NotFound,
                "TENANT_NOT_FOUND",
            ),
            (
                ServiceError::NoKeyRegistered("t".into()),
                Code::FailedPrecondition,
                "NO_KEY_REGISTERED",
            ),
            (
                ServiceError::DataKeyNotFound("t".into()),
                Code::NotFound,
                "DATA_KEY_NOT_FOUND",
            ),
            (
                ServiceError::DataKeyShredded {
                    tenant: "t".into(),
                    shredded_at_ms: 0,
                },
                Code::FailedPrecondition,
                "DATA_KEY_SHREDDED",
            ),
            (
                ServiceError::from_provider(ProviderError::new(ErrorKind::Refused, "disabled")),
                Code::FailedPrecondition,
                "KEY_REFUSED",
            ),
            (
                ServiceError::RekeyBlocked {
                    tenant: "t".into(),
                    binding_id: 1,
                    provider: "local".into(),
                    key_ref: "k1".into(),
                    state: keyward_store::KekState::Revoked,
                },
                Code::FailedPrecondition,
                "REKEY_BLOCKED",
            ),
            (
                ServiceError::from_provider(ProviderError::new(ErrorKind::Throttled, "slow")),
                Code::Unavailable,
                "KMS_UNAVAILABLE",
            ),
            (
                ServiceError::from_provider(ProviderError::new(ErrorKind::Timeout, "slow")),
                Code::Unavailable,
                "KMS_UNAVAILABLE",
            ),
            (
                ServiceError::from_provider(ProviderError::new(ErrorKind::InvalidCiphertext, "x")),
                Code::DataLoss,
                "WRAPPED_KEY_REJECTED",
            ),
            (
                ServiceError::PermissionDenied,
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            ),
            (
                ServiceError::JustificationRequired {
                    tenant: "acme".into(),
                    allowed: vec!["legal_hold"],
                },
                Code::PermissionDenied,
                "JUSTIFICATION_REQUIRED",
            ),
            (
                ServiceError::PurposeNotAllowed {
                    tenant: "acme".into(),
                    purpose: "customer_support",
                    allowed: vec!["legal_hold"],
                },
                Code::PermissionDenied,
                "PURPOSE_NOT_ALLOWED",
            ),
            (
                ServiceError::Unauthenticated,
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
        ];
        for (err, code, reason) in cases {
            let status = err.to_status();
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(err.reason(), reason, "{err}");
            assert_eq!(info(&status).0, reason, "{err}");
        }
    }

    #[test]
    fn data_key_shredded_says_when() {
        let status = ServiceError::DataKeyShredded {
            tenant: "acme".into(),
            shredded_at_ms: 1_796_570_581_310,
        }
        .to_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let (reason, metadata) = info(&status);
        assert_eq!(reason, "DATA_KEY_SHREDDED");
        assert_eq!(metadata["shredded_at_ms"], "1796570581310");
        assert_eq!(metadata["shredded_at"], "2026-12-06T15:23:01.310Z");
        assert!(
            status
                .message()
                .contains("shredded at 2026-12-06T15:23:01.310Z"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn internal_errors_hide_their_cause_behind_a_request_id() {
        let status = ServiceError::Internal("secret detail".into()).to_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret detail"));
        let details = status.get_error_details();
        let request_id = &details.request_info().unwrap().request_id;
        assert!(status.message().contains(request_id.as_str()));
    }

    #[test]
    fn key_revoked_says_state_since_and_source() {
        let status = ServiceError::KeyRevoked {
            tenant: "acme".into(),
            state: keyward_store::KekState::Revoked,
            since_ms: 1_796_570_581_310,
            cause: Some(RevocationSource::KmsRefusal),
        }
        .to_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "the key of tenant acme is revoked since 2026-12-06T15:23:01.310Z (the customer's KMS \
             refused a call): requests are refused until the key is restored"
        );
        let (reason, metadata) = info(&status);
        assert_eq!(reason, "KEY_REVOKED");
        assert_eq!(metadata["state"], "revoked");
        assert_eq!(metadata["since_ms"], "1796570581310");
        assert_eq!(metadata["source"], "kms_refusal");
    }

    #[test]
    fn provider_not_configured_is_the_operators_to_fix() {
        let status = ServiceError::ProviderNotConfigured(ProviderKind::GcpKms).to_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let (reason, metadata) = info(&status);
        assert_eq!(reason, "PROVIDER_NOT_CONFIGURED");
        assert_eq!(metadata["provider"], "gcp-kms");
        assert!(
            metadata["remediation"].contains("[gcp] section"),
            "{metadata:?}"
        );
        assert_eq!(
            status.message(),
            "the Google Cloud KMS provider (gcp-kms) is not configured on this server"
        );
    }

    #[test]
    fn provider_errors_show_no_internal_kind_prefix() {
        let e = ServiceError::from_provider(ProviderError::new(
            ErrorKind::Refused,
            "local key 'default' is disabled",
        ));
        assert_eq!(
            e.to_string(),
            "the tenant's key-encryption key refused the operation: local key 'default' is disabled"
        );
    }

    #[test]
    fn payload_too_large_names_the_limit() {
        let status = ServiceError::PayloadTooLarge { size: 10, limit: 5 }.to_status();
        let (reason, metadata) = info(&status);
        assert_eq!(reason, "PAYLOAD_TOO_LARGE");
        assert_eq!(metadata["limit_bytes"], "5");
        assert_eq!(
            status
                .get_details_bad_request()
                .unwrap()
                .field_violations
                .len(),
            1
        );
    }
}
