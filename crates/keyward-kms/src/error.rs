//! The error vocabulary of the provider joint.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong at the KMS, classified once by the adapter from typed error codes.
///
/// The server maps each kind to one behaviour (and one gRPC status) in a single exhaustive
/// `match`; adapters must never leave the classification to message text.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The KMS answered and said no: the key is disabled, scheduled for deletion or destroyed, or
    /// Keyward's access was removed (key policy, grant, IAM). This is the revocation signal.
    Refused,
    /// The key (or key version) does not exist.
    NotFound,
    /// The KMS is rate-limiting us. Retry later.
    Throttled,
    /// The KMS or the network to it is down. Not a revocation: cached keys keep serving until
    /// their TTL.
    Unavailable,
    /// The call did not finish in time. Treated like [`ErrorKind::Unavailable`].
    Timeout,
    /// Our side is wrong: bad key reference, wrong region, bad credentials file, a key file with
    /// unsafe permissions. Needs an operator, retrying will not help.
    Misconfigured,
    /// The wrapped key is not valid under this KEK and context: corrupted, truncated, made by
    /// another key, or bound to another tenant, tenant key or purpose.
    InvalidCiphertext,
}

impl ErrorKind {
    /// Whether this error means the customer has revoked Keyward's use of the key.
    ///
    /// Only [`ErrorKind::Refused`]: an unreachable KMS is not a KMS that refuses, and a
    /// missing key is reported as such so that a typo in a key reference is not mistaken for a
    /// revocation at onboarding time.
    pub fn is_revocation_signal(self) -> bool {
        matches!(self, ErrorKind::Refused)
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Timeout
        )
    }

    /// A stable, lower-case, kebab-case name for logs, metrics and error details.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Misconfigured => "misconfigured",
            ErrorKind::InvalidCiphertext => "invalid-ciphertext",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed provider call: a [`ErrorKind`] to act on, a message for humans and, when there is
/// one, the underlying SDK or I/O error as the [`source`](StdError::source).
///
/// Messages may be shown to operators and customers' security teams; they must never contain
/// key material.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ProviderError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    remediation: Option<String>,
}

impl ProviderError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            remediation: None,
        }
    }

    /// Attaches what the customer should do to fix it (e.g. the key-policy
    /// statement to add), shown at onboarding and in error details.
    #[must_use]
    pub fn with_remediation(mut self, remediation: impl Into<String>) -> Self {
        self.remediation = Some(remediation.into());
        self
    }

    /// What the customer should do about it, when the provider knows.
    pub fn remediation(&self) -> Option<&str> {
        self.remediation.as_deref()
    }

    /// Attaches the underlying error, kept as [`source`](StdError::source).
    #[must_use]
    pub fn with_source(mut self, e: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// What went wrong, for the caller to act on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (without the kind prefix and without the source).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for `self.kind().is_revocation_signal()`.
    pub fn is_revocation_signal(&self) -> bool {
        self.kind.is_revocation_signal()
    }

    /// Shorthand for `self.kind().is_transient()`.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 7] = [
        ErrorKind::Refused,
        ErrorKind::NotFound,
        ErrorKind::Throttled,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Misconfigured,
        ErrorKind::InvalidCiphertext,
    ];

    #[test]
    fn only_refused_is_a_revocation_signal() {
        for kind in ALL {
            assert_eq!(
                kind.is_revocation_signal(),
                kind == ErrorKind::Refused,
                "{kind}"
            );
        }
    }

    #[test]
    fn transient_kinds() {
        let transient: Vec<_> = ALL.into_iter().filter(|k| k.is_transient()).collect();
        assert_eq!(
            transient,
            [
                ErrorKind::Throttled,
                ErrorKind::Unavailable,
                ErrorKind::Timeout
            ]
        );
        assert!(
            ALL.iter()
                .all(|k| !(k.is_transient() && k.is_revocation_signal()))
        );
    }

    #[test]
    fn names_are_distinct_and_stable() {
        let names: std::collections::BTreeSet<_> = ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(ErrorKind::InvalidCiphertext.as_str(), "invalid-ciphertext");
        assert_eq!(ErrorKind::NotFound.to_string(), "not-found");
    }

    #[test]
    fn display_accessors_and_source() {
        let io = std::io::Error::other("disk on fire");
        let e = ProviderError::new(ErrorKind::Unavailable, "could not read key").with_source(io);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(e.message(), "could not read key");
        assert_eq!(e.to_string(), "unavailable: could not read key");
        assert!(e.is_transient());
        assert!(!e.is_revocation_signal());
        assert_eq!(e.source().unwrap().to_string(), "disk on fire");

        let e = ProviderError::new(ErrorKind::Refused, "key disabled");
        assert!(e.source().is_none());
        assert!(e.is_revocation_signal());
    }
}
