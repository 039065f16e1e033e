//! `TenantService.ShredScope` and `ShredScopes`: crypto-shredding one scope, and retention
//! shredding (docs/deleting-data.md). Authorized as their own actions; the keyring does the work.

use keyward_authz::{Action, RequestContext};
use keyward_proto::v1 as pb;
use keyward_store::{Scope, WrittenBefore};
use tonic::{Request, Response, Status};

use super::convert::{millis, reason, tenant_id, timestamp};
use super::split;
use super::tenant::TenantApi;
use crate::{error::ServiceError, now_ms};

/// Scopes one `ShredScopes` call shreds when the request says 0.
pub(super) const DEFAULT_SHRED_PAGE: u32 = 100;
/// The most scopes one `ShredScopes` call may shred.
pub(super) const MAX_SHRED_PAGE: u32 = 1000;

impl TenantApi {
    pub(super) async fn shred_scope_call(
        &self,
        request: Request<pb::ShredScopeRequest>,
    ) -> Result<Response<pb::ShredScopeResponse>, Status> {
        let (head, r) = split(request);
        let tenant = tenant_id(&r.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::ShredScope,
            Some(&tenant),
            &RequestContext::default(),
        )?;
        let scope = named_scope(&r.scope)?;
        let reason = reason(&r.reason)?;
        let result = self
            .keyring
            .shred_scope(&tenant, &scope, &caller.actor(&r.requested_by), reason)
            .await?;
        Ok(Response::new(pb::ShredScopeResponse {
            deks_shredded: u32::try_from(result.tombstones.len()).unwrap_or(u32::MAX),
            shredded_at: Some(timestamp(result.shredded_at_ms)),
        }))
    }

    pub(super) async fn shred_scopes_call(
        &self,
        request: Request<pb::ShredScopesRequest>,
    ) -> Result<Response<pb::ShredScopesResponse>, Status> {
        let (head, r) = split(request);
        let tenant = tenant_id(&r.tenant_id)?;
        let caller = self.authz.check(
            &head,
            Action::ShredScopes,
            Some(&tenant),
            &RequestContext::default(),
        )?;
        let cutoff_ms = cutoff(r.created_before.as_ref())?;
        let scope_prefix = prefix(&r.scope_prefix)?;
        let max_scopes = page(r.max_scopes)?;
        // A dry run changes nothing and records nothing: no reason needed.
        let reason = if r.dry_run { "" } else { reason(&r.reason)? };
        let rule = WrittenBefore {
            cutoff_ms,
            max_age_ms: i64::try_from(self.keyring.dek_max_age().as_millis()).unwrap_or(i64::MAX),
            scope_prefix,
        };
        let outcome = self
            .keyring
            .shred_scopes(
                &tenant,
                rule,
                r.dry_run,
                max_scopes,
                &caller.actor(&r.requested_by),
                reason,
            )
            .await?;
        Ok(Response::new(pb::ShredScopesResponse {
            scopes: u32::try_from(outcome.scopes).unwrap_or(u32::MAX),
            deks: outcome.deks,
            scopes_remaining: u32::try_from(outcome.remaining).unwrap_or(u32::MAX),
        }))
    }
}

/// ShredScope's scope: required (the scope Encrypt used when it named none is "default").
fn named_scope(raw: &str) -> Result<Scope, ServiceError> {
    if raw.is_empty() {
        return Err(ServiceError::invalid(
            "scope",
            "required: the scope to shred (Encrypt's scope when it named none is \"default\")",
        ));
    }
    Scope::try_from(raw).map_err(|e| ServiceError::invalid("scope", e.to_string()))
}

/// The retention cutoff: required, not in the future (a cutoff after now would shred scopes
/// that are still being written to).
fn cutoff(raw: Option<&prost_types::Timestamp>) -> Result<i64, ServiceError> {
    let Some(raw) = raw else {
        return Err(ServiceError::invalid(
            "created_before",
            "required: scopes whose data was all written before this time are shredded",
        ));
    };
    if !(0..1_000_000_000).contains(&raw.nanos) {
        return Err(ServiceError::invalid(
            "created_before",
            "nanos must be within 0..1e9",
        ));
    }
    let ms = millis(raw);
    if ms > now_ms() {
        return Err(ServiceError::invalid(
            "created_before",
            "must not be in the future",
        ));
    }
    Ok(ms)
}

fn prefix(raw: &str) -> Result<String, ServiceError> {
    if raw.len() > Scope::MAX_LEN || raw.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "scope_prefix",
            format!("at most {} bytes, no control characters", Scope::MAX_LEN),
        ));
    }
    Ok(raw.to_owned())
}

fn page(raw: u32) -> Result<u32, ServiceError> {
    match raw {
        0 => Ok(DEFAULT_SHRED_PAGE),
        n if n <= MAX_SHRED_PAGE => Ok(n),
        n => Err(ServiceError::invalid(
            "max_scopes",
            format!("{n} is above the limit of {MAX_SHRED_PAGE} scopes per call"),
        )),
    }
}
