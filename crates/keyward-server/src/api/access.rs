//! One data-path call's justification and what the call did with it (docs/justifications.md):
//! the justification the policies see, the tenant's decrypt rule checked once per call, and the
//! counts of the call's `access_summary` record.

use keyward_authz::{Action, RequestContext};
use keyward_envelope::TenantId;
use tonic::Request;

use crate::{
    authz::{Authz, Caller},
    error::ServiceError,
    justification::Justification,
    keyring::{AccessCall, Keyring},
};

/// A data-path call's justification and its access counts, recorded by [`CallAccess::finish`]
/// once the call is over (only if some item was authorized: a call the policies refused is an
/// authorization denial, not an access).
#[derive(Debug)]
pub(super) struct CallAccess {
    tenant: TenantId,
    action: Action,
    justification: Option<Justification>,
    /// The caller, from the first authorization that passed.
    principal: Option<std::sync::Arc<str>>,
    /// Whether the tenant's decrypt rule passed (checked once per call).
    rule_passed: bool,
    items: u64,
    errors: u64,
    bytes: u64,
}

impl CallAccess {
    pub(super) fn new(
        tenant: TenantId,
        action: Action,
        justification: Option<Justification>,
    ) -> Self {
        Self {
            tenant,
            action,
            justification,
            principal: None,
            rule_passed: false,
            items: 0,
            errors: 0,
            bytes: 0,
        }
    }

    pub(super) fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The policies' context: the encryption context's `purpose` and the scope, with this
    /// call's justification.
    pub(super) fn context<'a>(
        &'a self,
        purpose: Option<&'a str>,
        scope: Option<&'a str>,
    ) -> RequestContext<'a> {
        RequestContext {
            purpose,
            scope,
            justification: self.justification.as_ref().map(|j| j.purpose.as_str()),
            reference: self
                .justification
                .as_ref()
                .and_then(Justification::reference),
        }
    }

    /// Notes the caller an authorization let through.
    pub(super) fn authorized(&mut self, caller: &Caller) {
        if self.principal.is_none() {
            self.principal = Some(caller.principal());
        }
    }

    /// For calls that read data (Decrypt, DecryptBatch, DecryptStream, Rewrap, RewrapBatch):
    /// the tenant's rule on the purposes that may decrypt, once per call, after the policies
    /// allowed the caller. A refusal is counted as an authorization denial.
    pub(super) async fn check_decrypt_rule<T>(
        &mut self,
        request: &Request<T>,
        authz: &Authz,
        keyring: &Keyring,
    ) -> Result<(), ServiceError> {
        if self.rule_passed {
            return Ok(());
        }
        match keyring
            .check_decrypt_justification(&self.tenant, self.justification.as_ref())
            .await
        {
            Ok(()) => {
                self.rule_passed = true;
                Ok(())
            }
            Err(e) => {
                if matches!(
                    e,
                    ServiceError::JustificationRequired { .. }
                        | ServiceError::PurposeNotAllowed { .. }
                ) {
                    let principal = self.principal.as_deref().unwrap_or("unidentified");
                    tracing::info!(principal, action = self.action.as_str(), tenant = %self.tenant, reason = e.reason(), "justification rule denied");
                    authz.count_rule_denial(request, principal, self.action, &self.tenant);
                }
                Err(e)
            }
        }
    }

    /// Counts one item's outcome: its plaintext bytes when it succeeded; refusals of the
    /// policies and of the tenant's rule are denials, not accesses, and are not counted.
    pub(super) fn item<T>(
        &mut self,
        outcome: &Result<T, ServiceError>,
        bytes: impl FnOnce(&T) -> usize,
    ) {
        match outcome {
            Ok(value) => {
                self.items += 1;
                self.bytes += bytes(value) as u64;
            }
            Err(e) => self.failed(e),
        }
    }

    /// Counts an item that failed, unless the policies or the tenant's rule refused it (a
    /// denial, not an access) or the tenant does not exist (no customer to tell).
    pub(super) fn failed(&mut self, e: &ServiceError) {
        // By reason, which sees through errors shared between concurrent callers.
        if !matches!(
            e.reason(),
            "PERMISSION_DENIED"
                | "UNAUTHENTICATED"
                | "JUSTIFICATION_REQUIRED"
                | "PURPOSE_NOT_ALLOWED"
                | "TENANT_NOT_FOUND"
        ) {
            self.errors += 1;
        }
    }

    /// An item counted as successful whose plaintext was withheld after all (a revocation
    /// committed before the batch's response left): an error, not an access to data.
    pub(super) fn withheld(&mut self, bytes: usize) {
        self.items = self.items.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes as u64);
        self.errors += 1;
    }

    /// Counts a stream once it ended: one item when it completed, else one error; `bytes` of
    /// plaintext either way (a decrypt stream releases authentic frames before a failure).
    pub(super) fn stream_ended(&mut self, completed: bool, bytes: u64) {
        if completed {
            self.items += 1;
        } else {
            self.errors += 1;
        }
        self.bytes += bytes;
    }

    /// Records the call in the tenant's access counts, if any of it was authorized.
    pub(super) fn finish(self, keyring: &Keyring) {
        let Some(principal) = self.principal else {
            return;
        };
        if self.items == 0 && self.errors == 0 {
            return;
        }
        keyring.record_access(AccessCall {
            tenant: self.tenant,
            principal,
            action: self.action.as_str(),
            justification: self.justification,
            items: self.items,
            errors: self.errors,
            bytes: self.bytes,
        });
    }
}
