//! `keyward tenant shred …`: crypto-shred one scope, or run retention shredding page by page
//! (docs/deleting-data.md).

use std::io::{IsTerminal as _, Write as _};

use keyward_proto::v1::{self as pb, tenant_service_client::TenantServiceClient};
use keyward_server::time::{millis, timestamp};
use tonic::transport::Channel;

use crate::cli::ShredArgs;
use crate::exit;
use crate::report::utc_ms;

/// What a shred leaves behind that the customer should know about, printed after every shred.
const BACKUPS: &str = "Backups of the store made before the shred still hold the wrapped data \
     keys until they are deleted: crypto-shredding is as strong as backup retention \
     (docs/deleting-data.md).";

pub(crate) async fn shred(
    client: &mut TenantServiceClient<Channel>,
    args: ShredArgs,
) -> anyhow::Result<()> {
    let reason = args.reason.clone().unwrap_or_default();
    if let Some(scope) = &args.scope {
        let answer = client
            .shred_scope(pb::ShredScopeRequest {
                tenant_id: args.tenant.clone(),
                scope: scope.clone(),
                reason,
                requested_by: args.requested_by.clone(),
            })
            .await
            .map_err(exit::refused)?
            .into_inner();
        let at = answer
            .shredded_at
            .as_ref()
            .map_or_else(String::new, |t| utc_ms(millis(t)));
        match answer.deks_shredded {
            0 => println!(
                "Scope {scope:?} of tenant {} had no data key: nothing to shred (recorded at {at}).",
                args.tenant
            ),
            n => {
                println!(
                    "Shredded scope {scope:?} of tenant {}: {n} data key{} destroyed at {at}.",
                    args.tenant,
                    plural(u64::from(n))
                );
                println!(
                    "Its envelopes now fail DATA_KEY_SHREDDED; the next Encrypt in the scope gets a new data key."
                );
                println!("{BACKUPS}");
            }
        }
        return Ok(());
    }
    let Some(cutoff_ms) = args.created_before else {
        anyhow::bail!("name a scope (--scope) or a retention cutoff (--created-before)");
    };
    let what = match &args.scope_prefix {
        Some(prefix) => format!("scopes of tenant {} starting with {prefix:?}", args.tenant),
        None => format!("scopes of tenant {}", args.tenant),
    };
    let request = |dry_run: bool| pb::ShredScopesRequest {
        tenant_id: args.tenant.clone(),
        created_before: Some(timestamp(cutoff_ms)),
        scope_prefix: args.scope_prefix.clone().unwrap_or_default(),
        dry_run,
        max_scopes: args.max_scopes.unwrap_or(0),
        reason: reason.clone(),
        requested_by: args.requested_by.clone(),
    };
    if args.dry_run {
        let answer = client
            .shred_scopes(request(true))
            .await
            .map_err(exit::refused)?
            .into_inner();
        println!(
            "Dry run: {} {what} hold only data written before {}: shredding them would destroy {} data key{}. Nothing was changed.",
            answer.scopes,
            utc_ms(cutoff_ms),
            answer.deks,
            plural(answer.deks)
        );
        println!(
            "(A scope counts once each of its data keys could no longer encrypt at that time: retired, or older than the server's rotation.max_age_seconds; docs/deleting-data.md.)"
        );
        return Ok(());
    }
    let progress = std::io::stderr().is_terminal();
    let (mut scopes, mut deks) = (0u64, 0u64);
    loop {
        let answer = client
            .shred_scopes(request(false))
            .await
            .map_err(|status| {
                if scopes > 0 {
                    eprintln!(
                        "Stopped after shredding {scopes} scopes ({deks} data keys); run the same command again to resume."
                    );
                }
                exit::refused(status)
            })?
            .into_inner();
        scopes += u64::from(answer.scopes);
        deks += answer.deks;
        if progress {
            eprint!(
                "\rshredded {scopes} scopes ({deks} data keys), {} left   ",
                answer.scopes_remaining
            );
            let _ = std::io::stderr().flush();
        }
        // A page that shredded nothing while scopes remain means they are being written to
        // again (each scope is re-checked in its transaction): stop rather than spin.
        if answer.scopes_remaining == 0 || answer.scopes == 0 {
            if progress {
                eprintln!();
            }
            if answer.scopes_remaining > 0 {
                println!(
                    "{} {what} matched but were written to again while being shredded: kept.",
                    answer.scopes_remaining
                );
            }
            break;
        }
    }
    println!(
        "Shredded {scopes} {what} whose data was all written before {}: {deks} data key{} destroyed.",
        utc_ms(cutoff_ms),
        plural(deks)
    );
    if deks > 0 {
        println!("{BACKUPS}");
    }
    Ok(())
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
