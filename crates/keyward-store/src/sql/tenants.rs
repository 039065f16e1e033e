//! Tenants: their rows, their policy and the write transactions that change them.

use sqlx::Database;

use super::bindings::BINDING_COLUMNS;
use super::{Announcement, backend, sql_impl, write_error};
use crate::decode::{self, now_ms};
use crate::{AuditFn, StoreError, TenantId, TenantPolicy, TenantRecord, TenantState};

pub(crate) const TENANT_COLUMNS: &str = "SELECT id, display_name, created_at_ms, \
     cache_ttl_seconds, monitor_interval_seconds, auto_rekey, decrypt_purposes FROM tenants";

/// `value` converted to a positive `T`, else `error(value)`; `None` stays `None`.
fn positive<F: Copy, T: TryFrom<F> + PartialOrd + Default>(
    value: Option<F>,
    error: impl FnOnce(F) -> StoreError,
) -> Result<Option<T>, StoreError> {
    value
        .map(|v| {
            T::try_from(v)
                .ok()
                .filter(|t| *t > T::default())
                .ok_or_else(|| error(v))
        })
        .transpose()
}

/// A tenant policy value as stored: `None`, or a positive `i64`.
pub(crate) fn policy_to_db(name: &str, value: Option<u64>) -> Result<Option<i64>, StoreError> {
    positive(value, |_| {
        StoreError::InvalidInput(format!("{name} must be positive"))
    })
}

/// A stored tenant policy value: `None`, or a positive `u64` (else `Corrupt`).
pub(crate) fn policy_from_db(column: &str, value: Option<i64>) -> Result<Option<u64>, StoreError> {
    positive(value, |v| {
        StoreError::Corrupt(format!("tenants.{column}: {v}"))
    })
}

sql_impl!(impl => {
    pub(crate) fn tenant_from_row(row: &<D::Db as Database>::Row) -> Result<TenantRecord, StoreError> {
        const T: &str = "tenants";
        Ok(TenantRecord {
            id: decode::tenant_id(T, "id", &Self::col::<String>(row, T, "id")?)?,
            display_name: Self::col(row, T, "display_name")?,
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            policy: TenantPolicy {
                cache_ttl_seconds: policy_from_db(
                    "cache_ttl_seconds",
                    Self::col(row, T, "cache_ttl_seconds")?,
                )?,
                monitor_interval_seconds: policy_from_db(
                    "monitor_interval_seconds",
                    Self::col(row, T, "monitor_interval_seconds")?,
                )?,
                auto_rekey: Self::col::<i64>(row, T, "auto_rekey")? != 0,
                decrypt_purposes: {
                    let bits = Self::col::<i64>(row, T, "decrypt_purposes")?;
                    u32::try_from(bits)
                        .ok()
                        .filter(|b| b & !TenantPolicy::PURPOSE_BITS == 0)
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("tenants.decrypt_purposes: {bits}"))
                        })?
                },
            },
        })
    }

    pub(crate) async fn try_create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        let now = now_ms();
        let mut tx = D::begin_write(&self.pool).await?;
        sqlx::query("INSERT INTO tenants (id, display_name, created_at_ms) VALUES ($1, $2, $3)")
            .bind(id.as_str())
            .bind(display_name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| match write_error(e, "") {
                StoreError::Conflict(_) => StoreError::AlreadyExists(format!("tenant {id}")),
                other => other,
            })?;
        let tenant = TenantRecord {
            id: id.clone(),
            display_name: display_name.to_owned(),
            created_at_ms: now,
            policy: TenantPolicy::default(),
        };
        self.append_events(&mut tx, audit(&tenant)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(tenant)
    }

    pub(crate) async fn try_set_tenant_policy(
        &self,
        id: &TenantId,
        ttl: Option<i64>,
        interval: Option<i64>,
        auto_rekey: bool,
        decrypt_purposes: u32,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantState, StoreError> {
        let mut tx = D::begin_write(&self.pool).await?;
        // `RETURNING` rather than rows_affected(), which sqlx does not offer generically.
        let updated = sqlx::query(
            "UPDATE tenants SET cache_ttl_seconds = $1, monitor_interval_seconds = $2, \
             auto_rekey = $4, decrypt_purposes = $5 WHERE id = $3 RETURNING id",
        )
        .bind(ttl)
        .bind(interval)
        .bind(id.as_str())
        .bind(i64::from(auto_rekey))
        .bind(i64::from(decrypt_purposes))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if updated.is_none() {
            return Err(StoreError::NotFound(format!("tenant {id}")));
        }
        let state = Self::tenant_state_in(&mut tx, id).await?;
        self.append_events(&mut tx, audit(&state.tenant)).await?;
        D::announce(&mut tx, Announcement::TenantPolicy, id.as_str()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(state)
    }

    /// The tenant and its bindings as `conn` (a write transaction, after its change) sees them.
    pub(crate) async fn tenant_state_in(
        conn: &mut <D::Db as Database>::Connection,
        id: &TenantId,
    ) -> Result<TenantState, StoreError> {
        let row = sqlx::query(&format!("{TENANT_COLUMNS} WHERE id = $1"))
            .bind(id.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        let tenant = Self::tenant_from_row(&row)?;
        let bindings = sqlx::query(&format!(
            "{BINDING_COLUMNS} WHERE kb.tenant_id = $1 ORDER BY kb.id"
        ))
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?
        .iter()
        .map(Self::binding_from_row)
        .collect::<Result<_, _>>()?;
        Ok(TenantState { tenant, bindings })
    }
});
