//! `keyward-bench peers`: Keyward against its peers in the same invocation (issue #7,
//! scenario 6): the AWS Encryption SDK for Python with its caching cryptographic materials
//! manager against the same AWS KMS emulator, and OpenBao's Transit engine (`bao server -dev`)
//! over its HTTP API. Every side does 1 KiB encrypt + decrypt round trips in a closed loop at
//! the same concurrency, with warm caches; Keyward is driven three times: by the Rust (tonic)
//! client, by the same Python process model as the peers (grpcio, threads), and by the Python
//! client (clients/python) with its batches (`encrypt_many`/`decrypt_many`, items/s).
//! OpenBao is skipped when `bao` did not install.
//!
//! The peers run from `target/bench-venv` (scripts/bench-peers-setup); the driver is
//! `crates/keyward-bench/peers/peers.py`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use keyward_proto::v1::tenant_service_client::TenantServiceClient;
use keyward_server::Providers;
use keyward_test_support::aws::MotoServer;

use crate::harness::{self, Server, Until};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Concurrent client loops on every side.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured seconds per side and round (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds: every side runs once per round, in turn, and its best round is kept (noise on a
    /// shared machine only slows a side down; alternating spreads it over all sides).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The virtual environment with the peers (scripts/bench-peers-setup).
    #[arg(long, default_value = "target/bench-venv")]
    venv: PathBuf,
    /// Items per `encrypt_many`/`decrypt_many` call of the Python client's side.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/peers.json")]
    json: PathBuf,
}

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/peers.py")
}

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

/// Runs one peers.py subcommand and parses its JSON line.
fn python(venv: &Path, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(venv.join("bin/python"))
        .arg(driver())
        .args(args)
        .output()
        .with_context(|| format!("run {}", venv.join("bin/python").display()))?;
    anyhow::ensure!(
        out.status.success(),
        "peers.py {} failed: {}",
        args.first().map_or("", String::as_str),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout
        .lines()
        .last()
        .ok_or_else(|| anyhow::anyhow!("peers.py printed nothing"))?;
    Ok(serde_json::from_str(line)?)
}

fn rate(v: &serde_json::Value) -> f64 {
    v["round_trips_per_s"].as_f64().unwrap_or(0.0)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.venv.join("bin/python").exists(),
        "{} has no peers: run scripts/bench-peers-setup first",
        args.venv.display()
    );
    // OpenBao does not install everywhere (scripts/bench-peers-setup says so): without it, its
    // side is skipped and said to be.
    let with_bao = args.venv.join("bin/bao").exists();
    if !with_bao {
        eprintln!(
            "peers: no {}: OpenBao skipped",
            args.venv.join("bin/bao").display()
        );
    }
    let (c, secs) = (args.concurrency, args.seconds);
    let common = vec![
        "--concurrency".to_owned(),
        c.to_string(),
        "--seconds".to_owned(),
        secs.to_string(),
    ];
    let moto = MotoServer::start();

    // Keyward: defaults, its tenant's key in the same emulator.
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        Providers::default().with(Arc::new(moto.provider().await)),
        |_| {},
    )
    .await?;
    let setup = harness::channels(server.addr(), 1).await?.remove(0);
    let mut tenants = TenantServiceClient::new(setup);
    let key = harness::aws_key(moto.create_symmetric_key().await);
    harness::onboard(&mut tenants, "bench", key).await?;
    let conns = harness::channels(server.addr(), c.clamp(1, 4)).await?;
    let payload = Arc::new(vec![0x42u8; 1024]);
    let pick: harness::Pick = Arc::new(|_| ("bench".to_owned(), String::new()));
    let venv = args.venv.clone();
    let mut keyward_args = vec![
        "keyward".to_owned(),
        "--addr".to_owned(),
        server.addr().to_string(),
        "--tenant".to_owned(),
        "bench".to_owned(),
        "--proto-dir".to_owned(),
        proto_dir().display().to_string(),
    ];
    keyward_args.extend(common.clone());
    let mut client_args = vec![
        "keyward-client".to_owned(),
        "--addr".to_owned(),
        server.addr().to_string(),
        "--tenant".to_owned(),
        "bench".to_owned(),
        "--batch".to_owned(),
        args.batch.to_string(),
    ];
    client_args.extend(common.clone());
    let mut esdk_args = vec![
        "esdk".to_owned(),
        "--kms-endpoint".to_owned(),
        moto.endpoint.clone(),
        "--key-arn".to_owned(),
        moto.create_symmetric_key().await,
    ];
    esdk_args.extend(common.clone());
    let mut bao_args = vec![
        "bao".to_owned(),
        "--bao".to_owned(),
        venv.join("bin/bao").display().to_string(),
    ];
    bao_args.extend(common);
    let py = |args: Vec<String>| {
        let venv = venv.clone();
        tokio::task::spawn_blocking(move || python(&venv, &args))
    };
    let better = |best: Option<serde_json::Value>, v: serde_json::Value| match best {
        Some(b) if rate(&b) >= rate(&v) => Some(b),
        _ => Some(v),
    };

    let mut keyward_rust: Option<harness::Load> = None;
    let (mut keyward_py, mut keyward_batches, mut esdk, mut bao) = (None, None, None, None);
    for round in 1..=args.rounds.max(1) {
        eprintln!("peers: round {round}: Keyward, Rust client");
        harness::round_trips(
            &conns,
            c,
            Until::Elapsed(Duration::from_millis(500)),
            payload.clone(),
            pick.clone(),
        )
        .await?;
        let load = harness::round_trips(
            &conns,
            c,
            Until::Elapsed(Duration::from_secs_f64(secs)),
            payload.clone(),
            pick.clone(),
        )
        .await?;
        if keyward_rust
            .as_ref()
            .is_none_or(|b| load.round_trips_per_s() > b.round_trips_per_s())
        {
            keyward_rust = Some(load);
        }
        eprintln!("peers: round {round}: Keyward, Python grpcio client");
        keyward_py = better(keyward_py, py(keyward_args.clone()).await??);
        eprintln!("peers: round {round}: Keyward, Python keyward-client batches");
        keyward_batches = better(keyward_batches, py(client_args.clone()).await??);
        // The Keyward server idles (no load, monitor only) while the peers run.
        eprintln!("peers: round {round}: AWS Encryption SDK (caching CMM)");
        esdk = better(esdk, py(esdk_args.clone()).await??);
        if with_bao {
            eprintln!("peers: round {round}: OpenBao Transit");
            bao = better(bao, py(bao_args.clone()).await??);
        }
    }
    let kms_calls_keyward =
        server.keyring().stats().kek_unwraps + server.keyring().stats().kek_generates;
    server.stop().await?;
    drop(moto);
    let missing = || anyhow::anyhow!("no round ran");
    let keyward_rust = keyward_rust.ok_or_else(missing)?;
    let (keyward_py, keyward_batches, esdk) = (
        keyward_py.ok_or_else(missing)?,
        keyward_batches.ok_or_else(missing)?,
        esdk.ok_or_else(missing)?,
    );

    let batch_row = format!(
        "Keyward, Python keyward-client encrypt_many+decrypt_many ({} items/call; items/s, µs per loop)",
        args.batch
    );
    let mut rows: Vec<(&str, f64, u64, u64)> = vec![
        (
            "Keyward Encrypt+Decrypt, Rust tonic client",
            keyward_rust.round_trips_per_s(),
            keyward_rust.pct(0.5),
            keyward_rust.pct(0.99),
        ),
        (
            "Keyward Encrypt+Decrypt, Python grpcio client",
            rate(&keyward_py),
            keyward_py["p50_us"].as_u64().unwrap_or(0),
            keyward_py["p99_us"].as_u64().unwrap_or(0),
        ),
        (
            batch_row.as_str(),
            rate(&keyward_batches),
            keyward_batches["p50_us"].as_u64().unwrap_or(0),
            keyward_batches["p99_us"].as_u64().unwrap_or(0),
        ),
        (
            "AWS Encryption SDK for Python, caching CMM (in process)",
            rate(&esdk),
            esdk["p50_us"].as_u64().unwrap_or(0),
            esdk["p99_us"].as_u64().unwrap_or(0),
        ),
    ];
    if let Some(bao) = &bao {
        rows.push((
            "OpenBao Transit over HTTP/1.1, Python http.client",
            rate(bao),
            bao["p50_us"].as_u64().unwrap_or(0),
            bao["p99_us"].as_u64().unwrap_or(0),
        ));
    }
    println!(
        "Peers, same run: 1 KiB encrypt + decrypt round trips, concurrency {c}, {secs} s per side and round, best of {} alternating rounds, warm",
        args.rounds.max(1)
    );
    println!("| system | round trips/s | p50 µs | p99 µs |\n|---|---|---|---|");
    for (name, rps, p50, p99) in &rows {
        println!("| {name} | {rps:.0} | {p50} | {p99} |");
    }
    if bao.is_none() {
        println!("(OpenBao Transit: not installed, skipped)");
    }
    let mut targets: Vec<(String, bool)> = Vec::new();
    for (client, k) in [
        ("Python client", rate(&keyward_py)),
        ("Rust client", keyward_rust.round_trips_per_s()),
        (
            "Python keyward-client batches (items/s)",
            rate(&keyward_batches),
        ),
    ] {
        let e = k / rate(&esdk);
        targets.push((
            format!(">= 5 x AWS Encryption SDK (cached), Keyward via {client} (got {e:.2})"),
            e >= 5.0,
        ));
        if let Some(bao) = &bao {
            let b = k / rate(bao);
            targets.push((
                format!(">= 3 x OpenBao Transit, Keyward via {client} (got {b:.2})"),
                b >= 3.0,
            ));
        }
    }
    println!("\nTargets");
    for (name, met) in &targets {
        println!("- [{}] {name}", if *met { "met" } else { "NOT MET" });
    }
    harness::write_json(
        &args.json,
        &serde_json::json!({
            "concurrency": c, "seconds": secs, "rounds": args.rounds.max(1), "payload_bytes": 1024,
            "keyward_rust": {"round_trips_per_s": keyward_rust.round_trips_per_s(),
                "p50_us": keyward_rust.pct(0.5), "p99_us": keyward_rust.pct(0.99)},
            "keyward_kms_calls": kms_calls_keyward,
            "keyward_python": keyward_py,
            "keyward_client_batches": keyward_batches,
            "aws_encryption_sdk_cached": esdk,
            "openbao_transit": bao,
            "targets": targets.iter().map(|(name, met)| serde_json::json!({"target": name, "met": met})).collect::<Vec<_>>(),
        }),
    )
}
