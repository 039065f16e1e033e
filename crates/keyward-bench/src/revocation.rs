//! `keyward-bench revocation` measures the revocation window. With `--tenants N` (or
//! `--quick`): the key-state monitor with many tenants, each with its own key (`at_scale`).
//! With `--events`: the SQS key-event path (`[aws_events]`, `events`).
//! Without: the single-tenant scenarios (docs/revocation.md,
//! docs/benchmarks.md): continuous decrypt load on one tenant whose key lives in
//! the AWS KMS emulator; the key is then disabled at the KMS (with the key-state
//! monitor at 1 s and at 10 s) or revoked through `RevokeKey`, and the command
//! reports the time to the first denial and how many plaintexts were served
//! after the KMS began refusing. Every scenario is bounded in time; the server
//! runs in-process on 127.0.0.1.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    tenant_service_client::TenantServiceClient,
};
use keyward_server::Providers;
use keyward_test_support::aws::MotoServer;
use tonic::transport::Channel;

use crate::harness;

mod at_scale;
mod events;
mod metered;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Warm tenants, each with its own local key: the key-state monitor's window at scale
    /// (`at_scale`). Without it (and without `--quick`): the single-tenant scenarios against
    /// the AWS KMS emulator.
    #[arg(long)]
    tenants: Option<u64>,
    /// The at-scale run CI makes: 50 tenants (+10 idle), interval 2 s, 3 keys disabled, on 1
    /// and on 3 replicas; every target checked.
    #[arg(long)]
    quick: bool,
    /// The SQS key-event path (`[aws_events]`) on the AWS emulator instead of the monitor:
    /// `--tenants` (default 20) warm tenants on their own emulator keys, `--disable` keys
    /// disabled one by one at random moments, each followed by its CloudTrail-shaped DisableKey
    /// event; the window from the send. With `--quick`: 5 tenants, 3 events (`events`).
    #[arg(long)]
    events: bool,
    #[command(flatten)]
    at_scale: at_scale::Args,
    /// Concurrent decrypt loops (single-tenant scenarios).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/revocation.json")]
    json: PathBuf,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.events {
        return events::run(
            args.tenants,
            args.quick,
            args.at_scale.disable,
            args.at_scale.seed,
            &args.json,
        )
        .await;
    }
    match (args.tenants, args.quick) {
        (None, false) => revocation(args.workers, &args.json).await,
        (tenants, quick) => {
            at_scale::run(tenants.unwrap_or(0), quick, &args.at_scale, &args.json).await
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Disable the key at the KMS; the monitor runs every `interval`.
    KmsDisable { monitor_interval: Duration },
    /// `RevokeKey` (break glass).
    Explicit,
}

impl Trigger {
    fn name(self) -> String {
        match self {
            Trigger::KmsDisable { monitor_interval } => {
                format!("KMS disable, monitor {} s", monitor_interval.as_secs())
            }
            Trigger::Explicit => "RevokeKey".to_owned(),
        }
    }
}

#[derive(Debug)]
struct Outcome {
    scenario: String,
    decrypts_per_second_before: f64,
    first_denial_after: Option<Duration>,
    served_after_trigger: u64,
    denied: u64,
}

async fn revocation(workers: usize, json: &PathBuf) -> anyhow::Result<()> {
    let moto = MotoServer::start();
    let scenarios = [
        Trigger::KmsDisable {
            monitor_interval: Duration::from_secs(1),
        },
        Trigger::KmsDisable {
            monitor_interval: Duration::from_secs(10),
        },
        Trigger::Explicit,
    ];
    let mut outcomes = Vec::new();
    for trigger in scenarios {
        eprintln!("running: {}", trigger.name());
        outcomes.push(run_scenario(&moto, trigger, workers).await?);
    }

    println!("Revocation window (cache TTL 300 s, {workers} decrypt loops, AWS KMS emulator)");
    println!(
        "| scenario | decrypts/s before | time to first denial | plaintexts served after the trigger | denied |"
    );
    println!("|---|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            o.scenario,
            o.decrypts_per_second_before,
            o.first_denial_after
                .map_or("none within the bound".to_owned(), |d| format!(
                    "{} ms",
                    d.as_millis()
                )),
            o.served_after_trigger,
            o.denied
        );
    }
    let results: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "scenario": o.scenario,
                "decrypts_per_second_before": o.decrypts_per_second_before,
                "first_denial_after_ms": o.first_denial_after.map(|d| d.as_millis() as u64),
                "served_after_trigger": o.served_after_trigger,
                "denied": o.denied,
            })
        })
        .collect();
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        json,
        serde_json::to_vec_pretty(&serde_json::json!({ "revocation": results }))?,
    )?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

async fn run_scenario(
    moto: &MotoServer,
    trigger: Trigger,
    workers: usize,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let mut config = harness::server_config(dir.path())?;
    config.cache.ttl_seconds = 300;
    config.revocation.monitor_interval_seconds = match trigger {
        Trigger::KmsDisable { monitor_interval } => monitor_interval.as_secs(),
        Trigger::Explicit => 0,
    };
    config.revocation.monitor_max_checks_per_second = 100;
    let settings = config.resolve()?;
    let providers = Providers::default()
        .with(Arc::new(LocalProvider::open(&settings.local_kms_dir)?))
        .with(Arc::new(moto.provider().await));
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = keyward_server::ServerBuilder::new(&settings)
        .providers(providers)
        .start(async {
            let _ = stopped.await;
        })
        .await?;
    let channel = Channel::from_shared(format!("http://{}", running.local_addr()))?
        .connect()
        .await?;

    let key_arn = moto.create_symmetric_key().await;
    let mut tenants = TenantServiceClient::new(channel.clone());
    harness::onboard(&mut tenants, "bench", harness::aws_key(key_arn.clone()))
        .await
        .context("register the emulator key")?;
    let mut crypto = CryptoServiceClient::new(channel.clone());
    let envelope = crypto
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

    // Continuous load; each response is recorded with its completion time.
    let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let running_flag = Arc::new(AtomicBool::new(true));
    let mut loops = Vec::new();
    for _ in 0..workers {
        let mut client = CryptoServiceClient::new(channel.clone());
        let (log, flag, envelope) = (log.clone(), running_flag.clone(), envelope.clone());
        loops.push(tokio::spawn(async move {
            while flag.load(Ordering::Relaxed) {
                let ok = client
                    .decrypt(pb::DecryptRequest {
                        tenant_id: "bench".into(),
                        envelope: envelope.clone(),
                        encryption_context: Default::default(),
                        justification: None,
                    })
                    .await
                    .is_ok();
                if let Ok(mut log) = log.lock() {
                    log.push((Instant::now(), ok));
                }
            }
        }));
    }

    let load_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let trigger_at = Instant::now();
    match trigger {
        Trigger::KmsDisable { .. } => moto.disable_key(&key_arn).await,
        Trigger::Explicit => {
            tenants
                .revoke_key(pb::RevokeKeyRequest {
                    tenant_id: "bench".into(),
                    reason: "benchmark".into(),
                    requested_by: "keyward-bench".into(),
                })
                .await?;
        }
    }
    // Bounded wait for the first denial: two monitor intervals plus slack.
    let bound = match trigger {
        Trigger::KmsDisable { monitor_interval } => monitor_interval * 2 + Duration::from_secs(3),
        Trigger::Explicit => Duration::from_secs(3),
    };
    while trigger_at.elapsed() < bound {
        let denied = log
            .lock()
            .map(|log| log.iter().any(|(t, ok)| *t > trigger_at && !ok))
            .unwrap_or(false);
        if denied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    running_flag.store(false, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    let _ = stop_server.send(());
    let _ = running.wait().await;

    let log = log.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let before = log.iter().filter(|(t, ok)| *t <= trigger_at && *ok).count();
    let warm_window = trigger_at.duration_since(load_start).as_secs_f64();
    Ok(Outcome {
        scenario: trigger.name(),
        decrypts_per_second_before: before as f64 / warm_window,
        first_denial_after: log
            .iter()
            .filter(|(t, ok)| *t > trigger_at && !ok)
            .map(|(t, _)| t.duration_since(trigger_at))
            .min(),
        served_after_trigger: log.iter().filter(|(t, ok)| *t > trigger_at && *ok).count() as u64,
        denied: log.iter().filter(|(_, ok)| !ok).count() as u64,
    })
}
