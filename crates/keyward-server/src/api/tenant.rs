//! `keyward.v1.TenantService`: onboarding, key registration, revocation and restoration,
//! tenant policies, key events. Each handler converts the request ([`super::convert`]),
//! authorizes it, calls the keyring and converts the answer.

use std::sync::Arc;

use keyward_envelope::TenantId;
use keyward_kms::ProviderRegistry;
use keyward_proto::v1::{self as pb, tenant_service_server::TenantService};
use keyward_store::{KekState, TenantState};
use tonic::{Request, Response, Status};

use keyward_authz::{Action, RequestContext};

use crate::{
    authz::Authz,
    error::ServiceError,
    keyring::{Keyring, RevocationSource},
    now_ms,
};

use super::{convert::*, split};

/// `keyward.v1.TenantService`.
#[derive(Debug, Clone)]
pub struct TenantApi {
    pub(super) keyring: Arc<Keyring>,
    pub(super) authz: Arc<Authz>,
    /// The key-state monitor's interval (`None`: no monitor), for `Tenant.effective_policy`.
    monitor_interval: Option<std::time::Duration>,
    /// The key providers' factories, which read the key references RegisterKey receives.
    key_refs: ProviderRegistry,
}

impl TenantApi {
    pub fn new(keyring: Arc<Keyring>, authz: Arc<Authz>) -> Self {
        Self {
            keyring,
            authz,
            monitor_interval: None,
            key_refs: ProviderRegistry::default(),
        }
    }

    /// The factories whose syntax RegisterKey's key references are checked against (none by
    /// default: a reference is then kept as given).
    #[must_use]
    pub fn with_key_ref_syntax(mut self, registry: ProviderRegistry) -> Self {
        self.key_refs = registry;
        self
    }

    /// The server's monitor interval (`None`: the server runs no monitor).
    #[must_use]
    pub fn with_monitor_interval(mut self, interval: Option<std::time::Duration>) -> Self {
        self.monitor_interval = interval;
        self
    }
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    type ExportKeyHierarchyStream = super::export::ExportStream;

    async fn rekey_tenant(
        &self,
        request: Request<pb::RekeyTenantRequest>,
    ) -> Result<Response<pb::RekeyStatus>, Status> {
        self.rekey_tenant_call(request).await
    }

    async fn get_rekey_status(
        &self,
        request: Request<pb::GetRekeyStatusRequest>,
    ) -> Result<Response<pb::RekeyStatus>, Status> {
        self.get_rekey_status_call(request).await
    }

    async fn export_key_hierarchy(
        &self,
        request: Request<pb::ExportKeyHierarchyRequest>,
    ) -> Result<Response<Self::ExportKeyHierarchyStream>, Status> {
        self.export_key_hierarchy_call(request).await
    }

    async fn shred_scope(
        &self,
        request: Request<pb::ShredScopeRequest>,
    ) -> Result<Response<pb::ShredScopeResponse>, Status> {
        self.shred_scope_call(request).await
    }

    async fn shred_scopes(
        &self,
        request: Request<pb::ShredScopesRequest>,
    ) -> Result<Response<pb::ShredScopesResponse>, Status> {
        self.shred_scopes_call(request).await
    }

    async fn list_key_bindings(
        &self,
        request: Request<pb::ListKeyBindingsRequest>,
    ) -> Result<Response<pb::ListKeyBindingsResponse>, Status> {
        self.list_key_bindings_call(request).await
    }

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
        let caller = self.authz.check(
            &head,
            Action::RegisterKey,
            Some(&id),
            &RequestContext::default(),
        )?;
        let kek = kek_ref(&self.key_refs, request.key)?;
        let commit = self
            .keyring
            .register_key_as(&id, &kek, caller.actor(""))
            .await?;
        Ok(Response::new(self.tenant_to_pb(&commit.tenant)))
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
        let commit = self
            .keyring
            .revoke(
                &id,
                KekState::Revoked,
                RevocationSource::Explicit,
                Some(caller.actor(&r.requested_by)),
                reason,
                now_ms(),
            )
            .await?;
        Ok(Response::new(self.tenant_to_pb(&commit.tenant)))
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
        let commit = self
            .keyring
            .restore_binding(
                &id,
                binding,
                RevocationSource::Explicit,
                Some(caller.actor(&r.requested_by)),
                reason,
            )
            .await?;
        Ok(Response::new(self.tenant_to_pb(&commit.tenant)))
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
        let state = self
            .keyring
            .set_tenant_policy(&id, policy, caller.actor(&r.requested_by))
            .await?;
        Ok(Response::new(self.tenant_to_pb(&state)))
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
        let (checked, revoked) = self.keyring.recheck_key(provider, &r.key_ref).await?;
        Ok(Response::new(pb::ReportKeyEventResponse {
            tenants_checked: checked,
            tenants_revoked: revoked,
        }))
    }
}

impl TenantApi {
    /// `GetTenant`'s answer: the tenant as the store has it now.
    async fn tenant_view(&self, id: &TenantId) -> Result<pb::Tenant, ServiceError> {
        Ok(self.tenant_to_pb(&self.keyring.tenant_state(id).await?))
    }

    /// The tenant with its current binding, the older ones and the policy in force. The
    /// mutations answer with the state their own store write left (`TenantState`), not with a
    /// later read that another replica's change could already have overtaken.
    fn tenant_to_pb(&self, state: &TenantState) -> pb::Tenant {
        let mut tenant = tenant_to_pb(&state.tenant, state.current());
        tenant.previous_keys = state.previous().map(binding_to_pb).collect();
        tenant.effective_policy = Some(self.effective_policy(&state.tenant.policy));
        tenant
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
