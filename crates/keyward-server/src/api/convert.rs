//! Protobuf ↔ domain conversion, field by field: every request field is validated here, with
//! the field named in the error, and nowhere deeper; stored values become response messages.

use std::collections::HashMap;

use keyward_audit::Record;
use keyward_envelope::{EncryptionContext, TenantId};
use keyward_kms::{KeyRef, KeyRefFields, ProviderKind as DomainProviderKind, ProviderRegistry};
use keyward_proto::v1::{self as pb, register_key_request};
use keyward_store::{AuditQuery, KekBinding, KekState, Scope, TenantRecord};

use crate::{
    audit::{DEFAULT_LIST_PAGE, PAGE},
    error::ServiceError,
    justification::{Justification, MAX_REFERENCE_BYTES, Purpose},
};

/// Longest per-tenant TTL or monitor interval, in seconds.
pub(crate) const MAX_POLICY_SECONDS: u64 = 24 * 60 * 60;

/// Longest tenant display name accepted, in characters.
pub(crate) const MAX_DISPLAY_NAME_CHARS: usize = 256;

pub(crate) fn reason(raw: &str) -> Result<&str, ServiceError> {
    if raw.trim().is_empty() || raw.chars().count() > 1024 || raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "reason",
            "required: 1 to 1024 characters, no control characters",
        ));
    }
    Ok(raw)
}

// ----- request -> domain ----------------------------------------------------

pub(crate) fn tenant_id(raw: &str) -> Result<TenantId, ServiceError> {
    TenantId::try_from(raw).map_err(|e| ServiceError::invalid("tenant_id", e.to_string()))
}

pub(crate) fn scope(raw: &str) -> Result<Scope, ServiceError> {
    if raw.is_empty() {
        return Ok(Scope::default_scope());
    }
    Scope::try_from(raw).map_err(|e| ServiceError::invalid("scope", e.to_string()))
}

/// Rewrap's `target_scope`: `None` (the envelope's own scope) when empty, else a scope label
/// checked as Encrypt's `scope` is.
pub(crate) fn target_scope(raw: &str) -> Result<Option<Scope>, ServiceError> {
    if raw.is_empty() {
        return Ok(None);
    }
    Scope::try_from(raw)
        .map(Some)
        .map_err(|e| ServiceError::invalid("target_scope", e.to_string()))
}

/// A data-path call's `justification`: `None` when absent or empty (no purpose, no reference).
/// A reference needs a purpose; the purpose must be one of the vocabulary; the reference is at
/// most [`MAX_REFERENCE_BYTES`] bytes without control characters.
pub(crate) fn justification(
    raw: Option<pb::Justification>,
) -> Result<Option<Justification>, ServiceError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.purpose == 0 {
        if raw.reference.is_empty() {
            return Ok(None);
        }
        return Err(ServiceError::invalid(
            "justification.purpose",
            "a justification with a reference needs a purpose (docs/justifications.md)",
        ));
    }
    let purpose = Purpose::from_number(raw.purpose).ok_or_else(|| {
        ServiceError::invalid(
            "justification.purpose",
            format!(
                "unknown purpose {}; the purposes are: {}",
                raw.purpose,
                purpose_names()
            ),
        )
    })?;
    if raw.reference.len() > MAX_REFERENCE_BYTES || raw.reference.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "justification.reference",
            format!("at most {MAX_REFERENCE_BYTES} bytes, no control characters"),
        ));
    }
    Ok(Some(Justification {
        purpose,
        reference: (!raw.reference.is_empty()).then_some(raw.reference),
    }))
}

fn purpose_names() -> String {
    Purpose::ALL.map(Purpose::as_str).join(", ")
}

pub(crate) fn context(raw: HashMap<String, String>) -> Result<EncryptionContext, ServiceError> {
    EncryptionContext::try_from_map(raw.into_iter().collect())
        .map_err(|e| ServiceError::invalid("encryption_context", e.to_string()))
}

/// One message of RegisterKey's `key` oneof: its provider kind, its field name in the request
/// (`aws_kms`) and its fields, each with its name in error details (`aws_kms.key_arn`).
pub(crate) struct KeyMessage {
    kind: DomainProviderKind,
    name: &'static str,
    fields: &'static [(&'static str, &'static str)],
}

pub(crate) const AWS_KMS_KEY: KeyMessage = KeyMessage {
    kind: DomainProviderKind::AwsKms,
    name: "aws_kms",
    fields: &[
        ("key_arn", "aws_kms.key_arn"),
        ("role_arn", "aws_kms.role_arn"),
        ("external_id", "aws_kms.external_id"),
    ],
};
pub(crate) const PKCS11_KEY: KeyMessage = KeyMessage {
    kind: DomainProviderKind::Pkcs11,
    name: "pkcs11",
    fields: &[("uri", "pkcs11.uri")],
};
pub(crate) const GCP_KMS_KEY: KeyMessage = KeyMessage {
    kind: DomainProviderKind::GcpKms,
    name: "gcp_kms",
    fields: &[("crypto_key", "gcp_kms.crypto_key")],
};
pub(crate) const AZURE_KEY_VAULT_KEY: KeyMessage = KeyMessage {
    kind: DomainProviderKind::AzureKeyVault,
    name: "azure_key_vault",
    fields: &[("key_id", "azure_key_vault.key_id")],
};

/// RegisterKey's key reference: exactly one, read by its provider's factory
/// ([`keyward_kms::ProviderFactory::parse_key_ref`]) so that a malformed reference is an invalid
/// argument naming the field, not a provider failure. A kind with no factory in `registry` (a
/// server built without that provider) keeps the reference as given: its first field, which
/// must be set, and no other (registration then fails for want of the provider).
pub(crate) fn kek_ref(
    registry: &ProviderRegistry,
    key: Option<register_key_request::Key>,
) -> Result<KeyRef, ServiceError> {
    let (message, values) = match key {
        Some(register_key_request::Key::Local(local)) => {
            if local.key_name.is_empty() {
                return Err(ServiceError::invalid("local.key_name", "must not be empty"));
            }
            return Ok(KeyRef::new(DomainProviderKind::Local, local.key_name));
        }
        Some(register_key_request::Key::AwsKms(k)) => {
            (AWS_KMS_KEY, vec![k.key_arn, k.role_arn, k.external_id])
        }
        Some(register_key_request::Key::Pkcs11(k)) => (PKCS11_KEY, vec![k.uri]),
        Some(register_key_request::Key::GcpKms(k)) => (GCP_KMS_KEY, vec![k.crypto_key]),
        Some(register_key_request::Key::AzureKeyVault(k)) => (AZURE_KEY_VAULT_KEY, vec![k.key_id]),
        None => {
            return Err(ServiceError::invalid(
                "key",
                "one key reference must be set",
            ));
        }
    };
    let named: Vec<(&str, &str)> = message
        .fields
        .iter()
        .zip(&values)
        .map(|((name, _), value)| (*name, value.as_str()))
        .collect();
    let Some(factory) = registry.get(message.kind) else {
        // No factory: nothing here can read the reference's syntax.
        for (i, ((_, qualified), value)) in message.fields.iter().zip(&values).enumerate() {
            if i == 0 && value.is_empty() {
                return Err(ServiceError::invalid(qualified, "must not be empty"));
            }
            if i > 0 && !value.is_empty() {
                return Err(ServiceError::invalid(
                    qualified,
                    format!(
                        "this server has no {} provider to read it",
                        message.kind.as_str()
                    ),
                ));
            }
        }
        return Ok(KeyRef::new(message.kind, values[0].clone()));
    };
    factory
        .parse_key_ref(&KeyRefFields::new(&named))
        .map_err(|e| {
            let field = e
                .field
                .and_then(|f| message.fields.iter().find(|(name, _)| *name == f))
                .map_or(message.name, |(_, qualified)| *qualified);
            ServiceError::invalid(field, e.problem)
        })
}

/// RestoreKey's binding: 0 is the current one.
pub(crate) fn binding_id(raw: i64) -> Result<Option<i64>, ServiceError> {
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
pub(crate) fn tenant_policy(
    raw: Option<pb::TenantPolicy>,
) -> Result<keyward_store::TenantPolicy, ServiceError> {
    let policy = raw.unwrap_or_default();
    let nonzero = |v: u64| (v > 0).then_some(v);
    let policy = keyward_store::TenantPolicy {
        cache_ttl_seconds: nonzero(policy.cache_ttl_seconds),
        monitor_interval_seconds: nonzero(policy.monitor_interval_seconds),
        auto_rekey: policy.auto_rekey,
        decrypt_purposes: decrypt_purposes(&policy.decrypt_purposes)?,
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

/// `TenantPolicy.decrypt_purposes` as a bit set (duplicates are harmless; unspecified or unknown
/// values are refused).
fn decrypt_purposes(raw: &[i32]) -> Result<u32, ServiceError> {
    raw.iter().try_fold(0u32, |bits, &n| {
        Purpose::from_number(n)
            .map(|p| bits | p.bit())
            .ok_or_else(|| {
                ServiceError::invalid(
                    "policy.decrypt_purposes",
                    format!(
                        "{n} is not a purpose; the purposes are: {}",
                        purpose_names()
                    ),
                )
            })
    })
}

/// ReportKeyEvent's provider and key reference (the reference is matched against stored
/// bindings as given, not parsed).
pub(crate) fn key_event(r: &pb::ReportKeyEventRequest) -> Result<DomainProviderKind, ServiceError> {
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

pub(crate) fn display_name(raw: &str) -> Result<&str, ServiceError> {
    if raw.chars().count() > MAX_DISPLAY_NAME_CHARS || raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "display_name",
            format!("at most {MAX_DISPLAY_NAME_CHARS} characters, no control characters"),
        ));
    }
    Ok(raw)
}

// ----- domain -> response ---------------------------------------------------

pub(crate) fn tenant_to_pb(record: &TenantRecord, binding: Option<&KekBinding>) -> pb::Tenant {
    pb::Tenant {
        tenant_id: record.id.to_string(),
        display_name: record.display_name.clone(),
        created_at: Some(timestamp(record.created_at_ms)),
        active_key: binding.map(binding_to_pb),
        policy: Some(pb::TenantPolicy {
            cache_ttl_seconds: record.policy.cache_ttl_seconds.unwrap_or(0),
            monitor_interval_seconds: record.policy.monitor_interval_seconds.unwrap_or(0),
            auto_rekey: record.policy.auto_rekey,
            decrypt_purposes: Purpose::from_bits(record.policy.decrypt_purposes)
                .into_iter()
                .map(|p| p as i32)
                .collect(),
        }),
        previous_keys: Vec::new(),
        effective_policy: None,
    }
}

pub(crate) fn provider_to_pb(kind: DomainProviderKind) -> pb::ProviderKind {
    match kind {
        DomainProviderKind::Local => pb::ProviderKind::Local,
        DomainProviderKind::AwsKms => pb::ProviderKind::AwsKms,
        DomainProviderKind::GcpKms => pb::ProviderKind::GcpKms,
        DomainProviderKind::AzureKeyVault => pb::ProviderKind::AzureKeyVault,
        DomainProviderKind::Pkcs11 => pb::ProviderKind::Pkcs11,
        _ => pb::ProviderKind::Unspecified,
    }
}

pub(crate) fn kek_state_to_pb(state: KekState) -> pb::KekState {
    match state {
        KekState::Active => pb::KekState::Active,
        KekState::Revoked => pb::KekState::Revoked,
        KekState::Unavailable => pb::KekState::Unavailable,
        KekState::Restored => pb::KekState::Restored,
        KekState::Destroyed => pb::KekState::Destroyed,
        KekState::Retired => pb::KekState::Retired,
        _ => pb::KekState::Unspecified,
    }
}

pub(crate) fn binding_to_pb(binding: &KekBinding) -> pb::KekBinding {
    pb::KekBinding {
        provider: provider_to_pb(binding.provider).into(),
        key_ref: binding.key_ref.clone(),
        state: kek_state_to_pb(binding.state).into(),
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

pub(crate) use crate::time::{millis, timestamp};

// ----- AuditService ---------------------------------------------------------

/// ListEvents' tenant: empty is every tenant (checked before authorization, which depends on it).
pub(crate) fn list_tenant(raw: &str) -> Result<Option<TenantId>, ServiceError> {
    if raw.is_empty() {
        return Ok(None);
    }
    TenantId::try_from(raw)
        .map(Some)
        .map_err(|e| ServiceError::invalid("tenant_id", e.to_string()))
}

/// Export's time range (`from` inclusive, `to` exclusive, Unix ms; unset: unbounded). Only a
/// per-tenant export takes one: the whole-chain export is always the whole chain.
pub(crate) fn export_range(
    per_tenant: bool,
    r: &pb::ExportAuditRequest,
) -> Result<(i64, i64), ServiceError> {
    if !per_tenant && (r.from.is_some() || r.to.is_some()) {
        return Err(ServiceError::invalid(
            "from",
            "a time range needs tenant_id: the whole-chain export always covers the whole chain",
        ));
    }
    let from = r.from.map_or(i64::MIN, |t| millis(&t));
    let to = r.to.map_or(i64::MAX, |t| millis(&t));
    if from > to {
        return Err(ServiceError::invalid("to", "is before from"));
    }
    Ok((from, to))
}

/// ListEvents' query, once the caller is authorized for `tenant`.
pub(crate) fn list_query(
    tenant: Option<TenantId>,
    r: &pb::ListAuditEventsRequest,
) -> Result<AuditQuery, ServiceError> {
    let mut query = AuditQuery::default();
    if let Some(tenant) = tenant {
        query = query.with_tenant(tenant);
    }
    if !r.event_type.is_empty() {
        if !keyward_audit::AuditEvent::TYPES.contains(&r.event_type.as_str()) {
            return Err(ServiceError::invalid(
                "event_type",
                format!(
                    "unknown; one of {}",
                    keyward_audit::AuditEvent::TYPES.join(", ")
                ),
            ));
        }
        query = query.with_event_type(r.event_type.clone());
    }
    let from = r.from.map(|t| millis(&t));
    let to = r.to.map(|t| millis(&t));
    query = query.with_time_range(from, to);
    let after = if r.page_token.is_empty() {
        0
    } else {
        r.page_token
            .parse::<u64>()
            .map_err(|_| ServiceError::invalid("page_token", "not a token from this API"))?
    };
    let limit = match r.page_size {
        0 => DEFAULT_LIST_PAGE,
        n => n.min(PAGE),
    };
    Ok(query.with_after_seq(after).with_limit(limit))
}

pub(crate) fn record_to_pb(record: &Record) -> pb::AuditRecord {
    pb::AuditRecord {
        seq: record.seq(),
        time: Some(timestamp(record.time_ms())),
        event_type: record.event().event_type().to_owned(),
        tenant_id: record
            .event()
            .tenant()
            .map(ToString::to_string)
            .unwrap_or_default(),
        canonical_json: record.to_canonical_json(),
        hash: hex::encode(record.hash()),
    }
}

/// Most items in one `EncryptBatch` / `DecryptBatch` call.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// A batch's size, checked before any item is.
pub(crate) fn batch_size(items: usize) -> Result<(), ServiceError> {
    if items == 0 || items > MAX_BATCH_ITEMS {
        return Err(ServiceError::invalid(
            "items",
            format!("a batch holds 1 to {MAX_BATCH_ITEMS} items, not {items}"),
        ));
    }
    Ok(())
}
