//! The protobuf codec of every `keyward.v1` client and server: tonic-prost's, except that a
//! message that cannot be decoded (invalid UTF-8 in a `string` field, a truncated field, a
//! bad wire type, nesting beyond prost's recursion limit of 100) is `INVALID_ARGUMENT`
//! instead of tonic-prost's `INTERNAL`.
//!
//! `INTERNAL` tells a caller "the server broke, retrying may help"; a request that is not
//! valid protobuf is the caller's error and retrying it can never succeed, which is
//! `INVALID_ARGUMENT` in <https://grpc.io/docs/guides/status-codes/>. The same codec decodes
//! responses in the generated clients, so a client that receives an undecodable response
//! (only possible from something that is not a Keyward server) also sees `INVALID_ARGUMENT`,
//! with a message saying the message could not be decoded. Nothing else changes: message
//! size limits are enforced by tonic before the codec runs (`OUT_OF_RANGE`), and encoding
//! is tonic-prost's own.

use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt as _};

/// Prefix of the status message of an undecodable message.
pub const DECODE_ERROR_PREFIX: &str = "the message is not valid protobuf for its type";
/// `ErrorInfo.reason` of an undecodable message (domain `keyward.v1`, as every Keyward error).
pub const MALFORMED_MESSAGE_REASON: &str = "MALFORMED_MESSAGE";

/// tonic-prost's [`tonic_prost::ProstCodec`] with decode errors mapped to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U> {
    inner: tonic_prost::ProstCodec<T, U>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: tonic_prost::ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// tonic-prost's decoder; its only error (a [`prost::DecodeError`]) becomes `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct InvalidArgumentDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: prost::Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // ProstDecoder::decode fails only with a prost decode error (tonic-prost 0.14
        // `from_decode_error`), so every error here is the message's fault.
        self.inner.decode(buf).map_err(|e| {
            let mut details = ErrorDetails::new();
            details.set_error_info(
                MALFORMED_MESSAGE_REASON,
                "keyward.v1",
                std::collections::HashMap::new(),
            );
            Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!("{DECODE_ERROR_PREFIX}: {}", e.message()),
                details,
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
