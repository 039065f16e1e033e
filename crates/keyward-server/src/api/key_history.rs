//! `TenantService.ListKeyBindings` (not built yet).

use keyward_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::tenant::TenantApi;

impl TenantApi {
    pub(super) async fn list_key_bindings_call(
        &self,
        _request: Request<pb::ListKeyBindingsRequest>,
    ) -> Result<Response<pb::ListKeyBindingsResponse>, Status> {
        Err(Status::unimplemented("ListKeyBindings is not built yet"))
    }
}
