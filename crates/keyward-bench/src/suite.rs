//! `keyward-bench suite`: Keyward against its floors, as ratios measured in the
//! same run (docs/benchmarks.md).
//!
//! 1. Cipher floor: one-shot AES-256-GCM (key setup + seal, key setup + open)
//!    vs Keyward's envelope seal + parse + open (HKDF per message, commitment).
//! 2. gRPC ceiling: a null `CryptoService` (bytes in, bytes out, same tonic
//!    settings, TCP_NODELAY) vs Keyward's `Encrypt`/`Decrypt` with warm keys,
//!    at 1 KiB and 16 KiB, concurrency 1 (1 connection) and 32 (4 connections).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keyward_envelope::{EncryptionContext, KeyId, SecretKey, TenantId, aead, parse, seal};
use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{
    self as pb,
    crypto_service_client::CryptoServiceClient,
    crypto_service_server::{CryptoService, CryptoServiceServer},
    tenant_service_client::TenantServiceClient,
};
use keyward_server::{Config, Providers};
use tonic::{
    Request, Response, Status,
    transport::{Channel, server::TcpIncoming},
};

/// How long each measured cell runs (after a short warm-up).
const CELL: Duration = Duration::from_secs(2);
const WARM_UP: Duration = Duration::from_millis(200);

pub(crate) struct Report {
    pub(crate) text: String,
    pub(crate) json: serde_json::Value,
}

pub(crate) async fn run() -> anyhow::Result<Report> {
    let mut text = String::new();
    let cipher = cipher_floor()?;
    text.push_str("Cipher floor (in process): one-shot AES-256-GCM vs envelope v1, seal + open\n");
    text.push_str(
        "| size | AES-GCM MB/s | envelope MB/s | envelope / AES-GCM |\n|---|---|---|---|\n",
    );
    for row in &cipher {
        text.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} |\n",
            size_name(row.size),
            row.raw_mbps,
            row.envelope_mbps,
            row.envelope_mbps / row.raw_mbps
        ));
    }

    let grpc = grpc_ceiling().await?;
    text.push_str("\ngRPC ceiling (127.0.0.1): null CryptoService vs Keyward, warm keys\n");
    text.push_str("| op | size | concurrency | null req/s | Keyward req/s | Keyward / null | null p50/p99/p999 µs | Keyward p50/p99/p999 µs |\n|---|---|---|---|---|---|---|---|\n");
    for row in &grpc {
        text.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} |\n",
            row.op,
            size_name(row.size),
            row.concurrency,
            row.null.rps,
            row.keyward.rps,
            row.keyward.rps / row.null.rps,
            row.null.percentiles(),
            row.keyward.percentiles()
        ));
    }
    let json = serde_json::json!({
        "cipher_floor": cipher.iter().map(|r| serde_json::json!({
            "size": r.size, "aes_gcm_mb_per_s": r.raw_mbps, "envelope_mb_per_s": r.envelope_mbps,
            "ratio": r.envelope_mbps / r.raw_mbps,
        })).collect::<Vec<_>>(),
        "grpc_ceiling": grpc.iter().map(|r| serde_json::json!({
            "op": r.op, "size": r.size, "concurrency": r.concurrency,
            "null": r.null.json(), "keyward": r.keyward.json(),
            "ratio_rps": r.keyward.rps / r.null.rps,
        })).collect::<Vec<_>>(),
    });
    Ok(Report { text, json })
}

fn size_name(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

struct CipherRow {
    size: usize,
    raw_mbps: f64,
    envelope_mbps: f64,
}

/// Runs `f` repeatedly for about `budget`; returns MB/s of `bytes` per call.
fn throughput(
    bytes: usize,
    budget: Duration,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        f()?;
        calls += 1;
    }
    Ok(calls as f64 * bytes as f64 / start.elapsed().as_secs_f64() / 1e6)
}

fn cipher_floor() -> anyhow::Result<Vec<CipherRow>> {
    let key = SecretKey::generate()?;
    let tenant = TenantId::try_from("bench")?;
    let dek_id = KeyId::generate()?;
    let ctx = EncryptionContext::empty();
    let nonce = [7u8; 12];
    let aad = [1u8; 64];
    let mut rows = Vec::new();
    for size in [64, 1024, 16 * 1024, 1 << 20] {
        let plaintext = vec![0x5a; size];
        let budget = Duration::from_millis(600);
        // Interleave the two, twice, and keep the better of each (noise only slows).
        let mut raw = 0f64;
        let mut env = 0f64;
        for _ in 0..2 {
            raw = raw.max(throughput(size, budget, || {
                let sealed = aead::seal(&key, &nonce, &aad, &plaintext)?;
                let opened = aead::open(&key, &nonce, &aad, &sealed)?;
                anyhow::ensure!(opened.len() == size);
                Ok(())
            })?);
            env = env.max(throughput(size, budget, || {
                let sealed = seal(&key, &tenant, &dek_id, &ctx, &plaintext)?;
                let opened = parse(&sealed)?.open(&key, &ctx)?;
                anyhow::ensure!(opened.len() == size);
                Ok(())
            })?);
        }
        rows.push(CipherRow {
            size,
            raw_mbps: raw,
            envelope_mbps: env,
        });
    }
    Ok(rows)
}

/// Bytes in, bytes out: the gRPC and protobuf cost with no cryptography.
#[derive(Debug, Default)]
struct NullCrypto;

#[tonic::async_trait]
impl CryptoService for NullCrypto {
    async fn encrypt(
        &self,
        r: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        Ok(Response::new(pb::EncryptResponse {
            envelope: r.into_inner().plaintext,
            dek_id: String::new(),
        }))
    }
    async fn decrypt(
        &self,
        r: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        Ok(Response::new(pb::DecryptResponse {
            plaintext: r.into_inner().envelope,
        }))
    }
}

#[derive(Debug, Default)]
struct Cell {
    rps: f64,
    latencies_us: Vec<u64>,
}

impl Cell {
    fn pct(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i]
    }
    fn percentiles(&self) -> String {
        format!("{}/{}/{}", self.pct(0.5), self.pct(0.99), self.pct(0.999))
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "rps": self.rps, "p50_us": self.pct(0.5), "p99_us": self.pct(0.99), "p999_us": self.pct(0.999) })
    }
}

struct GrpcRow {
    op: &'static str,
    size: usize,
    concurrency: usize,
    null: Cell,
    keyward: Cell,
}

async fn channels(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// `concurrency` loops over `conns` connections for CELL; latencies of every call.
async fn load(
    conns: &[Channel],
    concurrency: usize,
    op: &'static str,
    payload: Arc<Vec<u8>>,
) -> anyhow::Result<Cell> {
    let deadline_warm = Instant::now() + WARM_UP;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = CryptoServiceClient::new(conns[i % conns.len()].clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut end = None;
            loop {
                let now = Instant::now();
                let end_at = *end.get_or_insert_with(|| {
                    if now < deadline_warm {
                        deadline_warm + CELL
                    } else {
                        now + CELL
                    }
                });
                if now >= end_at {
                    break;
                }
                let ok = if op == "encrypt" {
                    client
                        .encrypt(pb::EncryptRequest {
                            tenant_id: "bench".into(),
                            plaintext: payload.to_vec(),
                            encryption_context: Default::default(),
                            scope: String::new(),
                        })
                        .await
                        .is_ok()
                } else {
                    client
                        .decrypt(pb::DecryptRequest {
                            tenant_id: "bench".into(),
                            envelope: payload.to_vec(),
                            encryption_context: Default::default(),
                        })
                        .await
                        .is_ok()
                };
                if !ok {
                    return Err(anyhow::anyhow!("{op} failed during the benchmark"));
                }
                if now >= deadline_warm {
                    lat.push(now.elapsed().as_micros() as u64);
                }
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(Cell {
        rps: all.len() as f64 / CELL.as_secs_f64(),
        latencies_us: all,
    })
}

async fn grpc_ceiling() -> anyhow::Result<Vec<GrpcRow>> {
    // The null service, with the same transport settings as Keyward's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let null_addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                CryptoServiceServer::new(NullCrypto)
                    .max_decoding_message_size((1 << 20) + 65536)
                    .max_encoding_message_size((1 << 20) + 65536),
            )
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );

    // Keyward with the local provider (no KMS on the warm path anyway).
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.revocation.monitor_interval_seconds = 0;
    let settings = config.resolve()?;
    let providers =
        Providers::default().with(Arc::new(LocalProvider::open(&settings.local_kms_dir)?));
    let running =
        keyward_server::start_with_providers(&settings, providers, std::future::pending()).await?;
    let keyward_addr = running.local_addr();
    let setup = channels(keyward_addr, 1).await?.remove(0);
    let mut tenants = TenantServiceClient::new(setup.clone());
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "bench".into(),
            display_name: String::new(),
        })
        .await?;
    tenants
        .register_key(pb::RegisterKeyRequest {
            tenant_id: "bench".into(),
            key: Some(pb::register_key_request::Key::Local(pb::LocalKey {
                key_name: "default".into(),
            })),
        })
        .await?;

    let mut rows = Vec::new();
    for size in [1024usize, 16 * 1024] {
        let plaintext = Arc::new(vec![0x42u8; size]);
        let envelope = Arc::new(
            CryptoServiceClient::new(setup.clone())
                .encrypt(pb::EncryptRequest {
                    tenant_id: "bench".into(),
                    plaintext: plaintext.to_vec(),
                    encryption_context: Default::default(),
                    scope: String::new(),
                })
                .await?
                .into_inner()
                .envelope,
        );
        for (concurrency, conns) in [(1usize, 1usize), (32, 4)] {
            let null_conns = channels(null_addr, conns).await?;
            let keyward_conns = channels(keyward_addr, conns).await?;
            for op in ["encrypt", "decrypt"] {
                let (null_payload, keyward_payload) = if op == "encrypt" {
                    (plaintext.clone(), plaintext.clone())
                } else {
                    (envelope.clone(), envelope.clone())
                };
                eprintln!("gRPC: {op} {} x{concurrency}", size_name(size));
                let null = load(&null_conns, concurrency, op, null_payload).await?;
                let keyward = load(&keyward_conns, concurrency, op, keyward_payload).await?;
                rows.push(GrpcRow {
                    op,
                    size,
                    concurrency,
                    null,
                    keyward,
                });
            }
        }
    }
    Ok(rows)
}
