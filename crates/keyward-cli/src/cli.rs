//! The command line: clap's types for every command, their arguments and the global connection
//! options (as rage's `cli.rs`). What each command does is in `cmd`; the help texts, flags and
//! exit codes are pinned by the end-to-end tests (tests/e2e/tests/cli*.rs).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keyward_audit::PublicKey;

pub(crate) use crate::cmd::serve::ServeArgs;

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
pub(crate) struct Cli {
    /// Server address for client commands.
    #[arg(
        long,
        global = true,
        env = "KEYWARD_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        help_heading = CONNECTION
    )]
    pub(crate) endpoint: String,
    #[command(flatten, next_help_heading = CONNECTION)]
    pub(crate) tls: ClientTlsArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Mutual TLS for client commands (a server with `[tls]` configured; use an `https://` endpoint).
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientTlsArgs {
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(long, global = true, env = "KEYWARD_TLS_CA")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM); its SPIFFE ID or DNS name is the caller's identity.
    #[arg(long, global = true, env = "KEYWARD_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true, env = "KEYWARD_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The name to verify in the server's certificate (default: the endpoint's host).
    #[arg(long, global = true, env = "KEYWARD_TLS_SERVER_NAME")]
    pub(crate) tls_server_name: Option<String>,
}

/// The help heading of the options every command that calls a server takes.
pub(crate) const CONNECTION: &str = "Connection (commands that call a server)";

/// The ids and flags of the global connection options ([`Cli::endpoint`], [`ClientTlsArgs`]).
pub(crate) const CONNECTION_ARGS: [(&str, &str); 5] = [
    ("endpoint", "endpoint"),
    ("tls_ca", "tls-ca"),
    ("tls_cert", "tls-cert"),
    ("tls_key", "tls-key"),
    ("tls_server_name", "tls-server-name"),
];

/// Marks `cmd` (and everything under it) as offline: it gets hidden stand-ins for the global
/// connection options, which clap's propagation of global options does not replace, so its
/// help does not list them and giving one is an error that says why.
pub(crate) fn offline(cmd: clap::Command) -> clap::Command {
    let name = cmd.get_name().to_owned();
    offline_as(cmd, &name)
}

/// [`offline`], naming the command `name` in the error.
pub(crate) fn offline_as(cmd: clap::Command, name: &str) -> clap::Command {
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
pub(crate) struct Target {
    pub(crate) endpoint: String,
    pub(crate) tls: ClientTlsArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gRPC server (defaults: 127.0.0.1:50051, SQLite and the local dev key under ./keyward-data).
    Serve(ServeArgs),
    /// Create, configure and inspect tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Encrypt stdin (or a file) to stdout (or a file) as a Keyward envelope; streamed in bounded
    /// memory when larger than the server's unary limit (docs/streaming.md).
    Encrypt(EncryptArgs),
    /// Decrypt an envelope from stdin (or a file) to stdout (or a file); a framed envelope is
    /// streamed in bounded memory.
    Decrypt(DecryptArgs),
    /// Re-encrypt an envelope from stdin under the current data key of a scope (its own by
    /// default), same context, the server's write suite; the plaintext stays in the server.
    Rewrap(RewrapArgs),
    /// The exit kit: write a tenant's key hierarchy (wrapped keys only, nothing in clear) into
    /// a directory, for reading its data without Keyward with `keyward-open` and the
    /// customer's own KMS key (docs/exit.md).
    Export(ExportArgs),
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
pub(crate) enum StoreCommand {
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
        /// Print the summary of the copy (what it holds, how old its oldest key is) as one JSON
        /// object.
        #[arg(long)]
        json: bool,
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
pub(crate) enum PolicyCommand {
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

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Crypto-shred data: one scope (`--scope`), or every scope whose data was all written
    /// before a time (`--created-before`, retention). Irreversible: the scope's data keys are
    /// destroyed and its envelopes fail DATA_KEY_SHREDDED (docs/deleting-data.md).
    Shred(ShredArgs),
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
    /// The tenant's key history: every key binding, oldest first, with the data keys and scopes
    /// that still depend on it, and which older KMS keys may be disabled.
    Keys {
        tenant: String,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Move the tenant's data off its older KMS keys: re-wrap every tenant key still wrapped
    /// by an older key under the current key, then retire the older bindings (their keys may
    /// then be disabled). Each old key is asked for one unwrap per tenant key; data keys and
    /// envelopes are not touched. Resumable: run it again after an interruption (docs/rekey.md).
    Rekey {
        tenant: String,
        /// Only report what is left (GetRekeyStatus); change nothing.
        #[arg(long)]
        status: bool,
        /// Tenant keys moved per call (the progress steps); the command calls until done.
        #[arg(long, default_value_t = 1, value_name = "N")]
        batch: u32,
        /// One JSON object (the final status) instead of the text.
        #[arg(long)]
        json: bool,
        /// Who asked for it, recorded next to the caller's authenticated identity.
        #[arg(long, env = "USER", default_value = "")]
        requested_by: String,
    },
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
        /// Scheduled re-key: when a new key is registered, re-wrap the older keys' tenant keys
        /// under it in the background and retire the older bindings (docs/rekey.md). Like the
        /// other settings, omitting it turns it off.
        #[arg(long)]
        auto_rekey: bool,
        /// The purposes allowed to decrypt the tenant's data, comma-separated
        /// (docs/justifications.md); every decrypt must then declare one of them. Like the
        /// other settings, omitting it removes the rule.
        #[arg(long, value_enum, value_delimiter = ',', value_name = "PURPOSES")]
        decrypt_purposes: Vec<PurposeArg>,
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
pub(crate) struct ShredArgs {
    pub(crate) tenant: String,
    /// The scope to shred, as Encrypt named it ("default" when it named none).
    #[arg(long, value_name = "SCOPE", required_unless_present = "created_before", conflicts_with_all = ["created_before", "scope_prefix", "dry_run", "max_scopes"])]
    pub(crate) scope: Option<String>,
    /// Retention: shred every scope whose data was all written before this time
    /// (`2026-11-01` = midnight UTC, or `2026-11-01T12:00:00Z`), in pages until none is left.
    #[arg(long, value_name = "TIME", value_parser = parse_cutoff)]
    pub(crate) created_before: Option<i64>,
    /// Retention: only scopes whose label starts with this (e.g. `2026-` or `conv-`).
    #[arg(long, value_name = "PREFIX", requires = "created_before")]
    pub(crate) scope_prefix: Option<String>,
    /// Retention: say how many scopes and data keys would be shredded; change nothing.
    #[arg(long, requires = "created_before")]
    pub(crate) dry_run: bool,
    /// Retention: scopes per call (the server's default is 100, at most 1000).
    #[arg(long, value_name = "N", requires = "created_before")]
    pub(crate) max_scopes: Option<u32>,
    /// Why (recorded in the audit log); required unless --dry-run.
    #[arg(long, required_unless_present = "dry_run")]
    pub(crate) reason: Option<String>,
    /// Who asked for it, recorded next to the caller's authenticated identity.
    #[arg(long, env = "USER", default_value = "")]
    pub(crate) requested_by: String,
}

fn parse_cutoff(text: &str) -> Result<i64, String> {
    keyward_server::time::parse_utc_ms(text).ok_or_else(|| {
        format!("{text:?} is not a UTC time: write 2026-11-01 or 2026-11-01T12:00:00Z")
    })
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct KeyChoice {
    /// Name of a key of the server's local development provider, e.g. "default".
    #[arg(long, value_name = "NAME")]
    pub(crate) local_key: Option<String>,
    /// ARN of the customer's AWS KMS key (or alias ARN).
    #[arg(long, value_name = "ARN")]
    pub(crate) aws_kms_key: Option<String>,
    /// PKCS#11 URI of a key in the server's configured HSM token
    /// (`pkcs11:token=LABEL;object=KEY-LABEL`).
    #[arg(long, value_name = "URI")]
    pub(crate) pkcs11_key: Option<String>,
    /// Azure Key Vault or Managed HSM key id
    /// (`https://VAULT.vault.azure.net/keys/NAME[/VERSION]`).
    #[arg(long, value_name = "KEY ID")]
    pub(crate) azure_key: Option<String>,
    /// Resource name of the customer's Google Cloud KMS key
    /// (`projects/P/locations/L/keyRings/R/cryptoKeys/K`).
    #[arg(long, value_name = "RESOURCE NAME")]
    pub(crate) gcp_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum OnboardingCommand {
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
    /// Print what the customer (and Keyward's operator) set up so that the customer's KMS key
    /// events reach Keyward's `[aws_events]` queue: the EventBridge rule's pattern, its targets
    /// and the permissions, as `aws` CLI commands (docs/onboarding/aws.md, "Key events").
    Events {
        #[arg(long, value_enum)]
        provider: PolicyProvider,
        /// The ARN of the SQS queue Keyward reads (`[aws_events]` queue_url).
        #[arg(long, value_name = "ARN")]
        queue_arn: String,
        /// The customer's 12-digit AWS account (default: a placeholder to replace).
        #[arg(long, value_name = "ACCOUNT")]
        customer_account: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PolicyProvider {
    Aws,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Encoding {
    /// Raw bytes.
    Raw,
    /// Standard base64 (one line).
    Base64,
}

#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    #[arg(long)]
    pub(crate) tenant: String,
    /// Data-key scope (a conversation, a user, ...).
    #[arg(long, default_value = "default")]
    pub(crate) scope: String,
    /// Encryption context entry KEY=VALUE; repeat for more. Needed again to decrypt.
    #[arg(long = "context", value_parser = parse_pair)]
    pub(crate) context: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) justification: JustificationArgs,
    /// Encoding of the envelope written to stdout (or --out).
    #[arg(long, value_enum, default_value = "raw")]
    pub(crate) output: Encoding,
    /// The file to encrypt (default, or `-`: stdin).
    #[arg(value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) out: OutArgs,
    /// Encrypt with EncryptStream into a framed envelope (format version 2), in bounded memory,
    /// whatever the size. Without it, only an input larger than --max-unary-bytes is streamed.
    #[arg(long, help_heading = STREAMING)]
    pub(crate) stream: bool,
    /// Plaintext bytes per frame of a streamed envelope, 1KiB to 1MiB (default: the server's,
    /// 64 KiB); implies --stream.
    #[arg(long, value_name = "BYTES", value_parser = parse_frame_size, help_heading = STREAMING)]
    pub(crate) frame_size: Option<u32>,
    /// The server's unary limit (its `max_plaintext_bytes`): a larger input is streamed. Stdin
    /// is read up to this much, then streamed if more follows.
    #[arg(
        long,
        value_name = "BYTES",
        env = "KEYWARD_MAX_UNARY_BYTES",
        default_value = "1MiB",
        value_parser = parse_max_unary,
        help_heading = STREAMING
    )]
    pub(crate) max_unary_bytes: u64,
    #[command(flatten, next_help_heading = STREAMING)]
    pub(crate) progress: ProgressArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DecryptArgs {
    #[arg(long)]
    pub(crate) tenant: String,
    /// Encryption context entry KEY=VALUE, as given to encrypt.
    #[arg(long = "context", value_parser = parse_pair)]
    pub(crate) context: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) justification: JustificationArgs,
    /// Encoding of the envelope read from stdin (or FILE).
    #[arg(long, value_enum, default_value = "raw")]
    pub(crate) input: Encoding,
    /// The envelope to decrypt (default, or `-`: stdin). A framed envelope (format version 2)
    /// is streamed with DecryptStream, others are decrypted with one Decrypt call.
    #[arg(value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) out: OutArgs,
    /// Insist on streaming: refuse an envelope that is not framed (format version 2) rather
    /// than read it whole into memory. Framed envelopes are streamed without it.
    #[arg(long, help_heading = STREAMING)]
    pub(crate) stream: bool,
    /// The server's unary limit (its `max_plaintext_bytes`): a framed envelope is sent in
    /// messages that fit its message limit (this plus 64 KiB).
    #[arg(
        long,
        value_name = "BYTES",
        env = "KEYWARD_MAX_UNARY_BYTES",
        default_value = "1MiB",
        value_parser = parse_max_unary,
        help_heading = STREAMING
    )]
    pub(crate) max_unary_bytes: u64,
    #[command(flatten, next_help_heading = STREAMING)]
    pub(crate) progress: ProgressArgs,
}

/// Where `encrypt` and `decrypt` write.
#[derive(Debug, Args)]
pub(crate) struct OutArgs {
    /// Write to this file instead of stdout: into a temporary file beside it (readable by its
    /// owner only), renamed to FILE once complete, so a failed command leaves no partial file.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ProgressArgs {
    /// No progress line on stderr while streaming (shown only when stderr is a terminal).
    #[arg(long)]
    pub(crate) no_progress: bool,
}

/// The help heading of `encrypt`'s and `decrypt`'s streaming options.
const STREAMING: &str = "Streaming (large inputs)";

/// A byte count: digits, optionally followed by KiB, MiB or GiB (or K, M, G: the same powers
/// of 1024).
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => {
            return Err(format!(
                "{other:?} is not a unit: write a number of bytes, optionally followed by KiB, MiB or GiB"
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `--frame-size`: the format's and the server's range (docs/envelope-format.md §10).
fn parse_frame_size(text: &str) -> Result<u32, String> {
    const MIN: u64 = 1 << 10;
    const MAX: u64 = 1 << 20;
    let bytes = parse_bytes(text)?;
    if !(MIN..=MAX).contains(&bytes) {
        return Err(format!(
            "a frame holds 1KiB (1024) to 1MiB (1048576) bytes, not {bytes}"
        ));
    }
    u32::try_from(bytes).map_err(|_| format!("{bytes} is too large"))
}

/// `--max-unary-bytes`: a server's `max_plaintext_bytes` is 1 byte to 64 MiB
/// (docs/configuration.md); this much of stdin is held in memory before deciding.
fn parse_max_unary(text: &str) -> Result<u64, String> {
    const MAX: u64 = 64 << 20;
    match parse_bytes(text)? {
        bytes @ 1..=MAX => Ok(bytes),
        bytes => Err(format!(
            "a server's unary limit is 1 byte to 64MiB (67108864), not {bytes}"
        )),
    }
}

/// Why the caller touches the data (docs/justifications.md): checked against the tenant's
/// rule on decrypts, seen by the policies, counted in the tenant's access records.
#[derive(Debug, Args)]
pub(crate) struct JustificationArgs {
    /// The declared purpose (required to decrypt data of a tenant that lists decrypt purposes).
    #[arg(long, value_enum)]
    pub(crate) purpose: Option<PurposeArg>,
    /// A reference the caller's organisation can trace (a ticket id), at most 128 bytes;
    /// needs --purpose.
    #[arg(long, value_name = "TEXT", requires = "purpose")]
    pub(crate) reference: Option<String>,
}

impl JustificationArgs {
    pub(crate) fn to_pb(&self) -> Option<keyward_proto::v1::Justification> {
        self.purpose.map(|p| keyward_proto::v1::Justification {
            purpose: p.to_pb() as i32,
            reference: self.reference.clone().unwrap_or_default(),
        })
    }
}

/// The purposes (`keyward.v1.Purpose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum PurposeArg {
    ModelInference,
    CustomerSupport,
    AbuseInvestigation,
    LegalHold,
    DataExport,
    SystemMaintenance,
}

impl PurposeArg {
    pub(crate) fn to_pb(self) -> keyward_proto::v1::Purpose {
        use keyward_proto::v1::Purpose as P;
        match self {
            PurposeArg::ModelInference => P::ModelInference,
            PurposeArg::CustomerSupport => P::CustomerSupport,
            PurposeArg::AbuseInvestigation => P::AbuseInvestigation,
            PurposeArg::LegalHold => P::LegalHold,
            PurposeArg::DataExport => P::DataExport,
            PurposeArg::SystemMaintenance => P::SystemMaintenance,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct RewrapArgs {
    #[arg(long)]
    pub(crate) tenant: String,
    /// Encryption context entry KEY=VALUE, as given to encrypt; the new envelope keeps it.
    #[arg(long = "context", value_parser = parse_pair)]
    pub(crate) context: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) justification: JustificationArgs,
    /// Data-key scope of the new envelope (default: the scope of the envelope's own data key).
    #[arg(long, value_name = "SCOPE")]
    pub(crate) to_scope: Option<String>,
    /// Encoding of the envelope read from stdin.
    #[arg(long, value_enum, default_value = "raw")]
    pub(crate) input: Encoding,
    /// Encoding of the new envelope written to stdout.
    #[arg(long, value_enum, default_value = "raw")]
    pub(crate) output: Encoding,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The tenant whose key hierarchy is exported.
    #[arg(long)]
    pub(crate) tenant: String,
    /// The directory to write the export into: created if absent, else it must be empty.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Who asked for it, recorded next to the caller's authenticated identity.
    #[arg(long, env = "USER", default_value = "")]
    pub(crate) requested_by: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
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
pub(crate) struct KeyDir {
    /// Data directory of the server, as given to `keyward serve --data-dir` (its keys are in
    /// DATA_DIR/local-kms).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Configuration file of the server, to find its local key directory.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// The local key directory itself (default: from --data-dir, --config, KEYWARD_* variables
    /// or ./keyward-data, as `keyward serve` finds it).
    #[arg(long)]
    pub(crate) local_kms_dir: Option<PathBuf>,
}

pub(crate) fn parse_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Export the whole audit chain as JSON Lines (records, signed checkpoints, final checkpoint),
    /// or with --tenant one tenant's records in full and every other record of the range
    /// redacted to its hash and tenant tag (docs/audit-format.md §6.2).
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// A per-tenant export: this tenant's records in full, every other record redacted.
        #[arg(long)]
        tenant: Option<String>,
        /// With --tenant: records appended at or after this UTC time (2026-11-01 or
        /// 2026-11-01T12:00:00Z).
        #[arg(long, requires = "tenant", value_parser = parse_cutoff)]
        from: Option<i64>,
        /// With --tenant: records appended before this UTC time (exclusive).
        #[arg(long, requires = "tenant", value_parser = parse_cutoff)]
        to: Option<i64>,
    },
    /// Verify an export offline: recompute the hash chain and check every checkpoint signature.
    /// Reports every problem found; exit status 1 if there is any.
    Verify {
        /// The export file (JSON Lines).
        file: PathBuf,
        /// A trusted checkpoint-signing public key (`keyward audit public-key`); repeatable.
        #[arg(long = "public-key", required = true, value_name = "KEY", value_parser = parse_public_key)]
        public_keys: Vec<PublicKey>,
        /// Output: readable text, or JSON with the raw values.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print the deployment's checkpoint-signing public key (stdout) and its key id (stderr).
    PublicKey,
    /// Replace the checkpoint-signing key (recorded in the chain, signed by the old key).
    RotateSigningKey {
        #[arg(long, env = "USER", default_value = "")]
        requested_by: String,
    },
    /// A readable revocation report for a tenant: for each revocation, when it was observed
    /// and recorded, when each replica last served plaintext, whether any was served after the
    /// revocation was recorded, the requests denied since, and the restoration. With `--html`
    /// or `--json`: the access report (callers, purposes, accesses over time, key timeline).
    #[command(group = clap::ArgGroup::new("verified_report").args(["from_export", "html", "json"]).multiple(true))]
    Report {
        #[arg(long)]
        tenant: String,
        /// Report from this export instead of the live server, after verifying it (the same
        /// checks as `audit verify`; an export that does not verify is refused).
        #[arg(
            long,
            visible_alias = "input",
            value_name = "FILE",
            requires = "public_keys"
        )]
        from_export: Option<PathBuf>,
        /// A trusted checkpoint-signing public key, to verify the export; repeatable.
        #[arg(long = "public-key", value_name = "KEY", value_parser = parse_public_key, requires = "verified_report")]
        public_keys: Vec<PublicKey>,
        /// Output: readable text, or JSON with the raw values.
        #[arg(long, value_enum, default_value = "text", conflicts_with_all = ["html", "json"])]
        format: Format,
        /// Write the access report, one self-contained HTML page (who accessed the tenant's
        /// data and why, over time, with the key timeline and the verification), to FILE.
        /// From a verified export: `--input`, or else the server's export of the tenant (its
        /// records in full, the others redacted).
        #[arg(long, value_name = "FILE", requires = "public_keys")]
        html: Option<PathBuf>,
        /// Write the access report's data as JSON to FILE (docs/auditor-guide.md).
        #[arg(long, value_name = "FILE", requires = "public_keys")]
        json: Option<PathBuf>,
    },
    /// List audit records, oldest first.
    Events {
        #[arg(long)]
        tenant: Option<String>,
        /// Event type, e.g. kek_binding_changed.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Maximum number of records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Readable text; times in UTC (RFC 3339).
    Text,
    /// JSON, with raw values (Unix milliseconds, seqs, hex).
    Json,
}

/// `--public-key`: a usage error (exit 2) when it is not a key's text form.
pub(crate) fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    PublicKey::from_text(text).map_err(|e| {
        format!("{e} (expected the text `keyward audit public-key` prints: keyward-audit-ed25519:<base64>)")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_context_pair_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_pair("purpose=a=b").unwrap(),
            ("purpose".to_owned(), "a=b".to_owned())
        );
        assert_eq!(parse_pair("k=").unwrap(), ("k".to_owned(), String::new()));
        assert_eq!(
            parse_pair("novalue").unwrap_err(),
            "expected KEY=VALUE, got \"novalue\""
        );
    }

    #[test]
    fn an_offline_command_refuses_a_connection_option_and_says_why() {
        let err = Cli::try_parse_from(["keyward", "serve", "--endpoint", "http://x"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("`keyward serve` works without a server: it takes no --endpoint"),
            "{err}"
        );
        let err = Cli::try_parse_from(["keyward", "audit", "verify", "f", "--tls-ca", "ca.pem"])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`keyward audit verify` works without a server: it takes no --tls-ca"),
            "{err}"
        );
        // A client command takes them.
        let cli = Cli::try_parse_from([
            "keyward",
            "--endpoint",
            "http://x:1",
            "tenant",
            "show",
            "acme",
        ])
        .unwrap();
        assert_eq!(cli.endpoint, "http://x:1");
    }

    #[test]
    fn sizes_are_bytes_or_binary_units_and_frame_sizes_stay_in_the_format_s_range() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("1 MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert!(parse_bytes("1MB").unwrap_err().contains("not a unit"));
        assert!(parse_bytes("MiB").unwrap_err().contains("not a number"));
        assert!(
            parse_bytes("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse_frame_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_frame_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_frame_size("1023").is_err());
        assert!(parse_frame_size("1048577").is_err());
        assert!(parse_max_unary("0").is_err());
        assert_eq!(parse_max_unary("64MiB").unwrap(), 64 << 20);
        assert!(parse_max_unary("65MiB").is_err());
        // Through clap: a frame size out of range is a usage error; --frame-size alone is enough.
        let err =
            Cli::try_parse_from(["keyward", "encrypt", "--tenant", "t", "--frame-size", "512"])
                .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let cli = Cli::try_parse_from([
            "keyward",
            "encrypt",
            "--tenant",
            "t",
            "--frame-size",
            "16KiB",
            "in.bin",
            "--out",
            "in.kw",
        ])
        .unwrap();
        let Command::Encrypt(args) = cli.command else {
            panic!("not encrypt")
        };
        assert_eq!(args.frame_size, Some(16 * 1024));
        assert_eq!(args.max_unary_bytes, 1 << 20);
        assert_eq!(args.file.unwrap(), PathBuf::from("in.bin"));
        assert_eq!(args.out.out.unwrap(), PathBuf::from("in.kw"));
    }

    #[test]
    fn a_public_key_that_is_not_one_is_a_usage_error_naming_the_expected_form() {
        let err = parse_public_key("ed25519:AAAA").unwrap_err();
        assert!(
            err.ends_with(
                "(expected the text `keyward audit public-key` prints: keyward-audit-ed25519:<base64>)"
            ),
            "{err}"
        );
    }
}
