//! The at-scale run's report: the Markdown table on stdout, the targets (issue #20) and the
//! JSON.

use std::{path::Path, time::Duration};

use super::{Params, Run, stats};
use crate::harness;

/// How long after a refusal is recorded another replica may still serve (its gate closes when the
/// store's notification arrives): the p99 target of `keyward-bench replicas` (issue #9).
const FAN_OUT: Duration = Duration::from_millis(100);

/// "count (latest start after the record)".
fn served_after(after: &[Duration]) -> String {
    match after.iter().max() {
        None => "0".to_owned(),
        Some(latest) => format!("{} (up to {:.0} ms after)", after.len(), ms(*latest)),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

struct Target {
    what: String,
    met: bool,
    got: String,
}

pub(super) fn report(params: &Params, runs: &[Run], json: &Path) -> anyhow::Result<()> {
    let expected = 3600.0 / params.interval.as_secs_f64();
    let mut text = format!(
        "Revocation window at scale: {} warm tenants (+{} idle), a local key each, {} ms per KMS call, \
         monitor interval {} s, budget {} checks/s and {} in flight per replica, cache TTL {} s; \
         {} keys disabled at random over one interval (seed {})\n\
         | replicas | store | setup | window p50 | window p99 | window max | refused/disabled | recorded after disable (p50 / max) | plaintexts after the refusal | canary calls per tenant-hour (1 per interval: {expected:.0}) | idle tenants' KMS calls | monitor overcommitted in the measurement (max lag) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        params.tenants,
        params.idle,
        params.kms_latency.as_millis(),
        params.interval.as_secs(),
        params.budget,
        params.concurrent_checks,
        params.ttl,
        params.disable,
        params.seed,
    );
    let mut targets = Vec::new();
    let first_rate = runs
        .first()
        .map(|r| r.canaries_per_tenant_hour(params.tenants));
    for run in runs {
        let (p50, p99, max) = run.window_stats();
        let (r50, _, rmax) = stats(&run.recorded);
        let refused = run.windows.iter().flatten().count();
        let rate = run.canaries_per_tenant_hour(params.tenants);
        text.push_str(&format!(
            "| {} | {} | {:.0} s | {} | {} | {} | {}/{} | {} / {} | {} | {:.1} | {} | {} ({} ms) |\n",
            run.replicas,
            if run.replicas == 1 {
                "SQLite"
            } else {
                "PostgreSQL"
            },
            run.setup.as_secs_f64(),
            secs(p50),
            secs(p99),
            secs(max),
            refused,
            run.windows.len(),
            secs(r50),
            secs(rmax),
            served_after(&run.served_after_refusal),
            rate,
            run.idle_calls,
            match run.overcommitted {
                Some(until) => format!("until t0 + {:.0} s", until.as_secs_f64()),
                None => "no".to_owned(),
            },
            run.max_lag_ms,
        ));
        let r = run.replicas;
        targets.push(Target {
            what: format!(
                "{r} replica(s): every disabled key refused within the poll bound, no Decrypt failing otherwise"
            ),
            met: refused == run.windows.len() && run.other_errors == 0,
            got: format!(
                "{refused}/{} refused, {} other errors",
                run.windows.len(),
                run.other_errors
            ),
        });
        targets.push(Target {
            what: format!(
                "{r} replica(s): window p99 <= {} s",
                params.target_p99().as_secs()
            ),
            met: refused == run.windows.len() && p99 <= params.target_p99(),
            got: secs(p99),
        });
        targets.push(Target {
            what: format!(
                "{r} replica(s): window max <= {} s",
                params.target_max().as_secs()
            ),
            met: refused == run.windows.len() && max <= params.target_max(),
            got: secs(max),
        });
        let all_recorded = run.recorded.iter().all(Option::is_some);
        if r == 1 {
            targets.push(Target {
                what: "1 replica: 0 plaintexts for Decrypts started after the refusal was recorded"
                    .to_owned(),
                met: all_recorded && run.served_after_refusal.is_empty(),
                got: served_after(&run.served_after_refusal),
            });
        } else {
            // The replica that records the refusal closes its gate before the record; the others
            // close theirs when the store's notification reaches them (`keyward-bench replicas`
            // measures that fan-out; its target is 100 ms, issue #9). Decrypts they start
            // meanwhile are served: shown in the table, and bounded here by the fan-out target.
            let late = run
                .served_after_refusal
                .iter()
                .filter(|d| **d > FAN_OUT)
                .count();
            targets.push(Target {
                what: format!(
                    "{r} replicas: 0 plaintexts for Decrypts started more than {} ms (the fan-out target of `replicas`) after the refusal was recorded",
                    FAN_OUT.as_millis()
                ),
                met: all_recorded && late == 0,
                got: format!("{late}; within it: {}", served_after(&run.served_after_refusal)),
            });
        }
        targets.push(Target {
            what: format!("{r} replica(s): idle tenants' keys get 0 KMS calls"),
            met: run.idle_calls == 0,
            got: run.idle_calls.to_string(),
        });
        if let Some(base) = first_rate
            && run.replicas != runs[0].replicas
        {
            let ratio = rate / base;
            targets.push(Target {
                what: format!(
                    "{r} replicas: canary calls per tenant-hour within 10 % of {} replica(s)'",
                    runs[0].replicas
                ),
                met: (ratio - 1.0).abs() <= 0.10,
                got: format!("{rate:.1} vs {base:.1} (x{ratio:.2})"),
            });
        }
    }
    text.push_str("\nTargets\n");
    for t in &targets {
        text.push_str(&format!(
            "- [{}] {} (got {})\n",
            if t.met { "met" } else { "NOT MET" },
            t.what,
            t.got
        ));
    }
    println!("{text}");
    let runs_json: Vec<serde_json::Value> = runs
        .iter()
        .map(|run| {
            let (p50, p99, max) = run.window_stats();
            serde_json::json!({
                "replicas": run.replicas,
                "store": if run.replicas == 1 { "sqlite" } else { "postgres" },
                "setup_seconds": run.setup.as_secs_f64(),
                "window_p50_ms": ms(p50),
                "window_p99_ms": ms(p99),
                "window_max_ms": ms(max),
                "windows_ms": run.windows.iter().map(|w| w.map(ms)).collect::<Vec<_>>(),
                "recorded_after_disable_ms": run.recorded.iter().map(|w| w.map(ms)).collect::<Vec<_>>(),
                "plaintexts_after_refusal": run.served_after_refusal.len(),
                "plaintexts_after_refusal_started_ms_after_record": run.served_after_refusal.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "other_errors": run.other_errors,
                "canary_calls": run.canaries,
                "measured_seconds": run.measured.as_secs_f64(),
                "canary_calls_per_tenant_hour": run.canaries_per_tenant_hour(params.tenants),
                "idle_kms_calls": run.idle_calls,
                "monitor_caught_up_after_settling_seconds": run.caught_up.as_secs_f64(),
                "monitor_overcommitted_until_seconds_after_t0": run.overcommitted.map(|d| d.as_secs_f64()),
                "monitor_max_lag_ms": run.max_lag_ms,
            })
        })
        .collect();
    harness::write_json(
        json,
        &serde_json::json!({
            "revocation_at_scale": {
                "tenants": params.tenants,
                "idle": params.idle,
                "interval_seconds": params.interval.as_secs(),
                "budget_per_second": params.budget,
                "concurrent_checks": params.concurrent_checks,
                "disabled": params.disable,
                "kms_latency_ms": params.kms_latency.as_millis() as u64,
                "cache_ttl_seconds": params.ttl,
                "seed": params.seed,
                "runs": runs_json,
                "targets": targets.iter().map(|t| serde_json::json!({
                    "target": t.what, "met": t.met, "got": t.got,
                })).collect::<Vec<_>>(),
            }
        }),
    )?;
    let missed: Vec<&str> = targets
        .iter()
        .filter(|t| !t.met)
        .map(|t| t.what.as_str())
        .collect();
    anyhow::ensure!(missed.is_empty(), "targets missed: {}", missed.join("; "));
    Ok(())
}
