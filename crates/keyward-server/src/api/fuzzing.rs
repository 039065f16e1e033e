//! Entry points for the coverage-guided fuzz target `proto_requests` (`fuzz/`,
//! docs/threat-model.md "Hostile input"). Not part of the API.
//!
//! One function per request message: the request-to-domain conversions its handler runs, in the
//! handler's order, without the authorization check between them and without the store, keyring
//! or KMS work after them. Each returns the domain values or the handler's [`ServiceError`].

use keyward_envelope::{EncryptionContext, TenantId};
use keyward_kms::{KeyRef, ProviderKind};
use keyward_proto::v1 as pb;
use keyward_store::{AuditQuery, Scope, TenantPolicy};

use crate::error::ServiceError;

/// `Encrypt`: tenant, context, scope.
pub fn encrypt(
    r: pb::EncryptRequest,
) -> Result<(TenantId, EncryptionContext, Scope), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    let ctx = super::convert::context(r.encryption_context)?;
    let scope = super::convert::scope(&r.scope)?;
    Ok((tenant, ctx, scope))
}

/// `Decrypt`: tenant, context (the envelope is parsed by the keyring).
pub fn decrypt(r: pb::DecryptRequest) -> Result<(TenantId, EncryptionContext), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    let ctx = super::convert::context(r.encryption_context)?;
    Ok((tenant, ctx))
}

/// One `EncryptBatch` item's outcome.
pub type EncryptItem = Result<(EncryptionContext, Scope), ServiceError>;

/// `EncryptBatch`: tenant, batch size, then each item (an item's error is its own result).
pub fn encrypt_batch(
    r: pb::EncryptBatchRequest,
) -> Result<(TenantId, Vec<EncryptItem>), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    super::convert::batch_size(r.items.len())?;
    let items = r
        .items
        .into_iter()
        .map(|item| {
            Ok((
                super::convert::context(item.encryption_context)?,
                super::convert::scope(&item.scope)?,
            ))
        })
        .collect();
    Ok((tenant, items))
}

/// One `DecryptBatch` item's outcome.
pub type DecryptItem = Result<EncryptionContext, ServiceError>;

/// `DecryptBatch`: tenant, batch size, then each item's context.
pub fn decrypt_batch(
    r: pb::DecryptBatchRequest,
) -> Result<(TenantId, Vec<DecryptItem>), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    super::convert::batch_size(r.items.len())?;
    let items = r
        .items
        .into_iter()
        .map(|item| super::convert::context(item.encryption_context))
        .collect();
    Ok((tenant, items))
}

/// `CreateTenant`: tenant, display name.
pub fn create_tenant(r: &pb::CreateTenantRequest) -> Result<(TenantId, &str), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    let name = super::convert::display_name(&r.display_name)?;
    Ok((tenant, name))
}

/// `RegisterKey`: tenant, key reference (read by `registry`'s factories).
pub fn register_key(
    registry: &keyward_kms::ProviderRegistry,
    r: pb::RegisterKeyRequest,
) -> Result<(TenantId, KeyRef), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    let kek = super::convert::kek_ref(registry, r.key)?;
    Ok((tenant, kek))
}

/// `GetTenant`: tenant.
pub fn get_tenant(r: &pb::GetTenantRequest) -> Result<TenantId, ServiceError> {
    super::convert::tenant_id(&r.tenant_id)
}

/// `RevokeKey`: tenant, reason.
pub fn revoke_key(r: &pb::RevokeKeyRequest) -> Result<(TenantId, &str), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    let reason = super::convert::reason(&r.reason)?;
    Ok((tenant, reason))
}

/// `RestoreKey`: tenant, reason, binding.
pub fn restore_key(
    r: &pb::RestoreKeyRequest,
) -> Result<(TenantId, &str, Option<i64>), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    let reason = super::convert::reason(&r.reason)?;
    let binding = super::convert::binding_id(r.binding_id)?;
    Ok((tenant, reason, binding))
}

/// `SetTenantPolicy`: tenant, policy.
pub fn set_tenant_policy(
    r: pb::SetTenantPolicyRequest,
) -> Result<(TenantId, TenantPolicy), ServiceError> {
    let tenant = super::convert::tenant_id(&r.tenant_id)?;
    let policy = super::convert::tenant_policy(r.policy)?;
    Ok((tenant, policy))
}

/// `ReportKeyEvent`: provider and key reference.
pub fn report_key_event(r: &pb::ReportKeyEventRequest) -> Result<ProviderKind, ServiceError> {
    super::convert::key_event(r)
}

/// `AuditService.ListEvents`: tenant, then the query.
pub fn list_audit_events(r: &pb::ListAuditEventsRequest) -> Result<AuditQuery, ServiceError> {
    let tenant = super::convert::list_tenant(&r.tenant_id)?;
    super::convert::list_query(tenant, r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;

    /// The field of an `InvalidArgument`.
    fn field<T: std::fmt::Debug>(r: Result<T, ServiceError>) -> &'static str {
        match r {
            Err(ServiceError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn register_key_needs_exactly_one_well_formed_key() {
        let request = |key| pb::RegisterKeyRequest {
            tenant_id: "acme".into(),
            key,
        };
        assert_eq!(
            field(register_key(
                &crate::test_support::test_registry(),
                request(None)
            )),
            "key"
        );
        let local = |name: &str| {
            Some(pb::register_key_request::Key::Local(pb::LocalKey {
                key_name: name.into(),
            }))
        };
        assert_eq!(
            field(register_key(
                &crate::test_support::test_registry(),
                request(local(""))
            )),
            "local.key_name"
        );
        let (tenant, kek) = register_key(
            &crate::test_support::test_registry(),
            request(local("default")),
        )
        .unwrap();
        assert_eq!(
            (tenant.as_str(), kek.to_string().as_str()),
            ("acme", "local:default")
        );
        let gcp = Some(pb::register_key_request::Key::GcpKms(pb::GcpKmsKey {
            crypto_key: "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"
                .into(),
        }));
        assert_eq!(
            field(register_key(
                &crate::test_support::test_registry(),
                request(gcp)
            )),
            "gcp_kms.crypto_key"
        );
    }

    #[test]
    fn restore_key_binding_is_zero_for_current_or_positive() {
        let request = |binding_id| pb::RestoreKeyRequest {
            tenant_id: "acme".into(),
            reason: "resolved".into(),
            requested_by: String::new(),
            binding_id,
        };
        assert_eq!(restore_key(&request(0)).unwrap().2, None);
        assert_eq!(restore_key(&request(7)).unwrap().2, Some(7));
        assert_eq!(field(restore_key(&request(-1))), "binding_id");
        let mut no_reason = request(0);
        no_reason.reason = " ".into();
        assert_eq!(field(restore_key(&no_reason)), "reason");
    }

    #[test]
    fn tenant_policy_zero_is_unset_and_values_are_at_most_a_day() {
        let request = |ttl, monitor| pb::SetTenantPolicyRequest {
            tenant_id: "acme".into(),
            policy: Some(pb::TenantPolicy {
                cache_ttl_seconds: ttl,
                monitor_interval_seconds: monitor,
                auto_rekey: false,
                decrypt_purposes: Vec::new(),
            }),
            requested_by: String::new(),
        };
        let (_, policy) = set_tenant_policy(request(0, 60)).unwrap();
        assert_eq!(
            (policy.cache_ttl_seconds, policy.monitor_interval_seconds),
            (None, Some(60))
        );
        assert_eq!(field(set_tenant_policy(request(86_401, 0))), "policy");
        assert_eq!(field(set_tenant_policy(request(0, 86_401))), "policy");
        assert!(set_tenant_policy(request(86_400, 86_400)).is_ok());
    }

    #[test]
    fn report_key_event_needs_a_provider_and_a_key_ref() {
        let request = |provider: pb::ProviderKind, key_ref: &str| pb::ReportKeyEventRequest {
            provider: provider as i32,
            key_ref: key_ref.into(),
            event: String::new(),
        };
        assert_eq!(
            report_key_event(&request(pb::ProviderKind::Pkcs11, "pkcs11:object=k")).unwrap(),
            ProviderKind::Pkcs11
        );
        assert_eq!(
            field(report_key_event(&request(
                pb::ProviderKind::Unspecified,
                "k"
            ))),
            "provider"
        );
        assert_eq!(
            field(report_key_event(&request(pb::ProviderKind::Local, ""))),
            "key_ref"
        );
    }

    #[test]
    fn list_audit_events_checks_type_token_and_bounds_the_page() {
        let request = |event_type: &str, page_token: &str, page_size| pb::ListAuditEventsRequest {
            tenant_id: String::new(),
            event_type: event_type.into(),
            from: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 999_999_999,
            }),
            to: None,
            page_size,
            page_token: page_token.into(),
        };
        let query = list_audit_events(&request("dek_created", "41", 0)).unwrap();
        assert_eq!(query.tenant, None);
        assert_eq!(query.event_type.as_deref(), Some("dek_created"));
        assert_eq!((query.after_seq, query.limit), (41, 100));
        assert_eq!(query.from_ms, Some(i64::MAX));
        assert_eq!(
            list_audit_events(&request("", "", 5000)).unwrap().limit,
            1000
        );
        assert_eq!(
            field(list_audit_events(&request("no_such", "", 0))),
            "event_type"
        );
        assert_eq!(field(list_audit_events(&request("", "x", 0))), "page_token");
        let mut bad_tenant = request("", "", 0);
        bad_tenant.tenant_id = "Acme".into();
        assert_eq!(field(list_audit_events(&bad_tenant)), "tenant_id");
    }
}
