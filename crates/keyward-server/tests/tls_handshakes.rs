//! The mTLS listener (`keyward_server::tls::incoming`) against clients that connect and send
//! nothing: they must not keep a real client from its handshake, and they are closed soon.
//! Real sockets on 127.0.0.1, certificates minted per run with rcgen, bounded waits only.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use keyward_server::tls::{self, PeerIdentity, PeerInfo, ReloadableTls, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;
use tokio_stream::StreamExt as _;
use tonic::transport::server::Connected as _;

const CLIENT_ID: &str = "spiffe://keyward.test/ns/chat/sa/chat-api";
/// More silent connections than the listener once had handshake slots (256).
const SILENT: usize = 300;
/// What "promptly" means here: well under the listener's 3 s first-byte timeout, so that
/// passing does not depend on silent connections timing out.
const PROMPTLY: Duration = Duration::from_secs(2);

/// A CA, the server's files for [`TlsFiles`] and a client configuration presenting
/// [`CLIENT_ID`].
fn pki(dir: &Path) -> (TlsFiles, Arc<ClientConfig>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let client_ca_file = dir.join("ca.pem");
    std::fs::write(&client_ca_file, ca_cert.pem()).unwrap();

    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    std::fs::write(&cert_file, server_cert.pem()).unwrap();
    std::fs::write(&key_file, server_key.serialize_pem()).unwrap();

    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .subject_alt_names
        .push(SanType::URI(CLIENT_ID.try_into().unwrap()));
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from(client_cert.der().to_vec())],
        PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    (
        TlsFiles {
            cert_file,
            key_file,
            client_ca_file,
        },
        Arc::new(config),
    )
}

/// The listener on 127.0.0.1, and an echo server behind it that reports each connection's
/// peer.
async fn serve(
    files: TlsFiles,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<PeerInfo>,
    JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = Arc::new(ReloadableTls::load(files).unwrap());
    let (mut incoming, acceptor) = tls::incoming(listener, Some(tls));
    let (peers, peers_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Some(Ok(mut stream)) = incoming.next().await {
            let _ = peers.send(stream.connect_info());
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(&buf).await;
                    let _ = stream.flush().await;
                }
            });
        }
        acceptor.abort();
    });
    (addr, peers_rx, server)
}

/// An mTLS round trip: handshake, 4 bytes out, the same 4 bytes back.
async fn round_trip(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config).connect(server_name, tcp).await?;
    tls.write_all(b"ping").await?;
    tls.flush().await?;
    let mut echoed = [0u8; 4];
    tls.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"ping");
    Ok(())
}

/// Whether the server closed `socket` within `within` (a read sees EOF or a reset).
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, socket.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Regression (issue #16): the listener ran at most 256 handshakes at once, each for up to
/// 10 s, and left further connections in the kernel's backlog; 256 sockets that sent nothing
/// stalled every new client for 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_stall_a_real_client_even_from_its_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let (files, client) = pki(dir.path());
    let (addr, mut peers, server) = serve(files).await;

    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::timeout(PROMPTLY, round_trip(addr, Arc::clone(&client)))
        .await
        .expect("an mTLS round trip behind 300 silent connections finishes promptly")
        .unwrap();
    let peer = peers.recv().await.unwrap();
    assert_eq!(peer.identity, PeerIdentity::Certificate(CLIENT_ID.into()));
    // The same source's oldest silent connection was closed to make room, not left to time out.
    assert!(closed_within(&mut silent[0], PROMPTLY).await);

    server.abort();
}

/// A connection that never sends its ClientHello is closed after the first-byte timeout (3 s),
/// long before the handshake timeout (10 s) that bounded it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_first_byte_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (files, client) = pki(dir.path());
    let (addr, _peers, server) = serve(files).await;

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(6)).await);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed too early"
    );
    // The listener still serves.
    tokio::time::timeout(PROMPTLY, round_trip(addr, client))
        .await
        .unwrap()
        .unwrap();

    server.abort();
}
