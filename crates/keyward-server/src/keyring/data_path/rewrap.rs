//! Rewrap: an envelope of the tenant re-encrypted under the active DEK of a target scope (its
//! own DEK's scope by default), bound to the same encryption context, sealed with the write
//! suite. Built on Decrypt and Encrypt themselves, so that every check either makes applies
//! (the tenant's gate and its generation, a revoked or refused binding, a DEK that is gone, the
//! cache deadlines); the plaintext exists only inside this call, in `Wiped` memory (cleared
//! when dropped), and is never returned (docs/rewrap.md).

use keyward_envelope::{EncryptionContext, KeyId, TenantId, parse};
use keyward_store::Scope;

use super::{DataPath, classify_parse_error};
use crate::error::ServiceError;

impl DataPath {
    /// Re-encrypts `envelope` (sealed with `ctx`) under the active DEK of `target` (when
    /// `None`, the scope of the envelope's own DEK). Returns the new envelope and its DEK id.
    ///
    /// Counted as one Decrypt and one Encrypt in the tenant's usage (docs/rewrap.md). Nothing
    /// is written when the envelope does not open: the target scope's DEK is looked up (or
    /// created) only after it did.
    pub(in crate::keyring) async fn rewrap(
        &self,
        tenant: &TenantId,
        envelope: &[u8],
        ctx: &EncryptionContext,
        target: Option<&Scope>,
    ) -> Result<(Vec<u8>, KeyId), ServiceError> {
        let (plaintext, generation) = self.decrypt_held(tenant, envelope, ctx).await?;
        let own_scope;
        let scope = match target {
            Some(scope) => scope,
            None => {
                // A maintenance call: one store read for the source scope, rather than the
                // scope in every cached key.
                let dek_id = *parse(envelope)
                    .map_err(classify_parse_error)?
                    .header()
                    .dek_id();
                own_scope = match self.store.get_dek(tenant, &dek_id).await? {
                    Some(record) => record.scope,
                    // Shredded since it was opened: the shred wins.
                    None => {
                        return Err(match self.store.dek_tombstone(tenant, &dek_id).await? {
                            Some(tombstone) => ServiceError::DataKeyShredded {
                                tenant: tenant.to_string(),
                                shredded_at_ms: tombstone.shredded_at_ms,
                            },
                            None => ServiceError::DataKeyNotFound(tenant.to_string()),
                        });
                    }
                };
                &own_scope
            }
        };
        let sealed = self.encrypt(tenant, scope, ctx, &plaintext).await?;
        // The decrypt and the encrypt ran under one key state of the tenant: a revocation (or
        // a revocation and a restoration) between them fails the call, as it fails a
        // DecryptBatch holding plaintext.
        self.release(tenant, generation)?;
        Ok(sealed)
    }
}
