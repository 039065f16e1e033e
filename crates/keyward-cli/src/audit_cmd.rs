//! `keyward audit …`: export, verify, report, list and rotate (docs/auditor-guide.md).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use keyward_proto::v1 as pb;

use crate::report::{hex_string, revocation_report};
use crate::{Target, channel, status_error};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Export the whole audit chain as JSON Lines (records, signed checkpoints, final checkpoint).
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Verify an export offline: recompute the hash chain and check every checkpoint signature.
    Verify {
        /// The export file (JSON Lines).
        file: PathBuf,
        /// A trusted checkpoint-signing public key (`keyward audit public-key`); repeatable.
        #[arg(long = "public-key", required = true, value_name = "KEY")]
        public_keys: Vec<String>,
    },
    /// Print the deployment's checkpoint-signing public key.
    PublicKey,
    /// Replace the checkpoint-signing key (recorded in the chain, signed by the old key).
    RotateSigningKey {
        #[arg(long, env = "USER", default_value = "")]
        requested_by: String,
    },
    /// A readable revocation report for a tenant: each revocation with when the KMS was
    /// first seen refusing, when it was recorded, when caches were purged, the last
    /// plaintext served before, and the requests denied after.
    Report {
        #[arg(long)]
        tenant: String,
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

pub(crate) async fn audit(endpoint: &Target, cmd: AuditCommand) -> anyhow::Result<()> {
    use keyward_proto::v1::audit_service_client::AuditServiceClient;
    match cmd {
        AuditCommand::Verify { file, public_keys } => {
            let keys = public_keys
                .iter()
                .map(|k| keyward_audit::PublicKey::from_text(k))
                .collect::<Result<Vec<_>, _>>()
                .context("invalid --public-key")?;
            let reader = std::io::BufReader::new(
                std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?,
            );
            match keyward_audit::verify_export(reader, &keys) {
                Ok(report) => {
                    println!(
                        "OK: {} records (seq {}..={}) and {} checkpoints verified; head {}",
                        report.records,
                        report.first_seq,
                        report.last_seq,
                        report.checkpoints,
                        hex_string(&report.head_hash)
                    );
                    println!(
                        "complete as of the final checkpoint signed at {} ms since the epoch",
                        report.final_checkpoint_time_ms
                    );
                    Ok(())
                }
                Err(failure) => bail!("verification FAILED: {failure}"),
            }
        }
        AuditCommand::Export { output } => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let mut stream = client
                .export(pb::ExportAuditRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                out.write_all(&chunk.jsonl)?;
            }
            out.flush()?;
            Ok(())
        }
        AuditCommand::Report { tenant } => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let mut records = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_events(pb::ListAuditEventsRequest {
                        tenant_id: tenant.clone(),
                        page_size: 1000,
                        page_token: page_token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                records.extend(page.records);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print!("{}", revocation_report(&tenant, &records)?);
            Ok(())
        }
        AuditCommand::RotateSigningKey { requested_by } => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let key = client
                .rotate_signing_key(pb::RotateSigningKeyRequest { requested_by })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", key.public_key);
            Ok(())
        }
        AuditCommand::PublicKey => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let key = client
                .get_public_key(pb::GetAuditPublicKeyRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", key.public_key);
            Ok(())
        }
        AuditCommand::Events {
            tenant,
            event_type,
            limit,
        } => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let response = client
                .list_events(pb::ListAuditEventsRequest {
                    tenant_id: tenant.unwrap_or_default(),
                    event_type: event_type.unwrap_or_default(),
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for record in response.records {
                println!("{}\t{}", record.seq, record.canonical_json);
            }
            Ok(())
        }
    }
}

