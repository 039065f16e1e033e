//! Conformance checks: the hash-chained audit log and its checkpoints.

use super::*;

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
        .unwrap()
        .binding;
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
        .unwrap()
        .binding;

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
        .unwrap()
        .binding;
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
        .append_audit(vec![usage_event(&tenant, 1), usage_event(&tenant, 2)])
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
        events.push(usage_event(&tenant, u64::from(n)));
        events.push(AuditEvent::RevocationDenials {
            tenant: tenant.clone(),
            second: 1_700_000_000 + i64::from(n),
            count: u64::from(n) + 1,
        });
    }
    events.push(usage_event(&other, 9));
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
    let events = (0..1001).map(|n| usage_event(&tenant, n)).collect();
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
        .append_audit(vec![usage_event(&tenant, 1), usage_event(&tenant, 2)])
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
                    .append_audit(vec![usage_event(tenant, t * 10 + i)])
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
        head = assert_chain(head, &page);
    }
    assert_eq!(store.audit_head().await.unwrap(), head);
}

/// A store built [`with_record_sealer`](crate::sql::SqlStore::with_record_sealer) appends
/// format-v2 records (docs/audit-format.md §3.3): each round-trips through the database with
/// its salt and tenant tag (the tag `sealer` computes for its tenant, null for a record about no
/// tenant), its hash verifies, every salt differs, and a per-tenant export of the records
/// verifies with the other tenant's records redacted. The chain may already hold format-v1
/// records before them (a mixed chain).
pub async fn check_v2_records_round_trip(store: &dyn Store, sealer: &keyward_audit::RecordSealer) {
    let (a, b) = (unique_tenant_id(), unique_tenant_id());
    let before = store.audit_head().await.unwrap();
    for id in [&a, &b] {
        store
            .create_tenant(id, "Sealed", &tenant_created)
            .await
            .unwrap();
    }
    store
        .append_audit(vec![
            usage_event(&a, 60),
            usage_event(&b, 60),
            AuditEvent::AdminAction {
                actor: "conformance".into(),
                action: "noop".into(),
                detail: format!("tenant={b}"),
            },
        ])
        .await
        .unwrap();
    let records = all_records_after(store, before.seq).await;
    assert_eq!(records.len(), 5, "two tenants created, three appended");
    let mut salts = std::collections::HashSet::new();
    for r in &records {
        assert_eq!(r.version(), 2, "record {} is not format v2", r.seq());
        assert!(r.verify_hash(), "record {} does not verify", r.seq());
        assert!(salts.insert(*r.salt().unwrap()), "a salt was reused");
        let want = r.event().tenant().map(|t| sealer.tenant_tag(t));
        assert_eq!(r.tenant_tag(), want.as_deref(), "record {}", r.seq());
        // What the store returns is what a fresh parse of its bytes gives.
        assert_eq!(
            &Record::from_stored(&r.canonical_bytes(), *r.hash()).unwrap(),
            r
        );
    }
    assert_ne!(records[0].tenant_tag(), records[1].tenant_tag());

    // A per-tenant export of tenant a over these records verifies, shows a's records in full
    // and nothing of b's.
    let key = SigningKey::generate().unwrap();
    let first = &records[0];
    let last = records.last().unwrap();
    let scope = keyward_audit::TenantScope::new(
        a.clone(),
        sealer.tenant_tag(&a),
        first.time_ms(),
        last.time_ms() + 1,
    );
    let mut writer = keyward_audit::ExportWriter::new(Vec::new());
    writer
        .write_tenant_header(
            &keyward_audit::ExportHeader::new(first.seq(), last.seq(), 1, last.time_ms()),
            &scope,
        )
        .unwrap();
    for r in &records {
        writer.write_record(r).unwrap();
    }
    let bytes = writer.finish(&key, last.time_ms()).unwrap();
    let report = keyward_audit::verify_export(&bytes[..], &[key.public_key()]).unwrap();
    let tenant = report.tenant.unwrap();
    assert_eq!((tenant.records, tenant.redacted), (2, 3));
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        !text.contains(b.as_str()),
        "tenant b leaked into a's export"
    );
}

/// Every record after `after`, in order.
async fn all_records_after(store: &dyn Store, after: u64) -> Vec<Record> {
    store
        .audit_records(&AuditQuery::default().with_after_seq(after))
        .await
        .unwrap()
}
