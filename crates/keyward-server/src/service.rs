//! The tonic services: wire types are converted to domain types here (every
//! field validated, with the field named in the error) and nowhere deeper.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use keyward_envelope::{EncryptionContext, TenantId};
use keyward_kms::{KeyRef, ProviderKind as DomainProviderKind};
use keyward_proto::v1::{
    self as pb, crypto_service_server::CryptoService, register_key_request,
    tenant_service_server::TenantService,
};
use keyward_store::{KekBinding, KekState, Scope, TenantRecord};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use keyward_authz::{Action, RequestContext};

use crate::{
    authz::Authz,
    error::ServiceError,
    keyring::{Keyring, RevocationSource},
    metrics::PayloadKind,
    now_ms,
};

/// Longest per-tenant TTL or monitor interval, in seconds.
const MAX_POLICY_SECONDS: u64 = 24 * 60 * 60;

/// Longest tenant display name accepted, in characters.
const MAX_DISPLAY_NAME_CHARS: usize = 256;

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
}

/// The encryption-context key whose value policies see as the data purpose.
pub const PURPOSE_CONTEXT_KEY: &str = "purpose";

/// Most items in one `EncryptBatch` / `DecryptBatch` call.
pub const MAX_BATCH_ITEMS: usize = 1000;

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
/// policy evaluation (denials are evaluated, and counted, per item).
type Allowed = HashSet<(Option<String>, Option<String>)>;

impl CryptoApi {
    fn authorize(
        &self,
        head: &Request<()>,
        action: Action,
        tenant: &TenantId,
        context: RequestContext<'_>,
        allowed: Option<&mut Allowed>,
    ) -> Result<(), ServiceError> {
        let Some(allowed) = allowed else {
            self.authz.check(head, action, Some(tenant), &context)?;
            return Ok(());
        };
        let key = (
            context.purpose.map(str::to_owned),
            context.scope.map(str::to_owned),
        );
        if !allowed.contains(&key) {
            self.authz.check(head, action, Some(tenant), &context)?;
            allowed.insert(key);
        }
        Ok(())
    }

    async fn encrypt_item(
        &self,
        head: &Request<()>,
        tenant: &TenantId,
        plaintext: Zeroizing<Vec<u8>>,
        raw_context: HashMap<String, String>,
        raw_scope: &str,
        allowed: Option<&mut Allowed>,
    ) -> Result<pb::EncryptResponse, ServiceError> {
        let ctx = context(raw_context)?;
        let scope = scope(raw_scope)?;
        self.authorize(
            head,
            Action::Encrypt,
            tenant,
            RequestContext {
                purpose: ctx.get(PURPOSE_CONTEXT_KEY),
                scope: Some(scope.as_str()),
            },
            allowed,
        )?;
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
        tenant: &TenantId,
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
            tenant,
            RequestContext {
                purpose: ctx.get(PURPOSE_CONTEXT_KEY),
                scope: Some(DECRYPT_SCOPE),
            },
            allowed,
        )?;
        let (plaintext, generation) = self.keyring.decrypt_held(tenant, envelope, &ctx).await?;
        let ext = head.extensions();
        crate::telemetry::note_payload(ext, PayloadKind::CiphertextIn, envelope.len());
        crate::telemetry::note_payload(ext, PayloadKind::PlaintextOut, plaintext.len());
        // prost needs an owned Vec; the copy tonic encodes from is not
        // zeroized (docs/threat-model.md), ours is.
        Ok((
            pb::DecryptResponse {
                plaintext: plaintext.to_vec(),
            },
            generation,
        ))
    }

    /// Refuses a batch whose response could exceed the message limit, before any work: the
    /// worst case of each item (its envelope or plaintext, or an error) plus protobuf framing.
    fn check_response_size(
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

fn batch_size(items: usize) -> Result<(), ServiceError> {
    if items == 0 || items > MAX_BATCH_ITEMS {
        return Err(ServiceError::invalid(
            "items",
            format!("a batch holds 1 to {MAX_BATCH_ITEMS} items, not {items}"),
        ));
    }
    Ok(())
}

/// What the single-item call would have returned, as a batch item's error.
fn item_error(e: &ServiceError) -> pb::BatchItemError {
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
    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let (head, request) = split(request);
        let plaintext = Zeroizing::new(request.plaintext);
        let tenant = tenant_id(&request.tenant_id)?;
        let response = self
            .encrypt_item(
                &head,
                &tenant,
                plaintext,
                request.encryption_context,
                &request.scope,
                None,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let (head, request) = split(request);
        let tenant = tenant_id(&request.tenant_id)?;
        let (response, _) = self
            .decrypt_item(
                &head,
                &tenant,
                &request.envelope,
                request.encryption_context,
                None,
            )
            .await?;
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
        let mut allowed = Allowed::new();
        let mut results = Vec::with_capacity(request.items.len());
        for item in request.items {
            let outcome = self
                .encrypt_item(
                    &head,
                    &tenant,
                    Zeroizing::new(item.plaintext),
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
        let mut allowed = Allowed::new();
        let mut outcomes = Vec::with_capacity(request.items.len());
        for item in request.items {
            outcomes.push(
                self.decrypt_item(
                    &head,
                    &tenant,
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
        let results = outcomes
            .into_iter()
            .map(|outcome| {
                let result = match outcome {
                    Ok((ok, generation)) => match released.iter().find(|(g, _)| *g == generation) {
                        Some((_, Err(e))) => {
                            // The keyring's copy was zeroized already; this one too.
                            let mut ok = ok;
                            zeroize::Zeroize::zeroize(&mut ok.plaintext);
                            pb::decrypt_batch_result::Result::Error(item_error(e))
                        }
                        _ => pb::decrypt_batch_result::Result::Ok(ok),
                    },
                    Err(e) => pb::decrypt_batch_result::Result::Error(item_error(&e)),
                };
                pb::DecryptBatchResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(pb::DecryptBatchResponse { results }))
    }
}

/// `keyward.v1.TenantService`.
#[derive(Debug, Clone)]
pub struct TenantApi {
    keyring: Arc<Keyring>,
    authz: Arc<Authz>,
    /// The key-state monitor's interval (`None`: no monitor), for `Tenant.effective_policy`.
    monitor_interval: Option<std::time::Duration>,
}

impl TenantApi {
    pub fn new(keyring: Arc<Keyring>, authz: Arc<Authz>) -> Self {
        Self {
            keyring,
            authz,
            monitor_interval: None,
        }
    }

    /// The server's monitor interval (`None`: the server runs no monitor).
    #[must_use]
    pub fn with_monitor_interval(mut self, interval: Option<std::time::Duration>) -> Self {
        self.monitor_interval = interval;
        self
    }
}

/// Splits a request into its message and an empty request carrying the metadata and the
/// connection's extensions (the caller's identity), for [`Authz::check`].
pub(crate) fn split<T>(request: Request<T>) -> (Request<()>, T) {
    let (metadata, extensions, message) = request.into_parts();
    (Request::from_parts(metadata, extensions, ()), message)
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (head, request) = split(request);
        let id = tenant_id(&request.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::CreateTenant,
            Some(&id),
            &RequestContext::default(),
        )?;
        let name = display_name(&request.display_name)?;
        let record = self
            .keyring
            .create_tenant(&id, name, caller.actor(""))
            .await?;
        let mut tenant = tenant_to_pb(&record, None);
        tenant.effective_policy = Some(self.effective_policy(&record.policy));
        Ok(Response::new(tenant))
    }

    async fn register_key(
        &self,
        request: Request<pb::RegisterKeyRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (head, request) = split(request);
        let id = tenant_id(&request.tenant_id)?;
        self.authz.check(
            &head,
            Action::RegisterKey,
            Some(&id),
            &RequestContext::default(),
        )?;
        let kek = kek_ref(request.key)?;
        self.keyring.register_key(&id, &kek).await?;
        Ok(Response::new(self.tenant_view(&id).await?))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (head, request) = split(request);
        let id = tenant_id(&request.tenant_id)?;
        self.authz.check(
            &head,
            Action::GetTenant,
            Some(&id),
            &RequestContext::default(),
        )?;
        Ok(Response::new(self.tenant_view(&id).await?))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (head, r) = split(request);
        let id = tenant_id(&r.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::RevokeKey,
            Some(&id),
            &RequestContext::default(),
        )?;
        let reason = reason(&r.reason)?;
        self.keyring
            .revoke(
                &id,
                KekState::Revoked,
                RevocationSource::Explicit,
                Some(caller.actor(&r.requested_by)),
                reason,
                now_ms(),
            )
            .await?;
        Ok(Response::new(self.tenant_view(&id).await?))
    }

    async fn restore_key(
        &self,
        request: Request<pb::RestoreKeyRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (head, r) = split(request);
        let id = tenant_id(&r.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::RestoreKey,
            Some(&id),
            &RequestContext::default(),
        )?;
        let reason = reason(&r.reason)?;
        let binding = binding_id(r.binding_id)?;
        self.keyring
            .restore_binding(
                &id,
                binding,
                RevocationSource::Explicit,
                Some(caller.actor(&r.requested_by)),
                reason,
            )
            .await?;
        Ok(Response::new(self.tenant_view(&id).await?))
    }

    async fn set_tenant_policy(
        &self,
        request: Request<pb::SetTenantPolicyRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (head, r) = split(request);
        let id = tenant_id(&r.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::SetTenantPolicy,
            Some(&id),
            &RequestContext::default(),
        )?;
        let policy = tenant_policy(r.policy)?;
        self.keyring
            .set_tenant_policy(&id, policy, caller.actor(&r.requested_by))
            .await?;
        Ok(Response::new(self.tenant_view(&id).await?))
    }

    async fn report_key_event(
        &self,
        request: Request<pb::ReportKeyEventRequest>,
    ) -> Result<Response<pb::ReportKeyEventResponse>, Status> {
        let (head, r) = split(request);
        self.authz.check(
            &head,
            Action::ReportKeyEvent,
            None,
            &RequestContext::default(),
        )?;
        let provider = key_event(&r)?;
        tracing::info!(provider = %provider, key_ref = %r.key_ref, event = %r.event, "key-state event received; verifying with the KMS");
        let (checked, revoked) = self
            .keyring
            .recheck_key(provider.as_str(), &r.key_ref)
            .await?;
        Ok(Response::new(pb::ReportKeyEventResponse {
            tenants_checked: checked,
            tenants_revoked: revoked,
        }))
    }
}

fn reason(raw: &str) -> Result<&str, ServiceError> {
    if raw.trim().is_empty() || raw.chars().count() > 1024 || raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "reason",
            "required: 1 to 1024 characters, no control characters",
        ));
    }
    Ok(raw)
}

// ----- request -> domain ----------------------------------------------------

fn tenant_id(raw: &str) -> Result<TenantId, ServiceError> {
    TenantId::try_from(raw).map_err(|e| ServiceError::invalid("tenant_id", e.to_string()))
}

fn scope(raw: &str) -> Result<Scope, ServiceError> {
    if raw.is_empty() {
        return Ok(Scope::default_scope());
    }
    Scope::try_from(raw).map_err(|e| ServiceError::invalid("scope", e.to_string()))
}

fn context(raw: HashMap<String, String>) -> Result<EncryptionContext, ServiceError> {
    EncryptionContext::try_from_map(raw.into_iter().collect())
        .map_err(|e| ServiceError::invalid("encryption_context", e.to_string()))
}

/// `key_arn[?role_arn=…&external_id=…]`, the AWS provider's key reference
/// syntax (docs/providers/aws.md), checked here so that a malformed ARN is an
/// invalid argument naming the field, not a provider failure.
fn aws_key_ref(aws: pb::AwsKmsKey) -> Result<KeyRef, ServiceError> {
    if aws.key_arn.is_empty() {
        return Err(ServiceError::invalid(
            "aws_kms.key_arn",
            "must not be empty",
        ));
    }
    // AWS's own bounds (KMS KeyId, IAM role ARN, STS ExternalId), checked first so that no
    // error message below echoes more than that back.
    for (field, value, max) in [
        ("aws_kms.key_arn", &aws.key_arn, 2048),
        ("aws_kms.role_arn", &aws.role_arn, 2048),
        ("aws_kms.external_id", &aws.external_id, 1224),
    ] {
        if value.len() > max {
            return Err(ServiceError::invalid(
                field,
                format!("{} bytes; at most {max} are allowed", value.len()),
            ));
        }
    }
    // The role goes in its own fields: a query inside the ARN field would be read as one.
    if aws.key_arn.contains('?') {
        return Err(ServiceError::invalid(
            "aws_kms.key_arn",
            "a key ARN has no '?': give role_arn and external_id in their own fields",
        ));
    }
    let id = match (aws.role_arn.is_empty(), aws.external_id.is_empty()) {
        (true, true) => aws.key_arn,
        (false, false) => format!(
            "{}?role_arn={}&external_id={}",
            aws.key_arn, aws.role_arn, aws.external_id
        ),
        (true, false) => {
            return Err(ServiceError::invalid(
                "aws_kms.role_arn",
                "external_id is only used with role_arn: set both or neither",
            ));
        }
        (false, true) => {
            return Err(ServiceError::invalid(
                "aws_kms.external_id",
                "a role to assume needs the ExternalId its trust policy requires",
            ));
        }
    };
    #[cfg(feature = "aws")]
    if let Err(e) = id.parse::<keyward_kms_aws::AwsKeyRef>() {
        // The problem names the bad part; the whole input is not repeated back, and the expected
        // form is the one of the part the customer filled in (never the stored `?role_arn=`
        // syntax).
        return Err(ServiceError::invalid(
            "aws_kms",
            format!("{}; expected {}", e.problem(), e.expected()),
        ));
    }
    Ok(KeyRef::new(DomainProviderKind::AwsKms, id))
}

/// A PKCS#11 URI (docs/onboarding/pkcs11.md), checked here so that a malformed URI is an
/// invalid argument naming the field, not a provider failure.
fn pkcs11_key_ref(uri: &str) -> Result<KeyRef, ServiceError> {
    if uri.is_empty() {
        return Err(ServiceError::invalid("pkcs11.uri", "must not be empty"));
    }
    #[cfg(not(feature = "pkcs11"))]
    return Ok(KeyRef::new(DomainProviderKind::Pkcs11, uri.to_owned()));
    #[cfg(feature = "pkcs11")]
    let parsed = keyward_kms_pkcs11::Pkcs11KeyUri::from_key_ref_id(uri)
        .map_err(|e| ServiceError::invalid("pkcs11.uri", e.to_string()))?;
    #[cfg(feature = "pkcs11")]
    Ok(KeyRef::new(DomainProviderKind::Pkcs11, parsed.to_string()))
}

/// An Azure Key Vault / Managed HSM key id (docs/onboarding/azure.md), checked here so that a
/// malformed id is an invalid argument naming the field, not a provider failure.
fn azure_key_ref(key_id: &str) -> Result<KeyRef, ServiceError> {
    if key_id.is_empty() {
        return Err(ServiceError::invalid(
            "azure_key_vault.key_id",
            "must not be empty",
        ));
    }
    #[cfg(not(feature = "azure"))]
    return Ok(KeyRef::new(
        DomainProviderKind::AzureKeyVault,
        key_id.to_owned(),
    ));
    #[cfg(feature = "azure")]
    let parsed = keyward_kms_azure::AzureKeyId::parse(key_id)
        .map_err(|e| ServiceError::invalid("azure_key_vault.key_id", e.to_string()))?;
    #[cfg(feature = "azure")]
    Ok(KeyRef::new(
        DomainProviderKind::AzureKeyVault,
        parsed.to_string(),
    ))
}

/// A Cloud KMS CryptoKey resource name (docs/onboarding/gcp.md), checked here so that a
/// malformed name (or a CryptoKeyVersion name) is an invalid argument naming the field.
fn gcp_key_ref(name: &str) -> Result<KeyRef, ServiceError> {
    if name.is_empty() {
        return Err(ServiceError::invalid(
            "gcp_kms.crypto_key",
            "must not be empty",
        ));
    }
    #[cfg(not(feature = "gcp"))]
    return Ok(KeyRef::new(DomainProviderKind::GcpKms, name.to_owned()));
    #[cfg(feature = "gcp")]
    let parsed = name
        .parse::<keyward_kms_gcp::CryptoKeyName>()
        .map_err(|e| ServiceError::invalid("gcp_kms.crypto_key", e.to_string()))?;
    #[cfg(feature = "gcp")]
    Ok(KeyRef::new(DomainProviderKind::GcpKms, parsed.to_string()))
}

/// RegisterKey's key reference: exactly one, each checked by its provider's syntax.
fn kek_ref(key: Option<register_key_request::Key>) -> Result<KeyRef, ServiceError> {
    match key {
        Some(register_key_request::Key::Local(local)) => {
            if local.key_name.is_empty() {
                return Err(ServiceError::invalid("local.key_name", "must not be empty"));
            }
            Ok(KeyRef::new(DomainProviderKind::Local, local.key_name))
        }
        Some(register_key_request::Key::AwsKms(aws)) => aws_key_ref(aws),
        Some(register_key_request::Key::Pkcs11(key)) => pkcs11_key_ref(&key.uri),
        Some(register_key_request::Key::GcpKms(key)) => gcp_key_ref(&key.crypto_key),
        Some(register_key_request::Key::AzureKeyVault(key)) => azure_key_ref(&key.key_id),
        None => Err(ServiceError::invalid(
            "key",
            "one key reference must be set",
        )),
    }
}

/// RestoreKey's binding: 0 is the current one.
fn binding_id(raw: i64) -> Result<Option<i64>, ServiceError> {
    match raw {
        0 => Ok(None),
        id if id > 0 => Ok(Some(id)),
        other => Err(ServiceError::invalid(
            "binding_id",
            format!("{other} is not a binding id (0 restores the current binding)"),
        )),
    }
}

/// SetTenantPolicy's policy: 0 (or unset) is the server's default, else at most a day.
fn tenant_policy(
    raw: Option<pb::TenantPolicy>,
) -> Result<keyward_store::TenantPolicy, ServiceError> {
    let policy = raw.unwrap_or_default();
    let nonzero = |v: u64| (v > 0).then_some(v);
    let policy = keyward_store::TenantPolicy {
        cache_ttl_seconds: nonzero(policy.cache_ttl_seconds),
        monitor_interval_seconds: nonzero(policy.monitor_interval_seconds),
    };
    if policy
        .cache_ttl_seconds
        .is_some_and(|s| s > MAX_POLICY_SECONDS)
        || policy
            .monitor_interval_seconds
            .is_some_and(|s| s > MAX_POLICY_SECONDS)
    {
        return Err(ServiceError::invalid(
            "policy",
            format!("values are seconds, at most {MAX_POLICY_SECONDS} (one day)"),
        ));
    }
    Ok(policy)
}

/// ReportKeyEvent's provider and key reference (the reference is matched against stored
/// bindings as given, not parsed).
fn key_event(r: &pb::ReportKeyEventRequest) -> Result<DomainProviderKind, ServiceError> {
    let provider = match r.provider() {
        pb::ProviderKind::Local => DomainProviderKind::Local,
        pb::ProviderKind::AwsKms => DomainProviderKind::AwsKms,
        pb::ProviderKind::GcpKms => DomainProviderKind::GcpKms,
        pb::ProviderKind::AzureKeyVault => DomainProviderKind::AzureKeyVault,
        pb::ProviderKind::Pkcs11 => DomainProviderKind::Pkcs11,
        pb::ProviderKind::Unspecified => {
            return Err(ServiceError::invalid("provider", "must be set"));
        }
    };
    if r.key_ref.is_empty() {
        return Err(ServiceError::invalid("key_ref", "must not be empty"));
    }
    Ok(provider)
}

fn display_name(raw: &str) -> Result<&str, ServiceError> {
    if raw.chars().count() > MAX_DISPLAY_NAME_CHARS || raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "display_name",
            format!("at most {MAX_DISPLAY_NAME_CHARS} characters, no control characters"),
        ));
    }
    Ok(raw)
}

// ----- domain -> response ---------------------------------------------------

impl TenantApi {
    /// The tenant with its current binding and the older ones.
    async fn tenant_view(&self, id: &TenantId) -> Result<pb::Tenant, ServiceError> {
        let (record, _) = self.keyring.tenant(id).await?;
        let bindings = self.keyring.bindings(id).await?;
        let (current, previous): (Vec<&KekBinding>, Vec<&KekBinding>) =
            bindings.iter().partition(|b| b.deactivated_at_ms.is_none());
        let mut tenant = tenant_to_pb(&record, current.first().copied());
        tenant.previous_keys = previous.into_iter().map(binding_to_pb).collect();
        tenant.effective_policy = Some(self.effective_policy(&record.policy));
        Ok(tenant)
    }
}

impl TenantApi {
    /// The TTL and monitor interval in force for a tenant with `policy`, and where each comes
    /// from (the keyring's `ttl_for` and the monitor's `check_due` apply the same rules).
    fn effective_policy(&self, policy: &keyward_store::TenantPolicy) -> pb::EffectivePolicy {
        let server_ttl = self.keyring.server_ttl().as_secs();
        let (cache_ttl_seconds, cache_ttl_source) = match policy.cache_ttl_seconds {
            Some(ttl) if ttl <= server_ttl => (ttl, pb::SettingSource::TenantPolicy),
            _ => (server_ttl, pb::SettingSource::Server),
        };
        let (monitor_interval_seconds, monitor_interval_source) =
            match (self.monitor_interval, policy.monitor_interval_seconds) {
                (None, _) => (0, pb::SettingSource::Server),
                (Some(_), Some(tenant)) => (tenant, pb::SettingSource::TenantPolicy),
                (Some(server), None) => (server.as_secs(), pb::SettingSource::Server),
            };
        pb::EffectivePolicy {
            cache_ttl_seconds,
            cache_ttl_source: cache_ttl_source.into(),
            monitor_interval_seconds,
            monitor_interval_source: monitor_interval_source.into(),
        }
    }
}

fn tenant_to_pb(record: &TenantRecord, binding: Option<&KekBinding>) -> pb::Tenant {
    pb::Tenant {
        tenant_id: record.id.to_string(),
        display_name: record.display_name.clone(),
        created_at: Some(timestamp(record.created_at_ms)),
        active_key: binding.map(binding_to_pb),
        policy: Some(pb::TenantPolicy {
            cache_ttl_seconds: record.policy.cache_ttl_seconds.unwrap_or(0),
            monitor_interval_seconds: record.policy.monitor_interval_seconds.unwrap_or(0),
        }),
        previous_keys: Vec::new(),
        effective_policy: None,
    }
}

fn binding_to_pb(binding: &KekBinding) -> pb::KekBinding {
    let provider = match binding.provider.parse::<DomainProviderKind>() {
        Ok(DomainProviderKind::Local) => pb::ProviderKind::Local,
        Ok(DomainProviderKind::AwsKms) => pb::ProviderKind::AwsKms,
        Ok(DomainProviderKind::GcpKms) => pb::ProviderKind::GcpKms,
        Ok(DomainProviderKind::AzureKeyVault) => pb::ProviderKind::AzureKeyVault,
        Ok(DomainProviderKind::Pkcs11) => pb::ProviderKind::Pkcs11,
        _ => pb::ProviderKind::Unspecified,
    };
    let state = match binding.state {
        KekState::Active => pb::KekState::Active,
        KekState::Revoked => pb::KekState::Revoked,
        KekState::Unavailable => pb::KekState::Unavailable,
        KekState::Restored => pb::KekState::Restored,
        KekState::Destroyed => pb::KekState::Destroyed,
        _ => pb::KekState::Unspecified,
    };
    pb::KekBinding {
        provider: provider.into(),
        key_ref: binding.key_ref.clone(),
        state: state.into(),
        tenant_key_id: binding.tenant_key_id.to_string(),
        bound_at: Some(timestamp(binding.created_at_ms)),
        binding_id: binding.id,
        state_cause: binding
            .state_cause
            .map(crate::error::source_name)
            .unwrap_or_default()
            .to_owned(),
        state_changed_at: Some(timestamp(binding.state_changed_at_ms)),
    }
}

/// Store timestamps are milliseconds since the UNIX epoch.
pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

#[doc(hidden)]
#[path = "service_fuzzing.rs"]
pub mod fuzzing;

#[cfg(test)]
#[path = "service_fuzz.rs"]
mod fuzz;

#[cfg(test)]
#[path = "service_batch_tests.rs"]
mod batch_tests;
