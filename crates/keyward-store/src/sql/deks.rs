//! DEKs: their rows and the write transaction that mints one (retiring the scope's active DEK).

use sqlx::Database;

use super::{backend, sql_impl, write_error};
use crate::decode::{self, now_ms};
use crate::{AuditFn, DekInsert, DekRecord, NewDek, StoreError, WrappedKey};

pub(crate) const DEK_COLUMNS: &str = "SELECT id, tenant_id, scope, tenant_key_id, wrapped, \
     created_at_ms, retired_at_ms, messages, bytes FROM deks";

sql_impl!(impl => {
    pub(crate) fn dek_from_row(row: &<D::Db as Database>::Row) -> Result<DekRecord, StoreError> {
        const T: &str = "deks";
        Ok(DekRecord {
            id: decode::key_id(T, "id", &Self::col::<String>(row, T, "id")?)?,
            tenant: decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
            scope: decode::scope(T, "scope", Self::col(row, T, "scope")?)?,
            tenant_key_id: decode::key_id(
                T,
                "tenant_key_id",
                &Self::col::<String>(row, T, "tenant_key_id")?,
            )?,
            wrapped: WrappedKey::new(Self::col(row, T, "wrapped")?),
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            retired_at_ms: Self::col(row, T, "retired_at_ms")?,
            messages: decode::counter(T, "messages", Self::col(row, T, "messages")?)?,
            bytes: decode::counter(T, "bytes", Self::col(row, T, "bytes")?)?,
        })
    }

    pub(crate) async fn try_insert_dek(
        &self,
        dek: &NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError> {
        let now = now_ms();
        let id = decode::key_id_text(&dek.id);
        let tenant_key_id = decode::key_id_text(&dek.tenant_key_id);
        let mut tx = D::begin_write(&self.pool).await?;

        // Checked explicitly for a precise error; the composite foreign key
        // deks(tenant_id, tenant_key_id) -> tenant_keys(tenant_id, id) enforces it regardless.
        let tenant_key = "SELECT 1 FROM tenant_keys WHERE tenant_id = $1 AND id = $2";
        if !Self::exists(&mut tx, tenant_key, &[dek.tenant.as_str(), tenant_key_id.as_str()]).await? {
            return Err(StoreError::NotFound(format!(
                "tenant key {} of tenant {}",
                dek.tenant_key_id, dek.tenant
            )));
        }
        if Self::exists(&mut tx, "SELECT 1 FROM deks WHERE id = $1", &[id.as_str()]).await? {
            return Err(StoreError::AlreadyExists(format!("DEK {}", dek.id)));
        }

        // At most one row: the partial unique index deks_one_active_per_scope.
        let retired: Option<String> = sqlx::query_scalar(
            "UPDATE deks SET retired_at_ms = $1 \
             WHERE tenant_id = $2 AND scope = $3 AND retired_at_ms IS NULL RETURNING id",
        )
        .bind(now)
        .bind(dek.tenant.as_str())
        .bind(dek.scope.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| write_error(e, "retiring the active DEK"))?;
        let retired = retired
            .map(|id| decode::key_id("deks", "id", &id))
            .transpose()?;

        sqlx::query(
            "INSERT INTO deks \
             (id, tenant_id, scope, tenant_key_id, wrapped, created_at_ms, retired_at_ms, messages, bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, 0, 0)",
        )
        .bind(id.as_str())
        .bind(dek.tenant.as_str())
        .bind(dek.scope.as_str())
        .bind(tenant_key_id.as_str())
        .bind(dek.wrapped.as_bytes())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("DEK {}", dek.id)))?;

        let inserted = DekInsert {
            dek: DekRecord {
                id: dek.id,
                tenant: dek.tenant.clone(),
                scope: dek.scope.clone(),
                tenant_key_id: dek.tenant_key_id,
                wrapped: dek.wrapped.clone(),
                created_at_ms: now,
                retired_at_ms: None,
                messages: 0,
                bytes: 0,
            },
            retired,
        };
        self.append_events(&mut tx, audit(&inserted)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(inserted)
    }
});
