//! [`EncryptionContext`]: the caller's string map, bound into every envelope through the AAD.

use std::collections::BTreeMap;

use crate::error::EnvelopeError;

/// Maximum number of entries in an encryption context.
pub const CONTEXT_MAX_ENTRIES: usize = 64;
/// Maximum length of a context key in bytes (keys are at least 1 byte).
pub const CONTEXT_MAX_KEY_LEN: usize = 128;
/// Maximum length of a context value in bytes (values may be empty).
pub const CONTEXT_MAX_VALUE_LEN: usize = 1024;
/// Maximum length of the canonical encoding ([`EncryptionContext::canonical_bytes`]) in bytes.
pub const CONTEXT_MAX_ENCODED_LEN: usize = 16 * 1024;
/// Key prefix reserved for Keyward's own entries (for example in KMS and wrap contexts).
pub const RESERVED_PREFIX: &str = "keyward:";

/// The caller's encryption context: a string → string map that must be presented again, exactly,
/// to decrypt.
///
/// It is not stored in the envelope and not secret; it is authenticated as part of the AES-GCM
/// additional data, so a wrong or missing entry makes decryption fail
/// ([`EnvelopeError::DecryptFailed`]).
///
/// Bounds: at most 64 entries; keys 1..=128 bytes; values 0..=1024 bytes; canonical encoding at
/// most 16 KiB. Keys beginning with `"keyward:"` are reserved for the service itself and are
/// rejected by [`EncryptionContext::try_from_map`]; [`EncryptionContext::with_reserved`]
/// accepts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The empty context.
    pub fn empty() -> Self {
        EncryptionContext(BTreeMap::new())
    }

    /// Validates a caller-supplied map: the bounds above, and no `"keyward:"` key.
    pub fn try_from_map(map: BTreeMap<String, String>) -> Result<Self, EnvelopeError> {
        if let Some(key) = map.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
            return Err(EnvelopeError::InvalidContext(format!(
                "key {:?} uses the prefix {RESERVED_PREFIX:?}, which is reserved for Keyward",
                bounded(key)
            )));
        }
        Self::with_reserved(map)
    }

    /// Validates a map built by the service itself: the same bounds as
    /// [`EncryptionContext::try_from_map`], but `"keyward:"` keys are allowed.
    pub fn with_reserved(map: BTreeMap<String, String>) -> Result<Self, EnvelopeError> {
        if map.len() > CONTEXT_MAX_ENTRIES {
            return Err(EnvelopeError::InvalidContext(format!(
                "{} entries; at most {CONTEXT_MAX_ENTRIES} are allowed",
                map.len()
            )));
        }
        let mut encoded_len = 2usize;
        for (k, v) in &map {
            if k.is_empty() || k.len() > CONTEXT_MAX_KEY_LEN {
                return Err(EnvelopeError::InvalidContext(format!(
                    "key {:?} is {} bytes; keys must be 1 to {CONTEXT_MAX_KEY_LEN} bytes",
                    bounded(k),
                    k.len()
                )));
            }
            if v.len() > CONTEXT_MAX_VALUE_LEN {
                return Err(EnvelopeError::InvalidContext(format!(
                    "value of key {:?} is {} bytes; values must be at most {CONTEXT_MAX_VALUE_LEN} bytes",
                    bounded(k),
                    v.len()
                )));
            }
            encoded_len += 2 + k.len() + 2 + v.len();
        }
        if encoded_len > CONTEXT_MAX_ENCODED_LEN {
            return Err(EnvelopeError::InvalidContext(format!(
                "encoded size {encoded_len} bytes exceeds {CONTEXT_MAX_ENCODED_LEN} bytes"
            )));
        }
        Ok(EncryptionContext(map))
    }

    /// The canonical encoding, used as the tail of the envelope AAD.
    ///
    /// ```text
    /// count            u16 big-endian        number of entries (0..=64)
    /// then for each entry, in ascending byte order of the key (BTreeMap<String, _> order):
    ///   key_len        u16 big-endian        1..=128
    ///   key            key_len bytes         UTF-8
    ///   value_len      u16 big-endian        0..=1024
    ///   value          value_len bytes       UTF-8
    /// ```
    ///
    /// The encoding is injective (every length is explicit and the order is fixed), so two
    /// different contexts never produce the same bytes. The empty context encodes as `00 00`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_canonical(&mut out);
        out
    }

    /// Appends [`EncryptionContext::canonical_bytes`] to `out` (the AAD is built in one buffer).
    pub(crate) fn write_canonical(&self, out: &mut Vec<u8>) {
        // Lengths were bounded in the constructors, so these conversions cannot saturate; the
        // saturating form keeps the function total without a panic path.
        out.extend_from_slice(&u16_be(self.0.len()));
        for (k, v) in &self.0 {
            out.extend_from_slice(&u16_be(k.len()));
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&u16_be(v.len()));
            out.extend_from_slice(v.as_bytes());
        }
    }

    pub(crate) fn encoded_len(&self) -> usize {
        2 + self
            .0
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>()
    }

    /// Entries in canonical (ascending key) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Looks up one entry.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the context has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A read-only view of the underlying map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

fn u16_be(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}

/// At most 40 characters of `s`, for error messages.
fn bounded(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn empty_context_encoding() {
        assert_eq!(EncryptionContext::empty().canonical_bytes(), [0, 0]);
        assert_eq!(EncryptionContext::default(), EncryptionContext::empty());
        assert!(EncryptionContext::empty().is_empty());
    }

    #[test]
    fn canonical_encoding_is_sorted_and_length_prefixed() {
        let ctx =
            EncryptionContext::try_from_map(map(&[("b", "2"), ("a", ""), ("aa", "xyz")])).unwrap();
        assert_eq!(
            ctx.canonical_bytes(),
            [
                0, 3, //
                0, 1, b'a', 0, 0, //
                0, 2, b'a', b'a', 0, 3, b'x', b'y', b'z', //
                0, 1, b'b', 0, 1, b'2',
            ]
        );
        let keys: Vec<&str> = ctx.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "aa", "b"]);
        assert_eq!(ctx.len(), 3);
        assert_eq!(ctx.get("aa"), Some("xyz"));
        assert_eq!(ctx.canonical_bytes().len(), ctx.encoded_len());
    }

    #[test]
    fn encoding_is_injective_on_tricky_pairs() {
        // Moving bytes between key and value, or between entries, must change the encoding.
        let a = EncryptionContext::try_from_map(map(&[("ab", "c")])).unwrap();
        let b = EncryptionContext::try_from_map(map(&[("a", "bc")])).unwrap();
        let c = EncryptionContext::try_from_map(map(&[("a", ""), ("b", "c")])).unwrap();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert_ne!(b.canonical_bytes(), c.canonical_bytes());
        assert_ne!(a.canonical_bytes(), c.canonical_bytes());
    }

    #[test]
    fn reserved_prefix() {
        let m = map(&[("keyward:tenant", "acme")]);
        let err = EncryptionContext::try_from_map(m.clone()).unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidContext(_)));
        assert!(err.to_string().contains("reserved"));
        assert!(EncryptionContext::with_reserved(m).is_ok());
        // Only the exact prefix is reserved.
        assert!(EncryptionContext::try_from_map(map(&[("keyward", "x")])).is_ok());
        assert!(EncryptionContext::try_from_map(map(&[("Keyward:x", "x")])).is_ok());
    }

    #[test]
    fn bounds() {
        let k128 = "k".repeat(128);
        let v1024 = "v".repeat(1024);
        assert!(EncryptionContext::try_from_map(map(&[(k128.as_str(), v1024.as_str())])).is_ok());

        let k129 = "k".repeat(129);
        let v1025 = "v".repeat(1025);
        let bad = [
            map(&[("", "x")]),
            map(&[(k129.as_str(), "x")]),
            map(&[("k", v1025.as_str())]),
        ];
        for m in bad {
            for r in [
                EncryptionContext::try_from_map(m.clone()),
                EncryptionContext::with_reserved(m),
            ] {
                assert!(matches!(r, Err(EnvelopeError::InvalidContext(_))));
            }
        }

        let sixty_four: BTreeMap<String, String> =
            (0..64).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(EncryptionContext::try_from_map(sixty_four.clone()).is_ok());
        let mut sixty_five = sixty_four;
        sixty_five.insert("k64".into(), String::new());
        assert!(matches!(
            EncryptionContext::try_from_map(sixty_five),
            Err(EnvelopeError::InvalidContext(_))
        ));

        // 15 entries of (4-byte key, 1024-byte value) = 2 + 15*1032 = 15482 bytes: fits.
        // 16 entries = 16514 bytes: over 16 KiB although every entry is within bounds.
        let big = |n: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("k{i:03}"), v1024.clone()))
                .collect()
        };
        let ok = EncryptionContext::try_from_map(big(15)).unwrap();
        assert_eq!(ok.canonical_bytes().len(), 15482);
        let err = EncryptionContext::try_from_map(big(16)).unwrap_err();
        assert!(err.to_string().contains("16384"), "{err}");
    }
}
