//! `TenantService.ListKeyBindings`: the tenant's key history, so that a customer can see which
//! of its KMS keys still protect data (docs/onboarding/aws.md, "Rotate").

use keyward_authz::{Action, RequestContext};
use keyward_proto::v1 as pb;
use keyward_store::BindingUsage;
use tonic::{Request, Response, Status};

use super::convert::{binding_to_pb, tenant_id, timestamp};
use super::split;
use super::tenant::TenantApi;

impl TenantApi {
    pub(super) async fn list_key_bindings_call(
        &self,
        request: Request<pb::ListKeyBindingsRequest>,
    ) -> Result<Response<pb::ListKeyBindingsResponse>, Status> {
        let (head, request) = split(request);
        let id = tenant_id(&request.tenant_id)?;
        self.authz.check(
            &head,
            Action::ListKeyBindings,
            Some(&id),
            &RequestContext::default(),
        )?;
        let history = self.keyring.key_history(&id).await?;
        Ok(Response::new(pb::ListKeyBindingsResponse {
            bindings: history.iter().map(usage_to_pb).collect(),
        }))
    }
}

/// One binding of the history: the binding as `GetTenant` shows it, when a newer one replaced
/// it, and what depends on it.
fn usage_to_pb(usage: &BindingUsage) -> pb::KeyBindingUsage {
    pb::KeyBindingUsage {
        binding: Some(binding_to_pb(&usage.binding)),
        replaced_at: usage.binding.deactivated_at_ms.map(timestamp),
        deks: usage.deks,
        scopes: usage.scopes,
        deks_shredded: usage.deks_shredded,
        bound_by: usage.bound_by.clone().unwrap_or_default(),
    }
}
