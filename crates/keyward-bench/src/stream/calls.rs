//! One `EncryptStream` or `DecryptStream` call of `keyward-bench stream`, timed from the call's
//! start to the end of its response stream. The same code drives Keyward and the null service.
//! Plaintext is generated as it is sent and envelopes are read from a file as they are sent:
//! the client never holds a whole payload.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use keyward_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use tokio::io::AsyncWriteExt as _;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

/// The tenant every stream is for.
pub(super) const TENANT: &str = "bench";

/// Responses up to this size are accepted (Keyward's are one or a few frames; the null
/// service's are the request messages echoed).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A plaintext of `size` bytes sent in messages of `message_size` bytes, each the first bytes of
/// one template: byte `p` of the plaintext is `template[p % message_size]`.
#[derive(Debug, Clone)]
pub(super) struct Payload {
    template: Arc<Vec<u8>>,
    size: u64,
}

impl Payload {
    pub(super) fn new(size: u64, message_size: usize) -> Payload {
        // Not all one byte value, so that a misplaced chunk is seen.
        let template = (0..message_size)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        Payload {
            template: Arc::new(template),
            size,
        }
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    fn message_size(&self) -> u64 {
        self.template.len() as u64
    }

    /// How many request messages carry the plaintext (at least one, which may be empty).
    fn messages(&self) -> u64 {
        self.size.div_ceil(self.message_size()).max(1)
    }

    /// The plaintext of message `i`.
    fn message(&self, i: u64) -> &[u8] {
        let len = (self.size - i * self.message_size()).min(self.message_size());
        &self.template[..len as usize]
    }

    /// Whether `chunk` is the plaintext at offset `at`.
    pub(super) fn matches(&self, at: u64, chunk: &[u8]) -> bool {
        if at + chunk.len() as u64 > self.size {
            return false;
        }
        let mut rest = chunk;
        let mut at = at;
        while !rest.is_empty() {
            let offset = (at % self.message_size()) as usize;
            let n = rest.len().min(self.template.len() - offset);
            if rest[..n] != self.template[offset..offset + n] {
                return false;
            }
            rest = &rest[n..];
            at += n as u64;
        }
        true
    }
}

/// What one call did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    /// From just before the call to the end of its response stream.
    pub(super) elapsed: Duration,
    /// From just before the call to its first response message.
    pub(super) first_response: Duration,
    /// Bytes received in the responses (envelope bytes for an encrypt, plaintext for a decrypt).
    pub(super) received: u64,
    /// Whether a response had `final` set (Keyward's DecryptStream; never the null service).
    pub(super) final_seen: bool,
}

fn client(channel: &Channel) -> CryptoServiceClient<Channel> {
    CryptoServiceClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// `EncryptStream` of `payload` in frames of `frame_size`; the envelope written to `sink` when
/// given (the bytes a decrypt run sends), otherwise only counted.
pub(super) async fn encrypt(
    channel: &Channel,
    payload: &Payload,
    frame_size: u32,
    mut sink: Option<&mut tokio::fs::File>,
) -> anyhow::Result<Call> {
    let p = payload.clone();
    let requests = tokio_stream::iter(0..payload.messages()).map(move |i| {
        let first = i == 0;
        pb::EncryptStreamRequest {
            tenant_id: if first { TENANT.into() } else { String::new() },
            encryption_context: Default::default(),
            scope: String::new(),
            frame_size: if first { frame_size } else { 0 },
            plaintext: p.message(i).to_vec(),
            justification: None,
        }
    });
    let start = Instant::now();
    let mut responses = client(channel)
        .encrypt_stream(requests)
        .await
        .context("EncryptStream")?
        .into_inner();
    let mut first_response = None;
    let mut received = 0u64;
    while let Some(m) = responses.message().await.context("EncryptStream")? {
        first_response.get_or_insert_with(|| start.elapsed());
        received += m.envelope.len() as u64;
        if let Some(file) = sink.as_mut() {
            file.write_all(&m.envelope).await?;
        }
    }
    let elapsed = start.elapsed();
    if let Some(file) = sink {
        file.flush().await?;
    }
    Ok(Call {
        elapsed,
        first_response: first_response.unwrap_or(elapsed),
        received,
        final_seen: false,
    })
}

/// `DecryptStream` of the envelope in `envelope`, sent in messages of `message_size` bytes read
/// from the file as they go; each plaintext response checked against `expect` when given.
pub(super) async fn decrypt(
    channel: &Channel,
    envelope: &Path,
    message_size: usize,
    expect: Option<&Payload>,
) -> anyhow::Result<Call> {
    let (requests, reader) = file_requests(envelope.to_owned(), message_size);
    let start = Instant::now();
    let mut responses = client(channel)
        .decrypt_stream(requests)
        .await
        .context("DecryptStream")?
        .into_inner();
    let mut first_response = None;
    let mut received = 0u64;
    let mut final_seen = false;
    while let Some(m) = responses.message().await.context("DecryptStream")? {
        first_response.get_or_insert_with(|| start.elapsed());
        anyhow::ensure!(!final_seen, "DecryptStream: a response after the final one");
        if let Some(payload) = expect {
            anyhow::ensure!(
                payload.matches(received, &m.plaintext),
                "DecryptStream: the plaintext at offset {received} is not what was encrypted"
            );
        }
        received += m.plaintext.len() as u64;
        final_seen = m.r#final;
    }
    let elapsed = start.elapsed();
    reader.await?.context("read the envelope")?;
    Ok(Call {
        elapsed,
        first_response: first_response.unwrap_or(elapsed),
        received,
        final_seen,
    })
}

/// The messages of a `DecryptStream` request: `path` read `message_size` bytes at a time on a
/// blocking thread, at most 4 messages ahead of the transport.
fn file_requests(
    path: PathBuf,
    message_size: usize,
) -> (
    tokio_stream::wrappers::ReceiverStream<pb::DecryptStreamRequest>,
    tokio::task::JoinHandle<std::io::Result<u64>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut sent = 0u64;
        let mut first = true;
        loop {
            let mut buf = vec![0u8; message_size];
            let mut n = 0;
            while n < buf.len() {
                match file.read(&mut buf[n..])? {
                    0 => break,
                    read => n += read,
                }
            }
            if n == 0 && !first {
                break;
            }
            buf.truncate(n);
            let request = pb::DecryptStreamRequest {
                tenant_id: if first { TENANT.into() } else { String::new() },
                encryption_context: Default::default(),
                envelope: buf,
                justification: None,
            };
            first = false;
            sent += n as u64;
            // The call ended early (an error): stop reading.
            if tx.blocking_send(request).is_err() || n < message_size {
                break;
            }
        }
        Ok(sent)
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), reader)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn payload_messages_cover_the_size_and_match_at_any_offset() {
        let payload = Payload::new(10_000, 4096);
        assert_eq!(payload.messages(), 3);
        let whole: Vec<u8> = (0..3).flat_map(|i| payload.message(i).to_vec()).collect();
        assert_eq!(whole.len(), 10_000);
        // Chunks that straddle message boundaries, as frames of another size do.
        for (at, len) in [(0, 10_000), (4000, 200), (8191, 2), (9999, 1)] {
            assert!(payload.matches(at as u64, &whole[at..at + len]));
        }
        let mut wrong = whole[4000..4200].to_vec();
        wrong[100] ^= 1;
        assert!(!payload.matches(4000, &wrong));
        // Misplaced by one byte, or past the end.
        assert!(!payload.matches(4001, &whole[4000..4200]));
        assert!(!payload.matches(9999, &whole[0..2]));
        assert_eq!(Payload::new(0, 4096).messages(), 1);
        assert!(Payload::new(0, 4096).message(0).is_empty());
    }
}
