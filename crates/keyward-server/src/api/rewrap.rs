//! `CryptoService.Rewrap` and `RewrapBatch` (not built yet).

use keyward_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::crypto::CryptoApi;

impl CryptoApi {
    pub(super) async fn rewrap_call(
        &self,
        _request: Request<pb::RewrapRequest>,
    ) -> Result<Response<pb::RewrapResponse>, Status> {
        Err(Status::unimplemented("Rewrap is not built yet"))
    }

    pub(super) async fn rewrap_batch_call(
        &self,
        _request: Request<pb::RewrapBatchRequest>,
    ) -> Result<Response<pb::RewrapBatchResponse>, Status> {
        Err(Status::unimplemented("RewrapBatch is not built yet"))
    }
}
