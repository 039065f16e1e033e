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
mod report;

use audit_cmd::AuditCommand;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

/// Keyward: customer-managed-key encryption for AI prompts and outputs.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about, long_about = None)]
struct Cli {
    /// Server address for client commands.
    #[arg(
        long,
        global = true,
        env = "KEYWARD_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    #[command(flatten)]
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
        #[command(flatten)]
        key: KeyChoice,
        /// Role in the customer's account to assume for this key (cross-account).
        #[arg(
            long,
            value_name = "ARN",
            requires = "aws_kms_key",
            requires = "external_id"
        )]
        role_arn: Option<String>,
        /// ExternalId required by the role's trust policy.
        #[arg(long, value_name = "ID", requires = "role_arn")]
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
        /// Who is asking (recorded; callers are not authenticated yet).
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
    /// Data-key scope (a conversation, a user, ...); default "default".
    #[arg(long, default_value = "")]
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

#[derive(Debug, Args)]
struct KeyDir {
    /// Local key directory; default: the one `keyward serve` uses (from --config / KEYWARD_* / defaults).
    #[arg(long)]
    local_kms_dir: Option<PathBuf>,
    /// Configuration file of the server, to find its local key directory.
    #[arg(long, short)]
    config: Option<PathBuf>,
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
        Command::Serve(args) => match Config::load(args.config.as_deref())
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
    let mut config = Config::load(config.as_deref())?;
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
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let settings = config.resolve()?;
    // Before any key is loaded: keep them out of swap and core dumps ([memory]).
    keyward_server::memory::harden(&settings.memory)?;
    let running = keyward_server::start(&settings, shutdown_signal()).await?;
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
    anyhow::anyhow!(
        "{} (status {:?}{reason}){remediation}",
        status.message(),
        status.code()
    )
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
    println!("tenant:       {}", t.tenant_id);
    if !t.display_name.is_empty() {
        println!("name:         {}", t.display_name);
    }
    match &t.active_key {
        Some(k) => {
            println!("key provider: {}", k.provider().as_str_name());
            println!("key:          {}", k.key_ref);
            println!("key state:    {}", key_state(k));
            println!("tenant key:   {}", k.tenant_key_id);
            println!("binding:      {}", k.binding_id);
        }
        None => println!("key:          (none registered: run `keyward tenant register-key`)"),
    }
    for k in &t.previous_keys {
        println!(
            "older key:    binding {}: {} {} {}",
            k.binding_id,
            k.provider().as_str_name(),
            k.key_ref,
            key_state(k)
        );
        if k.state() == pb::KekState::Revoked {
            println!(
                "              data under it is refused; `keyward tenant restore-key {} --binding {} --reason …` restores it",
                t.tenant_id, k.binding_id
            );
        }
    }
    if let Some(policy) = &t.policy {
        let show = |v: u64| {
            if v == 0 {
                "server default".to_owned()
            } else {
                format!("{v} s")
            }
        };
        println!("cache TTL:    {}", show(policy.cache_ttl_seconds));
        println!("monitor:      {}", show(policy.monitor_interval_seconds));
    }
}

/// `KEK_STATE_REVOKED (explicit)`: the state and what set it.
fn key_state(k: &pb::KekBinding) -> String {
    if k.state_cause.is_empty() {
        k.state().as_str_name().to_owned()
    } else {
        format!("{} ({})", k.state().as_str_name(), k.state_cause)
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
            Config::load(dir.config.as_deref())?
                .resolve()?
                .local_kms_dir
        }
    };
    let provider = LocalProvider::open(&path)?;
    match &cmd {
        KeyCommand::Create { name, .. } => {
            provider.create_key(name)?;
            println!("created local key {name:?} in {}", path.display());
        }
        KeyCommand::Disable { name, .. } => {
            provider.set_enabled(name, false)?;
            println!(
                "disabled local key {name:?}: Keyward's calls to it are now refused; cached keys stop serving within the cache TTL"
            );
        }
        KeyCommand::Enable { name, .. } => {
            provider.set_enabled(name, true)?;
            println!("enabled local key {name:?}");
        }
        KeyCommand::List { .. } => {
            for (name, state) in provider.list_keys()? {
                println!("{name}\t{}", state.as_str());
            }
        }
    }
    Ok(())
}
