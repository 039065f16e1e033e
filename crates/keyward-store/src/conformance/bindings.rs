//! Conformance checks: KEK bindings, the tenant keys they wrap, and binding states.

use super::*;

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
    assert_nothing_written(store, &before, &head).await;
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
        .unwrap()
        .binding;
    assert_eq!(first.tenant, tenant);
    assert_eq!(first.provider, crate::ProviderKind::Local);
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
    second_new.provider = crate::ProviderKind::AwsKms;
    second_new.wrapped_tenant_key = wrapped(0x33);
    // Any bytes, NUL and 0xff included.
    second_new.tenant_key_mac = Some((0..=255u8).rev().chain([0, 0]).collect());
    let second = store
        .bind_kek(second_new.clone(), &binding_changed)
        .await
        .unwrap()
        .binding;
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
    assert_eq!(old_key.provider, crate::ProviderKind::Local);
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
    assert_eq!(new_key.provider, crate::ProviderKind::AwsKms);
    assert_eq!(new_key.key_ref, "local:kek-2");
    assert_eq!(new_key.wrapped, second_new.wrapped_tenant_key);
    assert_eq!(new_key.mac, second_new.tenant_key_mac);
    assert_eq!(new_key.created_at_ms, second.created_at_ms);
}

/// active_bindings lists each tenant's current binding once, not deactivated ones.
pub async fn check_active_bindings_lists_current_bindings(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let first = store
        .bind_kek(new_binding(&tenant, "local:kek-1"), &binding_changed)
        .await
        .unwrap()
        .binding;
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap()
        .binding;
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
        .unwrap()
        .binding;
    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &record)
        .await
        .unwrap()
        .binding;
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
    assert_nothing_written(store, &before, &head).await;
    assert_eq!(store.active_binding(&tenant).await.unwrap(), Some(first));
}

/// Empty or control-character key_ref -> InvalidInput, nothing inserted (the provider is a
/// [`crate::ProviderKind`]: there is no text to check).
pub async fn check_bind_kek_rejects_empty_fields(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let before = store.counts().await.unwrap();
    let head = store.audit_head().await.unwrap();
    for key_ref in ["", "kek\n1"] {
        let refused = new_binding(&tenant, key_ref);
        let err = store.bind_kek(refused, &binding_changed).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidInput(_)),
            "{key_ref:?}: {err:?}"
        );
    }
    assert_nothing_written(store, &before, &head).await;
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
        .unwrap()
        .binding;
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
    provider: crate::ProviderKind,
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
            provider: r.provider,
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
            .unwrap()
            .binding;
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
        .unwrap()
        .binding;
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
        .unwrap()
        .binding;
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
        .unwrap()
        .binding;
    let new = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap()
        .binding;
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

/// The writes that change a tenant (`bind_kek`, `set_binding_state`, `set_tenant_policy`) return
/// the tenant as their transaction left it: exactly what a read right after returns.
pub async fn check_writes_return_the_tenant_they_left(store: &dyn Store) {
    let tenant = new_tenant(store).await;
    let read = || async {
        crate::TenantState {
            tenant: store.get_tenant(&tenant).await.unwrap().unwrap(),
            bindings: store.list_bindings(&tenant).await.unwrap(),
        }
    };

    let first = store
        .bind_kek(new_binding(&tenant, "local:kek-1"), &binding_changed)
        .await
        .unwrap();
    assert_eq!(first.tenant, read().await);
    assert_eq!(first.tenant.current(), Some(&first.binding));
    assert_eq!(first.tenant.previous().count(), 0);

    let second = store
        .bind_kek(new_binding(&tenant, "local:kek-2"), &binding_changed)
        .await
        .unwrap();
    assert_eq!(second.tenant, read().await);
    assert_eq!(second.tenant.current(), Some(&second.binding));
    let previous: Vec<_> = second.tenant.previous().map(|b| b.id).collect();
    assert_eq!(previous, [first.binding.id]);

    // A state change of the older binding: the commit carries that binding, changed.
    let old = &second.tenant.bindings[0];
    let revoked = store
        .set_binding_state(
            StateUpdate::of(old, KekState::Revoked, RevocationSource::Explicit),
            &state_changed,
        )
        .await
        .unwrap();
    assert_eq!(revoked.tenant, read().await);
    assert_eq!(revoked.binding.id, first.binding.id);
    assert_eq!(revoked.binding.state, KekState::Revoked);
    assert_eq!(revoked.tenant.bindings[0], revoked.binding);
    assert_eq!(revoked.tenant.current(), Some(&second.binding));

    let policy = crate::TenantPolicy {
        cache_ttl_seconds: Some(30),
        monitor_interval_seconds: None,
        auto_rekey: false,
        decrypt_purposes: 0,
    };
    let with_policy = store
        .set_tenant_policy(&tenant, policy, &tenant_created)
        .await
        .unwrap();
    assert_eq!(with_policy, read().await);
    assert_eq!(with_policy.tenant.policy, policy);
}
