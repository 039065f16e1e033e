//! Authentication of stored wrapped tenant keys (docs/adr/0007-tenant-key-mac.md).
//!
//! A wrapped tenant key is only as trustworthy as the KEK's wrap: with AWS KMS, GCP KMS, a
//! symmetric HSM key or a Managed HSM AES key, only the KMS can produce a blob that unwraps.
//! With an asymmetric KEK (Azure Key Vault RSA keys: RSA-OAEP-256 needs only the public key)
//! anyone can, so whoever can write `tenant_keys` could plant a tenant key of their choosing and
//! every new DEK would go under it. So every stored wrapped tenant key carries a tag
//! (`tenant_keys.mac`) under a key the store does not hold, made at registration and checked
//! before each use, for every provider, before the provider is asked to unwrap: a planted blob
//! never reaches the KMS and is never used.
//!
//! The key is the deployment's audit identifier key (`<audit_dir>/identifier-key`, shared by
//! every replica), under its own domain ([`IdentifierHasher::tag`] with purpose
//! [`TAG_PURPOSE`]). The tagged message is, each field as `u64_be(len) || bytes`:
//!
//! ```text
//! "keyward-tenant-key-mac-v1" || tenant id || tenant key id (32 lowercase hex)
//!     || provider kind (e.g. "azure-key-vault") || key_ref (as stored) || wrapped bytes
//! ```
//!
//! The binding id is not in it: the store assigns it inside `bind_kek`, after the tag is made.
//! The tenant key id (a random 128-bit primary key) already names the one binding that owns the
//! key, and the binding's provider and key_ref (which the unwrap uses) are covered.
//!
//! A row without a tag (written before schema version 5) is refused like a wrong tag: a NULL is
//! no way around the check. `keyward store authenticate-tenant-keys` tags such rows once, after
//! the operator has checked the store (trust on first use, audited as `admin_action`).

use std::fmt;

use keyward_audit::{AuditEvent, IdentifierHasher};
use keyward_envelope::{KeyId, TenantId};
use keyward_store::{ProviderKind, Store, TenantKeyRecord};
use subtle::ConstantTimeEq as _;

use crate::error::ServiceError;

/// The [`IdentifierHasher::tag`] purpose of tenant-key tags.
pub const TAG_PURPOSE: &str = "tenant-key";

/// Version label at the start of every tagged message.
const MESSAGE_LABEL: &[u8] = b"keyward-tenant-key-mac-v1";

/// The tagged message of a wrapped tenant key (layout in the module docs).
fn message(
    tenant: &TenantId,
    id: &KeyId,
    provider: &str,
    key_ref: &str,
    wrapped: &[u8],
) -> Vec<u8> {
    let id = id.to_string();
    let fields: [&[u8]; 6] = [
        MESSAGE_LABEL,
        tenant.as_str().as_bytes(),
        id.as_bytes(),
        provider.as_bytes(),
        key_ref.as_bytes(),
        wrapped,
    ];
    let mut out = Vec::with_capacity(fields.iter().map(|f| 8 + f.len()).sum());
    for field in fields {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// The tag of a wrapped tenant key as stored in `tenant_keys.mac`: what the keyring makes at
/// registration and checks before use. For tools that write tenant keys without a keyring (the
/// benchmark's bulk population); `provider` and `key_ref` exactly as stored in the binding.
pub fn tag_tenant_key(
    hasher: &IdentifierHasher,
    tenant: &TenantId,
    id: &KeyId,
    provider: ProviderKind,
    key_ref: &str,
    wrapped: &[u8],
) -> Vec<u8> {
    hasher
        .tag(
            TAG_PURPOSE,
            &message(tenant, id, provider.as_str(), key_ref, wrapped),
        )
        .to_vec()
}

/// The tag of a stored tenant key as it should be.
fn expected_tag(hasher: &IdentifierHasher, record: &TenantKeyRecord) -> Vec<u8> {
    tag_tenant_key(
        hasher,
        &record.tenant,
        &record.id,
        record.provider,
        &record.key_ref,
        record.wrapped.as_bytes(),
    )
}

/// Whether `record`'s stored tag is present and right, in constant time.
pub(super) fn verify(
    hasher: &IdentifierHasher,
    record: &TenantKeyRecord,
) -> Result<(), ServiceError> {
    let Some(stored) = record.mac.as_deref() else {
        return Err(ServiceError::WrappedKeyRejected(format!(
            "tenant key {} of tenant {} has no authentication tag (stored before schema \
             version 5); check the store, then run `keyward store authenticate-tenant-keys` \
             (docs/operations.md, \"Authenticate tenant keys after an upgrade\")",
            record.id, record.tenant
        )));
    };
    // `ct_eq` on slices of different lengths is false, also in constant time.
    if bool::from(expected_tag(hasher, record).as_slice().ct_eq(stored)) {
        Ok(())
    } else {
        Err(ServiceError::WrappedKeyRejected(format!(
            "tenant key {} of tenant {} fails its authentication tag: the stored key, its \
             provider or key_ref was changed outside Keyward, or this server's audit identifier \
             key is not the one it was stored under; it is not used",
            record.id, record.tenant
        )))
    }
}

/// One tenant key tagged by [`authenticate_stored_tenant_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthenticatedTenantKey {
    pub tenant: TenantId,
    pub tenant_key_id: KeyId,
    pub binding_id: i64,
    pub provider: String,
    pub key_ref: String,
}

impl fmt::Display for AuthenticatedTenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant={} tenant_key_id={} binding_id={} provider={} key_ref={}",
            self.tenant, self.tenant_key_id, self.binding_id, self.provider, self.key_ref
        )
    }
}

/// The upgrade path: tags every stored tenant key that has no tag yet (rows written before
/// schema version 5) with `hasher` (the deployment's audit identifier key), each in its own
/// transaction with an `admin_action` record (`authenticate_tenant_key`, by `actor`). Trust on
/// first use: it vouches for the rows as they are now, so the operator runs it once, after
/// checking the store (docs/operations.md). A row that already has a tag is never changed.
pub async fn authenticate_stored_tenant_keys(
    store: &dyn Store,
    hasher: &IdentifierHasher,
    actor: &str,
) -> Result<Vec<AuthenticatedTenantKey>, ServiceError> {
    let mut done = Vec::new();
    for record in store.unauthenticated_tenant_keys().await? {
        let key = AuthenticatedTenantKey {
            tenant: record.tenant.clone(),
            tenant_key_id: record.id,
            binding_id: record.binding_id,
            provider: record.provider.to_string(),
            key_ref: record.key_ref.clone(),
        };
        let detail = key.to_string();
        store
            .authenticate_tenant_key(
                &record.tenant,
                &record.id,
                expected_tag(hasher, &record),
                &|_: &TenantKeyRecord| {
                    vec![AuditEvent::AdminAction {
                        actor: actor.to_owned(),
                        action: "authenticate_tenant_key".to_owned(),
                        detail: detail.clone(),
                    }]
                },
            )
            .await?;
        done.push(key);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use keyward_envelope::WrappedKey;

    fn record(mac: Option<Vec<u8>>) -> TenantKeyRecord {
        TenantKeyRecord {
            id: KeyId::from_bytes([1; 16]),
            tenant: TenantId::try_from("acme").unwrap(),
            binding_id: 7,
            provider: ProviderKind::AzureKeyVault,
            key_ref: "https://kwtest.vault.azure.net/keys/kek".to_owned(),
            wrapped: WrappedKey::new(vec![9; 40]),
            created_at_ms: 0,
            mac,
            binding_state: keyward_store::KekState::Active,
            binding_state_changed_at_ms: 0,
        }
    }

    /// Pinned: every stored `tenant_keys.mac` is this construction, so a change would refuse
    /// every stored tenant key. Computed independently, from the layouts in the module docs and
    /// in [`IdentifierHasher::tag`]'s docs:
    /// `python3 -c 'import hmac,hashlib,struct; f=[b"keyward-tenant-key-mac-v1",b"acme",b"01"*16,b"azure-key-vault",b"https://kwtest.vault.azure.net/keys/kek",b"\x09"*40]; m=b"".join(struct.pack(">Q",len(x))+x for x in f); print(hmac.new(b"\x05"*32,b"keyward-keyed-tag-v1\n"+struct.pack(">Q",10)+b"tenant-key"+m,hashlib.sha256).hexdigest())'`.
    const PINNED_TAG: &str = "a3c8b1f2a52629b90f798a9fd3fea51cf4e0bea7706597985ac545189dd8b8e6";

    #[test]
    fn every_field_is_covered_and_fields_do_not_run_together() {
        let h = IdentifierHasher::new([5; 32]);
        let good = hex::decode(PINNED_TAG).unwrap();
        assert!(verify(&h, &record(Some(good.clone()))).is_ok());
        assert!(verify(&h, &record(None)).is_err(), "a NULL tag is refused");
        assert!(verify(&h, &record(Some(good[..31].to_vec()))).is_err());
        assert!(verify(&IdentifierHasher::new([6; 32]), &record(Some(good.clone()))).is_err());
        let changes: [fn(&mut TenantKeyRecord); 5] = [
            |r| r.tenant = TenantId::try_from("acmf").unwrap(),
            |r| r.id = KeyId::from_bytes([2; 16]),
            |r| r.provider = ProviderKind::AwsKms,
            |r| r.key_ref.push('2'),
            |r| r.wrapped = WrappedKey::new(vec![9; 41]),
        ];
        for change in changes {
            let mut r = record(Some(good.clone()));
            change(&mut r);
            assert!(verify(&h, &r).is_err());
        }
        // The binding id and creation time are not covered (module docs).
        let mut r = record(Some(good));
        r.binding_id = 8;
        r.created_at_ms = 1;
        assert!(verify(&h, &r).is_ok());
        // Length prefixes: moving a byte between provider and key_ref changes the message.
        let id = KeyId::from_bytes([1; 16]);
        let t = TenantId::try_from("acme").unwrap();
        assert_ne!(
            message(&t, &id, "ab", "c", b""),
            message(&t, &id, "a", "bc", b"")
        );
    }
}
