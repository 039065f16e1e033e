//! Conformance checks: DEKs (minting, retirement, isolation, usage) and row counts.

use super::*;

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
        assert_nothing_written(store, &before, &head).await;
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

    assert_nothing_written(store, &before, &head).await;
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
