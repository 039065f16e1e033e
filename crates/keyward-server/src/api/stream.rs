//! `CryptoService.EncryptStream` and `DecryptStream`: framed envelopes (format version 2,
//! docs/envelope-format.md §10) streamed in constant memory (docs/streaming.md).

use keyward_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::crypto::CryptoApi;

pub(super) type EncryptStream = ReceiverStream<Result<pb::EncryptStreamResponse, Status>>;
pub(super) type DecryptStream = ReceiverStream<Result<pb::DecryptStreamResponse, Status>>;

impl CryptoApi {
    pub(super) async fn encrypt_stream_call(
        &self,
        _request: Request<Streaming<pb::EncryptStreamRequest>>,
    ) -> Result<Response<EncryptStream>, Status> {
        Err(Status::unimplemented("EncryptStream"))
    }

    pub(super) async fn decrypt_stream_call(
        &self,
        _request: Request<Streaming<pb::DecryptStreamRequest>>,
    ) -> Result<Response<DecryptStream>, Status> {
        Err(Status::unimplemented("DecryptStream"))
    }
}
