//! KEK bindings and the tenant keys they wrap: their rows and the write transactions that
//! register a binding, change its state and authenticate a tenant key.

use sqlx::{Database, Row as _};

use super::{Announcement, backend, sql_impl, write_error};
use crate::decode::{self, now_ms};
use crate::{
    AuditFn, BindingChange, BindingCommit, KekBinding, KekState, KeyId, NewKekBinding,
    RevocationSource, StateChange, StateUpdate, StoreError, TenantId, TenantKeyRecord, WrappedKey,
};

/// A binding with the id of its tenant key (one per binding; LEFT JOIN so that a missing one is
/// reported as corruption instead of hiding the binding).
/// A retired binding (`retired_at_ms` set by a re-key) reads as state `retired`.
pub(crate) const BINDING_COLUMNS: &str = "SELECT kb.id, kb.tenant_id, kb.provider, kb.key_ref, \
     CASE WHEN kb.retired_at_ms IS NULL THEN kb.state ELSE 'retired' END AS state, \
     tk.id AS tenant_key_id, kb.created_at_ms, kb.deactivated_at_ms, \
     kb.state_changed_at_ms, kb.state_cause, kb.state_version \
     FROM kek_bindings kb LEFT JOIN tenant_keys tk ON tk.binding_id = kb.id";

/// A tenant key as wrapped now: `binding_id`, `provider`, `key_ref` and the binding state are
/// those of the binding whose KEK wraps it (`kek_binding_id`: its own binding's until a re-key
/// moves it under a newer one).
pub(crate) const TENANT_KEY_COLUMNS: &str = "SELECT tk.id, tk.tenant_id, \
     tk.kek_binding_id AS binding_id, kb.provider, kb.key_ref, tk.wrapped, tk.created_at_ms, \
     tk.mac, CASE WHEN kb.retired_at_ms IS NULL THEN kb.state ELSE 'retired' END AS binding_state, \
     kb.state_changed_at_ms AS binding_state_changed_at_ms \
     FROM tenant_keys tk JOIN kek_bindings kb ON kb.id = tk.kek_binding_id";

sql_impl!(impl => {
    pub(crate) fn binding_from_row(row: &<D::Db as Database>::Row) -> Result<KekBinding, StoreError> {
        const T: &str = "kek_bindings";
        let id: i64 = Self::col(row, T, "id")?;
        let tenant_key_id = row
            .try_get::<Option<String>, _>("tenant_key_id")
            .map_err(|e| StoreError::Corrupt(format!("tenant_keys.id: {e}")))?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "tenant_keys.binding_id: KEK binding {id} has no tenant key"
                ))
            })?;
        Ok(KekBinding {
            id,
            tenant: decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
            provider: decode::provider_kind(T, "provider", &Self::col::<String>(row, T, "provider")?)?,
            key_ref: Self::col(row, T, "key_ref")?,
            state: decode::kek_state(T, "state", &Self::col::<String>(row, T, "state")?)?,
            tenant_key_id: decode::key_id("tenant_keys", "id", &tenant_key_id)?,
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            deactivated_at_ms: Self::col(row, T, "deactivated_at_ms")?,
            state_changed_at_ms: Self::col(row, T, "state_changed_at_ms")?,
            state_cause: decode::cause(
                T,
                "state_cause",
                Self::col::<Option<String>>(row, T, "state_cause")?.as_deref(),
            )?,
            state_version: Self::col(row, T, "state_version")?,
        })
    }

    pub(crate) fn tenant_key_from_row(
        row: &<D::Db as Database>::Row,
    ) -> Result<TenantKeyRecord, StoreError> {
        const T: &str = "tenant_keys";
        Ok(TenantKeyRecord {
            id: decode::key_id(T, "id", &Self::col::<String>(row, T, "id")?)?,
            tenant: decode::tenant_id(T, "tenant_id", &Self::col::<String>(row, T, "tenant_id")?)?,
            binding_id: Self::col(row, T, "binding_id")?,
            provider: decode::provider_kind(
                "kek_bindings",
                "provider",
                &Self::col::<String>(row, "kek_bindings", "provider")?,
            )?,
            key_ref: Self::col(row, "kek_bindings", "key_ref")?,
            wrapped: WrappedKey::new(Self::col(row, T, "wrapped")?),
            created_at_ms: Self::col(row, T, "created_at_ms")?,
            binding_state: decode::kek_state(
                "kek_bindings",
                "state",
                &Self::col::<String>(row, "kek_bindings", "binding_state")?,
            )?,
            binding_state_changed_at_ms: Self::col(
                row,
                "kek_bindings",
                "binding_state_changed_at_ms",
            )?,
            mac: Self::col(row, T, "mac")?,
        })
    }

    pub(crate) async fn try_bind_kek(
        &self,
        b: &NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<BindingCommit, StoreError> {
        let now = now_ms();
        let tenant_key_id = decode::key_id_text(&b.tenant_key_id);
        let mut tx = D::begin_write(&self.pool).await?;

        if !Self::exists(&mut tx, "SELECT 1 FROM tenants WHERE id = $1", &[b.tenant.as_str()]).await? {
            return Err(StoreError::NotFound(format!("tenant {}", b.tenant)));
        }
        let existing = "SELECT 1 FROM tenant_keys WHERE id = $1";
        if Self::exists(&mut tx, existing, &[tenant_key_id.as_str()]).await? {
            return Err(StoreError::AlreadyExists(format!(
                "tenant key {}",
                b.tenant_key_id
            )));
        }

        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM kek_bindings WHERE tenant_id = $1 AND deactivated_at_ms IS NULL",
        )
        .bind(b.tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            // The version moves too: a state change decided from a read of the binding while
            // it was current must not commit now that it no longer is.
            "UPDATE kek_bindings SET deactivated_at_ms = $1, state_version = state_version + 1 \
             WHERE tenant_id = $2 AND deactivated_at_ms IS NULL",
        )
        .bind(now)
        .bind(b.tenant.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, "deactivating the current KEK binding"))?;

        let id: i64 = sqlx::query_scalar(
            "INSERT INTO kek_bindings \
             (tenant_id, provider, key_ref, state, created_at_ms, deactivated_at_ms, state_changed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, NULL, $5) RETURNING id",
        )
        .bind(b.tenant.as_str())
        .bind(b.provider.as_str())
        .bind(b.key_ref.as_str())
        .bind(KekState::Active.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("KEK binding for tenant {}", b.tenant)))?;

        sqlx::query(
            "INSERT INTO tenant_keys (id, tenant_id, binding_id, kek_binding_id, wrapped, created_at_ms, mac) \
             VALUES ($1, $2, $3, $3, $4, $5, $6)",
        )
        .bind(tenant_key_id.as_str())
        .bind(b.tenant.as_str())
        .bind(id)
        .bind(b.wrapped_tenant_key.as_bytes())
        .bind(now)
        .bind(b.tenant_key_mac.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, &format!("tenant key {}", b.tenant_key_id)))?;

        let binding = KekBinding {
            id,
            tenant: b.tenant.clone(),
            provider: b.provider,
            key_ref: b.key_ref.clone(),
            state: KekState::Active,
            tenant_key_id: b.tenant_key_id,
            created_at_ms: now,
            deactivated_at_ms: None,
            state_changed_at_ms: now,
            state_cause: None,
            state_version: 0,
        };
        let change = BindingChange { binding, previous };
        self.append_events(&mut tx, audit(&change)).await?;
        D::announce(&mut tx, Announcement::KeyState, b.tenant.as_str()).await?;
        let tenant = Self::tenant_state_in(&mut tx, &b.tenant).await?;
        tx.commit().await.map_err(backend)?;
        Ok(BindingCommit {
            binding: change.binding,
            tenant,
        })
    }

    pub(crate) async fn try_set_binding_state(
        &self,
        update: StateUpdate,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<BindingCommit, StoreError> {
        let binding_id = update.binding_id;
        let mut tx = D::begin_write(&self.pool).await?;
        // Read under the write lock: nothing can change the row between this read and the
        // update below, so comparing here is the compare-and-set.
        let row = sqlx::query(&format!("{BINDING_COLUMNS} WHERE kb.id = $1"))
            .bind(binding_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("KEK binding {binding_id}")));
        };
        let current = Self::binding_from_row(&row)?;
        if current.state_version != update.expected_version {
            return Err(StoreError::StateChanged(format!(
                "binding {binding_id} of tenant {} is {} (version {}), not version {} as read",
                current.tenant, current.state, current.state_version, update.expected_version
            )));
        }
        if current.state == KekState::Retired || update.to == KekState::Retired {
            // Retired is final and only a re-key sets it (`retire_bindings`): nothing depends
            // on the binding's key, so what its KMS says no longer matters.
            return Err(StoreError::InvalidInput(format!(
                "binding {binding_id} of tenant {}: a retired binding never changes state, and \
                 only a re-key retires one",
                current.tenant
            )));
        }
        sqlx::query(
            "UPDATE kek_bindings SET state = $1, state_cause = $2, state_changed_at_ms = $3, \
             state_version = state_version + 1 WHERE id = $4 AND state_version = $5",
        )
        .bind(update.to.as_str())
        .bind(decode::cause_text(update.cause))
        .bind(now_ms())
        .bind(binding_id)
        .bind(update.expected_version)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if matches!(update.to, KekState::Revoked | KekState::Unavailable)
            && update.cause != RevocationSource::Explicit
            && current.deactivated_at_ms.is_none()
        {
            // What the KMS said can lift this state when it answers again: the monitor checks
            // the binding even when no replica holds its key (docs/revocation.md, "Monitor").
            sqlx::query(
                "INSERT INTO key_checks (binding_id, tenant_id, due_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (binding_id) DO UPDATE SET \
                 due_at_ms = COALESCE(key_checks.due_at_ms, excluded.due_at_ms)",
            )
            .bind(binding_id)
            .bind(current.tenant.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        // The tenant as this transaction leaves it, the updated binding among its bindings: one
        // read serves the audit record and the answer.
        let tenant = Self::tenant_state_in(&mut tx, &current.tenant).await?;
        let updated = tenant.bindings.iter().find(|b| b.id == binding_id).cloned();
        let updated = updated.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "kek_bindings.id: binding {binding_id} vanished during its own update"
            ))
        })?;
        let change = StateChange {
            binding: updated,
            from: current.state,
            from_cause: current.state_cause,
        };
        if change.binding.state_version != update.expected_version + 1 {
            // Unreachable under the write lock; refuse rather than commit something unexpected.
            return Err(StoreError::StateChanged(format!(
                "binding {binding_id} moved to version {} during its own update",
                change.binding.state_version
            )));
        }
        self.append_events(&mut tx, audit(&change)).await?;
        D::announce(
            &mut tx,
            Announcement::KeyState,
            change.binding.tenant.as_str(),
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(BindingCommit {
            binding: change.binding,
            tenant,
        })
    }

    pub(crate) async fn try_authenticate_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        mac: &[u8],
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        let id_text = decode::key_id_text(id);
        let mut tx = D::begin_write(&self.pool).await?;
        let row = sqlx::query(&format!(
            "{TENANT_KEY_COLUMNS} WHERE tk.tenant_id = $1 AND tk.id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id_text.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("tenant key {id} of {tenant}")));
        };
        let mut record = Self::tenant_key_from_row(&row)?;
        if record.mac.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "an authentication tag for tenant key {id} of {tenant}"
            )));
        }
        // Read above in this write transaction: the row exists and its tag is NULL.
        sqlx::query("UPDATE tenant_keys SET mac = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(mac)
            .bind(tenant.as_str())
            .bind(id_text.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        record.mac = Some(mac.to_vec());
        self.append_events(&mut tx, audit(&record)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }
});
