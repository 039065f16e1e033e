//! `keyward audit report --html FILE [--json FILE]`: the access report an auditor opens
//! (docs/auditor-guide.md, "The access report"). Built from a verified export only: the export
//! is checked with the verifier first ([`keyward_audit::verify_export_all`]) and refused if it
//! does not verify, so everything the report shows is what the signed chain proves.
//!
//! Here: the report's data (the verification and the checkpoint it relies on, the callers and
//! purposes from [`keyward_audit::access`], the chart's series, the key timeline's marks from
//! [`keyward_audit::timeline`]) and its JSON; `html` renders the page and `chart` its inline SVG.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use keyward_audit::access::{Accesses, CallerPurpose, Counts};
use keyward_audit::timeline::{Entry, Item, Timeline};
use keyward_audit::{Checkpoint, KeyState, PublicKey, VerifyReport, verify_export_all};
use keyward_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use serde_json::{Value, json};

use crate::cli::Target;
use crate::client::channel;
use crate::exit;
use crate::report::{self, hex_string};

mod chart;
mod html;
#[cfg(test)]
mod tests;

/// The `"report"` field of the JSON: what the file is.
pub(crate) const JSON_KIND: &str = "keyward-access-report";
/// The JSON schema's version (docs/auditor-guide.md); a change that removes or renames a field
/// increments it.
pub(crate) const JSON_VERSION: u64 = 1;

/// The most buckets a chart has: a wider range is charted per 5 minutes, hour, day or week.
pub(crate) const MAX_BUCKETS: i64 = 480;
/// The bucket widths a chart may use, in seconds, smallest first.
const BUCKET_SECONDS: [i64; 7] = [60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400];

/// Where the export came from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// `--input FILE`.
    File(String),
    /// Fetched from the server (`AuditService.Export`, as `keyward audit export` does).
    Server(String),
}

/// A mark on the chart: a change of the tenant's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    /// `revoked`, `restored`, `shredded` or `rekeyed`.
    pub(crate) kind: &'static str,
    pub(crate) seq: u64,
    /// When the record was written (Unix milliseconds).
    pub(crate) time_ms: i64,
    /// What happened, in words.
    pub(crate) detail: String,
}

/// One line of a chart: a purpose's (or a caller's) items per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Series {
    /// The purpose (`None`: no purpose given) or the caller.
    pub(crate) key: Option<String>,
    /// One value per bucket.
    pub(crate) points: Vec<u64>,
}

impl Series {
    /// The name shown in the legend.
    pub(crate) fn name(&self) -> &str {
        self.key.as_deref().unwrap_or("(no purpose given)")
    }
}

/// The charts' time axis and series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chart {
    /// Unix seconds of the first bucket's start.
    pub(crate) start: i64,
    pub(crate) bucket_seconds: i64,
    pub(crate) buckets: usize,
    /// Items per bucket of each purpose, in purpose order (no purpose first).
    pub(crate) by_purpose: Vec<Series>,
    /// Items per bucket of each caller, in principal order.
    pub(crate) by_caller: Vec<Series>,
}

impl Chart {
    /// The axis that covers every access minute and every mark, with the smallest bucket
    /// that keeps it within [`MAX_BUCKETS`]; `None` when there is nothing to chart.
    fn build(accesses: &Accesses, marks: &[Mark]) -> Option<Chart> {
        let mut seconds: Vec<i64> = marks.iter().map(|m| m.time_ms.div_euclid(1000)).collect();
        if let Some((first, last)) = accesses.minutes() {
            seconds.extend([first, last + 59]);
        }
        let (lo, hi) = (*seconds.iter().min()?, *seconds.iter().max()?);
        let bucket_seconds = BUCKET_SECONDS
            .into_iter()
            .find(|b| hi.div_euclid(*b) - lo.div_euclid(*b) < MAX_BUCKETS)
            .unwrap_or(BUCKET_SECONDS[BUCKET_SECONDS.len() - 1]);
        let start = lo.div_euclid(bucket_seconds) * bucket_seconds;
        let buckets =
            usize::try_from(hi.div_euclid(bucket_seconds) - lo.div_euclid(bucket_seconds))
                .unwrap_or(0)
                + 1;
        let series = |points: &[keyward_audit::access::MinuteItems]| {
            let mut values = vec![0u64; buckets];
            for p in points {
                let index = usize::try_from((p.minute - start).div_euclid(bucket_seconds));
                if let Some(slot) = index.ok().and_then(|i| values.get_mut(i)) {
                    *slot = slot.saturating_add(p.items);
                }
            }
            values
        };
        Some(Chart {
            start,
            bucket_seconds,
            buckets,
            by_purpose: accesses
                .by_purpose
                .iter()
                .map(|(purpose, points)| Series {
                    key: purpose.clone(),
                    points: series(points),
                })
                .collect(),
            by_caller: accesses
                .by_caller
                .iter()
                .map(|(caller, points)| Series {
                    key: Some(caller.clone()),
                    points: series(points),
                })
                .collect(),
        })
    }

    /// Unix seconds just past the last bucket.
    pub(crate) fn end(&self) -> i64 {
        self.start + self.bucket_seconds * self.buckets as i64
    }
}

/// The checkpoint the verification relies on: the export's final one, signed over its last
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relied {
    pub(crate) seq: u64,
    pub(crate) time_ms: i64,
    pub(crate) key_id: String,
    /// The trusted key with that id, in its text form.
    pub(crate) public_key: Option<String>,
}

/// Everything the page and the JSON show.
#[derive(Debug, Clone)]
pub(crate) struct AccessReport {
    pub(crate) tenant: String,
    pub(crate) generated_at_ms: i64,
    pub(crate) source: Source,
    pub(crate) verified: VerifyReport,
    pub(crate) checkpoint: Relied,
    /// Records in the export that name the tenant.
    pub(crate) tenant_records: usize,
    pub(crate) accesses: Accesses,
    pub(crate) timeline: Timeline,
    pub(crate) marks: Vec<Mark>,
    pub(crate) chart: Option<Chart>,
}

impl AccessReport {
    /// Verifies `export` under `keys` and builds the report of `tenant`: an export that does
    /// not verify is refused (exit 1), a tenant no record names is an error.
    pub(crate) fn build(
        tenant: &str,
        export: &[u8],
        keys: &[PublicKey],
        source: Source,
        generated_at_ms: i64,
    ) -> anyhow::Result<AccessReport> {
        let verification = verify_export_all(export, keys);
        let Some(verified) = verification.report else {
            let mut text = format!(
                "refusing to report from an export that does not verify: {} problem(s) found:",
                verification.problems.len()
            );
            for problem in &verification.problems {
                text.push_str(&format!("\n  {problem}"));
            }
            return Err(exit::problems(anyhow!(text)));
        };
        let text = std::str::from_utf8(export).context("the export is not UTF-8")?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut last_checkpoint = None;
        for line in text.lines() {
            let value: Value = serde_json::from_str(line).context("an export line is not JSON")?;
            match value.get("type").and_then(Value::as_str) {
                Some("record") => entries.extend(report::entry_from_json(line)?),
                Some("checkpoint") => last_checkpoint = Some(line),
                _ => {}
            }
        }
        // The verifier proved the last line is a checkpoint covering the last record.
        let checkpoint = Checkpoint::from_canonical_json(
            last_checkpoint.context("invariant: a verified export ends with a checkpoint")?,
        )
        .context("the final checkpoint")?;
        let checkpoint = Relied {
            seq: checkpoint.seq,
            time_ms: checkpoint.time_ms,
            public_key: keys
                .iter()
                .chain(&verified.signing_keys_seen)
                .find(|k| k.key_id() == checkpoint.key_id)
                .map(PublicKey::to_text),
            key_id: checkpoint.key_id,
        };
        let timeline = Timeline::build(tenant, &entries).ok_or_else(|| {
            anyhow!(
                "no record in the export names tenant {tenant:?}: there is no such tenant in it \
                 (tenant ids are lowercase)"
            )
        })?;
        let accesses = Accesses::build(tenant, &entries);
        let marks = marks(&timeline);
        let chart = Chart::build(&accesses, &marks);
        Ok(AccessReport {
            tenant: tenant.to_owned(),
            generated_at_ms,
            source,
            verified,
            checkpoint,
            tenant_records: timeline.all_records,
            accesses,
            timeline,
            marks,
            chart,
        })
    }

    /// The report as JSON (schema in docs/auditor-guide.md), raw values: Unix milliseconds,
    /// seqs, hex.
    pub(crate) fn json(&self) -> Value {
        let v = &self.verified;
        let series = |s: &[Series]| -> Vec<Value> {
            s.iter()
                .map(|s| json!({"name": s.key, "points": s.points}))
                .collect()
        };
        json!({
            "report": JSON_KIND,
            "version": JSON_VERSION,
            "tenant": self.tenant,
            "generated_at_ms": self.generated_at_ms,
            "source": match &self.source {
                Source::File(name) => json!({"kind": "file", "name": name}),
                Source::Server(name) => json!({"kind": "server", "name": name}),
            },
            "verification": {
                "ok": true,
                "records": v.records,
                "checkpoints": v.checkpoints,
                "first_seq": v.first_seq,
                "last_seq": v.last_seq,
                "head_hash": hex_string(&v.head_hash),
                "exported_at_ms": v.exported_at_ms,
                "mid_chain_prev_hash": v.mid_chain_prev_hash.map(|h| hex_string(&h)),
                "unknown_events": v.unknown_events,
                "signing_key_ids": v.signing_keys_seen.iter().map(PublicKey::key_id).collect::<Vec<_>>(),
                "checkpoint": {
                    "seq": self.checkpoint.seq,
                    "time_ms": self.checkpoint.time_ms,
                    "key_id": self.checkpoint.key_id,
                    "public_key": self.checkpoint.public_key,
                },
            },
            "tenant_records": self.tenant_records,
            "access_records": self.accesses.records,
            "totals": counts_json(&self.accesses.totals),
            "callers": self.accesses.rows.iter().map(row_json).collect::<Vec<_>>(),
            "chart": self.chart.as_ref().map(|c| json!({
                "value": "items",
                "start": c.start,
                "bucket_seconds": c.bucket_seconds,
                "buckets": c.buckets,
                "by_purpose": series(&c.by_purpose),
                "by_caller": series(&c.by_caller),
            })),
            "marks": self.marks.iter().map(|m| json!({
                "kind": m.kind,
                "seq": m.seq,
                "time_ms": m.time_ms,
                "detail": m.detail,
            })).collect::<Vec<_>>(),
            "revocation_timeline": report::json(&self.timeline),
        })
    }
}

fn counts_json(c: &Counts) -> Value {
    json!({"requests": c.requests, "items": c.items, "errors": c.errors, "bytes": c.bytes})
}

fn row_json(r: &CallerPurpose) -> Value {
    json!({
        "principal": r.principal,
        "purpose": r.purpose,
        "requests": r.counts.requests,
        "items": r.counts.items,
        "errors": r.counts.errors,
        "bytes": r.counts.bytes,
        "first_ms": r.first_ms,
        "last_ms": r.last_ms,
        "by_action": r.by_action.iter().map(|(a, c)| (a.clone(), counts_json(c))).collect::<serde_json::Map<_, _>>(),
        "references": r.references,
        "references_truncated": r.references_truncated,
        "record_seqs": r.seqs,
    })
}

/// The key timeline's changes as chart marks, in time order.
fn marks(timeline: &Timeline) -> Vec<Mark> {
    let mut marks = Vec::new();
    let state = |s: KeyState| match s {
        KeyState::Destroyed => "destroyed",
        KeyState::Revoked => "revoked",
        KeyState::Unavailable => "unavailable",
        KeyState::Restored => "restored",
        _ => "active",
    };
    for item in &timeline.items {
        match item {
            Item::Revocation(r) => {
                let t = &r.recorded.transition;
                marks.push(Mark {
                    kind: "revoked",
                    seq: r.recorded.seq,
                    time_ms: r.recorded.recorded_ms,
                    detail: format!(
                        "binding {} {} ({}): {}",
                        t.binding_id,
                        state(t.to),
                        source(t.source),
                        t.reason
                    ),
                });
                if let Some(restored) = &r.restored {
                    marks.push(Mark {
                        kind: "restored",
                        seq: restored.seq,
                        time_ms: restored.recorded_ms,
                        detail: format!(
                            "binding {} restored ({})",
                            restored.transition.binding_id,
                            source(restored.transition.source)
                        ),
                    });
                }
            }
            Item::Change {
                recorded,
                restored: true,
            } => marks.push(Mark {
                kind: "restored",
                seq: recorded.seq,
                time_ms: recorded.recorded_ms,
                detail: format!(
                    "binding {} restored ({})",
                    recorded.transition.binding_id,
                    source(recorded.transition.source)
                ),
            }),
            _ => {}
        }
    }
    for s in &timeline.shreds {
        marks.push(Mark {
            kind: "shredded",
            seq: s.seq,
            time_ms: s.recorded_ms,
            detail: format!(
                "scope {} shredded by {}: {} data key(s) destroyed ({})",
                s.scope_hmac, s.actor, s.deks, s.reason
            ),
        });
    }
    for r in &timeline.rekeys {
        marks.push(Mark {
            kind: "rekeyed",
            seq: r.seq,
            time_ms: r.recorded_ms,
            detail: format!(
                "re-keyed by {}: binding {} ({}) retired, {} tenant key(s) now under binding {}",
                r.actor, r.binding_id, r.key_ref, r.tenant_keys, r.to_binding_id
            ),
        });
    }
    marks.sort_by_key(|m| (m.time_ms, m.seq));
    marks
}

fn source(s: keyward_audit::RevocationSource) -> &'static str {
    match s {
        keyward_audit::RevocationSource::KmsRefusal => "KMS refusal",
        keyward_audit::RevocationSource::Monitor => "key-state monitor",
        keyward_audit::RevocationSource::Explicit => "explicit call",
        keyward_audit::RevocationSource::Event => "key-state event",
        _ => "other source",
    }
}

/// Runs `keyward audit report --html/--json`: reads the export (`--input`, or the server's
/// whole export), verifies it, writes the files, and says what it wrote on stdout.
pub(crate) async fn run(
    endpoint: &Target,
    tenant: &str,
    input: Option<&Path>,
    keys: &[PublicKey],
    html_out: Option<&Path>,
    json_out: Option<&Path>,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Err(anyhow!(
            "--html and --json need --public-key: the report shows what the export proves under \
             the checkpoint-signing keys you trust (`keyward audit public-key`)"
        ));
    }
    let (export, source) = match input {
        Some(path) => (
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            Source::File(path.display().to_string()),
        ),
        None => (
            fetch_export(endpoint, tenant).await?,
            Source::Server(endpoint.endpoint.clone()),
        ),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let report = AccessReport::build(tenant, &export, keys, source, now_ms)?;
    if let Some(path) = html_out {
        write_file(path, html::page(&report).as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = json_out {
        let mut text = serde_json::to_string_pretty(&report.json())?;
        text.push('\n');
        write_file(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    println!(
        "tenant {}: {} access record(s), {} caller/purpose pair(s), {} mark(s); verified seq {} to {} (checkpoint at seq {} by key {})",
        report.tenant,
        report.accesses.records,
        report.accesses.rows.len(),
        report.marks.len(),
        report.verified.first_seq,
        report.verified.last_seq,
        report.checkpoint.seq,
        report.checkpoint.key_id
    );
    Ok(())
}

/// The tenant's export (its records in full, every other record redacted: docs/audit-format.md
/// §6.2), as `keyward audit export --tenant` fetches it: what a tenant admin or a scoped auditor
/// may read.
async fn fetch_export(endpoint: &Target, tenant: &str) -> anyhow::Result<Vec<u8>> {
    let mut client = AuditServiceClient::new(channel(endpoint).await?);
    let mut stream = client
        .export(pb::ExportAuditRequest {
            tenant_id: tenant.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    let mut export = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(exit::refused)? {
        export.extend_from_slice(&chunk.jsonl);
    }
    Ok(export)
}

/// Writes `bytes` to a temporary file beside `path` and renames it: the file is complete or
/// absent.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
