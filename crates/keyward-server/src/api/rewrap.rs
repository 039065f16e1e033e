//! `CryptoService.Rewrap` and `RewrapBatch`: an envelope in, an envelope out under the tenant's
//! active data key of a target scope (the envelope's own scope when none is named), with the
//! same encryption context and the server's write suite. Converted and authorized as Encrypt
//! and Decrypt are (the request's fields checked and named in errors, then the Cedar `Rewrap`
//! action, per item in a batch), then [`crate::keyring::Keyring::rewrap`], which holds the
//! plaintext and never returns it (docs/rewrap.md).

use std::collections::HashMap;

use keyward_authz::Action;
use keyward_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{error::ServiceError, metrics::PayloadKind};

use super::{
    access::CallAccess,
    convert::{batch_size, context, justification, target_scope, tenant_id},
    crypto::{Allowed, CryptoApi, DECRYPT_SCOPE, PURPOSE_CONTEXT_KEY, item_error},
    split,
};

impl CryptoApi {
    /// Rewraps one item: its context and target scope converted, the `Rewrap` action
    /// authorized (purpose: the context's `purpose`; scope: the target scope, or
    /// [`DECRYPT_SCOPE`] when the envelope's own is kept, since that one is known only from the
    /// stored DEK after authorization), then the keyring's rewrap.
    async fn rewrap_item(
        &self,
        head: &Request<()>,
        access: &mut CallAccess,
        envelope: &[u8],
        raw_context: HashMap<String, String>,
        raw_target_scope: &str,
        allowed: Option<&mut Allowed>,
    ) -> Result<pb::RewrapResponse, ServiceError> {
        let outcome = self
            .rewrap_item_inner(
                head,
                access,
                envelope,
                raw_context,
                raw_target_scope,
                allowed,
            )
            .await;
        // Rewrap's bytes are the envelope's: its plaintext never leaves the keyring.
        access.item(&outcome, |_| envelope.len());
        outcome
    }

    async fn rewrap_item_inner(
        &self,
        head: &Request<()>,
        access: &mut CallAccess,
        envelope: &[u8],
        raw_context: HashMap<String, String>,
        raw_target_scope: &str,
        allowed: Option<&mut Allowed>,
    ) -> Result<pb::RewrapResponse, ServiceError> {
        let ctx = context(raw_context)?;
        let target = target_scope(raw_target_scope)?;
        self.authorize(
            head,
            Action::Rewrap,
            access,
            ctx.get(PURPOSE_CONTEXT_KEY),
            Some(target.as_ref().map_or(DECRYPT_SCOPE, |s| s.as_str())),
            allowed,
        )
        .await?;
        let (sealed, dek_id) = self
            .keyring()
            .rewrap(access.tenant(), envelope, &ctx, target.as_ref())
            .await?;
        let ext = head.extensions();
        crate::telemetry::note_payload(ext, PayloadKind::CiphertextIn, envelope.len());
        crate::telemetry::note_payload(ext, PayloadKind::CiphertextOut, sealed.len());
        Ok(pb::RewrapResponse {
            envelope: sealed,
            dek_id: dek_id.to_string(),
        })
    }

    pub(super) async fn rewrap_call(
        &self,
        request: Request<pb::RewrapRequest>,
    ) -> Result<Response<pb::RewrapResponse>, Status> {
        let (head, request) = split(request);
        let tenant = tenant_id(&request.tenant_id)?;
        let mut access = CallAccess::new(
            tenant,
            Action::Rewrap,
            justification(request.justification)?,
        );
        let response = self
            .rewrap_item(
                &head,
                &mut access,
                &request.envelope,
                request.encryption_context,
                &request.target_scope,
                None,
            )
            .await;
        access.finish(self.keyring());
        Ok(Response::new(response?))
    }

    /// Up to [`super::MAX_BATCH_ITEMS`] items of one tenant, each converted, authorized and
    /// rewrapped on its own (as `EncryptBatch`): one item's failure is its result only.
    pub(super) async fn rewrap_batch_call(
        &self,
        request: Request<pb::RewrapBatchRequest>,
    ) -> Result<Response<pb::RewrapBatchResponse>, Status> {
        let (head, request) = split(request);
        let tenant = tenant_id(&request.tenant_id)?;
        batch_size(request.items.len())?;
        // A new envelope is as long as the one it replaces (every suite has the same header
        // and tag sizes: docs/envelope-format.md).
        self.check_response_size(request.items.iter().map(|item| item.envelope.len()))?;
        let mut access = CallAccess::new(
            tenant,
            Action::Rewrap,
            justification(request.justification)?,
        );
        let mut allowed = Allowed::new();
        let mut results = Vec::with_capacity(request.items.len());
        for item in request.items {
            let outcome = self
                .rewrap_item(
                    &head,
                    &mut access,
                    &item.envelope,
                    item.encryption_context,
                    &item.target_scope,
                    Some(&mut allowed),
                )
                .await;
            results.push(pb::RewrapBatchResult {
                result: Some(match outcome {
                    Ok(ok) => pb::rewrap_batch_result::Result::Ok(ok),
                    Err(e) => pb::rewrap_batch_result::Result::Error(item_error(&e)),
                }),
            });
        }
        access.finish(self.keyring());
        Ok(Response::new(pb::RewrapBatchResponse { results }))
    }
}
