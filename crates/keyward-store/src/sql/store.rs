//! [`Store`] for every [`SqlStore`]: the reads, and the write methods, each running its write
//! transaction (in the topic modules) under the dialect's retry budget.

use sqlx::Connection as _;

use super::audit::audit_query_sql;
use super::bindings::{BINDING_COLUMNS, TENANT_KEY_COLUMNS};
use super::deks::DEK_COLUMNS;
use super::tenants::{TENANT_COLUMNS, policy_to_db};
use super::{backend, sql_impl, with_retries};
use crate::decode;
use crate::{
    AuditEvent, AuditFn, AuditQuery, BindingChange, BindingCommit, BindingUsage, ChainHead,
    Checkpoint, DekInsert, DekRecord, DekTombstone, KekBinding, KeyCheck, KeyId, NewDek,
    NewKekBinding, ProviderKind, Record, RekeyState, RetiredBindings, Scope, ScopeShred,
    ShredCandidate, ShredResult, StateChange, StateUpdate, Store, StoreChanges, StoreCounts,
    StoreError, TenantId, TenantKeyRecord, TenantKeyRewrap, TenantPolicy, TenantRecord,
    TenantState, WrittenBefore,
};

sql_impl!(#[async_trait::async_trait] impl Store => {
    async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        D::check_text("display_name", display_name)?;
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_create_tenant(id, display_name, audit)
        })
        .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let sql = format!("{TENANT_COLUMNS} WHERE id = $1");
        let query = sqlx::query(&sql).bind(id.as_str());
        self.fetch_optional(query, Self::tenant_from_row).await
    }

    async fn set_tenant_policy(
        &self,
        id: &TenantId,
        policy: TenantPolicy,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantState, StoreError> {
        let ttl = policy_to_db("cache_ttl_seconds", policy.cache_ttl_seconds)?;
        let interval = policy_to_db("monitor_interval_seconds", policy.monitor_interval_seconds)?;
        if policy.decrypt_purposes & !TenantPolicy::PURPOSE_BITS != 0 {
            return Err(StoreError::InvalidInput(format!(
                "decrypt_purposes {:#x} has a bit outside 1..=30",
                policy.decrypt_purposes
            )));
        }
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_set_tenant_policy(
                id,
                ttl,
                interval,
                policy.auto_rekey,
                policy.decrypt_purposes,
                audit,
            )
        })
        .await
    }

    async fn bind_kek(
        &self,
        binding: NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<BindingCommit, StoreError> {
        decode::validate_binding_text("key_ref", &binding.key_ref)?;
        let binding = &binding;
        with_retries(D::WRITE_ATTEMPTS, || self.try_bind_kek(binding, audit)).await
    }

    async fn active_binding(&self, tenant: &TenantId) -> Result<Option<KekBinding>, StoreError> {
        let sql =
            format!("{BINDING_COLUMNS} WHERE kb.tenant_id = $1 AND kb.deactivated_at_ms IS NULL");
        let query = sqlx::query(&sql).bind(tenant.as_str());
        self.fetch_optional(query, Self::binding_from_row).await
    }

    async fn active_bindings(&self) -> Result<Vec<KekBinding>, StoreError> {
        let sql =
            format!("{BINDING_COLUMNS} WHERE kb.deactivated_at_ms IS NULL ORDER BY kb.tenant_id");
        self.fetch_all(sqlx::query(&sql), Self::binding_from_row).await
    }

    async fn bindings_with_key(
        &self,
        provider: ProviderKind,
        key_ref: &str,
    ) -> Result<Vec<KekBinding>, StoreError> {
        let sql = format!("{BINDING_COLUMNS} WHERE kb.provider = $1 AND kb.key_ref = $2 ORDER BY kb.id");
        let query = sqlx::query(&sql).bind(provider.as_str()).bind(key_ref);
        self.fetch_all(query, Self::binding_from_row).await
    }

    async fn hold_key(
        &self,
        tenant: &TenantId,
        binding_id: i64,
        until_ms: i64,
        check_at_ms: i64,
    ) -> Result<(), StoreError> {
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_hold_key(tenant, binding_id, until_ms, check_at_ms)
        })
        .await
    }

    async fn claim_key_checks(
        &self,
        replica: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<KeyCheck>, StoreError> {
        D::check_text("replica", replica)?;
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_claim_key_checks(replica, now_ms, lease_until_ms, limit)
        })
        .await
    }

    async fn finish_key_check(
        &self,
        replica: &str,
        binding_id: i64,
        now_ms: i64,
        next_due_ms: i64,
        unheld_due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        D::check_text("replica", replica)?;
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_finish_key_check(replica, binding_id, now_ms, next_due_ms, unheld_due_ms)
        })
        .await
    }

    async fn next_key_check_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        self.try_next_key_check_due(now_ms).await
    }

    async fn list_bindings(&self, tenant: &TenantId) -> Result<Vec<KekBinding>, StoreError> {
        let sql = format!("{BINDING_COLUMNS} WHERE kb.tenant_id = $1 ORDER BY kb.id");
        let query = sqlx::query(&sql).bind(tenant.as_str());
        self.fetch_all(query, Self::binding_from_row).await
    }

    async fn binding_usage(&self, tenant: &TenantId) -> Result<Vec<BindingUsage>, StoreError> {
        self.try_binding_usage(tenant).await
    }

    async fn set_binding_state(
        &self,
        update: StateUpdate,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<BindingCommit, StoreError> {
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_set_binding_state(update, audit)
        })
        .await
    }

    async fn rekey_state(&self, tenant: &TenantId) -> Result<RekeyState, StoreError> {
        self.try_rekey_state(tenant).await
    }

    async fn scheduled_rekeys(&self) -> Result<Vec<TenantId>, StoreError> {
        self.try_scheduled_rekeys().await
    }

    async fn rewrap_tenant_key(
        &self,
        rewrap: TenantKeyRewrap,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        let rewrap = &rewrap;
        with_retries(D::WRITE_ATTEMPTS, || self.try_rewrap_tenant_key(rewrap, audit)).await
    }

    async fn retire_bindings(
        &self,
        tenant: &TenantId,
        audit: AuditFn<'_, RetiredBindings>,
    ) -> Result<RetiredBindings, StoreError> {
        with_retries(D::WRITE_ATTEMPTS, || self.try_retire_bindings(tenant, audit)).await
    }

    async fn get_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<TenantKeyRecord>, StoreError> {
        let sql = format!("{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 AND tk.id = $2");
        let query = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(decode::key_id_text(id));
        self.fetch_optional(query, Self::tenant_key_from_row).await
    }

    async fn insert_dek(
        &self,
        dek: NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError> {
        let dek = &dek;
        with_retries(D::WRITE_ATTEMPTS, || self.try_insert_dek(dek, audit)).await
    }

    async fn active_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<Option<DekRecord>, StoreError> {
        let sql = format!(
            "{DEK_COLUMNS} WHERE tenant_id = $1 AND scope = $2 AND retired_at_ms IS NULL"
        );
        let query = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(scope.as_str());
        self.fetch_optional(query, Self::dek_from_row).await
    }

    async fn shred_scope(
        &self,
        shred: ScopeShred,
        audit: AuditFn<'_, ShredResult>,
    ) -> Result<ShredResult, StoreError> {
        D::check_text("shredded_by", &shred.shredded_by)?;
        D::check_text("reason", &shred.reason)?;
        let shred = &shred;
        with_retries(D::WRITE_ATTEMPTS, || self.try_shred_scope(shred, audit)).await
    }

    async fn erase_shredded(&self) {
        D::after_shred(&self.pool).await;
    }

    async fn shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &WrittenBefore,
        limit: u32,
    ) -> Result<Vec<ShredCandidate>, StoreError> {
        self.read_shred_candidates(tenant, rule, limit).await
    }

    async fn count_shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &WrittenBefore,
    ) -> Result<(u64, u64), StoreError> {
        self.read_shred_candidate_counts(tenant, rule).await
    }

    async fn dek_tombstone(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<DekTombstone>, StoreError> {
        self.read_dek_tombstone(tenant, id).await
    }

    async fn shreds_after(&self, after_seq: i64) -> Result<Vec<(TenantId, i64)>, StoreError> {
        self.read_shreds_after(after_seq).await
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<DekRecord>, StoreError> {
        let sql = format!("{DEK_COLUMNS} WHERE tenant_id = $1 AND id = $2");
        let query = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(decode::key_id_text(id));
        self.fetch_optional(query, Self::dek_from_row).await
    }

    async fn add_dek_usage(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        messages: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let messages = decode::counter_delta(messages);
        let bytes = decode::counter_delta(bytes);
        // One statement, so atomic without an explicit transaction (and without the write
        // lock: it touches no uniqueness rule and appends nothing); saturates at i64::MAX
        // (SQLite would otherwise turn an overflowing sum into a REAL, PostgreSQL would fail).
        let updated = sqlx::query(
            "UPDATE deks SET \
               messages = CASE WHEN messages > $1 THEN $2 ELSE messages + $3 END, \
               bytes = CASE WHEN bytes > $4 THEN $2 ELSE bytes + $5 END \
             WHERE tenant_id = $6 AND id = $7 RETURNING id",
        )
        .bind(i64::MAX - messages)
        .bind(i64::MAX)
        .bind(messages)
        .bind(i64::MAX - bytes)
        .bind(bytes)
        .bind(tenant.as_str())
        .bind(decode::key_id_text(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if updated.is_none() {
            return Err(StoreError::NotFound(format!("DEK {id} of tenant {tenant}")));
        }
        Ok(())
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tenants) AS tenants, \
                    (SELECT COUNT(*) FROM kek_bindings) AS bindings, \
                    (SELECT COUNT(*) FROM tenant_keys) AS tenant_keys, \
                    (SELECT COUNT(*) FROM deks) AS deks",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let count = |table: &str| -> Result<u64, StoreError> {
            decode::counter(table, "COUNT(*)", Self::col(&row, table, table)?)
        };
        Ok(StoreCounts {
            tenants: count("tenants")?,
            bindings: count("bindings")?,
            tenant_keys: count("tenant_keys")?,
            deks: count("deks")?,
        })
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<Record>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events.as_slice();
        with_retries(D::WRITE_ATTEMPTS, || self.try_append_audit(events)).await
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        const T: &str = "audit_records";
        let last = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match last {
            None => Ok(ChainHead::GENESIS),
            Some(row) => decode::chain_head(
                Self::col(&row, T, "seq")?,
                &Self::col::<String>(&row, T, "hash")?,
            ),
        }
    }

    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<Record>, StoreError> {
        query.validate()?;
        let sql = audit_query_sql(query);
        let mut select = sqlx::query(&sql).bind(decode::seq_bound(query.after_seq));
        if let Some(tenant) = &query.tenant {
            select = select.bind(tenant.as_str());
        }
        if let Some(event_type) = &query.event_type {
            select = select.bind(event_type.as_str());
        }
        if let Some(from_ms) = query.from_ms {
            select = select.bind(from_ms);
        }
        if let Some(to_ms) = query.to_ms {
            select = select.bind(to_ms);
        }
        let select = select.bind(i64::from(query.effective_limit()));
        self.fetch_all(select, Self::record_from_row).await
    }

    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_insert_checkpoint(checkpoint)
        })
        .await
    }

    async fn checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, StoreError> {
        const T: &str = "audit_checkpoints";
        if from_seq > to_seq {
            return Ok(Vec::new());
        }
        sqlx::query(
            "SELECT seq, time_ms, key_id, body FROM audit_checkpoints \
             WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(decode::seq_bound(from_seq))
        .bind(decode::seq_bound(to_seq))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(|row| {
            decode::checkpoint(
                Self::col(row, T, "seq")?,
                Self::col(row, T, "time_ms")?,
                Self::col(row, T, "key_id")?,
                Self::col(row, T, "body")?,
            )
        })
        .collect()
    }

    async fn unauthenticated_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>, StoreError> {
        let sql =
            format!("{TENANT_KEY_COLUMNS} WHERE tk.mac IS NULL ORDER BY tk.tenant_id, tk.id");
        self.fetch_all(sqlx::query(&sql), Self::tenant_key_from_row).await
    }

    async fn authenticate_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        mac: Vec<u8>,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        if mac.is_empty() {
            return Err(StoreError::InvalidInput(
                "tenant_keys.mac: an authentication tag must not be empty".to_owned(),
            ));
        }
        let mac = &mac;
        with_retries(D::WRITE_ATTEMPTS, || {
            self.try_authenticate_tenant_key(tenant, id, mac, audit)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if D::PING_CONNECTION {
            let mut conn = self.pool.acquire().await.map_err(backend)?;
            conn.ping().await.map_err(backend)
        } else {
            self.audit_head().await.map(drop)
        }
    }

    fn key_state_changes(&self, listener_name: &str) -> Option<StoreChanges> {
        self.dialect.key_state_changes(listener_name)
    }

    async fn list_tenant_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<TenantKeyRecord>, StoreError> {
        self.read_tenant_keys(tenant).await
    }

    async fn list_deks(
        &self,
        tenant: &TenantId,
        after: Option<&KeyId>,
        limit: u32,
    ) -> Result<Vec<DekRecord>, StoreError> {
        self.read_deks_page(tenant, after, limit).await
    }

    async fn list_tombstones(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<DekTombstone>, StoreError> {
        self.read_tombstones_page(tenant, after_seq, limit).await
    }
});
