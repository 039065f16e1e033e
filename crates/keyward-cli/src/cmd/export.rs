//! `keyward export --tenant T --out DIR`: the exit kit (docs/exit.md). Streams the tenant's key
//! hierarchy from `ExportKeyHierarchy` into the documented files (keyward_open's writer: data
//! keys and tombstones written as they arrive, the manifest last), checks the stream's trailer
//! against what arrived, and prints a summary. An export that fails part-way leaves nothing.

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, anyhow, bail};
use keyward_kms::ProviderKind;
use keyward_open::{
    ExportInfo, ExportWriter,
    format::{AuditRefs, DataKeyEntry, TenantKeyEntry, TombstoneEntry},
};
use keyward_proto::v1::{
    self as pb, export_key_hierarchy_chunk::Item, tenant_service_client::TenantServiceClient,
};
use keyward_server::time::{millis, rfc3339_utc_ms};
use keyward_store::{KeyId, TenantId};

use super::key_history::{provider_name, state_name};
use crate::cli::{ExportArgs, Target};
use crate::client::channel;
use crate::exit;

/// Data keys between two progress lines.
const PROGRESS_EVERY: u64 = 1000;

pub(crate) async fn export(target: &Target, args: ExportArgs) -> anyhow::Result<()> {
    let tenant = TenantId::try_from(args.tenant.as_str())
        .map_err(|e| exit::local(anyhow!("--tenant: {e}")))?;
    // The directory first: a refused one costs no call and no audit record.
    let mut writer = ExportWriter::create(&args.out, &tenant).map_err(|e| exit::local(e.into()))?;
    let mut client = TenantServiceClient::new(channel(target).await?);
    let mut stream = client
        .export_key_hierarchy(pb::ExportKeyHierarchyRequest {
            tenant_id: tenant.to_string(),
            requested_by: args.requested_by,
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    let progress = std::io::stderr().is_terminal();

    let Some(Item::Header(header)) = next(&mut stream).await? else {
        bail!("the server's export did not start with its header");
    };
    if header.format_version != keyward_open::format::FORMAT_VERSION
        || header.tenant_id != tenant.as_str()
    {
        bail!(
            "the server exports format version {} of tenant {:?}; this keyward writes version {} of {tenant}",
            header.format_version,
            header.tenant_id,
            keyward_open::format::FORMAT_VERSION
        );
    }
    let exported_at_ms = header.exported_at.as_ref().map_or(0, millis);
    let mut keks: Vec<(String, String)> = Vec::new();
    let trailer = loop {
        let Some(item) = next(&mut stream).await? else {
            bail!(
                "the export stopped before its end (no trailer): it is incomplete, and nothing \
                 was kept; run it again"
            );
        };
        match item {
            Item::TenantKey(key) => {
                let entry = tenant_key(&tenant, &key)?;
                let kek = format!("{} {}", entry.provider, entry.key_ref);
                if key.binding_state() != pb::KekState::Active {
                    keks.push((kek, state_name(key.binding_state()).to_owned()));
                } else {
                    keks.push((kek, String::new()));
                }
                writer.tenant_key(entry);
            }
            Item::DataKey(key) => {
                writer.data_key(&data_key(&tenant, &key)?)?;
                let n = writer.counts().data_keys;
                if progress && n % PROGRESS_EVERY == 0 {
                    eprint!("\rexported {n} data keys ");
                    let _ = std::io::stderr().flush();
                }
            }
            Item::Tombstone(t) => writer.tombstone(&tombstone(&t))?,
            Item::Trailer(trailer) => break trailer,
            Item::Header(_) => bail!("the server's export carries a second header"),
        }
    };
    if progress && writer.counts().data_keys >= PROGRESS_EVERY {
        eprintln!();
    }
    let counts = writer.counts();
    let sent = (trailer.tenant_keys, trailer.data_keys, trailer.tombstones);
    if sent != (counts.tenant_keys, counts.data_keys, counts.tombstones) {
        bail!(
            "the server sent {sent:?} (tenant keys, data keys, tombstones) but {:?} arrived: \
             nothing was kept; run it again",
            (counts.tenant_keys, counts.data_keys, counts.tombstones)
        );
    }
    let dir = writer.dir().to_owned();
    let manifest = writer
        .finish(ExportInfo {
            exported_at: rfc3339_utc_ms(exported_at_ms),
            exported_at_ms,
            audit: AuditRefs {
                head_seq: header.audit_seq,
                head_hash: header.audit_head_hash,
                export_record_seq: trailer.audit_seq,
            },
        })
        .map_err(|e| exit::local(e.into()))?;

    println!(
        "Exported tenant {tenant}'s key hierarchy to {}: {} tenant key{}, {} data key{}, {} \
         tombstone{} (shredded data keys).",
        dir.display(),
        counts.tenant_keys,
        plural(counts.tenant_keys),
        counts.data_keys,
        plural(counts.data_keys),
        counts.tombstones,
        plural(counts.tombstones),
    );
    keks.sort();
    keks.dedup();
    for (kek, state) in &keks {
        if state.is_empty() {
            println!("  wrapped by {kek}");
        } else {
            println!("  wrapped by {kek} (its Keyward binding is {state})");
        }
    }
    println!(
        "No key is in clear: reading the data needs your KMS key. Decrypt an envelope with \
         `keyward-open decrypt --export {} --context K=V …` (docs/exit.md).",
        dir.display()
    );
    println!(
        "Recorded in the audit log as record {} (key_hierarchy_exported).",
        manifest.audit.export_record_seq
    );
    Ok(())
}

/// The next item of the stream (`None` at its end); a status from the server is its refusal.
async fn next(
    stream: &mut tonic::Streaming<pb::ExportKeyHierarchyChunk>,
) -> anyhow::Result<Option<Item>> {
    match stream.message().await.map_err(exit::refused)? {
        Some(chunk) => chunk
            .item
            .map(Some)
            .ok_or_else(|| anyhow!("the server sent an empty export item")),
        None => Ok(None),
    }
}

fn id(text: &str, what: &str) -> anyhow::Result<KeyId> {
    text.parse()
        .map_err(|_| anyhow!("the server sent {what} {text:?}, which is not a key id"))
}

fn tenant_key(tenant: &TenantId, key: &pb::ExportedTenantKey) -> anyhow::Result<TenantKeyEntry> {
    let provider: ProviderKind = provider_name(key.provider())
        .parse()
        .with_context(|| format!("tenant key {}", key.id))?;
    Ok(TenantKeyEntry::new(
        tenant,
        &id(&key.id, "tenant key id")?,
        key.created_at.as_ref().map_or(0, millis),
        provider,
        &key.key_ref,
        key.binding_id,
        state_name(key.binding_state()),
        &key.wrapped,
    ))
}

fn data_key(tenant: &TenantId, key: &pb::ExportedDataKey) -> anyhow::Result<DataKeyEntry> {
    DataKeyEntry::new(
        tenant,
        &id(&key.id, "data key id")?,
        &id(&key.tenant_key_id, "tenant key id")?,
        &key.scope,
        key.created_at.as_ref().map_or(0, millis),
        key.retired_at.as_ref().map(millis),
        &key.wrapped,
    )
    .map_err(|e| anyhow!(e))
}

fn tombstone(t: &pb::ExportedTombstone) -> TombstoneEntry {
    TombstoneEntry {
        id: t.id.clone(),
        tenant_key_id: t.tenant_key_id.clone(),
        scope_hmac: t.scope_hmac.clone(),
        created_at_ms: t.created_at.as_ref().map_or(0, millis),
        shredded_at_ms: t.shredded_at.as_ref().map_or(0, millis),
        shredded_by: t.shredded_by.clone(),
        reason: t.reason.clone(),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
