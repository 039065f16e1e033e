//! `keyward.v1.CryptoService`: Encrypt, Decrypt and their batches. Each handler converts the
//! request ([`super::convert`]), authorizes it, calls the keyring and converts the answer.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use keyward_envelope::Wiped;
use keyward_proto::v1::{self as pb, crypto_service_server::CryptoService};
use tonic::{Request, Response, Status};

use keyward_authz::Action;

use crate::{authz::Authz, error::ServiceError, keyring::Keyring, metrics::PayloadKind};

use super::{access::CallAccess, convert::*, split};

/// `keyward.v1.CryptoService`.
#[derive(Debug, Clone)]
pub struct CryptoApi {
    keyring: Arc<Keyring>,
    authz: Arc<Authz>,
    max_plaintext_bytes: usize,
}

impl CryptoApi {
    pub fn new(keyring: Arc<Keyring>, authz: Arc<Authz>, max_plaintext_bytes: usize) -> Self {
        Self {
            keyring,
            authz,
            max_plaintext_bytes,
        }
    }

    pub(super) fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub(super) fn keyring_arc(&self) -> &Arc<Keyring> {
        &self.keyring
    }
}

/// The encryption-context key whose value policies see as the data purpose.
pub const PURPOSE_CONTEXT_KEY: &str = "purpose";

/// The scope Decrypt policies see: the envelope's scope is known only after authorization
/// (from the stored DEK), and "" is never a valid scope label (docs/authorization.md).
pub const DECRYPT_SCOPE: &str = "";

/// Longest error message of one batch item (longer ones are cut, on a character boundary).
const ITEM_ERROR_MESSAGE_MAX_BYTES: usize = 512;
/// Upper bound of one batch item's error as encoded (code, reason, message and their tags).
const ITEM_ERROR_MAX_BYTES: usize = ITEM_ERROR_MESSAGE_MAX_BYTES + 64;
/// Upper bound of the protobuf framing around one batch item's result (the result message,
/// its oneof field, the response field and the DEK id), beyond its envelope or plaintext.
const ITEM_FRAMING_BYTES: usize = 64;

/// (purpose, scope) pairs already authorized within one batch: items sharing them skip the
/// policy evaluation (denials are evaluated, and counted, per item). The batch's justification
/// is the same for every item.
pub(super) type Allowed = HashSet<(Option<String>, Option<String>)>;

impl CryptoApi {
    /// Authorizes `action` on the call's tenant with `purpose` (the encryption context's) and
    /// `scope` and the call's justification; for a data-reading action, then the tenant's
    /// justification rule (once per call).
    pub(super) async fn authorize(
        &self,
        head: &Request<()>,
        action: Action,
        access: &mut CallAccess,
        purpose: Option<&str>,
        scope: Option<&str>,
        allowed: Option<&mut Allowed>,
    ) -> Result<(), ServiceError> {
        let key = allowed
            .as_ref()
            .map(|_| (purpose.map(str::to_owned), scope.map(str::to_owned)));
        let remembered = match (&allowed, &key) {
            (Some(allowed), Some(key)) => allowed.contains(key),
            _ => false,
        };
        if !remembered {
            let caller = self.authz.check(
                head,
                action,
                Some(access.tenant()),
                &access.context(purpose, scope),
            )?;
            access.authorized(&caller);
            if let (Some(allowed), Some(key)) = (allowed, key) {
                allowed.insert(key);
            }
        }
        if matches!(action, Action::Decrypt | Action::Rewrap) {
            access
                .check_decrypt_rule(head, &self.authz, &self.keyring)
                .await?;
        }
        Ok(())
    }

    async fn encrypt_item(
        &self,
        head: &Request<()>,
        access: &mut CallAccess,
        plaintext: Wiped,
        raw_context: HashMap<String, String>,
        raw_scope: &str,
        allowed: Option<&mut Allowed>,
    ) -> Result<pb::EncryptResponse, ServiceError> {
        let len = plaintext.len();
        let outcome = self
            .encrypt_item_inner(head, access, plaintext, raw_context, raw_scope, allowed)
            .await;
        access.item(&outcome, |_| len);
        outcome
    }

    async fn encrypt_item_inner(
        &self,
        head: &Request<()>,
        access: &mut CallAccess,
        plaintext: Wiped,
        raw_context: HashMap<String, String>,
        raw_scope: &str,
        allowed: Option<&mut Allowed>,
    ) -> Result<pb::EncryptResponse, ServiceError> {
        let ctx = context(raw_context)?;
        let scope = scope(raw_scope)?;
        self.authorize(
            head,
            Action::Encrypt,
            access,
            ctx.get(PURPOSE_CONTEXT_KEY),
            Some(scope.as_str()),
            allowed,
        )
        .await?;
        let tenant = access.tenant();
        if plaintext.len() > self.max_plaintext_bytes {
            return Err(ServiceError::PayloadTooLarge {
                size: plaintext.len(),
                limit: self.max_plaintext_bytes,
            });
        }
        let (envelope, dek_id) = self
            .keyring
            .encrypt(tenant, &scope, &ctx, &plaintext)
            .await?;
        let ext = head.extensions();
        crate::telemetry::note_payload(ext, PayloadKind::PlaintextIn, plaintext.len());
        crate::telemetry::note_payload(ext, PayloadKind::CiphertextOut, envelope.len());
        Ok(pb::EncryptResponse {
            envelope,
            dek_id: dek_id.to_string(),
        })
    }

    /// Decrypts one item; returns the response and the gate generation its plaintext was
    /// released at (a batch checks it again once every item is done, see `decrypt_batch`).
    async fn decrypt_item(
        &self,
        head: &Request<()>,
        access: &mut CallAccess,
        envelope: &[u8],
        raw_context: HashMap<String, String>,
        allowed: Option<&mut Allowed>,
    ) -> Result<(pb::DecryptResponse, u64), ServiceError> {
        let outcome = self
            .decrypt_item_inner(head, access, envelope, raw_context, allowed)
            .await;
        access.item(&outcome, |(response, _)| response.plaintext.len());
        outcome
    }

    async fn decrypt_item_inner(
        &self,
        head: &Request<()>,
        access: &mut CallAccess,
        envelope: &[u8],
        raw_context: HashMap<String, String>,
        allowed: Option<&mut Allowed>,
    ) -> Result<(pb::DecryptResponse, u64), ServiceError> {
        let ctx = context(raw_context)?;
        // The scope is inside the stored DEK record, not known before the key is looked up,
        // which happens only after authorization: policies see the scope "" on decrypt (never a
        // valid scope label, so a rule written for a scope never matches a Decrypt by accident;
        // docs/authorization.md).
        self.authorize(
            head,
            Action::Decrypt,
            access,
            ctx.get(PURPOSE_CONTEXT_KEY),
            Some(DECRYPT_SCOPE),
            allowed,
        )
        .await?;
        let tenant = access.tenant();
        let (plaintext, generation) = self.keyring.decrypt_held(tenant, envelope, &ctx).await?;
        let ext = head.extensions();
        crate::telemetry::note_payload(ext, PayloadKind::CiphertextIn, envelope.len());
        crate::telemetry::note_payload(ext, PayloadKind::PlaintextOut, plaintext.len());
        // prost needs an owned Vec: the plaintext buffer is handed over (moved, not copied),
        // and tonic frees it once encoded without zeroizing it (docs/threat-model.md). A copy
        // here would have left one more plaintext buffer, and cost an allocation and a copy
        // per call (issue #26).
        Ok((
            pb::DecryptResponse {
                plaintext: plaintext.into_inner(),
            },
            generation,
        ))
    }

    /// Refuses a batch whose response could exceed the message limit, before any work: the
    /// worst case of each item (its envelope or plaintext, or an error) plus protobuf framing.
    pub(super) fn check_response_size(
        &self,
        item_bounds: impl Iterator<Item = usize>,
    ) -> Result<(), ServiceError> {
        let limit = self.max_plaintext_bytes + crate::limits::MESSAGE_OVERHEAD_BYTES;
        let worst: usize = item_bounds
            .map(|len| len.max(ITEM_ERROR_MAX_BYTES) + ITEM_FRAMING_BYTES)
            .sum();
        if worst > limit {
            return Err(ServiceError::invalid(
                "items",
                format!(
                    "the response to this batch could be {worst} bytes, over this server's message limit of {limit} bytes; split it into smaller batches"
                ),
            ));
        }
        Ok(())
    }
}

/// What the single-item call would have returned, as a batch item's error.
pub(super) fn item_error(e: &ServiceError) -> pb::BatchItemError {
    let status = e.to_status();
    let mut message = status.message();
    if message.len() > ITEM_ERROR_MESSAGE_MAX_BYTES {
        let mut end = ITEM_ERROR_MESSAGE_MAX_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message = &message[..end];
    }
    pb::BatchItemError {
        code: e.code() as i32,
        reason: e.reason().to_owned(),
        message: message.to_owned(),
    }
}

#[tonic::async_trait]
impl CryptoService for CryptoApi {
    type EncryptStreamStream = super::stream::EncryptStream;
    type DecryptStreamStream = super::stream::DecryptStream;

    async fn encrypt_stream(
        &self,
        request: Request<tonic::Streaming<pb::EncryptStreamRequest>>,
    ) -> Result<Response<Self::EncryptStreamStream>, Status> {
        self.encrypt_stream_call(request).await
    }

    async fn decrypt_stream(
        &self,
        request: Request<tonic::Streaming<pb::DecryptStreamRequest>>,
    ) -> Result<Response<Self::DecryptStreamStream>, Status> {
        self.decrypt_stream_call(request).await
    }

    async fn rewrap(
        &self,
        request: Request<pb::RewrapRequest>,
    ) -> Result<Response<pb::RewrapResponse>, Status> {
        self.rewrap_call(request).await
    }

    async fn rewrap_batch(
        &self,
        request: Request<pb::RewrapBatchRequest>,
    ) -> Result<Response<pb::RewrapBatchResponse>, Status> {
        self.rewrap_batch_call(request).await
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let (head, request) = split(request);
        // Wiped at memory speed when the call is over (zeroize's byte loop cost ≈ 1.7k
        // instructions per 1 KiB call, issue #26).
        let plaintext = Wiped::new(request.plaintext);
        let tenant = tenant_id(&request.tenant_id)?;
        let mut access = CallAccess::new(
            tenant,
            Action::Encrypt,
            justification(request.justification)?,
        );
        let response = self
            .encrypt_item(
                &head,
                &mut access,
                plaintext,
                request.encryption_context,
                &request.scope,
                None,
            )
            .await;
        access.finish(&self.keyring);
        Ok(Response::new(response?))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let (head, request) = split(request);
        let tenant = tenant_id(&request.tenant_id)?;
        let mut access = CallAccess::new(
            tenant,
            Action::Decrypt,
            justification(request.justification)?,
        );
        let outcome = self
            .decrypt_item(
                &head,
                &mut access,
                &request.envelope,
                request.encryption_context,
                None,
            )
            .await;
        access.finish(&self.keyring);
        let (response, _) = outcome?;
        Ok(Response::new(response))
    }

    async fn encrypt_batch(
        &self,
        request: Request<pb::EncryptBatchRequest>,
    ) -> Result<Response<pb::EncryptBatchResponse>, Status> {
        let (head, request) = split(request);
        let tenant = tenant_id(&request.tenant_id)?;
        batch_size(request.items.len())?;
        self.check_response_size(
            request
                .items
                .iter()
                .map(|item| keyward_envelope::sealed_len(&tenant, item.plaintext.len())),
        )?;
        let mut access = CallAccess::new(
            tenant,
            Action::Encrypt,
            justification(request.justification)?,
        );
        let mut allowed = Allowed::new();
        let mut results = Vec::with_capacity(request.items.len());
        for item in request.items {
            let outcome = self
                .encrypt_item(
                    &head,
                    &mut access,
                    Wiped::new(item.plaintext),
                    item.encryption_context,
                    &item.scope,
                    Some(&mut allowed),
                )
                .await;
            results.push(pb::EncryptBatchResult {
                result: Some(match outcome {
                    Ok(ok) => pb::encrypt_batch_result::Result::Ok(ok),
                    Err(e) => pb::encrypt_batch_result::Result::Error(item_error(&e)),
                }),
            });
        }
        access.finish(&self.keyring);
        Ok(Response::new(pb::EncryptBatchResponse { results }))
    }

    async fn decrypt_batch(
        &self,
        request: Request<pb::DecryptBatchRequest>,
    ) -> Result<Response<pb::DecryptBatchResponse>, Status> {
        let (head, request) = split(request);
        let tenant = tenant_id(&request.tenant_id)?;
        batch_size(request.items.len())?;
        self.check_response_size(request.items.iter().map(|item| item.envelope.len()))?;
        let mut access = CallAccess::new(
            tenant.clone(),
            Action::Decrypt,
            justification(request.justification)?,
        );
        let mut allowed = Allowed::new();
        let mut outcomes = Vec::with_capacity(request.items.len());
        for item in request.items {
            outcomes.push(
                self.decrypt_item(
                    &head,
                    &mut access,
                    &item.envelope,
                    item.encryption_context,
                    Some(&mut allowed),
                )
                .await,
            );
        }
        // Every item's plaintext leaves now, with the response: the last check before it does
        // covers them all (a revocation committed while later items were decrypted wins, and
        // `keys_purged.last_plaintext_at` is this moment).
        let mut released: Vec<(u64, Result<(), ServiceError>)> = Vec::new();
        for (_, generation) in outcomes.iter().filter_map(|o| o.as_ref().ok()) {
            if !released.iter().any(|(g, _)| g == generation) {
                released.push((*generation, self.keyring.release(&tenant, *generation)));
            }
        }
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let result = match outcome {
                Ok((ok, generation)) => match released.iter().find(|(g, _)| *g == generation) {
                    Some((_, Err(e))) => {
                        access.withheld(ok.plaintext.len());
                        // The keyring's copy was zeroized already; this one too.
                        let mut ok = ok;
                        zeroize::Zeroize::zeroize(&mut ok.plaintext);
                        pb::decrypt_batch_result::Result::Error(item_error(e))
                    }
                    _ => pb::decrypt_batch_result::Result::Ok(ok),
                },
                Err(e) => pb::decrypt_batch_result::Result::Error(item_error(&e)),
            };
            results.push(pb::DecryptBatchResult {
                result: Some(result),
            });
        }
        access.finish(&self.keyring);
        Ok(Response::new(pb::DecryptBatchResponse { results }))
    }
}
