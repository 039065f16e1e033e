//! The gRPC listener's transport: mutual TLS (rustls, client certificates verified against the
//! configured CA bundle) or, in development mode, plaintext on a loopback address.
//!
//! Each accepted connection becomes a [`PeerStream`] whose [`PeerInfo`] (the caller's
//! certificate identity, parsed once per connection) tonic puts in every request's extensions;
//! [`crate::authz`] maps it to a principal. The TLS configuration lives behind a lock so that a
//! new certificate or CA bundle applies to the next handshake without a restart
//! ([`ReloadableTls::reload`]); established connections keep the configuration they started with.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
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
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// A handshake that has not finished by then is dropped (slow-loris protection).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
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

/// Accepts connections on `listener` (TCP_NODELAY set) and yields them as [`PeerStream`]s:
/// after a TLS handshake (bounded in time and in concurrency) when `tls` is set, as
/// development-mode plaintext otherwise. Failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
) -> (ReceiverStream<io::Result<PeerStream>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(128);
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
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
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                return;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
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
                    Ok(Err(e)) => {
                        tracing::warn!(%remote, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::warn!(%remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}
