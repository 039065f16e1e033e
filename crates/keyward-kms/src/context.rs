//! What a KEK call is about.

use std::collections::BTreeMap;
use std::fmt;

use keyward_envelope::{EncryptionContext, KeyId, TenantId};

/// Why a key is being wrapped or unwrapped under a KEK.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The tenant key: the only key on the data path that the KEK wraps.
    TenantKey,
    /// A throw-away key wrapped at onboarding and unwrapped by the revocation monitor, to find
    /// out whether the KEK still works for Keyward (a removed grant shows up only on use).
    Canary,
}

impl Purpose {
    /// The stable name bound into the wrap context.
    pub fn as_str(&self) -> &'static str {
        match self {
            Purpose::TenantKey => "tenant-key",
            Purpose::Canary => "canary",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the KEK call is about; becomes the KMS-level encryption context / AAD so the customer's
/// KMS logs show which tenant key Keyward touched.
///
/// Providers must bind it into every wrap so that a wrapped key only unwraps under the same
/// tenant, tenant key id and purpose:
/// - KMSs with an encryption context (AWS KMS) get [`WrapContext::pairs`] as that context, which
///   also puts the pairs into the customer's CloudTrail records;
/// - KMSs or local code that take AAD bytes get [`WrapContext::aad`].
#[derive(Debug, Clone)]
pub struct WrapContext {
    tenant: TenantId,
    tenant_key_id: KeyId,
    purpose: Purpose,
}

impl WrapContext {
    /// Key of the tenant id in [`WrapContext::pairs`].
    pub const TENANT: &'static str = "keyward:tenant";
    /// Key of the tenant key id (32 lower-case hex digits) in [`WrapContext::pairs`].
    pub const TENANT_KEY_ID: &'static str = "keyward:tenant-key-id";
    /// Key of the [`Purpose`] in [`WrapContext::pairs`].
    pub const PURPOSE: &'static str = "keyward:purpose";

    /// The context for wrapping or unwrapping `tenant`'s key `tenant_key_id` for `purpose`.
    pub fn new(tenant: &TenantId, tenant_key_id: &KeyId, purpose: Purpose) -> Self {
        Self {
            tenant: tenant.clone(),
            tenant_key_id: *tenant_key_id,
            purpose,
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The id of the tenant key being wrapped.
    pub fn tenant_key_id(&self) -> &KeyId {
        &self.tenant_key_id
    }

    /// Why the key is being wrapped.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The context as string pairs:
    /// `{"keyward:purpose": <purpose>, "keyward:tenant": <tenant id>,
    ///   "keyward:tenant-key-id": <32 hex digits>}`.
    pub fn pairs(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (Self::TENANT.to_owned(), self.tenant.as_str().to_owned()),
            (
                Self::TENANT_KEY_ID.to_owned(),
                self.tenant_key_id.to_string(),
            ),
            (Self::PURPOSE.to_owned(), self.purpose.as_str().to_owned()),
        ])
    }

    /// The AAD bytes for providers that take raw AAD: the canonical encoding of
    /// [`WrapContext::pairs`] as an envelope [`EncryptionContext`] (byte layout specified with
    /// the envelope format), so there is exactly one canonical form of a string map in Keyward.
    pub fn aad(&self) -> Vec<u8> {
        EncryptionContext::with_reserved(self.pairs())
            .expect("invariant: the three keyward: pairs of a validated tenant id, a hex key id and a fixed purpose name form a valid reserved encryption context")
            .canonical_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn ctx(tenant: &str, id: [u8; 16], purpose: Purpose) -> WrapContext {
        WrapContext::new(
            &TenantId::try_from(tenant).unwrap(),
            &KeyId::from_bytes(id),
            purpose,
        )
    }

    #[test]
    fn pairs_name_tenant_key_and_purpose() {
        let c = ctx("acme", [0xab; 16], Purpose::TenantKey);
        let pairs = c.pairs();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs["keyward:tenant"], "acme");
        assert_eq!(pairs["keyward:tenant-key-id"], "ab".repeat(16));
        assert_eq!(pairs["keyward:purpose"], "tenant-key");
        assert_eq!(Purpose::Canary.as_str(), "canary");
    }

    /// Pinned: every wrapped key of the GCP, PKCS#11, Azure and local providers is bound to
    /// these bytes, so a change would make every stored tenant key fail to unwrap. Written out
    /// by hand from the documented layout (count, then length-prefixed key and value in key
    /// order, all lengths u16 big-endian); the same 106 bytes as
    /// `python3 -c 'import struct; p=sorted({"keyward:tenant":"acme","keyward:tenant-key-id":"01"*16,"keyward:purpose":"canary"}.items()); print((struct.pack(">H",len(p))+b"".join(struct.pack(">H",len(k))+k.encode()+struct.pack(">H",len(v))+v.encode() for k,v in p)).hex())'`.
    #[test]
    fn aad_is_the_canonical_encryption_context() {
        let c = ctx("acme", [1; 16], Purpose::Canary);
        let expected = [
            &[0, 3][..],
            &[0, 15],
            b"keyward:purpose",
            &[0, 6],
            b"canary",
            &[0, 14],
            b"keyward:tenant",
            &[0, 4],
            b"acme",
            &[0, 21],
            b"keyward:tenant-key-id",
            &[0, 32],
            b"01010101010101010101010101010101",
        ]
        .concat();
        assert_eq!(expected.len(), 106);
        assert_eq!(c.aad(), expected);
    }

    #[test]
    fn aad_differs_in_every_field() {
        let base = ctx("acme", [1; 16], Purpose::TenantKey).aad();
        assert_ne!(base, ctx("globex", [1; 16], Purpose::TenantKey).aad());
        assert_ne!(base, ctx("acme", [2; 16], Purpose::TenantKey).aad());
        assert_ne!(base, ctx("acme", [1; 16], Purpose::Canary).aad());
        assert_eq!(base, ctx("acme", [1; 16], Purpose::TenantKey).aad());
    }
}
