//! `TenantService.ShredScope` and `ShredScopes` (not built yet).

use keyward_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::tenant::TenantApi;

impl TenantApi {
    pub(super) async fn shred_scope_call(
        &self,
        _request: Request<pb::ShredScopeRequest>,
    ) -> Result<Response<pb::ShredScopeResponse>, Status> {
        Err(Status::unimplemented("ShredScope is not built yet"))
    }

    pub(super) async fn shred_scopes_call(
        &self,
        _request: Request<pb::ShredScopesRequest>,
    ) -> Result<Response<pb::ShredScopesResponse>, Status> {
        Err(Status::unimplemented("ShredScopes is not built yet"))
    }
}
