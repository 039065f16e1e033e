//! `keyward-bench`: Keyward's benchmark entry point: one subcommand per scenario (a module
//! each), results as a Markdown table on stdout and JSON.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark command prints its results"
)]

use std::path::PathBuf;

mod economy;
mod harness;
mod peers;
mod profile;
mod replicas;
mod revocation;
mod scale;
mod soak;
mod stream;
mod suite;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "keyward-bench", about = "Keyward benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// KMS economy: KMS calls per million operations, single flight, cold-path latency.
    Economy {
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/economy.json")]
        json: PathBuf,
        /// Tiny sizes: the smoke run (its figures mean nothing).
        #[arg(long)]
        quick: bool,
    },
    /// Scale: many tenants and stored DEKs; warm throughput, start time, memory per DEK.
    Scale(scale::Args),
    /// Peers in the same run: AWS Encryption SDK (cached) and OpenBao Transit vs Keyward.
    Peers(peers::Args),
    /// A bounded soak: load with revocations, restorations and a KMS outage mid-run.
    Soak(soak::Args),
    /// A fixed number of sequential calls, for instruction counts under callgrind.
    Profile(profile::Args),
    /// Revocation fan-out: RevokeKey on replica A to the first denial on B and C (PostgreSQL).
    Replicas(replicas::Args),
    /// Keyward against its floors (cipher and gRPC), as ratios measured in the same run.
    Suite {
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/suite.json")]
        json: PathBuf,
        /// Cells of 0.1 s instead of 2 s: the smoke run CI makes to check the command works
        /// (its figures mean nothing).
        #[arg(long)]
        quick: bool,
    },
    /// The revocation window: time to first denial, plaintexts served after the KMS refuses.
    Revocation(revocation::Args),
    /// Streaming: EncryptStream / DecryptStream against `keyward serve` (throughput, server
    /// memory, time to first byte) with AES-GCM in process and a null streaming service.
    Stream(stream::Args),
    /// The null streaming service alone, for `stream` (prints its address; exits when its
    /// stdin closes).
    #[command(hide = true)]
    ServeNull,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `profile` counts instructions per call: on one thread, client and server interleave the
    // same way in every run, so the count is repeatable (on the multi-threaded runtime, which
    // worker wakes which moved the count by a few percent between identical runs).
    let mut runtime = match cli.command {
        Command::Profile(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Economy { json, quick } => {
            let report = economy::run(quick).await?;
            println!("{}", report.text);
            harness::write_json(&json, &report.json)
        }
        Command::Scale(args) => scale::run(args).await,
        Command::Peers(args) => peers::run(args).await,
        Command::Replicas(args) => replicas::run(args).await,
        Command::Profile(args) => profile::run(args).await,
        Command::Soak(args) => soak::run(args).await,
        Command::Revocation(args) => revocation::run(args).await,
        Command::Stream(args) => stream::run(args).await,
        Command::ServeNull => {
            let addr = suite::NullCrypto::serve().await?;
            println!("{}{addr}", stream::NULL_LISTENING);
            // Until the bench closes our stdin (or ends, however it does).
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await?;
            Ok(())
        }
        Command::Suite { json, quick } => {
            let report = suite::run(quick).await?;
            println!("{}", report.text);
            if let Some(dir) = json.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&json, serde_json::to_vec_pretty(&report.json)?)?;
            eprintln!("wrote {}", json.display());
            Ok(())
        }
    }
}
