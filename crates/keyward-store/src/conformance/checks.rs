//! The key-state monitor's shared schedule: holdings, claims with leases, the next check, and
//! the lookup of the bindings a key event names.
//!
//! Times here are a synthetic clock (small numbers of milliseconds), far before any real time:
//! a claim at such a time never takes a row scheduled by a running server's real clock. Rows of
//! other checks (or of an earlier `run_all` on the same database) may be claimed too: every
//! assertion is about this check's own bindings.

use super::{binding_changed, bound_tenant, new_binding, new_tenant, state_changed};
use crate::{
    KekState, KeyCheck, ProviderKind, RevocationSource, StateUpdate, Store, StoreError, TenantId,
};

/// The claims of `replica` at `now` (lease `lease_ms`), only those of `binding_id`.
async fn claim_of(
    store: &dyn Store,
    replica: &str,
    now: i64,
    lease_ms: i64,
    binding_id: i64,
) -> Option<KeyCheck> {
    store
        .claim_key_checks(replica, now, now + lease_ms, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.binding.id == binding_id)
}

/// A held key is scheduled at its hold's check time, claimed once (leases do not overlap), and
/// claimable again when the lease lapses; finishing reschedules it while it is held and parks
/// it once no replica holds it; a new hold schedules it again.
pub async fn check_key_check_schedule(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    store
        .hold_key(&tenant, binding.id, 5_000, 2_000)
        .await
        .unwrap();
    assert!(
        claim_of(store, "r1", 1_999, 100, binding.id)
            .await
            .is_none(),
        "not due yet"
    );

    let claimed = claim_of(store, "r1", 2_000, 100, binding.id)
        .await
        .expect("due at 2000");
    assert_eq!(claimed.binding, binding);
    let stored = store
        .get_tenant_key(&tenant, &binding.tenant_key_id)
        .await
        .unwrap();
    assert_eq!(
        claimed.tenant_key.clone(),
        stored,
        "the claim carries the wrapped tenant key"
    );
    assert_eq!(claimed.held_until_ms, 5_000);
    assert_eq!(claimed.due_at_ms, 2_000);
    assert!(claimed.held_at(4_999) && !claimed.held_at(5_000));
    assert_eq!(claimed.monitor_interval_seconds, None);
    assert!(
        claim_of(store, "r2", 2_050, 100, binding.id)
            .await
            .is_none(),
        "a live lease is never claimed twice"
    );
    // r1 stalls past its lease: r2 takes the check over, and r1's late finish changes nothing.
    assert!(
        claim_of(store, "r2", 2_100, 100, binding.id)
            .await
            .is_some()
    );
    assert!(
        !store
            .finish_key_check("r1", binding.id, 2_150, 9_999, None)
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_key_check("r2", binding.id, 2_150, 3_000, None)
            .await
            .unwrap()
    );
    assert!(
        claim_of(store, "r1", 2_999, 100, binding.id)
            .await
            .is_none()
    );
    assert!(
        claim_of(store, "r1", 3_000, 100, binding.id)
            .await
            .is_some()
    );

    // Nobody holds the key after 5000: finishing then parks it (no check, however late).
    assert!(
        store
            .finish_key_check("r1", binding.id, 5_000, 6_000, None)
            .await
            .unwrap()
    );
    assert!(
        claim_of(store, "r1", 1_000_000, 100, binding.id)
            .await
            .is_none()
    );
    // A replica loads the key again: checked at its hold's check time.
    store
        .hold_key(&tenant, binding.id, 70_000, 66_000)
        .await
        .unwrap();
    assert!(
        claim_of(store, "r1", 65_999, 100, binding.id)
            .await
            .is_none()
    );
    let again = claim_of(store, "r1", 66_000, 100, binding.id)
        .await
        .unwrap();
    assert_eq!(again.held_until_ms, 70_000);
    // Not held any more but told to keep checking (a revocation the KMS may lift).
    assert!(
        store
            .finish_key_check("r1", binding.id, 80_000, 81_000, Some(90_000))
            .await
            .unwrap()
    );
    assert!(
        claim_of(store, "r1", 89_999, 100, binding.id)
            .await
            .is_none()
    );
    assert!(
        claim_of(store, "r1", 90_000, 100, binding.id)
            .await
            .is_some()
    );
}

/// Holdings only grow (another replica may hold the key longer), the earlier of two scheduled
/// checks wins, and a hold committed while a check runs keeps the key scheduled when that check
/// finishes after the claimed holding lapsed.
pub async fn check_key_holdings(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    store
        .hold_key(&tenant, binding.id, 5_000, 2_500)
        .await
        .unwrap();
    store
        .hold_key(&tenant, binding.id, 3_000, 4_000)
        .await
        .unwrap();
    store
        .hold_key(&tenant, binding.id, 4_000, 2_000)
        .await
        .unwrap();
    let claimed = claim_of(store, "r1", 2_000, 100, binding.id).await.unwrap();
    assert_eq!((claimed.held_until_ms, claimed.due_at_ms), (5_000, 2_000));
    // While r1's check runs, another replica loads the key until 9000.
    store
        .hold_key(&tenant, binding.id, 9_000, 7_000)
        .await
        .unwrap();
    assert!(
        store
            .finish_key_check("r1", binding.id, 6_000, 6_500, None)
            .await
            .unwrap()
    );
    assert!(
        claim_of(store, "r1", 6_500, 100, binding.id)
            .await
            .is_some(),
        "the hold made during the check keeps the key scheduled"
    );

    // Another tenant's binding, or none: NotFound, nothing scheduled.
    let other = new_tenant(store).await;
    assert!(matches!(
        store.hold_key(&other, binding.id, 5_000, 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.hold_key(&tenant, i64::MAX, 5_000, 1).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Claims come earliest due first, at most `limit`, with the tenant's monitor interval.
pub async fn check_key_check_claim_order(store: &dyn Store) {
    let mut mine = Vec::new();
    for due in [3_300, 3_100, 3_200] {
        let (tenant, binding) = bound_tenant(store).await;
        store
            .hold_key(&tenant, binding.id, 10_000, due)
            .await
            .unwrap();
        mine.push((tenant, binding.id));
    }
    let (first_tenant, _) = &mine[1];
    let policy = crate::TenantPolicy {
        cache_ttl_seconds: None,
        monitor_interval_seconds: Some(7),
        auto_rekey: false,
        decrypt_purposes: 0,
    };
    store
        .set_tenant_policy(first_tenant, policy, &super::no_events)
        .await
        .unwrap();
    let ids: Vec<i64> = mine.iter().map(|(_, id)| *id).collect();
    let claimed: Vec<KeyCheck> = store
        .claim_key_checks("r1", 3_300, 3_400, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| ids.contains(&c.binding.id))
        .collect();
    let order: Vec<i64> = claimed.iter().map(|c| c.due_at_ms).collect();
    assert_eq!(order, vec![3_100, 3_200, 3_300]);
    assert_eq!(claimed[0].monitor_interval_seconds, Some(7));
    assert_eq!(claimed[1].monitor_interval_seconds, None);
    for id in &ids {
        store
            .finish_key_check("r1", *id, 3_300, 50_000, None)
            .await
            .unwrap();
    }
    // A limit of 1 takes one row (the earliest due of the whole schedule).
    let (tenant, binding) = bound_tenant(store).await;
    store
        .hold_key(&tenant, binding.id, 60_000, 40_000)
        .await
        .unwrap();
    let one = store
        .claim_key_checks("r1", 40_000, 40_100, 1)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].due_at_ms <= 40_000);
}

/// The next check not claimed: the earliest due row without a live lease.
pub async fn check_next_key_check_due(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    // Earlier than anything another check leaves behind (their times are >= 1000).
    store.hold_key(&tenant, binding.id, 1_000, 1).await.unwrap();
    assert_eq!(store.next_key_check_due(1).await.unwrap(), Some(1));
    claim_of(store, "r1", 1, 10_000_000, binding.id)
        .await
        .unwrap();
    assert_ne!(
        store.next_key_check_due(2).await.unwrap(),
        Some(1),
        "a claimed check is not the next one"
    );
    store
        .finish_key_check("r1", binding.id, 2, 3, None)
        .await
        .unwrap();
}

/// A current binding revoked or made unavailable by what the KMS said stays scheduled without
/// any holding (the KMS's answer can lift it); an explicit revocation does not.
pub async fn check_kms_revocations_are_scheduled(store: &dyn Store) {
    let now = crate::decode::now_ms();
    for (cause, to, scheduled) in [
        (RevocationSource::Monitor, KekState::Revoked, true),
        (RevocationSource::KmsRefusal, KekState::Revoked, true),
        (RevocationSource::Monitor, KekState::Unavailable, true),
        (RevocationSource::Explicit, KekState::Revoked, false),
    ] {
        let (_, binding) = bound_tenant(store).await;
        store
            .set_binding_state(StateUpdate::of(&binding, to, cause), &state_changed)
            .await
            .unwrap();
        let claimed = claim_of(store, "conformance", now + 60_000, 0, binding.id).await;
        assert_eq!(claimed.is_some(), scheduled, "{cause:?} -> {to:?}");
        if let Some(c) = claimed {
            assert_eq!(c.binding.state, to);
            assert!(!c.held_at(now));
        }
    }
}

/// The bindings registered with one key, older ones included, and no others.
pub async fn check_bindings_with_key(store: &dyn Store) {
    let key = format!("local:event-{}", super::key_id());
    let tenant: TenantId = new_tenant(store).await;
    let first = store
        .bind_kek(new_binding(&tenant, &key), &binding_changed)
        .await
        .unwrap()
        .binding;
    let second = store
        .bind_kek(new_binding(&tenant, &key), &binding_changed)
        .await
        .unwrap()
        .binding;
    let other = new_tenant(store).await;
    let third = store
        .bind_kek(new_binding(&other, &key), &binding_changed)
        .await
        .unwrap()
        .binding;
    store
        .bind_kek(new_binding(&other, "local:unrelated"), &binding_changed)
        .await
        .unwrap();
    let found = store
        .bindings_with_key(ProviderKind::Local, &key)
        .await
        .unwrap();
    let ids: Vec<i64> = found.iter().map(|b| b.id).collect();
    assert_eq!(ids, vec![first.id, second.id, third.id]);
    assert!(
        store
            .bindings_with_key(ProviderKind::AwsKms, &key)
            .await
            .unwrap()
            .is_empty()
    );
}
