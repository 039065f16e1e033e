//! `TenantService.RekeyTenant` and `GetRekeyStatus` (not built yet).

use keyward_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::tenant::TenantApi;

impl TenantApi {
    pub(super) async fn rekey_tenant_call(
        &self,
        _request: Request<pb::RekeyTenantRequest>,
    ) -> Result<Response<pb::RekeyStatus>, Status> {
        Err(Status::unimplemented("RekeyTenant is not built yet"))
    }

    pub(super) async fn get_rekey_status_call(
        &self,
        _request: Request<pb::GetRekeyStatusRequest>,
    ) -> Result<Response<pb::RekeyStatus>, Status> {
        Err(Status::unimplemented("GetRekeyStatus is not built yet"))
    }
}
