//! `keyward audit …`: export, verify, report, list and rotate (docs/auditor-guide.md).

use std::path::Path;

use anyhow::{Context as _, anyhow};
use keyward_audit::{
    PublicKey, TenantReport, Verification, VerifyReport, timeline, verify_export_all,
};
use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use serde_json::{Value, json};

use crate::cli::{AuditCommand, Format, Target};
use crate::client::channel;
use crate::exit;
use crate::report::{self, hex_string, utc_ms};

pub(crate) async fn audit(endpoint: &Target, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            file,
            public_keys,
            format,
        } => {
            let bytes = read_export(&file)?;
            let verification = verify_export_all(bytes.as_slice(), &public_keys);
            match (&verification.report, format) {
                (Some(report), Format::Text) => print!("{}", proven_text(report)),
                (Some(report), Format::Json) => println!("{}", proven_json(report)),
                (None, Format::Text) => {
                    return Err(exit::problems(anyhow!(
                        "verification FAILED: {}",
                        problems_text(&file, &verification)
                    )));
                }
                (None, Format::Json) => {
                    println!("{}", problems_json(&verification));
                    return Err(exit::problems(anyhow!(
                        "verification FAILED: {} problem(s) found in {} (listed in the JSON output)",
                        verification.problems.len(),
                        file.display()
                    )));
                }
            }
            Ok(())
        }
        AuditCommand::Export {
            output,
            tenant,
            from,
            to,
        } => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let mut stream = client
                .export(pb::ExportAuditRequest {
                    tenant_id: tenant.unwrap_or_default(),
                    from: from.map(keyward_server::time::timestamp),
                    to: to.map(keyward_server::time::timestamp),
                })
                .await
                .map_err(exit::refused)?
                .into_inner();
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            while let Some(chunk) = stream.message().await.map_err(exit::refused)? {
                out.write_all(&chunk.jsonl)?;
            }
            out.flush()?;
            Ok(())
        }
        AuditCommand::Report {
            tenant,
            from_export,
            public_keys,
            format,
            html,
            json,
        } => {
            if html.is_some() || json.is_some() {
                return crate::access_report::run(
                    endpoint,
                    &tenant,
                    from_export.as_deref(),
                    &public_keys,
                    html.as_deref(),
                    json.as_deref(),
                )
                .await;
            }
            let (entries, whence) = match &from_export {
                Some(file) => (
                    verified_entries(file, &public_keys)?,
                    format!("no record in {}", file.display()),
                ),
                None => (
                    listed_entries(endpoint, &tenant).await?,
                    "no audit record".to_owned(),
                ),
            };
            let report = timeline::Timeline::build(&tenant, &entries).ok_or_else(|| {
                anyhow!("{whence} names tenant {tenant:?}: there is no such tenant (tenant ids are lowercase; `keyward audit events` lists what is recorded)")
            })?;
            match format {
                Format::Text => print!("{}", report::text(&report)),
                Format::Json => println!("{}", report::json(&report)),
            }
            Ok(())
        }
        AuditCommand::RotateSigningKey { requested_by } => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let key = client
                .rotate_signing_key(pb::RotateSigningKeyRequest { requested_by })
                .await
                .map_err(exit::refused)?
                .into_inner();
            print_public_key(&key.public_key);
            Ok(())
        }
        AuditCommand::PublicKey => {
            let mut client = AuditServiceClient::new(channel(endpoint).await?);
            let key = client
                .get_public_key(pb::GetAuditPublicKeyRequest {})
                .await
                .map_err(exit::refused)?
                .into_inner();
            print_public_key(&key.public_key);
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
                .map_err(exit::refused)?
                .into_inner();
            for record in response.records {
                println!("{}\t{}", record.seq, record.canonical_json);
            }
            Ok(())
        }
    }
}

/// The key on stdout (what `--public-key` takes); its id, which `audit verify` names keys by,
/// on stderr.
fn print_public_key(text: &str) {
    println!("{text}");
    match PublicKey::from_text(text) {
        Ok(key) => eprintln!(
            "key id {} (`keyward audit verify` names keys by their id)",
            key.key_id()
        ),
        Err(e) => eprintln!("warning: the server's key is not a valid public key: {e}"),
    }
}

/// The whole export, read once: what is verified is what is reported from.
fn read_export(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The records of an export that verifies under `keys`; an export that does not is refused.
fn verified_entries(file: &Path, keys: &[PublicKey]) -> anyhow::Result<Vec<timeline::Entry>> {
    let bytes = read_export(file)?;
    let verification = verify_export_all(bytes.as_slice(), keys);
    if verification.report.is_none() {
        return Err(exit::problems(anyhow!(
            "refusing to report from an export that does not verify: {}",
            problems_text(file, &verification)
        )));
    }
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", file.display()))?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: a line is not JSON", file.display()))?;
        if value.get("type").and_then(Value::as_str) == Some("record")
            && let Some(entry) = report::entry_from_json(line)?
        {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// Every record the live server lists for the tenant, oldest first.
async fn listed_entries(endpoint: &Target, tenant: &str) -> anyhow::Result<Vec<timeline::Entry>> {
    let mut client = AuditServiceClient::new(channel(endpoint).await?);
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(pb::ListAuditEventsRequest {
                tenant_id: tenant.to_owned(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .map_err(exit::refused)?
            .into_inner();
        for record in &page.records {
            entries.extend(report::entry_from_json(&record.canonical_json)?);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(entries)
}

/// `3 problems found in FILE:` and one line per problem.
fn problems_text(file: &Path, verification: &Verification) -> String {
    let mut text = format!(
        "{} problem(s) found in {}:",
        verification.problems.len(),
        file.display()
    );
    for problem in &verification.problems {
        text.push_str(&format!("\n  {problem}"));
    }
    if !verification.read_to_end {
        text.push_str(
            "\n  (checking stopped there: without a valid header the rest cannot be checked)",
        );
    }
    text
}

fn problems_json(verification: &Verification) -> Value {
    let problems: Vec<Value> = verification
        .problems
        .iter()
        .map(|p| {
            json!({
                "location": p.location(),
                "line": (!p.end_of_export).then_some(p.line),
                "end_of_export": p.end_of_export,
                "seq": p.seq,
                "kind": p.kind.as_str(),
                "detail": p.detail,
            })
        })
        .collect();
    json!({"ok": false, "problems": problems, "read_to_end": verification.read_to_end})
}

/// What a verified per-tenant export proved, in one sentence (docs/auditor-guide.md).
fn tenant_statement(r: &VerifyReport, t: &TenantReport) -> String {
    let key = r
        .signing_keys_seen
        .last()
        .map_or_else(|| "no key".to_owned(), PublicKey::key_id);
    format!(
        "{} records of tenant {} between {} and {}; chain intact from seq {} to seq {}; signed by key {} at {}",
        t.records_in_range,
        t.scope.tenant,
        bound(t.scope.from_ms),
        bound(t.scope.to_ms),
        r.first_seq,
        r.last_seq,
        key,
        utc_ms(r.final_checkpoint_time_ms)
    )
}

/// A range bound: a UTC time, or "the start"/"now" for an unbounded side.
fn bound(ms: i64) -> String {
    match ms {
        i64::MIN => "the start of the chain".to_owned(),
        i64::MAX => "the export".to_owned(),
        ms => utc_ms(ms),
    }
}

/// The per-tenant part of the text report.
fn tenant_text(r: &VerifyReport, t: &TenantReport) -> String {
    let mut out = format!(
        "{}
",
        tenant_statement(r, t)
    );
    out.push_str(&format!(
        "tenant {}: {} records shown in full ({} in the range), {} records of others redacted (each proven not to be {}'s), {} deployment-wide records shown
",
        t.scope.tenant, t.records, t.records_in_range, t.redacted, t.scope.tenant, t.deployment_records
    ));
    if t.tag_confirmed {
        out.push_str(&format!(
            "tenant tag {}: confirmed by the tenant's own records
",
            t.scope.tenant_tag
        ));
    } else {
        out.push_str(&format!(
            "tenant tag {}: NOT confirmed (no record of the tenant in this export): it is the server's word; compare it with an earlier export, it never changes
",
            t.scope.tenant_tag
        ));
    }
    if r.first_seq == 1 {
        out.push_str("start: the export begins at the start of the chain (seq 1): nothing is missing before it\n");
    } else if t.starts_before_range() {
        out.push_str("start: the export begins with the record just before the range: nothing of the range is missing before it
");
    } else {
        out.push_str(&format!(
            "start: the export begins at seq {} (the first format-v2 record at or after the start of the range, or the start of the chain): records before it are not covered
",
            r.first_seq
        ));
    }
    if t.ends_after_range() {
        out.push_str("end: the export ends with the record just after the range: nothing of the range is missing after it
");
    } else {
        out.push_str(&format!(
            "end: the export ends at seq {}, inside the range: records appended after it (after the export was made) are not covered
",
            r.last_seq
        ));
    }
    out
}

/// What a successful verification proved, in words.
fn proven_text(r: &VerifyReport) -> String {
    let range = if r.records == 0 {
        "no records".to_owned()
    } else {
        format!("seq {} to seq {}", r.first_seq, r.last_seq)
    };
    let mut out = format!(
        "OK: {} records and {} checkpoints verified ({range}). Times are UTC.\n",
        r.records, r.checkpoints
    );
    if let Some(t) = &r.tenant {
        out.push_str(&tenant_text(r, t));
    }
    out.push_str(&format!(
        "proven: every record from seq {} to seq {} is present, in order and unaltered, and \
         every checkpoint is signed by a trusted key\n",
        r.first_seq, r.last_seq
    ));
    let keys: Vec<String> = r
        .signing_keys_seen
        .iter()
        .map(|k| format!("{} ({})", k.key_id(), k.to_text()))
        .collect();
    out.push_str(&format!("signing keys seen: {}\n", keys.join(", ")));
    out.push_str(&format!(
        "final checkpoint: signed at {}: the chain is proven complete up to seq {} as of \
         this time; check that it is when the export was made (the unsigned header says {})\n",
        utc_ms(r.final_checkpoint_time_ms),
        r.last_seq,
        utc_ms(r.exported_at_ms)
    ));
    out.push_str(&format!("head hash: {}\n", hex_string(&r.head_hash)));
    if let Some(prev) = r.mid_chain_prev_hash {
        out.push_str(&format!(
            "starts mid-chain: seq {}'s link to the record before it ({}) is taken on trust; \
             nothing here proves what came before seq {}\n",
            r.first_seq,
            hex_string(&prev),
            r.first_seq
        ));
    }
    if r.unknown_events > 0 {
        out.push_str(&format!(
            "{} records have event types this verifier does not know: their hashes and links \
             were verified, their fields were not interpreted\n",
            r.unknown_events
        ));
    }
    out
}

fn proven_json(r: &VerifyReport) -> Value {
    json!({
        "ok": true,
        "records": r.records,
        "checkpoints": r.checkpoints,
        "first_seq": r.first_seq,
        "last_seq": r.last_seq,
        "head_hash": hex_string(&r.head_hash),
        "signing_keys_seen": r.signing_keys_seen.iter().map(|k| json!({
            "key_id": k.key_id(),
            "public_key": k.to_text(),
        })).collect::<Vec<_>>(),
        "final_checkpoint_time_ms": r.final_checkpoint_time_ms,
        "exported_at_ms": r.exported_at_ms,
        "mid_chain_prev_hash": r.mid_chain_prev_hash.map(|h| hex_string(&h)),
        "unknown_events": r.unknown_events,
        "v2_records": r.v2_records,
        "tenant": r.tenant.as_ref().map(|t| json!({
            "statement": tenant_statement(r, t),
            "tenant": t.scope.tenant.as_str(),
            "tenant_tag": t.scope.tenant_tag,
            "tag_confirmed": t.tag_confirmed,
            "from_ms": (t.scope.from_ms != i64::MIN).then_some(t.scope.from_ms),
            "to_ms": (t.scope.to_ms != i64::MAX).then_some(t.scope.to_ms),
            "records": t.records,
            "records_in_range": t.records_in_range,
            "redacted": t.redacted,
            "deployment_records": t.deployment_records,
            "starts_before_range": t.starts_before_range(),
            "ends_after_range": t.ends_after_range(),
        })),
    })
}
