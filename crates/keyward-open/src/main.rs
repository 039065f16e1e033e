//! `keyward-open`: verify a Keyward export, and open envelopes from it with your own KMS access,
//! without Keyward (docs/exit.md).
//!
//! Exit status: 0 done; 1 the export does not verify (tampered, incomplete, another version);
//! 2 the command line is invalid; 3 the envelope's data key was shredded; 4 your KMS did not
//! unwrap the tenant key (refused, unreachable, or not configured here); 5 the envelope cannot be
//! opened from this export (not an envelope, another tenant's, written after the export, a
//! different encryption context, a framed envelope that stops part-way), or a local file cannot
//! be read or written.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks to its user on stdout and stderr"
)]

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use keyward_envelope::EncryptionContext;
use keyward_open::{ProviderSettings, open_stream, verify};

/// Open Keyward envelopes from an export of your key hierarchy, with your own KMS access.
#[derive(Debug, Parser)]
#[command(name = "keyward-open", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per run")]
enum Command {
    /// Check an export: every file against manifest.json (size, SHA-256, counts) and every entry
    /// against the format; print what it holds. Calls no KMS.
    Verify {
        /// The export directory (`keyward export --out DIR`).
        #[arg(long, value_name = "DIR")]
        export: PathBuf,
    },
    /// Decrypt one envelope: verify the export, unwrap the envelope's tenant key with your KMS,
    /// its data key under the tenant key, and open the envelope. Writes the plaintext to stdout
    /// or --out; a framed envelope (from the streaming calls) frame by frame as each opens, in
    /// constant memory.
    Decrypt(DecryptArgs),
}

#[derive(Debug, Args)]
struct DecryptArgs {
    /// The export directory (`keyward export --out DIR`).
    #[arg(long, value_name = "DIR")]
    export: PathBuf,
    /// The envelope (raw bytes, as Encrypt returned it); `-` or absent: stdin.
    #[arg(long, value_name = "FILE")]
    envelope: Option<PathBuf>,
    /// The envelope is standard base64 (e.g. `keyward encrypt --output base64`).
    #[arg(long)]
    base64: bool,
    /// Encryption context entry KEY=VALUE, exactly as given to Encrypt; repeat for more.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Write the plaintext to this file (created with mode 0600; must not exist) instead of
    /// stdout. Removed if a framed envelope fails part-way.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Your KMS")]
    kms: KmsArgs,
}

/// How to reach your KEK; see docs/exit.md, "Your KMS".
#[derive(Debug, Args)]
struct KmsArgs {
    /// A TOML file with provider sections as in keyward.toml ([aws_kms], [pkcs11], [azure],
    /// [gcp]): endpoints, timeouts, credentials. The flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// AWS KMS endpoint (a VPC or FIPS endpoint, an emulator). Credentials and profile come
    /// from the standard AWS chain (AWS_PROFILE, AWS_ACCESS_KEY_ID, …); the region from the key
    /// ARN.
    #[arg(long, value_name = "URL")]
    aws_endpoint_url: Option<String>,
    /// The HSM vendor's PKCS#11 module.
    #[arg(long, value_name = "PATH")]
    pkcs11_module: Option<PathBuf>,
    /// The token's label (default: the key URI's `token`).
    #[arg(long, value_name = "LABEL")]
    pkcs11_token: Option<String>,
    /// The environment variable holding the token's user PIN.
    #[arg(long, value_name = "VAR", default_value = keyward_open::providers::DEFAULT_PKCS11_PIN_ENV)]
    pkcs11_pin_env: String,
    /// The key directory of Keyward's local development provider (`<data_dir>/local-kms`).
    #[arg(long, value_name = "DIR")]
    local_kms_dir: Option<PathBuf>,
}

fn parse_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

/// Exit status of a usage error found after parsing, and of local I/O failures.
const USAGE: u8 = 2;
const LOCAL: u8 = 5;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Verify { export } => verify_command(&export),
        Command::Decrypt(args) => decrypt_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn verify_command(dir: &Path) -> Result<(), Failure> {
    let export = verify(dir, None).map_err(|e| (1, e.to_string()))?;
    let m = &export.manifest;
    let mut providers: BTreeMap<String, usize> = BTreeMap::new();
    for key in &export.tenant_keys {
        *providers
            .entry(format!("{} {}", key.provider, key.key_ref))
            .or_insert(0) += 1;
    }
    println!(
        "Export of tenant {} (format {} version {}), taken at {}.",
        m.tenant, m.format, m.format_version, m.exported_at
    );
    println!(
        "{}, {}, {}; every file matches manifest.json.",
        counted(m.counts.tenant_keys, "tenant key"),
        counted(m.counts.data_keys, "data key"),
        counted(m.counts.tombstones, "tombstone"),
    );
    for (kek, n) in providers {
        println!("  {} wrapped by {kek}", counted(n as u64, "tenant key"));
    }
    println!(
        "Audit log: head seq {} when the export began; the export is record seq {}.",
        m.audit.head_seq, m.audit.export_record_seq
    );
    Ok(())
}

/// `1 data key`, `2 data keys`.
fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn decrypt_command(args: DecryptArgs) -> Result<(), Failure> {
    let context = EncryptionContext::try_from_map(args.context.into_iter().collect())
        .map_err(|e| (USAGE, format!("--context: {e}")))?;
    let mut providers = ProviderSettings {
        aws_endpoint_url: args.kms.aws_endpoint_url,
        local_kms_dir: args.kms.local_kms_dir,
        pkcs11_module: args.kms.pkcs11_module,
        pkcs11_token: args.kms.pkcs11_token,
        pkcs11_pin_env: Some(args.kms.pkcs11_pin_env),
        ..ProviderSettings::default()
    };
    if let Some(path) = &args.kms.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| (LOCAL, format!("cannot read {}: {e}", path.display())))?;
        providers = providers
            .with_config_toml(&text)
            .map_err(|e| (USAGE, format!("--config {}: {e}", path.display())))?;
    }
    let mut input = open_input(args.envelope.as_deref(), args.base64)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| (LOCAL, format!("cannot start the async runtime: {e}")))?;
    let mut output: Box<dyn Output> = match &args.out {
        Some(path) => Box::new(OutFile {
            path: path.clone(),
            file: None,
        }),
        None => Box::new(std::io::stdout().lock()),
    };
    let result = runtime.block_on(open_stream(
        &args.export,
        &mut *input,
        &mut *output,
        &context,
        &providers,
    ));
    match result {
        Ok(_) => output
            .finish()
            .map_err(|e| (LOCAL, format!("cannot write the plaintext: {e}"))),
        Err(e) => {
            let mut message = e.to_string();
            if let Some(note) = output.abandon() {
                message = format!("{message} ({note})");
            }
            Err((e.exit_code(), message))
        }
    }
}

/// The envelope: a file or stdin, read as it is used (a framed envelope is never held whole);
/// base64 text is read whole and decoded first (it is for envelopes small enough to paste).
fn open_input(path: Option<&Path>, base64: bool) -> Result<Box<dyn std::io::Read>, Failure> {
    let input: Box<dyn std::io::Read> = match path {
        Some(path) if path != Path::new("-") => Box::new(
            std::fs::File::open(path)
                .map_err(|e| (LOCAL, format!("cannot read {}: {e}", path.display())))?,
        ),
        _ => Box::new(std::io::stdin().lock()),
    };
    if !base64 {
        return Ok(input);
    }
    let mut raw = Vec::new();
    let mut input = input;
    input
        .read_to_end(&mut raw)
        .map_err(|e| (LOCAL, format!("cannot read the envelope: {e}")))?;
    let text = String::from_utf8(raw)
        .map_err(|_| (LOCAL, "the envelope is not base64 text".to_owned()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| (LOCAL, format!("the envelope is not base64: {e}")))?;
    Ok(Box::new(std::io::Cursor::new(bytes)))
}

/// Where the plaintext goes: stdout, or `--out` (see [`OutFile`]).
trait Output: std::io::Write {
    /// After success: make the output durable (and exist, for an empty plaintext).
    fn finish(&mut self) -> std::io::Result<()>;
    /// After a failure: undo what can be undone; a note for the user.
    fn abandon(&mut self) -> Option<String>;
}

impl Output for std::io::StdoutLock<'_> {
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
    }

    fn abandon(&mut self) -> Option<String> {
        let _ = self.flush();
        None
    }
}

/// `--out FILE`: created (mode 0600, never overwritten) when the first plaintext byte is
/// written, so a failure before that leaves nothing; removed if the envelope then fails
/// part-way, so an incomplete plaintext is never left looking whole.
struct OutFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl OutFile {
    fn file(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&self.path)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
                })?;
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the output file is not open"))
    }
}

impl std::io::Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Output for OutFile {
    fn finish(&mut self) -> std::io::Result<()> {
        self.file()?.sync_all()
    }

    fn abandon(&mut self) -> Option<String> {
        self.file.take()?;
        Some(match std::fs::remove_file(&self.path) {
            Ok(()) => format!("{} was removed", self.path.display()),
            Err(e) => format!("{} could not be removed: {e}", self.path.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_context_pair_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_pair("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_pair("novalue").is_err());
    }
}
