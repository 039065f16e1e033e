//! Conformance checks: tenants and their policy.

use super::*;

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

/// set_tenant_policy round-trips, is audited, rejects zero and unknown tenants.
pub async fn check_tenant_policy(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let created = store.get_tenant(&tenant).await.unwrap().unwrap();
    assert_eq!(created.policy, crate::TenantPolicy::default());
    let policy = crate::TenantPolicy {
        cache_ttl_seconds: Some(5),
        monitor_interval_seconds: Some(10),
        auto_rekey: true,
        // model_inference (1) and legal_hold (4).
        decrypt_purposes: (1 << 1) | (1 << 4),
    };
    let head = store.audit_head().await.unwrap();
    let updated = store
        .set_tenant_policy(&tenant, policy, &tenant_created)
        .await
        .unwrap()
        .tenant;
    assert_eq!(updated.policy, policy);
    assert_eq!(store.get_tenant(&tenant).await.unwrap(), Some(updated));
    assert_eq!(store.audit_head().await.unwrap().seq, head.seq + 1);

    let head = store.audit_head().await.unwrap();
    let zero = crate::TenantPolicy {
        cache_ttl_seconds: Some(0),
        monitor_interval_seconds: None,
        auto_rekey: false,
        decrypt_purposes: 0,
    };
    let err = store
        .set_tenant_policy(&tenant, zero, &tenant_created)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    // A purpose bit outside 1..=30 is refused before the transaction.
    for bits in [1u32, 1 << 31] {
        let bad = crate::TenantPolicy {
            decrypt_purposes: bits,
            ..policy
        };
        let err = store
            .set_tenant_policy(&tenant, bad, &tenant_created)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
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
        .unwrap()
        .tenant;
    assert_eq!(cleared.policy, crate::TenantPolicy::default());
}
