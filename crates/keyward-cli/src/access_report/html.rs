//! The report as one self-contained HTML page: inline CSS and inline SVG, no script, no
//! external asset; its Content-Security-Policy (`default-src 'none'`) makes the browser refuse
//! anything else. Every text from the records (principals, references, reasons: caller-chosen)
//! goes through [`escape`].

use std::fmt::Write as _;

use super::chart;
use super::{AccessReport, Source};
use crate::report::{self, hex_string, utc_ms};

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
code,pre{font-family:ui-monospace,monospace;font-size:.9em}
pre{background:#f6f6f6;padding:1rem;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tfoot td{font-weight:bold}
.ok{border-left:6px solid #2E7D32;padding-left:1rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:bold}
.refs{max-width:20rem;word-break:break-all}
svg.chart{display:block;margin:1rem 0;max-width:100%;height:auto}
.note{color:#555}
";

/// The page.
pub(crate) fn page(r: &AccessReport) -> String {
    let mut out = String::new();
    let tenant = escape(&r.tenant);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Keyward access report: {tenant}</title><style>{STYLE}</style></head><body>\n\
         <h1>Access report for tenant <code id=\"tenant\">{tenant}</code></h1>\n\
         <p class=\"note\">Generated {generated} from {source}. Times are UTC. Built only from \
         records of a verified export (below); the counts are the sums of the tenant's \
         <code>access_summary</code> records.</p>\n",
        generated = escape(&utc_ms(r.generated_at_ms)),
        source = match &r.source {
            Source::File(name) => format!("the export file <code>{}</code>", escape(name)),
            Source::Server(name) =>
                format!("the export of the server at <code>{}</code>", escape(name)),
        },
    );
    verification(&mut out, r);
    charts(&mut out, r);
    callers(&mut out, r);
    timeline(&mut out, r);
    out.push_str("</body></html>\n");
    out
}

fn verification(out: &mut String, r: &AccessReport) {
    let v = &r.verified;
    let cp = &r.checkpoint;
    let _ = write!(
        out,
        "<h2>Verification</h2>\n<section id=\"verification\" class=\"ok\" data-ok=\"true\">\
         <p><strong>Verified.</strong> Every record from seq {first} to seq {last} is present, in \
         order and unaltered ({records} records, {checkpoints} signed checkpoints), and every \
         checkpoint is signed by a trusted key.</p><dl>\
         <dt>Relies on checkpoint</dt><dd id=\"checkpoint\" data-seq=\"{cseq}\" data-key-id=\"{key_id}\">seq {cseq}, \
         signed at {ctime} by key <code>{key_id}</code>{public}</dd>\
         <dt>Head hash</dt><dd><code>{head}</code></dd>\
         <dt>Export made</dt><dd>{exported} (the header's time, unsigned; compare with the \
         checkpoint's)</dd>\
         <dt>Records of the tenant</dt><dd>{tenant_records}, of which {access} access summaries</dd>",
        first = v.first_seq,
        last = v.last_seq,
        records = v.records,
        checkpoints = v.checkpoints,
        cseq = cp.seq,
        ctime = escape(&utc_ms(cp.time_ms)),
        key_id = escape(&cp.key_id),
        public = cp
            .public_key
            .as_deref()
            .map(|k| format!(" (<code>{}</code>)", escape(k)))
            .unwrap_or_default(),
        head = hex_string(&v.head_hash),
        exported = escape(&utc_ms(v.exported_at_ms)),
        tenant_records = r.tenant_records,
        access = r.accesses.records,
    );
    if let Some(prev) = v.mid_chain_prev_hash {
        let _ = write!(
            out,
            "<dt>Starts mid-chain</dt><dd>seq {}'s link to the record before it (<code>{}</code>) \
             is taken on trust: nothing here proves what came before it</dd>",
            v.first_seq,
            hex_string(&prev)
        );
    }
    if v.unknown_events > 0 {
        let _ = write!(
            out,
            "<dt>Unknown events</dt><dd>{} record(s) of event types this version does not know: \
             verified, not interpreted (not in this report)</dd>",
            v.unknown_events
        );
    }
    out.push_str("</dl></section>\n");
}

fn charts(out: &mut String, r: &AccessReport) {
    out.push_str("<h2>Accesses over time</h2>\n<section id=\"accesses\">");
    match &r.chart {
        None => out.push_str(
            "<p class=\"note\">No access records and no key changes for this tenant in the export.</p>",
        ),
        Some(c) => {
            if r.accesses.records == 0 {
                out.push_str(
                    "<p class=\"note\">No <code>access_summary</code> record of this tenant in the \
                     export: only the key changes are charted.</p>",
                );
            }
            out.push_str(&chart::svg(
                "chart-purpose",
                "Items by declared purpose",
                c,
                &c.by_purpose,
                &r.marks,
            ));
            out.push_str(&chart::svg(
                "chart-caller",
                "Items by caller",
                c,
                &c.by_caller,
                &r.marks,
            ));
            out.push_str(
                "<p class=\"note\">Items: messages sealed or opened (Encrypt, Decrypt, Rewrap), \
                 one per unary call or stream, one per successful batch item. Vertical lines: \
                 the key timeline (revoked, restored, shredded, re-keyed), at the time each \
                 record was written; hover for details.</p>",
            );
        }
    }
    out.push_str("</section>\n");
}

/// References shown per row; the JSON has them all.
const REFERENCES_SHOWN: usize = 20;

fn callers(out: &mut String, r: &AccessReport) {
    out.push_str(
        "<h2>Callers and purposes</h2>\n<table id=\"callers\"><thead><tr><th>Caller</th>\
         <th>Purpose</th><th>Requests</th><th>Items</th><th>Errors</th><th>Bytes</th>\
         <th>First</th><th>Last</th><th>By action (requests / items)</th><th>References</th>\
         <th>Records</th></tr></thead><tbody>\n",
    );
    for row in &r.accesses.rows {
        let actions: Vec<String> = row
            .by_action
            .iter()
            .map(|(a, c)| format!("{} {} / {}", escape(a), c.requests, c.items))
            .collect();
        let mut refs: Vec<String> = row
            .references
            .iter()
            .take(REFERENCES_SHOWN)
            .map(|r| format!("<code>{}</code>", escape(r)))
            .collect();
        if row.references.len() > REFERENCES_SHOWN {
            refs.push(format!(
                "and {} more (in the JSON)",
                row.references.len() - REFERENCES_SHOWN
            ));
        }
        if row.references_truncated {
            refs.push("(some records listed only their first references)".into());
        }
        let _ = writeln!(
            out,
            "<tr data-principal=\"{principal}\" data-purpose=\"{purpose_attr}\">\
             <td data-col=\"principal\">{principal}</td><td data-col=\"purpose\">{purpose}</td>\
             <td class=\"n\" data-col=\"requests\">{requests}</td><td class=\"n\" data-col=\"items\">{items}</td>\
             <td class=\"n\" data-col=\"errors\">{errors}</td><td class=\"n\" data-col=\"bytes\">{bytes}</td>\
             <td data-col=\"first\">{first}</td><td data-col=\"last\">{last}</td>\
             <td data-col=\"actions\">{actions}</td><td class=\"refs\" data-col=\"references\">{refs}</td>\
             <td data-col=\"records\">{records}</td></tr>",
            principal = escape(&row.principal),
            purpose_attr = escape(row.purpose.as_deref().unwrap_or("")),
            purpose = row
                .purpose
                .as_deref()
                .map(escape)
                .unwrap_or_else(|| "<em>(no purpose given)</em>".into()),
            requests = row.counts.requests,
            items = row.counts.items,
            errors = row.counts.errors,
            bytes = row.counts.bytes,
            first = escape(&utc_ms(row.first_ms)),
            last = escape(&utc_ms(row.last_ms)),
            actions = actions.join("<br>"),
            refs = refs.join(" "),
            records = row.seqs.len(),
        );
    }
    let t = &r.accesses.totals;
    let _ = writeln!(
        out,
        "</tbody><tfoot><tr><td colspan=\"2\">Total ({n} records)</td>\
         <td class=\"n\" data-col=\"requests\">{}</td><td class=\"n\" data-col=\"items\">{}</td>\
         <td class=\"n\" data-col=\"errors\">{}</td><td class=\"n\" data-col=\"bytes\">{}</td>\
         <td colspan=\"5\"></td></tr></tfoot></table>",
        t.requests,
        t.items,
        t.errors,
        t.bytes,
        n = r.accesses.records,
    );
}

fn timeline(out: &mut String, r: &AccessReport) {
    out.push_str("<h2>Key timeline</h2>\n<section id=\"timeline\">");
    if r.marks.is_empty() {
        out.push_str(
            "<p class=\"note\">No revocation, restoration, shredding or re-key in the export.</p>",
        );
    } else {
        out.push_str("<table id=\"marks\"><thead><tr><th>When</th><th>What</th><th>Seq</th><th>Detail</th></tr></thead><tbody>");
        for m in &r.marks {
            let (colour, _) = chart::mark_style(m.kind);
            let _ = write!(
                out,
                "<tr data-kind=\"{kind}\"><td>{time}</td><td style=\"color:{colour}\">{kind}</td><td>{seq}</td><td>{detail}</td></tr>",
                kind = escape(m.kind),
                time = escape(&utc_ms(m.time_ms)),
                seq = m.seq,
                detail = escape(&m.detail),
            );
        }
        out.push_str("</tbody></table>");
    }
    let _ = writeln!(
        out,
        "<p>The revocation report (as <code>keyward audit report</code> prints it):</p><pre>{}</pre></section>",
        escape(&report::text(&r.timeline))
    );
}
