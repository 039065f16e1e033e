//! `keyward-bench replicas`: the revocation fan-out across replicas (docs/benchmarks.md,
//! "Revocation fan-out across replicas").
//!
//! Three replicas run in-process (`harness::Server::start_local`: the local provider) on one fresh
//! PostgreSQL database, sharing the audit keys and the local KEK directory as a deployment must.
//! Each round revokes a tenant through replica A (`TenantService.RevokeKey`) while B and C are
//! warm, and measures from RevokeKey's return on A to the first `KEY_REVOKED` denial on B and on
//! C (each polled by back-to-back decrypts); the tenant is then restored through A and both are
//! waited for to serve again. Every wait is bounded.
//!
//! The replicas open their PostgreSQL store through `keyward-server` (which always builds
//! `keyward-store`'s `postgres` backend); the bench asks for the same backend and for `sqlx`'s
//! PostgreSQL driver itself (its Cargo.toml), for the `sqlx::PgConnection` that creates and drops
//! the scenario's database.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    tenant_service_client::TenantServiceClient,
};
use sqlx::Connection as _;
use tonic::transport::Channel;

use crate::harness;

/// The p99 the fan-out is meant to meet (issue #9).
const TARGET_P99: Duration = Duration::from_millis(100);
/// Longest wait for one replica to deny (or serve again) in a round.
const ROUND_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Revocations to measure.
    #[arg(long, default_value_t = 50)]
    revocations: usize,
    /// A PostgreSQL URL whose role may CREATE DATABASE (a database `kw_bench_<hex>` is created
    /// and dropped).
    #[arg(
        long,
        env = "KEYWARD_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/replicas.json")]
    json: PathBuf,
}

struct Replica {
    server: harness::Server,
    channel: Channel,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (db_name, url) = create_database(&args.postgres_url).await?;
    let result = measure(&url, args.revocations).await;
    drop_database(&args.postgres_url, &db_name).await;
    let (b, c) = result?;

    let mut all: Vec<Duration> = b.iter().chain(c.iter()).copied().collect();
    all.sort();
    let stats = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        (
            pct(&v, 0.5),
            pct(&v, 0.99),
            v.last().copied().unwrap_or_default(),
        )
    };
    let (p50, p99, max) = stats(&all);
    println!(
        "Revocation fan-out across replicas: {} revocations through replica A, 3 replicas on one PostgreSQL database (in-process), delay from RevokeKey's return on A to the first KEY_REVOKED on B and C",
        args.revocations
    );
    println!("| replica | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, v) in [("B", &b), ("C", &c), ("B and C", &all)] {
        let (p50, p99, max) = stats(v);
        println!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            v.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    let met = p99 <= TARGET_P99;
    println!(
        "target p99 <= {} ms: {} (p99 {:.1} ms)",
        TARGET_P99.as_millis(),
        if met { "MET" } else { "NOT MET" },
        ms(p99)
    );
    let json = serde_json::json!({
        "replicas": {
            "revocations": args.revocations,
            "p50_ms": ms(p50),
            "p99_ms": ms(p99),
            "max_ms": ms(max),
            "b_ms": b.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "c_ms": c.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "target_p99_ms": TARGET_P99.as_millis() as u64,
            "target_met": met,
        }
    });
    crate::harness::write_json(&args.json, &json)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of a sorted sample.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Returns the per-round delays of B and C.
async fn measure(url: &str, revocations: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let shared = tempfile::tempdir()?;
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for id in ["a", "b", "c"] {
        let data = tempfile::tempdir()?;
        replicas.push(start_replica(url, shared.path(), data.path(), id).await?);
        dirs.push(data);
    }
    let result = rounds(&replicas, revocations).await;
    for r in replicas {
        let _ = r.server.stop().await;
    }
    result
}

async fn start_replica(
    url: &str,
    shared: &std::path::Path,
    data_dir: &std::path::Path,
    id: &str,
) -> anyhow::Result<Replica> {
    let server = harness::Server::start_local(data_dir, |config| {
        config.store = Some(url.to_owned());
        config.replica_id = Some(id.to_owned());
        config.audit.keys_dir = Some(shared.join("audit"));
        config.local_kms.dir = Some(shared.join("local-kms"));
        config.revocation.monitor_interval_seconds = 0;
    })
    .await
    .with_context(|| format!("start replica {id}"))?;
    let channel = Channel::from_shared(format!("http://{}", server.addr()))?
        .connect()
        .await?;
    Ok(Replica { server, channel })
}

async fn rounds(
    replicas: &[Replica],
    revocations: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let a = &replicas[0];
    let mut tenants = TenantServiceClient::new(a.channel.clone());
    harness::onboard(&mut tenants, "bench", harness::local_key()).await?;
    let envelope = CryptoServiceClient::new(a.channel.clone())
        .encrypt(pb::EncryptRequest {
            tenant_id: "bench".into(),
            plaintext: vec![7; 1024],
            encryption_context: Default::default(),
            scope: String::new(),
            justification: None,
        })
        .await?
        .into_inner()
        .envelope;

    let (mut to_b, mut to_c) = (Vec::new(), Vec::new());
    for round in 0..revocations {
        // B and C serve (warm caches) before each revocation.
        for r in &replicas[1..] {
            wait_until(&r.channel, &envelope, true, Instant::now())
                .await
                .with_context(|| format!("round {round}: replica does not serve"))?;
        }
        tenants
            .revoke_key(pb::RevokeKeyRequest {
                tenant_id: "bench".into(),
                reason: format!("benchmark round {round}"),
                requested_by: "keyward-bench".into(),
            })
            .await?;
        let returned = Instant::now();
        let (b, c) = tokio::join!(
            wait_until(&replicas[1].channel, &envelope, false, returned),
            wait_until(&replicas[2].channel, &envelope, false, returned),
        );
        to_b.push(b.with_context(|| format!("round {round}: B"))?);
        to_c.push(c.with_context(|| format!("round {round}: C"))?);
        tenants
            .restore_key(pb::RestoreKeyRequest {
                tenant_id: "bench".into(),
                reason: "benchmark".into(),
                requested_by: "keyward-bench".into(),
                binding_id: 0,
            })
            .await?;
    }
    Ok((to_b, to_c))
}

/// Back-to-back decrypts on `channel` until one is served (`serving`) or denied `KEY_REVOKED`
/// (`!serving`); the delay since `since`. Fails after [`ROUND_BOUND`] or on another error.
async fn wait_until(
    channel: &Channel,
    envelope: &[u8],
    serving: bool,
    since: Instant,
) -> anyhow::Result<Duration> {
    let mut client = CryptoServiceClient::new(channel.clone());
    loop {
        let result = client
            .decrypt(pb::DecryptRequest {
                tenant_id: "bench".into(),
                envelope: envelope.to_vec(),
                encryption_context: Default::default(),
                justification: None,
            })
            .await;
        match result {
            Ok(_) if serving => return Ok(since.elapsed()),
            Err(status) if !serving && status.code() == tonic::Code::FailedPrecondition => {
                return Ok(since.elapsed());
            }
            Err(status) if serving && status.code() == tonic::Code::FailedPrecondition => {}
            Ok(_) => {}
            Err(status) => anyhow::bail!("unexpected error: {status:?}"),
        }
        if since.elapsed() > ROUND_BOUND {
            anyhow::bail!(
                "the replica did not {} within {ROUND_BOUND:?}",
                if serving { "serve" } else { "deny" }
            );
        }
    }
}

pub(crate) async fn create_database(admin_url: &str) -> anyhow::Result<(String, String)> {
    let mut admin = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(admin_url),
    )
    .await
    .context("PostgreSQL did not answer within 10 s")?
    .context("connect to PostgreSQL (set --postgres-url or KEYWARD_TEST_POSTGRES_URL)")?;
    let name = format!(
        "kw_bench_{}",
        &keyward_envelope::KeyId::generate()?.to_string()[..16]
    );
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .context("CREATE DATABASE")?;
    admin.close().await?;
    let (scheme, rest) = admin_url
        .split_once("://")
        .context("the PostgreSQL URL has no scheme")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    Ok((
        name.clone(),
        format!("{scheme}://{authority}/{name}{query}"),
    ))
}

pub(crate) async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}
