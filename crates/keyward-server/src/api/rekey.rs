//! `TenantService.RekeyTenant` and `GetRekeyStatus`: moving a tenant's data off its older KMS
//! keys (docs/rekey.md). Authorized as their own actions; the keyring does the work.

use keyward_authz::{Action, RequestContext};
use keyward_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{binding_to_pb, tenant_id};
use super::split;
use super::tenant::TenantApi;
use crate::keyring::RekeyStatus;

impl TenantApi {
    pub(super) async fn rekey_tenant_call(
        &self,
        request: Request<pb::RekeyTenantRequest>,
    ) -> Result<Response<pb::RekeyStatus>, Status> {
        let (head, r) = split(request);
        let tenant = tenant_id(&r.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::RekeyTenant,
            Some(&tenant),
            &RequestContext::default(),
        )?;
        let max = (r.max_tenant_keys > 0).then_some(r.max_tenant_keys);
        let status = self
            .keyring
            .rekey(&tenant, max, &caller.actor(&r.requested_by))
            .await?;
        Ok(Response::new(status_to_pb(&status)))
    }

    pub(super) async fn get_rekey_status_call(
        &self,
        request: Request<pb::GetRekeyStatusRequest>,
    ) -> Result<Response<pb::RekeyStatus>, Status> {
        let (head, r) = split(request);
        let tenant = tenant_id(&r.tenant_id)?;
        self.authz.check(
            &head,
            Action::GetRekeyStatus,
            Some(&tenant),
            &RequestContext::default(),
        )?;
        let status = self.keyring.rekey_status(&tenant).await?;
        Ok(Response::new(status_to_pb(&status)))
    }
}

fn status_to_pb(status: &RekeyStatus) -> pb::RekeyStatus {
    pb::RekeyStatus {
        target: Some(binding_to_pb(&status.target)),
        tenant_keys_current: status.tenant_keys_current,
        tenant_keys_remaining: status.tenant_keys_remaining,
        deks_remaining: status.deks_remaining,
        pending_bindings: status.pending.iter().map(binding_to_pb).collect(),
        retired_bindings: status.retired.iter().map(binding_to_pb).collect(),
        rewrapped: status.rewrapped,
        retired: status.retired_now,
        done: status.done(),
        last_error: status.last_error.clone().unwrap_or_default(),
    }
}
