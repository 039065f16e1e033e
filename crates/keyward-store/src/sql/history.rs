//! A tenant's key history (every binding with what depends on it and who bound it) and what a
//! whole store holds (the backup summary).
//!
//! Counts are correlated sub-selects of one statement, so they describe one snapshot on both
//! backends (a statement sees one snapshot on PostgreSQL under READ COMMITTED, and on SQLite it
//! runs in one read transaction): a shred that moves a DEK from `deks` to `dek_tombstones` in
//! one transaction is counted on exactly one side. A binding's DEKs and scopes are those below
//! the tenant keys its KEK wraps now (after a re-key: none for the older bindings, all for the
//! current one); its shredded DEKs are those of the tenant key created with it. Each sub-select is an index search:
//! `deks_by_tenant_key (tenant_id, tenant_key_id)` and `dek_tombstones_by_tenant (tenant_id,
//! tenant_key_id)`.
//!
//! Who bound a binding is not a column: it is the actor of the binding's `kek_binding_changed`
//! record, written in the binding's own transaction. That record is read back through the
//! `audit_records_by_type (event_type, seq)` index (the deployment's binding changes: one per
//! registration, far fewer than the tenant's other records), checked against its stored hash
//! like every record the store returns.

use std::collections::HashMap;

use sqlx::{Database, Row as _};

use super::bindings::BINDING_COLUMNS;
use super::{backend, sql_impl};
use crate::decode;
use crate::{AuditEvent, BindingUsage, StoreContents, StoreError, TenantId};

/// The `event_type` of the records that name who bound a binding.
const BINDING_CHANGED: &str = "kek_binding_changed";

sql_impl!(impl => {
    fn usage_from_row(row: &<D::Db as Database>::Row) -> Result<BindingUsage, StoreError> {
        // The counts are computed, not stored: a negative one would be the driver's fault, but
        // is reported like any other value that fails validation.
        const T: &str = "binding usage";
        Ok(BindingUsage {
            binding: Self::binding_from_row(row)?,
            deks: decode::counter(T, "deks", Self::col(row, T, "deks")?)?,
            scopes: decode::counter(T, "scopes", Self::col(row, T, "scopes")?)?,
            deks_shredded: decode::counter(T, "deks_shredded", Self::col(row, T, "deks_shredded")?)?,
            bound_by: None,
        })
    }

    pub(crate) async fn try_binding_usage(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<BindingUsage>, StoreError> {
        let sql = format!(
            "SELECT b.*, \
             (SELECT COUNT(*) FROM deks d JOIN tenant_keys w ON w.id = d.tenant_key_id \
              WHERE d.tenant_id = b.tenant_id AND w.kek_binding_id = b.id) AS deks, \
             (SELECT COUNT(DISTINCT d.scope) FROM deks d JOIN tenant_keys w ON w.id = d.tenant_key_id \
              WHERE d.tenant_id = b.tenant_id AND w.kek_binding_id = b.id) AS scopes, \
             (SELECT COUNT(*) FROM dek_tombstones t \
              WHERE t.tenant_id = b.tenant_id AND t.tenant_key_id = b.tenant_key_id) \
              AS deks_shredded \
             FROM ({BINDING_COLUMNS} WHERE kb.tenant_id = $1) b ORDER BY b.id"
        );
        let query = sqlx::query(&sql).bind(tenant.as_str());
        let mut usage = self.fetch_all(query, Self::usage_from_row).await?;
        if usage.is_empty() {
            return Ok(usage);
        }
        // After the bindings: a binding read above committed with its record, so the record
        // is there; a binding committed since is not listed and its record is ignored.
        let actors = self.binding_actors(tenant).await?;
        for line in &mut usage {
            line.bound_by = actors.get(&line.binding.id).cloned().flatten();
        }
        Ok(usage)
    }

    /// The actor of each of the tenant's `kek_binding_changed` records, by binding id (the
    /// first record of a binding, should there be several).
    async fn binding_actors(
        &self,
        tenant: &TenantId,
    ) -> Result<HashMap<i64, Option<String>>, StoreError> {
        let query = sqlx::query(
            "SELECT seq, time_ms, event_type, tenant_id, body, hash FROM audit_records \
             WHERE event_type = $1 AND tenant_id = $2 ORDER BY seq",
        )
        .bind(BINDING_CHANGED)
        .bind(tenant.as_str());
        let records = self.fetch_all(query, Self::record_from_row).await?;
        let mut actors = HashMap::new();
        for record in records {
            if let AuditEvent::KekBindingChanged {
                binding_id, actor, ..
            } = record.event()
            {
                actors.entry(*binding_id).or_insert_with(|| actor.clone());
            }
        }
        Ok(actors)
    }

    /// What the store holds and how old the oldest of it is, read in one statement (one
    /// snapshot). `keyward store backup` reports it for the copy it wrote: a backup keeps every
    /// key it holds, including keys shredded after it was taken (docs/store.md, "Backups").
    pub async fn contents(&self) -> Result<StoreContents, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tenants) AS tenants, \
             (SELECT COUNT(*) FROM tenant_keys) AS tenant_keys, \
             (SELECT COUNT(*) FROM deks) AS deks, \
             (SELECT COUNT(*) FROM dek_tombstones) AS dek_tombstones, \
             (SELECT MIN(created_at_ms) FROM deks) AS oldest_dek, \
             (SELECT MIN(created_at_ms) FROM tenant_keys) AS oldest_tenant_key, \
             (SELECT MAX(time_ms) FROM audit_records) AS last_record",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let count = |table: &str, column: &str| -> Result<u64, StoreError> {
            let value: i64 = row
                .try_get(column)
                .map_err(|e| StoreError::Corrupt(format!("{table}: COUNT(*): {e}")))?;
            decode::counter(table, "COUNT(*)", value)
        };
        let time = |table: &str, column: &str| -> Result<Option<i64>, StoreError> {
            row.try_get::<Option<i64>, _>(column)
                .map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))
        };
        Ok(StoreContents {
            tenants: count("tenants", "tenants")?,
            tenant_keys: count("tenant_keys", "tenant_keys")?,
            deks: count("deks", "deks")?,
            dek_tombstones: count("dek_tombstones", "dek_tombstones")?,
            oldest_dek_created_at_ms: time("deks.created_at_ms", "oldest_dek")?,
            oldest_tenant_key_created_at_ms: time("tenant_keys.created_at_ms", "oldest_tenant_key")?,
            last_record_at_ms: time("audit_records.time_ms", "last_record")?,
        })
    }
});
