//! `keyward tenant rekey T`: moves the tenant's data off its older KMS keys (`RekeyTenant`, a
//! batch per call, with a progress line on a terminal) and says which keys may then be
//! disabled; `--status` only reports (`GetRekeyStatus`). docs/rekey.md.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use keyward_proto::v1::{self as pb, tenant_service_client::TenantServiceClient};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::key_history::{key_name, provider_name};
use crate::exit;

pub(crate) struct RekeyArgs {
    pub(crate) tenant: String,
    pub(crate) status_only: bool,
    pub(crate) batch: u32,
    pub(crate) json: bool,
    pub(crate) requested_by: String,
}

pub(crate) async fn rekey(
    client: &mut TenantServiceClient<Channel>,
    args: RekeyArgs,
) -> anyhow::Result<()> {
    let status = client
        .get_rekey_status(pb::GetRekeyStatusRequest {
            tenant_id: args.tenant.clone(),
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    if args.status_only || status.done {
        print_status(&args, &status, None);
        return Ok(());
    }
    let total = status.tenant_keys_remaining;
    let progress = std::io::stderr().is_terminal() && !args.json;
    let (mut rewrapped, mut retired) = (0u32, 0u32);
    let last = loop {
        let answer = client
            .rekey_tenant(pb::RekeyTenantRequest {
                tenant_id: args.tenant.clone(),
                max_tenant_keys: args.batch.max(1),
                requested_by: args.requested_by.clone(),
            })
            .await
            .map_err(|status| {
                if progress {
                    eprintln!();
                }
                if rewrapped > 0 {
                    eprintln!(
                        "Stopped after moving {rewrapped} tenant key{}; what moved stays moved. Fix the cause below and run the same command again to resume (`keyward tenant rekey {} --status` shows what is left).",
                        plural(rewrapped),
                        args.tenant
                    );
                }
                exit::refused(status)
            })?
            .into_inner();
        rewrapped += answer.rewrapped;
        retired += answer.retired;
        if progress {
            eprint!(
                "\rre-keying tenant {}: {rewrapped}/{total} tenant keys moved, {} left   ",
                args.tenant, answer.tenant_keys_remaining
            );
            let _ = std::io::stderr().flush();
        }
        // A call that moved and retired nothing while work is left would only repeat itself.
        if answer.done || (answer.rewrapped == 0 && answer.retired == 0) {
            if progress {
                eprintln!();
            }
            break answer;
        }
    };
    print_status(&args, &last, Some((rewrapped, retired)));
    if !last.done {
        anyhow::bail!(
            "the re-key of tenant {} is not done: {} tenant keys are left (see above)",
            args.tenant,
            last.tenant_keys_remaining
        );
    }
    Ok(())
}

fn print_status(args: &RekeyArgs, status: &pb::RekeyStatus, work: Option<(u32, u32)>) {
    if args.json {
        println!("{}", status_json(&args.tenant, status, work));
    } else {
        print!("{}", status_text(&args.tenant, status, work));
    }
}

/// `binding 3 (aws-kms arn:aws:kms:…)`.
fn named(b: &pb::KekBinding) -> String {
    format!(
        "binding {} ({} {})",
        b.binding_id,
        provider_name(b.provider()),
        key_name(b)
    )
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn status_text(tenant: &str, s: &pb::RekeyStatus, work: Option<(u32, u32)>) -> String {
    let mut out = String::new();
    let target = s.target.clone().unwrap_or_default();
    if let Some((rewrapped, retired)) = work {
        let _ = writeln!(
            out,
            "Re-keyed tenant {tenant}: moved {rewrapped} tenant key{} under {}; retired {retired} older binding{}.",
            plural(rewrapped),
            named(&target),
            plural(retired)
        );
    }
    let _ = writeln!(
        out,
        "tenant {tenant}: re-key {}",
        if s.done { "done" } else { "not done" }
    );
    let _ = writeln!(
        out,
        "  current key: {} wraps {} tenant key{}",
        named(&target),
        s.tenant_keys_current,
        plural(s.tenant_keys_current)
    );
    if s.tenant_keys_remaining > 0 {
        let _ = writeln!(
            out,
            "  left to move: {} tenant key{} ({} data key{} below {}); keep {} enabled until the re-key is done:",
            s.tenant_keys_remaining,
            plural(s.tenant_keys_remaining),
            s.deks_remaining,
            if s.deks_remaining == 1 { "" } else { "s" },
            if s.tenant_keys_remaining == 1 {
                "it"
            } else {
                "them"
            },
            if s.pending_bindings.len() == 1 {
                "this key"
            } else {
                "these keys"
            },
        );
        for b in &s.pending_bindings {
            let state = super::key_history::state_name(b.state());
            let _ = writeln!(out, "    {}, {state}", named(b));
        }
    }
    for b in &s.retired_bindings {
        let _ = writeln!(
            out,
            "  retired: {}: no data depends on it; its KMS key may be disabled or scheduled for deletion",
            named(b)
        );
    }
    if !s.last_error.is_empty() {
        let _ = writeln!(out, "  the scheduled re-key last stopped: {}", s.last_error);
    }
    if !s.done && work.is_none() {
        let _ = writeln!(out, "  run `keyward tenant rekey {tenant}` to move them");
    }
    out
}

fn status_json(tenant: &str, s: &pb::RekeyStatus, work: Option<(u32, u32)>) -> Value {
    let binding = |b: &pb::KekBinding| {
        json!({
            "binding_id": b.binding_id,
            "provider": provider_name(b.provider()),
            "key_ref": b.key_ref,
            "state": super::key_history::state_name(b.state()),
        })
    };
    json!({
        "tenant": tenant,
        "done": s.done,
        "target": s.target.as_ref().map(binding),
        "tenant_keys_current": s.tenant_keys_current,
        "tenant_keys_remaining": s.tenant_keys_remaining,
        "deks_remaining": s.deks_remaining,
        "pending_bindings": s.pending_bindings.iter().map(binding).collect::<Vec<_>>(),
        "retired_bindings": s.retired_bindings.iter().map(binding).collect::<Vec<_>>(),
        "rewrapped": work.map(|w| w.0),
        "retired": work.map(|w| w.1),
        "last_error": (!s.last_error.is_empty()).then_some(&s.last_error),
    })
}
