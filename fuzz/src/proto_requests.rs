//! `proto_requests`: protobuf request → domain conversion. The first byte selects a request
//! message of the API (keyward.v1); the rest is decoded as that message with prost, exactly as
//! tonic would, and handed to the conversions its handler runs
//! ([`keyward_server::api::fuzzing`]). For `Decrypt` the envelope also goes through
//! [`keyward_envelope::parse`].
//!
//! Invariants: a conversion fails only with `InvalidArgument` naming a field, with a bounded
//! description, mapped to the gRPC code `INVALID_ARGUMENT`; an accepted value is exactly what
//! the request said (tenant id, context map, scope, display name, reason, key reference,
//! policy, binding, audit query).

use std::collections::{BTreeMap, HashMap};

use keyward_kms::ProviderKind;
use keyward_proto::v1 as pb;
use keyward_server::error::ServiceError;
use keyward_server::api::fuzzing as convert;
use prost::Message;

/// The request messages, in selector order.
pub const MESSAGES: [&str; 12] = [
    "EncryptRequest",
    "DecryptRequest",
    "EncryptBatchRequest",
    "DecryptBatchRequest",
    "CreateTenantRequest",
    "RegisterKeyRequest",
    "GetTenantRequest",
    "RevokeKeyRequest",
    "RestoreKeyRequest",
    "SetTenantPolicyRequest",
    "ReportKeyEventRequest",
    "ListAuditEventsRequest",
];

/// Checks a rejection: `InvalidArgument` naming a field, bounded, `INVALID_ARGUMENT` on the wire.
fn rejected(e: &ServiceError) {
    match e {
        ServiceError::InvalidArgument { field, description } => {
            assert!(!field.is_empty());
            assert!(!description.is_empty());
            assert!(
                description.len() < 4096,
                "unbounded message for {field}: {}",
                description.len()
            );
            assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
        }
        other => panic!("a request conversion failed with {other:?}, not InvalidArgument"),
    }
}

/// Checks an accepted result with `accepted`, or a rejection.
fn check<T>(result: Result<T, ServiceError>, accepted: impl FnOnce(T)) {
    match result {
        Ok(value) => accepted(value),
        Err(e) => rejected(&e),
    }
}

fn same_context(ctx: &keyward_envelope::EncryptionContext, raw: &HashMap<String, String>) {
    let raw: BTreeMap<String, String> = raw.clone().into_iter().collect();
    assert_eq!(ctx.as_map(), &raw);
}

fn same_scope(scope: &keyward_store::Scope, raw: &str) {
    if raw.is_empty() {
        assert_eq!(scope, &keyward_store::Scope::default_scope());
    } else {
        assert_eq!(scope.as_str(), raw);
    }
}

fn decode<M: Message + Default>(data: &[u8]) -> Option<M> {
    M::decode(data).ok()
}

pub fn run(data: &[u8]) {
    let Some((selector, rest)) = crate::select(data, MESSAGES.len() as u8) else {
        return;
    };
    match selector {
        0 => {
            let Some(r) = decode::<pb::EncryptRequest>(rest) else {
                return;
            };
            let (raw_ctx, raw_scope, raw_tenant) = (
                r.encryption_context.clone(),
                r.scope.clone(),
                r.tenant_id.clone(),
            );
            check(convert::encrypt(r), |(tenant, ctx, scope)| {
                assert_eq!(tenant.as_str(), raw_tenant);
                same_context(&ctx, &raw_ctx);
                same_scope(&scope, &raw_scope);
            });
        }
        1 => {
            let Some(r) = decode::<pb::DecryptRequest>(rest) else {
                return;
            };
            let _ = keyward_envelope::parse(&r.envelope);
            let (raw_ctx, raw_tenant) = (r.encryption_context.clone(), r.tenant_id.clone());
            check(convert::decrypt(r), |(tenant, ctx)| {
                assert_eq!(tenant.as_str(), raw_tenant);
                same_context(&ctx, &raw_ctx);
            });
        }
        2 => {
            let Some(r) = decode::<pb::EncryptBatchRequest>(rest) else {
                return;
            };
            let raw = r.clone();
            check(convert::encrypt_batch(r), |(tenant, items)| {
                assert_eq!(tenant.as_str(), raw.tenant_id);
                assert!((1..=1000).contains(&items.len()));
                assert_eq!(items.len(), raw.items.len());
                for (item, raw) in items.into_iter().zip(&raw.items) {
                    check(item, |(ctx, scope)| {
                        same_context(&ctx, &raw.encryption_context);
                        same_scope(&scope, &raw.scope);
                    });
                }
            });
        }
        3 => {
            let Some(r) = decode::<pb::DecryptBatchRequest>(rest) else {
                return;
            };
            let raw = r.clone();
            check(convert::decrypt_batch(r), |(tenant, items)| {
                assert_eq!(tenant.as_str(), raw.tenant_id);
                assert!((1..=1000).contains(&items.len()));
                assert_eq!(items.len(), raw.items.len());
                for (item, raw) in items.into_iter().zip(&raw.items) {
                    check(item, |ctx| same_context(&ctx, &raw.encryption_context));
                }
            });
        }
        4 => {
            let Some(r) = decode::<pb::CreateTenantRequest>(rest) else {
                return;
            };
            check(convert::create_tenant(&r), |(tenant, name)| {
                assert_eq!(tenant.as_str(), r.tenant_id);
                assert_eq!(name, r.display_name);
            });
        }
        5 => {
            let Some(r) = decode::<pb::RegisterKeyRequest>(rest) else {
                return;
            };
            let raw = r.clone();
            check(convert::register_key(&crate::provider_registry(), r), |(tenant, kek)| {
                assert_eq!(tenant.as_str(), raw.tenant_id);
                registered(&raw, &kek);
            });
        }
        6 => {
            let Some(r) = decode::<pb::GetTenantRequest>(rest) else {
                return;
            };
            check(convert::get_tenant(&r), |tenant| {
                assert_eq!(tenant.as_str(), r.tenant_id)
            });
        }
        7 => {
            let Some(r) = decode::<pb::RevokeKeyRequest>(rest) else {
                return;
            };
            check(convert::revoke_key(&r), |(tenant, reason)| {
                assert_eq!(tenant.as_str(), r.tenant_id);
                assert_eq!(reason, r.reason);
                assert!(!reason.trim().is_empty());
            });
        }
        8 => {
            let Some(r) = decode::<pb::RestoreKeyRequest>(rest) else {
                return;
            };
            check(convert::restore_key(&r), |(tenant, reason, binding)| {
                assert_eq!(tenant.as_str(), r.tenant_id);
                assert_eq!(reason, r.reason);
                assert_eq!(binding.unwrap_or(0), r.binding_id);
            });
        }
        9 => {
            let Some(r) = decode::<pb::SetTenantPolicyRequest>(rest) else {
                return;
            };
            let raw = r.policy.clone().unwrap_or_default();
            check(convert::set_tenant_policy(r), |(_, policy)| {
                assert_eq!(policy.cache_ttl_seconds.unwrap_or(0), raw.cache_ttl_seconds);
                assert_eq!(
                    policy.monitor_interval_seconds.unwrap_or(0),
                    raw.monitor_interval_seconds
                );
            });
        }
        10 => {
            let Some(r) = decode::<pb::ReportKeyEventRequest>(rest) else {
                return;
            };
            check(convert::report_key_event(&r), |kind| {
                assert!(!r.key_ref.is_empty());
                assert_eq!(
                    kind.as_str().replace('-', "_"),
                    r.provider()
                        .as_str_name()
                        .trim_start_matches("PROVIDER_KIND_")
                        .to_ascii_lowercase()
                );
            });
        }
        _ => {
            let Some(r) = decode::<pb::ListAuditEventsRequest>(rest) else {
                return;
            };
            check(convert::list_audit_events(&r), |query| {
                assert_eq!(
                    query.tenant.as_ref().map(|t| t.as_str()),
                    (!r.tenant_id.is_empty()).then_some(r.tenant_id.as_str())
                );
                assert_eq!(
                    query.event_type.as_deref(),
                    (!r.event_type.is_empty()).then_some(r.event_type.as_str())
                );
                assert!((1..=1000).contains(&query.limit));
            });
        }
    }
}

/// An accepted RegisterKey: the key reference is the request's, in the provider's canonical form.
fn registered(r: &pb::RegisterKeyRequest, kek: &keyward_kms::KeyRef) {
    use pb::register_key_request::Key;
    match r.key.as_ref().unwrap() {
        Key::Local(local) => {
            assert_eq!(kek.kind(), ProviderKind::Local);
            assert_eq!(kek.id(), local.key_name);
        }
        Key::AwsKms(aws) => {
            assert_eq!(kek.kind(), ProviderKind::AwsKms);
            let parsed: keyward_kms_aws::AwsKeyRef = kek.id().parse().unwrap();
            assert_eq!(parsed.arn(), aws.key_arn);
            let role = parsed.role.as_ref();
            assert_eq!(role.map_or("", |r| r.role_arn.as_str()), aws.role_arn);
            assert_eq!(role.map_or("", |r| r.external_id.as_str()), aws.external_id);
        }
        Key::Pkcs11(key) => {
            assert_eq!(kek.kind(), ProviderKind::Pkcs11);
            let stored = keyward_kms_pkcs11::Pkcs11KeyUri::from_key_ref_id(kek.id()).unwrap();
            let given = keyward_kms_pkcs11::Pkcs11KeyUri::from_key_ref_id(&key.uri).unwrap();
            assert_eq!(stored, given);
        }
        Key::GcpKms(key) => {
            assert_eq!(kek.kind(), ProviderKind::GcpKms);
            assert_eq!(kek.id(), key.crypto_key);
        }
        Key::AzureKeyVault(key) => {
            assert_eq!(kek.kind(), ProviderKind::AzureKeyVault);
            assert!(kek.id().eq_ignore_ascii_case(&key.key_id));
            assert_eq!(
                keyward_kms_azure::AzureKeyId::parse(kek.id()).unwrap(),
                keyward_kms_azure::AzureKeyId::parse(&key.key_id).unwrap()
            );
        }
    }
}
