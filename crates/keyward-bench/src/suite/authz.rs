//! Scenario 7 of `keyward-bench suite`: what mTLS and Cedar cost per request (a Cedar decision,
//! the server's whole check, and Encrypt over mTLS against a null service behind the same TLS
//! acceptor), beside the plaintext gRPC ceiling measured before it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keyward_proto::v1::{
    self as pb, crypto_service_server::CryptoServiceServer,
    tenant_service_client::TenantServiceClient,
};
use tonic::transport::Channel;

use super::cell;
use super::grpc::{Cell, GrpcRow, NullCrypto, paired};
use crate::harness;

pub(super) struct AuthzReport {
    /// The server's whole check per request (identity lookup, remembered decision).
    pub(super) check_ns: f64,
    pub(super) decision_allow_ns: f64,
    pub(super) decision_deny_ns: f64,
    pub(super) null_plain: Cell,
    pub(super) null_tls: Cell,
    pub(super) keyward_plain: Cell,
    pub(super) keyward_tls: Cell,
}

fn policies_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// ns per `is_authorized` call, over about `budget`.
fn decision_ns(
    policies: &keyward_authz::Policies,
    principal: &keyward_authz::Principal,
    tenant: &str,
    budget: Duration,
) -> f64 {
    let ctx = keyward_authz::RequestContext {
        purpose: Some("chat-history"),
        scope: Some("default"),
        ..Default::default()
    };
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            std::hint::black_box(policies.is_authorized(
                principal,
                keyward_authz::Action::Encrypt,
                keyward_authz::Resource::Tenant(tenant),
                &ctx,
            ));
        }
        calls += 100;
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// A CA, server certificate and client certificates (rcgen), as PEM files under `dir`.
struct BenchPki {
    ca_pem: String,
    files: keyward_server::tls::TlsFiles,
}

fn write_leaf(
    dir: &std::path::Path,
    name: &str,
    params: rcgen::CertificateParams,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let cert_file = dir.join(format!("{name}.pem"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    Ok((cert_file, key_file))
}

/// Mints the PKI and returns it with the client identities (cert, key) for `spiffe_ids`.
fn bench_pki(
    dir: &std::path::Path,
    spiffe_ids: &[&str],
) -> anyhow::Result<(BenchPki, Vec<tonic::transport::Identity>)> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "keyward bench CA");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem())?;
    let (cert_file, key_file) = write_leaf(
        dir,
        "server",
        rcgen::CertificateParams::new(vec!["localhost".to_owned()])?,
        &issuer,
    )?;
    let mut identities = Vec::new();
    for (i, id) in spiffe_ids.iter().enumerate() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .subject_alt_names
            .push(rcgen::SanType::URI((*id).try_into()?));
        let (cert, key) = write_leaf(dir, &format!("client-{i}"), params, &issuer)?;
        identities.push(tonic::transport::Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok((
        BenchPki {
            ca_pem: ca_cert.pem(),
            files: keyward_server::tls::TlsFiles {
                cert_file,
                key_file,
                client_ca_file: ca_file,
            },
        },
        identities,
    ))
}

async fn tls_channels(
    addr: std::net::SocketAddr,
    n: usize,
    pki: &BenchPki,
    identity: &tonic::transport::Identity,
) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
            .identity(identity.clone())
            .domain_name("localhost");
        out.push(
            Channel::from_shared(format!("https://{addr}"))?
                .tls_config(tls)?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// Scenario 7: what mTLS and Cedar cost per request, against a null service behind the same
/// TLS acceptor.
pub(super) async fn authz_cost(grpc: &[GrpcRow]) -> anyhow::Result<AuthzReport> {
    const SERVICE: &str = "spiffe://keyward.test/ns/bench/sa/client";
    const OPERATOR: &str = "spiffe://keyward.test/ns/bench/sa/operator";
    const ADMIN: &str = "spiffe://keyward.test/ns/bench/sa/admin";
    let dir = tempfile::tempdir()?;
    let identities = dir.path().join("identities.toml");
    std::fs::write(
        &identities,
        format!(
            "[[service]]\nid = \"bench\"\nidentities = [\"{SERVICE}\"]\ntenants = [\"bench\"]\n\n\
             [[operator]]\nid = \"bench-operator\"\nidentities = [\"{OPERATOR}\"]\n\n\
             [[tenant_admin]]\nid = \"bench-admin\"\nidentities = [\"{ADMIN}\"]\ntenant = \"bench\"\n"
        ),
    )?;

    // In process: one decision.
    let policies = keyward_authz::Policies::load(&policies_dir(), &identities)?;
    let principal = policies
        .principal(SERVICE)
        .ok_or_else(|| anyhow::anyhow!("bench identity not mapped"))?;
    let budget = cell() / 2;
    let decision_allow_ns = decision_ns(&policies, &principal, "bench", budget);
    let decision_deny_ns = decision_ns(&policies, &principal, "other", budget);
    let authz = keyward_server::authz::Authz::load(keyward_server::authz::PolicyFiles {
        policies_dir: policies_dir(),
        identities_file: identities.clone(),
    })?;
    let mut request = tonic::Request::new(());
    request
        .extensions_mut()
        .insert(keyward_server::tls::PeerInfo {
            remote: "127.0.0.1:1".parse()?,
            identity: keyward_server::tls::PeerIdentity::Certificate(Arc::from(SERVICE)),
        });
    let tenant = keyward_envelope::TenantId::try_from("bench")?;
    let ctx = keyward_authz::RequestContext {
        purpose: None,
        scope: Some("default"),
        ..Default::default()
    };
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        for _ in 0..100 {
            std::hint::black_box(authz.check(
                &request,
                keyward_authz::Action::Encrypt,
                Some(&tenant),
                &ctx,
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        calls += 100;
    }
    let check_ns = start.elapsed().as_nanos() as f64 / calls as f64;

    // Over the wire: the null service and Keyward, both behind Keyward's TLS acceptor.
    let (pki, ids) = bench_pki(dir.path(), &[SERVICE, OPERATOR, ADMIN])?;
    let tls = Arc::new(keyward_server::tls::ReloadableTls::load(pki.files.clone())?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let null_addr = listener.local_addr()?;
    let (incoming, _acceptor) = keyward_server::tls::incoming(listener, Some(tls));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CryptoServiceServer::new(NullCrypto))
            .serve_with_incoming(incoming),
    );

    let data = tempfile::tempdir()?;
    let server = harness::Server::start_local(data.path(), |config| {
        config.revocation.monitor_interval_seconds = 0;
        config.tls.cert_file = Some(pki.files.cert_file.clone());
        config.tls.key_file = Some(pki.files.key_file.clone());
        config.tls.client_ca_file = Some(pki.files.client_ca_file.clone());
        config.authz.policies_dir = policies_dir();
        config.authz.identities_file = Some(identities);
    })
    .await?;
    let addr = server.addr();
    let operator = tls_channels(addr, 1, &pki, &ids[1]).await?.remove(0);
    TenantServiceClient::new(operator)
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "bench".into(),
            display_name: String::new(),
        })
        .await?;
    let admin = tls_channels(addr, 1, &pki, &ids[2]).await?.remove(0);
    TenantServiceClient::new(admin)
        .register_key(pb::RegisterKeyRequest {
            tenant_id: "bench".into(),
            key: Some(pb::register_key_request::Key::Local(pb::LocalKey {
                key_name: "default".into(),
            })),
        })
        .await?;

    let payload = Arc::new(vec![0x42u8; 1024]);
    eprintln!("authz: encrypt 1 KiB x32, mTLS");
    let (null_tls, keyward_tls) = paired(
        (
            &tls_channels(null_addr, 4, &pki, &ids[0]).await?,
            payload.clone(),
        ),
        (&tls_channels(addr, 4, &pki, &ids[0]).await?, payload),
        32,
        "encrypt",
    )
    .await?;
    let plain = grpc
        .iter()
        .find(|r| r.op == "encrypt" && r.size == 1024 && r.concurrency == 32)
        .ok_or_else(|| anyhow::anyhow!("no plaintext row"))?;
    Ok(AuthzReport {
        check_ns,
        decision_allow_ns,
        decision_deny_ns,
        null_plain: Cell {
            rps: plain.null.rps,
            latencies_us: plain.null.latencies_us.clone(),
        },
        null_tls,
        keyward_plain: Cell {
            rps: plain.keyward.rps,
            latencies_us: plain.keyward.latencies_us.clone(),
        },
        keyward_tls,
    })
}
