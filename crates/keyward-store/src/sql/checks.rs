//! The key-state monitor's shared schedule (`key_checks`, schema version 6): which bindings' keys
//! replicas hold unwrapped, when each is next due for a canary check, and which replica claimed
//! it (docs/adr/0012-monitor-schedule.md).
//!
//! None of these statements takes the audit chain's write lock: they write no audit record and
//! touch only `key_checks`, each in a statement of its own (an autocommit transaction).

use sqlx::Database;

use super::bindings::BINDING_COLUMNS;
use super::{backend, sql_impl};
use crate::{KeyCheck, StoreError, TenantId, TenantKeyRecord, WrappedKey};

sql_impl!(impl => {
    pub(crate) async fn try_hold_key(
        &self,
        tenant: &TenantId,
        binding_id: i64,
        until_ms: i64,
        check_at_ms: i64,
    ) -> Result<(), StoreError> {
        let known = sqlx::query("SELECT 1 FROM kek_bindings WHERE id = $1 AND tenant_id = $2")
            .bind(binding_id)
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Err(StoreError::NotFound(format!("KEK binding {binding_id} of tenant {tenant}")));
        }
        // Raise the holding, never lower it (another replica may hold the key longer); the
        // check is due at the earlier of the scheduled one and this one (a tenant's interval
        // may have been shortened since it was scheduled; a running check's due time is past).
        sqlx::query(
            "INSERT INTO key_checks (binding_id, tenant_id, held_until_ms, due_at_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (binding_id) DO UPDATE SET \
             held_until_ms = CASE WHEN key_checks.held_until_ms > excluded.held_until_ms \
                 THEN key_checks.held_until_ms ELSE excluded.held_until_ms END, \
             due_at_ms = CASE WHEN key_checks.due_at_ms IS NULL \
                 OR excluded.due_at_ms < key_checks.due_at_ms \
                 THEN excluded.due_at_ms ELSE key_checks.due_at_ms END",
        )
        .bind(binding_id)
        .bind(tenant.as_str())
        .bind(until_ms)
        .bind(check_at_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn try_claim_key_checks(
        &self,
        replica: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<KeyCheck>, StoreError> {
        let claim = format!(
            "UPDATE key_checks SET lease_owner = $1, lease_until_ms = $2 \
             WHERE binding_id IN (SELECT binding_id FROM key_checks \
                 WHERE due_at_ms IS NOT NULL AND due_at_ms <= $3 AND lease_until_ms <= $3 \
                 ORDER BY due_at_ms LIMIT $4{}) \
             RETURNING binding_id",
            D::CLAIM_LOCK
        );
        let claimed: Vec<i64> = sqlx::query_scalar(&claim)
            .bind(replica)
            .bind(lease_until_ms)
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // One read for the whole batch: the bindings, their wrapped tenant keys, their holdings
        // and their tenants' intervals.
        let ids = claimed.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        // The canary unwraps a tenant key the binding's KEK wraps now: its own, or (after a
        // re-key moved its own away) one it wraps; none for a binding that wraps nothing.
        let sql = format!(
            "{BINDING_COLUMNS} JOIN key_checks kc ON kc.binding_id = kb.id \
             JOIN tenants t ON t.id = kb.tenant_id \
             LEFT JOIN tenant_keys wk ON wk.id = (SELECT MIN(w.id) FROM tenant_keys w \
                 WHERE w.tenant_id = kb.tenant_id AND w.kek_binding_id = kb.id) \
             WHERE kb.id IN ({ids}) AND kc.lease_owner = $1 ORDER BY kc.due_at_ms"
        );
        let sql = sql.replacen(
            "SELECT kb.id,",
            "SELECT kc.held_until_ms, kc.due_at_ms, t.monitor_interval_seconds AS tenant_interval, \
             wk.id AS wk_id, wk.wrapped AS wk_wrapped, wk.mac AS wk_mac, \
             wk.created_at_ms AS wk_created_at_ms, kb.id,",
            1,
        );
        self.fetch_all(sqlx::query(&sql).bind(replica), Self::key_check_from_row).await
    }

    fn key_check_from_row(row: &<D::Db as Database>::Row) -> Result<KeyCheck, StoreError> {
        const T: &str = "key_checks";
        let interval: Option<i64> = Self::col(row, "tenants", "tenant_interval")?;
        let binding = Self::binding_from_row(row)?;
        let wrapped_id: Option<String> = Self::col(row, "tenant_keys", "wk_id")?;
        let tenant_key = match wrapped_id {
            None => None,
            Some(id) => Some(TenantKeyRecord {
                id: crate::decode::key_id("tenant_keys", "id", &id)?,
                tenant: binding.tenant.clone(),
                binding_id: binding.id,
                provider: binding.provider,
                key_ref: binding.key_ref.clone(),
                wrapped: WrappedKey::new(Self::col(row, "tenant_keys", "wk_wrapped")?),
                created_at_ms: Self::col(row, "tenant_keys", "wk_created_at_ms")?,
                binding_state: binding.state,
                binding_state_changed_at_ms: binding.state_changed_at_ms,
                mac: Self::col(row, "tenant_keys", "wk_mac")?,
            }),
        };
        Ok(KeyCheck {
            binding,
            tenant_key,
            held_until_ms: Self::col(row, T, "held_until_ms")?,
            due_at_ms: Self::col::<Option<i64>>(row, T, "due_at_ms")?.unwrap_or(0),
            monitor_interval_seconds: crate::sql::tenants::policy_from_db(
                "monitor_interval_seconds",
                interval,
            )?,
        })
    }

    pub(crate) async fn try_finish_key_check(
        &self,
        replica: &str,
        binding_id: i64,
        now_ms: i64,
        next_due_ms: i64,
        unheld_due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        // The holding is read by the UPDATE itself (the row as it is now, after any hold that
        // committed since the claim): a replica that loaded the key meanwhile keeps it scheduled.
        let done: Option<i64> = sqlx::query_scalar(
            "UPDATE key_checks SET \
             due_at_ms = CASE WHEN held_until_ms > $1 THEN $2 ELSE $3 END, \
             lease_owner = NULL, lease_until_ms = 0 \
             WHERE binding_id = $4 AND lease_owner = $5 RETURNING binding_id",
        )
        .bind(now_ms)
        .bind(next_due_ms)
        .bind(unheld_due_ms)
        .bind(binding_id)
        .bind(replica)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.is_some())
    }

    pub(crate) async fn try_next_key_check_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        // In due order (the partial index): only the checks running now (leased) are skipped.
        sqlx::query_scalar::<_, i64>(
            "SELECT due_at_ms FROM key_checks WHERE due_at_ms IS NOT NULL \
             AND lease_until_ms <= $1 ORDER BY due_at_ms LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)
    }
});
