//! The one place where Cloud KMS client errors become [`ErrorKind`]s.
//!
//! Classification reads only typed fields of the client's error — the `google.rpc.Code` of a
//! service error, the HTTP status of a non-Google error body, and the error's category
//! (timeout, connect, authentication, …) — never message text. The table is reproduced in
//! `docs/providers/gcp.md`; keep both in sync.

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::error::{CredentialsError, Error as GaxError};
use keyward_kms::ErrorKind;

/// Which Cloud KMS method failed: `INVALID_ARGUMENT` means a bad ciphertext only on decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Encrypt,
    Decrypt,
    GetCryptoKey,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Encrypt => "Encrypt",
            Method::Decrypt => "Decrypt",
            Method::GetCryptoKey => "GetCryptoKey",
        }
    }
}

/// The outcome of classifying one client error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Classified {
    pub(crate) kind: ErrorKind,
    /// A short explanation (ours, not the service's).
    pub(crate) reason: &'static str,
}

const fn c(kind: ErrorKind, reason: &'static str) -> Classified {
    Classified { kind, reason }
}

/// The table for service errors (`{"error": {"status": …}}` bodies).
pub(crate) fn classify_code(code: Code, method: Method) -> Classified {
    use ErrorKind::*;
    match code {
        // --- the customer said no ------------------------------------------------------------
        Code::PermissionDenied => c(
            Refused,
            "Cloud KMS denied Keyward's identity this use of the key (IAM binding removed, or the key does not exist and Keyward may not see it)",
        ),
        Code::FailedPrecondition => c(
            Refused,
            "the key version is not enabled (disabled, scheduled for destruction or destroyed)",
        ),
        // --- the key is not there -------------------------------------------------------------
        Code::NotFound => c(NotFound, "the CryptoKey (or its key ring) does not exist"),
        // --- the wrapped key is not for this key / context -----------------------------------
        Code::InvalidArgument | Code::OutOfRange if method == Method::Decrypt => c(
            InvalidCiphertext,
            "Cloud KMS could not decrypt the wrapped key: corrupted, or made under another key or wrap context",
        ),
        Code::InvalidArgument | Code::OutOfRange => c(
            Misconfigured,
            "Cloud KMS rejected the request as invalid (is the key a symmetric ENCRYPT_DECRYPT key?)",
        ),
        // --- transient ------------------------------------------------------------------------
        Code::ResourceExhausted => c(Throttled, "Cloud KMS quota exceeded (RESOURCE_EXHAUSTED)"),
        Code::DeadlineExceeded => c(
            Timeout,
            "Cloud KMS did not answer in time (DEADLINE_EXCEEDED)",
        ),
        Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::Aborted
        | Code::Cancelled
        | Code::DataLoss => c(Unavailable, "Cloud KMS is unavailable or failed internally"),
        // --- our side is wrong ----------------------------------------------------------------
        Code::Unauthenticated => c(
            Misconfigured,
            "Cloud KMS rejected Keyward's credentials (UNAUTHENTICATED): check gcp.credentials",
        ),
        Code::Unimplemented | Code::AlreadyExists => c(
            Misconfigured,
            "the endpoint does not serve this Cloud KMS method",
        ),
        Code::Ok => c(Unavailable, "Cloud KMS answered an error with code OK"),
        _ => c(Unavailable, "Cloud KMS returned an unknown status code"),
    }
}

/// The table for errors whose body is not a Google error (a proxy or load balancer answered).
/// Only a Google status may signal a revocation: a bare 403 from a proxy is not the customer.
pub(crate) fn classify_http(status: u16) -> Classified {
    use ErrorKind::*;
    match status {
        429 => c(Throttled, "HTTP 429 from the Cloud KMS endpoint"),
        408 | 500..=599 => c(
            Unavailable,
            "the Cloud KMS endpoint answered with an HTTP server error",
        ),
        _ => c(
            Misconfigured,
            "the endpoint answered with an HTTP error that is not a Cloud KMS error: check gcp.endpoint",
        ),
    }
}

/// Classifies any client error.
pub(crate) fn classify(e: &GaxError, method: Method) -> Classified {
    use ErrorKind::*;
    if let Some(status) = e.status() {
        return classify_code(status.code, method);
    }
    if e.is_exhausted() {
        // The retry policy gave up: classify the last attempt's error.
        if let Some(inner) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<GaxError>())
        {
            return classify(inner, method);
        }
        return c(
            Unavailable,
            "Cloud KMS kept failing until the retry budget ran out",
        );
    }
    if e.is_timeout() {
        return c(
            Timeout,
            "the Cloud KMS call did not finish within gcp.call_timeout_ms",
        );
    }
    if e.is_authentication() {
        let transient = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<CredentialsError>())
            .is_some_and(CredentialsError::is_transient);
        return if transient {
            c(
                Unavailable,
                "Keyward could not obtain an access token right now",
            )
        } else {
            c(
                Misconfigured,
                "Keyward's credentials cannot produce an access token: check gcp.credentials",
            )
        };
    }
    if e.is_binding() {
        return c(
            Misconfigured,
            "the key name does not fit the Cloud KMS request path",
        );
    }
    if let Some(status) = e.http_status_code() {
        return classify_http(status);
    }
    if e.is_connect() || e.is_io() || e.is_transport() {
        return c(Unavailable, "cannot reach the Cloud KMS endpoint");
    }
    if e.is_deserialization() || e.is_serialization() {
        return c(
            Unavailable,
            "the Cloud KMS response could not be understood",
        );
    }
    c(Unavailable, "the Cloud KMS call failed unexpectedly")
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn service(code: Code) -> GaxError {
        GaxError::service(Status::default().set_code(code).set_message("ignored text"))
    }

    #[test]
    fn table() {
        use ErrorKind::*;
        use Method::*;
        let cases = [
            (Code::FailedPrecondition, Encrypt, Refused),
            (Code::FailedPrecondition, Decrypt, Refused),
            (Code::FailedPrecondition, GetCryptoKey, Refused),
            (Code::PermissionDenied, Encrypt, Refused),
            (Code::PermissionDenied, Decrypt, Refused),
            (Code::PermissionDenied, GetCryptoKey, Refused),
            (Code::NotFound, Encrypt, NotFound),
            (Code::NotFound, Decrypt, NotFound),
            (Code::NotFound, GetCryptoKey, NotFound),
            (Code::InvalidArgument, Decrypt, InvalidCiphertext),
            (Code::OutOfRange, Decrypt, InvalidCiphertext),
            (Code::InvalidArgument, Encrypt, Misconfigured),
            (Code::InvalidArgument, GetCryptoKey, Misconfigured),
            (Code::ResourceExhausted, Encrypt, Throttled),
            (Code::ResourceExhausted, Decrypt, Throttled),
            (Code::Unavailable, Decrypt, Unavailable),
            (Code::Internal, Decrypt, Unavailable),
            (Code::Aborted, Encrypt, Unavailable),
            (Code::Unknown, Encrypt, Unavailable),
            (Code::DeadlineExceeded, Decrypt, Timeout),
            (Code::Unauthenticated, Decrypt, Misconfigured),
            (Code::Unimplemented, Encrypt, Misconfigured),
        ];
        for (code, method, kind) in cases {
            assert_eq!(
                classify(&service(code), method).kind,
                kind,
                "{code:?} on {method:?}"
            );
            assert_eq!(
                classify_code(code, method).kind,
                kind,
                "{code:?} on {method:?}"
            );
        }
    }

    #[test]
    fn non_service_errors() {
        use ErrorKind::*;
        let http = |s| GaxError::http(s, http_headers(), bytes_of("<html>proxy</html>"));
        assert_eq!(classify(&http(429), Method::Encrypt).kind, Throttled);
        assert_eq!(classify(&http(502), Method::Decrypt).kind, Unavailable);
        // A bare 403 without a Google error body is not a revocation.
        assert_eq!(classify(&http(403), Method::Decrypt).kind, Misconfigured);
        assert_eq!(classify(&http(404), Method::Decrypt).kind, Misconfigured);
        assert_eq!(
            classify(&GaxError::timeout("slow"), Method::Decrypt).kind,
            Timeout
        );
        assert_eq!(
            classify(&GaxError::connect("refused"), Method::Decrypt).kind,
            Unavailable
        );
        assert_eq!(
            classify(&GaxError::io("reset"), Method::Encrypt).kind,
            Unavailable
        );
        assert_eq!(
            classify(&GaxError::binding("bad path"), Method::Encrypt).kind,
            Misconfigured
        );
        assert_eq!(
            classify(&GaxError::deser("bad json"), Method::GetCryptoKey).kind,
            Unavailable
        );
        let cred = |transient| GaxError::authentication(CredentialsError::from_msg(transient, "x"));
        assert_eq!(classify(&cred(true), Method::Encrypt).kind, Unavailable);
        assert_eq!(classify(&cred(false), Method::Encrypt).kind, Misconfigured);
        let exhausted = GaxError::exhausted(service(Code::Unavailable));
        assert_eq!(classify(&exhausted, Method::Decrypt).kind, Unavailable);
        let exhausted = GaxError::exhausted(service(Code::ResourceExhausted));
        assert_eq!(classify(&exhausted, Method::Decrypt).kind, Throttled);
    }

    #[test]
    fn only_google_refusals_are_revocation_signals() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::NotFound,
            Code::InvalidArgument,
        ] {
            for m in [Method::Encrypt, Method::Decrypt, Method::GetCryptoKey] {
                assert!(
                    !classify_code(code, m).kind.is_revocation_signal(),
                    "{code:?}"
                );
            }
        }
        for s in [401, 403, 404, 429, 500, 503] {
            assert!(!classify_http(s).kind.is_revocation_signal(), "{s}");
        }
    }

    fn http_headers() -> http::HeaderMap {
        http::HeaderMap::new()
    }

    fn bytes_of(s: &'static str) -> bytes::Bytes {
        bytes::Bytes::from_static(s.as_bytes())
    }
}
