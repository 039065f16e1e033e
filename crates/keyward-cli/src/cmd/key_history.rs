//! `keyward tenant keys T`: the tenant's key history (`ListKeyBindings`) as a table, one line
//! per binding, and which older KMS keys still protect data (so must stay enabled) and which
//! may be disabled; `--json` for scripts.

use std::fmt::Write as _;

use keyward_proto::v1::{self as pb, tenant_service_client::TenantServiceClient};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::tenant::key_parts;
use crate::exit;

pub(crate) async fn keys(
    client: &mut TenantServiceClient<Channel>,
    tenant: String,
    json: bool,
) -> anyhow::Result<()> {
    let history = client
        .list_key_bindings(pb::ListKeyBindingsRequest {
            tenant_id: tenant.clone(),
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    if json {
        println!("{}", history_json(&tenant, &history.bindings));
    } else {
        print!("{}", history_text(&tenant, &history.bindings));
    }
    Ok(())
}

/// The stable name of a provider (as the audit log and the configuration spell it).
pub(crate) fn provider_name(kind: pb::ProviderKind) -> &'static str {
    match kind {
        pb::ProviderKind::Local => "local",
        pb::ProviderKind::AwsKms => "aws-kms",
        pb::ProviderKind::GcpKms => "gcp-kms",
        pb::ProviderKind::AzureKeyVault => "azure-key-vault",
        pb::ProviderKind::Pkcs11 => "pkcs11",
        pb::ProviderKind::Unspecified => "unknown",
    }
}

pub(crate) fn state_name(state: pb::KekState) -> &'static str {
    match state {
        pb::KekState::Active => "active",
        pb::KekState::Revoked => "revoked",
        pb::KekState::Unavailable => "unavailable",
        pb::KekState::Restored => "restored",
        pb::KekState::Destroyed => "destroyed",
        pb::KekState::Retired => "retired",
        pb::KekState::Unspecified => "unknown",
    }
}

/// A protobuf Timestamp (its seconds and nanos) in RFC 3339, UTC, milliseconds.
fn time(seconds: i64, nanos: i32) -> String {
    keyward_server::time::rfc3339_utc_ms(seconds * 1000 + i64::from(nanos) / 1_000_000)
}

/// [`time`] of an optional Timestamp field (no dependency on prost-types for its type).
macro_rules! time_of {
    ($t:expr) => {
        $t.as_ref().map(|t| time(t.seconds, t.nanos))
    };
}

/// The key as its owner names it: an AWS key's ARN without the role it is reached through;
/// any other provider's reference as stored.
pub(super) fn key_name(k: &pb::KekBinding) -> String {
    key_parts(k)
        .into_iter()
        .next()
        .map_or_else(|| k.key_ref.clone(), |(_, key)| key)
}

/// What the history says about one binding's key: `None` for the current binding.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Data (not shredded) is wrapped under it: disabling its key makes that data unreadable.
    StillWraps { deks: u64, scopes: u64 },
    /// No data depends on it, but the same key serves binding `other`, which is current or
    /// still wraps data.
    SharedWith { other: i64 },
    /// No data depends on it: its key may be disabled.
    MayDisable,
}

fn binding(u: &pb::KeyBindingUsage) -> pb::KekBinding {
    u.binding.clone().unwrap_or_default()
}

/// The verdict on `usage[i]`: only older bindings (replaced by a newer one) get one.
fn verdict(usage: &[pb::KeyBindingUsage], i: usize) -> Option<Verdict> {
    let line = &usage[i];
    line.replaced_at.as_ref()?;
    if line.deks > 0 {
        return Some(Verdict::StillWraps {
            deks: line.deks,
            scopes: line.scopes,
        });
    }
    let b = binding(line);
    // One KMS key may serve several bindings (registered again after a switch away).
    let needed = usage.iter().map(binding).zip(usage).find(|(other, u)| {
        other.binding_id != b.binding_id
            && other.provider == b.provider
            && other.key_ref == b.key_ref
            && (u.replaced_at.is_none() || u.deks > 0)
    });
    Some(match needed {
        Some((other, _)) => Verdict::SharedWith {
            other: other.binding_id,
        },
        None => Verdict::MayDisable,
    })
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The table, then one sentence per binding: which keys must stay enabled and which may go.
fn history_text(tenant: &str, usage: &[pb::KeyBindingUsage]) -> String {
    let mut out = String::new();
    if usage.is_empty() {
        let _ = writeln!(
            out,
            "tenant {tenant} has no key binding yet: run `keyward tenant register-key`"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "tenant {tenant}: {}, oldest first",
        plural(
            u64::try_from(usage.len()).unwrap_or(u64::MAX),
            "key binding",
            "key bindings"
        )
    );
    let header = [
        "BINDING", "PROVIDER", "KEY", "STATE", "BOUND", "REPLACED", "DEKS", "SCOPES", "SHREDDED",
        "BOUND BY",
    ]
    .map(str::to_owned);
    let mut rows = vec![header];
    for u in usage {
        let b = binding(u);
        let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".to_owned());
        rows.push([
            b.binding_id.to_string(),
            provider_name(b.provider()).to_owned(),
            key_name(&b),
            state_name(b.state()).to_owned(),
            or_dash(time_of!(b.bound_at)),
            or_dash(time_of!(u.replaced_at)),
            u.deks.to_string(),
            u.scopes.to_string(),
            u.deks_shredded.to_string(),
            if u.bound_by.is_empty() {
                "-".to_owned()
            } else {
                u.bound_by.clone()
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let last = row.len() - 1;
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for (i, u) in usage.iter().enumerate() {
        let b = binding(u);
        let (id, key) = (b.binding_id, key_name(&b));
        let _ = match verdict(usage, i) {
            None => writeln!(
                out,
                "binding {id} ({key}) is the current key: new data goes under it"
            ),
            Some(Verdict::StillWraps { deks, scopes }) => writeln!(
                out,
                "binding {id} ({key}) still wraps {} in {}: do not disable it (or first move \
                 them to the current key: keyward tenant rekey {tenant})",
                plural(deks, "DEK", "DEKs"),
                plural(scopes, "scope", "scopes")
            ),
            Some(Verdict::SharedWith { other }) => writeln!(
                out,
                "no data depends on binding {id} ({key}), but the same key serves binding \
                 {other}: keep it enabled"
            ),
            Some(Verdict::MayDisable) => writeln!(
                out,
                "no data depends on binding {id} ({key}): its KMS key may be disabled"
            ),
        };
    }
    out
}

/// `--json`: one object with every binding as the server gave it, and the verdict on its key.
fn history_json(tenant: &str, usage: &[pb::KeyBindingUsage]) -> Value {
    let bindings: Vec<Value> = usage
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let b = binding(u);
            let verdict = match verdict(usage, i) {
                None => "current",
                Some(Verdict::StillWraps { .. }) => "still_wraps_data",
                Some(Verdict::SharedWith { .. }) => "key_serves_another_binding",
                Some(Verdict::MayDisable) => "key_may_be_disabled",
            };
            json!({
                "binding_id": b.binding_id,
                "provider": provider_name(b.provider()),
                "key_ref": b.key_ref,
                "tenant_key_id": b.tenant_key_id,
                "state": state_name(b.state()),
                "state_cause": (!b.state_cause.is_empty()).then_some(&b.state_cause),
                "state_changed_at": time_of!(b.state_changed_at),
                "bound_at": time_of!(b.bound_at),
                "replaced_at": time_of!(u.replaced_at),
                "deks": u.deks,
                "scopes": u.scopes,
                "deks_shredded": u.deks_shredded,
                "bound_by": (!u.bound_by.is_empty()).then_some(&u.bound_by),
                "verdict": verdict,
            })
        })
        .collect();
    json!({ "tenant": tenant, "bindings": bindings })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// A Timestamp at `ms` (the generated code's type, without naming it).
    macro_rules! at {
        ($ms:expr) => {{
            let ms: i64 = $ms;
            let mut t = pb::KekBinding::default().bound_at.unwrap_or_default();
            t.seconds = ms / 1000;
            t.nanos = i32::try_from(ms % 1000).unwrap() * 1_000_000;
            t
        }};
    }

    fn usage(
        id: i64,
        key_ref: &str,
        replaced_at: Option<i64>,
        (deks, scopes, deks_shredded): (u64, u64, u64),
    ) -> pb::KeyBindingUsage {
        pb::KeyBindingUsage {
            binding: Some(pb::KekBinding {
                provider: pb::ProviderKind::AwsKms.into(),
                key_ref: key_ref.into(),
                state: pb::KekState::Active.into(),
                tenant_key_id: format!("tk-{id}"),
                bound_at: Some(at!(1_796_570_581_000 + id * 1000)),
                binding_id: id,
                ..Default::default()
            }),
            replaced_at: replaced_at.map(|ms| at!(ms)),
            deks,
            scopes,
            deks_shredded,
            bound_by: if id == 1 {
                "Service::\"onboarding\"".into()
            } else {
                String::new()
            },
        }
    }

    const A: &str = "arn:aws:kms:eu-west-1:111122223333:key/aaaa";
    const B: &str = "arn:aws:kms:eu-west-1:111122223333:key/bbbb";

    /// One line per binding in aligned columns (an AWS key as its ARN, without the role), then
    /// which keys still protect data and which may be disabled.
    #[test]
    fn the_table_says_which_older_keys_still_protect_data() {
        let history = [
            usage(
                1,
                &format!("{A}?role_arn=arn:aws:iam::1:role/r"),
                Some(1_796_570_600_000),
                (12, 4, 0),
            ),
            usage(2, B, Some(1_796_570_700_000), (0, 0, 3)),
            usage(3, "arn:c", None, (5, 1, 0)),
        ];
        let text = history_text("acme", &history);
        let expected = format!(
            "tenant acme: 3 key bindings, oldest first\n\
             BINDING  PROVIDER  KEY{k}  STATE   BOUND                     REPLACED                  DEKS  SCOPES  SHREDDED  BOUND BY\n\
             1        aws-kms   {A}  active  2026-12-06T15:23:02.000Z  2026-12-06T15:23:20.000Z  12    4       0         Service::\"onboarding\"\n\
             2        aws-kms   {B}  active  2026-12-06T15:23:03.000Z  2026-12-06T15:25:00.000Z  0     0       3         -\n\
             3        aws-kms   arn:c{c}  active  2026-12-06T15:23:04.000Z  -                         5     1       0         -\n\
             binding 1 ({A}) still wraps 12 DEKs in 4 scopes: do not disable it (or first move them to the current key: keyward tenant rekey acme)\n\
             no data depends on binding 2 ({B}): its KMS key may be disabled\n\
             binding 3 (arn:c) is the current key: new data goes under it\n",
            k = " ".repeat(A.len() - 3),
            c = " ".repeat(A.len() - 5),
        );
        assert_eq!(text, expected);
    }

    /// An older binding without data whose key serves the current binding (registered again)
    /// must stay enabled; one DEK in one scope is singular; no binding says how to make one.
    #[test]
    fn a_key_registered_again_stays_enabled_and_counts_are_in_words() {
        let history = [
            usage(1, A, Some(10_000), (0, 0, 0)),
            usage(2, B, Some(20_000), (1, 1, 0)),
            usage(3, A, None, (0, 0, 0)),
        ];
        assert_eq!(verdict(&history, 0), Some(Verdict::SharedWith { other: 3 }));
        assert_eq!(verdict(&history, 2), None);
        let text = history_text("acme", &history);
        assert!(text.contains(&format!(
            "no data depends on binding 1 ({A}), but the same key serves binding 3: keep it enabled\n"
        )));
        assert!(text.contains(&format!(
            "binding 2 ({B}) still wraps 1 DEK in 1 scope: do not disable it (or first move them to the current key: keyward tenant rekey acme)\n"
        )));
        assert_eq!(
            history_text("acme", &[]),
            "tenant acme has no key binding yet: run `keyward tenant register-key`\n"
        );
    }

    #[test]
    fn json_carries_every_field_and_the_verdict() {
        let history = [
            usage(1, A, Some(1_796_570_600_000), (2, 1, 1)),
            usage(2, B, None, (0, 0, 0)),
        ];
        let v = history_json("acme", &history);
        assert_eq!(v["tenant"], "acme");
        let first = &v["bindings"][0];
        assert_eq!(first["binding_id"], 1);
        assert_eq!(first["provider"], "aws-kms");
        assert_eq!(first["key_ref"], A);
        assert_eq!(first["state"], "active");
        assert_eq!(first["state_cause"], Value::Null);
        assert_eq!(first["bound_at"], "2026-12-06T15:23:02.000Z");
        assert_eq!(first["replaced_at"], "2026-12-06T15:23:20.000Z");
        assert_eq!(
            (first["deks"].as_u64(), first["scopes"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(first["deks_shredded"], 1);
        assert_eq!(first["bound_by"], "Service::\"onboarding\"");
        assert_eq!(first["verdict"], "still_wraps_data");
        let second = &v["bindings"][1];
        assert_eq!(second["replaced_at"], Value::Null);
        assert_eq!(second["bound_by"], Value::Null);
        assert_eq!(second["verdict"], "current");
    }
}
