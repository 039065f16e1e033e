//! [`RecordSealer`]: appends format-v2 records (`docs/audit-format.md` §3.3), which a per-tenant
//! export can redact: it draws each record's salt and computes its tenant tag with the
//! deployment's identifier key.

use std::fmt;
use std::sync::Arc;

use keyward_envelope::TenantId;

use crate::chain_head::ChainHead;
use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::identifier::IdentifierHasher;
use crate::record::{Record, SALT_LEN};

/// The [`IdentifierHasher`] kind of tenant tags.
pub const TENANT_TAG_KIND: &str = "tenant";

/// Builds format-v2 records: `tenant_tag` = [`IdentifierHasher::hash`]`("tenant", tenant id)`
/// (deterministic, so every record of a tenant carries the same tag, and only the holder of the
/// identifier key can compute it: a redacted line does not tell which tenant it is about), and a
/// fresh 16-byte random salt per record (so that the event digest of a redacted line cannot be
/// matched against guessed events).
#[derive(Clone)]
pub struct RecordSealer {
    hasher: Arc<IdentifierHasher>,
}

impl fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordSealer { .. }")
    }
}

impl RecordSealer {
    /// Tags tenants with `hasher` (the deployment's audit identifier key, the one scope HMACs
    /// use).
    pub fn new(hasher: Arc<IdentifierHasher>) -> Self {
        RecordSealer { hasher }
    }

    /// The tag of `tenant`'s records.
    pub fn tenant_tag(&self, tenant: &TenantId) -> String {
        self.hasher.hash(TENANT_TAG_KIND, tenant.as_str())
    }

    /// The format-v2 record that follows `head`, with a fresh salt.
    pub fn append(
        &self,
        head: &ChainHead,
        time_ms: i64,
        event: AuditEvent,
    ) -> Result<Record, AuditError> {
        let mut salt = [0u8; SALT_LEN];
        aws_lc_rs::rand::fill(&mut salt)
            .map_err(|_| AuditError::Encoding("the system random generator failed".into()))?;
        let tag = event.tenant().map(|t| self.tenant_tag(t));
        Record::append_v2(head, time_ms, event, tag, salt)
    }
}
