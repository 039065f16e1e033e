//! Per-tenant exports (`docs/audit-format.md` §6.2): which tenant an export is for
//! ([`TenantScope`], named by its header), and which records it shows in full
//! ([`shown_in_full`]); every other record of the range is a redacted line.

use keyward_envelope::TenantId;

use crate::event::AuditEvent;
use crate::record::Record;

/// What the header of a per-tenant export names: the tenant, the tag its records carry (as the
/// server states it; the verifier checks it against the tenant's full records), and the time
/// range asked for (`from_ms` inclusive, `to_ms` exclusive).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    pub tenant: TenantId,
    /// `hmac-sha256:…`, the [`RecordSealer::tenant_tag`](crate::RecordSealer::tenant_tag) of
    /// `tenant`.
    pub tenant_tag: String,
    /// Unix milliseconds, inclusive.
    pub from_ms: i64,
    /// Unix milliseconds, exclusive.
    pub to_ms: i64,
}

impl TenantScope {
    /// The scope of an export of `tenant`'s records (tagged `tenant_tag`) in `from_ms..to_ms`.
    pub fn new(tenant: TenantId, tenant_tag: String, from_ms: i64, to_ms: i64) -> Self {
        TenantScope {
            tenant,
            tenant_tag,
            from_ms,
            to_ms,
        }
    }
}

/// Whether a per-tenant export for the tenant tagged `tenant_tag` shows `record` in full: the
/// tenant's own records (format v2, that tag), and the deployment's `signing_key_rotated`
/// records (the verifier needs them to follow key rotations; they hold only public keys).
/// Everything else, including the other deployment-wide records (admin actions, which may name
/// other tenants in their detail, and denials of deployment-wide calls), is redacted. A
/// format-v1 record is never shown in a per-tenant export: it could not be redacted, so such an
/// export starts after the last format-v1 record.
pub fn shown_in_full(record: &Record, tenant_tag: &str) -> bool {
    match record.tenant_tag() {
        Some(tag) => tag == tenant_tag,
        None => {
            record.version() == 2 && matches!(record.event(), AuditEvent::SigningKeyRotated { .. })
        }
    }
}
