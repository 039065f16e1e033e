//! [`Pkcs11KeyUri`]: the PKCS#11 URI subset (RFC 7512) that names a KEK.
//!
//! Accepted: `pkcs11:` followed by `;`-separated path attributes, each at most once:
//! - `token=<label>`: the token label (CKA_LABEL of the token); optional, defaults to the
//!   configured token, and must equal it when given;
//! - `object=<label>`: the key's CKA_LABEL;
//! - `id=<bytes>`: the key's CKA_ID, usually fully percent-encoded (`id=%01%a2`);
//! - `type=secret-key`: optional; any other type is rejected.
//!
//! At least one of `object` and `id` is required. Values are percent-decoded (`%xx`, hex digits
//! in either case); characters other than RFC 7512's unreserved and `:[]@!$'()*+,=&` must be
//! percent-encoded. No query part: a PIN in a key reference (`?pin-value=`) is refused, the PIN
//! comes from a file or an environment variable only. Other attributes (`slot-id`, `serial`,
//! `model`, vendor `x-` attributes) are rejected: slot ids are not stable, and a key reference
//! that Keyward half-ignores would be worse than one it refuses.

use std::fmt;
use std::str::FromStr;

use keyward_kms::{ErrorKind, ProviderError};

/// The URI scheme prefix.
pub const SCHEME: &str = "pkcs11:";

/// A parsed, validated PKCS#11 key URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pkcs11KeyUri {
    /// The token label, when the URI names one.
    pub token: Option<String>,
    /// The key's CKA_LABEL, when the URI names one.
    pub object: Option<String>,
    /// The key's CKA_ID bytes, when the URI names one.
    pub id: Option<Vec<u8>>,
}

/// Why a string is not an acceptable PKCS#11 key URI. Every variant says exactly what to fix.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPkcs11Uri {
    /// Does not start with `pkcs11:`.
    #[error(
        "'{0}' is not a PKCS#11 URI: it must start with 'pkcs11:', e.g. pkcs11:token=keyward;object=tenant-kek"
    )]
    MissingScheme(String),
    /// Has a `?` query part.
    #[error(
        "PKCS#11 URI '{0}' has a query part ('?…'); Keyward accepts none (the PIN comes from pin_file or pin_env, never from a key reference)"
    )]
    QueryNotAllowed(String),
    /// A path attribute without `=`.
    #[error("PKCS#11 URI attribute '{0}' has no '=': attributes are name=value, separated by ';'")]
    MissingEquals(String),
    /// An attribute outside the accepted subset.
    #[error(
        "PKCS#11 URI attribute '{0}' is not supported: use token=, object= and/or id= (and optionally type=secret-key); slot ids are not stable, so keys are found by token label"
    )]
    UnsupportedAttribute(String),
    /// The same attribute twice.
    #[error("PKCS#11 URI attribute '{0}' is given more than once")]
    DuplicateAttribute(String),
    /// An attribute with an empty value.
    #[error("PKCS#11 URI attribute '{0}' has an empty value")]
    EmptyValue(String),
    /// A `%` not followed by two hex digits.
    #[error(
        "PKCS#11 URI attribute '{attribute}' has a bad percent-encoding at byte {at}: '%' must be followed by two hex digits"
    )]
    BadPercentEncoding {
        /// The attribute name.
        attribute: String,
        /// Byte offset of the `%` in the value.
        at: usize,
    },
    /// A character that must be percent-encoded.
    #[error(
        "PKCS#11 URI attribute '{attribute}' contains '{ch}', which must be percent-encoded (RFC 7512)"
    )]
    MustBeEncoded {
        /// The attribute name.
        attribute: String,
        /// The offending character.
        ch: char,
    },
    /// `token` or `object` does not decode to UTF-8.
    #[error("PKCS#11 URI attribute '{0}' does not decode to UTF-8 text")]
    NotUtf8(String),
    /// `type` other than `secret-key`.
    #[error(
        "PKCS#11 URI has type={0}; a Keyward KEK is an AES secret key, so only type=secret-key is accepted"
    )]
    WrongType(String),
    /// Neither `object` nor `id`.
    #[error("PKCS#11 URI '{0}' names no key: give object=<key label> and/or id=<key id>")]
    NoKeyAttribute(String),
    /// A token label longer than PKCS#11's 32 bytes.
    #[error("PKCS#11 URI token label is {0} bytes; PKCS#11 token labels are at most 32 bytes")]
    TokenLabelTooLong(usize),
}

impl From<InvalidPkcs11Uri> for ProviderError {
    fn from(e: InvalidPkcs11Uri) -> Self {
        ProviderError::new(ErrorKind::Misconfigured, e.to_string())
            .with_remediation(
                "Give the key as pkcs11:token=<token label>;object=<key label> or \
                 pkcs11:token=<token label>;id=%xx%xx (the key's CKA_ID, percent-encoded); \
                 `pkcs11-tool --module <module> --token-label <token> --login --list-objects --type secrkey` \
                 lists the labels and ids.",
            )
            .with_source(e)
    }
}

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:[]@!$'()*+,=&".contains(c)
}

fn decode(attribute: &str, value: &str) -> Result<Vec<u8>, InvalidPkcs11Uri> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).filter(|h| h.len() == 2);
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| hex.is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
            match byte {
                Some(b) => out.push(b),
                None => {
                    return Err(InvalidPkcs11Uri::BadPercentEncoding {
                        attribute: attribute.to_owned(),
                        at: i,
                    });
                }
            }
            i += 3;
        } else {
            let ch = value[i..].chars().next().unwrap_or('\u{fffd}');
            if !is_plain(ch) {
                return Err(InvalidPkcs11Uri::MustBeEncoded {
                    attribute: attribute.to_owned(),
                    ch,
                });
            }
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn encode_into(out: &mut String, bytes: &[u8], all: bool) {
    use fmt::Write;
    for &b in bytes {
        if !all && b.is_ascii() && is_plain(b as char) && b != b'&' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
}

impl Pkcs11KeyUri {
    /// Parses the id of a [`keyward_kms::KeyRef`] of kind `pkcs11`: the full URI
    /// (`pkcs11:token=…;object=…`, the canonical form, so the whole key reference reads
    /// `pkcs11:pkcs11:token=…`), or the URI without its scheme, which is what
    /// `"pkcs11:token=…;object=…".parse::<KeyRef>()` yields.
    pub fn from_key_ref_id(id: &str) -> Result<Self, InvalidPkcs11Uri> {
        if id.starts_with(SCHEME) {
            id.parse()
        } else {
            format!("{SCHEME}{id}").parse()
        }
    }
}

impl FromStr for Pkcs11KeyUri {
    type Err = InvalidPkcs11Uri;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(path) = s.strip_prefix(SCHEME) else {
            return Err(InvalidPkcs11Uri::MissingScheme(s.to_owned()));
        };
        if path.contains('?') {
            return Err(InvalidPkcs11Uri::QueryNotAllowed(s.to_owned()));
        }
        let mut uri = Pkcs11KeyUri {
            token: None,
            object: None,
            id: None,
        };
        let mut seen_type = false;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| InvalidPkcs11Uri::MissingEquals(attr.to_owned()))?;
            if value.is_empty() {
                return Err(InvalidPkcs11Uri::EmptyValue(name.to_owned()));
            }
            let dup = || InvalidPkcs11Uri::DuplicateAttribute(name.to_owned());
            let text = |bytes: Vec<u8>| {
                String::from_utf8(bytes).map_err(|_| InvalidPkcs11Uri::NotUtf8(name.to_owned()))
            };
            match name {
                "token" => {
                    if uri.token.is_some() {
                        return Err(dup());
                    }
                    let label = text(decode(name, value)?)?;
                    if label.len() > 32 {
                        return Err(InvalidPkcs11Uri::TokenLabelTooLong(label.len()));
                    }
                    uri.token = Some(label);
                }
                "object" => {
                    if uri.object.is_some() {
                        return Err(dup());
                    }
                    uri.object = Some(text(decode(name, value)?)?);
                }
                "id" => {
                    if uri.id.is_some() {
                        return Err(dup());
                    }
                    uri.id = Some(decode(name, value)?);
                }
                "type" => {
                    if seen_type {
                        return Err(dup());
                    }
                    seen_type = true;
                    let t = text(decode(name, value)?)?;
                    if t != "secret-key" {
                        return Err(InvalidPkcs11Uri::WrongType(t));
                    }
                }
                other => return Err(InvalidPkcs11Uri::UnsupportedAttribute(other.to_owned())),
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(InvalidPkcs11Uri::NoKeyAttribute(s.to_owned()));
        }
        Ok(uri)
    }
}

impl fmt::Display for Pkcs11KeyUri {
    /// The canonical form: `pkcs11:token=…;id=…;object=…` (those present, in that order), `id`
    /// fully percent-encoded in lower-case hex, labels encoded only where RFC 7512 requires.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = &self.token {
            let mut s = String::from("token=");
            encode_into(&mut s, t.as_bytes(), false);
            parts.push(s);
        }
        if let Some(id) = &self.id {
            let mut s = String::from("id=");
            encode_into(&mut s, id, true);
            parts.push(s);
        }
        if let Some(o) = &self.object {
            let mut s = String::from("object=");
            encode_into(&mut s, o.as_bytes(), false);
            parts.push(s);
        }
        write!(f, "{SCHEME}{}", parts.join(";"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Pkcs11KeyUri, InvalidPkcs11Uri> {
        s.parse()
    }

    #[test]
    fn parses_token_object_and_id() {
        let u = parse("pkcs11:token=keyward;object=tenant-kek;id=%01%A2%ff").unwrap();
        assert_eq!(u.token.as_deref(), Some("keyward"));
        assert_eq!(u.object.as_deref(), Some("tenant-kek"));
        assert_eq!(u.id.as_deref(), Some(&[0x01, 0xa2, 0xff][..]));
        assert_eq!(
            u.to_string(),
            "pkcs11:token=keyward;id=%01%a2%ff;object=tenant-kek"
        );
        assert_eq!(parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn object_or_id_alone_and_type() {
        let u = parse("pkcs11:object=k1").unwrap();
        assert_eq!((u.token, u.id), (None, None));
        let u = parse("pkcs11:id=abc;type=secret-key").unwrap();
        assert_eq!(u.id.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn labels_with_spaces_and_unicode_round_trip() {
        let u = parse("pkcs11:token=My%20Token;object=k%C3%A9y%3B1").unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("kéy;1"));
        assert_eq!(parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn precise_errors() {
        use InvalidPkcs11Uri as E;
        assert!(matches!(parse("object=k"), Err(E::MissingScheme(_))));
        assert!(matches!(
            parse("pkcs11:object=k?pin-value=1234"),
            Err(E::QueryNotAllowed(_))
        ));
        assert!(matches!(parse("pkcs11:object"), Err(E::MissingEquals(a)) if a == "object"));
        assert!(
            matches!(parse("pkcs11:slot-id=0;object=k"), Err(E::UnsupportedAttribute(a)) if a == "slot-id")
        );
        assert!(
            matches!(parse("pkcs11:object=a;object=b"), Err(E::DuplicateAttribute(a)) if a == "object")
        );
        assert!(matches!(parse("pkcs11:object="), Err(E::EmptyValue(a)) if a == "object"));
        assert!(matches!(
            parse("pkcs11:id=%0"),
            Err(E::BadPercentEncoding { at: 0, .. })
        ));
        assert!(matches!(
            parse("pkcs11:id=%zz"),
            Err(E::BadPercentEncoding { .. })
        ));
        assert!(matches!(
            parse("pkcs11:id=%+1"),
            Err(E::BadPercentEncoding { .. })
        ));
        assert!(matches!(
            parse("pkcs11:object=a b"),
            Err(E::MustBeEncoded { ch: ' ', .. })
        ));
        assert!(matches!(
            parse("pkcs11:object=a/b"),
            Err(E::MustBeEncoded { ch: '/', .. })
        ));
        assert!(matches!(parse("pkcs11:object=%ff"), Err(E::NotUtf8(_))));
        assert!(matches!(
            parse("pkcs11:type=private;object=k"),
            Err(E::WrongType(t)) if t == "private"
        ));
        assert!(matches!(parse("pkcs11:"), Err(E::NoKeyAttribute(_))));
        assert!(matches!(
            parse("pkcs11:token=keyward"),
            Err(E::NoKeyAttribute(_))
        ));
        assert!(matches!(
            parse(&format!("pkcs11:object=k;token={}", "t".repeat(33))),
            Err(E::TokenLabelTooLong(33))
        ));
    }

    #[test]
    fn key_ref_ids_with_and_without_scheme() {
        let full: keyward_kms::KeyRef = "pkcs11:pkcs11:token=t;object=k".parse().unwrap();
        let short: keyward_kms::KeyRef = "pkcs11:token=t;object=k".parse().unwrap();
        assert_eq!(short.id(), "token=t;object=k");
        let a = Pkcs11KeyUri::from_key_ref_id(full.id()).unwrap();
        let b = Pkcs11KeyUri::from_key_ref_id(short.id()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "pkcs11:token=t;object=k");
        assert!(matches!(
            Pkcs11KeyUri::from_key_ref_id("token=t"),
            Err(InvalidPkcs11Uri::NoKeyAttribute(_))
        ));
    }

    #[test]
    fn errors_become_misconfigured_with_remediation() {
        let e: ProviderError = parse("pkcs11:slot-id=1").unwrap_err().into();
        assert_eq!(e.kind(), ErrorKind::Misconfigured);
        assert!(e.message().contains("slot-id"), "{e}");
        assert!(e.remediation().unwrap().contains("pkcs11-tool"));
    }
}
