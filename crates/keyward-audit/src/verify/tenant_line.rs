//! The tenant checks of a record line (`docs/audit-format.md` §7, rules 2b): in a per-tenant
//! export, that the tenant's records are shown in full and no other is; in a whole-chain
//! export, that every tenant's format-v2 records carry one tag, and no two tenants the same.

use serde_json::Value;

use super::{FailureKind, Flow, Verifier, fail};
use crate::event::AuditEvent;
use crate::record::{RawFormat, RawRecord};

impl Verifier {
    pub(super) fn tenant_checks(
        &mut self,
        n: usize,
        r: &RawRecord,
        event: Option<&AuditEvent>,
        intact: bool,
    ) -> Flow {
        let seq = Some(r.seq);
        // The tenant the event names: from the typed event, or (an event type this verifier
        // does not know) its "tenant" field if it has one.
        let tenant: Option<String> = match event {
            Some(e) => e.tenant().map(|t| t.as_str().to_owned()),
            None => r
                .event
                .get("tenant")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        // Times never decrease along the chain (the store appends at max(now, previous)); a
        // record out of place is reported by the position checks, not here.
        let in_place = self
            .last
            .is_some_and(|l| l.seq.checked_add(1) == Some(r.seq));
        if in_place
            && let Some(previous) = self.last_time_ms
            && r.time_ms < previous
        {
            self.report(fail(
                n,
                seq,
                FailureKind::Malformed,
                format!(
                    "time_ms {} is before the previous record's {previous}: times never decrease along the chain",
                    r.time_ms
                ),
            ))?;
        }
        self.last_time_ms = Some(r.time_ms);
        // A full format-v2 record's tag must agree with its event's tenant.
        if let RawFormat::V2 { tenant_tag, .. } = &r.format
            && event.is_some()
            && tenant.is_some() != tenant_tag.is_some()
        {
            self.report(fail(
                n,
                seq,
                FailureKind::Disclosed,
                match &tenant {
                    Some(t) => {
                        format!("the event names tenant {t} but the record has no tenant_tag")
                    }
                    None => "the event names no tenant but the record has a tenant_tag".into(),
                },
            ))?;
        }
        let Some(scope) = self.scope.clone() else {
            // An edited record was reported as such: its tag or tenant disagreeing with the
            // other records' is a consequence of the edit, not a problem of its own.
            if !intact {
                return Ok(());
            }
            return self.whole_chain_tags(n, r, tenant);
        };
        if self.tenant.first_time_ms.is_none() {
            self.tenant.first_time_ms = Some(r.time_ms);
        }
        let t = scope.tenant.as_str();
        match &r.format {
            RawFormat::V1 => self.report(fail(
                n,
                seq,
                FailureKind::Malformed,
                "a format-v1 record in a per-tenant export: only format-v2 records can be shown there (§6.2)".into(),
            )),
            RawFormat::Redacted { tenant_tag, .. } => {
                if tenant_tag.as_deref() == Some(scope.tenant_tag.as_str()) {
                    return self.report(fail(
                        n,
                        seq,
                        FailureKind::Withheld,
                        format!(
                            "record of tenant {t} withheld: this redacted line carries the tenant's tag {}",
                            scope.tenant_tag
                        ),
                    ));
                }
                self.tenant.redacted += 1;
                Ok(())
            }
            RawFormat::V2 { tenant_tag, .. } => match tenant_tag {
                Some(tag) if *tag == scope.tenant_tag => {
                    if tenant.as_deref() != Some(t) {
                        return self.report(fail(
                            n,
                            seq,
                            FailureKind::Disclosed,
                            format!(
                                "the record carries tenant {t}'s tag but its event is about {}: the header's tag is not {t}'s, or the record was tagged wrongly",
                                tenant.as_deref().unwrap_or("no tenant")
                            ),
                        ));
                    }
                    self.tenant.records += 1;
                    if (scope.from_ms..scope.to_ms).contains(&r.time_ms) {
                        self.tenant.in_range += 1;
                    }
                    Ok(())
                }
                Some(_) => self.report(fail(
                    n,
                    seq,
                    FailureKind::Disclosed,
                    format!(
                        "a record of another tenant ({}) is shown in full in an export for {t}",
                        tenant.as_deref().unwrap_or("an unknown tenant")
                    ),
                )),
                None if matches!(event, Some(AuditEvent::SigningKeyRotated { .. })) => {
                    self.tenant.deployment += 1;
                    Ok(())
                }
                None => self.report(fail(
                    n,
                    seq,
                    FailureKind::Disclosed,
                    format!(
                        "a deployment-wide {} record is shown in full in an export for {t}: only signing_key_rotated records are",
                        r.event_type()
                    ),
                )),
            },
        }
    }

    /// A whole-chain export: no redacted line, and one tag per tenant, one tenant per tag.
    fn whole_chain_tags(&mut self, n: usize, r: &RawRecord, tenant: Option<String>) -> Flow {
        let seq = Some(r.seq);
        match &r.format {
            RawFormat::V1 => Ok(()),
            RawFormat::Redacted { .. } => self.report(fail(
                n,
                seq,
                FailureKind::Malformed,
                "a redacted line in a whole-chain export (only a per-tenant export, version 2, redacts)".into(),
            )),
            RawFormat::V2 { tenant_tag, .. } => {
                let (Some(tenant), Some(tag)) = (tenant, tenant_tag) else {
                    return Ok(());
                };
                let known_tag = self.tag_of.get(&tenant).cloned();
                let known_tenant = self.tenant_of.get(tag).cloned();
                if let Some(known) = known_tag.filter(|k| k != tag) {
                    return self.report(fail(
                        n,
                        seq,
                        FailureKind::Disclosed,
                        format!("tenant {tenant} is tagged {tag} here but {known} before"),
                    ));
                }
                if let Some(other) = known_tenant.filter(|o| *o != tenant) {
                    return self.report(fail(
                        n,
                        seq,
                        FailureKind::Disclosed,
                        format!("tag {tag} of tenant {tenant} was tenant {other}'s before"),
                    ));
                }
                self.tag_of.insert(tenant.clone(), tag.clone());
                self.tenant_of.insert(tag.clone(), tenant);
                Ok(())
            }
        }
    }
}
