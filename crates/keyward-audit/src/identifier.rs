//! [`IdentifierHasher`]: HMAC-SHA-256 of caller-chosen identifiers that the audit log must be
//! able to correlate but need not show (scope labels, which may be user ids).

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::error::AuditError;

/// The prefix of every [`IdentifierHasher::hash`] output.
pub const IDENTIFIER_HASH_PREFIX: &str = "hmac-sha256:";

/// Domain-separation label for identifier hashes (`docs/audit-format.md` §2).
const LABEL: &[u8] = b"keyward-audit-identifier-v1\n";

/// Domain-separation label for [`IdentifierHasher::tag`]: differs from [`LABEL`] in its first
/// bytes, so no tag input is ever an identifier-hash input and digests published in the audit
/// log say nothing about tags.
const TAG_LABEL: &[u8] = b"keyward-keyed-tag-v1\n";

/// Length of an [`IdentifierHasher::tag`] (HMAC-SHA-256).
pub const TAG_LEN: usize = 32;

/// Hashes identifiers with the deployment's 256-bit audit key.
///
/// `hash(kind, value)` = `"hmac-sha256:" || hex(HMAC-SHA-256(key, "keyward-audit-identifier-v1\n"
/// || u64_be(len(kind)) || kind || value))`. The length prefix separates kinds unambiguously, so
/// the scope `"a"` and a user id `"a"` give unrelated digests. The same value under the same key
/// always gives the same digest, so an auditor holding the key (or the customer, asked to hash a
/// known label) can match records to a scope without the log revealing the label.
///
/// The key is zeroized on drop; the type has no `Debug` or `Clone`.
#[allow(
    missing_debug_implementations,
    reason = "holds the deployment audit key, which must never be formatted"
)]
pub struct IdentifierHasher {
    key: Zeroizing<[u8; 32]>,
}

impl IdentifierHasher {
    /// Uses `key` (256 bits from a CSPRNG, kept in the deployment's secret store).
    pub fn new(key: [u8; 32]) -> Self {
        IdentifierHasher {
            key: Zeroizing::new(key),
        }
    }

    /// Uses a key given as a byte slice, which must be exactly 32 bytes.
    pub fn from_slice(key: &[u8]) -> Result<Self, AuditError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        if key.len() != bytes.len() {
            return Err(AuditError::Malformed(format!(
                "the audit identifier key must be 32 bytes, got {}",
                key.len()
            )));
        }
        bytes.copy_from_slice(key);
        Ok(IdentifierHasher { key: bytes })
    }

    /// Generates a fresh random key (for tests and first-time setup).
    pub fn generate() -> Result<Self, AuditError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut bytes[..])
            .map_err(|_| AuditError::SigningKey("the system random generator failed".into()))?;
        Ok(IdentifierHasher { key: bytes })
    }

    /// `"hmac-sha256:<64 lowercase hex>"` of `value`, domain-separated by `kind` (for example
    /// `"scope"`).
    pub fn hash(&self, kind: &str, value: &str) -> String {
        // aws-lc copies the key into its own HMAC context, which it cleanses when dropped.
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key[..]);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(LABEL);
        ctx.update(&(kind.len() as u64).to_be_bytes());
        ctx.update(kind.as_bytes());
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        format!("{IDENTIFIER_HASH_PREFIX}{}", hex::encode(tag.as_ref()))
    }

    /// A raw authentication tag of `message` for `purpose` (for example `"tenant-key"`):
    /// `HMAC-SHA-256(key, "keyward-keyed-tag-v1\n" || u64_be(len(purpose)) || purpose ||
    /// message)`. For data Keyward stores and must later recognise as its own (a wrapped tenant
    /// key, docs/adr/0007-tenant-key-mac.md): whoever can write the store but cannot read this
    /// key cannot make a tag. The caller encodes `message` unambiguously and compares tags in
    /// constant time.
    pub fn tag(&self, purpose: &str, message: &[u8]) -> [u8; TAG_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key[..]);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(TAG_LABEL);
        ctx.update(&(purpose.len() as u64).to_be_bytes());
        ctx.update(purpose.as_bytes());
        ctx.update(message);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn pinned_vector_and_domain_separation() {
        let h = IdentifierHasher::new([0x42; 32]);
        let a = h.hash("scope", "user-123");
        // Pinned: changing the construction would silently break correlation across versions.
        assert_eq!(
            a,
            "hmac-sha256:6afd604474980e55aeef93d68b7c347897abac1056f463d50e20a74586ede66c"
        );
        assert_ne!(a, h.hash("user", "user-123"));
        assert_ne!(h.hash("scope", "ab"), h.hash("scopea", "b"));
        assert_ne!(
            a,
            IdentifierHasher::new([0x43; 32]).hash("scope", "user-123")
        );
        assert!(IdentifierHasher::from_slice(&[0; 31]).is_err());
        assert_eq!(
            IdentifierHasher::from_slice(&[0x42; 32])
                .unwrap()
                .hash("scope", "user-123"),
            a
        );
    }

    #[test]
    fn matches_an_independent_hmac() {
        // Recompute with the one-shot API over the concatenated message.
        let h = IdentifierHasher::new([7; 32]);
        let mut msg = b"keyward-audit-identifier-v1\n".to_vec();
        msg.extend_from_slice(&5u64.to_be_bytes());
        msg.extend_from_slice(b"scopedefault");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        let want = hex::encode(hmac::sign(&key, &msg).as_ref());
        assert_eq!(h.hash("scope", "default"), format!("hmac-sha256:{want}"));
    }

    #[test]
    fn tags_are_pinned_and_separated_from_identifier_hashes() {
        let h = IdentifierHasher::new([7; 32]);
        let mut msg = b"keyward-keyed-tag-v1\n".to_vec();
        msg.extend_from_slice(&10u64.to_be_bytes());
        msg.extend_from_slice(b"tenant-keyabc");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        let want = hmac::sign(&key, &msg);
        assert_eq!(&h.tag("tenant-key", b"abc")[..], want.as_ref());
        // Pinned: changing the construction would make every stored tag fail.
        assert_eq!(
            hex::encode(IdentifierHasher::new([0x42; 32]).tag("tenant-key", b"abc")),
            PINNED_TAG
        );
        assert_ne!(h.tag("tenant-key", b"abc"), h.tag("tenant-keya", b"bc"));
        assert_ne!(
            h.tag("tenant-key", b"abc"),
            IdentifierHasher::new([8; 32]).tag("tenant-key", b"abc")
        );
        // Same purpose and bytes as an identifier hash, different output.
        assert!(
            !h.hash("scope", "x")
                .ends_with(&hex::encode(h.tag("scope", b"x")))
        );
    }

    const PINNED_TAG: &str = "f26d769a8128cc0f9f6ce8e7394ceed6fcf32d93738fad5f654f7463ec6270af";
}
