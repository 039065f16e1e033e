//! One replica's connection to the shared store, with three test hooks: the next write(s) can be
//! made to fail with [`StoreError::Backend`] before they reach the database (nothing is
//! committed), so can the next read(s) of a tenant's current binding, and the next read of a tenant's current binding can be held after the database
//! answered (the caller then decides from a state that may have changed meanwhile).

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use async_trait::async_trait;
use keyward_store::{
    AuditEvent, AuditFn, AuditQuery, BindingChange, BindingCommit, ChainHead, Checkpoint,
    DekInsert, DekRecord, KekBinding, KeyId, NewDek, NewKekBinding, Record, Scope, StateChange,
    StateUpdate, Store, StoreCounts, StoreError, TenantId, TenantKeyRecord, TenantPolicy,
    TenantRecord, TenantState,
};

use super::hold::Hold;

#[derive(Debug)]
pub(crate) struct FaultyStore {
    inner: Arc<dyn Store>,
    /// Writes that still pass before the injected failures start.
    pass_writes: AtomicU32,
    /// Writes that fail (after `pass_writes` passed).
    fail_writes: AtomicU32,
    /// `active_binding` reads that fail (the database cannot be read).
    fail_binding_reads: AtomicU32,
    /// Holds the next `active_binding` read after the database answered.
    pub(crate) hold_binding_read: Hold,
}

impl FaultyStore {
    pub(crate) fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            pass_writes: AtomicU32::new(0),
            fail_writes: AtomicU32::new(0),
            fail_binding_reads: AtomicU32::new(0),
            hold_binding_read: Hold::default(),
        }
    }

    /// After the next `pass` writes, the `fail` writes after them fail.
    pub(crate) fn fail_writes(&self, pass: u32, fail: u32) {
        self.pass_writes.store(pass, Ordering::SeqCst);
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// The next `fail` reads of a tenant's current binding fail.
    pub(crate) fn fail_binding_reads(&self, fail: u32) {
        self.fail_binding_reads.store(fail, Ordering::SeqCst);
    }

    pub(crate) fn clear_failures(&self) {
        self.fail_writes(0, 0);
        self.fail_binding_reads(0);
    }

    fn write(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        if self
            .pass_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(());
        }
        if self
            .fail_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Backend(Box::new(std::io::Error::other(
                "model test: injected store write failure",
            ))));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn create_tenant(
        &self,
        id: &TenantId,
        display_name: &str,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantRecord, StoreError> {
        self.write()?;
        self.inner.create_tenant(id, display_name, audit).await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        self.inner.get_tenant(id).await
    }

    async fn set_tenant_policy(
        &self,
        id: &TenantId,
        policy: TenantPolicy,
        audit: AuditFn<'_, TenantRecord>,
    ) -> Result<TenantState, StoreError> {
        self.write()?;
        self.inner.set_tenant_policy(id, policy, audit).await
    }

    async fn bind_kek(
        &self,
        binding: NewKekBinding,
        audit: AuditFn<'_, BindingChange>,
    ) -> Result<BindingCommit, StoreError> {
        self.write()?;
        self.inner.bind_kek(binding, audit).await
    }

    async fn active_binding(&self, tenant: &TenantId) -> Result<Option<KekBinding>, StoreError> {
        if self
            .fail_binding_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Backend(Box::new(std::io::Error::other(
                "model test: injected store read failure",
            ))));
        }
        let answer = self.inner.active_binding(tenant).await;
        self.hold_binding_read.pass().await;
        answer
    }

    async fn active_bindings(&self) -> Result<Vec<KekBinding>, StoreError> {
        self.inner.active_bindings().await
    }

    async fn list_bindings(&self, tenant: &TenantId) -> Result<Vec<KekBinding>, StoreError> {
        self.inner.list_bindings(tenant).await
    }

    async fn binding_usage(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<keyward_store::BindingUsage>, StoreError> {
        self.inner.binding_usage(tenant).await
    }

    async fn bindings_with_key(
        &self,
        provider: keyward_store::ProviderKind,
        key_ref: &str,
    ) -> Result<Vec<KekBinding>, StoreError> {
        self.inner.bindings_with_key(provider, key_ref).await
    }

    async fn hold_key(
        &self,
        tenant: &TenantId,
        binding_id: i64,
        until_ms: i64,
        check_at_ms: i64,
    ) -> Result<(), StoreError> {
        // The monitor's schedule is written to like any other table: an injected failure
        // fails the holding (the key is then cached for at most the monitor interval).
        self.write()?;
        self.inner
            .hold_key(tenant, binding_id, until_ms, check_at_ms)
            .await
    }

    async fn claim_key_checks(
        &self,
        replica: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<keyward_store::KeyCheck>, StoreError> {
        self.write()?;
        self.inner
            .claim_key_checks(replica, now_ms, lease_until_ms, limit)
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
        // A failed finish leaves the claim's lease to lapse: the check comes due again.
        self.write()?;
        self.inner
            .finish_key_check(replica, binding_id, now_ms, next_due_ms, unheld_due_ms)
            .await
    }

    async fn next_key_check_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        self.inner.next_key_check_due(now_ms).await
    }

    async fn set_binding_state(
        &self,
        update: StateUpdate,
        audit: AuditFn<'_, StateChange>,
    ) -> Result<BindingCommit, StoreError> {
        self.write()?;
        self.inner.set_binding_state(update, audit).await
    }

    async fn unauthenticated_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>, StoreError> {
        self.inner.unauthenticated_tenant_keys().await
    }

    async fn authenticate_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        mac: Vec<u8>,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        self.write()?;
        self.inner
            .authenticate_tenant_key(tenant, id, mac, audit)
            .await
    }

    async fn scheduled_rekeys(&self) -> Result<Vec<TenantId>, StoreError> {
        self.inner.scheduled_rekeys().await
    }
    async fn rekey_state(
        &self,
        tenant: &TenantId,
    ) -> Result<keyward_store::RekeyState, StoreError> {
        self.inner.rekey_state(tenant).await
    }
    async fn rewrap_tenant_key(
        &self,
        rewrap: keyward_store::TenantKeyRewrap,
        audit: AuditFn<'_, TenantKeyRecord>,
    ) -> Result<TenantKeyRecord, StoreError> {
        self.write()?;
        self.inner.rewrap_tenant_key(rewrap, audit).await
    }
    async fn retire_bindings(
        &self,
        tenant: &TenantId,
        audit: AuditFn<'_, keyward_store::RetiredBindings>,
    ) -> Result<keyward_store::RetiredBindings, StoreError> {
        self.write()?;
        self.inner.retire_bindings(tenant, audit).await
    }
    async fn get_tenant_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<TenantKeyRecord>, StoreError> {
        self.inner.get_tenant_key(tenant, id).await
    }

    async fn insert_dek(
        &self,
        dek: NewDek,
        audit: AuditFn<'_, DekInsert>,
    ) -> Result<DekInsert, StoreError> {
        self.write()?;
        self.inner.insert_dek(dek, audit).await
    }

    async fn active_dek(
        &self,
        tenant: &TenantId,
        scope: &Scope,
    ) -> Result<Option<DekRecord>, StoreError> {
        self.inner.active_dek(tenant, scope).await
    }

    async fn get_dek(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<DekRecord>, StoreError> {
        self.inner.get_dek(tenant, id).await
    }

    async fn add_dek_usage(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        messages: u64,
        bytes: u64,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.add_dek_usage(tenant, id, messages, bytes).await
    }

    async fn shred_scope(
        &self,
        shred: keyward_store::ScopeShred,
        audit: keyward_store::AuditFn<'_, keyward_store::ShredResult>,
    ) -> Result<keyward_store::ShredResult, StoreError> {
        self.write()?;
        self.inner.shred_scope(shred, audit).await
    }
    async fn erase_shredded(&self) {
        self.inner.erase_shredded().await;
    }
    async fn shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &keyward_store::WrittenBefore,
        limit: u32,
    ) -> Result<Vec<keyward_store::ShredCandidate>, StoreError> {
        self.inner.shred_candidates(tenant, rule, limit).await
    }
    async fn count_shred_candidates(
        &self,
        tenant: &TenantId,
        rule: &keyward_store::WrittenBefore,
    ) -> Result<(u64, u64), StoreError> {
        self.inner.count_shred_candidates(tenant, rule).await
    }
    async fn dek_tombstone(
        &self,
        tenant: &TenantId,
        id: &KeyId,
    ) -> Result<Option<keyward_store::DekTombstone>, StoreError> {
        self.inner.dek_tombstone(tenant, id).await
    }
    async fn shreds_after(&self, after_seq: i64) -> Result<Vec<(TenantId, i64)>, StoreError> {
        self.inner.shreds_after(after_seq).await
    }

    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.inner.counts().await
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<Vec<Record>, StoreError> {
        if events.is_empty() {
            return self.inner.append_audit(events).await;
        }
        self.write()?;
        self.inner.append_audit(events).await
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        self.inner.audit_head().await
    }

    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<Record>, StoreError> {
        self.inner.audit_records(query).await
    }

    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.write()?;
        self.inner.insert_checkpoint(checkpoint).await
    }

    async fn checkpoints(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Checkpoint>, StoreError> {
        self.inner.checkpoints(from_seq, to_seq).await
    }

    async fn list_tenant_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<TenantKeyRecord>, StoreError> {
        self.inner.list_tenant_keys(tenant).await
    }
    async fn list_deks(
        &self,
        tenant: &TenantId,
        after: Option<&KeyId>,
        limit: u32,
    ) -> Result<Vec<DekRecord>, StoreError> {
        self.inner.list_deks(tenant, after, limit).await
    }
    async fn list_tombstones(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<keyward_store::DekTombstone>, StoreError> {
        self.inner.list_tombstones(tenant, after_seq, limit).await
    }
}
