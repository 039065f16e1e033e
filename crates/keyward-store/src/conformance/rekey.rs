//! Conformance checks: re-keying ([`Store::rekey_state`], [`Store::rewrap_tenant_key`],
//! [`Store::retire_bindings`], [`Store::scheduled_rekeys`]): a tenant key's wrap, tag and
//! wrapping binding change together, only as a compare-and-set; a binding retires only when it
//! wraps nothing, reads `retired` from then on and never changes state again; what follows the
//! wrapping binding (the monitor's claims, the key history) follows it.

use super::*;
use crate::{RetiredBindings, TenantKeyRecord, TenantKeyRewrap, TenantPolicy};

fn moved(r: &TenantKeyRecord) -> Vec<AuditEvent> {
    vec![AuditEvent::TenantKeyRewrapped {
        tenant: r.tenant.clone(),
        tenant_key_id: r.id,
        from_binding_id: 0,
        to_binding_id: r.binding_id,
        actor: "conformance".to_owned(),
    }]
}

fn retired(r: &RetiredBindings) -> Vec<AuditEvent> {
    r.retired
        .iter()
        .map(|b| AuditEvent::KekBindingRetired {
            tenant: b.tenant.clone(),
            binding_id: b.id,
            provider: b.provider.to_string(),
            key_ref: b.key_ref.clone(),
            to_binding_id: r.target.id,
            tenant_keys: r.tenant_keys,
            deks: r.deks,
            actor: "conformance".to_owned(),
        })
        .collect()
}

fn rewrap(
    tenant: &TenantId,
    id: KeyId,
    from: &KekBinding,
    to: &KekBinding,
    byte: u8,
) -> TenantKeyRewrap {
    TenantKeyRewrap {
        tenant: tenant.clone(),
        id,
        from_binding_id: from.id,
        to_binding_id: to.id,
        wrapped: wrapped(byte),
        mac: vec![byte; 32],
    }
}

/// A tenant with two bindings: the first (older, with its tenant key) and the current one.
async fn rotated_tenant(store: &dyn Store) -> (TenantId, KekBinding, KekBinding) {
    let (tenant, first) = bound_tenant(store).await;
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap()
        .binding;
    (tenant, first, second)
}

/// Moves, refusals and retirement on one tenant with two bindings, then three.
pub async fn check_rekey(store: &dyn Store) {
    let (tenant, first) = bound_tenant(store).await;
    for _ in 0..2 {
        store
            .insert_dek(new_dek(&tenant, "a", first.tenant_key_id), &dek_events)
            .await
            .unwrap();
    }
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap()
        .binding;

    let state = store.rekey_state(&tenant).await.unwrap();
    assert_eq!(state.bindings.len(), 2);
    let wrapping: Vec<(KeyId, i64)> = state
        .tenant_keys
        .iter()
        .map(|k| (k.id, k.binding_id))
        .collect();
    let mut expected = vec![
        (first.tenant_key_id, first.id),
        (second.tenant_key_id, second.id),
    ];
    expected.sort();
    assert_eq!(wrapping, expected, "each key is wrapped by its own binding");
    assert_eq!(state.deks_by_tenant_key, [(first.tenant_key_id, 2)]);

    // Nothing to retire while the older binding wraps its key.
    let head = store.audit_head().await.unwrap();
    let none = store.retire_bindings(&tenant, &retired).await.unwrap();
    assert!(none.retired.is_empty());
    assert_eq!(
        store.audit_head().await.unwrap(),
        head,
        "retiring nothing records nothing"
    );

    // Refusals change nothing: a wrong `from`, a target that is not current, another tenant,
    // an unknown key.
    let (other, _) = bound_tenant(store).await;
    let head = store.audit_head().await.unwrap();
    let err = store
        .rewrap_tenant_key(
            rewrap(&tenant, first.tenant_key_id, &second, &second, 1),
            &moved,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateChanged(_)), "{err:?}");
    let err = store
        .rewrap_tenant_key(
            rewrap(&tenant, first.tenant_key_id, &first, &first, 1),
            &moved,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateChanged(_)), "{err:?}");
    let err = store
        .rewrap_tenant_key(
            rewrap(&other, first.tenant_key_id, &first, &second, 1),
            &moved,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .rewrap_tenant_key(rewrap(&tenant, key_id(), &first, &second, 1), &moved)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        store.audit_head().await.unwrap(),
        head,
        "refusals record nothing"
    );

    // The move: wrap, tag and wrapping binding change together; the key's own binding and its
    // DEKs do not.
    let record = store
        .rewrap_tenant_key(
            rewrap(&tenant, first.tenant_key_id, &first, &second, 7),
            &moved,
        )
        .await
        .unwrap();
    assert_eq!(record.binding_id, second.id);
    assert_eq!(record.key_ref, "local:kek-2");
    assert_eq!(record.wrapped, wrapped(7));
    assert_eq!(record.mac, Some(vec![7; 32]));
    assert_eq!(
        store
            .get_tenant_key(&tenant, &first.tenant_key_id)
            .await
            .unwrap(),
        Some(record.clone())
    );
    let after = tenant_records(store, &tenant).await;
    assert_eq!(after.last().unwrap().event(), &moved(&record)[0]);
    assert_eq!(
        store.list_bindings(&tenant).await.unwrap()[0].tenant_key_id,
        first.tenant_key_id,
        "a binding keeps naming the tenant key created with it"
    );
    // The same move again is a lost compare-and-set.
    let err = store
        .rewrap_tenant_key(
            rewrap(&tenant, first.tenant_key_id, &first, &second, 8),
            &moved,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateChanged(_)), "{err:?}");

    // The key history follows the wrapping binding: its DEKs count under the second now.
    let usage = store.binding_usage(&tenant).await.unwrap();
    assert_eq!((usage[0].deks, usage[1].deks), (0, 2));

    // Retirement: the first binding wraps nothing: retired, with the counts.
    let before = store.list_bindings(&tenant).await.unwrap()[0].clone();
    let result = store.retire_bindings(&tenant, &retired).await.unwrap();
    assert_eq!(result.retired.len(), 1);
    assert_eq!(result.retired[0].id, first.id);
    assert_eq!(result.retired[0].state, KekState::Retired);
    assert_eq!(result.retired[0].state_version, before.state_version + 1);
    assert_eq!(result.target.id, second.id);
    assert_eq!((result.tenant_keys, result.deks), (2, 2));
    assert_eq!(
        tenant_records(store, &tenant).await.last().unwrap().event(),
        &retired(&result)[0]
    );
    let listed = store.list_bindings(&tenant).await.unwrap();
    assert_eq!(listed[0].state, KekState::Retired);
    assert_eq!(listed[1].state, KekState::Active);
    // Idempotent: nothing left to retire.
    let head = store.audit_head().await.unwrap();
    assert!(
        store
            .retire_bindings(&tenant, &retired)
            .await
            .unwrap()
            .retired
            .is_empty()
    );
    assert_eq!(store.audit_head().await.unwrap(), head);

    // A retired binding never changes state: any state change is refused, changing nothing.
    let err = store
        .set_binding_state(
            StateUpdate::of(&listed[0], KekState::Revoked, RevocationSource::Monitor),
            &state_changed,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let err = store
        .set_binding_state(
            StateUpdate::of(&listed[1], KekState::Retired, RevocationSource::Explicit),
            &state_changed,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert_eq!(store.list_bindings(&tenant).await.unwrap(), listed);

    // A third binding: both tenant keys move under it; the second retires too.
    let third = store
        .bind_kek(new_binding(&tenant, "local:kek-3"), &binding_changed)
        .await
        .unwrap()
        .binding;
    for (id, byte) in [(first.tenant_key_id, 9), (second.tenant_key_id, 10)] {
        store
            .rewrap_tenant_key(rewrap(&tenant, id, &second, &third, byte), &moved)
            .await
            .unwrap();
    }
    let result = store.retire_bindings(&tenant, &retired).await.unwrap();
    assert_eq!(
        result.retired.iter().map(|b| b.id).collect::<Vec<_>>(),
        [second.id]
    );
    assert_eq!((result.tenant_keys, result.deks), (3, 2));
}

/// A move is refused when the old binding was revoked (or destroyed) meanwhile, and when the
/// target is revoked: revocation stays a one-way door.
pub async fn check_rekey_respects_revocation(store: &dyn Store) {
    let (tenant, first, second) = rotated_tenant(store).await;
    let old = store.list_bindings(&tenant).await.unwrap()[0].clone();
    store
        .set_binding_state(
            StateUpdate::of(&old, KekState::Revoked, RevocationSource::Monitor),
            &state_changed,
        )
        .await
        .unwrap();
    let err = store
        .rewrap_tenant_key(
            rewrap(&tenant, first.tenant_key_id, &first, &second, 1),
            &moved,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateChanged(_)), "{err:?}");
    assert_eq!(
        store
            .get_tenant_key(&tenant, &first.tenant_key_id)
            .await
            .unwrap()
            .unwrap()
            .binding_id,
        first.id
    );
    // A revoked binding that still wraps its key is not retired.
    assert!(
        store
            .retire_bindings(&tenant, &retired)
            .await
            .unwrap()
            .retired
            .is_empty()
    );

    // A revoked target: refused too.
    let (tenant, first, second) = rotated_tenant(store).await;
    store
        .set_binding_state(
            StateUpdate::of(&second, KekState::Revoked, RevocationSource::Explicit),
            &state_changed,
        )
        .await
        .unwrap();
    let err = store
        .rewrap_tenant_key(
            rewrap(&tenant, first.tenant_key_id, &first, &second, 1),
            &moved,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateChanged(_)), "{err:?}");
    // No current binding at all: nothing to retire into.
    let bare = new_tenant(store).await;
    let err = store.retire_bindings(&bare, &retired).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// The monitor's claim of a binding whose own key moved away carries a key it still wraps, or
/// none; a retired binding's check is removed. The scheduled re-key lists the tenants whose
/// policy asks for it and that have an older binding not retired.
pub async fn check_rekey_schedule_and_checks(store: &dyn Store) {
    let (tenant, first, second) = rotated_tenant(store).await;
    assert!(!store.scheduled_rekeys().await.unwrap().contains(&tenant));
    let policy = TenantPolicy {
        auto_rekey: true,
        ..TenantPolicy::default()
    };
    store
        .set_tenant_policy(&tenant, policy, &tenant_created)
        .await
        .unwrap();
    assert!(store.scheduled_rekeys().await.unwrap().contains(&tenant));

    // The first binding is held (a replica loaded its key) and due.
    store
        .hold_key(&tenant, first.id, 5_000, 1_000)
        .await
        .unwrap();
    store
        .rewrap_tenant_key(
            rewrap(&tenant, first.tenant_key_id, &first, &second, 3),
            &moved,
        )
        .await
        .unwrap();
    let claim = |now| store.claim_key_checks("conformance-rekey", now, now + 1, 500);
    let claimed: Vec<_> = claim(1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.binding.id == first.id)
        .collect();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].tenant_key, None,
        "it wraps no tenant key any more"
    );
    store
        .finish_key_check("conformance-rekey", first.id, 1_001, 2_000, None)
        .await
        .unwrap();
    store.retire_bindings(&tenant, &retired).await.unwrap();
    assert!(
        !claim(10_000)
            .await
            .unwrap()
            .iter()
            .any(|c| c.binding.id == first.id),
        "a retired binding has no check"
    );
    assert!(!store.scheduled_rekeys().await.unwrap().contains(&tenant));
}
