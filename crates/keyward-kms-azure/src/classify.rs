//! The one place where Azure SDK failures become [`ErrorKind`]s.
//!
//! Classification reads only typed data: the HTTP status, Key Vault's error `code` and
//! `innererror.code` from its JSON error body (`{"error":{"code":…,"innererror":{"code":…}}}`),
//! and the SDK's error kind (connection, I/O, credential). Never message text. The table is
//! reproduced in `docs/providers/azure.md`; keep both in sync.

use keyward_kms::ErrorKind;

/// Which Key Vault operation failed (a 400 on `unwrapKey` is a bad wrapped key; on the others
/// it is a request Keyward should not have made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Wrap,
    Unwrap,
    Get,
    GetDeleted,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Wrap => "wrapKey",
            Op::Unwrap => "unwrapKey",
            Op::Get => "get key",
            Op::GetDeleted => "get deleted key",
        }
    }
}

/// What went wrong, as observed from the SDK's typed error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Key Vault answered with an HTTP error status.
    Vault {
        status: u16,
        code: Option<String>,
        inner: Option<String>,
    },
    /// Microsoft Entra ID (the token endpoint) answered with an HTTP error status.
    Identity { status: u16 },
    /// The credential failed without asking the identity provider (e.g. the federated token
    /// file cannot be read).
    IdentityLocal,
    /// No connection (DNS, refused, TLS handshake or certificate).
    Connect,
    /// A timeout: ours (`call_timeout_ms`) or the HTTP client's.
    Timeout,
    /// The connection broke mid-request.
    Io,
    /// The answer did not follow the protocol (e.g. an authentication challenge for another
    /// resource, an unparseable body).
    Protocol,
}

/// What to tell the customer (see `remediation.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    None,
    /// Grant Keyward's identity the crypto role on the key.
    RoleAssignment,
    /// Re-enable the key.
    Reenable,
    /// Create the key / fix the key id.
    CreateKey,
    /// Fix Keyward's own Azure credentials.
    Credentials,
    /// Let Keyward through the vault's firewall.
    Network,
}

/// The outcome of classifying one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Classified {
    pub(crate) kind: ErrorKind,
    pub(crate) reason: &'static str,
    pub(crate) hint: Hint,
}

const fn c(kind: ErrorKind, reason: &'static str, hint: Hint) -> Classified {
    Classified { kind, reason, hint }
}

fn code_is(f: &Option<String>, wanted: &[&str]) -> bool {
    f.as_deref()
        .is_some_and(|c| wanted.iter().any(|w| c.eq_ignore_ascii_case(w)))
}

/// The table.
pub(crate) fn classify(op: Op, failure: &Failure) -> Classified {
    use ErrorKind::*;
    match failure {
        Failure::Vault {
            status,
            code,
            inner,
        } => {
            let either = |wanted: &[&str]| code_is(code, wanted) || code_is(inner, wanted);
            match *status {
                403 if either(&["KeyDisabled"]) => {
                    c(Refused, "the key is disabled in the vault", Hint::Reenable)
                }
                403 if either(&["ForbiddenByFirewall", "ForbiddenByConnection"]) => c(
                    Refused,
                    "the vault's network rules (firewall / private endpoint) deny Keyward",
                    Hint::Network,
                ),
                403 => c(
                    Refused,
                    "access denied: Keyward's identity has no role assignment (or access policy) that allows this operation on the key",
                    Hint::RoleAssignment,
                ),
                404 => c(
                    NotFound,
                    "the key (or key version) does not exist in the vault: never created, deleted, or purged",
                    Hint::CreateKey,
                ),
                400 if op == Op::Unwrap => c(
                    InvalidCiphertext,
                    "the vault could not unwrap the wrapped key: corrupted, or wrapped under another key",
                    Hint::None,
                ),
                400 => c(
                    Misconfigured,
                    "the vault rejected the request (the key type or its permitted operations do not allow wrapKey with this algorithm)",
                    Hint::CreateKey,
                ),
                401 => c(
                    Misconfigured,
                    "the vault did not accept Keyward's access token (token for another tenant or resource)",
                    Hint::Credentials,
                ),
                408 => c(Timeout, "the vault timed out the request", Hint::None),
                429 => c(
                    Throttled,
                    "the vault is throttling Keyward's requests",
                    Hint::None,
                ),
                500..=599 => c(Unavailable, "the vault is unavailable", Hint::None),
                _ => c(
                    Unavailable,
                    "the vault returned an unexpected status",
                    Hint::None,
                ),
            }
        }
        Failure::Identity { status } => match *status {
            429 => c(
                Throttled,
                "Microsoft Entra ID is throttling token requests",
                Hint::None,
            ),
            500..=599 => c(Unavailable, "Microsoft Entra ID is unavailable", Hint::None),
            _ => c(
                Misconfigured,
                "Microsoft Entra ID refused Keyward's credentials (wrong tenant id, client id or secret, expired secret, missing federated credential)",
                Hint::Credentials,
            ),
        },
        Failure::IdentityLocal => c(
            Misconfigured,
            "Keyward's Azure credential could not be used (token file or identity endpoint missing)",
            Hint::Credentials,
        ),
        Failure::Connect => c(
            Unavailable,
            "could not connect to the vault or the identity endpoint (DNS, network, TLS)",
            Hint::None,
        ),
        Failure::Timeout => c(Timeout, "the call did not finish in time", Hint::None),
        Failure::Io => c(
            Unavailable,
            "the connection broke during the call",
            Hint::None,
        ),
        Failure::Protocol => c(
            Misconfigured,
            "the answer did not follow the Key Vault protocol (e.g. its authentication challenge names another resource)",
            Hint::None,
        ),
    }
}

/// Reads the typed parts of an SDK error into a [`Failure`].
pub(crate) fn observe(e: &azure_core::Error) -> Failure {
    use azure_core::error::ErrorKind as Az;
    if chain_has_timeout(e) {
        return Failure::Timeout;
    }
    match e.kind() {
        Az::HttpResponse {
            status,
            raw_response,
            ..
        } => {
            let (code, inner) = raw_response
                .as_ref()
                .map(|r| error_codes(r.body().as_ref()))
                .unwrap_or_default();
            Failure::Vault {
                status: u16::from(*status),
                code,
                inner,
            }
        }
        Az::Credential => {
            // The identity library wraps what went wrong underneath.
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if let Some(az) = s.downcast_ref::<azure_core::Error>() {
                    match az.kind() {
                        Az::HttpResponse { status, .. } => {
                            return Failure::Identity {
                                status: u16::from(*status),
                            };
                        }
                        Az::Connection => return Failure::Connect,
                        Az::Io => return Failure::Io,
                        _ => {}
                    }
                }
                source = s.source();
            }
            Failure::IdentityLocal
        }
        Az::Connection => Failure::Connect,
        Az::Io => Failure::Io,
        _ => Failure::Protocol,
    }
}

fn chain_has_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// `error.code` and `error.innererror.code` of a Key Vault error body.
pub(crate) fn error_codes(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let err = &v["error"];
    let code = err["code"].as_str().map(str::to_owned);
    let inner = err["innererror"]["code"].as_str().map(str::to_owned);
    (code, inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(status: u16, code: Option<&str>, inner: Option<&str>) -> Failure {
        Failure::Vault {
            status,
            code: code.map(str::to_owned),
            inner: inner.map(str::to_owned),
        }
    }

    #[test]
    fn table() {
        use ErrorKind::*;
        let cases = [
            (
                Op::Unwrap,
                vault(403, Some("Forbidden"), Some("KeyDisabled")),
                Refused,
                Hint::Reenable,
            ),
            (
                Op::Wrap,
                vault(403, Some("KeyDisabled"), None),
                Refused,
                Hint::Reenable,
            ),
            (
                Op::Wrap,
                vault(403, Some("Forbidden"), Some("ForbiddenByRbac")),
                Refused,
                Hint::RoleAssignment,
            ),
            (
                Op::Get,
                vault(403, Some("Forbidden"), Some("AccessDenied")),
                Refused,
                Hint::RoleAssignment,
            ),
            (
                Op::Unwrap,
                vault(403, None, None),
                Refused,
                Hint::RoleAssignment,
            ),
            (
                Op::Unwrap,
                vault(403, Some("Forbidden"), Some("ForbiddenByFirewall")),
                Refused,
                Hint::Network,
            ),
            (
                Op::Get,
                vault(404, Some("KeyNotFound"), None),
                NotFound,
                Hint::CreateKey,
            ),
            (
                Op::Unwrap,
                vault(404, Some("KeyNotFound"), None),
                NotFound,
                Hint::CreateKey,
            ),
            (
                Op::Unwrap,
                vault(400, Some("BadParameter"), None),
                InvalidCiphertext,
                Hint::None,
            ),
            (
                Op::Wrap,
                vault(400, Some("BadParameter"), None),
                Misconfigured,
                Hint::CreateKey,
            ),
            (
                Op::Wrap,
                vault(401, Some("Unauthorized"), None),
                Misconfigured,
                Hint::Credentials,
            ),
            (Op::Unwrap, vault(408, None, None), Timeout, Hint::None),
            (
                Op::Unwrap,
                vault(429, Some("Throttled"), None),
                Throttled,
                Hint::None,
            ),
            (
                Op::Unwrap,
                vault(500, Some("InternalServerError"), None),
                Unavailable,
                Hint::None,
            ),
            (
                Op::Wrap,
                vault(503, Some("ServiceUnavailable"), None),
                Unavailable,
                Hint::None,
            ),
            (
                Op::Get,
                vault(409, Some("Conflict"), None),
                Unavailable,
                Hint::None,
            ),
            (
                Op::Wrap,
                Failure::Identity { status: 401 },
                Misconfigured,
                Hint::Credentials,
            ),
            (
                Op::Wrap,
                Failure::Identity { status: 400 },
                Misconfigured,
                Hint::Credentials,
            ),
            (
                Op::Wrap,
                Failure::Identity { status: 429 },
                Throttled,
                Hint::None,
            ),
            (
                Op::Wrap,
                Failure::Identity { status: 503 },
                Unavailable,
                Hint::None,
            ),
            (
                Op::Get,
                Failure::IdentityLocal,
                Misconfigured,
                Hint::Credentials,
            ),
            (Op::Unwrap, Failure::Connect, Unavailable, Hint::None),
            (Op::Unwrap, Failure::Timeout, Timeout, Hint::None),
            (Op::Unwrap, Failure::Io, Unavailable, Hint::None),
            (Op::Unwrap, Failure::Protocol, Misconfigured, Hint::None),
        ];
        for (op, failure, kind, hint) in cases {
            let got = classify(op, &failure);
            assert_eq!((got.kind, got.hint), (kind, hint), "{op:?} {failure:?}");
        }
    }

    #[test]
    fn no_transient_kind_is_a_revocation_and_only_403_revokes() {
        for status in [400, 401, 404, 408, 409, 429, 500, 502, 503, 504] {
            for op in [Op::Wrap, Op::Unwrap, Op::Get] {
                assert!(
                    !classify(op, &vault(status, None, None))
                        .kind
                        .is_revocation_signal()
                );
            }
        }
    }

    #[test]
    fn error_codes_are_read_from_the_json_body() {
        let body = br#"{"error":{"code":"Forbidden","message":"Operation unwrapKey is not allowed on a disabled key.","innererror":{"code":"KeyDisabled"}}}"#;
        assert_eq!(
            error_codes(body),
            (Some("Forbidden".into()), Some("KeyDisabled".into()))
        );
        assert_eq!(error_codes(b"not json"), (None, None));
        assert_eq!(
            error_codes(br#"{"error":{"code":"KeyNotFound","message":"x"}}"#),
            (Some("KeyNotFound".into()), None)
        );
    }
}
