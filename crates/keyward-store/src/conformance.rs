//! The store conformance suite: one set of checks that every [`Store`] backend must pass.
//!
//! A backend's test calls [`run_all`] (or the individual `check_*` functions) on a store it
//! opened. The checks are safe on a database shared with earlier runs and with other data: each
//! creates its own tenants with random ids (`conf-<32 hex>`) and asserts only about those,
//! except that the "nothing was inserted" checks compare global [`Store::counts`] before and
//! after, which assumes no *concurrent* writer on the same database during the check.
//!
//! Behaviour that only one backend can show (reopening a file, PRAGMAs, read-only handles) is
//! tested in that backend's own test file, not here.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "test support code: a failed check must abort the test with a message"
)]

use crate::{
    KekBinding, KekState, KeyId, NewDek, NewKekBinding, Scope, Store, StoreError, TenantId,
    WrappedKey,
};

/// Runs every check, in order.
pub async fn run_all(store: &dyn Store) {
    check_tenants(store).await;
    check_bind_kek_unknown_tenant(store).await;
    check_bind_kek_rotation(store).await;
    check_bind_kek_duplicate_tenant_key(store).await;
    check_bind_kek_rejects_empty_fields(store).await;
    check_tenant_key_isolation(store).await;
    check_set_binding_state(store).await;
    check_insert_dek_retires_per_scope(store).await;
    check_insert_dek_bad_tenant_key(store).await;
    check_insert_dek_duplicate_id(store).await;
    check_dek_isolation(store).await;
    check_dek_usage(store).await;
    check_wrapped_round_trip(store).await;
    check_concurrent_insert_dek(store).await;
    check_counts_grow(store).await;
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
        .create_tenant(&id, "Conformance tenant")
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
    }
}

/// A tenant with one binding; returns the tenant and the binding.
async fn bound_tenant(store: &dyn Store) -> (TenantId, KekBinding) {
    let tenant = new_tenant(store).await;
    let binding = store
        .bind_kek(new_binding(&tenant, "local:kek-1"))
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
    let created = store.create_tenant(&id, "Acme Corp ✓").await.unwrap();
    assert_eq!(created.id, id);
    assert_eq!(created.display_name, "Acme Corp ✓");
    assert!(created.created_at_ms > 0);
    assert_eq!(store.get_tenant(&id).await.unwrap(), Some(created.clone()));

    let err = store.create_tenant(&id, "someone else").await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate tenant: {err:?}"
    );
    // The failed duplicate did not overwrite anything.
    assert_eq!(store.get_tenant(&id).await.unwrap(), Some(created));
    assert_eq!(store.get_tenant(&unique_tenant_id()).await.unwrap(), None);
}

/// bind_kek on an unknown tenant -> NotFound, nothing inserted.
pub async fn check_bind_kek_unknown_tenant(store: &dyn Store) {
    let tenant = unique_tenant_id();
    let before = store.counts().await.unwrap();
    let binding = new_binding(&tenant, "local:kek-1");
    let tenant_key_id = binding.tenant_key_id;
    let err = store.bind_kek(binding).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "unknown tenant: {err:?}"
    );
    assert_eq!(store.counts().await.unwrap(), before);
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
    let first = store.bind_kek(first_new.clone()).await.unwrap();
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
    let second = store.bind_kek(second_new.clone()).await.unwrap();
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
    assert_eq!(new_key.created_at_ms, second.created_at_ms);
}

/// bind_kek reusing an existing tenant key id -> AlreadyExists, and the current binding stays.
pub async fn check_bind_kek_duplicate_tenant_key(store: &dyn Store) {
    let (tenant, first) = bound_tenant(store).await;
    let before = store.counts().await.unwrap();
    let mut again = new_binding(&tenant, "local:kek-2");
    again.tenant_key_id = first.tenant_key_id;
    let err = store.bind_kek(again).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate tenant key: {err:?}"
    );
    assert_eq!(store.counts().await.unwrap(), before);
    assert_eq!(store.active_binding(&tenant).await.unwrap(), Some(first));
}

/// Empty provider or key_ref -> InvalidInput, nothing inserted.
pub async fn check_bind_kek_rejects_empty_fields(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let before = store.counts().await.unwrap();
    let mut no_provider = new_binding(&tenant, "local:kek-1");
    no_provider.provider = String::new();
    let err = store.bind_kek(no_provider).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let no_ref = new_binding(&tenant, "");
    let err = store.bind_kek(no_ref).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(store.counts().await.unwrap(), before);
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

/// set_binding_state round-trips every state and stamps state_changed_at_ms; unknown -> NotFound.
pub async fn check_set_binding_state(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    for state in [
        KekState::Revoked,
        KekState::Unavailable,
        KekState::Restored,
        KekState::Destroyed,
        KekState::Active,
    ] {
        let updated = store.set_binding_state(binding.id, state).await.unwrap();
        assert_eq!(updated.state, state);
        assert_eq!(updated.id, binding.id);
        assert_eq!(updated.tenant_key_id, binding.tenant_key_id);
        assert_eq!(updated.created_at_ms, binding.created_at_ms);
        assert!(updated.state_changed_at_ms >= binding.state_changed_at_ms);
        assert_eq!(
            store.active_binding(&tenant).await.unwrap(),
            Some(updated.clone())
        );
        assert_eq!(store.list_bindings(&tenant).await.unwrap(), vec![updated]);
    }
    let err = store
        .set_binding_state(i64::MAX, KekState::Revoked)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "unknown binding: {err:?}"
    );
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
        .insert_dek(new_dek(&tenant, "default", tk))
        .await
        .unwrap();
    assert_eq!(first.retired_at_ms, None);
    assert_eq!((first.messages, first.bytes), (0, 0));
    let other = store
        .insert_dek(new_dek(&tenant, "conversation-42", tk))
        .await
        .unwrap();
    assert_eq!(
        store
            .active_dek(&tenant, &Scope::default_scope())
            .await
            .unwrap(),
        Some(first.clone())
    );

    let second = store
        .insert_dek(new_dek(&tenant, "default", tk))
        .await
        .unwrap();
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
        .insert_dek(new_dek(&a, "default", binding_a.tenant_key_id))
        .await
        .unwrap();
    let before = store.counts().await.unwrap();

    for tenant_key_id in [key_id(), binding_b.tenant_key_id] {
        let dek = new_dek(&a, "default", tenant_key_id);
        let dek_id = dek.id;
        let err = store.insert_dek(dek).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(_)),
            "bad tenant key: {err:?}"
        );
        assert_eq!(store.counts().await.unwrap(), before);
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
        .insert_dek(new_dek(&a, "default", binding_a.tenant_key_id))
        .await
        .unwrap();
    let before = store.counts().await.unwrap();

    let mut same_tenant = new_dek(&a, "default", binding_a.tenant_key_id);
    same_tenant.id = first.id;
    same_tenant.wrapped = wrapped(0x77);
    let err = store.insert_dek(same_tenant).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate DEK id: {err:?}"
    );

    let mut other_tenant = new_dek(&b, "default", binding_b.tenant_key_id);
    other_tenant.id = first.id;
    let err = store.insert_dek(other_tenant).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "duplicate DEK id, other tenant: {err:?}"
    );

    assert_eq!(store.counts().await.unwrap(), before);
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
        .insert_dek(new_dek(&a, "shared-label", binding_a.tenant_key_id))
        .await
        .unwrap();
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
        .insert_dek(new_dek(&tenant, "default", binding.tenant_key_id))
        .await
        .unwrap();
    store.add_dek_usage(&tenant, &dek.id, 1, 100).await.unwrap();
    store.add_dek_usage(&tenant, &dek.id, 2, 28).await.unwrap();
    store.add_dek_usage(&tenant, &dek.id, 0, 0).await.unwrap();
    let got = store.get_dek(&tenant, &dek.id).await.unwrap().unwrap();
    assert_eq!((got.messages, got.bytes), (3, 128));

    // Retired DEKs still count usage (an in-flight encryption may finish after rotation).
    store
        .insert_dek(new_dek(&tenant, "default", binding.tenant_key_id))
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
        store.bind_kek(binding).await.unwrap();
        let tk = store
            .get_tenant_key(&tenant, &tenant_key_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tk.wrapped.as_bytes(), bytes.as_slice(), "tenant key {i}");

        let mut dek = new_dek(&tenant, &format!("scope-{i}"), tenant_key_id);
        dek.wrapped = WrappedKey::new(bytes.clone());
        let inserted = store.insert_dek(dek).await.unwrap();
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
    let insert = |_: usize| store.insert_dek(new_dek(&tenant, label, tk));
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
            Ok(dek) => succeeded.push(dek.id),
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
        .insert_dek(new_dek(&tenant, "default", binding.tenant_key_id))
        .await
        .unwrap();
    let after = store.counts().await.unwrap();
    assert!(after.tenants > before.tenants);
    assert!(after.bindings > before.bindings);
    assert!(after.tenant_keys > before.tenant_keys);
    assert!(after.deks > before.deks);
}
