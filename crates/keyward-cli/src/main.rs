//! `keyward`: run the server, onboard tenants, encrypt and decrypt, and manage
//! the local development keys.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks to its user on stdout and stderr"
)]

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keyward_kms::local::LocalProvider;
use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    tenant_service_client::TenantServiceClient,
};
use keyward_server::{Config, telemetry::LogFormat};

mod audit_cmd;
mod exit;
mod logging;
mod providers;
mod report;

use audit_cmd::AuditCommand;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

/// Keyward: customer-managed-key encryption for AI prompts and outputs.
#[derive(Debug, Parser)]
#[allow(
    clippy::duplicated_attributes,
    reason = "clap: one `mut_subcommand(…, offline)` per offline command"
)]
#[command(name = "keyward", version, about, long_about = None)]
// The connection options are global, for the commands that call a server; the offline commands
// neither list nor accept them (see `offline`).
#[command(mut_subcommand("serve", offline))]
#[command(mut_subcommand("key", offline))]
#[command(mut_subcommand("onboarding", offline))]
#[command(mut_subcommand("policy", offline))]
#[command(mut_subcommand("store", offline))]
#[command(mut_subcommand("audit", |audit: clap::Command| audit.mut_subcommand("verify", |verify| offline_as(verify, "audit verify"))))]
struct Cli {
    /// Server address for client commands.
    #[arg(
        long,
        global = true,
        env = "KEYWARD_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        help_heading = CONNECTION
    )]
    endpoint: String,
    #[command(flatten, next_help_heading = CONNECTION)]
    tls: ClientTlsArgs,
    #[command(subcommand)]
    command: Command,
}

/// Mutual TLS for client commands (a server with `[tls]` configured; use an `https://` endpoint).
#[derive(Debug, Clone, Args)]
struct ClientTlsArgs {
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(long, global = true, env = "KEYWARD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM); its SPIFFE ID or DNS name is the caller's identity.
    #[arg(long, global = true, env = "KEYWARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true, env = "KEYWARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name to verify in the server's certificate (default: the endpoint's host).
    #[arg(long, global = true, env = "KEYWARD_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
}

/// The help heading of the options every command that calls a server takes.
const CONNECTION: &str = "Connection (commands that call a server)";

/// The ids and flags of the global connection options ([`Cli::endpoint`], [`ClientTlsArgs`]).
const CONNECTION_ARGS: [(&str, &str); 5] = [
    ("endpoint", "endpoint"),
    ("tls_ca", "tls-ca"),
    ("tls_cert", "tls-cert"),
    ("tls_key", "tls-key"),
    ("tls_server_name", "tls-server-name"),
];

/// Marks `cmd` (and everything under it) as offline: it gets hidden stand-ins for the global
/// connection options, which clap's propagation of global options does not replace, so its
/// help does not list them and giving one is an error that says why.
fn offline(cmd: clap::Command) -> clap::Command {
    let name = cmd.get_name().to_owned();
    offline_as(cmd, &name)
}

/// [`offline`], naming the command `name` in the error.
fn offline_as(cmd: clap::Command, name: &str) -> clap::Command {
    CONNECTION_ARGS.into_iter().fold(cmd, |cmd, (id, flag)| {
        let name = name.to_owned();
        cmd.arg(clap::Arg::new(id).long(flag).hide(true).value_parser(
            move |_: &str| -> Result<String, String> {
                Err(format!(
                    "`keyward {name}` works without a server: it takes no --{flag}"
                ))
            },
        ))
    })
}

/// Where client commands connect, and how.
#[derive(Debug, Clone)]
struct Target {
    endpoint: String,
    tls: ClientTlsArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (defaults: 127.0.0.1:50051, SQLite and the local dev key under ./keyward-data).
    Serve(ServeArgs),
    /// Create, configure and inspect tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Encrypt stdin to stdout as a Keyward envelope.
    Encrypt(EncryptArgs),
    /// Decrypt an envelope from stdin to stdout.
    Decrypt(DecryptArgs),
    /// Manage the local development key-encryption keys (not for production).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Help a customer set up their key.
    #[command(subcommand)]
    Onboarding(OnboardingCommand),
    /// Read, export and verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check the authorization policies before a change (no server needed).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Operate on the store directly (no server needed; the server may be running).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Write a consistent copy of a SQLite store while the server keeps running (one snapshot:
    /// every committed transaction before the copy started, none after). For PostgreSQL use
    /// pg_dump or the database's own backups (docs/operations.md, "Back up the store").
    Backup {
        /// The store to copy (the server's `<data_dir>/keyward.db` unless `store` says otherwise).
        #[arg(long, default_value = "keyward-data/keyward.db")]
        database: PathBuf,
        /// Where to write the copy; must not exist.
        #[arg(long)]
        output: PathBuf,
    },
    /// Tag the tenant keys stored before schema version 5 (no authentication tag yet), which
    /// the server refuses until then. Trust on first use: it vouches for the rows as they are
    /// now, so check the store first (docs/operations.md, "Authenticate tenant keys after an
    /// upgrade"). Lists them without `--confirm`; each one tagged is audited.
    AuthenticateTenantKeys {
        /// The servers' TOML configuration file (its store and audit key directory are used).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory, as given to `keyward serve`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Who checked the store, for the audit record.
        #[arg(long)]
        actor: String,
        /// Tag them (after checking the store); without it, only list them.
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate the Cedar policies against the schema and the identity mapping against both,
    /// then replay the policy test cases; exits non-zero on any error or failed case.
    Check {
        /// Directory with schema.cedarschema and the *.cedar policies.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// The certificate-identity mapping (default: identities.toml in the --policies directory).
        #[arg(long)]
        identities: Option<PathBuf>,
        /// Directory of test cases (default: tests in the --policies directory).
        #[arg(long)]
        cases: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md); KEYWARD_* variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:50051 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (SQLite database and local keys).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Tenant id: 1-64 characters of [a-z0-9._-].
        tenant: String,
        /// Human-readable name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Bind a key-encryption key to a tenant (validated by a live round trip).
    ///
    /// Registering again replaces the tenant's key (a validated rotation; the
    /// history of bindings is kept and old data stays readable).
    RegisterKey {
        tenant: String,
        #[command(flatten, next_help_heading = "Key (exactly one)")]
        key: KeyChoice,
        /// Role in the customer's account to assume for this key (cross-account).
        #[arg(
            long,
            value_name = "ARN",
            requires = "aws_kms_key",
            requires = "external_id",
            help_heading = "AWS cross-account role (with --aws-kms-key)"
        )]
        role_arn: Option<String>,
        /// ExternalId required by the role's trust policy.
        #[arg(
            long,
            value_name = "ID",
            requires = "role_arn",
            help_heading = "AWS cross-account role (with --aws-kms-key)"
        )]
        external_id: Option<String>,
    },
    /// Show a tenant and its active key binding.
    Show { tenant: String },
    /// Break glass: revoke the tenant's key now (only restore-key lifts it).
    RevokeKey {
        tenant: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Who asked for it, recorded next to the caller's authenticated identity (e.g. the person behind a service certificate).
        #[arg(long, env = "USER", default_value = "")]
        requested_by: String,
    },
    /// Override the cache TTL (the tenant's revocation bound) or the monitor interval.
    SetPolicy {
        tenant: String,
        /// Seconds, at most the server's `cache.ttl_seconds` (a tenant can shorten its window,
        /// never stretch it); 0 restores the server's setting.
        #[arg(long, default_value_t = 0)]
        cache_ttl_seconds: u64,
        /// Seconds; 0 restores the server's setting.
        #[arg(long, default_value_t = 0)]
        monitor_interval_seconds: u64,
        #[arg(long, env = "USER", default_value = "")]
        requested_by: String,
    },
    /// Restore a revoked key after a live check that the KMS accepts it again.
    RestoreKey {
        tenant: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "USER", default_value = "")]
        requested_by: String,
        /// An older binding to restore (its id from `tenant show`): data written under a key
        /// revoked before a new key was registered stays unreadable until then. Default: the
        /// current binding.
        #[arg(long, value_name = "ID")]
        binding: Option<i64>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct KeyChoice {
    /// Name of a key of the server's local development provider, e.g. "default".
    #[arg(long, value_name = "NAME")]
    local_key: Option<String>,
    /// ARN of the customer's AWS KMS key (or alias ARN).
    #[arg(long, value_name = "ARN")]
    aws_kms_key: Option<String>,
    /// PKCS#11 URI of a key in the server's configured HSM token
    /// (`pkcs11:token=LABEL;object=KEY-LABEL`).
    #[arg(long, value_name = "URI")]
    pkcs11_key: Option<String>,
    /// Azure Key Vault or Managed HSM key id
    /// (`https://VAULT.vault.azure.net/keys/NAME[/VERSION]`).
    #[arg(long, value_name = "KEY ID")]
    azure_key: Option<String>,
    /// Resource name of the customer's Google Cloud KMS key
    /// (`projects/P/locations/L/keyRings/R/cryptoKeys/K`).
    #[arg(long, value_name = "RESOURCE NAME")]
    gcp_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum OnboardingCommand {
    /// Print the key-policy statement a customer adds so Keyward may use their key.
    Policy {
        #[arg(long, value_enum)]
        provider: PolicyProvider,
        /// The principal Keyward runs as (for AWS: the IAM role or user ARN).
        #[arg(long, value_name = "ARN")]
        principal: String,
        /// Restrict the statement to this key (default: the key whose policy it is in).
        #[arg(long, value_name = "ARN")]
        key_arn: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PolicyProvider {
    Aws,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Encoding {
    /// Raw bytes.
    Raw,
    /// Standard base64 (one line).
    Base64,
}

#[derive(Debug, Args)]
struct EncryptArgs {
    #[arg(long)]
    tenant: String,
    /// Data-key scope (a conversation, a user, ...).
    #[arg(long, default_value = "default")]
    scope: String,
    /// Encryption context entry KEY=VALUE; repeat for more. Needed again to decrypt.
    #[arg(long = "context", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Encoding of the envelope written to stdout.
    #[arg(long, value_enum, default_value = "raw")]
    output: Encoding,
}

#[derive(Debug, Args)]
struct DecryptArgs {
    #[arg(long)]
    tenant: String,
    /// Encryption context entry KEY=VALUE, as given to encrypt.
    #[arg(long = "context", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Encoding of the envelope read from stdin.
    #[arg(long, value_enum, default_value = "raw")]
    input: Encoding,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a local key.
    Create {
        name: String,
        #[command(flatten)]
        dir: KeyDir,
    },
    /// Disable a local key: the server's KEK calls are refused, as when a customer disables a KMS key.
    Disable {
        name: String,
        #[command(flatten)]
        dir: KeyDir,
    },
    /// Re-enable a local key.
    Enable {
        name: String,
        #[command(flatten)]
        dir: KeyDir,
    },
    /// List local keys and their state.
    List {
        #[command(flatten)]
        dir: KeyDir,
    },
}

/// Which server's local keys: resolved as `keyward serve` resolves its key directory.
#[derive(Debug, Args)]
struct KeyDir {
    /// Data directory of the server, as given to `keyward serve --data-dir` (its keys are in
    /// DATA_DIR/local-kms).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file of the server, to find its local key directory.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The local key directory itself (default: from --data-dir, --config, KEYWARD_* variables
    /// or ./keyward-data, as `keyward serve` finds it).
    #[arg(long)]
    local_kms_dir: Option<PathBuf>,
}

fn parse_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

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
        Command::Serve(args) => match Config::load(args.config.as_deref(), &providers::registry())
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
        },
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
        Command::Serve(args) => serve(args).await,
        Command::Tenant(cmd) => tenant(&target, cmd).await,
        Command::Encrypt(args) => encrypt(&target, args).await,
        Command::Decrypt(args) => decrypt(&target, args).await,
        Command::Key(cmd) => key(cmd),
        Command::Onboarding(cmd) => onboarding(cmd),
        Command::Audit(cmd) => audit_cmd::audit(&target, cmd).await,
        Command::Policy(cmd) => policy(cmd),
        Command::Store(cmd) => store(cmd).await,
    }
}

async fn store(cmd: StoreCommand) -> anyhow::Result<()> {
    let (database, output) = match cmd {
        StoreCommand::Backup { database, output } => (database, output),
        StoreCommand::AuthenticateTenantKeys {
            config,
            data_dir,
            actor,
            confirm,
        } => return authenticate_tenant_keys(config, data_dir, &actor, confirm).await,
    };
    if !database.is_file() {
        anyhow::bail!("{}: no such store file", database.display());
    }
    let store = keyward_store::sqlite::SqliteStore::open_read_only(&database)
        .await
        .with_context(|| format!("opening {}", database.display()))?;
    let result = store.backup(&output).await;
    store.close().await;
    result.with_context(|| format!("backing up {} to {}", database.display(), output.display()))?;
    eprintln!("backed up {} to {}", database.display(), output.display());
    Ok(())
}

/// `keyward store authenticate-tenant-keys`: the upgrade path of docs/adr/0007-tenant-key-mac.md.
async fn authenticate_tenant_keys(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    actor: &str,
    confirm: bool,
) -> anyhow::Result<()> {
    let mut config = Config::load(config.as_deref(), &providers::registry())?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    let settings = config.resolve()?;
    // The servers' key, never a fresh one (that would tag rows no server accepts).
    let hasher = keyward_server::audit::load_identifier_key(&settings.audit_dir)?;
    match &settings.store {
        keyward_server::config::StoreLocation::Sqlite(path) => {
            if !path.is_file() {
                bail!("{}: no such store file", path.display());
            }
            let store = keyward_store::sqlite::SqliteStore::open(path).await?;
            let result = authenticate_in(&store, &hasher, actor, confirm).await;
            store.close().await;
            result
        }
        keyward_server::config::StoreLocation::Postgres { url, options, .. } => {
            let store =
                keyward_store::postgres::PostgresStore::connect(url, options.clone()).await?;
            let result = authenticate_in(&store, &hasher, actor, confirm).await;
            store.close().await;
            result
        }
    }
}

/// Lists (without `confirm`) or tags the untagged tenant keys of `store`.
async fn authenticate_in(
    store: &dyn keyward_store::Store,
    hasher: &keyward_audit::IdentifierHasher,
    actor: &str,
    confirm: bool,
) -> anyhow::Result<()> {
    if !confirm {
        let pending = store.unauthenticated_tenant_keys().await?;
        for key in &pending {
            println!(
                "untagged: tenant={} tenant_key_id={} binding_id={} provider={} key_ref={}",
                key.tenant, key.id, key.binding_id, key.provider, key.key_ref
            );
        }
        eprintln!(
            "{} tenant key(s) without an authentication tag; check them (nobody else could \
             write the store, or they match a trusted backup), then run again with --confirm",
            pending.len()
        );
        return Ok(());
    }
    let done =
        keyward_server::keyring::authenticate_stored_tenant_keys(store, hasher, actor).await?;
    for key in &done {
        println!("tagged: {key}");
    }
    eprintln!(
        "{} tenant key(s) tagged, each audited as admin_action",
        done.len()
    );
    Ok(())
}

fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Check {
        policies,
        identities,
        cases,
    } = cmd;
    let identities = identities.unwrap_or_else(|| policies.join("identities.toml"));
    let cases = cases.unwrap_or_else(|| policies.join("tests"));
    let loaded = keyward_authz::Policies::load(&policies, &identities)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "policies: {} policies in {} validate against the schema; {} principals in {} validate",
        loaded.policy_count(),
        policies.display(),
        loaded.principal_count(),
        identities.display()
    )?;
    let report = keyward_authz::cases::run(&loaded, &cases)?;
    for failure in &report.failures {
        writeln!(out, "FAILED {failure}")?;
    }
    writeln!(
        out,
        "cases: {} passed, {} failed ({})",
        report.passed,
        report.failures.len(),
        cases.display()
    )?;
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(exit::problems(anyhow::anyhow!(
            "{} policy test case(s) failed",
            report.failures.len()
        )))
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let registry = providers::registry();
    let mut config = Config::load(args.config.as_deref(), &registry)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let settings = config.resolve()?;
    // Before any key is loaded: keep them out of swap and core dumps ([memory]).
    keyward_server::memory::harden(&settings.memory)?;
    let running = keyward_server::start(&settings, &registry, shutdown_signal()).await?;
    // Scripts and tests read the bound addresses from these lines (the admin one first).
    if let Some(admin) = running.admin_addr() {
        println!("keyward admin listening on {admin}");
    }
    println!("keyward listening on {}", running.local_addr());
    std::io::stdout().flush()?;
    running.wait().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutdown signal received");
}

async fn channel(target: &Target) -> anyhow::Result<Channel> {
    let endpoint = &target.endpoint;
    let mut channel = Channel::from_shared(endpoint.clone())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?;
    let tls = &target.tls;
    if tls.tls_ca.is_some() || tls.tls_cert.is_some() {
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &tls.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) {
            let cert_pem =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            config = config.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        }
        if let Some(name) = &tls.tls_server_name {
            config = config.domain_name(name.clone());
        }
        channel = channel
            .tls_config(config)
            .context("invalid TLS client configuration")
            .map_err(exit::local)?;
    }
    channel.connect().await.with_context(|| {
        format!("cannot connect to keyward at {endpoint} (is `keyward serve` running?)")
    })
}

/// Renders a gRPC error with its machine-readable reason (`exit::refused` wraps it with its
/// exit code).
fn status_error(status: tonic::Status) -> anyhow::Error {
    let info = status.get_details_error_info();
    let reason = info
        .as_ref()
        .map(|info| format!(", reason {}", info.reason))
        .unwrap_or_default();
    // What to do about it, when the server knows (e.g. the key-policy statement to add).
    let remediation = info
        .as_ref()
        .and_then(|info| info.metadata.get("remediation"))
        .map(|r| format!("\n\nTo fix it:\n{r}"))
        .unwrap_or_default();
    // A revocation: its state, since when and what decided it, from the metadata (an older
    // server's message may not say them).
    let revoked = info
        .as_ref()
        .filter(|info| info.reason == "KEY_REVOKED")
        .map(|info| revocation_lines(&info.metadata))
        .unwrap_or_default();
    anyhow::anyhow!(
        "{} (status {:?}{reason}){revoked}{remediation}",
        status.message(),
        status.code()
    )
}

/// The `KEY_REVOKED` metadata as lines under the error.
fn revocation_lines(metadata: &HashMap<String, String>) -> String {
    let mut lines = String::new();
    if let Some(state) = metadata.get("state") {
        lines.push_str(&format!("\n  key state: {state}"));
    }
    if let Some(since) = metadata
        .get("since_ms")
        .and_then(|ms| ms.parse::<i64>().ok())
    {
        lines.push_str(&format!(
            "\n  since:     {} (UTC)",
            keyward_server::time::rfc3339_utc_ms(since)
        ));
    }
    if let Some(source) = metadata.get("source") {
        lines.push_str(&format!("\n  source:    {}", source_words(source)));
    }
    lines
}

fn onboarding(cmd: OnboardingCommand) -> anyhow::Result<()> {
    match cmd {
        OnboardingCommand::Policy {
            provider: PolicyProvider::Aws,
            principal,
            key_arn,
        } => {
            #[cfg(feature = "aws")]
            {
                println!(
                    "{}",
                    keyward_kms_aws::key_policy_statement(&principal, key_arn.as_deref())
                );
                Ok(())
            }
            #[cfg(not(feature = "aws"))]
            {
                let _ = (principal, key_arn);
                bail!("this keyward was built without AWS support (cargo feature `aws`)")
            }
        }
    }
}

async fn tenant(endpoint: &Target, cmd: TenantCommand) -> anyhow::Result<()> {
    let mut client = TenantServiceClient::new(channel(endpoint).await?);
    let tenant = match cmd {
        TenantCommand::Create { tenant, name } => {
            client
                .create_tenant(pb::CreateTenantRequest {
                    tenant_id: tenant,
                    display_name: name,
                })
                .await
        }
        TenantCommand::RegisterKey {
            tenant,
            key,
            role_arn,
            external_id,
        } => {
            let key = match (
                key.local_key,
                key.aws_kms_key,
                key.pkcs11_key,
                key.gcp_key,
                key.azure_key,
            ) {
                (Some(key_name), _, _, _, _) => {
                    pb::register_key_request::Key::Local(pb::LocalKey { key_name })
                }
                (None, Some(key_arn), _, _, _) => {
                    pb::register_key_request::Key::AwsKms(pb::AwsKmsKey {
                        key_arn,
                        role_arn: role_arn.unwrap_or_default(),
                        external_id: external_id.unwrap_or_default(),
                    })
                }
                (None, None, Some(uri), _, _) => {
                    pb::register_key_request::Key::Pkcs11(pb::Pkcs11Key { uri })
                }
                (None, None, None, Some(crypto_key), _) => {
                    pb::register_key_request::Key::GcpKms(pb::GcpKmsKey { crypto_key })
                }
                (None, None, None, None, Some(key_id)) => {
                    pb::register_key_request::Key::AzureKeyVault(pb::AzureKeyVaultKey { key_id })
                }
                (None, None, None, None, None) => {
                    bail!(
                        "name a key: --local-key, --aws-kms-key, --pkcs11-key, --gcp-key or --azure-key"
                    )
                }
            };
            client
                .register_key(pb::RegisterKeyRequest {
                    tenant_id: tenant,
                    key: Some(key),
                })
                .await
        }
        TenantCommand::RevokeKey {
            tenant,
            reason,
            requested_by,
        } => {
            client
                .revoke_key(pb::RevokeKeyRequest {
                    tenant_id: tenant,
                    reason,
                    requested_by,
                })
                .await
        }
        TenantCommand::RestoreKey {
            tenant,
            reason,
            requested_by,
            binding,
        } => {
            client
                .restore_key(pb::RestoreKeyRequest {
                    tenant_id: tenant,
                    reason,
                    requested_by,
                    binding_id: binding.unwrap_or(0),
                })
                .await
        }
        TenantCommand::SetPolicy {
            tenant,
            cache_ttl_seconds,
            monitor_interval_seconds,
            requested_by,
        } => {
            client
                .set_tenant_policy(pb::SetTenantPolicyRequest {
                    tenant_id: tenant,
                    policy: Some(pb::TenantPolicy {
                        cache_ttl_seconds,
                        monitor_interval_seconds,
                    }),
                    requested_by,
                })
                .await
        }
        TenantCommand::Show { tenant } => {
            client
                .get_tenant(pb::GetTenantRequest { tenant_id: tenant })
                .await
        }
    }
    .map_err(exit::refused)?
    .into_inner();
    print_tenant(&tenant);
    Ok(())
}

fn print_tenant(t: &pb::Tenant) {
    print!("{}", tenant_text(t));
}

/// `tenant show` (and every tenant command's answer) as people read it: the key as its owner
/// wrote it, states and providers in words, and the settings in force with their source.
fn tenant_text(t: &pb::Tenant) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "tenant:       {}", t.tenant_id);
    if !t.display_name.is_empty() {
        let _ = writeln!(out, "name:         {}", t.display_name);
    }
    match &t.active_key {
        Some(k) => {
            let _ = writeln!(out, "key provider: {}", provider_words(k.provider()));
            for (label, value) in key_parts(k) {
                let _ = writeln!(out, "{:<14}{value}", format!("{label}:"));
            }
            let _ = writeln!(out, "key state:    {}", state_words(k));
            let _ = writeln!(out, "tenant key:   {}", k.tenant_key_id);
            let _ = writeln!(out, "binding:      {}", k.binding_id);
        }
        None => {
            let _ = writeln!(
                out,
                "key:          (none registered: run `keyward tenant register-key`)"
            );
        }
    }
    for k in &t.previous_keys {
        let parts: Vec<String> = key_parts(k)
            .into_iter()
            .map(|(label, value)| format!("{label} {value}"))
            .collect();
        let _ = writeln!(
            out,
            "older key:    binding {}: {}, {}; {}",
            k.binding_id,
            provider_words(k.provider()),
            parts.join(", "),
            state_words(k)
        );
        if k.state() == pb::KekState::Revoked {
            let _ = writeln!(
                out,
                "              data under it is refused; `keyward tenant restore-key {} --binding {} --reason …` restores it",
                t.tenant_id, k.binding_id
            );
        }
    }
    if let Some(p) = &t.effective_policy {
        let source = |s: i32| match pb::SettingSource::try_from(s) {
            Ok(pb::SettingSource::TenantPolicy) => "tenant policy",
            Ok(pb::SettingSource::Server) => "server default",
            _ => "source unknown",
        };
        let _ = writeln!(
            out,
            "cache TTL:    {} s ({})",
            p.cache_ttl_seconds,
            source(p.cache_ttl_source)
        );
        if p.monitor_interval_seconds == 0 {
            let _ = writeln!(
                out,
                "monitor:      off (the server runs no key-state monitor)"
            );
        } else {
            let _ = writeln!(
                out,
                "monitor:      every {} s ({})",
                p.monitor_interval_seconds,
                source(p.monitor_interval_source)
            );
        }
    } else if let Some(policy) = &t.policy {
        // A server without effective_policy: only the overrides are known.
        let show = |v: u64| {
            if v == 0 {
                "server default".to_owned()
            } else {
                format!("{v} s (tenant policy)")
            }
        };
        let _ = writeln!(out, "cache TTL:    {}", show(policy.cache_ttl_seconds));
        let _ = writeln!(
            out,
            "monitor:      {}",
            show(policy.monitor_interval_seconds)
        );
    }
    out
}

/// The key reference as labelled parts. An AWS key with a role is stored as
/// `ARN?role_arn=…&external_id=…` (the provider's own syntax); its owner gave three values, so
/// three are shown.
fn key_parts(k: &pb::KekBinding) -> Vec<(&'static str, String)> {
    if k.provider() == pb::ProviderKind::AwsKms {
        let (arn, query) = k.key_ref.split_once('?').unwrap_or((&k.key_ref, ""));
        let mut parts = vec![("key ARN", arn.to_owned())];
        for param in query.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("role_arn", role)) => parts.push(("role", role.to_owned())),
                Some(("external_id", id)) => parts.push(("external id", id.to_owned())),
                _ => parts.push(("key", k.key_ref.clone())),
            }
        }
        return parts;
    }
    vec![("key", k.key_ref.clone())]
}

fn provider_words(kind: pb::ProviderKind) -> &'static str {
    match kind {
        pb::ProviderKind::Local => "local development key",
        pb::ProviderKind::AwsKms => "AWS KMS",
        pb::ProviderKind::GcpKms => "Google Cloud KMS",
        pb::ProviderKind::AzureKeyVault => "Azure Key Vault",
        pb::ProviderKind::Pkcs11 => "PKCS#11 HSM",
        pb::ProviderKind::Unspecified => "unknown provider",
    }
}

/// `revoked since 2026-12-06T15:23:01.310Z (explicit: RevokeKey)`: the state, since when and
/// what set it.
fn state_words(k: &pb::KekBinding) -> String {
    let state = match k.state() {
        pb::KekState::Active => "active",
        pb::KekState::Revoked => "revoked",
        pb::KekState::Unavailable => "unavailable (the KMS could not be reached)",
        pb::KekState::Restored => "restored",
        pb::KekState::Destroyed => "destroyed",
        pb::KekState::Unspecified => "unknown",
    };
    if k.state_cause.is_empty() {
        return state.to_owned();
    }
    let since = k
        .state_changed_at
        .as_ref()
        .map(|t| {
            format!(
                " since {}",
                keyward_server::time::rfc3339_utc_ms(
                    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
                )
            )
        })
        .unwrap_or_default();
    format!("{state}{since} ({})", source_words(&k.state_cause))
}

/// A revocation source (`KekBinding.state_cause`, `KEY_REVOKED`'s `source`) in words.
fn source_words(source: &str) -> String {
    match source {
        "explicit" => "explicit: RevokeKey / RestoreKey".to_owned(),
        "monitor" => "the key-state monitor's check".to_owned(),
        "kms_refusal" => "the customer's KMS refused a call".to_owned(),
        "event" => "a key-state event, confirmed with the KMS".to_owned(),
        other => other.to_owned(),
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read stdin")?;
    Ok(buf)
}

fn context_map(pairs: Vec<(String, String)>) -> anyhow::Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v).is_some() {
            bail!("context key {k:?} given twice");
        }
    }
    Ok(map)
}

async fn encrypt(endpoint: &Target, args: EncryptArgs) -> anyhow::Result<()> {
    let plaintext = read_stdin()?;
    let mut client = CryptoServiceClient::new(channel(endpoint).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let response = client
        .encrypt(pb::EncryptRequest {
            tenant_id: args.tenant,
            plaintext,
            encryption_context: context_map(args.context)?,
            scope: args.scope,
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    match args.output {
        Encoding::Raw => out.write_all(&response.envelope)?,
        Encoding::Base64 => writeln!(
            out,
            "{}",
            base64::engine::general_purpose::STANDARD.encode(&response.envelope)
        )?,
    }
    out.flush()?;
    Ok(())
}

async fn decrypt(endpoint: &Target, args: DecryptArgs) -> anyhow::Result<()> {
    let input = read_stdin()?;
    let envelope = match args.input {
        Encoding::Raw => input,
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(input.trim_ascii())
            .context("stdin is not valid base64")?,
    };
    let mut client = CryptoServiceClient::new(channel(endpoint).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let response = client
        .decrypt(pb::DecryptRequest {
            tenant_id: args.tenant,
            envelope,
            encryption_context: context_map(args.context)?,
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    out.write_all(&response.plaintext)?;
    out.flush()?;
    Ok(())
}

fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    let dir = match &cmd {
        KeyCommand::Create { dir, .. }
        | KeyCommand::Disable { dir, .. }
        | KeyCommand::Enable { dir, .. }
        | KeyCommand::List { dir } => dir,
    };
    let path = match &dir.local_kms_dir {
        Some(path) => path.clone(),
        None => {
            let mut config = Config::load(dir.config.as_deref(), &providers::registry())?;
            if let Some(data_dir) = &dir.data_dir {
                config.data_dir = data_dir.clone();
            }
            config.resolve()?.local_kms_dir
        }
    };
    // The provider's own words, without its error-kind prefix.
    let plain = |e: keyward_kms::ProviderError| anyhow::anyhow!("{}", e.message());
    if let KeyCommand::Create { name, .. } = &cmd {
        // Only the directory: the key asked for may be `default` itself.
        let provider = LocalProvider::open_dir(&path).map_err(plain)?;
        provider.create_key(name).map_err(plain)?;
        println!("created local key {name:?} in {}", path.display());
        return Ok(());
    }
    // Acting on a server's keys: a directory or key that does not exist is an error (nothing is
    // created), since a wrong directory would otherwise be silently changed instead of the
    // server's.
    let provider = match LocalProvider::open_existing(&path) {
        Ok(provider) => provider,
        Err(e) if e.kind() == keyward_kms::ErrorKind::NotFound => bail!(
            "{}: no such local key directory, so nothing was changed; name the server's with \
             --data-dir DIR (as given to `keyward serve`), --config FILE or --local-kms-dir DIR",
            path.display()
        ),
        Err(e) => return Err(plain(e)),
    };
    match &cmd {
        KeyCommand::Disable { name, .. } => {
            provider.set_enabled(name, false).map_err(plain)?;
            println!(
                "disabled local key {name:?} in {}: Keyward's calls to it are now refused; cached keys stop serving within the cache TTL",
                path.display()
            );
        }
        KeyCommand::Enable { name, .. } => {
            provider.set_enabled(name, true).map_err(plain)?;
            println!(
                "enabled local key {name:?} in {}: a tenant revoked because the key refused gets access back at the monitor's next check, or at once with `keyward tenant restore-key TENANT --reason …`",
                path.display()
            );
        }
        KeyCommand::List { .. } => {
            eprintln!("local keys in {}:", path.display());
            for (name, state) in provider.list_keys().map_err(plain)? {
                println!("{name}\t{}", state.as_str());
            }
        }
        KeyCommand::Create { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cross-account AWS key is shown as its owner gave it: key ARN, role and external id on
    /// their own lines (never the stored `ARN?role_arn=…&external_id=…`), with the state, the
    /// provider and the settings in force in words.
    #[test]
    fn tenant_show_splits_an_aws_key_and_says_where_settings_come_from() {
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let role = "arn:aws:iam::111122223333:role/keyward-access";
        let tenant = pb::Tenant {
            tenant_id: "acme".into(),
            active_key: Some(pb::KekBinding {
                provider: pb::ProviderKind::AwsKms.into(),
                key_ref: format!("{arn}?role_arn={role}&external_id=acme-7f3a"),
                state: pb::KekState::Revoked.into(),
                state_cause: "kms_refusal".into(),
                state_changed_at: Some({
                    // (the Timestamp type, without a dependency on prost-types)
                    let mut at = pb::KekBinding::default()
                        .state_changed_at
                        .unwrap_or_default();
                    at.seconds = 1_796_570_581;
                    at.nanos = 310_000_000;
                    at
                }),
                binding_id: 2,
                ..Default::default()
            }),
            effective_policy: Some(pb::EffectivePolicy {
                cache_ttl_seconds: 300,
                cache_ttl_source: pb::SettingSource::Server.into(),
                monitor_interval_seconds: 10,
                monitor_interval_source: pb::SettingSource::TenantPolicy.into(),
            }),
            ..Default::default()
        };
        let text = tenant_text(&tenant);
        let expected = [
            "key provider: AWS KMS\n".to_owned(),
            format!("key ARN:      {arn}\n"),
            format!("role:         {role}\n"),
            "external id:  acme-7f3a\n".to_owned(),
            "key state:    revoked since 2026-12-06T15:23:01.310Z (the customer's KMS refused a call)\n"
                .to_owned(),
            "cache TTL:    300 s (server default)\n".to_owned(),
            "monitor:      every 10 s (tenant policy)\n".to_owned(),
        ];
        for line in expected {
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("?role_arn="), "{text}");
    }
}
