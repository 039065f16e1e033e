//! [`TenantId`]: the validated tenant identifier carried in every envelope header.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::EnvelopeError;

/// Maximum length of a tenant identifier in bytes.
pub const TENANT_ID_MAX_LEN: usize = 64;

/// A tenant identifier: 1 to 64 bytes of `[a-z0-9._-]`, starting with `[a-z0-9]`.
///
/// The alphabet is deliberately small: it is safe in file names, URLs, log lines, metric labels
/// and KMS encryption contexts without escaping, and has a single spelling per tenant (no case
/// folding, no Unicode normalisation).
///
/// The identifier is shared (`Arc<str>`): the key caches, the gates and the meters key by it on
/// every call, and a clone is a reference-count increment, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(Arc<str>);

const ALLOWED: &str = "a tenant id is 1 to 64 characters of [a-z0-9._-] starting with [a-z0-9]";

/// Whether `b` is a valid tenant identifier (see [`TenantId`]).
pub(crate) fn is_valid_tenant_id(b: &[u8]) -> bool {
    let Some(first) = b.first() else {
        return false;
    };
    b.len() <= TENANT_ID_MAX_LEN
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

impl TenantId {
    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Validates `s` as a tenant identifier.
    fn validate(s: &str) -> Result<(), EnvelopeError> {
        if is_valid_tenant_id(s.as_bytes()) {
            Ok(())
        } else {
            // Do not echo arbitrarily long input back; show a bounded prefix.
            let shown: String = s.chars().take(TENANT_ID_MAX_LEN).collect();
            let more = if shown.len() < s.len() { "…" } else { "" };
            Err(EnvelopeError::InvalidTenantId(format!(
                "{shown:?}{more} is not valid: {ALLOWED}"
            )))
        }
    }

    /// Builds a tenant id from bytes already known to be valid (the envelope parser).
    pub(crate) fn from_validated_bytes(b: &[u8]) -> Option<Self> {
        if !is_valid_tenant_id(b) {
            return None;
        }
        std::str::from_utf8(b).ok().map(|s| TenantId(Arc::from(s)))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::validate(s)?;
        Ok(TenantId(Arc::from(s)))
    }
}

impl TryFrom<&str> for TenantId {
    type Error = EnvelopeError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for TenantId {
    type Error = EnvelopeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(TenantId(Arc::from(s)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let max = "a".repeat(64);
        for ok in [
            "a",
            "0",
            "acme",
            "acme-corp",
            "t.1_x-2",
            "9lives",
            max.as_str(),
        ] {
            let t: TenantId = ok.parse().unwrap();
            assert_eq!(t.as_str(), ok);
            assert_eq!(t.to_string(), ok);
            assert_eq!(TenantId::try_from(ok).unwrap(), t);
            assert_eq!(TenantId::try_from(ok.to_owned()).unwrap(), t);
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "-acme",
            ".acme",
            "_acme",
            "Acme",
            "acme corp",
            "acme/1",
            "acme:1",
            "acmé",
            "acme\0",
            "acme\n",
            too_long.as_str(),
        ] {
            let err = bad.parse::<TenantId>().unwrap_err();
            assert!(matches!(err, EnvelopeError::InvalidTenantId(_)), "{bad:?}");
            assert!(err.to_string().contains("[a-z0-9._-]"), "{err}");
            assert!(TenantId::try_from(bad.to_owned()).is_err());
        }
    }

    #[test]
    fn error_message_is_bounded() {
        let huge = "X".repeat(10_000);
        let msg = huge.parse::<TenantId>().unwrap_err().to_string();
        assert!(msg.len() < 300, "{}", msg.len());
    }

    #[test]
    fn ordering_is_bytewise() {
        let mut v: Vec<TenantId> = ["b", "a-1", "a"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let s: Vec<&str> = v.iter().map(TenantId::as_str).collect();
        assert_eq!(s, ["a", "a-1", "b"]);
    }
}
