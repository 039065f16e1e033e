//! `keyward-bench soak`: a bounded load test (issue #10, part 7), not part of CI.
//!
//! Keyward in process with tenants whose keys live in the AWS KMS emulator, reached through a
//! TCP proxy that can cut the KMS off. For `--minutes` (default 10), `--workers` loops run
//! Encrypt + Decrypt round trips of 1 KiB over random tenants while the schedule
//!
//! * revokes a random tenant (`RevokeKey`) every 30 s and restores it (`RestoreKey`) 15 s later;
//! * cuts the KMS off (every connection reset, new ones refused) for `--outage-seconds`
//!   (default 45, below the cache TTL of 120 s) in the middle of the run, with no revocation
//!   or restoration scheduled during it.
//!
//! Every minute it records the round trips, p50/p99 latency, resident memory (VmRSS of this
//! process: server and clients) and the errors, split into expected ones (FAILED_PRECONDITION
//! for a tenant between its revocation and its restoration; UNAVAILABLE while the KMS is cut
//! off and for [`OUTAGE_GRACE`] after it is back, for tenants whose keys are not cached) and all
//! others. Latencies go into a fixed-size histogram per minute, so the bench's own memory does
//! not grow with the number of requests. Verdicts printed:
//! zero unexpected errors; memory flat (last minute's RSS within 10 % of minute 2's); p99 stable
//! (the worst minute's p99 within 3 × the median minute's).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use keyward_kms::local::LocalProvider;
use keyward_kms_aws::AwsKmsProvider;
use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    tenant_service_client::TenantServiceClient,
};
use keyward_server::Providers;
use keyward_test_support::aws::MotoServer;
use tokio::{net::TcpListener, sync::watch};
use tonic::Code;

use crate::harness::{self, Server};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Length of the run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Tenants (each with its own key in the emulator).
    #[arg(long, default_value_t = 20)]
    tenants: usize,
    /// Concurrent Encrypt + Decrypt loops.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// How long the KMS is cut off, in the middle of the run.
    #[arg(long, default_value_t = 45)]
    outage_seconds: u64,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/soak.json")]
    json: PathBuf,
}

/// A TCP proxy in front of the emulator; `down` resets every connection and refuses new ones.
async fn kms_proxy(upstream: String, down: watch::Receiver<bool>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut down = down.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if *down.borrow() {
                    return; // dropped: the client sees the connection close
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = down.wait_for(|d| *d) => {}
                }
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// After the KMS is back, UNAVAILABLE is still expected until the monitor's next probe (every
/// 10 s) has seen the keys answer again.
const OUTAGE_GRACE: Duration = Duration::from_secs(15);

/// Latencies in microseconds, log-linear: exact below 128 µs, then 64 buckets per power of
/// two (each within 1.6 % of its values). Fixed size (≈ 30 KB), whatever the request count.
struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl Histogram {
    const SUB_BITS: u32 = 6;
    const LINEAR: u64 = 2 << Self::SUB_BITS;
    const BUCKETS: usize =
        ((64 - Self::SUB_BITS) as usize) * (1 << Self::SUB_BITS) + Self::LINEAR as usize / 2;

    fn index(v: u64) -> usize {
        if v < Self::LINEAR {
            return v as usize;
        }
        let octave = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let shift = octave - Self::SUB_BITS;
        (shift as usize) * (1 << Self::SUB_BITS) + (v >> shift) as usize
    }

    /// The smallest value that falls into bucket `i`.
    fn value(i: usize) -> u64 {
        let sub = 1usize << Self::SUB_BITS;
        if i < Self::LINEAR as usize {
            return i as u64;
        }
        let shift = i / sub - 1;
        ((i % sub + sub) as u64) << shift
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
    }

    /// The lower bound of the bucket holding the `p` quantile (0 when empty).
    fn quantile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64 * p) as u64).min(self.total - 1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Self::value(i);
            }
        }
        0
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; Self::BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

#[derive(Default)]
struct Minute {
    latencies_us: Histogram,
    /// FAILED_PRECONDITION for a tenant between its revocation and its restoration.
    revoked_denials: u64,
    /// UNAVAILABLE while the KMS is cut off (or within [`OUTAGE_GRACE`] after).
    outage_unavailable: u64,
    unexpected: HashMap<String, u64>,
    rss_kib: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let moto = MotoServer::start();
    let (set_down, down) = watch::channel(false);
    let proxy = kms_proxy(
        moto.provider_config()
            .endpoint_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the emulator has no endpoint"))?
            .trim_start_matches("http://")
            .to_owned(),
        down,
    )
    .await?;
    let mut aws_config = moto.provider_config();
    aws_config.endpoint_url = Some(proxy.clone());
    aws_config.sts_endpoint_url = Some(proxy);
    let aws = AwsKmsProvider::with_sdk_config(aws_config, moto.sdk_config().await).await?;

    let dir = tempfile::tempdir()?;
    let local = LocalProvider::open(dir.path().join("local-kms"))?;
    let providers = Providers::default()
        .with(Arc::new(local))
        .with(Arc::new(aws));
    let server = Server::start(dir.path(), providers, |c| {
        c.cache.ttl_seconds = 120;
        c.revocation.monitor_interval_seconds = 10;
    })
    .await?;
    let conns = harness::channels(server.addr(), 4).await?;
    let mut admin = TenantServiceClient::new(conns[0].clone());
    let mut tenants = Vec::new();
    for i in 0..args.tenants {
        let tenant = format!("soak-{i}");
        let key_arn = moto.create_symmetric_key().await;
        harness::onboard(&mut admin, &tenant, harness::aws_key(key_arn)).await?;
        tenants.push(tenant);
    }
    let tenants = Arc::new(tenants);

    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let minutes = (args.minutes.ceil() as usize).max(1);
    let outage_start = total / 2 - Duration::from_secs(args.outage_seconds / 2);
    let outage_end = outage_start + Duration::from_secs(args.outage_seconds);
    let stats: Arc<Mutex<Vec<Minute>>> = Arc::new(Mutex::new(
        (0..minutes).map(|_| Minute::default()).collect(),
    ));
    // Revoked tenants, with the instant their restoration was acknowledged (None: still revoked).
    let revoked: Arc<Mutex<HashMap<String, Option<Instant>>>> = Arc::default();
    let start = Instant::now();
    let running = Arc::new(AtomicBool::new(true));

    let mut loops = Vec::new();
    for w in 0..args.workers {
        let mut client = CryptoServiceClient::new(conns[w % conns.len()].clone());
        let (tenants, stats, revoked, running) = (
            tenants.clone(),
            stats.clone(),
            revoked.clone(),
            running.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut n = w;
            while running.load(Ordering::Relaxed) {
                n = n.wrapping_mul(2_654_435_761).wrapping_add(1);
                let tenant = &tenants[n % tenants.len()];
                let began = Instant::now();
                let result = round_trip(&mut client, tenant).await;
                let minute = (start.elapsed().as_secs() / 60) as usize;
                let Ok(mut stats) = stats.lock() else { return };
                let Some(slot) = stats.get_mut(minute) else {
                    continue;
                };
                match result {
                    Ok(()) => slot.latencies_us.record(began.elapsed().as_micros() as u64),
                    Err(status) => {
                        let grace = Duration::from_secs(1);
                        let now = start.elapsed();
                        let in_outage = now >= outage_start && now <= outage_end + OUTAGE_GRACE;
                        let revoked_denial = status.code() == Code::FailedPrecondition
                            && revoked.lock().is_ok_and(|r| {
                                r.get(tenant.as_str()).is_some_and(|restored| {
                                    restored.is_none_or(|t| t.elapsed() < grace)
                                })
                            });
                        if revoked_denial {
                            slot.revoked_denials += 1;
                        } else if in_outage && status.code() == Code::Unavailable {
                            slot.outage_unavailable += 1;
                        } else {
                            *slot
                                .unexpected
                                .entry(format!("{:?}: {}", status.code(), status.message()))
                                .or_default() += 1;
                        }
                    }
                }
            }
        }));
    }

    // The schedule: revoke / restore every 30 s outside the outage; the outage; RSS per minute.
    let mut next_revoke = Duration::from_secs(20);
    let mut outage_done = false;
    let mut log = Vec::new();
    let mut n = 7usize;
    while start.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = start.elapsed();
        if let Ok(mut stats) = stats.lock()
            && let Some(slot) = stats.get_mut((now.as_secs() / 60) as usize)
        {
            slot.rss_kib = slot.rss_kib.max(vm_rss_kib());
        }
        if !outage_done && now >= outage_start && !*set_down.borrow() {
            let _ = set_down.send(true);
            log.push(format!("{:>6.1} s: KMS cut off", now.as_secs_f64()));
        }
        if !outage_done && now >= outage_end {
            let _ = set_down.send(false);
            outage_done = true;
            log.push(format!("{:>6.1} s: KMS back", now.as_secs_f64()));
        }
        let in_outage_window = now + Duration::from_secs(16) >= outage_start
            && now <= outage_end + Duration::from_secs(5);
        if now >= next_revoke && !in_outage_window {
            next_revoke = now + Duration::from_secs(30);
            // A tenant that is not revoked at the moment (restorations take 15 s).
            let tenant = {
                let mut r = revoked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                let tenant = loop {
                    n = n.wrapping_mul(2_654_435_761).wrapping_add(3);
                    let t = &tenants[n % tenants.len()];
                    if !matches!(r.get(t.as_str()), Some(None)) {
                        break t.clone();
                    }
                };
                r.insert(tenant.clone(), None);
                tenant
            };
            admin
                .revoke_key(pb::RevokeKeyRequest {
                    tenant_id: tenant.clone(),
                    reason: "soak".into(),
                    requested_by: "keyward-bench".into(),
                })
                .await?;
            log.push(format!(
                "{:>6.1} s: revoked {tenant}",
                start.elapsed().as_secs_f64()
            ));
            let (mut admin, revoked) = (admin.clone(), revoked.clone());
            let at = start.elapsed().as_secs_f64() + 15.0;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let ok = admin
                    .restore_key(pb::RestoreKeyRequest {
                        tenant_id: tenant.clone(),
                        reason: "soak".into(),
                        requested_by: "keyward-bench".into(),
                        binding_id: 0,
                    })
                    .await
                    .is_ok();
                if let Ok(mut r) = revoked.lock() {
                    r.insert(tenant.clone(), Some(Instant::now()));
                }
                if !ok {
                    eprintln!("{at:>6.1} s: restoring {tenant} FAILED");
                }
            });
        }
    }
    running.store(false, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    server.stop().await?;

    let stats = std::mem::take(&mut *stats.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    println!(
        "Soak: {:.0} min, {} tenants (AWS KMS emulator through a proxy), {} loops of Encrypt + Decrypt 1 KiB, \
         KMS cut off {:.0}-{:.0} s, revoke/restore every 30 s",
        args.minutes,
        args.tenants,
        args.workers,
        outage_start.as_secs_f64(),
        outage_end.as_secs_f64()
    );
    println!(
        "| minute | round trips | p50 | p99 | RSS MiB | revoked-tenant denials (expected) | UNAVAILABLE in the outage (expected) | unexpected errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (i, m) in stats.iter().enumerate() {
        let lat = &m.latencies_us;
        let unexpected: u64 = m.unexpected.values().sum();
        println!(
            "| {} | {} | {} µs | {} µs | {:.0} | {} | {} | {} |",
            i + 1,
            lat.total,
            lat.quantile(0.5),
            lat.quantile(0.99),
            m.rss_kib as f64 / 1024.0,
            m.revoked_denials,
            m.outage_unavailable,
            unexpected
        );
        for (what, count) in &m.unexpected {
            println!("|   | unexpected: {what} × {count} ||||||| ");
        }
        rows.push(serde_json::json!({
            "minute": i + 1,
            "round_trips": lat.total,
            "p50_us": lat.quantile(0.5),
            "p99_us": lat.quantile(0.99),
            "rss_kib": m.rss_kib,
            "revoked_denials": m.revoked_denials,
            "outage_unavailable": m.outage_unavailable,
            "unexpected_errors": m.unexpected,
        }));
    }
    for line in &log {
        eprintln!("{line}");
    }
    let unexpected: u64 = stats.iter().flat_map(|m| m.unexpected.values()).sum();
    let rss: Vec<u64> = stats.iter().map(|m| m.rss_kib).filter(|r| *r > 0).collect();
    let memory_flat = match (rss.get(1), rss.last()) {
        (Some(&second), Some(&last)) => (last as f64) <= second as f64 * 1.10,
        _ => false,
    };
    let mut p99s: Vec<u64> = rows
        .iter()
        .filter_map(|r| r["p99_us"].as_u64())
        .filter(|p| *p > 0)
        .collect();
    p99s.sort_unstable();
    let p99_stable = p99s
        .last()
        .zip(p99s.get(p99s.len() / 2))
        .is_some_and(|(worst, median)| *worst <= median * 3);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "\nzero unexpected errors: {} ({unexpected})",
        verdict(unexpected == 0)
    );
    println!(
        "memory flat (last minute within 10 % of minute 2): {}",
        verdict(memory_flat)
    );
    println!(
        "p99 stable (worst minute within 3 × the median minute): {}",
        verdict(p99_stable)
    );
    harness::write_json(
        &args.json,
        &serde_json::json!({
            "soak": {
                "minutes": args.minutes,
                "tenants": args.tenants,
                "workers": args.workers,
                "outage_s": [outage_start.as_secs_f64(), outage_end.as_secs_f64()],
                "per_minute": rows,
                "events": log,
                "unexpected_errors": unexpected,
                "memory_flat": memory_flat,
                "p99_stable": p99_stable,
            }
        }),
    )?;
    Ok(())
}

async fn round_trip(
    client: &mut CryptoServiceClient<tonic::transport::Channel>,
    tenant: &str,
) -> Result<(), tonic::Status> {
    let plaintext = vec![0x5a; 1024];
    let envelope = client
        .encrypt(pb::EncryptRequest {
            tenant_id: tenant.to_owned(),
            plaintext: plaintext.clone(),
            encryption_context: Default::default(),
            scope: String::new(),
            justification: None,
        })
        .await?
        .into_inner()
        .envelope;
    let got = client
        .decrypt(pb::DecryptRequest {
            tenant_id: tenant.to_owned(),
            envelope,
            encryption_context: Default::default(),
            justification: None,
        })
        .await?
        .into_inner()
        .plaintext;
    if got != plaintext {
        return Err(tonic::Status::data_loss("round trip returned other bytes"));
    }
    Ok(())
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn histogram_buckets_are_contiguous_and_within_two_percent() {
        let mut previous = 0;
        for v in (0..200_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i < Histogram::BUCKETS, "{v}");
            assert!(i >= previous, "monotonic at {v}");
            assert!(i <= previous + 1 || v > 200_000, "contiguous at {v}");
            previous = i;
            let low = Histogram::value(i);
            assert!(
                low <= v && (v - low) as f64 <= v as f64 * 0.016,
                "{v} -> {low}"
            );
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.total, 1000);
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((490..=501).contains(&p50), "{p50}");
        assert!((975..=991).contains(&p99), "{p99}");
    }
}
