//! `TenantService.ExportKeyHierarchy`: the exit kit (not built yet).

use keyward_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::tenant::TenantApi;

/// The stream `ExportKeyHierarchy` answers with.
pub(super) type ExportStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::ExportKeyHierarchyChunk, Status>> + Send>,
>;

impl TenantApi {
    pub(super) async fn export_key_hierarchy_call(
        &self,
        _request: Request<pb::ExportKeyHierarchyRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        Err(Status::unimplemented("ExportKeyHierarchy is not built yet"))
    }
}
