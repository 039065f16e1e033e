//! Crypto-shredding (`dek_tombstones`, schema version 7): the write transaction that deletes a
//! scope's DEKs and leaves their tombstones, the retention rule's candidates, and the reads that
//! tell a shredded DEK from one that never existed (docs/deleting-data.md).

use sqlx::Database;

use super::{Announcement, backend, sql_impl, write_error};
use crate::decode::{self, now_ms};
use crate::{
    AuditFn, DekTombstone, KeyId, ScopeShred, ShredCandidate, ShredResult, StoreError, TenantId,
    WrittenBefore,
};

pub(crate) const TOMBSTONE_COLUMNS: &str = "SELECT seq, id, tenant_id, scope_hmac, tenant_key_id, \
     created_at_ms, shredded_at_ms, shredded_by, reason FROM dek_tombstones";

/// The retention rule over `deks` grouped by scope, `$1` the tenant, `$2` the cutoff, `$3` the
/// rotation age, `$4` the prefix and `$5` its length: every DEK of the scope stopped encrypting
/// before the cutoff (retired, or too old to be used).
const WRITTEN_BEFORE: &str = "FROM deks WHERE tenant_id = $1 \
     AND substr(scope, 1, CAST($5 AS INTEGER)) = $4 \
     GROUP BY scope \
     HAVING MAX(CASE WHEN retired_at_ms IS NOT NULL AND retired_at_ms < created_at_ms + $3 \
         THEN retired_at_ms ELSE created_at_ms + $3 END) <= $2";

fn prefix_len(rule: &WrittenBefore) -> i64 {
    // substr counts characters on both backends.
    i64::try_from(rule.scope_prefix.chars().count()).unwrap_or(i64::MAX)
}

sql_impl!(impl => {
    pub(crate) fn tombstone_from_row(
        row: &<D::Db as Database>::Row,
    ) -> Result<DekTombstone, StoreError> {
        const T: &str = "dek_tombstones";
        Ok(DekTombstone {
            seq: Self::col(row, T, "seq")?,
            id: decode::key_id(T, "id", &Self::col::<String>(row, T, "id")?)?,
            tenant: decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
            scope_hmac: Self::col(row, T, "scope_hmac")?,
            tenant_key_id: decode::key_id(
                T,
                "tenant_key_id",
                &Self::col::<String>(row, T, "tenant_key_id")?,
            )?,
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            shredded_at_ms: Self::col(row, T, "shredded_at_ms")?,
            shredded_by: Self::col(row, T, "shredded_by")?,
            reason: Self::col(row, T, "reason")?,
        })
    }

    pub(crate) async fn try_shred_scope(
        &self,
        shred: &ScopeShred,
        audit: AuditFn<'_, ShredResult>,
    ) -> Result<ShredResult, StoreError> {
        let now = now_ms();
        let mut tx = D::begin_write(&self.pool).await?;
        if !Self::exists(&mut tx, "SELECT 1 FROM tenants WHERE id = $1", &[shred.tenant.as_str()])
            .await?
        {
            return Err(StoreError::NotFound(format!("tenant {}", shred.tenant)));
        }
        let mut result = ShredResult {
            tenant: shred.tenant.clone(),
            scope_hmac: shred.scope_hmac.clone(),
            shredded_at_ms: now,
            tombstones: Vec::new(),
            skipped: false,
        };
        if let Some(rule) = &shred.only_if {
            // Checked again under the write lock: a DEK created since the candidates were
            // listed (the scope is being written to again) keeps the whole scope.
            let sql = format!("SELECT scope {WRITTEN_BEFORE} AND scope = $6");
            let eligible = sqlx::query(&sql)
                .bind(shred.tenant.as_str())
                .bind(rule.cutoff_ms)
                .bind(rule.max_age_ms)
                .bind(rule.scope_prefix.as_str())
                .bind(prefix_len(rule))
                .bind(shred.scope.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if eligible.is_none() {
                result.skipped = true;
                return Ok(result);
            }
        }
        // Tombstones first (from the rows), then the rows themselves: one transaction, so after
        // a crash a DEK is either usable or shredded, never half of each.
        let tombstones = sqlx::query(
            "INSERT INTO dek_tombstones \
             (id, tenant_id, scope_hmac, tenant_key_id, created_at_ms, shredded_at_ms, shredded_by, reason) \
             SELECT id, tenant_id, $3, tenant_key_id, created_at_ms, $4, $5, $6 FROM deks \
             WHERE tenant_id = $1 AND scope = $2 \
             RETURNING seq, id, tenant_id, scope_hmac, tenant_key_id, created_at_ms, \
                 shredded_at_ms, shredded_by, reason",
        )
        .bind(shred.tenant.as_str())
        .bind(shred.scope.as_str())
        .bind(shred.scope_hmac.as_str())
        .bind(now)
        .bind(shred.shredded_by.as_str())
        .bind(shred.reason.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| write_error(e, "writing DEK tombstones"))?;
        result.tombstones = tombstones
            .iter()
            .map(Self::tombstone_from_row)
            .collect::<Result<_, _>>()?;
        result.tombstones.sort_by_key(|t| t.seq);
        let deleted: Vec<String> =
            sqlx::query_scalar("DELETE FROM deks WHERE tenant_id = $1 AND scope = $2 RETURNING id")
                .bind(shred.tenant.as_str())
                .bind(shred.scope.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| write_error(e, "deleting shredded DEKs"))?;
        if deleted.len() != result.tombstones.len() {
            return Err(StoreError::Corrupt(format!(
                "deks: {} rows deleted for {} tombstones",
                deleted.len(),
                result.tombstones.len()
            )));
        }
        self.append_events(&mut tx, audit(&result)).await?;
        if !result.tombstones.is_empty() {
            D::announce(&mut tx, Announcement::Shred, shred.tenant.as_str()).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(result)
    }

    pub(crate) async fn read_shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &WrittenBefore,
        limit: u32,
    ) -> Result<Vec<ShredCandidate>, StoreError> {
        let sql = format!("SELECT scope, COUNT(*) AS deks {WRITTEN_BEFORE} ORDER BY scope LIMIT $6");
        let rows = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(rule.cutoff_ms)
            .bind(rule.max_age_ms)
            .bind(rule.scope_prefix.as_str())
            .bind(prefix_len(rule))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                Ok(ShredCandidate {
                    scope: decode::scope("deks", "scope", Self::col(row, "deks", "scope")?)?,
                    deks: decode::counter("deks", "deks", Self::col(row, "deks", "deks")?)?,
                })
            })
            .collect()
    }

    pub(crate) async fn read_shred_candidate_counts(
        &self,
        tenant: &TenantId,
        rule: &WrittenBefore,
    ) -> Result<(u64, u64), StoreError> {
        let sql = format!(
            "SELECT COUNT(*) AS scopes, CAST(COALESCE(SUM(n), 0) AS BIGINT) AS deks \
             FROM (SELECT COUNT(*) AS n {WRITTEN_BEFORE}) AS eligible"
        );
        let row = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(rule.cutoff_ms)
            .bind(rule.max_age_ms)
            .bind(rule.scope_prefix.as_str())
            .bind(prefix_len(rule))
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok((
            decode::counter("deks", "scopes", Self::col(&row, "deks", "scopes")?)?,
            decode::counter("deks", "deks", Self::col(&row, "deks", "deks")?)?,
        ))
    }

    pub(crate) async fn read_dek_tombstone(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<DekTombstone>, StoreError> {
        let sql = format!("{TOMBSTONE_COLUMNS} WHERE tenant_id = $1 AND id = $2");
        let query = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(decode::key_id_text(id));
        self.fetch_optional(query, Self::tombstone_from_row).await
    }

    pub(crate) async fn read_shreds_after(
        &self,
        after_seq: i64,
    ) -> Result<Vec<(TenantId, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, MAX(seq) AS seq FROM dek_tombstones WHERE seq > $1 \
             GROUP BY tenant_id ORDER BY tenant_id",
        )
        .bind(after_seq)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                const T: &str = "dek_tombstones";
                Ok((
                    decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
                    Self::col(row, T, "seq")?,
                ))
            })
            .collect()
    }
});
