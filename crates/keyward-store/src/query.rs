//! [`AuditQuery`]: which audit records [`Store::audit_records`](crate::Store::audit_records)
//! returns.

use crate::{AuditEvent, StoreError, TenantId};

#[cfg(doc)]
use crate::Store;

/// Which audit records [`Store::audit_records`] returns: those matching every given filter,
/// `seq > after_seq`, in ascending `seq` order, at most `limit`.
///
/// Build it with `AuditQuery::default()` and the `with_*` methods (or by assigning fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditQuery {
    /// Only records about this tenant ([`AuditEvent::tenant`]).
    pub tenant: Option<TenantId>,
    /// Only events of this type ([`AuditEvent::event_type`], e.g. `"dek_created"`); a name not in
    /// [`AuditEvent::TYPES`] is `InvalidInput`.
    pub event_type: Option<String>,
    /// Only records with `time_ms >= from_ms`.
    pub from_ms: Option<i64>,
    /// Only records with `time_ms < to_ms` (exclusive).
    pub to_ms: Option<i64>,
    /// Paging cursor: only records with `seq > after_seq` (0: from the start). Pass the last
    /// returned record's seq to get the next page.
    pub after_seq: u64,
    /// Page size; 0 means [`AuditQuery::MAX_LIMIT`], larger values are capped to it.
    pub limit: u32,
}

impl AuditQuery {
    /// The largest page [`Store::audit_records`] returns.
    pub const MAX_LIMIT: u32 = 1000;

    /// Only records about `tenant`.
    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Only events of type `event_type` (e.g. `"dek_created"`).
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Only records with `from_ms <= time_ms < to_ms`.
    pub fn with_time_range(mut self, from_ms: Option<i64>, to_ms: Option<i64>) -> Self {
        self.from_ms = from_ms;
        self.to_ms = to_ms;
        self
    }

    /// Only records with `seq > after_seq`.
    pub fn with_after_seq(mut self, after_seq: u64) -> Self {
        self.after_seq = after_seq;
        self
    }

    /// At most `limit` records (0 or more than [`AuditQuery::MAX_LIMIT`]: that maximum).
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// The page size actually used: `limit`, or [`AuditQuery::MAX_LIMIT`] for 0 or more.
    pub fn effective_limit(&self) -> u32 {
        if self.limit == 0 {
            Self::MAX_LIMIT
        } else {
            self.limit.min(Self::MAX_LIMIT)
        }
    }

    /// Rejects an unknown event type name (most likely a typo, which would match nothing).
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if let Some(event_type) = &self.event_type
            && !AuditEvent::TYPES.contains(&event_type.as_str())
        {
            return Err(StoreError::InvalidInput(format!(
                "unknown audit event type {event_type:?}"
            )));
        }
        Ok(())
    }
}
