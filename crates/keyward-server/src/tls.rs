//! The gRPC listener's transport: mutual TLS (rustls, client certificates verified against the
//! configured CA bundle) or, in development mode, plaintext on a loopback address.
//!
//! Each accepted connection becomes a [`PeerStream`] whose [`PeerInfo`] (the caller's
//! certificate identity, parsed once per connection) tonic puts in every request's extensions;
//! [`crate::authz`] maps it to a principal. The TLS configuration lives behind a lock so that a
//! new certificate or CA bundle applies to the next handshake without a restart
//! ([`ReloadableTls::reload`]); established connections keep the configuration they started with.
//!
//! # Handshakes under load
//!
//! Every accepted connection starts its handshake at once, in its own task; nothing waits for
//! a slot. What bounds them (also in docs/threat-model.md and docs/operations.md, "Deploy"):
//! - time: the client must send its first byte (the ClientHello) within 3 s
//!   (`FIRST_BYTE_TIMEOUT`; a client knows it speaks first, so a real one sends it one round
//!   trip after connecting) and finish within 10 s (`HANDSHAKE_TIMEOUT`);
//! - per source (an IPv4 address, or an IPv6 /64, which one host usually holds whole): at
//!   most 64 handshakes in progress (`MAX_PENDING_PER_SOURCE`); a further connection from the
//!   source closes that source's oldest pending one;
//! - in all: at most 1,024 (`MAX_PENDING_HANDSHAKES`); a further connection closes the oldest
//!   pending one of all.
//!
//! Closing the oldest, rather than refusing the newest, is what keeps a silent or slow client
//! from shutting out others, even from its own address (a NAT): a real client leaves the
//! pending set within a few round trips, so to push it out an attacker must open 64
//! connections from its source (or 1,024 in all) within those round trips, where refusing the
//! newest would let it block the source with 64 idle sockets renewed every few seconds. (The
//! listener once ran at most 256 handshakes at once and left further connections in the
//! kernel's backlog: 256 idle sockets stalled every new client for 10 s.)

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// A connection that has sent nothing by then is closed: a TLS client speaks first.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// A handshake that has not finished by then (from the accept) is dropped (slow-loris
/// protection).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once from one source; a further connection from it closes its
/// oldest (see the module docs).
const MAX_PENDING_PER_SOURCE: usize = 64;
/// Handshakes in progress at once in all; a further connection closes the oldest. Each holds a
/// task, a socket and a rustls handshake state.
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Longest identity string taken from a certificate.
const MAX_IDENTITY_LEN: usize = 2048;

/// The PEM files of the TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that client certificates must chain to.
    pub client_ca_file: PathBuf,
}

impl TlsFiles {
    pub fn paths(&self) -> [&Path; 3] {
        [&self.cert_file, &self.key_file, &self.client_ca_file]
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Builds the server configuration: TLS 1.2/1.3 with aws-lc-rs, ALPN `h2`, and a client
/// certificate required and verified (chain to `client_ca_file`, validity period, key usage).
pub fn load_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| file_error(&files.key_file, format!("no usable private key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.client_ca_file)? {
        roots
            .add(ca)
            .map_err(|e| file_error(&files.client_ca_file, format!("bad CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| file_error(&files.client_ca_file, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            file_error(
                &files.cert_file,
                format!("certificate and key do not form a usable pair: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "contains no certificate"));
    }
    Ok(certs)
}

/// The TLS configuration in use, replaceable while serving.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableTls {
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files; on error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load_config(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// Who is on the other end of a connection, as far as the transport can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Development mode: plaintext on loopback, every caller is the development principal.
    Development,
    /// The verified client certificate's identity: `spiffe://…` (its URI SAN) or `dns:<name>`
    /// (its first DNS SAN, when it has no SPIFFE ID).
    Certificate(Arc<str>),
    /// A verified certificate with neither a single SPIFFE ID nor a DNS SAN.
    NoUsableName,
}

/// Connection facts tonic attaches to each request (`request.extensions()`).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub identity: PeerIdentity,
}

/// The caller's identity from a verified client certificate (DER).
///
/// A SPIFFE ID (URI SAN `spiffe://…`) wins; a SPIFFE SVID carries exactly one, so a
/// certificate with several is not trusted for one of them. Otherwise the first DNS SAN.
pub fn identity_of(cert: &[u8]) -> PeerIdentity {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(cert) else {
        return PeerIdentity::NoUsableName;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return PeerIdentity::NoUsableName;
    };
    let names = &san.value.general_names;
    let spiffe: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .collect();
    let usable = |s: &str| s.len() <= MAX_IDENTITY_LEN && !s.chars().any(char::is_control);
    match spiffe.as_slice() {
        [one] if usable(one) => return PeerIdentity::Certificate(Arc::from(*one)),
        [] => {}
        _ => return PeerIdentity::NoUsableName,
    }
    names
        .iter()
        .find_map(|n| match n {
            GeneralName::DNSName(dns) if usable(dns) => Some(PeerIdentity::Certificate(Arc::from(
                format!("dns:{}", dns.to_ascii_lowercase()),
            ))),
            _ => None,
        })
        .unwrap_or(PeerIdentity::NoUsableName)
}

/// An accepted connection, plaintext or TLS, with its [`PeerInfo`].
#[derive(Debug)]
pub struct PeerStream {
    io: Io,
    info: PeerInfo,
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where a connection comes from, for [`MAX_PENDING_PER_SOURCE`]: its IPv4 address, or the
/// /64 prefix of its IPv6 address (the usual assignment to one host or one customer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The handshakes in progress: by age (ids increase) and by source. Each holds the sender of
/// a channel its task watches; removing it (dropping the sender) closes the connection.
#[derive(Debug, Default)]
struct Pending {
    by_age: BTreeMap<u64, (Source, oneshot::Sender<()>)>,
    by_source: HashMap<Source, BTreeSet<u64>>,
    next_id: u64,
}

impl Pending {
    /// Adds a connection from `source`, closing the source's oldest pending handshake if it
    /// has too many, then the oldest of all if there are too many. The receiver completes
    /// when the new connection is closed to make room in turn.
    fn admit(&mut self, source: Source) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id;
        self.next_id += 1;
        let (closer, closed) = oneshot::channel();
        self.by_age.insert(id, (source, closer));
        let of_source = self.by_source.entry(source).or_default();
        of_source.insert(id);
        let oldest_of_source = (of_source.len() > MAX_PENDING_PER_SOURCE)
            .then(|| of_source.first().copied())
            .flatten();
        if let Some(oldest) = oldest_of_source {
            self.remove(oldest);
        }
        while self.by_age.len() > MAX_PENDING_HANDSHAKES {
            let Some(oldest) = self.by_age.keys().next().copied() else {
                break;
            };
            self.remove(oldest);
        }
        (id, closed)
    }

    /// Forgets connection `id` (done, or closed to make room); a no-op if already gone.
    fn remove(&mut self, id: u64) {
        let Some((source, _closer)) = self.by_age.remove(&id) else {
            return;
        };
        if let Some(of_source) = self.by_source.get_mut(&source) {
            of_source.remove(&id);
            if of_source.is_empty() {
                self.by_source.remove(&source);
            }
        }
    }
}

/// A connection's place in [`Pending`], given up when dropped.
#[derive(Debug)]
struct PendingSlot {
    pending: Arc<Mutex<Pending>>,
    id: u64,
}

impl PendingSlot {
    fn admit(pending: &Arc<Mutex<Pending>>, source: Source) -> (Self, oneshot::Receiver<()>) {
        let (id, closed) = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(source);
        let slot = PendingSlot {
            pending: Arc::clone(pending),
            id,
        };
        (slot, closed)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}

/// Why a connection did not become a [`PeerStream`].
#[derive(Debug)]
enum NotAccepted {
    /// Closed by the client before it sent anything (load-balancer TCP checks, port scans).
    ClosedSilently,
    /// Nothing received within [`FIRST_BYTE_TIMEOUT`].
    Silent,
    /// Not done within [`HANDSHAKE_TIMEOUT`].
    TimedOut,
    /// Closed to make room for a newer connection ([`Pending::admit`]).
    Displaced,
    /// The handshake failed (no or a bad client certificate, not TLS, …).
    Refused(io::Error),
}

/// The TLS handshake of one accepted connection, within [`FIRST_BYTE_TIMEOUT`] for its first
/// byte and [`HANDSHAKE_TIMEOUT`] in all.
async fn handshake(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
) -> Result<TlsStream<TcpStream>, NotAccepted> {
    let handshake = async {
        match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut [0u8; 1])).await {
            Err(_) => return Err(NotAccepted::Silent),
            Ok(Ok(0)) => return Err(NotAccepted::ClosedSilently),
            Ok(Err(e)) => return Err(NotAccepted::Refused(e)),
            Ok(Ok(_)) => {}
        }
        acceptor.accept(tcp).await.map_err(NotAccepted::Refused)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or(Err(NotAccepted::TimedOut))
}

/// Accepts connections on `listener` (TCP_NODELAY set) and yields them as [`PeerStream`]s:
/// after a TLS handshake (bounded in time, per source and in all: see the module docs) when
/// `tls` is set, as development-mode plaintext otherwise. Failed handshakes are logged and
/// dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
) -> (ReceiverStream<io::Result<PeerStream>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(128);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small unary calls must not wait for Nagle + delayed ACK (~40 ms).
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            let Some(tls) = &tls else {
                let stream = PeerStream {
                    io: Io::Plain(tcp),
                    info: PeerInfo {
                        remote,
                        identity: PeerIdentity::Development,
                    },
                };
                if tx.send(Ok(stream)).await.is_err() {
                    return;
                }
                continue;
            };
            let (slot, displaced) = PendingSlot::admit(&pending, Source::from(remote.ip()));
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = tokio::select! {
                    biased;
                    _ = displaced => Err(NotAccepted::Displaced),
                    done = handshake(tcp, acceptor) => done,
                };
                drop(slot);
                match outcome {
                    Ok(stream) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map_or(PeerIdentity::NoUsableName, |leaf| identity_of(leaf));
                        let stream = PeerStream {
                            io: Io::Tls(Box::new(stream)),
                            info: PeerInfo { remote, identity },
                        };
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(NotAccepted::ClosedSilently) => {
                        tracing::debug!(%remote, "connection closed before a TLS handshake");
                    }
                    Err(NotAccepted::Silent) => {
                        tracing::warn!(%remote, "TLS handshake not started: nothing received");
                    }
                    Err(NotAccepted::TimedOut) => {
                        tracing::warn!(%remote, "TLS handshake timed out");
                    }
                    Err(NotAccepted::Displaced) => {
                        tracing::warn!(
                            %remote,
                            "TLS handshake dropped: too many handshakes in progress from its source or in all"
                        );
                    }
                    Err(NotAccepted::Refused(e)) => {
                        tracing::warn!(%remote, error = %e, "TLS handshake refused");
                    }
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    fn source(ip: &str) -> Source {
        Source::from(ip.parse::<IpAddr>().unwrap())
    }

    /// Whether the connection behind `closed` was closed to make room.
    fn displaced(closed: &mut oneshot::Receiver<()>) -> bool {
        matches!(closed.try_recv(), Err(TryRecvError::Closed))
    }

    #[test]
    fn a_source_over_its_bound_loses_its_oldest_pending_handshake_and_no_other() {
        let mut pending = Pending::default();
        let (_, mut elsewhere) = pending.admit(source("192.0.2.7"));
        let mut crowd: Vec<_> = (0..MAX_PENDING_PER_SOURCE)
            .map(|_| pending.admit(source("198.51.100.1")).1)
            .collect();
        assert!(crowd.iter_mut().all(|closed| !displaced(closed)));
        let (_, mut newest) = pending.admit(source("198.51.100.1"));
        assert!(displaced(&mut crowd[0]));
        assert!(crowd[1..].iter_mut().all(|closed| !displaced(closed)));
        assert!(!displaced(&mut newest));
        assert!(!displaced(&mut elsewhere));
        assert_eq!(pending.by_age.len(), MAX_PENDING_PER_SOURCE + 1);
    }

    #[test]
    fn beyond_the_total_bound_the_oldest_of_all_goes() {
        let mut pending = Pending::default();
        let mut all: Vec<_> = (0..MAX_PENDING_HANDSHAKES)
            .map(|i| {
                let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
                pending.admit(Source::from(ip)).1
            })
            .collect();
        let (_, mut newest) = pending.admit(source("192.0.2.7"));
        assert!(displaced(&mut all[0]));
        assert!(all[1..].iter_mut().all(|closed| !displaced(closed)));
        assert!(!displaced(&mut newest));
        assert_eq!(pending.by_age.len(), MAX_PENDING_HANDSHAKES);
        assert_eq!(pending.by_source.len(), MAX_PENDING_HANDSHAKES);
    }

    #[test]
    fn a_finished_handshake_gives_its_place_back() {
        let mut pending = Pending::default();
        let ids: Vec<u64> = (0..MAX_PENDING_PER_SOURCE)
            .map(|_| pending.admit(source("198.51.100.1")).0)
            .collect();
        for id in ids {
            pending.remove(id);
            pending.remove(id);
        }
        assert!(pending.by_age.is_empty());
        assert!(pending.by_source.is_empty());
        let (_, mut next) = pending.admit(source("198.51.100.1"));
        assert!(!displaced(&mut next));
    }

    #[test]
    fn an_ipv6_source_is_its_64_prefix_and_a_mapped_ipv4_address_is_that_address() {
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.1"), source("192.0.2.1"));
        assert_ne!(source("192.0.2.1"), source("192.0.2.2"));
    }
}
