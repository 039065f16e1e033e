//! Re-keying (docs/rekey.md): a tenant key re-wrapped under the current binding's KEK in one
//! compare-and-set `UPDATE`, and the retirement of the bindings whose KEK no longer wraps
//! anything.
//!
//! A tenant key row always holds exactly one wrap: `wrapped`, `mac` and `kek_binding_id` change
//! together, so a crash at any point leaves every tenant key wrapped by one KEK, the old one or
//! the new one, and never by none. A binding is retired only when no tenant key is wrapped by
//! it any more, checked under the write lock in the transaction that retires it.

use sqlx::Row as _;

use super::bindings::{BINDING_COLUMNS, TENANT_KEY_COLUMNS};
use super::{Announcement, backend, sql_impl, write_error};
use crate::decode::{self, now_ms};
use crate::{
    AuditFn, KekState, RekeyState, RetiredBindings, StoreError, TenantId, TenantKeyRecord,
    TenantKeyRewrap,
};

sql_impl!(impl => {
    pub(crate) async fn try_rewrap_tenant_key(
        &self,
        r: &TenantKeyRewrap,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        let id_text = decode::key_id_text(&r.id);
        let mut tx = D::begin_write(&self.pool).await?;
        // Read under the write lock: nothing changes these rows until this transaction ends.
        let row = sqlx::query(&format!(
            "{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 AND tk.id = $2"
        ))
        .bind(r.tenant.as_str())
        .bind(id_text.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("tenant key {} of {}", r.id, r.tenant)));
        };
        let current_wrap = Self::tenant_key_from_row(&row)?;
        if current_wrap.binding_id != r.from_binding_id {
            return Err(StoreError::StateChanged(format!(
                "tenant key {} of {} is wrapped by binding {} now, not {} as read",
                r.id, r.tenant, current_wrap.binding_id, r.from_binding_id
            )));
        }
        if matches!(
            current_wrap.binding_state,
            KekState::Revoked | KekState::Destroyed | KekState::Retired
        ) {
            // Revoked since the re-key unwrapped it: the revocation wins (one-way door).
            return Err(StoreError::StateChanged(format!(
                "binding {} of {} is {}: its tenant key {} is not moved",
                r.from_binding_id, r.tenant, current_wrap.binding_state, r.id
            )));
        }
        let target = sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.tenant_id = $1 AND kb.deactivated_at_ms IS NULL"
        ))
        .bind(r.tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .map(|row| Self::binding_from_row(&row))
        .transpose()?;
        match target {
            Some(t) if t.id == r.to_binding_id
                && matches!(t.state, KekState::Active | KekState::Restored | KekState::Unavailable) => {}
            Some(t) => {
                return Err(StoreError::StateChanged(format!(
                    "the current binding of {} is {} ({}), not binding {} as read",
                    r.tenant, t.id, t.state, r.to_binding_id
                )));
            }
            None => return Err(StoreError::NotFound(format!("a current binding of {}", r.tenant))),
        }
        let now = now_ms();
        sqlx::query(
            "UPDATE tenant_keys SET wrapped = $1, mac = $2, kek_binding_id = $3, \
             rewrapped_at_ms = $4 WHERE tenant_id = $5 AND id = $6 AND kek_binding_id = $7",
        )
        .bind(r.wrapped.as_bytes())
        .bind(r.mac.as_slice())
        .bind(r.to_binding_id)
        .bind(now)
        .bind(r.tenant.as_str())
        .bind(id_text.as_str())
        .bind(r.from_binding_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("tenant key {}", r.id)))?;
        let row = sqlx::query(&format!(
            "{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 AND tk.id = $2"
        ))
        .bind(r.tenant.as_str())
        .bind(id_text.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let moved = Self::tenant_key_from_row(&row)?;
        if moved.binding_id != r.to_binding_id {
            // Unreachable under the write lock; refuse rather than commit something unexpected.
            return Err(StoreError::StateChanged(format!(
                "tenant key {} of {} did not move to binding {}",
                r.id, r.tenant, r.to_binding_id
            )));
        }
        self.append_events(&mut tx, audit(&moved)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(moved)
    }

    pub(crate) async fn try_retire_bindings(
        &self,
        tenant: &TenantId,
        audit: AuditFn<'_, RetiredBindings>,
    ) -> Result<RetiredBindings, StoreError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let target = sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.tenant_id = $1 AND kb.deactivated_at_ms IS NULL"
        ))
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .map(|row| Self::binding_from_row(&row))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("a current binding of {tenant}")))?;
        // Older bindings not retired yet whose KEK wraps no tenant key any more.
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT kb.id FROM kek_bindings kb WHERE kb.tenant_id = $1 \
             AND kb.deactivated_at_ms IS NOT NULL AND kb.retired_at_ms IS NULL \
             AND NOT EXISTS (SELECT 1 FROM tenant_keys tk \
                 WHERE tk.tenant_id = kb.tenant_id AND tk.kek_binding_id = kb.id) \
             ORDER BY kb.id",
        )
        .bind(tenant.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let now = now_ms();
        let mut retired = Vec::with_capacity(ids.len());
        for id in ids {
            sqlx::query(
                "UPDATE kek_bindings SET retired_at_ms = $1, state_changed_at_ms = $1, \
                 state_version = state_version + 1 WHERE id = $2 AND retired_at_ms IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            // Nothing is wrapped by it: no replica can load a key through it from now on, so
            // the monitor has nothing to check.
            sqlx::query("DELETE FROM key_checks WHERE binding_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            let row = sqlx::query(&format!("{BINDING_COLUMNS} WHERE kb.id = $1"))
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
            retired.push(Self::binding_from_row(&row)?);
        }
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = $1 AND kek_binding_id = $2) \
             AS tenant_keys, \
             (SELECT COUNT(*) FROM deks d JOIN tenant_keys tk ON tk.id = d.tenant_key_id \
              WHERE d.tenant_id = $1 AND tk.kek_binding_id = $2) AS deks",
        )
        .bind(tenant.as_str())
        .bind(target.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let count = |column: &str| -> Result<u64, StoreError> {
            let value: i64 = row
                .try_get(column)
                .map_err(|e| StoreError::Corrupt(format!("{column}: COUNT(*): {e}")))?;
            decode::counter("tenant_keys", column, value)
        };
        let result = RetiredBindings {
            retired,
            target,
            tenant_keys: count("tenant_keys")?,
            deks: count("deks")?,
        };
        if result.retired.is_empty() {
            return Ok(result); // nothing changed: nothing to record
        }
        self.append_events(&mut tx, audit(&result)).await?;
        D::announce(&mut tx, Announcement::KeyState, tenant.as_str()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(result)
    }

    pub(crate) async fn try_scheduled_rekeys(&self) -> Result<Vec<TenantId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT t.id FROM tenants t WHERE t.auto_rekey = 1 AND EXISTS \
             (SELECT 1 FROM kek_bindings kb WHERE kb.tenant_id = t.id \
              AND kb.deactivated_at_ms IS NOT NULL AND kb.retired_at_ms IS NULL) ORDER BY t.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        ids.iter()
            .map(|id| decode::tenant_id("tenants", "id", id))
            .collect()
    }

    pub(crate) async fn try_rekey_state(&self, tenant: &TenantId) -> Result<RekeyState, StoreError> {
        let bindings = {
            let sql = format!("{BINDING_COLUMNS} WHERE kb.tenant_id = $1 ORDER BY kb.id");
            self.fetch_all(sqlx::query(&sql).bind(tenant.as_str()), Self::binding_from_row).await?
        };
        let tenant_keys = {
            let sql = format!("{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 ORDER BY tk.id");
            self.fetch_all(sqlx::query(&sql).bind(tenant.as_str()), Self::tenant_key_from_row)
                .await?
        };
        let rows = sqlx::query(
            "SELECT tenant_key_id, COUNT(*) AS deks FROM deks WHERE tenant_id = $1 \
             GROUP BY tenant_key_id ORDER BY tenant_key_id",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut deks_by_tenant_key = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = Self::col(&row, "deks", "tenant_key_id")?;
            let n: i64 = Self::col(&row, "deks", "deks")?;
            deks_by_tenant_key.push((
                decode::key_id("deks", "tenant_key_id", &id)?,
                decode::counter("deks", "COUNT(*)", n)?,
            ));
        }
        Ok(RekeyState {
            bindings,
            tenant_keys,
            deks_by_tenant_key,
        })
    }
});
