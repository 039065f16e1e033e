//! `CryptoService.EncryptStream` and `DecryptStream`: framed envelopes (format version 2,
//! docs/envelope-format.md §10) streamed in constant memory (docs/streaming.md).
//!
//! The first request message is converted and authorized as the unary call's request is
//! (Encrypt or Decrypt, with the context's purpose and the scope), before any key is touched;
//! then a task per call moves the bytes through the keyring's stream
//! ([`crate::keyring::StreamEncryption`], [`crate::keyring::StreamDecryption`]) into a channel
//! of [`CHANNEL_DEPTH`] responses. Back-pressure: when the caller reads slowly, HTTP/2 flow
//! control stops tonic polling the response stream, the channel fills, the task waits and stops
//! reading the request, and the caller's sends wait in turn; the server holds at most the
//! channel's responses, one frame being assembled and one request message.
//!
//! DecryptStream's plaintext frames pass the revocation gate twice: when opened (the tenant's
//! gate and the DEK's deadline, in the keyring) and when tonic takes them from the channel to
//! send ([`Gated`], [`crate::keyring::Keyring::release`]): a frame parked behind a slow reader
//! while the tenant was revoked is zeroized, not sent, and the stream ends `KEY_REVOKED`.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::Stream;
use keyward_authz::Action;
use keyward_envelope::Wiped;
use keyward_envelope::{TenantId, framed};
use keyward_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroize;

use super::{
    access::CallAccess,
    convert::{context, justification, scope, tenant_id},
    crypto::{CryptoApi, DECRYPT_SCOPE, PURPOSE_CONTEXT_KEY},
    split,
};
use crate::{error::ServiceError, keyring::Keyring, metrics::PayloadKind};

/// Responses a stream's task may have sealed or opened ahead of the reader.
const CHANNEL_DEPTH: usize = 2;
/// Smallest frame size a caller may ask for (smaller frames cost more per byte and buy
/// nothing); the format itself allows 1 byte.
pub(crate) const MIN_FRAME_SIZE: u32 = 1024;

pub(super) type EncryptStream = ReceiverStream<Result<pb::EncryptStreamResponse, Status>>;
pub(super) type DecryptStream = Gated;

impl CryptoApi {
    pub(super) async fn encrypt_stream_call(
        &self,
        request: Request<Streaming<pb::EncryptStreamRequest>>,
    ) -> Result<Response<EncryptStream>, Status> {
        let (head, mut inbound) = split(request);
        let first = first_message(&mut inbound).await?;
        let tenant = tenant_id(&first.tenant_id)?;
        let ctx = context(first.encryption_context)?;
        let scope = scope(&first.scope)?;
        let frame_size = frame_size(first.frame_size)?;
        let mut access = CallAccess::new(
            tenant.clone(),
            Action::Encrypt,
            justification(first.justification)?,
        );
        self.authorize(
            &head,
            Action::Encrypt,
            &mut access,
            ctx.get(PURPOSE_CONTEXT_KEY),
            Some(scope.as_str()),
            None,
        )
        .await?;
        let first_plaintext = Wiped::new(first.plaintext);
        let keyring = Arc::clone(self.keyring_arc());
        let (mut stream, header) = match keyring
            .begin_stream_encryption(&tenant, &scope, &ctx, frame_size)
            .await
        {
            Ok(started) => started,
            Err(e) => {
                let status = e.to_status();
                access.failed(&e);
                access.finish(&keyring);
                keyring.stream_finished(&tenant, true, &Err(e));
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let dek_id = stream.dek_id().to_string();
        let active = StreamGauge::start(&keyring, "EncryptStream");
        tokio::spawn(async move {
            let _active = active;
            let mut sent = header.len();
            let result = async {
                send(
                    &tx,
                    pb::EncryptStreamResponse {
                        envelope: header,
                        dek_id,
                    },
                )
                .await?;
                let mut chunk = first_plaintext;
                loop {
                    for frame in keyring.stream_encrypt_push(&mut stream, &chunk).await? {
                        sent += frame.len();
                        send(&tx, envelope_part(frame)).await?;
                    }
                    chunk.zeroize();
                    match inbound.message().await {
                        Ok(Some(next)) => {
                            chunk = Wiped::new(next.plaintext);
                            later_message(
                                next.tenant_id.is_empty()
                                    && next.encryption_context.is_empty()
                                    && next.scope.is_empty()
                                    && next.frame_size == 0
                                    && next.justification.is_none(),
                            )?;
                        }
                        Ok(None) => break,
                        Err(status) => return Err(Ended::Inbound(status)),
                    }
                }
                let last = keyring.stream_encrypt_finish(&mut stream).await?;
                sent += last.len();
                send(&tx, envelope_part(last)).await?;
                Ok(stream.bytes())
            }
            .await;
            access.stream_ended(result.is_ok(), stream.bytes());
            access.finish(&keyring);
            finish(&keyring, &tenant, true, &tx, result).await;
            let ext = head.extensions();
            crate::telemetry::note_payload(ext, PayloadKind::PlaintextIn, stream.bytes() as usize);
            crate::telemetry::note_payload(ext, PayloadKind::CiphertextOut, sent);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    pub(super) async fn decrypt_stream_call(
        &self,
        request: Request<Streaming<pb::DecryptStreamRequest>>,
    ) -> Result<Response<DecryptStream>, Status> {
        let (head, mut inbound) = split(request);
        let first = first_message(&mut inbound).await?;
        let tenant = tenant_id(&first.tenant_id)?;
        let ctx = context(first.encryption_context)?;
        let mut access = CallAccess::new(
            tenant.clone(),
            Action::Decrypt,
            justification(first.justification)?,
        );
        // As Decrypt: the scope is known only from the stored DEK, after authorization; then
        // the tenant's justification rule.
        let authorized = self
            .authorize(
                &head,
                Action::Decrypt,
                &mut access,
                ctx.get(PURPOSE_CONTEXT_KEY),
                Some(DECRYPT_SCOPE),
                None,
            )
            .await;
        if let Err(e) = authorized {
            access.finish(self.keyring());
            return Err(e.into());
        }
        let keyring = Arc::clone(self.keyring_arc());
        let mut stream = keyring.begin_stream_decryption(&tenant, ctx);
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let active = StreamGauge::start(&keyring, "DecryptStream");
        let task_keyring = Arc::clone(&keyring);
        let task_tenant = tenant.clone();
        tokio::spawn(async move {
            let (keyring, tenant) = (task_keyring, task_tenant);
            let _active = active;
            let mut received = first.envelope.len();
            let result = async {
                let mut chunk = first.envelope;
                loop {
                    let (frames, error) = keyring.stream_decrypt_push(&mut stream, &chunk).await;
                    for frame in frames {
                        send(&tx, frame).await?;
                    }
                    if let Some(e) = error {
                        return Err(Ended::Failed(e));
                    }
                    match inbound.message().await {
                        Ok(Some(next)) => {
                            later_message(
                                next.tenant_id.is_empty()
                                    && next.encryption_context.is_empty()
                                    && next.justification.is_none(),
                            )?;
                            received += next.envelope.len();
                            chunk = next.envelope;
                        }
                        Ok(None) => break,
                        Err(status) => return Err(Ended::Inbound(status)),
                    }
                }
                let last = keyring.stream_decrypt_finish(&mut stream)?;
                send(&tx, last).await?;
                Ok(stream.bytes())
            }
            .await;
            // Frames sent before a failure were authentic plaintext released: counted.
            access.stream_ended(result.is_ok(), stream.bytes());
            access.finish(&keyring);
            finish(&keyring, &tenant, false, &tx, result).await;
            let ext = head.extensions();
            crate::telemetry::note_payload(ext, PayloadKind::CiphertextIn, received);
            crate::telemetry::note_payload(ext, PayloadKind::PlaintextOut, stream.bytes() as usize);
        });
        Ok(Response::new(Gated {
            rx,
            keyring,
            tenant,
            done: false,
        }))
    }
}

/// Why a stream's task stopped before its end.
enum Ended {
    /// Refused: the error goes to the caller.
    Failed(ServiceError),
    /// The request stream failed (the caller cancelled, or a message over the size limit).
    Inbound(Status),
    /// The caller stopped reading the responses (cancelled): nobody to tell.
    Gone,
}

impl From<ServiceError> for Ended {
    fn from(e: ServiceError) -> Self {
        Ended::Failed(e)
    }
}

/// Sends one response, waiting while the channel is full (back-pressure).
async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, item: T) -> Result<(), Ended> {
    tx.send(Ok(item)).await.map_err(|_| Ended::Gone)
}

/// Tells the caller how the stream ended (when it still listens) and counts it.
async fn finish<T>(
    keyring: &Keyring,
    tenant: &TenantId,
    encrypt: bool,
    tx: &mpsc::Sender<Result<T, Status>>,
    result: Result<u64, Ended>,
) {
    let counted = match result {
        Ok(bytes) => Ok(bytes),
        Err(Ended::Failed(e)) => {
            let status = e.to_status();
            let _ = tx.send(Err(status)).await;
            Err(e)
        }
        Err(Ended::Inbound(status)) => {
            let _ = tx.send(Err(status)).await;
            Err(ServiceError::Conflict(
                "the request stream failed".to_owned(),
            ))
        }
        Err(Ended::Gone) => Err(ServiceError::Conflict(
            "the caller stopped reading".to_owned(),
        )),
    };
    keyring.stream_finished(tenant, encrypt, &counted);
}

fn envelope_part(envelope: Vec<u8>) -> pb::EncryptStreamResponse {
    pb::EncryptStreamResponse {
        envelope,
        dek_id: String::new(),
    }
}

async fn first_message<T>(inbound: &mut Streaming<T>) -> Result<T, Status> {
    match inbound.message().await? {
        Some(first) => Ok(first),
        None => Err(ServiceError::invalid(
            "tenant_id",
            "the stream ended before its first message (which names the tenant)",
        )
        .into()),
    }
}

fn later_message(only_data: bool) -> Result<(), ServiceError> {
    if only_data {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "tenant_id",
            "only the first message of a stream names the tenant, context, scope and frame size; later messages carry data only",
        ))
    }
}

fn frame_size(requested: u32) -> Result<u32, ServiceError> {
    match requested {
        0 => Ok(framed::DEFAULT_FRAME_SIZE),
        n if (MIN_FRAME_SIZE..=framed::MAX_FRAME_SIZE).contains(&n) => Ok(n),
        n => Err(ServiceError::invalid(
            "frame_size",
            format!(
                "{n} bytes is outside {MIN_FRAME_SIZE}..={} (0 for the default, {})",
                framed::MAX_FRAME_SIZE,
                framed::DEFAULT_FRAME_SIZE
            ),
        )),
    }
}

/// DecryptStream's responses: each plaintext frame passes [`Keyring::release`] as tonic takes
/// it to send, so a revocation committed while it waited in the channel wins (the frame is
/// zeroized and the stream ends with the revocation's error).
pub struct Gated {
    rx: mpsc::Receiver<Result<crate::keyring::PlainFrame, Status>>,
    keyring: Arc<Keyring>,
    tenant: TenantId,
    done: bool,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gated")
            .field("tenant", &self.tenant)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for Gated {
    type Item = Result<pb::DecryptStreamResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                return Poll::Ready(Some(Err(status)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Err(e) = self.keyring.release(&self.tenant, frame.generation) {
            // The frame is zeroized when dropped (Zeroizing); the task stops at its next send.
            self.done = true;
            self.rx.close();
            return Poll::Ready(Some(Err(e.into())));
        }
        // prost needs an owned Vec: the frame's buffer is moved into the response, not copied.
        // tonic encodes from it and drops it unzeroized, as it does the unary calls' responses
        // (docs/threat-model.md, "Plaintext copies not zeroized").
        let mut frame = frame;
        Poll::Ready(Some(Ok(pb::DecryptStreamResponse {
            plaintext: std::mem::take(&mut *frame.plaintext),
            r#final: frame.last,
        })))
    }
}

/// `keyward_streams_active{method}`: one more while a stream's task runs.
struct StreamGauge(Option<(Arc<crate::metrics::Metrics>, &'static str)>);

impl StreamGauge {
    fn start(keyring: &Keyring, method: &'static str) -> Self {
        let metrics = keyring.metrics().cloned();
        if let Some(m) = &metrics {
            m.stream_started(method);
        }
        StreamGauge(metrics.map(|m| (m, method)))
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        if let Some((m, method)) = &self.0 {
            m.stream_finished(method);
        }
    }
}
