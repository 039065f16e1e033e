//! `keyward`: run the server, onboard tenants, encrypt and decrypt, and manage
//! the local development keys.
//!
//! Shaped like rage's: `cli` holds clap's types, `cmd` one module per command group, `client`
//! the gRPC channel and status rendering, `report` the revocation report's text and JSON,
//! `exit` the exit codes, `files`, `base64_chunks` and `progress` the input, output and
//! progress line of `encrypt` and `decrypt`; this file parses, sets up logging, dispatches and
//! exits.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks to its user on stdout and stderr"
)]

use std::process::ExitCode;

use clap::Parser as _;
use keyward_server::{Config, telemetry::LogFormat};

mod access_report;
mod base64_chunks;
mod cli;
mod client;
mod cmd;
mod exit;
mod files;
mod logging;
mod progress;
mod providers;
mod report;

use cli::{Cli, Command, Target};

/// Exit codes: `exit.rs` (docs/errors.md, "Exit codes of the `keyward` command").
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(exit::Exit::Usage.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let local = ExitCode::from(exit::Exit::Local.code());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return local;
        }
    };
    // The server logs its lifecycle, in the configured format; client commands stay quiet
    // unless asked. A configuration that does not load is reported by `serve` itself.
    let (default_filter, format, otlp) = match &cli.command {
        Command::Serve(args) => {
            match Config::load(args.config.as_deref(), &crate::providers::registry())
                .ok()
                .and_then(|c| c.resolve().ok())
            {
                Some(settings) => {
                    let o = &settings.observability;
                    let otlp = o.otlp_endpoint.clone().map(|endpoint| logging::OtlpTarget {
                        endpoint,
                        service_name: o.otlp_service_name.clone(),
                    });
                    ("info", o.log_format, otlp)
                }
                None => ("info", LogFormat::Text, None),
            }
        }
        _ => ("error", LogFormat::Text, None),
    };
    let telemetry = {
        let _inside = runtime.enter();
        match logging::init(default_filter, format, otlp) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot set up logging: {e:#}");
                return local;
            }
        }
    };
    let outcome = runtime.block_on(run(cli));
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::Exit::of(&e).code())
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = Target {
        endpoint: cli.endpoint,
        tls: cli.tls,
    };
    match cli.command {
        Command::Serve(args) => cmd::serve::serve(args).await,
        Command::Tenant(cmd) => cmd::tenant::tenant(&target, cmd).await,
        Command::Encrypt(args) => cmd::crypto::encrypt(&target, args).await,
        Command::Decrypt(args) => cmd::crypto::decrypt(&target, args).await,
        Command::Rewrap(args) => cmd::crypto::rewrap(&target, args).await,
        Command::Export(args) => cmd::export::export(&target, args).await,
        Command::Key(cmd) => cmd::key::key(cmd),
        Command::Onboarding(cmd) => cmd::onboarding::onboarding(cmd),
        Command::Audit(cmd) => cmd::audit::audit(&target, cmd).await,
        Command::Policy(cmd) => cmd::policy::policy(cmd),
        Command::Store(cmd) => cmd::store::store(cmd).await,
    }
}
