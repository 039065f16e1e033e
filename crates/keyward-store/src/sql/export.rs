//! The exit kit's reads (docs/exit.md): a tenant's key hierarchy as `keyward export` streams it.
//! Its tenant keys, each as wrapped now (by the binding whose KEK wraps it: `TENANT_KEY_COLUMNS`),
//! and its DEKs and tombstones in pages: a tenant may have millions of DEKs, so they are read by
//! `id > after` (tombstones by `seq > after`) with a limit, on the indexes of schema version 9,
//! and the caller streams each page before reading the next.
//!
//! No snapshot spans the pages: a DEK created during an export is in it only if its (random) id
//! sorts after the page being read, and a DEK shredded during an export may be in both its data
//! keys and its tombstones (docs/exit.md says what a decryptor makes of that).

use super::bindings::TENANT_KEY_COLUMNS;
use super::deks::DEK_COLUMNS;
use super::shred::TOMBSTONE_COLUMNS;
use super::sql_impl;
use crate::decode;
use crate::{DekRecord, DekTombstone, KeyId, StoreError, TenantId, TenantKeyRecord};

/// The most rows one page of [`Store::list_deks`](crate::Store::list_deks) or
/// [`Store::list_tombstones`](crate::Store::list_tombstones) returns.
pub const MAX_EXPORT_PAGE: u32 = 10_000;

/// A page size of 1..=[`MAX_EXPORT_PAGE`], as a bound parameter.
fn page_limit(limit: u32) -> Result<i64, StoreError> {
    if limit == 0 || limit > MAX_EXPORT_PAGE {
        return Err(StoreError::InvalidInput(format!(
            "page limit {limit}: it must be 1 to {MAX_EXPORT_PAGE}"
        )));
    }
    Ok(i64::from(limit))
}

sql_impl!(impl => {
    pub(crate) async fn read_tenant_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<TenantKeyRecord>, StoreError> {
        let sql = format!(
            "{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 ORDER BY tk.created_at_ms, tk.id"
        );
        let query = sqlx::query(&sql).bind(tenant.as_str());
        self.fetch_all(query, Self::tenant_key_from_row).await
    }

    pub(crate) async fn read_deks_page(
        &self,
        tenant: &TenantId,
        after: Option<&KeyId>,
        limit: u32,
    ) -> Result<Vec<DekRecord>, StoreError> {
        let limit = page_limit(limit)?;
        // Ids are 32 lowercase hex digits (a CHECK and `decode::key_id` hold them to it), so
        // text order is id order on both backends (PostgreSQL's columns are COLLATE "C"); ""
        // sorts before every id.
        let after = after.map(decode::key_id_text).unwrap_or_default();
        let sql = format!("{DEK_COLUMNS} WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        let query = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(after)
            .bind(limit);
        self.fetch_all(query, Self::dek_from_row).await
    }

    pub(crate) async fn read_tombstones_page(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<DekTombstone>, StoreError> {
        let limit = page_limit(limit)?;
        let sql =
            format!("{TOMBSTONE_COLUMNS} WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3");
        let query = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(after_seq)
            .bind(limit);
        self.fetch_all(query, Self::tombstone_from_row).await
    }
});

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn a_page_limit_is_1_to_the_maximum() {
        assert_eq!(page_limit(1).unwrap(), 1);
        assert_eq!(
            page_limit(MAX_EXPORT_PAGE).unwrap(),
            i64::from(MAX_EXPORT_PAGE)
        );
        for bad in [0, MAX_EXPORT_PAGE + 1] {
            let e = page_limit(bad).unwrap_err();
            assert!(matches!(e, StoreError::InvalidInput(_)), "{e}");
            assert!(e.to_string().contains("1 to 10000"), "{e}");
        }
    }
}
