//! [`CryptoKeyName`]: the resource name of a Cloud KMS CryptoKey, the only form Keyward accepts.

use std::fmt;
use std::str::FromStr;

/// The expected form, quoted in every rejection.
pub const EXPECTED_FORM: &str =
    "projects/PROJECT/locations/LOCATION/keyRings/KEY_RING/cryptoKeys/KEY";

/// `projects/P/locations/L/keyRings/R/cryptoKeys/K`: a symmetric CryptoKey.
///
/// A CryptoKeyVersion name (`…/cryptoKeyVersions/N`) is rejected on purpose: Keyward binds a
/// tenant to the key, so that the customer can rotate it (new primary version) without Keyward's
/// involvement, and Cloud KMS finds the version that made a ciphertext by itself on decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CryptoKeyName {
    /// The project id (or number).
    pub project: String,
    /// The location (`global`, `us-east1`, `europe`, …).
    pub location: String,
    /// The key ring id.
    pub key_ring: String,
    /// The CryptoKey id.
    pub crypto_key: String,
}

/// The string is not a CryptoKey resource name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{name}' is not a Cloud KMS CryptoKey resource name: {reason}; expected {EXPECTED_FORM}")]
pub struct InvalidCryptoKeyName {
    name: String,
    reason: String,
}

impl InvalidCryptoKeyName {
    fn new(name: &str, reason: impl Into<String>) -> Self {
        // Bound what is echoed back: the name comes from a request.
        let mut shown: String = name.chars().take(300).collect();
        if shown.len() < name.len() {
            shown.push('…');
        }
        Self {
            name: shown,
            reason: reason.into(),
        }
    }
}

/// Resource ids: Cloud KMS key ring and key ids are `[a-zA-Z0-9_-]{1,63}`; locations are
/// lower-case words with hyphens; project ids are lower-case with hyphens (legacy
/// domain-scoped projects add `.` and `:`), or a project number.
fn check_id(whole: &str, what: &str, id: &str, extra: &[char]) -> Result<(), InvalidCryptoKeyName> {
    if id.is_empty() {
        return Err(InvalidCryptoKeyName::new(
            whole,
            format!("the {what} is empty"),
        ));
    }
    if id.len() > 63 {
        return Err(InvalidCryptoKeyName::new(
            whole,
            format!("the {what} is longer than 63 characters"),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || extra.contains(c)))
    {
        return Err(InvalidCryptoKeyName::new(
            whole,
            format!("the {what} '{id}' contains '{}'", bad.escape_default()),
        ));
    }
    Ok(())
}

impl FromStr for CryptoKeyName {
    type Err = InvalidCryptoKeyName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() >= 10 && parts.get(8) == Some(&"cryptoKeyVersions") {
            return Err(InvalidCryptoKeyName::new(
                s,
                "this names a CryptoKeyVersion; register the CryptoKey (drop /cryptoKeyVersions/…) so the key can be rotated",
            ));
        }
        match parts.as_slice() {
            [
                "projects",
                project,
                "locations",
                location,
                "keyRings",
                key_ring,
                "cryptoKeys",
                crypto_key,
            ] => {
                check_id(s, "project", project, &['.', ':'])?;
                check_id(s, "location", location, &[])?;
                check_id(s, "key ring id", key_ring, &[])?;
                check_id(s, "key id", crypto_key, &[])?;
                Ok(Self {
                    project: (*project).to_owned(),
                    location: (*location).to_owned(),
                    key_ring: (*key_ring).to_owned(),
                    crypto_key: (*crypto_key).to_owned(),
                })
            }
            _ if s.starts_with("//cloudkms.googleapis.com/") => Err(InvalidCryptoKeyName::new(
                s,
                "give the relative resource name, without //cloudkms.googleapis.com/",
            )),
            _ if s.starts_with('/') || s.ends_with('/') => {
                Err(InvalidCryptoKeyName::new(s, "a leading or trailing '/'"))
            }
            _ => Err(InvalidCryptoKeyName::new(
                s,
                "it does not have the segments projects/…/locations/…/keyRings/…/cryptoKeys/…",
            )),
        }
    }
}

impl fmt::Display for CryptoKeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/locations/{}/keyRings/{}/cryptoKeys/{}",
            self.project, self.location, self.key_ring, self.crypto_key
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_a_crypto_key() {
        let s =
            "projects/acme-prod/locations/europe-west1/keyRings/keyward/cryptoKeys/tenant_kek-1";
        let n: CryptoKeyName = s.parse().unwrap();
        assert_eq!(n.project, "acme-prod");
        assert_eq!(n.location, "europe-west1");
        assert_eq!(n.key_ring, "keyward");
        assert_eq!(n.crypto_key, "tenant_kek-1");
        assert_eq!(n.to_string(), s);
        "projects/example.com:legacy/locations/global/keyRings/r/cryptoKeys/k"
            .parse::<CryptoKeyName>()
            .unwrap();
    }

    #[test]
    fn rejects_everything_else_naming_the_expected_form() {
        let cases = [
            (
                "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
                "CryptoKeyVersion",
            ),
            ("projects/p/locations/l/keyRings/r", "segments"),
            (
                "projects/p/locations/l/keyRings/r/cryptoKeys/",
                "key id is empty",
            ),
            (
                "projects/p/locations/l/keyRings/r/cryptoKeys/k/",
                "trailing",
            ),
            ("/projects/p/locations/l/keyRings/r/cryptoKeys/k", "leading"),
            (
                "//cloudkms.googleapis.com/projects/p/locations/l/keyRings/r/cryptoKeys/k",
                "relative",
            ),
            ("projects/p/locations/l/keyRings/r/cryptoKeys/k%20", "'%'"),
            (
                "projects/p/locations/l/keyRings/r/cryptoKeys/k:encrypt",
                "':'",
            ),
            (
                "projects//locations/l/keyRings/r/cryptoKeys/k",
                "project is empty",
            ),
            ("arn:aws:kms:eu-west-1:1:key/x", "segments"),
            ("", "segments"),
        ];
        let long = format!(
            "projects/p/locations/l/keyRings/r/cryptoKeys/{}",
            "k".repeat(64)
        );
        for (name, why) in cases.iter().copied().chain([(long.as_str(), "63")]) {
            let e = name.parse::<CryptoKeyName>().unwrap_err().to_string();
            assert!(e.contains(why), "{name}: {e}");
            assert!(e.contains(EXPECTED_FORM), "{name}: {e}");
        }
    }
}
