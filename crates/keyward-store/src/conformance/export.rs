//! Conformance checks: the exit kit's reads (a tenant's tenant keys, its DEKs and tombstones in
//! pages).

use super::*;
use crate::{DekRecord, DekTombstone, MAX_EXPORT_PAGE, ScopeShred};

/// Every page of `tenant`'s DEKs, `limit` at a time, concatenated; checks that each page but
/// the last is full and that the one after the last is empty.
async fn all_deks(store: &dyn Store, tenant: &TenantId, limit: u32) -> Vec<DekRecord> {
    let mut out: Vec<DekRecord> = Vec::new();
    loop {
        let page = store
            .list_deks(tenant, out.last().map(|d| &d.id), limit)
            .await
            .unwrap();
        assert!(page.len() <= limit as usize, "a page holds at most `limit`");
        let done = page.len() < limit as usize;
        out.extend(page);
        if done {
            let after = store
                .list_deks(tenant, out.last().map(|d| &d.id), limit)
                .await
                .unwrap();
            assert!(after.is_empty(), "nothing after the last page");
            return out;
        }
    }
}

/// Every page of `tenant`'s tombstones, `limit` at a time, concatenated.
async fn all_tombstones(store: &dyn Store, tenant: &TenantId, limit: u32) -> Vec<DekTombstone> {
    let mut out: Vec<DekTombstone> = Vec::new();
    loop {
        let after = out.last().map_or(0, |t| t.seq);
        let page = store.list_tombstones(tenant, after, limit).await.unwrap();
        assert!(page.len() <= limit as usize, "a page holds at most `limit`");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// `list_tenant_keys` returns every tenant key of the tenant, oldest first, each with the binding
/// that wraps it and its wrapped bytes, and none of another tenant; an unknown tenant has none.
pub async fn check_list_tenant_keys(store: &dyn Store) {
    let (tenant, first) = bound_tenant(store).await;
    let mut second = new_binding(&tenant, "local:kek-2");
    second.wrapped_tenant_key = wrapped(0x33);
    let second = store
        .bind_kek(second, &binding_changed)
        .await
        .unwrap()
        .binding;
    let (other, _) = bound_tenant(store).await;

    let keys = store.list_tenant_keys(&tenant).await.unwrap();
    let ids: Vec<KeyId> = keys.iter().map(|k| k.id).collect();
    assert_eq!(ids, [first.tenant_key_id, second.tenant_key_id]);
    for (key, binding) in keys.iter().zip([&first, &second]) {
        assert_eq!(
            Some(key),
            store
                .get_tenant_key(&tenant, &key.id)
                .await
                .unwrap()
                .as_ref(),
            "the same record as get_tenant_key"
        );
        assert_eq!(key.tenant, tenant);
        assert_eq!(key.binding_id, binding.id);
        assert_eq!(key.provider, binding.provider);
        assert_eq!(key.key_ref, binding.key_ref);
    }
    assert_eq!(keys[0].wrapped, wrapped(0x5a));
    assert_eq!(keys[1].wrapped, wrapped(0x33));
    assert!(
        !store
            .list_tenant_keys(&other)
            .await
            .unwrap()
            .iter()
            .any(|k| ids.contains(&k.id)),
        "another tenant's keys are its own"
    );
    assert!(
        store
            .list_tenant_keys(&unique_tenant_id())
            .await
            .unwrap()
            .is_empty()
    );
}

/// `list_deks` pages through every DEK of the tenant (active and retired, under every tenant
/// key) in id order, whatever the page size, and never one of another tenant; shredded DEKs
/// leave it and `list_tombstones` pages through their tombstones in seq order. A page limit of 0
/// or above the maximum is `InvalidInput`.
pub async fn check_list_deks_and_tombstones(store: &dyn Store) {
    let (tenant, first) = bound_tenant(store).await;
    let mut deks = Vec::new();
    // Two DEKs per scope (the first retired by the second), under the first tenant key ...
    for i in 0..6 {
        for _ in 0..2 {
            let dek = new_dek(&tenant, &format!("conv-{i}"), first.tenant_key_id);
            deks.push(store.insert_dek(dek, &dek_events).await.unwrap().dek);
        }
    }
    // ... and more under a second one.
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap()
        .binding;
    for i in 0..5 {
        let dek = new_dek(&tenant, &format!("late-{i}"), second.tenant_key_id);
        deks.push(store.insert_dek(dek, &dek_events).await.unwrap().dek);
    }
    let (other, other_binding) = bound_tenant(store).await;
    let foreign = store
        .insert_dek(
            new_dek(&other, "conv-0", other_binding.tenant_key_id),
            &dek_events,
        )
        .await
        .unwrap()
        .dek;

    // The rows as get_dek reads them (the inserts' retirements changed the first of each pair).
    let mut expected = Vec::new();
    for dek in &deks {
        expected.push(store.get_dek(&tenant, &dek.id).await.unwrap().unwrap());
    }
    expected.sort_by_key(|d| d.id.to_string());
    assert_eq!(
        expected
            .iter()
            .filter(|d| d.retired_at_ms.is_some())
            .count(),
        6
    );
    for limit in [1, 5, 17, 100, MAX_EXPORT_PAGE] {
        assert_eq!(
            all_deks(store, &tenant, limit).await,
            expected,
            "limit {limit}"
        );
    }
    assert_eq!(all_deks(store, &other, 10).await, [foreign]);
    // Past the last id, nothing; from the middle, the rest.
    let last = expected.last().unwrap().id;
    assert!(
        store
            .list_deks(&tenant, Some(&last), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let rest = store
        .list_deks(&tenant, Some(&expected[7].id), 100)
        .await
        .unwrap();
    assert_eq!(rest, expected[8..]);
    assert!(
        store
            .list_deks(&unique_tenant_id(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_tombstones(&tenant, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Shred two scopes: their DEKs leave the list, their tombstones come in seq order.
    let mut tombstones = Vec::new();
    for label in ["conv-1", "late-3"] {
        let result = store
            .shred_scope(
                ScopeShred {
                    tenant: tenant.clone(),
                    scope: scope(label),
                    scope_hmac: format!("hmac:{label}"),
                    shredded_by: "conformance".to_owned(),
                    reason: "export check".to_owned(),
                    only_if: None,
                },
                &shred_events,
            )
            .await
            .unwrap();
        tombstones.extend(result.tombstones);
    }
    assert_eq!(tombstones.len(), 3);
    let shredded: Vec<KeyId> = tombstones.iter().map(|t| t.id).collect();
    expected.retain(|d| !shredded.contains(&d.id));
    assert_eq!(all_deks(store, &tenant, 4).await, expected);
    for limit in [1, 2, 10] {
        assert_eq!(
            all_tombstones(store, &tenant, limit).await,
            tombstones,
            "limit {limit}"
        );
    }
    let after_first = store
        .list_tombstones(&tenant, tombstones[0].seq, 10)
        .await
        .unwrap();
    assert_eq!(after_first, tombstones[1..]);
    assert!(all_tombstones(store, &other, 10).await.is_empty());

    for bad in [0, MAX_EXPORT_PAGE + 1] {
        let e = store.list_deks(&tenant, None, bad).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidInput(_)), "{e}");
        let e = store.list_tombstones(&tenant, 0, bad).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidInput(_)), "{e}");
    }
}
