//! The streamed `keyward encrypt` and `keyward decrypt`: EncryptStream and DecryptStream
//! (docs/streaming.md), in memory bounded by a few messages whatever the input's size.
//!
//! Three parts run at once, joined by small bounded channels so that the slowest sets the pace
//! (back-pressure end to end, nothing piles up):
//!
//! ```text
//! reader thread --Chunk--> RequestBody --gRPC--> server --gRPC--> drive() --Piece--> writer thread
//! (input, base64)         (request stream)                       (responses)        (output, base64)
//! ```
//!
//! The request stream ends (which tells the server the message is complete: EncryptStream
//! seals the last frame as final) only after the reader reached the input's end. A reader
//! that fails never ends it: the call is abandoned instead, so a truncated input can never
//! become a complete-looking envelope. The output is committed (a file renamed into place)
//! only after the call ended OK, and for DecryptStream only after the final frame.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use anyhow::{Context as _, anyhow, bail};
use keyward_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, codec::Streaming, transport::Channel};

use crate::base64_chunks::{Base64Decoder, Base64Encoder};
use crate::exit;
use crate::files::{Input, Pending, Sink, create_output};
use crate::progress::Progress;

/// Plaintext (or envelope) bytes per request message. Every server accepts messages of its
/// `max_plaintext_bytes` plus 64 KiB, and `max_plaintext_bytes` is at least 1 byte: a message
/// of at most 64 KiB always fits, one of at most the unary limit too.
const CHUNK_MIN: usize = 64 * 1024;
const CHUNK_MAX: usize = 256 * 1024;
/// Messages in flight between the parts (each bounded by [`CHUNK_MAX`] or a frame, 1 MiB at
/// most): the CLI's memory is a few MiB whatever the size.
const QUEUE: usize = 4;

/// The request message size for a server whose unary limit is `max_unary_bytes`.
pub(crate) fn chunk_size(max_unary_bytes: u64) -> usize {
    usize::try_from(max_unary_bytes)
        .unwrap_or(CHUNK_MAX)
        .clamp(CHUNK_MIN, CHUNK_MAX)
}

/// What a streamed command reads and writes.
pub(crate) struct Transfer {
    pub(crate) input: Input,
    /// Bytes already read from `input` (and decoded): they go first.
    pub(crate) first: Vec<u8>,
    /// `--input base64`: the decoder, which has decoded `first` already.
    pub(crate) decoder: Option<Base64Decoder>,
    /// `--out`.
    pub(crate) out: Option<std::path::PathBuf>,
    /// `--output base64`.
    pub(crate) encoder: Option<Base64Encoder>,
    pub(crate) chunk: usize,
    /// Draw the progress line (stderr is a terminal and no `--no-progress`).
    pub(crate) progress: bool,
}

/// `keyward encrypt` streamed: `first` names the tenant, context, scope and frame size.
pub(crate) async fn encrypt(
    mut client: CryptoServiceClient<Channel>,
    first: pb::EncryptStreamRequest,
    transfer: Transfer,
) -> anyhow::Result<()> {
    let mut first = Some(first);
    let make = move |plaintext| match first.take() {
        Some(first) => pb::EncryptStreamRequest { plaintext, ..first },
        None => pb::EncryptStreamRequest {
            plaintext,
            ..Default::default()
        },
    };
    let call = move |body| async move { client.encrypt_stream(body).await };
    let take = |response: pb::EncryptStreamResponse| Ok(response.envelope);
    run(transfer, make, call, take, || Ok(())).await
}

/// `keyward decrypt` streamed: `first` names the tenant and context.
pub(crate) async fn decrypt(
    mut client: CryptoServiceClient<Channel>,
    first: pb::DecryptStreamRequest,
    transfer: Transfer,
) -> anyhow::Result<()> {
    let mut first = Some(first);
    let make = move |envelope| match first.take() {
        Some(first) => pb::DecryptStreamRequest { envelope, ..first },
        None => pb::DecryptStreamRequest {
            envelope,
            ..Default::default()
        },
    };
    // The message is complete only with its final frame (and the call ending OK after it).
    let complete = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&complete);
    let take = move |response: pb::DecryptStreamResponse| {
        if seen.load(Ordering::Relaxed) {
            bail!("the server sent plaintext after the final frame");
        }
        seen.store(response.r#final, Ordering::Relaxed);
        Ok(response.plaintext)
    };
    let check = || {
        if complete.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(anyhow!(
                "the stream ended without the message's final frame: the plaintext is incomplete"
            ))
        }
    };
    let call = move |body| async move { client.decrypt_stream(body).await };
    run(transfer, make, call, take, check).await
}

/// Runs one streamed call: starts the reader, the writer and the progress line, drives the
/// call, and commits the output when the call ended OK and `check` agrees; otherwise
/// abandons it (a file output is removed).
async fn run<Req, Resp, Call>(
    transfer: Transfer,
    make: impl FnMut(Vec<u8>) -> Req + Send + 'static,
    call: impl FnOnce(RequestBody<Req>) -> Call,
    take: impl FnMut(Resp) -> anyhow::Result<Vec<u8>>,
    check: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    Req: Send + 'static,
    Call: Future<Output = Result<tonic::Response<Streaming<Resp>>, Status>>,
{
    // Before the output file exists: from here an interruption removes it.
    let mut interrupt = Interrupt::new()?;
    let progress = Progress::start(
        transfer.progress,
        transfer.input.counter(),
        transfer.input.size(),
    );
    let (sink, pending) = create_output(transfer.out.as_deref())?;
    let mut writer = Writer::spawn(sink, transfer.encoder)?;
    let (chunks, reader) = Reader::spawn(
        transfer.input,
        transfer.first,
        transfer.decoder,
        transfer.chunk,
    )?;
    let body = RequestBody::new(chunks, make, &reader);
    let driven = drive(
        call(body),
        reader.done,
        &reader.ended,
        &mut writer,
        take,
        &mut interrupt,
    )
    .await
    .and_then(|()| check());
    let (is_stdout, sent) = (writer.is_stdout, writer.sent);
    let result = match driven {
        Ok(()) => writer.commit(pending).await,
        Err(e) => {
            // Removes a file output's temporary file now, even if the writer is still busy.
            drop(pending);
            Err(e)
        }
    };
    progress.finish(result.is_ok());
    if result.is_err() && is_stdout && sent > 0 {
        eprintln!("keyward: the output written to stdout is incomplete (the command failed)");
    }
    result
}

/// Sends the responses' bytes to the writer until the call ends; fails as soon as the call,
/// the reader or the writer fails, or on Ctrl-C / SIGTERM.
async fn drive<Resp>(
    call: impl Future<Output = Result<tonic::Response<Streaming<Resp>>, Status>>,
    mut reader_done: oneshot::Receiver<anyhow::Result<()>>,
    body_ended: &AtomicBool,
    writer: &mut Writer,
    mut take: impl FnMut(Resp) -> anyhow::Result<Vec<u8>>,
    interrupt: &mut Interrupt,
) -> anyhow::Result<()> {
    let pump = async {
        let mut responses = call.await.map_err(exit::refused)?.into_inner();
        while let Some(response) = responses.message().await.map_err(exit::refused)? {
            writer.write(take(response)?).await?;
        }
        anyhow::Ok(())
    };
    tokio::pin!(pump);
    let mut reading = true;
    loop {
        tokio::select! {
            result = &mut pump => {
                result?;
                break;
            }
            read = &mut reader_done, if reading => {
                reading = false;
                match read {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => bail!("the input reader stopped unexpectedly"),
                }
            }
            signal = interrupt.recv() => bail!("interrupted ({signal})"),
        }
    }
    // The server ends the call OK only after the request stream ended, which it does only
    // once the reader reached the input's end.
    if !body_ended.load(Ordering::Acquire) {
        bail!("the server ended the call before all of the input was sent");
    }
    Ok(())
}

/// What the reader thread hands the request stream.
enum Chunk {
    Data(Vec<u8>),
    /// The input ended (and, with base64, ended well): the request stream may end.
    End,
}

/// The reader thread: reads the input in chunks (decoding base64), blocking on the channel
/// when the call is slower than the input.
struct Reader {
    done: oneshot::Receiver<anyhow::Result<()>>,
    /// Set by the request stream when it ended at [`Chunk::End`].
    ended: Arc<AtomicBool>,
}

impl Reader {
    /// A plain thread, not tokio's blocking pool: a read blocked on a terminal or a stalled
    /// pipe must not keep the runtime (and the process) from exiting after an error.
    fn spawn(
        mut input: Input,
        first: Vec<u8>,
        mut decoder: Option<Base64Decoder>,
        chunk: usize,
    ) -> anyhow::Result<(mpsc::Receiver<Chunk>, Reader)> {
        let (tx, chunks) = mpsc::channel(QUEUE);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("keyward-read".to_owned())
            .spawn(move || {
                let result = (|| {
                    // In messages of `chunk` bytes too (`encrypt` read up to the unary limit).
                    for piece in first.chunks(chunk) {
                        if tx.blocking_send(Chunk::Data(piece.to_vec())).is_err() {
                            return Ok(());
                        }
                    }
                    drop(first);
                    loop {
                        let mut buf = vec![0; chunk];
                        let n = input.fill(&mut buf)?;
                        if n == 0 {
                            if let Some(decoder) = decoder.take() {
                                decoder.finish().with_context(|| {
                                    format!("{} is not valid base64", input.name())
                                })?;
                            }
                            let _ = tx.blocking_send(Chunk::End);
                            return Ok(());
                        }
                        buf.truncate(n);
                        let data = match decoder.as_mut() {
                            None => buf,
                            Some(decoder) => {
                                let mut out = Vec::with_capacity(n / 4 * 3);
                                decoder.push(&buf, &mut out).with_context(|| {
                                    format!("{} is not valid base64", input.name())
                                })?;
                                out
                            }
                        };
                        // The call ended (the receiver is gone): nothing more to do.
                        if !data.is_empty() && tx.blocking_send(Chunk::Data(data)).is_err() {
                            return Ok(());
                        }
                    }
                })();
                let _ = done_tx.send(result);
            })
            .context("cannot start the input reader")?;
        let reader = Reader {
            done,
            ended: Arc::new(AtomicBool::new(false)),
        };
        Ok((chunks, reader))
    }
}

/// The request stream given to tonic: one message per chunk, the first one made with the
/// call's parameters. It ends only at [`Chunk::End`]; if the reader stops without it (an
/// error), it never ends, since its end would tell the server that a truncated input is the
/// whole message. The call is then dropped, which cancels it.
pub(crate) struct RequestBody<Req> {
    chunks: mpsc::Receiver<Chunk>,
    make: Box<dyn FnMut(Vec<u8>) -> Req + Send>,
    sent: bool,
    ended: Arc<AtomicBool>,
}

impl<Req> RequestBody<Req> {
    fn new(
        chunks: mpsc::Receiver<Chunk>,
        make: impl FnMut(Vec<u8>) -> Req + Send + 'static,
        reader: &Reader,
    ) -> RequestBody<Req> {
        RequestBody {
            chunks,
            make: Box::new(make),
            sent: false,
            ended: Arc::clone(&reader.ended),
        }
    }
}

impl<Req> tokio_stream::Stream for RequestBody<Req> {
    type Item = Req;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Req>> {
        let this = self.get_mut();
        if this.ended.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        match this.chunks.poll_recv(cx) {
            Poll::Ready(Some(Chunk::Data(bytes))) => {
                this.sent = true;
                Poll::Ready(Some((this.make)(bytes)))
            }
            Poll::Ready(Some(Chunk::End)) => {
                this.ended.store(true, Ordering::Release);
                if this.sent {
                    Poll::Ready(None)
                } else {
                    // An empty input: the first message still carries the call's parameters.
                    this.sent = true;
                    Poll::Ready(Some((this.make)(Vec::new())))
                }
            }
            // The reader failed: pending for ever (see above).
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// What the writer thread receives.
enum Piece {
    Data(Vec<u8>),
    /// Everything arrived: finish (base64's last group, flush, sync) and report.
    Commit,
}

/// The writer thread: writes the output (encoding base64), blocking the responses when the
/// output is slower than the call.
struct Writer {
    pieces: mpsc::Sender<Piece>,
    done: oneshot::Receiver<anyhow::Result<()>>,
    is_stdout: bool,
    /// Bytes handed to the writer.
    sent: u64,
}

impl Writer {
    fn spawn(mut sink: Sink, mut encoder: Option<Base64Encoder>) -> anyhow::Result<Writer> {
        let (pieces, mut rx) = mpsc::channel(QUEUE);
        let (done_tx, done) = oneshot::channel();
        let is_stdout = sink.is_stdout();
        std::thread::Builder::new()
            .name("keyward-write".to_owned())
            .spawn(move || {
                let result = (|| {
                    let mut text = Vec::new();
                    while let Some(piece) = rx.blocking_recv() {
                        match (piece, encoder.as_mut()) {
                            (Piece::Data(bytes), None) => sink.write_all(&bytes)?,
                            (Piece::Data(bytes), Some(encoder)) => {
                                text.clear();
                                encoder.push(&bytes, &mut text);
                                sink.write_all(&text)?;
                            }
                            (Piece::Commit, _) => {
                                if let Some(encoder) = encoder.take() {
                                    text.clear();
                                    encoder.finish(&mut text);
                                    sink.write_all(&text)?;
                                }
                                return sink.finish();
                            }
                        }
                    }
                    // Abandoned: the caller removes a file output.
                    Ok(())
                })();
                let _ = done_tx.send(result);
            })
            .context("cannot start the output writer")?;
        Ok(Writer {
            pieces,
            done,
            is_stdout,
            sent: 0,
        })
    }

    async fn write(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.sent += bytes.len() as u64;
        if self.pieces.send(Piece::Data(bytes)).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// The writer's error, once it stopped.
    async fn failure(&mut self) -> anyhow::Error {
        match (&mut self.done).await {
            Ok(Err(e)) => e,
            _ => anyhow!("the output writer stopped unexpectedly"),
        }
    }

    /// Finishes the output, then puts a file output in place.
    async fn commit(mut self, pending: Option<Pending>) -> anyhow::Result<()> {
        if self.pieces.send(Piece::Commit).await.is_err() {
            return Err(self.failure().await);
        }
        match self.done.await {
            Ok(Ok(())) => pending.map_or(Ok(()), Pending::persist),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("the output writer stopped unexpectedly"),
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM while a stream runs: the command stops, removing a file
/// output, instead of dying with the temporary file left behind.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> anyhow::Result<Interrupt> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Interrupt {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// The signal's name, once one arrives.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use tokio_stream::StreamExt as _;

    use super::*;

    #[test]
    fn messages_fit_every_server_and_stay_bounded() {
        assert_eq!(chunk_size(1), CHUNK_MIN);
        assert_eq!(chunk_size(100 * 1024), 100 * 1024);
        assert_eq!(chunk_size(1 << 20), CHUNK_MAX);
        assert_eq!(chunk_size(u64::MAX), CHUNK_MAX);
    }

    fn body(input: &'static [u8], chunk: usize) -> (RequestBody<Vec<u8>>, Reader) {
        let input = Input::from_reader(input, Some(input.len() as u64));
        let (chunks, reader) = Reader::spawn(input, Vec::new(), None, chunk).unwrap();
        (RequestBody::new(chunks, |bytes| bytes, &reader), reader)
    }

    #[tokio::test]
    async fn the_request_stream_ends_after_the_whole_input() {
        let (body, mut reader) = body(b"0123456789", 4);
        let messages: Vec<Vec<u8>> = body.collect().await;
        assert_eq!(messages, [&b"0123"[..], b"4567", b"89"]);
        (&mut reader.done).await.unwrap().unwrap();
        assert!(reader.ended.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn an_empty_input_still_sends_the_first_message() {
        let (body, _reader) = body(b"", 4);
        let messages: Vec<Vec<u8>> = body.collect().await;
        assert_eq!(messages, [Vec::<u8>::new()]);
    }

    /// A failing input never ends the request stream: its end would seal the bytes read so far
    /// as the whole message.
    #[tokio::test]
    async fn a_failed_read_never_ends_the_request_stream() {
        struct Fails(bool);
        impl std::io::Read for Fails {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(std::io::Error::other("disk on fire"));
                }
                buf[..3].copy_from_slice(b"abc");
                Ok(3)
            }
        }
        let (chunks, mut reader) =
            Reader::spawn(Input::from_reader(Fails(false), None), Vec::new(), None, 3).unwrap();
        let mut body = RequestBody::new(chunks, |bytes: Vec<u8>| bytes, &reader);
        assert_eq!(body.next().await.unwrap(), b"abc");
        let err = (&mut reader.done).await.unwrap().unwrap_err();
        assert_eq!(format!("{err:#}"), "cannot read test input: disk on fire");
        let next = tokio::time::timeout(std::time::Duration::from_millis(100), body.next()).await;
        assert!(next.is_err(), "the stream ended or yielded: {next:?}");
        assert!(!reader.ended.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn base64_input_is_decoded_and_checked_to_its_end() {
        let mut decoder = Base64Decoder::default();
        let mut first = Vec::new();
        decoder.push(b"aGVs", &mut first).unwrap();
        let (mut chunks, mut reader) = Reader::spawn(
            Input::from_reader(&b"bG8=\n"[..], None),
            first,
            Some(decoder),
            2,
        )
        .unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            match chunk {
                Chunk::Data(d) => got.extend(d),
                Chunk::End => break,
            }
        }
        assert_eq!(got, b"hello");
        (&mut reader.done).await.unwrap().unwrap();

        let (mut chunks, mut reader) = Reader::spawn(
            Input::from_reader(&b"aGVsbG8"[..], None),
            Vec::new(),
            Some(Base64Decoder::default()),
            64,
        )
        .unwrap();
        while chunks.recv().await.is_some() {}
        let err = (&mut reader.done).await.unwrap().unwrap_err();
        assert!(
            format!("{err:#}").starts_with("test input is not valid base64: "),
            "{err:#}"
        );
    }
}
