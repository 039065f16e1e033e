//! The backdoor tests of the audit log: append-only tables, fail-closed lifecycle changes,
//! tampered and planted records, the empty chain's checkpoint.

use super::{Arg, Backdoor, INSERT_RECORD, populate, record_args, revoke_fresh, run, tamper};
use crate::conformance::{
    binding_changed, dek_events, state_changed, tenant_created, unique_tenant_id, usage_event,
};
use crate::{AuditQuery, ChainHead, KeyId, NewDek, NewKekBinding, Record, StoreError};

/// The audit tables refuse every update and delete, through the store's own pool and through a
/// raw connection alike, and a record must extend the chain by exactly one.
pub async fn audit_tables_are_append_only<B: Backdoor>(b: &B) {
    let store = b.store();
    let (tenant, _, _) = populate(store).await;
    let head = store.audit_head().await.unwrap();
    let key = keyward_audit::SigningKey::generate().unwrap();
    store
        .insert_checkpoint(&key.sign_checkpoint(&head, 1).unwrap())
        .await
        .unwrap();
    let before = b.dump().await;

    let statements = [
        "UPDATE audit_records SET time_ms = 0",
        "UPDATE audit_records SET body = body || ' '",
        "DELETE FROM audit_records",
        "DELETE FROM audit_records WHERE seq = (SELECT MAX(seq) FROM audit_records)",
        "UPDATE audit_checkpoints SET time_ms = 0",
        "DELETE FROM audit_checkpoints",
    ];
    for sql in statements.iter().chain(B::MORE_APPEND_ONLY_STATEMENTS) {
        let err = b.execute_pooled(sql).await.unwrap_err();
        assert!(err.contains("append-only"), "{sql}: {err}");
        let err = b.execute(sql, Vec::new()).await.unwrap_err();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    // A record must extend the chain by exactly one: no gaps, no reuse of a seq.
    let next = Record::append(&head, 1, usage_event(&tenant, 1)).unwrap();
    let skipped = Record::append(&next.head(), 1, usage_event(&tenant, 1)).unwrap();
    for (seq, record) in [(skipped.seq(), &skipped), (head.seq, &next)] {
        let err = b
            .execute(INSERT_RECORD, record_args(seq, record, &tenant))
            .await
            .unwrap_err();
        assert!(err.contains("extend the chain by one"), "seq {seq}: {err}");
    }
    assert_eq!(b.dump().await, before);
    // The store still appends normally afterwards.
    let appended = store
        .append_audit(vec![usage_event(&tenant, 2)])
        .await
        .unwrap();
    assert!(appended[0].follows(&head));
}

/// While audit appends fail inside the database, every lifecycle change fails (`Backend`) and
/// changes nothing; once they work again, the same calls succeed, each with its records.
pub async fn lifecycle_changes_fail_closed_when_the_audit_write_fails<B: Backdoor>(b: &B) {
    let store = b.store();
    let (tenant, binding, dek) = populate(store).await;
    let binding_id = store.active_binding(&tenant).await.unwrap().unwrap().id;
    run(b, B::BREAK_AUDIT_WRITES, Vec::new()).await;
    let before = b.dump().await;

    let new_tenant = unique_tenant_id();
    let new_binding = NewKekBinding {
        tenant_key_id: KeyId::generate().unwrap(),
        key_ref: "local:kek-2".to_owned(),
        ..binding.clone()
    };
    let new_dek = NewDek {
        id: KeyId::generate().unwrap(),
        ..dek.clone()
    };
    let is_backend = |e: StoreError| matches!(e, StoreError::Backend(_));

    let err = store
        .create_tenant(&new_tenant, "Unaudited", &tenant_created)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .bind_kek(new_binding.clone(), &binding_changed)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .insert_dek(new_dek.clone(), &dek_events)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .set_binding_state(revoke_fresh(binding_id), &state_changed)
        .await
        .unwrap_err();
    assert!(is_backend(err));
    let err = store
        .append_audit(vec![usage_event(&tenant, 1)])
        .await
        .unwrap_err();
    assert!(is_backend(err));
    assert_eq!(b.dump().await, before, "no change without its record");

    // Once the audit log accepts writes again, the same calls succeed, each with its records.
    run(b, B::REPAIR_AUDIT_WRITES, Vec::new()).await;
    let head = store.audit_head().await.unwrap();
    store
        .create_tenant(&new_tenant, "Audited", &tenant_created)
        .await
        .unwrap();
    store.bind_kek(new_binding, &binding_changed).await.unwrap();
    let inserted = store.insert_dek(new_dek, &dek_events).await.unwrap();
    assert_eq!(inserted.retired, Some(dek.id));
    // The new binding deactivated this one: its version moved to 1.
    store
        .set_binding_state(
            crate::StateUpdate {
                expected_version: 1,
                ..revoke_fresh(binding_id)
            },
            &state_changed,
        )
        .await
        .unwrap();
    store
        .append_audit(vec![usage_event(&tenant, 1)])
        .await
        .unwrap();
    let after = store
        .audit_records(&AuditQuery::default().with_after_seq(head.seq))
        .await
        .unwrap();
    // tenant_created 1, binding 2, DEK (retired + created) 2, state 1, usage 1.
    assert_eq!(after.len(), 7);
    assert_eq!(store.audit_head().await.unwrap(), after[6].head());
}

/// A checkpoint of the empty chain is the genesis head's; one over another hash, or past the
/// head, is invalid input.
pub async fn checkpoint_of_the_empty_chain<B: Backdoor>(b: &B) {
    let store = b.store();
    assert_eq!(store.audit_head().await.unwrap(), ChainHead::GENESIS);
    let key = keyward_audit::SigningKey::generate().unwrap();
    let refused = |head: ChainHead| {
        let checkpoint = key.sign_checkpoint(&head, 5).unwrap();
        async move {
            let err = store.insert_checkpoint(&checkpoint).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        }
    };
    refused(ChainHead {
        seq: 0,
        hash: [1; 32],
    })
    .await;
    let genesis = key.sign_checkpoint(&ChainHead::GENESIS, 5).unwrap();
    store.insert_checkpoint(&genesis).await.unwrap();
    assert_eq!(store.checkpoints(0, 0).await.unwrap(), vec![genesis]);
    refused(ChainHead {
        seq: 1,
        hash: [0; 32],
    })
    .await;
}

/// Audit records edited behind the store's back are reported as corrupt, naming the table, the
/// column and the record: the body (its hash no longer matches), and index columns that
/// disagree with the body (time, event type).
pub async fn tampered_audit_records_are_reported_as_corrupt<B: Backdoor>(b: &B) {
    let store = b.store();
    let (tenant, _, _) = populate(store).await;
    let query = AuditQuery::default().with_tenant(tenant.clone());
    let records = store.audit_records(&query).await.unwrap();
    let seq = i64::try_from(records[0].seq()).unwrap();
    let corrupt = |err: StoreError, expected: &str| {
        assert!(
            matches!(&err, StoreError::Corrupt(m)
                if m.starts_with(expected) && m.contains(&format!("record {seq}"))),
            "{err:?}"
        );
    };

    // The body edited, hash kept: the hash no longer matches; then restored. Then index
    // columns that disagree with the body.
    let body = String::from_utf8(records[0].canonical_bytes()).unwrap(); // as stored
    let edited = body.replace("conformance", "c0nformance");
    assert_ne!(edited, body);
    let set_body = "UPDATE audit_records SET body = $1 WHERE seq = $2";
    let edits = [
        (set_body, Some(edited), Some("audit_records.hash:")),
        (set_body, Some(body), None),
        (
            "UPDATE audit_records SET time_ms = time_ms + 1 WHERE seq = $1",
            None,
            Some("audit_records.time_ms:"),
        ),
        (
            "UPDATE audit_records SET time_ms = time_ms - 1 WHERE seq = $1",
            None,
            None,
        ),
    ];
    for (sql, text, expected) in edits {
        let args = text
            .map(Arg::Text)
            .into_iter()
            .chain([Arg::Int(seq)])
            .collect();
        tamper(b, sql, args).await;
        match expected {
            Some(expected) => corrupt(store.audit_records(&query).await.unwrap_err(), expected),
            None => assert_eq!(
                store.audit_records(&query).await.unwrap(),
                records,
                "restored"
            ),
        }
    }
    tamper(
        b,
        "UPDATE audit_records SET event_type = 'admin_action' WHERE seq = $1",
        vec![Arg::Int(seq)],
    )
    .await;
    let by_seq = AuditQuery::default()
        .with_after_seq(records[0].seq() - 1)
        .with_limit(1);
    corrupt(
        store.audit_records(&by_seq).await.unwrap_err(),
        "audit_records.event_type:",
    );
}

/// A record from the future (the clock stepped back, or another replica's clock runs ahead):
/// the next record takes its time, never an earlier one.
pub async fn record_times_never_go_backwards<B: Backdoor>(b: &B) {
    let store = b.store();
    let tenant = unique_tenant_id();
    let future = i64::MAX / 2;
    let planted = Record::append(&ChainHead::GENESIS, future, usage_event(&tenant, 1)).unwrap();
    tamper(
        b,
        "INSERT INTO audit_records (seq, time_ms, event_type, tenant_id, body, hash) \
         VALUES (1, $1, $2, $3, $4, $5)",
        vec![
            Arg::Int(future),
            Arg::Text(planted.event().event_type().to_owned()),
            Arg::Text(tenant.as_str().to_owned()),
            Arg::Text(String::from_utf8(planted.canonical_bytes()).unwrap()),
            Arg::Text(hex::encode(planted.hash())),
        ],
    )
    .await;
    let appended = store
        .append_audit(vec![usage_event(&tenant, 2)])
        .await
        .unwrap();
    assert_eq!(appended[0].time_ms(), future);
    assert!(appended[0].follows(&planted.head()));
}
