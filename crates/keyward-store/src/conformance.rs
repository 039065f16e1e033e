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
//! Behaviour that only one backend can show (reopening a file, PRAGMAs, read-only handles,
//! append-only triggers, an audit write failing inside the database) is tested in that backend's
//! own test file, not here.
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
    check_tenant_key_isolation(store).await;
    check_tenant_key_authentication(store).await;
    check_set_binding_state(store).await;
    check_set_binding_state_compares_the_version(store).await;
    check_bind_kek_keeps_the_old_bindings_state(store).await;
    check_insert_dek_retires_per_scope(store).await;
    check_insert_dek_bad_tenant_key(store).await;
    check_insert_dek_duplicate_id(store).await;
    check_dek_isolation(store).await;
    check_dek_usage(store).await;
    check_wrapped_round_trip(store).await;
    check_concurrent_insert_dek(store).await;
    check_counts_grow(store).await;
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
            provider: binding.provider.clone(),
            key_ref: binding.key_ref.clone(),
            outcome: RegistrationOutcome::Succeeded,
        },
        AuditEvent::KekBindingChanged {
            tenant: binding.tenant.clone(),
            binding_id: binding.id,
            provider: binding.provider.clone(),
            key_ref: binding.key_ref.clone(),
            tenant_key_id: binding.tenant_key_id,
            previous_binding_id: change.previous,
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

/// A per-tenant event for standalone appends; `n` makes each one distinct.
fn usage(tenant: &TenantId, n: u64) -> AuditEvent {
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

/// `records` are consecutive, each verifies and follows its predecessor, and the first follows
/// the record stored just before it.
async fn assert_linked(store: &dyn Store, records: &[Record]) {
    let Some(first) = records.first() else { return };
    let mut head = head_before(store, first.seq()).await;
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
        provider: "local".to_owned(),
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
        .unwrap();
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

/// create/get tenant; duplicate -> AlreadyExists; unknown -> None.
pub async fn check_tenants(store: &dyn Store) {
    let id = unique_tenant_id();
    assert_eq!(store.get_tenant(&id).await.unwrap(), None);
    let created = store
        .create_tenant(&id, "Acme Corp ✓", &tenant_created)
        .await
        .unwrap();
    assert_eq!(created.id, id);
    assert_eq!(created.display_name, "Acme Corp ✓");
    assert!(created.created_at_ms > 0);
    assert_eq!(store.get_tenant(&id).await.unwrap(), Some(created.clone()));

    let records = tenant_records(store, &id).await;
    assert_eq!(records.len(), 1, "one tenant_created record");
    let err = store
        .create_tenant(&id, "someone else", &tenant_created)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate tenant: {err:?}"
    );
    // The failed duplicate did not overwrite anything, nor append a record.
    assert_eq!(store.get_tenant(&id).await.unwrap(), Some(created));
    assert_eq!(tenant_records(store, &id).await, records);
    assert_eq!(store.get_tenant(&unique_tenant_id()).await.unwrap(), None);
}

/// bind_kek on an unknown tenant -> NotFound, nothing inserted.
pub async fn check_bind_kek_unknown_tenant(store: &dyn Store) {
    let tenant = unique_tenant_id();
    let before = store.counts().await.unwrap();
    let head = store.audit_head().await.unwrap();
    let binding = new_binding(&tenant, "local:kek-1");
    let tenant_key_id = binding.tenant_key_id;
    let err = store.bind_kek(binding, &binding_changed).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "unknown tenant: {err:?}"
    );
    assert_eq!(store.counts().await.unwrap(), before);
    assert_eq!(store.audit_head().await.unwrap(), head, "no audit record");
    assert!(tenant_records(store, &tenant).await.is_empty());
    assert_eq!(store.active_binding(&tenant).await.unwrap(), None);
    assert_eq!(
        store.get_tenant_key(&tenant, &tenant_key_id).await.unwrap(),
        None
    );
}

/// Binding twice: the first is deactivated, the second is the one active binding; list is
/// oldest first; each binding's tenant key is stored with the binding's provider and key_ref.
pub async fn check_bind_kek_rotation(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    assert_eq!(store.active_binding(&tenant).await.unwrap(), None);
    assert!(store.list_bindings(&tenant).await.unwrap().is_empty());

    let first_new = new_binding(&tenant, "local:kek-1");
    let first = store
        .bind_kek(first_new.clone(), &binding_changed)
        .await
        .unwrap();
    assert_eq!(first.tenant, tenant);
    assert_eq!(first.provider, "local");
    assert_eq!(first.key_ref, "local:kek-1");
    assert_eq!(first.state, KekState::Active);
    assert_eq!(first.tenant_key_id, first_new.tenant_key_id);
    assert_eq!(first.deactivated_at_ms, None);
    assert_eq!(first.state_changed_at_ms, first.created_at_ms);
    assert_eq!(
        store.active_binding(&tenant).await.unwrap(),
        Some(first.clone())
    );

    let mut second_new = new_binding(&tenant, "local:kek-2");
    second_new.provider = "aws-kms".to_owned();
    second_new.wrapped_tenant_key = wrapped(0x33);
    // Any bytes, NUL and 0xff included.
    second_new.tenant_key_mac = Some((0..=255u8).rev().chain([0, 0]).collect());
    let second = store
        .bind_kek(second_new.clone(), &binding_changed)
        .await
        .unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(second.state, KekState::Active);
    assert_eq!(second.deactivated_at_ms, None);
    assert_eq!(
        store.active_binding(&tenant).await.unwrap(),
        Some(second.clone())
    );

    let all = store.list_bindings(&tenant).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, first.id, "oldest first");
    assert_eq!(all[1], second);
    let deactivated = all[0].deactivated_at_ms.expect("first binding deactivated");
    assert!(deactivated >= first.created_at_ms);
    // Deactivation is not a state change: the old KEK's health is still what it was.
    assert_eq!(all[0].state, KekState::Active);
    assert_eq!(
        all.iter().filter(|b| b.deactivated_at_ms.is_none()).count(),
        1
    );

    // Both tenant keys stay readable, each with its own binding's provider and key_ref.
    let old_key = store
        .get_tenant_key(&tenant, &first_new.tenant_key_id)
        .await
        .unwrap()
        .expect("first tenant key");
    assert_eq!(old_key.binding_id, first.id);
    assert_eq!(old_key.provider, "local");
    assert_eq!(old_key.key_ref, "local:kek-1");
    assert_eq!(old_key.wrapped, first_new.wrapped_tenant_key);
    assert_eq!(old_key.mac, first_new.tenant_key_mac);
    let new_key = store
        .get_tenant_key(&tenant, &second_new.tenant_key_id)
        .await
        .unwrap()
        .expect("second tenant key");
    assert_eq!(new_key.id, second_new.tenant_key_id);
    assert_eq!(new_key.tenant, tenant);
    assert_eq!(new_key.binding_id, second.id);
    assert_eq!(new_key.provider, "aws-kms");
    assert_eq!(new_key.key_ref, "local:kek-2");
    assert_eq!(new_key.wrapped, second_new.wrapped_tenant_key);
    assert_eq!(new_key.mac, second_new.tenant_key_mac);
    assert_eq!(new_key.created_at_ms, second.created_at_ms);
}

/// set_tenant_policy round-trips, is audited, rejects zero and unknown tenants.
pub async fn check_tenant_policy(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let created = store.get_tenant(&tenant).await.unwrap().unwrap();
    assert_eq!(created.policy, crate::TenantPolicy::default());
    let policy = crate::TenantPolicy {
        cache_ttl_seconds: Some(5),
        monitor_interval_seconds: Some(10),
    };
    let head = store.audit_head().await.unwrap();
    let updated = store
        .set_tenant_policy(&tenant, policy, &tenant_created)
        .await
        .unwrap();
    assert_eq!(updated.policy, policy);
    assert_eq!(store.get_tenant(&tenant).await.unwrap(), Some(updated));
    assert_eq!(store.audit_head().await.unwrap().seq, head.seq + 1);

    let head = store.audit_head().await.unwrap();
    let zero = crate::TenantPolicy {
        cache_ttl_seconds: Some(0),
        monitor_interval_seconds: None,
    };
    let err = store
        .set_tenant_policy(&tenant, zero, &tenant_created)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let unknown = TenantId::try_from("conf-no-such-tenant").unwrap();
    let err = store
        .set_tenant_policy(&unknown, policy, &tenant_created)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        store.audit_head().await.unwrap(),
        head,
        "rejected changes are not audited"
    );

    let cleared = store
        .set_tenant_policy(&tenant, crate::TenantPolicy::default(), &|_| Vec::new())
        .await
        .unwrap();
    assert_eq!(cleared.policy, crate::TenantPolicy::default());
}

/// active_bindings lists each tenant's current binding once, not deactivated ones.
pub async fn check_active_bindings_lists_current_bindings(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let first = store
        .bind_kek(new_binding(&tenant, "local:kek-1"), &binding_changed)
        .await
        .unwrap();
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap();
    let unbound = new_tenant(store).await;
    let all = store.active_bindings().await.unwrap();
    let mine: Vec<&KekBinding> = all.iter().filter(|b| b.tenant == tenant).collect();
    assert_eq!(mine, vec![&second]);
    assert!(
        all.iter()
            .all(|b| b.id != first.id && b.deactivated_at_ms.is_none())
    );
    assert!(all.iter().all(|b| b.tenant != unbound));
}

/// The bind_kek audit closure sees which binding the new one replaced.
pub async fn check_bind_kek_reports_previous_binding(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let seen = std::sync::Mutex::new(Vec::new());
    let record = |change: &BindingChange| {
        seen.lock()
            .unwrap()
            .push((change.binding.id, change.previous));
        Vec::new()
    };
    let first = store
        .bind_kek(new_binding(&tenant, "local:kek-1"), &record)
        .await
        .unwrap();
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &record)
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(first.id, None), (second.id, Some(first.id))]
    );
}

/// bind_kek reusing an existing tenant key id -> AlreadyExists, and the current binding stays.
pub async fn check_bind_kek_duplicate_tenant_key(store: &dyn Store) {
    let (tenant, first) = bound_tenant(store).await;
    let before = store.counts().await.unwrap();
    let head = store.audit_head().await.unwrap();
    let mut again = new_binding(&tenant, "local:kek-2");
    again.tenant_key_id = first.tenant_key_id;
    let err = store.bind_kek(again, &binding_changed).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate tenant key: {err:?}"
    );
    assert_eq!(store.counts().await.unwrap(), before);
    assert_eq!(store.audit_head().await.unwrap(), head, "no audit record");
    assert_eq!(store.active_binding(&tenant).await.unwrap(), Some(first));
}

/// Empty provider or key_ref -> InvalidInput, nothing inserted.
pub async fn check_bind_kek_rejects_empty_fields(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let before = store.counts().await.unwrap();
    let head = store.audit_head().await.unwrap();
    let mut no_provider = new_binding(&tenant, "local:kek-1");
    no_provider.provider = String::new();
    let err = store
        .bind_kek(no_provider, &binding_changed)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let no_ref = new_binding(&tenant, "");
    let err = store.bind_kek(no_ref, &binding_changed).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(store.counts().await.unwrap(), before);
    assert_eq!(store.audit_head().await.unwrap(), head, "no audit record");
    assert_eq!(store.active_binding(&tenant).await.unwrap(), None);
}

/// get_tenant_key across tenants -> None; unknown id -> None.
pub async fn check_tenant_key_isolation(store: &dyn Store) {
    let (a, binding_a) = bound_tenant(store).await;
    let (b, _) = bound_tenant(store).await;
    assert!(
        store
            .get_tenant_key(&a, &binding_a.tenant_key_id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .get_tenant_key(&b, &binding_a.tenant_key_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get_tenant_key(&a, &key_id()).await.unwrap(), None);
}

/// A tenant key's authentication tag: stored by bind_kek (or NULL), listed while NULL, set once
/// by authenticate_tenant_key with its audit record, never replaced.
pub async fn check_tenant_key_authentication(store: &dyn Store) {
    let (tenant, tagged) = bound_tenant(store).await;
    let mut untagged_new = new_binding(&tenant, "local:kek-old");
    untagged_new.tenant_key_mac = None;
    let untagged = store
        .bind_kek(untagged_new.clone(), &binding_changed)
        .await
        .unwrap();
    let id = untagged.tenant_key_id;
    let before = store.get_tenant_key(&tenant, &id).await.unwrap().unwrap();
    assert_eq!(before.mac, None);
    let listed = store.unauthenticated_tenant_keys().await.unwrap();
    let ours: Vec<_> = listed.iter().filter(|k| k.tenant == tenant).collect();
    assert_eq!(
        ours,
        vec![&before],
        "only the untagged key, with its binding"
    );
    assert!(listed.iter().all(|k| k.mac.is_none()));
    assert!(
        listed
            .windows(2)
            .all(|w| (w[0].tenant.as_str(), w[0].id.to_string())
                < (w[1].tenant.as_str(), w[1].id.to_string())),
        "ordered by tenant and id"
    );

    let audit = |record: &crate::TenantKeyRecord| {
        vec![AuditEvent::AdminAction {
            actor: "conformance".to_owned(),
            action: "authenticate_tenant_key".to_owned(),
            detail: format!("tenant={} tenant_key_id={}", record.tenant, record.id),
        }]
    };
    let other = new_tenant(store).await;
    let head = store.audit_head().await.unwrap();
    for (t, k, mac, want) in [
        (&tenant, id, Vec::new(), "InvalidInput"),
        (&other, id, vec![1; 32], "NotFound"),
        (&tenant, key_id(), vec![1; 32], "NotFound"),
        (&tenant, tagged.tenant_key_id, vec![1; 32], "AlreadyExists"),
    ] {
        let err = store
            .authenticate_tenant_key(t, &k, mac, &audit)
            .await
            .unwrap_err();
        let ok = match want {
            "InvalidInput" => matches!(err, StoreError::InvalidInput(_)),
            "NotFound" => matches!(err, StoreError::NotFound(_)),
            _ => matches!(err, StoreError::AlreadyExists(_)),
        };
        assert!(ok, "want {want}, got {err:?}");
    }
    assert_eq!(store.audit_head().await.unwrap(), head, "nothing appended");

    let mac: Vec<u8> = (0..32).collect();
    let updated = store
        .authenticate_tenant_key(&tenant, &id, mac.clone(), &audit)
        .await
        .unwrap();
    assert_eq!(updated.mac.as_deref(), Some(mac.as_slice()));
    let after = store.get_tenant_key(&tenant, &id).await.unwrap().unwrap();
    assert_eq!(after, updated);
    assert_eq!(
        TenantKeyRecordWithoutMac::from(&after),
        TenantKeyRecordWithoutMac::from(&before),
        "only the tag changed"
    );
    let head_after = store.audit_head().await.unwrap();
    assert_eq!(head_after.seq, head.seq + 1, "one admin_action record");
    let last = store
        .audit_records(&AuditQuery::default().with_after_seq(head.seq))
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].event(), &audit(&after)[0]);
    assert!(
        !store
            .unauthenticated_tenant_keys()
            .await
            .unwrap()
            .iter()
            .any(|k| k.tenant == tenant)
    );

    // Never replaced, not even with the same tag.
    let err = store
        .authenticate_tenant_key(&tenant, &id, mac.clone(), &audit)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(store.audit_head().await.unwrap(), head_after);
    assert_eq!(
        store.get_tenant_key(&tenant, &id).await.unwrap().unwrap(),
        after
    );
}

/// A tenant key record's fields other than its tag.
#[derive(Debug, PartialEq, Eq)]
struct TenantKeyRecordWithoutMac {
    id: KeyId,
    tenant: TenantId,
    binding_id: i64,
    provider: String,
    key_ref: String,
    wrapped: WrappedKey,
    created_at_ms: i64,
}

impl From<&crate::TenantKeyRecord> for TenantKeyRecordWithoutMac {
    fn from(r: &crate::TenantKeyRecord) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant.clone(),
            binding_id: r.binding_id,
            provider: r.provider.clone(),
            key_ref: r.key_ref.clone(),
            wrapped: r.wrapped.clone(),
            created_at_ms: r.created_at_ms,
        }
    }
}

/// set_binding_state round-trips every state and cause, stamps state_changed_at_ms and bumps the
/// version; unknown -> NotFound.
pub async fn check_set_binding_state(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    assert_eq!(binding.state_version, 0, "a new binding is at version 0");
    assert_eq!(
        binding.state_cause, None,
        "a new binding has no state cause"
    );
    let mut current = binding.clone();
    for (state, cause) in [
        (KekState::Revoked, RevocationSource::Monitor),
        (KekState::Revoked, RevocationSource::Explicit),
        (KekState::Unavailable, RevocationSource::Monitor),
        (KekState::Restored, RevocationSource::KmsRefusal),
        (KekState::Destroyed, RevocationSource::Event),
        (KekState::Active, RevocationSource::Explicit),
    ] {
        let before = store.active_binding(&tenant).await.unwrap().unwrap();
        let seen = std::sync::Mutex::new(None);
        let updated = store
            .set_binding_state(
                StateUpdate::of(&current, state, cause),
                &|change: &StateChange| {
                    *seen.lock().unwrap() = Some((change.from, change.from_cause));
                    state_changed(change)
                },
            )
            .await
            .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some((before.state, before.state_cause)),
            "the closure sees the former state and cause"
        );
        assert_eq!(updated.state, state);
        assert_eq!(updated.state_cause, Some(cause));
        assert_eq!(updated.state_version, current.state_version + 1);
        assert_eq!(updated.id, binding.id);
        assert_eq!(updated.tenant_key_id, binding.tenant_key_id);
        assert_eq!(updated.created_at_ms, binding.created_at_ms);
        assert!(updated.state_changed_at_ms >= binding.state_changed_at_ms);
        assert_eq!(
            store.active_binding(&tenant).await.unwrap(),
            Some(updated.clone())
        );
        assert_eq!(
            store.list_bindings(&tenant).await.unwrap(),
            vec![updated.clone()]
        );
        let key = store
            .get_tenant_key(&tenant, &binding.tenant_key_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            key.binding_state, state,
            "a tenant key carries its binding's state"
        );
        assert_eq!(key.binding_state_changed_at_ms, updated.state_changed_at_ms);
        current = updated;
    }
    let head = store.audit_head().await.unwrap();
    let err = store
        .set_binding_state(
            StateUpdate {
                binding_id: i64::MAX,
                expected_version: 0,
                to: KekState::Revoked,
                cause: RevocationSource::Explicit,
            },
            &state_changed,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "unknown binding: {err:?}"
    );
    assert_eq!(store.audit_head().await.unwrap(), head, "no audit record");
}

/// set_binding_state is a compare-and-set on the version read: a writer that decided from an
/// older read of the binding gets `StateChanged` and changes nothing (no state, no record).
pub async fn check_set_binding_state_compares_the_version(store: &dyn Store) {
    let (tenant, read_by_a) = bound_tenant(store).await;
    let read_by_b = store.active_binding(&tenant).await.unwrap().unwrap();
    let revoked = store
        .set_binding_state(
            StateUpdate::of(&read_by_a, KekState::Revoked, RevocationSource::Explicit),
            &state_changed,
        )
        .await
        .unwrap();
    let head = store.audit_head().await.unwrap();
    // B decided from its older read (active) that the KMS is only unreachable.
    let err = store
        .set_binding_state(
            StateUpdate::of(&read_by_b, KekState::Unavailable, RevocationSource::Monitor),
            &state_changed,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::StateChanged(_)),
        "a stale compare-and-set: {err:?}"
    );
    assert_eq!(
        store.active_binding(&tenant).await.unwrap(),
        Some(revoked.clone()),
        "the newer decision stands"
    );
    assert_eq!(store.audit_head().await.unwrap(), head, "no audit record");
    // A stale write of the very same state is refused too (ABA: the version, not the state, is
    // compared).
    let restored = store
        .set_binding_state(
            StateUpdate::of(&revoked, KekState::Restored, RevocationSource::Explicit),
            &state_changed,
        )
        .await
        .unwrap();
    let err = store
        .set_binding_state(
            StateUpdate::of(&revoked, KekState::Restored, RevocationSource::Monitor),
            &state_changed,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateChanged(_)), "{err:?}");
    assert_eq!(store.active_binding(&tenant).await.unwrap(), Some(restored));
}

/// bind_kek keeps the state of the binding it deactivates: a revoked binding stays revoked (and
/// its tenant key says so) after a new key is registered.
pub async fn check_bind_kek_keeps_the_old_bindings_state(store: &dyn Store) {
    let (tenant, old) = bound_tenant(store).await;
    let revoked = store
        .set_binding_state(
            StateUpdate::of(&old, KekState::Revoked, RevocationSource::Explicit),
            &state_changed,
        )
        .await
        .unwrap();
    let new = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap();
    assert_eq!(new.state, KekState::Active);
    let bindings = store.list_bindings(&tenant).await.unwrap();
    assert_eq!(bindings.len(), 2);
    assert_eq!(bindings[0].state, KekState::Revoked);
    assert_eq!(bindings[0].state_cause, Some(RevocationSource::Explicit));
    assert_eq!(
        bindings[0].state_version,
        revoked.state_version + 1,
        "deactivation moves the version: a decision made while it was current cannot commit"
    );
    assert!(bindings[0].deactivated_at_ms.is_some());
    let old_key = store
        .get_tenant_key(&tenant, &old.tenant_key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old_key.binding_state, KekState::Revoked);
    let new_key = store
        .get_tenant_key(&tenant, &new.tenant_key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new_key.binding_state, KekState::Active);
}

/// insert_dek retires the previous active DEK of the same scope, but not of other scopes.
pub async fn check_insert_dek_retires_per_scope(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    let tk = binding.tenant_key_id;
    assert_eq!(
        store
            .active_dek(&tenant, &Scope::default_scope())
            .await
            .unwrap(),
        None
    );

    let first = store
        .insert_dek(new_dek(&tenant, "default", tk), &dek_events)
        .await
        .unwrap();
    assert_eq!(first.retired, None, "nothing to retire yet");
    let first = first.dek;
    assert_eq!(first.retired_at_ms, None);
    assert_eq!((first.messages, first.bytes), (0, 0));
    let other = store
        .insert_dek(new_dek(&tenant, "conversation-42", tk), &dek_events)
        .await
        .unwrap();
    assert_eq!(other.retired, None, "another scope retires nothing");
    let other = other.dek;
    assert_eq!(
        store
            .active_dek(&tenant, &Scope::default_scope())
            .await
            .unwrap(),
        Some(first.clone())
    );

    let second = store
        .insert_dek(new_dek(&tenant, "default", tk), &dek_events)
        .await
        .unwrap();
    assert_eq!(second.retired, Some(first.id), "the scope's previous DEK");
    let second = second.dek;
    assert_eq!(
        store
            .active_dek(&tenant, &Scope::default_scope())
            .await
            .unwrap(),
        Some(second.clone())
    );
    let retired = store.get_dek(&tenant, &first.id).await.unwrap().unwrap();
    let retired_at = retired.retired_at_ms.expect("first DEK retired");
    assert!(retired_at >= first.created_at_ms);
    assert_eq!(
        retired,
        crate::DekRecord {
            retired_at_ms: Some(retired_at),
            ..first
        }
    );
    // The other scope's DEK is untouched.
    assert_eq!(
        store
            .active_dek(&tenant, &scope("conversation-42"))
            .await
            .unwrap(),
        Some(other.clone())
    );
    assert_eq!(
        store.get_dek(&tenant, &other.id).await.unwrap(),
        Some(other)
    );
    assert_eq!(
        store.get_dek(&tenant, &second.id).await.unwrap(),
        Some(second)
    );
}

/// insert_dek under an unknown tenant key, or another tenant's -> NotFound, nothing inserted.
pub async fn check_insert_dek_bad_tenant_key(store: &dyn Store) {
    let (a, binding_a) = bound_tenant(store).await;
    let (b, binding_b) = bound_tenant(store).await;
    let active = store
        .insert_dek(new_dek(&a, "default", binding_a.tenant_key_id), &dek_events)
        .await
        .unwrap()
        .dek;
    let before = store.counts().await.unwrap();
    let head = store.audit_head().await.unwrap();

    for tenant_key_id in [key_id(), binding_b.tenant_key_id] {
        let dek = new_dek(&a, "default", tenant_key_id);
        let dek_id = dek.id;
        let err = store.insert_dek(dek, &dek_events).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(_)),
            "bad tenant key: {err:?}"
        );
        assert_eq!(store.counts().await.unwrap(), before);
        assert_eq!(store.audit_head().await.unwrap(), head, "no audit record");
        assert_eq!(store.get_dek(&a, &dek_id).await.unwrap(), None);
        assert_eq!(store.get_dek(&b, &dek_id).await.unwrap(), None);
        // The failed call did not retire the active DEK either.
        assert_eq!(
            store.active_dek(&a, &Scope::default_scope()).await.unwrap(),
            Some(active.clone())
        );
    }
    assert_eq!(
        store.active_dek(&b, &Scope::default_scope()).await.unwrap(),
        None
    );
}

/// A duplicate DEK id -> AlreadyExists, nothing changed (same tenant or another tenant).
pub async fn check_insert_dek_duplicate_id(store: &dyn Store) {
    let (a, binding_a) = bound_tenant(store).await;
    let (b, binding_b) = bound_tenant(store).await;
    let first = store
        .insert_dek(new_dek(&a, "default", binding_a.tenant_key_id), &dek_events)
        .await
        .unwrap()
        .dek;
    let before = store.counts().await.unwrap();
    let head = store.audit_head().await.unwrap();

    let mut same_tenant = new_dek(&a, "default", binding_a.tenant_key_id);
    same_tenant.id = first.id;
    same_tenant.wrapped = wrapped(0x77);
    let err = store
        .insert_dek(same_tenant, &dek_events)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate DEK id: {err:?}"
    );

    let mut other_tenant = new_dek(&b, "default", binding_b.tenant_key_id);
    other_tenant.id = first.id;
    let err = store
        .insert_dek(other_tenant, &dek_events)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate DEK id, other tenant: {err:?}"
    );

    assert_eq!(store.counts().await.unwrap(), before);
    assert_eq!(store.audit_head().await.unwrap(), head, "no audit record");
    assert_eq!(
        store.active_dek(&a, &Scope::default_scope()).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_dek(&a, &first.id).await.unwrap(), Some(first));
    assert_eq!(
        store.active_dek(&b, &Scope::default_scope()).await.unwrap(),
        None
    );
}

/// get_dek / active_dek / add_dek_usage across tenants see nothing.
pub async fn check_dek_isolation(store: &dyn Store) {
    let (a, binding_a) = bound_tenant(store).await;
    let (b, _) = bound_tenant(store).await;
    let dek = store
        .insert_dek(
            new_dek(&a, "shared-label", binding_a.tenant_key_id),
            &dek_events,
        )
        .await
        .unwrap()
        .dek;
    assert_eq!(store.get_dek(&b, &dek.id).await.unwrap(), None);
    assert_eq!(
        store.active_dek(&b, &scope("shared-label")).await.unwrap(),
        None
    );
    let err = store.add_dek_usage(&b, &dek.id, 1, 1).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "cross-tenant usage: {err:?}"
    );
    assert_eq!(store.get_dek(&a, &dek.id).await.unwrap(), Some(dek));
    assert_eq!(store.get_dek(&a, &key_id()).await.unwrap(), None);
}

/// add_dek_usage accumulates, saturates instead of overflowing, and counts retired DEKs too.
pub async fn check_dek_usage(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    let dek = store
        .insert_dek(
            new_dek(&tenant, "default", binding.tenant_key_id),
            &dek_events,
        )
        .await
        .unwrap()
        .dek;
    store.add_dek_usage(&tenant, &dek.id, 1, 100).await.unwrap();
    store.add_dek_usage(&tenant, &dek.id, 2, 28).await.unwrap();
    store.add_dek_usage(&tenant, &dek.id, 0, 0).await.unwrap();
    let got = store.get_dek(&tenant, &dek.id).await.unwrap().unwrap();
    assert_eq!((got.messages, got.bytes), (3, 128));

    // Retired DEKs still count usage (an in-flight encryption may finish after rotation).
    store
        .insert_dek(
            new_dek(&tenant, "default", binding.tenant_key_id),
            &dek_events,
        )
        .await
        .unwrap();
    store.add_dek_usage(&tenant, &dek.id, 1, 1).await.unwrap();
    store
        .add_dek_usage(&tenant, &dek.id, u64::MAX, u64::MAX)
        .await
        .unwrap();
    store.add_dek_usage(&tenant, &dek.id, 5, 5).await.unwrap();
    let got = store.get_dek(&tenant, &dek.id).await.unwrap().unwrap();
    let max = i64::MAX.unsigned_abs();
    assert_eq!((got.messages, got.bytes), (max, max), "saturates");
    assert!(got.retired_at_ms.is_some());

    let err = store
        .add_dek_usage(&tenant, &key_id(), 1, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "unknown DEK: {err:?}"
    );
}

/// Wrapped tenant keys and DEKs round-trip byte for byte: NULs, 0xff, every byte value,
/// empty, and large.
pub async fn check_wrapped_round_trip(store: &dyn Store) {
    let samples: Vec<Vec<u8>> = vec![
        vec![0],
        vec![255],
        vec![0, 0, 0, 255, 255, 0],
        (0..=255u8).collect(),
        (0..=255u8).rev().collect(),
        Vec::new(),
        (0..64 * 1024).map(|i: u32| (i % 251) as u8).collect(),
    ];
    let tenant = new_tenant(store).await;
    for (i, bytes) in samples.into_iter().enumerate() {
        let mut binding = new_binding(&tenant, &format!("local:kek-{i}"));
        binding.wrapped_tenant_key = WrappedKey::new(bytes.clone());
        let tenant_key_id = binding.tenant_key_id;
        store.bind_kek(binding, &binding_changed).await.unwrap();
        let tk = store
            .get_tenant_key(&tenant, &tenant_key_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tk.wrapped.as_bytes(), bytes.as_slice(), "tenant key {i}");

        let mut dek = new_dek(&tenant, &format!("scope-{i}"), tenant_key_id);
        dek.wrapped = WrappedKey::new(bytes.clone());
        let inserted = store.insert_dek(dek, &dek_events).await.unwrap().dek;
        assert_eq!(inserted.wrapped.as_bytes(), bytes.as_slice());
        let got = store.get_dek(&tenant, &inserted.id).await.unwrap().unwrap();
        assert_eq!(got.wrapped.as_bytes(), bytes.as_slice(), "DEK {i}");
        assert_eq!(got, inserted);
    }
}

/// 8 concurrent insert_dek calls on one (tenant, scope): each succeeds or fails cleanly
/// (`Conflict`), and exactly one DEK is active afterwards — one that succeeded.
pub async fn check_concurrent_insert_dek(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    let tk = binding.tenant_key_id;
    let label = "concurrent";
    let insert = |_: usize| store.insert_dek(new_dek(&tenant, label, tk), &dek_events);
    let results = tokio::join!(
        insert(0),
        insert(1),
        insert(2),
        insert(3),
        insert(4),
        insert(5),
        insert(6),
        insert(7)
    );
    let results = [
        results.0, results.1, results.2, results.3, results.4, results.5, results.6, results.7,
    ];
    let mut succeeded = Vec::new();
    for result in results {
        match result {
            Ok(inserted) => succeeded.push(inserted.dek.id),
            Err(StoreError::Conflict(_)) => {}
            Err(other) => panic!("concurrent insert_dek failed uncleanly: {other:?}"),
        }
    }
    assert!(!succeeded.is_empty(), "at least one insert succeeds");

    let active = store
        .active_dek(&tenant, &scope(label))
        .await
        .unwrap()
        .expect("an active DEK");
    assert!(succeeded.contains(&active.id));
    let mut still_active = 0;
    for id in &succeeded {
        let dek = store.get_dek(&tenant, id).await.unwrap().expect("stored");
        if dek.retired_at_ms.is_none() {
            still_active += 1;
        }
    }
    assert_eq!(still_active, 1, "exactly one active DEK");
}

/// counts() reflects inserts (as a lower bound: the database may hold other data).
pub async fn check_counts_grow(store: &dyn Store) {
    let before = store.counts().await.unwrap();
    let (tenant, binding) = bound_tenant(store).await;
    store
        .insert_dek(
            new_dek(&tenant, "default", binding.tenant_key_id),
            &dek_events,
        )
        .await
        .unwrap();
    let after = store.counts().await.unwrap();
    assert!(after.tenants > before.tenants);
    assert!(after.bindings > before.bindings);
    assert!(after.tenant_keys > before.tenant_keys);
    assert!(after.deks > before.deks);
}

// ----- the audit log ----------------------------------------------------------------------

/// Each lifecycle method appends exactly the events its closure returned, in order, with
/// consecutive seqs linking to the record before them; the closure sees the committed result
/// (the binding id the database assigned, the DEK an insert retired); records are found by
/// their tenant.
pub async fn check_audit_lifecycle_events(store: &dyn Store) {
    let id = unique_tenant_id();
    let before = store.audit_head().await.unwrap();
    let tenant = store
        .create_tenant(&id, "Audited", &tenant_created)
        .await
        .unwrap();
    let binding = store
        .bind_kek(new_binding(&id, "local:kek-1"), &binding_changed)
        .await
        .unwrap();
    let first = store
        .insert_dek(new_dek(&id, "default", binding.tenant_key_id), &dek_events)
        .await
        .unwrap();
    let second = store
        .insert_dek(new_dek(&id, "default", binding.tenant_key_id), &dek_events)
        .await
        .unwrap();
    assert_eq!(second.retired, Some(first.dek.id));
    let revoked = store
        .set_binding_state(
            StateUpdate::of(&binding, KekState::Revoked, RevocationSource::Explicit),
            &state_changed,
        )
        .await
        .unwrap();

    // One group of records per call, in call order, each group exactly what its closure built
    // from the returned result.
    let groups = [
        tenant_created(&tenant),
        binding_changed(&BindingChange {
            binding: binding.clone(),
            previous: None,
        }),
        dek_events(&first),
        dek_events(&second),
        state_changed(&StateChange {
            binding: revoked.clone(),
            from: KekState::Active,
            from_cause: None,
        }),
    ];
    let records = tenant_records(store, &id).await;
    let events: Vec<&AuditEvent> = records.iter().map(Record::event).collect();
    let expected: Vec<&AuditEvent> = groups.iter().flatten().collect();
    assert_eq!(events, expected);
    assert!(
        matches!(records[2].event(), AuditEvent::KekBindingChanged { binding_id, .. } if *binding_id == binding.id)
    );
    assert!(
        matches!(records[4].event(), AuditEvent::DekRetired { dek_id, .. } if *dek_id == first.dek.id)
    );
    assert!(records[0].seq() > before.seq);

    // Within a call the records are consecutive and linked, and the first links to whatever
    // record came before it.
    let mut at = 0;
    for group in &groups {
        let group_records = &records[at..at + group.len()];
        for pair in group_records.windows(2) {
            assert_eq!(
                pair[1].seq(),
                pair[0].seq() + 1,
                "one call's records are consecutive"
            );
        }
        assert_linked(store, group_records).await;
        at += group.len();
    }
    // Times never go backwards along the chain.
    for pair in records.windows(2) {
        assert!(pair[1].time_ms() >= pair[0].time_ms());
    }
    let head = store.audit_head().await.unwrap();
    assert!(head.seq >= records.last().unwrap().seq());

    // The tenant filter finds exactly these records: they carry the tenant of their event.
    for record in &records {
        assert_eq!(record.event().tenant(), Some(&id));
    }
}

/// Lifecycle calls whose closure returns no events append nothing (and still succeed).
pub async fn check_audit_empty_closures_append_nothing(store: &dyn Store) {
    let id = unique_tenant_id();
    let head = store.audit_head().await.unwrap();
    store
        .create_tenant(&id, "Quiet", &no_events::<TenantRecord>)
        .await
        .unwrap();
    let binding = store
        .bind_kek(new_binding(&id, "local:kek-1"), &no_events::<BindingChange>)
        .await
        .unwrap();
    store
        .insert_dek(
            new_dek(&id, "default", binding.tenant_key_id),
            &no_events::<DekInsert>,
        )
        .await
        .unwrap();
    store
        .set_binding_state(
            StateUpdate::of(&binding, KekState::Revoked, RevocationSource::Explicit),
            &no_events::<StateChange>,
        )
        .await
        .unwrap();
    assert!(tenant_records(store, &id).await.is_empty());
    assert_eq!(store.audit_head().await.unwrap(), head, "nothing appended");
}

/// append_audit with no events is a no-op.
pub async fn check_append_audit_empty_is_a_no_op(store: &dyn Store) {
    let head = store.audit_head().await.unwrap();
    assert_eq!(store.append_audit(Vec::new()).await.unwrap(), Vec::new());
    assert_eq!(store.audit_head().await.unwrap(), head);
}

/// audit_head is the last appended record's head; append_audit returns what is stored.
pub async fn check_audit_head(store: &dyn Store) {
    let tenant = unique_tenant_id();
    let before = store.audit_head().await.unwrap();
    let appended = store
        .append_audit(vec![usage(&tenant, 1), usage(&tenant, 2)])
        .await
        .unwrap();
    assert_eq!(appended.len(), 2);
    assert!(appended[0].follows(&before), "appends at the head");
    assert!(appended[1].follows(&appended[0].head()));
    assert_eq!(store.audit_head().await.unwrap(), appended[1].head());
    assert_eq!(tenant_records(store, &tenant).await, appended);
}

/// audit_records pages with after_seq + limit and filters by tenant, type and time range.
pub async fn check_audit_query(store: &dyn Store) {
    let tenant = unique_tenant_id();
    let other = unique_tenant_id();
    let mut events = Vec::new();
    for n in 0..3u32 {
        events.push(usage(&tenant, u64::from(n)));
        events.push(AuditEvent::RevocationDenials {
            tenant: tenant.clone(),
            second: 1_700_000_000 + i64::from(n),
            count: u64::from(n) + 1,
        });
    }
    events.push(usage(&other, 9));
    events.push(AuditEvent::AdminAction {
        actor: format!("admin-{tenant}"),
        action: "conformance".to_owned(),
        detail: "no tenant".to_owned(),
    });
    let appended = store.append_audit(events).await.unwrap();
    assert_eq!(appended.len(), 8);
    let first_seq = appended[0].seq();

    // Tenant filter.
    let all = tenant_records(store, &tenant).await;
    assert_eq!(all, appended[..6].to_vec());
    assert_eq!(
        tenant_records(store, &other).await,
        vec![appended[6].clone()]
    );

    // Paging: pages of 4 from the start of our records cover them exactly, in order.
    let page = |after_seq: u64| {
        let query = AuditQuery::default()
            .with_tenant(tenant.clone())
            .with_after_seq(after_seq)
            .with_limit(4);
        async move { store.audit_records(&query).await }
    };
    let p1 = page(first_seq - 1).await.unwrap();
    assert_eq!(p1, all[..4].to_vec());
    let p2 = page(p1[3].seq()).await.unwrap();
    assert_eq!(p2, all[4..].to_vec());
    assert!(page(p2[1].seq()).await.unwrap().is_empty());
    // Without a tenant filter, seq > after_seq in order, limit respected.
    let unfiltered = store
        .audit_records(
            &AuditQuery::default()
                .with_after_seq(first_seq - 1)
                .with_limit(8),
        )
        .await
        .unwrap();
    assert_eq!(unfiltered.len(), 8);
    assert_eq!(unfiltered[0].seq(), first_seq);
    for pair in unfiltered.windows(2) {
        assert!(pair[0].seq() < pair[1].seq());
    }

    // Type filter, with and without the tenant.
    let denials = store
        .audit_records(
            &AuditQuery::default()
                .with_tenant(tenant.clone())
                .with_event_type("revocation_denials"),
        )
        .await
        .unwrap();
    let expected: Vec<Record> = all
        .iter()
        .filter(|r| r.event().event_type() == "revocation_denials")
        .cloned()
        .collect();
    assert_eq!(denials.len(), 3);
    assert_eq!(denials, expected);
    let admin = store
        .audit_records(
            &AuditQuery::default()
                .with_event_type("admin_action")
                .with_after_seq(first_seq - 1),
        )
        .await
        .unwrap();
    assert!(admin.contains(&appended[7]));
    assert!(
        admin
            .iter()
            .all(|r| r.event().event_type() == "admin_action")
    );
    let err = store
        .audit_records(&AuditQuery::default().with_event_type("dek_create"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");

    // Time range: from inclusive, to exclusive.
    let t0 = all[0].time_ms();
    let last = all.last().unwrap().time_ms();
    let in_range = |from: Option<i64>, to: Option<i64>| {
        let query = AuditQuery::default()
            .with_tenant(tenant.clone())
            .with_time_range(from, to);
        async move { store.audit_records(&query).await }
    };
    let at_t0: Vec<Record> = all.iter().filter(|r| r.time_ms() == t0).cloned().collect();
    assert!(!at_t0.is_empty());
    assert_eq!(in_range(Some(t0), Some(t0 + 1)).await.unwrap(), at_t0);
    assert_eq!(in_range(Some(t0), None).await.unwrap(), all);
    assert_eq!(in_range(None, Some(last + 1)).await.unwrap(), all);
    assert!(in_range(None, Some(t0)).await.unwrap().is_empty());
    assert!(in_range(Some(last + 1), None).await.unwrap().is_empty());
}

/// A page holds at most 1000 records whatever the limit asks (0 meaning the maximum).
pub async fn check_audit_page_cap(store: &dyn Store) {
    let tenant = unique_tenant_id();
    let events = (0..1001).map(|n| usage(&tenant, n)).collect();
    let appended = store.append_audit(events).await.unwrap();
    assert_eq!(appended.len(), 1001);
    let query = AuditQuery::default().with_tenant(tenant.clone());
    for limit in [0, 1000, 1001, u32::MAX] {
        let page = store
            .audit_records(&query.clone().with_limit(limit))
            .await
            .unwrap();
        assert_eq!(page.len(), 1000, "limit {limit}");
        assert_eq!(page, appended[..1000].to_vec());
    }
    let rest = store
        .audit_records(&query.clone().with_after_seq(appended[999].seq()))
        .await
        .unwrap();
    assert_eq!(rest, vec![appended[1000].clone()]);
    let three = store.audit_records(&query.with_limit(3)).await.unwrap();
    assert_eq!(three, appended[..3].to_vec());
}

/// Checkpoints: stored and read back in order; a wrong head hash or a seq beyond the head is
/// InvalidInput, a second checkpoint at one seq AlreadyExists.
pub async fn check_checkpoints(store: &dyn Store) {
    let tenant = unique_tenant_id();
    let key = SigningKey::generate().unwrap();
    let records = store
        .append_audit(vec![usage(&tenant, 1), usage(&tenant, 2)])
        .await
        .unwrap();
    let (r1, r2) = (&records[0], &records[1]);

    let cp1 = key.sign_checkpoint(&r1.head(), r1.time_ms()).unwrap();
    store.insert_checkpoint(&cp1).await.unwrap();
    let again = key.sign_checkpoint(&r1.head(), r1.time_ms() + 1).unwrap();
    let err = store.insert_checkpoint(&again).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");

    let wrong_hash = ChainHead {
        seq: r2.seq(),
        hash: [0x42; 32],
    };
    let err = store
        .insert_checkpoint(&key.sign_checkpoint(&wrong_hash, r2.time_ms()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    // r1's hash at r2's seq is wrong too.
    let shifted = ChainHead {
        seq: r2.seq(),
        hash: *r1.hash(),
    };
    let err = store
        .insert_checkpoint(&key.sign_checkpoint(&shifted, r2.time_ms()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let head = store.audit_head().await.unwrap();
    let beyond = ChainHead {
        seq: head.seq + 1_000_000,
        hash: head.hash,
    };
    let err = store
        .insert_checkpoint(&key.sign_checkpoint(&beyond, r2.time_ms()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert!(
        store
            .checkpoints(r2.seq(), r2.seq())
            .await
            .unwrap()
            .is_empty(),
        "rejected checkpoints are not stored"
    );

    let cp2 = key.sign_checkpoint(&r2.head(), r2.time_ms()).unwrap();
    store.insert_checkpoint(&cp2).await.unwrap();
    let both = store.checkpoints(r1.seq(), r2.seq()).await.unwrap();
    assert_eq!(both, vec![cp1.clone(), cp2.clone()]);
    for checkpoint in &both {
        assert!(key.public_key().verify_checkpoint(checkpoint));
    }
    assert_eq!(
        store.checkpoints(r2.seq(), r2.seq()).await.unwrap(),
        vec![cp2.clone()]
    );
    assert_eq!(
        store.checkpoints(r1.seq(), r1.seq()).await.unwrap(),
        vec![cp1]
    );
    assert!(
        store
            .checkpoints(r2.seq(), r1.seq())
            .await
            .unwrap()
            .is_empty()
    );
    let to_end = store.checkpoints(r2.seq(), u64::MAX).await.unwrap();
    assert_eq!(to_end.first(), Some(&cp2));
}

/// 8 tasks appending 10 events each (one call per event) leave a gap-free chain whose every
/// record verifies and links to its predecessor.
pub async fn check_concurrent_audit_appends(store: &dyn Store) {
    let tenant = unique_tenant_id();
    let task = |t: u64| {
        let tenant = &tenant;
        async move {
            for i in 0..10 {
                store
                    .append_audit(vec![usage(tenant, t * 10 + i)])
                    .await
                    .unwrap();
            }
        }
    };
    tokio::join!(
        task(0),
        task(1),
        task(2),
        task(3),
        task(4),
        task(5),
        task(6),
        task(7)
    );

    let records = tenant_records(store, &tenant).await;
    assert_eq!(records.len(), 80);
    let mut seen: Vec<u64> = records
        .iter()
        .map(|r| match r.event() {
            AuditEvent::UsageSummary { encrypts, .. } => *encrypts,
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..80).collect::<Vec<u64>>(),
        "every event exactly once"
    );

    // The whole stretch of the chain from our first record to our last (other writers'
    // records included) is gap-free and linked.
    let first = records[0].seq();
    let last = records[79].seq();
    let mut stretch: Vec<Record> = Vec::new();
    while stretch.last().map_or(0, Record::seq) < last {
        let after_seq = stretch.last().map_or(first - 1, Record::seq);
        let page = store
            .audit_records(&AuditQuery::default().with_after_seq(after_seq))
            .await
            .unwrap();
        assert!(!page.is_empty());
        stretch.extend(page);
    }
    stretch.retain(|r| r.seq() <= last);
    assert_eq!(stretch.len(), usize::try_from(last - first + 1).unwrap());
    assert_linked(store, &stretch).await;
}

/// The whole chain, from the genesis head, verifies record by record and ends at audit_head.
pub async fn check_audit_chain_links(store: &dyn Store) {
    let mut head = ChainHead::GENESIS;
    loop {
        let page = store
            .audit_records(&AuditQuery::default().with_after_seq(head.seq))
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        for record in page {
            assert!(record.verify_hash(), "record {} verifies", record.seq());
            assert!(
                record.follows(&head),
                "record {} follows seq {}",
                record.seq(),
                head.seq
            );
            head = record.head();
        }
    }
    assert_eq!(store.audit_head().await.unwrap(), head);
}
