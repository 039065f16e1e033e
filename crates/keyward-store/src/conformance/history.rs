//! Conformance checks: the tenant's key history ([`Store::binding_usage`]): every binding with
//! the DEKs, scopes and shredded DEKs under its tenant key, and who bound it. The shredded
//! count is checked with tombstones written behind the store's back
//! ([`binding_usage_counts_shredded_deks`], a [`Backdoor`] test).

use super::*;
use crate::{AuditFn, BindingUsage};

/// `bind_kek`'s audit closure with a `kek_binding_changed` record that names `actor`.
fn bound_by(actor: Option<&str>) -> impl Fn(&BindingChange) -> Vec<AuditEvent> + Send + Sync {
    let actor = actor.map(str::to_owned);
    move |change: &BindingChange| {
        let mut events = binding_changed(change);
        for event in &mut events {
            if let AuditEvent::KekBindingChanged { actor: a, .. } = event {
                a.clone_from(&actor);
            }
        }
        events
    }
}

/// `n` DEKs in `scope_label` under `tenant_key_id` (each retiring the one before).
async fn insert_deks(store: &dyn Store, tenant: &TenantId, scope_label: &str, key: KeyId, n: u8) {
    for _ in 0..n {
        store
            .insert_dek(new_dek(tenant, scope_label, key), &dek_events)
            .await
            .unwrap();
    }
}

/// (deks, scopes, deks_shredded) of each line.
fn counts(usage: &[BindingUsage]) -> Vec<(u64, u64, u64)> {
    usage
        .iter()
        .map(|u| (u.deks, u.scopes, u.deks_shredded))
        .collect()
}

/// Every binding, oldest first, exactly as `list_bindings` has it, with the DEKs (active and
/// retired) and distinct scopes under its own tenant key only: a rotation starts the new
/// binding at zero and leaves the old one's counts, another tenant's DEKs count for nothing.
/// A tenant without bindings, and an unknown tenant, have an empty history.
pub async fn check_binding_usage(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    assert_eq!(store.binding_usage(&tenant).await.unwrap(), Vec::new());
    let unknown = unique_tenant_id();
    assert_eq!(store.binding_usage(&unknown).await.unwrap(), Vec::new());

    let first = store
        .bind_kek(new_binding(&tenant, "local:kek-1"), &binding_changed)
        .await
        .unwrap()
        .binding;
    let usage = store.binding_usage(&tenant).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].binding, first);
    assert_eq!(counts(&usage), [(0, 0, 0)], "no DEK yet");

    // Under the first binding: 3 DEKs in 2 scopes (two in "a": one retired, still counted).
    insert_deks(store, &tenant, "a", first.tenant_key_id, 2).await;
    insert_deks(store, &tenant, "b", first.tenant_key_id, 1).await;
    // Another tenant, also with DEKs: nothing of it is counted here.
    let (other, other_binding) = bound_tenant(store).await;
    insert_deks(store, &other, "a", other_binding.tenant_key_id, 2).await;

    // Rotation: the new binding starts at zero; the old one keeps its DEKs.
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap()
        .binding;
    assert_eq!(
        counts(&store.binding_usage(&tenant).await.unwrap()),
        [(3, 2, 0), (0, 0, 0)]
    );
    // Scope "a" again (its DEK under the old key is retired by this one, not moved) and "c".
    insert_deks(store, &tenant, "a", second.tenant_key_id, 1).await;
    insert_deks(store, &tenant, "c", second.tenant_key_id, 1).await;
    let third = store
        .bind_kek(new_binding(&tenant, "local:kek-3"), &binding_changed)
        .await
        .unwrap()
        .binding;

    let usage = store.binding_usage(&tenant).await.unwrap();
    let listed = store.list_bindings(&tenant).await.unwrap();
    assert_eq!(
        usage.iter().map(|u| u.binding.clone()).collect::<Vec<_>>(),
        listed,
        "every binding, oldest first, as list_bindings has it"
    );
    assert_eq!(
        usage.iter().map(|u| u.binding.id).collect::<Vec<_>>(),
        [first.id, second.id, third.id]
    );
    assert!(usage[0].binding.deactivated_at_ms.is_some());
    assert!(usage[1].binding.deactivated_at_ms.is_some());
    assert_eq!(usage[2].binding.deactivated_at_ms, None, "the current one");
    assert_eq!(counts(&usage), [(3, 2, 0), (2, 2, 0), (0, 0, 0)]);
    assert_eq!(
        counts(&store.binding_usage(&other).await.unwrap()),
        [(2, 1, 0)]
    );

    // A revoked binding keeps its counts and shows its state.
    let update = StateUpdate::of(
        &usage[0].binding,
        KekState::Revoked,
        RevocationSource::Explicit,
    );
    store
        .set_binding_state(update, &state_changed)
        .await
        .unwrap();
    let usage = store.binding_usage(&tenant).await.unwrap();
    assert_eq!(usage[0].binding.state, KekState::Revoked);
    assert_eq!(counts(&usage), [(3, 2, 0), (2, 2, 0), (0, 0, 0)]);
}

/// `bound_by` is the actor of the binding's own `kek_binding_changed` record: the caller when
/// the record names one, `None` for a record without one (written before records carried it)
/// and for a binding without a record; another tenant's records never count.
pub async fn check_binding_usage_names_who_bound_each_binding(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let other = new_tenant(store).await;
    let named = bound_by(Some("Service::\"onboarding\" requested_by=\"ana\""));
    let older = bound_by(None);
    let mallory = bound_by(Some("User::\"mallory\""));
    let bindings: [(&TenantId, AuditFn<'_, BindingChange>); 5] = [
        (&tenant, &named),
        (&other, &mallory),
        (&tenant, &older),
        (&tenant, &no_events),
        (&tenant, &binding_changed),
    ];
    for (i, (tenant, audit)) in bindings.into_iter().enumerate() {
        let key_ref = format!("local:kek-{i}");
        store
            .bind_kek(new_binding(tenant, &key_ref), audit)
            .await
            .unwrap();
    }

    let usage = store.binding_usage(&tenant).await.unwrap();
    let bound: Vec<Option<&str>> = usage.iter().map(|u| u.bound_by.as_deref()).collect();
    assert_eq!(
        bound,
        [
            Some("Service::\"onboarding\" requested_by=\"ana\""),
            None,
            None,
            Some("conformance"),
        ]
    );
    let other_usage = store.binding_usage(&other).await.unwrap();
    assert_eq!(
        other_usage[0].bound_by.as_deref(),
        Some("User::\"mallory\"")
    );
}

/// Shredded DEKs, as a shred leaves them (the `deks` row gone, a `dek_tombstones` row in its
/// place: written here behind the store's back), are counted per tenant key: they leave the
/// binding's DEK and scope counts and appear in its shredded count; another tenant key's
/// tombstones count for its own binding only.
pub async fn binding_usage_counts_shredded_deks<B: Backdoor>(b: &B) {
    let store = b.store();
    let (tenant, first) = bound_tenant(store).await;
    let mut deks = Vec::new();
    for scope_label in ["a", "a", "b"] {
        let inserted = store
            .insert_dek(
                new_dek(&tenant, scope_label, first.tenant_key_id),
                &dek_events,
            )
            .await
            .unwrap();
        deks.push(inserted.dek);
    }
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap()
        .binding;
    insert_deks(store, &tenant, "b", second.tenant_key_id, 1).await;
    assert_eq!(
        counts(&store.binding_usage(&tenant).await.unwrap()),
        [(3, 2, 0), (1, 1, 0)]
    );

    let shred = |dek: &crate::DekRecord| {
        let id = dek.id.to_string();
        let tombstone = vec![
            Arg::Text(id.clone()),
            Arg::Text(dek.tenant.as_str().to_owned()),
            Arg::Text(dek.tenant_key_id.to_string()),
            Arg::Int(dek.created_at_ms),
        ];
        async move {
            b.execute("DELETE FROM deks WHERE id = $1", vec![Arg::Text(id)])
                .await
                .unwrap();
            b.execute(
                "INSERT INTO dek_tombstones (id, tenant_id, scope_hmac, tenant_key_id, \
                 created_at_ms, shredded_at_ms, shredded_by, reason) \
                 VALUES ($1, $2, 'conformance', $3, $4, $4 + 1, 'conformance', 'test')",
                tombstone,
            )
            .await
            .unwrap();
        }
    };
    // Scope "b" under the first key: its only DEK there; the scope leaves that binding's count
    // (it still has DEKs under the second key).
    shred(&deks[2]).await;
    assert_eq!(
        counts(&store.binding_usage(&tenant).await.unwrap()),
        [(2, 1, 1), (1, 1, 0)]
    );
    // Scope "a": both DEKs (the retired one and the active one).
    shred(&deks[0]).await;
    shred(&deks[1]).await;
    let usage = store.binding_usage(&tenant).await.unwrap();
    assert_eq!(counts(&usage), [(0, 0, 3), (1, 1, 0)]);
    assert_eq!(usage[0].binding.id, first.id);
    // No data depends on the first binding any more; its history stays.
    assert_eq!(usage[0].bound_by.as_deref(), Some("conformance"));

    // Who bound it is read from the signed chain: a record edited behind the store's back
    // (its hash no longer matches) is reported, never shown as the binder.
    b.execute(B::UNGUARD_AUDIT_RECORDS, Vec::new())
        .await
        .unwrap();
    b.execute(
        "UPDATE audit_records SET body = replace(body, 'conformance', 'somebody-else') \
         WHERE event_type = 'kek_binding_changed' AND tenant_id = $1",
        vec![Arg::Text(tenant.as_str().to_owned())],
    )
    .await
    .unwrap();
    let err = store.binding_usage(&tenant).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.starts_with("audit_records.hash:")),
        "{err:?}"
    );
}
