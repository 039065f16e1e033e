//! `keyward-bench revocation --events`: the revocation window of the SQS key-event path
//! (`[aws_events]`, docs/adr/0013-key-event-sources.md; issue #20, item 5), on the AWS emulator
//! (moto serves SQS and KMS on one port).
//!
//! 1. One in-process server with the AWS provider on moto's KMS, the key-state monitor off
//!    (interval 0) and the cache TTL 300 s, so that only an event can revoke within the run;
//!    `[aws_events]` long-polls a moto SQS queue (the default 20 s long poll).
//! 2. `--tenants` (default 20) tenants, each registered on its own moto KMS key and warmed with one
//!    Encrypt.
//! 3. `--disable` times (default 10), one after the other, after a random pause of up to
//!    [`MAX_PAUSE`]: a random tenant not yet disabled has its key disabled in moto, then its
//!    `DisableKey` event (CloudTrail-shaped, through EventBridge:
//!    `keyward_test_support::aws::kms_event`, as tests/e2e/tests/aws_events.rs sends it) is sent
//!    to the queue. From just before the send, Decrypt of that tenant is polled every [`POLL`]
//!    (at most [`BOUND`]) until it is refused with `KEY_REVOKED`, then [`AFTER_REFUSAL`] more
//!    times.
//!
//! Reported: the window (send to the first refusal) p50/p99/max; the plaintexts served for
//! Decrypts that started after the refusal was recorded (the binding's `state_changed_at_ms`).
//! Targets (issue #20): window p99 <= 2 s, every disabled key refused, 0 such plaintexts; the
//! command fails when one is missed.
//!
//! The server's SQS client takes its credentials from the standard AWS chain; the command runs
//! itself again with the emulator's fake credentials in its environment (never the caller's).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use keyward_envelope::{EncryptionContext, TenantId};
use keyward_kms::ProviderRegistry;
use keyward_proto::v1::tenant_service_client::TenantServiceClient;
use keyward_server::{Config, Keyring, Providers};
use keyward_store::Scope;
use keyward_test_support::aws::{MotoServer, kms_event};
use tonic::transport::Channel;

use super::at_scale::{Rng, stats, wall_us};
use crate::harness;

/// Decrypt polls of a disabled tenant, from the event's send.
const POLL: Duration = Duration::from_millis(10);
/// How long a disabled tenant is polled before it counts as never refused.
const BOUND: Duration = Duration::from_secs(10);
/// Polls after the first refusal (a success among them that started after the refusal was
/// recorded is a plaintext served after it).
const AFTER_REFUSAL: u32 = 10;
/// Longest random pause before each disable.
const MAX_PAUSE: Duration = Duration::from_millis(1500);
/// The target (#20): window p99 from the message's arrival.
const TARGET_P99: Duration = Duration::from_secs(2);
/// Set in the environment of the run that has the emulator's credentials.
const CHILD: &str = "KEYWARD_BENCH_EMULATOR_CREDENTIALS";

/// What one disabled tenant saw.
#[derive(Debug)]
struct Event {
    tenant: String,
    /// Its Decrypt still served after the disable, before the event was sent (only the event
    /// can revoke: the monitor is off and the cached key outlives the run).
    served_before_event: bool,
    /// Send to the end of the first refused Decrypt (`None`: not within [`BOUND`]).
    window: Option<Duration>,
    /// Send to the binding's `state_changed_at_ms` (`None`: the binding is not revoked).
    recorded: Option<Duration>,
    /// Decrypts served that started after the refusal was recorded: how long after.
    served_after: Vec<Duration>,
    other_errors: u64,
}

pub(super) async fn run(
    tenants: Option<u64>,
    quick: bool,
    disable: usize,
    seed: Option<u64>,
    json: &Path,
) -> anyhow::Result<()> {
    if std::env::var_os(CHILD).is_none() {
        return rerun_with_emulator_credentials();
    }
    let (tenants, disable) = if quick {
        (5, 3)
    } else {
        (tenants.unwrap_or(20), disable)
    };
    anyhow::ensure!(tenants > 0, "--tenants must be at least 1");
    anyhow::ensure!(
        disable as u64 <= tenants,
        "--disable {disable} is more than --tenants {tenants}"
    );
    let seed = seed.unwrap_or_else(|| wall_us() as u64);
    eprintln!(
        "revocation by key events: {tenants} tenants on moto KMS keys, {disable} DisableKey events, seed {seed}"
    );

    let moto = MotoServer::start();
    let queue = moto.create_queue("keyward-key-events", 5).await;
    let dir = tempfile::tempdir()?;
    let mut config = harness::server_config(dir.path())?;
    config.cache.ttl_seconds = 300;
    config.revocation.monitor_interval_seconds = 0;
    let registry = ProviderRegistry::default()
        .with(Arc::new(keyward_kms_aws::AwsKmsFactory))
        .with_event_source(Arc::new(keyward_kms_aws::AwsEventsFactory));
    // `[aws_events]` as an operator writes it, with the emulator's endpoint; the default long poll.
    let section = format!(
        "[aws_events]\nqueue_url = \"{queue}\"\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
        moto.endpoint
    );
    config
        .providers
        .extend(Config::from_toml_str(&section, &registry)?.providers);
    let settings = config.resolve()?;
    let providers = Providers::default().with(Arc::new(moto.provider().await));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = keyward_server::ServerBuilder::new(&settings)
        .registry(registry)
        .providers(providers)
        .start(async {
            let _ = stopped.await;
        })
        .await?;
    let keyring = running.keyring().clone();

    let setup = Instant::now();
    let channel = Channel::from_shared(format!("http://{}", running.local_addr()))?
        .connect()
        .await?;
    let mut admin = TenantServiceClient::new(channel);
    let ctx = EncryptionContext::empty();
    let mut warm = Vec::new();
    for i in 0..tenants {
        let name = format!("t{i:03}");
        let key = moto.create_symmetric_key().await;
        harness::onboard(&mut admin, &name, harness::aws_key(key.clone())).await?;
        let tenant = TenantId::try_from(name.as_str())?;
        let (envelope, _) = keyring
            .encrypt(&tenant, &Scope::default_scope(), &ctx, b"warm")
            .await
            .with_context(|| format!("warm {name}"))?;
        warm.push((name, key, envelope));
    }
    let setup = setup.elapsed();
    eprintln!("setup: {:.1} s", setup.as_secs_f64());

    let mut rng = Rng(seed);
    let mut chosen: Vec<usize> = Vec::new();
    let mut events = Vec::new();
    while chosen.len() < disable {
        let i = rng.below(tenants) as usize;
        if chosen.contains(&i) {
            continue;
        }
        chosen.push(i);
        let pause = Duration::from_millis(rng.below(MAX_PAUSE.as_millis() as u64));
        tokio::time::sleep(pause).await;
        let (name, key, envelope) = &warm[i];
        moto.disable_key(key).await;
        let tenant = TenantId::try_from(name.as_str())?;
        let served_before_event = keyring.decrypt(&tenant, envelope, &ctx).await.is_ok();
        let event = kms_event("DisableKey", key).to_string();
        let sent = Instant::now();
        let sent_us = wall_us();
        moto.send_message(&queue, &event).await;
        let mut event = poll(&keyring, name, envelope, sent, sent_us).await?;
        event.served_before_event = served_before_event;
        eprintln!(
            "  {name}: refused {} after the send",
            event
                .window
                .map_or("never".to_owned(), |w| format!("{} ms", w.as_millis()))
        );
        events.push(event);
    }
    let _ = stop.send(());
    let _ = running.wait().await;
    report(tenants, seed, setup, &events, json)
}

/// Polls `name`'s Decrypt from the event's send until refused (then [`AFTER_REFUSAL`] more), at
/// most [`BOUND`]; then reads when the binding's refusal was recorded.
async fn poll(
    keyring: &Arc<Keyring>,
    name: &str,
    envelope: &[u8],
    sent: Instant,
    sent_us: i64,
) -> anyhow::Result<Event> {
    let tenant = TenantId::try_from(name)?;
    let ctx = EncryptionContext::empty();
    let mut event = Event {
        tenant: name.to_owned(),
        served_before_event: false,
        window: None,
        recorded: None,
        served_after: Vec::new(),
        other_errors: 0,
    };
    // (started, µs since the epoch; served)
    let mut polls: Vec<(i64, bool)> = Vec::new();
    let mut after = 0;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while sent.elapsed() < BOUND && after <= AFTER_REFUSAL {
        tick.tick().await;
        let started_us = wall_us();
        let served = match keyring.decrypt(&tenant, envelope, &ctx).await {
            Ok(_) => true,
            Err(e) if e.reason() == "KEY_REVOKED" => {
                if event.window.is_none() {
                    event.window = Some(sent.elapsed());
                }
                false
            }
            Err(e) => {
                event.other_errors += 1;
                eprintln!("  {name}: unexpected decrypt error: {e}");
                false
            }
        };
        polls.push((started_us, served));
        if event.window.is_some() {
            after += 1;
        }
    }
    let state = keyring.tenant_state(&tenant).await?;
    let binding = state
        .bindings
        .iter()
        .rev()
        .find(|b| b.deactivated_at_ms.is_none())
        .context("the tenant has no current binding")?;
    if binding.state == keyward_store::KekState::Revoked {
        let changed_us = binding.state_changed_at_ms * 1000;
        event.recorded = Some(Duration::from_micros(
            u64::try_from(changed_us - sent_us).unwrap_or(0),
        ));
        // Started after the refusal was recorded: in a later millisecond than its record.
        let later = changed_us + 1000;
        event.served_after = polls
            .iter()
            .filter(|(started, served)| *served && *started >= later)
            .map(|(started, _)| Duration::from_micros((started - changed_us) as u64))
            .collect();
    } else {
        eprintln!("  {name}: binding is {} at the end", binding.state.as_str());
    }
    Ok(event)
}

/// Runs this command again with the emulator's fake credentials (and none of the caller's AWS
/// settings) in its environment: the server's SQS client reads the standard chain.
fn rerun_with_emulator_credentials() -> anyhow::Result<()> {
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(CHILD, "1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ROLE_ARN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .status()
        .context("run keyward-bench again with the emulator's credentials")?;
    anyhow::ensure!(status.success(), "revocation --events: {status}");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(
    tenants: u64,
    seed: u64,
    setup: Duration,
    events: &[Event],
    json: &Path,
) -> anyhow::Result<()> {
    let windows: Vec<Option<Duration>> = events.iter().map(|e| e.window).collect();
    let recorded: Vec<Option<Duration>> = events.iter().map(|e| e.recorded).collect();
    let (p50, p99, max) = stats(&windows);
    let (rec_p50, _, rec_max) = stats(&recorded);
    let refused = windows.iter().flatten().count();
    let served_after: Vec<Duration> = events
        .iter()
        .flat_map(|e| e.served_after.iter().copied())
        .collect();
    let other_errors: u64 = events.iter().map(|e| e.other_errors).sum();
    let before = events.iter().filter(|e| e.served_before_event).count();

    let mut text = String::from(
        "Revocation by key events (SQS `[aws_events]`, default 20 s long poll; monitor off, cache TTL 300 s; AWS emulator)\n\n\
         | tenants | DisableKey events | window p50 | window p99 | window max | refused/disabled | recorded after the send (p50 / max) | plaintexts after the refusal was recorded |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    text.push_str(&format!(
        "| {tenants} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {refused}/{} | {:.0} / {:.0} ms | {} |\n",
        events.len(),
        ms(p50),
        ms(p99),
        ms(max),
        events.len(),
        ms(rec_p50),
        ms(rec_max),
        served_after.len(),
    ));
    text.push_str("\nWindow: from just before the event's SendMessage to the end of the first Decrypt refused with KEY_REVOKED (polled every 10 ms).\n");
    let targets = [
        (
            "each key still served after its disable, before its event (only the event revokes)"
                .to_owned(),
            before == events.len(),
            format!("{before}/{}", events.len()),
        ),
        (
            format!("window p99 <= {} s from the send", TARGET_P99.as_secs()),
            refused == events.len() && p99 <= TARGET_P99,
            format!("{:.0} ms", ms(p99)),
        ),
        (
            "every disabled key refused".to_owned(),
            refused == events.len(),
            format!("{refused}/{}", events.len()),
        ),
        (
            "0 plaintexts for Decrypts started after the refusal was recorded".to_owned(),
            served_after.is_empty(),
            served_after.len().to_string(),
        ),
    ];
    text.push_str("\nTargets\n");
    for (what, met, got) in &targets {
        text.push_str(&format!(
            "- [{}] {what} (got {got})\n",
            if *met { "met" } else { "NOT MET" }
        ));
    }
    println!("{text}");
    harness::write_json(
        json,
        &serde_json::json!({
            "revocation_events": {
                "tenants": tenants,
                "events": events.len(),
                "seed": seed,
                "setup_seconds": setup.as_secs_f64(),
                "cache_ttl_seconds": 300,
                "monitor_interval_seconds": 0,
                "window_p50_ms": ms(p50),
                "window_p99_ms": ms(p99),
                "window_max_ms": ms(max),
                "refused": refused,
                "per_event": events.iter().map(|e| serde_json::json!({
                    "tenant": e.tenant,
                    "served_before_event": e.served_before_event,
                    "window_ms": e.window.map(ms),
                    "recorded_after_send_ms": e.recorded.map(ms),
                    "plaintexts_after_refusal": e.served_after.len(),
                })).collect::<Vec<_>>(),
                "windows_ms": windows.iter().map(|w| w.map(ms)).collect::<Vec<_>>(),
                "plaintexts_after_refusal": served_after.len(),
                "other_errors": other_errors,
                "targets": targets.iter().map(|(what, met, got)| serde_json::json!({
                    "target": what, "met": met, "got": got,
                })).collect::<Vec<_>>(),
            }
        }),
    )?;
    let missed: Vec<&str> = targets
        .iter()
        .filter(|t| !t.1)
        .map(|t| t.0.as_str())
        .collect();
    anyhow::ensure!(missed.is_empty(), "targets missed: {}", missed.join("; "));
    Ok(())
}
