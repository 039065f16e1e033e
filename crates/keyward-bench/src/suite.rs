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

use keyward_envelope::{EncryptionContext, KeyId, Sealer, SecretKey, TenantId, aead, parse};
use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{
    self as pb,
    crypto_service_client::CryptoServiceClient,
    crypto_service_server::{CryptoService, CryptoServiceServer},
    tenant_service_client::TenantServiceClient,
};
use keyward_server::Providers;
use tonic::{
    Request, Response, Status,
    transport::{Channel, server::TcpIncoming},
};

use crate::harness::{self, channels};

mod authz;

/// How long each measured cell runs (after a short warm-up); `--quick` (the CI smoke run)
/// shortens both twenty-fold.
static QUICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn cell() -> Duration {
    if QUICK.load(std::sync::atomic::Ordering::Relaxed) {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    }
}

fn warm_up() -> Duration {
    cell() / 10
}

/// Items per call in the batch scenario.
const BATCH: usize = 100;

pub(crate) struct Report {
    pub(crate) text: String,
    pub(crate) json: serde_json::Value,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<Report> {
    QUICK.store(quick, std::sync::atomic::Ordering::Relaxed);
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

    let (grpc, batches) = grpc_ceiling().await?;
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
    text.push_str(&format!(
        "\nBatch ({BATCH} x 1 KiB per call) vs single calls, Keyward, items/s\n"
    ));
    text.push_str("| op | concurrency | single items/s | batch items/s | batch / single | batch call p50/p99 µs |\n|---|---|---|---|---|---|\n");
    for row in &batches {
        text.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {}/{} |\n",
            row.op,
            row.concurrency,
            row.single_items,
            row.batch_items(),
            row.batch_items() / row.single_items,
            row.batch.pct(0.5),
            row.batch.pct(0.99)
        ));
    }

    let authz = authz::authz_cost(&grpc).await?;
    text.push_str("\nAuthentication and authorization cost\n");
    text.push_str(&format!(
        "Cedar evaluation in process (shipped policies, Service principal): {:.1} µs allow, {:.1} µs deny; the server's check per request (identity lookup + remembered decision): {:.2} µs\n",
        authz.decision_allow_ns / 1000.0,
        authz.decision_deny_ns / 1000.0,
        authz.check_ns / 1000.0
    ));
    text.push_str("| encrypt 1 KiB x32 (4 conns) | req/s | p50/p99/p999 µs |\n|---|---|---|\n");
    for (name, cell) in [
        ("null service, plaintext", &authz.null_plain),
        ("null service, mTLS", &authz.null_tls),
        (
            "Keyward dev mode (plaintext, Developer principal, Cedar)",
            &authz.keyward_plain,
        ),
        (
            "Keyward mTLS + Cedar (Service principal)",
            &authz.keyward_tls,
        ),
    ] {
        text.push_str(&format!(
            "| {name} | {:.0} | {} |\n",
            cell.rps,
            cell.percentiles()
        ));
    }
    text.push_str(&format!(
        "Keyward mTLS / null mTLS: {:.2}; Keyward mTLS / Keyward plaintext: {:.2}\n",
        authz.keyward_tls.rps / authz.null_tls.rps,
        authz.keyward_tls.rps / authz.keyward_plain.rps
    ));

    // Targets (issue #7), each met or not.
    let mut targets: Vec<(String, bool)> = Vec::new();
    for row in grpc
        .iter()
        .filter(|r| r.size == 1024 && r.concurrency == 32)
    {
        targets.push((
            format!(
                "{} 1 KiB x32 >= 0.8 x null req/s (got {:.2})",
                row.op,
                row.keyward.rps / row.null.rps
            ),
            row.keyward.rps >= 0.8 * row.null.rps,
        ));
        targets.push((
            format!(
                "{} 1 KiB x32 p99 <= 2 x null p99 (got {} vs {} µs)",
                row.op,
                row.keyward.pct(0.99),
                row.null.pct(0.99)
            ),
            row.keyward.pct(0.99) <= 2 * row.null.pct(0.99),
        ));
    }
    for (size, floor) in [(16 * 1024, 0.8), (1024, 0.5)] {
        if let Some(row) = cipher.iter().find(|r| r.size == size) {
            let ratio = row.envelope_mbps / row.raw_mbps;
            targets.push((
                format!(
                    "envelope at {} >= {floor} x raw AEAD (got {ratio:.2})",
                    size_name(size)
                ),
                ratio >= floor,
            ));
        }
    }
    for row in &batches {
        let ratio = row.batch_items() / row.single_items;
        targets.push((
            format!(
                "batch {} x{} >= 3 x single items/s (got {ratio:.2})",
                row.op, row.concurrency
            ),
            ratio >= 3.0,
        ));
    }
    text.push_str("\nTargets\n");
    for (name, met) in &targets {
        text.push_str(&format!(
            "- [{}] {name}\n",
            if *met { "met" } else { "NOT MET" }
        ));
    }

    let json = serde_json::json!({
        "batch": batches.iter().map(|r| serde_json::json!({
            "op": r.op, "concurrency": r.concurrency, "items_per_call": BATCH,
            "single_items_per_s": r.single_items, "batch_items_per_s": r.batch_items(),
            "ratio": r.batch_items() / r.single_items, "batch_call": r.batch.json(),
        })).collect::<Vec<_>>(),
        "authz": {
            "check_ns": authz.check_ns,
            "decision_allow_ns": authz.decision_allow_ns,
            "decision_deny_ns": authz.decision_deny_ns,
            "null_plain": authz.null_plain.json(),
            "null_tls": authz.null_tls.json(),
            "keyward_plain": authz.keyward_plain.json(),
            "keyward_tls": authz.keyward_tls.json(),
        },
        "targets": targets.iter().map(|(name, met)| serde_json::json!({"target": name, "met": met})).collect::<Vec<_>>(),
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
        let budget = cell() * 3 / 10;
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
                let sealed = Sealer::new(&key, &tenant, &dek_id).seal(&ctx, &plaintext)?;
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
pub(crate) struct NullCrypto;

impl NullCrypto {
    /// Serves the null service on a free port of 127.0.0.1 in the background, with the same
    /// transport settings as Keyward's (TCP_NODELAY, 1 MiB + 64 KiB messages); its address.
    pub(crate) async fn serve() -> anyhow::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    CryptoServiceServer::new(NullCrypto)
                        .max_decoding_message_size((1 << 20) + 65536)
                        .max_encoding_message_size((1 << 20) + 65536),
                )
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
        );
        Ok(addr)
    }
}

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
    async fn encrypt_batch(
        &self,
        r: Request<pb::EncryptBatchRequest>,
    ) -> Result<Response<pb::EncryptBatchResponse>, Status> {
        Ok(Response::new(pb::EncryptBatchResponse {
            results: r
                .into_inner()
                .items
                .into_iter()
                .map(|i| pb::EncryptBatchResult {
                    result: Some(pb::encrypt_batch_result::Result::Ok(pb::EncryptResponse {
                        envelope: i.plaintext,
                        dek_id: String::new(),
                    })),
                })
                .collect(),
        }))
    }
    async fn decrypt_batch(
        &self,
        r: Request<pb::DecryptBatchRequest>,
    ) -> Result<Response<pb::DecryptBatchResponse>, Status> {
        Ok(Response::new(pb::DecryptBatchResponse {
            results: r
                .into_inner()
                .items
                .into_iter()
                .map(|i| pb::DecryptBatchResult {
                    result: Some(pb::decrypt_batch_result::Result::Ok(pb::DecryptResponse {
                        plaintext: i.envelope,
                    })),
                })
                .collect(),
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

/// Rounds of the alternating baseline/Keyward measurement in [`paired`].
const ROUNDS: usize = 3;

/// The baseline and Keyward measured alternately, [`ROUNDS`] times each for half a cell, keeping
/// the best round of each (on a shared machine noise only slows a round down, so the best round
/// is the least disturbed one; alternating spreads a noisy neighbour over both sides instead of
/// landing it on one). A single back-to-back pair gave 0.44 and 0.72 for the same cell in two
/// runs ten minutes apart.
async fn paired(
    baseline: (&[Channel], Arc<Vec<u8>>),
    keyward: (&[Channel], Arc<Vec<u8>>),
    concurrency: usize,
    op: &'static str,
) -> anyhow::Result<(Cell, Cell)> {
    let mut best = (Cell::default(), Cell::default());
    for _ in 0..ROUNDS {
        let b = load(baseline.0, concurrency, op, baseline.1.clone(), cell() / 2).await?;
        if b.rps > best.0.rps {
            best.0 = b;
        }
        let k = load(keyward.0, concurrency, op, keyward.1.clone(), cell() / 2).await?;
        if k.rps > best.1.rps {
            best.1 = k;
        }
    }
    Ok(best)
}

/// `concurrency` loops over `conns` connections for `length` (after a warm-up); latencies of
/// every call.
async fn load(
    conns: &[Channel],
    concurrency: usize,
    op: &'static str,
    payload: Arc<Vec<u8>>,
    length: Duration,
) -> anyhow::Result<Cell> {
    let deadline_warm = Instant::now() + warm_up();
    let cell = length;
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
                        deadline_warm + cell
                    } else {
                        now + cell
                    }
                });
                if now >= end_at {
                    break;
                }
                let ok = match op {
                    "encrypt" => client
                        .encrypt(pb::EncryptRequest {
                            tenant_id: "bench".into(),
                            plaintext: payload.to_vec(),
                            encryption_context: Default::default(),
                            scope: String::new(),
                        })
                        .await
                        .is_ok(),
                    "decrypt" => client
                        .decrypt(pb::DecryptRequest {
                            tenant_id: "bench".into(),
                            envelope: payload.to_vec(),
                            encryption_context: Default::default(),
                        })
                        .await
                        .is_ok(),
                    "encrypt_batch" => client
                        .encrypt_batch(pb::EncryptBatchRequest {
                            tenant_id: "bench".into(),
                            items: (0..BATCH)
                                .map(|_| pb::EncryptBatchItem {
                                    plaintext: payload.to_vec(),
                                    ..Default::default()
                                })
                                .collect(),
                        })
                        .await
                        .is_ok_and(|r| {
                            r.get_ref().results.iter().all(|r| {
                                matches!(r.result, Some(pb::encrypt_batch_result::Result::Ok(_)))
                            })
                        }),
                    _ => client
                        .decrypt_batch(pb::DecryptBatchRequest {
                            tenant_id: "bench".into(),
                            items: (0..BATCH)
                                .map(|_| pb::DecryptBatchItem {
                                    envelope: payload.to_vec(),
                                    ..Default::default()
                                })
                                .collect(),
                        })
                        .await
                        .is_ok_and(|r| {
                            r.get_ref().results.iter().all(|r| {
                                matches!(r.result, Some(pb::decrypt_batch_result::Result::Ok(_)))
                            })
                        }),
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
        rps: all.len() as f64 / cell.as_secs_f64(),
        latencies_us: all,
    })
}

struct BatchRow {
    op: &'static str,
    concurrency: usize,
    /// Items/s with one item per call (the gRPC-ceiling row's Keyward cell).
    single_items: f64,
    batch: Cell,
}

impl BatchRow {
    fn batch_items(&self) -> f64 {
        self.batch.rps * BATCH as f64
    }
}

async fn grpc_ceiling() -> anyhow::Result<(Vec<GrpcRow>, Vec<BatchRow>)> {
    // The null service, with the same transport settings as Keyward's.
    let null_addr = NullCrypto::serve().await?;

    // Keyward with the local provider (no KMS on the warm path anyway).
    let dir = tempfile::tempdir()?;
    let mut config = harness::server_config(dir.path())?;
    config.revocation.monitor_interval_seconds = 0;
    let settings = config.resolve()?;
    let providers =
        Providers::default().with(Arc::new(LocalProvider::open(&settings.local_kms_dir)?));
    let running = keyward_server::ServerBuilder::new(&settings)
        .providers(providers)
        .start(std::future::pending())
        .await?;
    let keyward_addr = running.local_addr();
    let setup = channels(keyward_addr, 1).await?.remove(0);
    let mut tenants = TenantServiceClient::new(setup.clone());
    harness::onboard(&mut tenants, "bench", harness::local_key()).await?;

    let mut rows = Vec::new();
    let mut batches = Vec::new();
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
                let (null, keyward) = paired(
                    (&null_conns, null_payload),
                    (&keyward_conns, keyward_payload),
                    concurrency,
                    op,
                )
                .await?;
                if size == 1024 {
                    eprintln!("batch: {op} {BATCH} x 1 KiB x{concurrency}");
                    let batch_op = if op == "encrypt" {
                        "encrypt_batch"
                    } else {
                        "decrypt_batch"
                    };
                    let payload = if op == "encrypt" {
                        plaintext.clone()
                    } else {
                        envelope.clone()
                    };
                    batches.push(BatchRow {
                        op,
                        concurrency,
                        single_items: keyward.rps,
                        batch: load(&keyward_conns, concurrency, batch_op, payload, cell()).await?,
                    });
                }
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
    Ok((rows, batches))
}
