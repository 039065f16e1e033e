//! Conformance checks: crypto-shredding (tombstones, retention candidates, the catch-up list).

use super::*;
use crate::{DekTombstone, ScopeShred, ShredResult, WrittenBefore};

/// `dek_retired` (reason `shredded`) for every tombstone.
pub fn shred_events(result: &ShredResult) -> Vec<AuditEvent> {
    result
        .tombstones
        .iter()
        .map(|t| AuditEvent::DekRetired {
            tenant: t.tenant.clone(),
            scope_hmac: t.scope_hmac.clone(),
            dek_id: t.id,
            reason: DekRetireReason::Shredded,
        })
        .collect()
}

fn shred(tenant: &TenantId, label: &str, only_if: Option<WrittenBefore>) -> ScopeShred {
    ScopeShred {
        tenant: tenant.clone(),
        scope: scope(label),
        scope_hmac: format!("hmac:{label}"),
        shredded_by: "TenantAdmin::\"acme-secops\"".to_owned(),
        reason: "GDPR art. 17 request 42".to_owned(),
        only_if,
    }
}

/// shred_scope deletes every DEK of the scope (active and retired), leaves one tombstone each
/// with no key material, appends its audit records in the same transaction, leaves the other
/// scopes alone, and the scope takes a new DEK afterwards.
pub async fn check_shred_scope(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    let tk = binding.tenant_key_id;
    let first = store
        .insert_dek(new_dek(&tenant, "conv-1", tk), &dek_events)
        .await
        .unwrap()
        .dek;
    let second = store
        .insert_dek(new_dek(&tenant, "conv-1", tk), &dek_events)
        .await
        .unwrap()
        .dek;
    let other = store
        .insert_dek(new_dek(&tenant, "conv-2", tk), &dek_events)
        .await
        .unwrap()
        .dek;
    let head = store.audit_head().await.unwrap();
    let before = store.counts().await.unwrap();

    let result = store
        .shred_scope(shred(&tenant, "conv-1", None), &shred_events)
        .await
        .unwrap();
    assert!(!result.skipped);
    assert_eq!(result.scope_hmac, "hmac:conv-1");
    let ids: Vec<KeyId> = result.tombstones.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first.id) && ids.contains(&second.id));
    assert!(result.tombstones.windows(2).all(|w| w[0].seq < w[1].seq));
    for (tombstone, dek) in result.tombstones.iter().map(|t| {
        let dek = if t.id == first.id { &first } else { &second };
        (t, dek)
    }) {
        assert_eq!(
            tombstone,
            &DekTombstone {
                seq: tombstone.seq,
                id: dek.id,
                tenant: tenant.clone(),
                scope_hmac: "hmac:conv-1".to_owned(),
                tenant_key_id: tk,
                created_at_ms: dek.created_at_ms,
                shredded_at_ms: result.shredded_at_ms,
                shredded_by: "TenantAdmin::\"acme-secops\"".to_owned(),
                reason: "GDPR art. 17 request 42".to_owned(),
            }
        );
        assert_eq!(store.get_dek(&tenant, &dek.id).await.unwrap(), None);
        assert_eq!(
            store
                .dek_tombstone(&tenant, &dek.id)
                .await
                .unwrap()
                .as_ref(),
            Some(tombstone)
        );
    }
    assert_eq!(
        store.active_dek(&tenant, &scope("conv-1")).await.unwrap(),
        None
    );
    assert_eq!(
        store.counts().await.unwrap().deks,
        before.deks - 2,
        "the rows are gone"
    );
    // The records, in the same transaction.
    let records = store
        .audit_records(&AuditQuery {
            after_seq: head.seq,
            tenant: Some(tenant.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| matches!(
        r.event(),
        AuditEvent::DekRetired {
            reason: DekRetireReason::Shredded,
            ..
        }
    )));
    // The other scope is untouched; the shredded one takes a new DEK.
    assert_eq!(
        store.get_dek(&tenant, &other.id).await.unwrap(),
        Some(other.clone())
    );
    let fresh = store
        .insert_dek(new_dek(&tenant, "conv-1", tk), &dek_events)
        .await
        .unwrap();
    assert_eq!(fresh.retired, None, "nothing left to retire");
    // Catch-up: the tenant is listed above the seq before the shred, not above its own.
    let listed = store
        .shreds_after(result.tombstones[0].seq - 1)
        .await
        .unwrap();
    assert!(listed.contains(&(tenant.clone(), result.tombstones[1].seq)));
    let later = store.shreds_after(result.tombstones[1].seq).await.unwrap();
    assert!(!later.iter().any(|(t, _)| *t == tenant));
}

/// A scope without DEKs shreds nothing (the audit function still runs); an unknown tenant is
/// NotFound and changes nothing; tombstones are tenant-scoped.
pub async fn check_shred_scope_edges(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    let empty = store
        .shred_scope(shred(&tenant, "never-used", None), &|r: &ShredResult| {
            assert!(r.tombstones.is_empty());
            vec![AuditEvent::AdminAction {
                actor: "conformance".to_owned(),
                action: "shred_scope".to_owned(),
                detail: "0 DEKs".to_owned(),
            }]
        })
        .await
        .unwrap();
    assert!(empty.tombstones.is_empty() && !empty.skipped);

    let head = store.audit_head().await.unwrap();
    let before = store.counts().await.unwrap();
    let unknown = unique_tenant_id();
    let err = store
        .shred_scope(shred(&unknown, "conv-1", None), &shred_events)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.counts().await.unwrap(), before);
    assert_eq!(store.audit_head().await.unwrap(), head);

    let dek = store
        .insert_dek(
            new_dek(&tenant, "conv-9", binding.tenant_key_id),
            &dek_events,
        )
        .await
        .unwrap()
        .dek;
    store
        .shred_scope(shred(&tenant, "conv-9", None), &shred_events)
        .await
        .unwrap();
    let stranger = new_tenant(store).await;
    assert_eq!(store.dek_tombstone(&stranger, &dek.id).await.unwrap(), None);
    assert!(
        store
            .dek_tombstone(&tenant, &dek.id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.dek_tombstone(&tenant, &key_id()).await.unwrap(), None);
}

/// Retention: the candidates are the scopes (with the prefix) all of whose DEKs stopped
/// encrypting before the cutoff, listed by label, counted the same way; a retention shred
/// re-checks the rule in its transaction and skips a scope written to since.
pub async fn check_retention_candidates(store: &dyn Store) {
    let (tenant, binding) = bound_tenant(store).await;
    let tk = binding.tenant_key_id;
    for label in ["2026-10", "2026-11", "2026-11", "conv-a"] {
        store
            .insert_dek(new_dek(&tenant, label, tk), &dek_events)
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff_ms = crate::decode::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .insert_dek(new_dek(&tenant, "2026-12", tk), &dek_events)
        .await
        .unwrap();
    // max_age 0: a DEK stops encrypting when it is created (the rule then is its creation).
    let rule = |prefix: &str| WrittenBefore {
        cutoff_ms,
        max_age_ms: 0,
        scope_prefix: prefix.to_owned(),
    };
    let listed = store
        .shred_candidates(&tenant, &rule("2026-"), 100)
        .await
        .unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|c| (c.scope.as_str(), c.deks))
            .collect::<Vec<_>>(),
        [("2026-10", 1), ("2026-11", 2)]
    );
    assert_eq!(
        store
            .count_shred_candidates(&tenant, &rule("2026-"))
            .await
            .unwrap(),
        (2, 3)
    );
    assert_eq!(
        store
            .count_shred_candidates(&tenant, &rule(""))
            .await
            .unwrap(),
        (3, 4),
        "no prefix: conv-a too"
    );
    let page = store.shred_candidates(&tenant, &rule(""), 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].scope.as_str(), "2026-10");
    // A rotation age keeps the active DEKs: they could still encrypt at the cutoff.
    let day = WrittenBefore {
        max_age_ms: 86_400_000,
        ..rule("")
    };
    let kept = store.shred_candidates(&tenant, &day, 100).await.unwrap();
    assert!(kept.is_empty(), "{kept:?}");
    // Another tenant's scopes are never candidates.
    let stranger = new_tenant(store).await;
    assert_eq!(
        store
            .count_shred_candidates(&stranger, &rule(""))
            .await
            .unwrap(),
        (0, 0)
    );

    // The rule is checked again inside the shred's transaction.
    let skipped = store
        .shred_scope(
            shred(&tenant, "2026-12", Some(rule("2026-"))),
            &shred_events,
        )
        .await
        .unwrap();
    assert!(skipped.skipped && skipped.tombstones.is_empty());
    assert!(
        store
            .active_dek(&tenant, &scope("2026-12"))
            .await
            .unwrap()
            .is_some()
    );
    let done = store
        .shred_scope(
            shred(&tenant, "2026-11", Some(rule("2026-"))),
            &shred_events,
        )
        .await
        .unwrap();
    assert_eq!(done.tombstones.len(), 2);
    assert_eq!(
        store
            .count_shred_candidates(&tenant, &rule("2026-"))
            .await
            .unwrap(),
        (1, 1)
    );
}
