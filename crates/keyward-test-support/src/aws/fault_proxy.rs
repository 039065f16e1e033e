//! [`FaultProxy`]: a fault-injecting HTTP/1.1 proxy on 127.0.0.1, put between the unmodified AWS
//! SDK (or the `keyward` binary) and the moto emulator to reproduce what a KMS outage looks like
//! on the wire: added latency, stalls (the request is accepted and never answered), connection
//! resets, 5xx answers and AWS `ThrottlingException` bursts. It records every request it sees
//! (time and KMS operation, from the `X-Amz-Target` header) so that tests can count attempts and
//! measure the gaps between them.
//!
//! Each connection carries exactly one request: every answer the proxy sends (forwarded or
//! injected) says `Connection: close`, so the SDK never reuses a connection and one request is
//! one attempt of the SDK, with no pooled-connection races to blur the counts.
//!
//! The proxy runs on its own thread and Tokio runtime, so it keeps serving while the test thread
//! blocks (a synchronous wait for a child process, a `std::thread::sleep`), and is shut down
//! (every open connection dropped) when the [`FaultProxy`] is dropped.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a broken proxy must fail the test loudly"
)]

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Largest request or response head the proxy accepts (KMS requests are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
/// Largest request or response body (KMS bodies are at most a few KiB).
const MAX_BODY: usize = 1024 * 1024;
/// How long the proxy waits for the upstream's complete answer before giving up on it.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// What the proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it to the upstream and its answer back.
    PassThrough,
    /// Forward it after this delay.
    Latency(Duration),
    /// Read the request and never answer (the connection stays open until the client gives
    /// up): what a black-holed or hung KMS looks like.
    Stall,
    /// Read the request, then reset the connection (TCP RST, `SO_LINGER` 0).
    Reset,
    /// Answer with this HTTP status (500..=599) and a JSON body without an error type.
    ServerError(u16),
    /// Answer as KMS does when rate-limiting: HTTP 400, `x-amzn-ErrorType: ThrottlingException`
    /// and `{"__type":"ThrottlingException",...}` (AWS JSON 1.1 protocol).
    Throttle,
}

impl Fault {
    /// A short name for assertions and logs.
    pub fn name(self) -> &'static str {
        match self {
            Fault::PassThrough => "pass-through",
            Fault::Latency(_) => "latency",
            Fault::Stall => "stall",
            Fault::Reset => "reset",
            Fault::ServerError(_) => "server-error",
            Fault::Throttle => "throttle",
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When its head had been read.
    pub at: Instant,
    /// The KMS (or STS) operation: `Decrypt` for `X-Amz-Target: TrentService.Decrypt`; `None`
    /// without the header (e.g. STS's query protocol).
    pub op: Option<String>,
    /// What the proxy did with it.
    pub fault: Fault,
}

/// How long an override lasts.
#[derive(Debug, Clone, Copy)]
enum Lasting {
    Requests(u64),
    Until(Instant),
}

#[derive(Debug)]
struct State {
    base: Fault,
    overriding: Option<(Fault, Lasting)>,
    seen: Vec<Seen>,
}

impl State {
    /// The fault for the request arriving now, consuming one request of a counted override.
    fn next_fault(&mut self, now: Instant) -> Fault {
        match self.overriding {
            Some((fault, Lasting::Requests(n))) if n > 0 => {
                self.overriding = (n > 1).then_some((fault, Lasting::Requests(n - 1)));
                fault
            }
            Some((fault, Lasting::Until(end))) if now < end => fault,
            _ => {
                self.overriding = None;
                self.base
            }
        }
    }
}

/// The fault-injecting proxy; see the module documentation.
#[derive(Debug)]
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: give this to the SDK (or Keyward) as the KMS endpoint.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`, e.g. [`super::MotoServer`]'s
    /// endpoint), passing everything through until told otherwise.
    ///
    /// # Panics
    /// If `upstream` is not a plain `http://host:port` URL or the proxy cannot bind.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| panic!("the upstream {upstream} is not an http:// URL"));
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        std_listener.set_nonblocking(true).expect("non-blocking");
        let endpoint = format!("http://{}", std_listener.local_addr().expect("local addr"));
        let state = Arc::new(Mutex::new(State {
            base: Fault::PassThrough,
            overriding: None,
            seen: Vec::new(),
        }));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("fault-proxy".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the fault proxy's runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            let state = Arc::clone(&thread_state);
                            let upstream = upstream.clone();
                            tokio::spawn(async move {
                                let _ = serve(client, &upstream, &state).await;
                            });
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stop => {}
                    }
                });
                // Dropping the runtime drops every connection task: stalled connections close.
            })
            .expect("spawn the fault proxy thread");
        FaultProxy {
            endpoint,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, apply `fault` to every request (and cancel any override).
    pub fn set(&self, fault: Fault) {
        let mut s = self.lock();
        s.base = fault;
        s.overriding = None;
    }

    /// Apply `fault` to the next `n` requests, then the base behaviour again.
    pub fn fault_next(&self, n: u64, fault: Fault) {
        self.lock().overriding = (n > 0).then_some((fault, Lasting::Requests(n)));
    }

    /// Apply `fault` to every request arriving in the next `window`, then the base behaviour.
    pub fn fault_for(&self, window: Duration, fault: Fault) {
        self.lock().overriding = Some((fault, Lasting::Until(Instant::now() + window)));
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// How many requests were seen.
    pub fn count(&self) -> usize {
        self.lock().seen.len()
    }

    /// How many requests of the KMS operation `op` (e.g. `"Decrypt"`) were seen.
    pub fn count_op(&self, op: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.op.as_deref() == Some(op))
            .count()
    }

    /// Forgets the requests seen so far (the counts restart at zero).
    pub fn clear(&self) {
        self.lock().seen.clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A parsed HTTP/1.1 message head plus its body.
struct Message {
    head: String,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The message with every `Connection` header replaced by `Connection: close`.
    fn with_connection_close(&self) -> Vec<u8> {
        let mut out = String::new();
        for (i, line) in self.head.lines().enumerate() {
            if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Reads one message: the head up to the blank line, then `Content-Length` bytes of body (or,
/// with `to_eof`, everything up to the end of the stream, for a response without a length).
async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
    to_eof: bool,
) -> std::io::Result<Option<Message>> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("message head too large"));
        }
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut body = buf[head_end..].to_vec();
    let mut message = Message {
        head,
        body: Vec::new(),
    };
    let length = message
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    match length {
        Some(len) if len <= MAX_BODY => {
            while body.len() < len {
                let mut chunk = vec![0_u8; len - body.len()];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        Some(_) => return Err(std::io::Error::other("message body too large")),
        None if to_eof => {
            stream.take(MAX_BODY as u64).read_to_end(&mut body).await?;
            // Without chunked framing, the client needs a length once the connection is reused
            // (forwarded verbatim otherwise).
            if message.header("transfer-encoding").is_none() {
                message
                    .head
                    .push_str(&format!("\r\nContent-Length: {}", body.len()));
            }
        }
        None => body.clear(),
    }
    message.body = body;
    Ok(Some(message))
}

/// Handles one client connection (one request).
async fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let Some(request) = read_message(&mut client, false).await? else {
        return Ok(());
    };
    let now = Instant::now();
    let op = request
        .header("x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .map(str::to_owned);
    let fault = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let fault = s.next_fault(now);
        s.seen.push(Seen { at: now, op, fault });
        fault
    };
    match fault {
        Fault::PassThrough => forward(client, upstream, &request).await,
        Fault::Latency(delay) => {
            tokio::time::sleep(delay).await;
            forward(client, upstream, &request).await
        }
        Fault::Stall => {
            // Hold the connection until the client gives up (or the proxy shuts down).
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
            Ok(())
        }
        Fault::Reset => {
            // SO_LINGER 0 makes the close send RST instead of FIN.
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
        Fault::ServerError(status) => {
            let body = r#"{"message":"injected server error"}"#;
            answer(&mut client, status, "Server Error", None, body).await
        }
        Fault::Throttle => {
            let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
            answer(
                &mut client,
                400,
                "Bad Request",
                Some("ThrottlingException"),
                body,
            )
            .await
        }
    }
}

async fn forward(mut client: TcpStream, upstream: &str, request: &Message) -> std::io::Result<()> {
    let exchange = async {
        let mut up = TcpStream::connect(upstream).await?;
        up.write_all(&request.with_connection_close()).await?;
        read_message(&mut up, true).await
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
        Ok(Ok(Some(response))) => {
            client.write_all(&response.with_connection_close()).await?;
            client.shutdown().await
        }
        // The upstream failed: the client sees a gateway error, like behind a load balancer.
        _ => answer(&mut client, 502, "Bad Gateway", None, "{}").await,
    }
}

async fn answer(
    client: &mut TcpStream,
    status: u16,
    reason: &str,
    error_type: Option<&str>,
    body: &str,
) -> std::io::Result<()> {
    let error_header = error_type
        .map(|t| format!("x-amzn-ErrorType: {t}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n{error_header}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-request-per-connection HTTP upstream that answers 200 with the request's body.
    fn echo_upstream() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = TcpListener::from_std(listener).unwrap();
                loop {
                    let (mut s, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        let Ok(Some(req)) = read_message(&mut s, false).await else {
                            return;
                        };
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            req.body.len()
                        );
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s.write_all(&req.body).await;
                    });
                }
            });
        });
        format!("http://{addr}")
    }

    /// Sends one request for `op` and returns the raw response (empty if the connection was
    /// closed or reset without one), or the I/O error.
    async fn call(proxy: &FaultProxy, op: &str, body: &str) -> std::io::Result<String> {
        let addr = proxy.endpoint.strip_prefix("http://").unwrap();
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: TrentService.{op}\r\n\
             Connection: keep-alive\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn passes_through_and_counts_per_operation() {
        let proxy = FaultProxy::start(&echo_upstream());
        let r = call(&proxy, "Decrypt", "{\"a\":1}").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("{\"a\":1}"), "{r}");
        call(&proxy, "Encrypt", "").await.unwrap();
        call(&proxy, "Decrypt", "x").await.unwrap();
        assert_eq!(proxy.count(), 3);
        assert_eq!(proxy.count_op("Decrypt"), 2);
        assert_eq!(proxy.count_op("Encrypt"), 1);
        assert_eq!(proxy.count_op("DescribeKey"), 0);
        assert!(proxy.seen().iter().all(|s| s.fault == Fault::PassThrough));
        proxy.clear();
        assert_eq!(proxy.count(), 0);
    }

    #[tokio::test]
    async fn throttles_the_next_n_requests_as_kms_does() {
        let proxy = FaultProxy::start(&echo_upstream());
        proxy.fault_next(2, Fault::Throttle);
        for _ in 0..2 {
            let r = call(&proxy, "Decrypt", "{}").await.unwrap();
            assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
            assert!(
                r.contains("x-amzn-ErrorType: ThrottlingException\r\n"),
                "{r}"
            );
            assert!(r.ends_with(r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#));
        }
        let r = call(&proxy, "Decrypt", "{}").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        let faults: Vec<_> = proxy.seen().iter().map(|s| s.fault).collect();
        assert_eq!(
            faults,
            [Fault::Throttle, Fault::Throttle, Fault::PassThrough]
        );
    }

    #[tokio::test]
    async fn server_errors_resets_and_windows() {
        let proxy = FaultProxy::start(&echo_upstream());
        proxy.set(Fault::ServerError(503));
        let r = call(&proxy, "Encrypt", "{}").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(!r.contains("x-amzn-ErrorType"), "{r}");

        proxy.set(Fault::Reset);
        match call(&proxy, "Encrypt", "{}").await {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(r) => assert!(r.is_empty(), "a reset connection answered {r}"),
        }

        // A window overrides the base until it ends, then the base applies again.
        proxy.fault_for(Duration::from_secs(60), Fault::ServerError(500));
        let r = call(&proxy, "Encrypt", "{}").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 500 "), "{r}");
        proxy.fault_for(Duration::ZERO, Fault::ServerError(500));
        let _ = call(&proxy, "Encrypt", "{}").await;
        assert_eq!(proxy.seen().last().unwrap().fault, Fault::Reset);
        proxy.set(Fault::PassThrough);
        assert!(
            call(&proxy, "Encrypt", "{}")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200 ")
        );
    }

    #[tokio::test]
    async fn stalls_until_the_client_gives_up_and_delays_with_latency() {
        let proxy = FaultProxy::start(&echo_upstream());
        proxy.set(Fault::Stall);
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), call(&proxy, "Decrypt", "{}")).await;
        assert!(
            stalled.is_err(),
            "a stalled request was answered: {stalled:?}"
        );
        assert_eq!(proxy.seen()[0].fault, Fault::Stall);

        proxy.set(Fault::Latency(Duration::from_millis(200)));
        let started = Instant::now();
        let r = call(&proxy, "Decrypt", "{}").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(proxy.count_op("Decrypt"), 2);
    }
}
