//! The one place where AWS SDK errors become [`ErrorKind`]s.
//!
//! Classification reads only typed data: the AWS error code
//! ([`ProvideErrorMetadata::code`], i.e. the `__type` of the JSON error), the [`SdkError`]
//! variant, the HTTP status, and the typed errors in the source chain
//! ([`CredentialsError`], STS's `SdkError<AssumeRoleError>`). Never message text. The table is
//! reproduced in `docs/providers/aws.md`; keep both in sync.

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use keyward_kms::ErrorKind;

/// The KMS operation that failed; names the IAM action in messages and remediations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Encrypt,
    Decrypt,
    GenerateDataKey,
    DescribeKey,
}

impl Op {
    /// The IAM action, e.g. `kms:Decrypt`.
    pub(crate) fn action(self) -> &'static str {
        match self {
            Op::Encrypt => "kms:Encrypt",
            Op::Decrypt => "kms:Decrypt",
            Op::GenerateDataKey => "kms:GenerateDataKey",
            Op::DescribeKey => "kms:DescribeKey",
        }
    }
}

/// Who said no, when the answer is an access denial (drives the remediation text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    /// KMS: the key policy / grants / IAM do not allow the action for our principal.
    Kms,
    /// STS: the customer's role does not trust us (or not with this external id).
    AssumeRole,
}

/// The outcome of classifying one SDK error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    pub(crate) kind: ErrorKind,
    /// The AWS error code, when the service answered with one.
    pub(crate) code: Option<String>,
    /// A short human explanation of what happened (from the code or the variant, not AWS's text).
    pub(crate) reason: &'static str,
    pub(crate) denial: Option<Denial>,
}

impl Classified {
    fn new(kind: ErrorKind, reason: &'static str) -> Self {
        Self {
            kind,
            code: None,
            reason,
            denial: None,
        }
    }
}

/// The table: AWS error code (KMS or STS) → kind and reason. `None` for codes we do not know.
fn kind_for_code(code: &str) -> Option<(ErrorKind, &'static str)> {
    use ErrorKind::*;
    Some(match code {
        // --- revocation signals: the customer said no ---------------------------------------
        "DisabledException" => (Refused, "the key is disabled"),
        "KMSInvalidStateException" => (
            Refused,
            "the key is not usable in its current state (pending deletion, pending import, or its custom key store is disconnected)",
        ),
        "AccessDeniedException" => (Refused, "access denied by the key policy, a grant or IAM"),
        // --- the key does not exist ------------------------------------------------------------
        "NotFoundException" => (
            NotFound,
            "the key (or alias) does not exist in this account and region",
        ),
        // --- the wrapped key is not for this key / context -------------------------------------
        "InvalidCiphertextException" => (
            InvalidCiphertext,
            "the wrapped key is corrupted or was made under another encryption context",
        ),
        "IncorrectKeyException" => (
            InvalidCiphertext,
            "the wrapped key was made under another KMS key",
        ),
        // --- our side is wrong -----------------------------------------------------------------
        "InvalidKeyUsageException" => (
            Misconfigured,
            "the key's usage or spec does not allow this operation",
        ),
        "InvalidArnException" => (Misconfigured, "KMS rejected the key ARN"),
        "ValidationException" => (Misconfigured, "KMS rejected the request as invalid"),
        "InvalidGrantTokenException" => (Misconfigured, "KMS rejected a grant token"),
        "UnsupportedOperationException" => {
            (Misconfigured, "the key does not support this operation")
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "RequestExpired" => (
            Misconfigured,
            "AWS rejected Keyward's own credentials (unknown, expired or badly signed)",
        ),
        "RegionDisabledException" => (Misconfigured, "STS is not activated in this region"),
        // --- transient ---------------------------------------------------------------------------
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "LimitExceededException" => (Throttled, "AWS is rate-limiting Keyward's requests"),
        // AWS documents KeyUnavailableException as retryable ("the key was not available"): an
        // outage, not a customer decision.
        "KeyUnavailableException" => (Unavailable, "the key is temporarily unavailable"),
        "KMSInternalException"
        | "InternalFailure"
        | "InternalError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => (Unavailable, "AWS had an internal error"),
        "DependencyTimeoutException" => (Unavailable, "KMS timed out on an internal dependency"),
        _ => return None,
    })
}

/// Classifies an AWS error code with the HTTP status it came with. STS's code for a refused
/// `AssumeRole` is `AccessDenied` (KMS's is `AccessDeniedException`).
fn classify_code(code: Option<&str>, status: u16, sts: bool) -> Classified {
    let known = match code {
        Some("AccessDenied") if sts => Some((
            ErrorKind::Refused,
            "STS denied sts:AssumeRole: the role's trust policy does not allow Keyward with this external id",
        )),
        Some(code) => kind_for_code(code),
        None => None,
    };
    let (kind, reason) = match known {
        Some(k) => k,
        None if status == 429 => (
            ErrorKind::Throttled,
            "AWS is rate-limiting Keyward's requests",
        ),
        None if status >= 500 => (ErrorKind::Unavailable, "AWS answered with a server error"),
        None => {
            // Never a revocation: an error we cannot name is treated as an outage (cached keys
            // keep serving until their TTL) and logged so that the table can be extended.
            tracing::warn!(
                code = code.unwrap_or("<none>"),
                status,
                "unclassified AWS error code; treating it as unavailable"
            );
            (
                ErrorKind::Unavailable,
                "AWS answered with an error Keyward does not know",
            )
        }
    };
    let denial = match (kind, code) {
        (ErrorKind::Refused, Some("AccessDeniedException")) => Some(Denial::Kms),
        (ErrorKind::Refused, Some("AccessDenied")) if sts => Some(Denial::AssumeRole),
        _ => None,
    };
    Classified {
        kind,
        code: code.map(str::to_owned),
        reason,
        denial,
    }
}

/// Classifies an error of any KMS (or STS) operation. The single entry point.
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    classify_sdk(err, false)
}

fn classify_sdk<E>(err: &SdkError<E, HttpResponse>, sts: bool) -> Classified
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            classify_code(ctx.err().code(), ctx.raw().status().as_u16(), sts)
        }
        SdkError::TimeoutError(_) => Classified::new(
            ErrorKind::Timeout,
            "the call did not finish within the configured timeout",
        ),
        SdkError::DispatchFailure(failure) => {
            // Credentials are resolved just before sending: their failures arrive as dispatch
            // failures with the CredentialsError in the source chain.
            if let Some(c) = find_in_chain::<CredentialsError>(err) {
                return classify_credentials(c);
            }
            if failure.is_timeout() {
                Classified::new(ErrorKind::Timeout, "connecting to AWS timed out")
            } else if failure.is_user() {
                Classified::new(
                    ErrorKind::Misconfigured,
                    "the request could not be sent (bad endpoint configuration)",
                )
            } else {
                Classified::new(
                    ErrorKind::Unavailable,
                    "could not reach AWS (connection failed)",
                )
            }
        }
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let reason = if status >= 500 {
                "AWS answered with a server error"
            } else {
                "AWS sent a response Keyward could not read"
            };
            Classified::new(ErrorKind::Unavailable, reason)
        }
        SdkError::ConstructionFailure(_) => {
            if let Some(c) = find_in_chain::<CredentialsError>(err) {
                return classify_credentials(c);
            }
            Classified::new(ErrorKind::Misconfigured, "the request could not be built")
        }
        // `SdkError` is non-exhaustive: anything new is an outage until we know better.
        _ => Classified::new(ErrorKind::Unavailable, "the AWS SDK failed"),
    }
}

/// Credentials could not be obtained: from the default chain, or by assuming the customer's role.
fn classify_credentials(err: &CredentialsError) -> Classified {
    match err {
        CredentialsError::CredentialsNotLoaded(_) => Classified::new(
            ErrorKind::Misconfigured,
            "Keyward has no AWS credentials (nothing in the environment, profile, web identity or instance role)",
        ),
        CredentialsError::InvalidConfiguration(_) => {
            // AssumeRoleProvider files RegionDisabled/MalformedPolicy here.
            if let Some(sts) = find_in_chain::<SdkError<AssumeRoleError, HttpResponse>>(err) {
                return classify_sdk(sts, true);
            }
            Classified::new(
                ErrorKind::Misconfigured,
                "the AWS credential configuration is invalid",
            )
        }
        CredentialsError::ProviderTimedOut(_) => {
            Classified::new(ErrorKind::Timeout, "obtaining AWS credentials timed out")
        }
        CredentialsError::ProviderError(_) => {
            if let Some(sts) = find_in_chain::<SdkError<AssumeRoleError, HttpResponse>>(err) {
                return classify_sdk(sts, true);
            }
            // e.g. the instance metadata service or an SSO endpoint is down.
            Classified::new(ErrorKind::Unavailable, "the AWS credential provider failed")
        }
        _ => Classified::new(
            ErrorKind::Unavailable,
            "the AWS credential provider failed unexpectedly",
        ),
    }
}

/// The first error of type `T` in `err`'s source chain (including `err`).
fn find_in_chain<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;
    use aws_sdk_kms::operation::decrypt::DecryptError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
    }

    fn service_error(code: &str, status: u16) -> SdkError<DecryptError, HttpResponse> {
        SdkError::service_error(
            DecryptError::generic(ErrorMetadata::builder().code(code).build()),
            response(status),
        )
    }

    fn assume_role_denied() -> SdkError<AssumeRoleError, HttpResponse> {
        SdkError::service_error(
            AssumeRoleError::generic(ErrorMetadata::builder().code("AccessDenied").build()),
            response(403),
        )
    }

    #[test]
    fn service_codes() {
        use ErrorKind::*;
        let table = [
            ("DisabledException", 400, Refused),
            ("KMSInvalidStateException", 400, Refused),
            ("AccessDeniedException", 400, Refused),
            ("NotFoundException", 400, NotFound),
            ("InvalidCiphertextException", 400, InvalidCiphertext),
            ("IncorrectKeyException", 400, InvalidCiphertext),
            ("InvalidKeyUsageException", 400, Misconfigured),
            ("InvalidArnException", 400, Misconfigured),
            ("ValidationException", 400, Misconfigured),
            ("UnrecognizedClientException", 400, Misconfigured),
            ("InvalidSignatureException", 400, Misconfigured),
            ("ThrottlingException", 400, Throttled),
            ("LimitExceededException", 400, Throttled),
            ("KeyUnavailableException", 500, Unavailable),
            ("KMSInternalException", 500, Unavailable),
            ("DependencyTimeoutException", 503, Unavailable),
            ("SomethingNewException", 400, Unavailable),
            ("SomethingNewException", 500, Unavailable),
            ("", 503, Unavailable),
            ("", 429, Throttled),
        ];
        for (code, status, kind) in table {
            let c = classify(&service_error(code, status));
            assert_eq!(c.kind, kind, "{code} {status}");
        }
        let c = classify(&service_error("AccessDeniedException", 400));
        assert_eq!(c.denial, Some(Denial::Kms));
        assert_eq!(c.code.as_deref(), Some("AccessDeniedException"));
        assert!(c.kind.is_revocation_signal());
        // STS's code only counts as a denial for STS.
        assert_eq!(
            classify(&service_error("AccessDenied", 403)).kind,
            Unavailable
        );
    }

    #[test]
    fn unknown_codes_are_never_revocations() {
        for status in [400, 403, 404, 500, 503] {
            let c = classify(&service_error("BrandNewDenialException", status));
            assert!(!c.kind.is_revocation_signal(), "{status}");
            assert!(c.kind.is_transient(), "{status}");
        }
    }

    #[test]
    fn transport_variants() {
        let timeout: SdkError<DecryptError, HttpResponse> =
            SdkError::timeout_error(std::io::Error::other("slow"));
        assert_eq!(classify(&timeout).kind, ErrorKind::Timeout);

        let refused: SdkError<DecryptError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))));
        assert_eq!(classify(&refused).kind, ErrorKind::Unavailable);

        let connect_timeout: SdkError<DecryptError, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::timeout(Box::new(std::io::Error::other("t"))),
        );
        assert_eq!(classify(&connect_timeout).kind, ErrorKind::Timeout);

        for status in [200, 500, 503] {
            let unreadable: SdkError<DecryptError, HttpResponse> =
                SdkError::response_error(std::io::Error::other("bad json"), response(status));
            assert_eq!(classify(&unreadable).kind, ErrorKind::Unavailable);
        }
    }

    #[test]
    fn credential_failures() {
        let wrap = |c: CredentialsError| -> SdkError<DecryptError, HttpResponse> {
            SdkError::dispatch_failure(ConnectorError::other(Box::new(c), None))
        };
        let c = classify(&wrap(CredentialsError::not_loaded("no creds")));
        assert_eq!(c.kind, ErrorKind::Misconfigured);

        let c = classify(&wrap(
            CredentialsError::provider_error(assume_role_denied()),
        ));
        assert_eq!(c.kind, ErrorKind::Refused);
        assert_eq!(c.denial, Some(Denial::AssumeRole));

        let sts_down: SdkError<AssumeRoleError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))));
        let c = classify(&wrap(CredentialsError::provider_error(sts_down)));
        assert_eq!(c.kind, ErrorKind::Unavailable);

        let c = classify(&wrap(CredentialsError::provider_timed_out(
            std::time::Duration::from_secs(5),
        )));
        assert_eq!(c.kind, ErrorKind::Timeout);
    }
}
