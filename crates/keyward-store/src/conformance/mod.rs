//! The store conformance suite: one set of checks that every [`Store`] backend must pass.
//!
//! A backend's test calls [`run_all`] (or the individual `check_*` functions) on a store it
//! opened. The checks are safe on a database shared with earlier runs and with other data: each
//! creates its own tenants with random ids (`conf-<32 hex>`) and asserts only about those,
//! except that the "nothing was inserted" checks compare global [`Store::counts`] before and
//! after, which assumes no *concurrent* writer on the same database during the check.
//!
//! The audit checks never assume the chain starts empty: they read [`Store::audit_head`] before
//! and after, and filter records by their own tenants. Those comparing the head before and after
//! a call (like the "nothing was inserted" checks) assume no concurrent writer either.
//!
//! By topic: tenants, bindings (KEK bindings, tenant keys and their states), DEKs, the key
//! history, the exit kit's paged reads, the audit log. Tests that need more than the `Store` trait — a dump of the whole
//! database, SQL run behind the store's back, a broken audit table, reopening — are written
//! once too, in [`backdoor`], against the small [`Backdoor`] trait each backend's test file
//! implements.
//! Behaviour that only one backend can show (reopening a file, PRAGMAs, read-only handles,
//! several replicas) is tested in that backend's own test file.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "test support code: a failed check must abort the test with a message"
)]

use keyward_audit::{
    DekRetireReason, KeyState, RegistrationOutcome, RevocationSource, SigningKey, StateTransition,
};

use crate::{
    AuditEvent, AuditQuery, BindingChange, ChainHead, DekInsert, KekBinding, KekState, KeyId,
    NewDek, NewKekBinding, Record, Scope, StateChange, StateUpdate, Store, StoreError, TenantId,
    TenantRecord, WrappedKey,
};

mod audit;
pub mod backdoor;
mod bindings;
mod checks;
mod deks;
mod export;
mod history;
mod rekey;
mod shred;
mod tenants;

pub use audit::*;
pub use backdoor::{Arg, Backdoor, populate, revoke_fresh};
pub use bindings::*;
pub use checks::*;
pub use deks::*;
pub use export::*;
pub use history::*;
pub use rekey::*;
pub use shred::*;
pub use tenants::*;

/// Runs every check, in order.
pub async fn run_all(store: &dyn Store) {
    check_tenants(store).await;
    check_bind_kek_unknown_tenant(store).await;
    check_bind_kek_rotation(store).await;
    check_bind_kek_reports_previous_binding(store).await;
    check_active_bindings_lists_current_bindings(store).await;
    check_tenant_policy(store).await;
    check_bind_kek_duplicate_tenant_key(store).await;
    check_bind_kek_rejects_empty_fields(store).await;
    check_writes_return_the_tenant_they_left(store).await;
    check_tenant_key_isolation(store).await;
    check_tenant_key_authentication(store).await;
    check_set_binding_state(store).await;
    check_set_binding_state_compares_the_version(store).await;
    check_bind_kek_keeps_the_old_bindings_state(store).await;
    check_key_check_schedule(store).await;
    check_key_holdings(store).await;
    check_key_check_claim_order(store).await;
    check_next_key_check_due(store).await;
    check_kms_revocations_are_scheduled(store).await;
    check_bindings_with_key(store).await;
    check_insert_dek_retires_per_scope(store).await;
    check_insert_dek_bad_tenant_key(store).await;
    check_insert_dek_duplicate_id(store).await;
    check_dek_isolation(store).await;
    check_dek_usage(store).await;
    check_wrapped_round_trip(store).await;
    check_concurrent_insert_dek(store).await;
    check_counts_grow(store).await;
    check_binding_usage(store).await;
    check_binding_usage_names_who_bound_each_binding(store).await;
    check_rekey(store).await;
    check_rekey_respects_revocation(store).await;
    check_rekey_schedule_and_checks(store).await;
    check_shred_scope(store).await;
    check_shred_scope_edges(store).await;
    check_retention_candidates(store).await;
    check_list_tenant_keys(store).await;
    check_list_deks_and_tombstones(store).await;
    check_audit_lifecycle_events(store).await;
    check_audit_empty_closures_append_nothing(store).await;
    check_append_audit_empty_is_a_no_op(store).await;
    check_audit_head(store).await;
    check_audit_query(store).await;
    check_audit_page_cap(store).await;
    check_checkpoints(store).await;
    check_concurrent_audit_appends(store).await;
    check_audit_chain_links(store).await;
}

// ----- audit events the checks' lifecycle closures return ---------------------------------

/// `tenant_created`, by actor "conformance".
pub fn tenant_created(tenant: &TenantRecord) -> Vec<AuditEvent> {
    vec![AuditEvent::TenantCreated {
        tenant: tenant.id.clone(),
        actor: Some("conformance".to_owned()),
    }]
}

/// A successful `key_registration_attempted` followed by `kek_binding_changed`: two events, so
/// that order within one call is checked.
pub fn binding_changed(change: &BindingChange) -> Vec<AuditEvent> {
    let binding = &change.binding;
    vec![
        AuditEvent::KeyRegistrationAttempted {
            tenant: binding.tenant.clone(),
            provider: binding.provider.to_string(),
            key_ref: binding.key_ref.clone(),
            outcome: RegistrationOutcome::Succeeded,
        },
        AuditEvent::KekBindingChanged {
            tenant: binding.tenant.clone(),
            binding_id: binding.id,
            provider: binding.provider.to_string(),
            key_ref: binding.key_ref.clone(),
            tenant_key_id: binding.tenant_key_id,
            previous_binding_id: change.previous,
            actor: Some("conformance".to_owned()),
        },
    ]
}

/// `dek_retired` for the DEK the insert retired (if any), then `dek_created`.
pub fn dek_events(inserted: &DekInsert) -> Vec<AuditEvent> {
    let dek = &inserted.dek;
    // Not a real HMAC (the suite has no identifier key); the store does not interpret it.
    let scope_hmac = format!("conformance:{}", dek.scope.as_str().len());
    let mut events = Vec::new();
    if let Some(retired) = inserted.retired {
        events.push(AuditEvent::DekRetired {
            tenant: dek.tenant.clone(),
            scope_hmac: scope_hmac.clone(),
            dek_id: retired,
            reason: DekRetireReason::MaxAge,
        });
    }
    events.push(AuditEvent::DekCreated {
        tenant: dek.tenant.clone(),
        scope_hmac,
        dek_id: dek.id,
        tenant_key_id: dek.tenant_key_id,
    });
    events
}

fn key_state(state: KekState) -> KeyState {
    match state {
        KekState::Active => KeyState::Active,
        KekState::Revoked => KeyState::Revoked,
        KekState::Unavailable => KeyState::Unavailable,
        KekState::Restored => KeyState::Restored,
        KekState::Destroyed => KeyState::Destroyed,
        other => panic!("{other} is not a state set_binding_state writes"),
    }
}

/// `revocation_state_changed` to the binding's new state.
pub fn state_changed(change: &StateChange) -> Vec<AuditEvent> {
    let binding = &change.binding;
    vec![AuditEvent::RevocationStateChanged(StateTransition {
        tenant: binding.tenant.clone(),
        binding_id: binding.id,
        from: key_state(change.from),
        to: key_state(binding.state),
        source: RevocationSource::Explicit,
        actor: Some("conformance".to_owned()),
        reason: "conformance check".to_owned(),
        observed_at_ms: binding.state_changed_at_ms,
    })]
}

fn no_events<T>(_: &T) -> Vec<AuditEvent> {
    Vec::new()
}

/// A usage summary of `tenant` for standalone appends; `n` makes each one distinct.
pub fn usage_event(tenant: &TenantId, n: u64) -> AuditEvent {
    AuditEvent::UsageSummary {
        tenant: tenant.clone(),
        minute: 60 * i64::try_from(n).unwrap(),
        encrypts: n,
        decrypts: 0,
        bytes_in: 0,
        bytes_out: 0,
        kms_calls: 0,
        cache_hits: 0,
        errors: 0,
    }
}

/// Every record about `tenant`, seq ascending (paging through the whole chain).
pub async fn tenant_records(store: &dyn Store, tenant: &TenantId) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    loop {
        let after_seq = out.last().map_or(0, Record::seq);
        let page = store
            .audit_records(
                &AuditQuery::default()
                    .with_tenant(tenant.clone())
                    .with_after_seq(after_seq),
            )
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The chain head just before record `seq`: GENESIS for seq 1, else record `seq - 1`'s head.
async fn head_before(store: &dyn Store, seq: u64) -> ChainHead {
    if seq == 1 {
        return ChainHead::GENESIS;
    }
    let previous = store
        .audit_records(&AuditQuery::default().with_after_seq(seq - 2).with_limit(1))
        .await
        .unwrap();
    assert_eq!(previous.len(), 1, "record {} exists", seq - 1);
    assert_eq!(previous[0].seq(), seq - 1);
    previous[0].head()
}

/// A refused call inserted nothing (the global counts are still `before`) and appended no audit
/// record (the chain head is still `head`).
async fn assert_nothing_written(store: &dyn Store, before: &crate::StoreCounts, head: &ChainHead) {
    assert_eq!(&store.counts().await.unwrap(), before);
    assert_eq!(&store.audit_head().await.unwrap(), head, "no audit record");
}

/// `records` are consecutive, each verifies and follows its predecessor, and the first follows
/// the record stored just before it.
async fn assert_linked(store: &dyn Store, records: &[Record]) {
    let Some(first) = records.first() else { return };
    assert_chain(head_before(store, first.seq()).await, records);
}

/// Each of `records` verifies and follows the one before it, the first following `head`;
/// returns the last one's head.
fn assert_chain(mut head: ChainHead, records: &[Record]) -> ChainHead {
    for record in records {
        assert!(record.verify_hash(), "record {} verifies", record.seq());
        assert!(
            record.follows(&head),
            "record {} follows seq {}",
            record.seq(),
            head.seq
        );
        head = record.head();
    }
    head
}

fn key_id() -> KeyId {
    KeyId::generate().expect("the system CSPRNG works")
}

/// A fresh tenant id no other run uses.
pub fn unique_tenant_id() -> TenantId {
    TenantId::try_from(format!("conf-{}", key_id()).as_str()).expect("conf-<hex> is a valid id")
}

fn wrapped(tag: u8) -> WrappedKey {
    // Shaped like a real wrapped key (61 bytes) but recognisable per call site.
    WrappedKey::new((0..61u8).map(|i| i ^ tag).collect())
}

fn scope(s: &str) -> Scope {
    Scope::try_from(s).unwrap()
}

async fn new_tenant(store: &dyn Store) -> TenantId {
    let id = unique_tenant_id();
    store
        .create_tenant(&id, "Conformance tenant", &tenant_created)
        .await
        .unwrap();
    id
}

fn new_binding(tenant: &TenantId, key_ref: &str) -> NewKekBinding {
    NewKekBinding {
        tenant: tenant.clone(),
        provider: crate::ProviderKind::Local,
        key_ref: key_ref.to_owned(),
        tenant_key_id: key_id(),
        wrapped_tenant_key: wrapped(0x5a),
        tenant_key_mac: Some(vec![0x6d; 32]),
    }
}

/// A tenant with one binding; returns the tenant and the binding.
async fn bound_tenant(store: &dyn Store) -> (TenantId, KekBinding) {
    let tenant = new_tenant(store).await;
    let binding = store
        .bind_kek(new_binding(&tenant, "local:kek-1"), &binding_changed)
        .await
        .unwrap()
        .binding;
    (tenant, binding)
}

fn new_dek(tenant: &TenantId, scope_label: &str, tenant_key_id: KeyId) -> NewDek {
    NewDek {
        id: key_id(),
        tenant: tenant.clone(),
        scope: scope(scope_label),
        tenant_key_id,
        wrapped: wrapped(0xa5),
    }
}
