//! Backend-generic store tests that need more than the `Store` trait — a dump of the whole
//! database, or SQL written behind the store's back — and the helpers both backends' test files
//! use. Each backend's file implements [`Backend`] and runs every test here, so the two cannot
//! drift apart (docs/store.md, "Conformance"). What the `Store` trait alone can show lives in
//! `keyward_store::conformance`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test support shared by two test binaries"
)]

pub(crate) mod test_db;

use std::future::Future;

use keyward_store::conformance::{
    self, binding_changed, dek_events, state_changed, tenant_created,
};
use keyward_store::{
    AuditEvent, AuditQuery, ChainHead, KekState, KeyId, NewDek, NewKekBinding, Record, Scope,
    Store, StoreError, TenantId, WrappedKey,
};

/// A value bound to a placeholder of [`Backend::tamper`].
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

/// What a backend's test file gives the shared tests.
pub(crate) trait Backend: Sync {
    /// Whether text columns refuse NUL characters (PostgreSQL's text type cannot hold them;
    /// SQLite stores them as given).
    const REFUSES_NUL_TEXT: bool;

    fn store(&self) -> &dyn Store;
    /// The whole database as text (`dump()`).
    fn dump(&self) -> impl Future<Output = String>;
    /// Runs `sql` (placeholders `$1`, `$2`, …) on a connection that bypasses the store, with
    /// the audit tables' append-only triggers disabled, as anyone who can write the database
    /// can.
    fn tamper(&self, sql: &str, args: Vec<Arg>) -> impl Future<Output = ()>;
    /// One text value read with `sql` (`$1` = `arg`) on that connection.
    fn fetch_text(&self, sql: &str, arg: i64) -> impl Future<Output = String>;
}

/// A tenant with a binding and an active DEK in the default scope.
pub(crate) async fn populate(store: &dyn Store) -> (TenantId, NewKekBinding, NewDek) {
    let tenant = conformance::unique_tenant_id();
    store
        .create_tenant(&tenant, "Persisted", &tenant_created)
        .await
        .unwrap();
    let binding = NewKekBinding {
        tenant: tenant.clone(),
        provider: "local".to_owned(),
        key_ref: "local:kek".to_owned(),
        tenant_key_id: KeyId::generate().unwrap(),
        wrapped_tenant_key: WrappedKey::new(vec![0, 1, 2, 255]),
        tenant_key_mac: Some(vec![0x6d; 32]),
    };
    store
        .bind_kek(binding.clone(), &binding_changed)
        .await
        .unwrap();
    let dek = NewDek {
        id: KeyId::generate().unwrap(),
        tenant: tenant.clone(),
        scope: Scope::default_scope(),
        tenant_key_id: binding.tenant_key_id,
        wrapped: WrappedKey::new(vec![255, 0, 7]),
    };
    store.insert_dek(dek.clone(), &dek_events).await.unwrap();
    (tenant, binding, dek)
}

pub(crate) fn usage_event(tenant: &TenantId, n: u64) -> AuditEvent {
    AuditEvent::UsageSummary {
        tenant: tenant.clone(),
        minute: 0,
        encrypts: n,
        decrypts: 0,
        bytes_in: 0,
        bytes_out: 0,
        kms_calls: 0,
        cache_hits: 0,
        errors: 0,
    }
}

/// Revokes a binding that never changed state since registration (version 0).
pub(crate) fn revoke_fresh(binding_id: i64) -> keyward_store::StateUpdate {
    keyward_store::StateUpdate {
        binding_id,
        expected_version: 0,
        to: KekState::Revoked,
        cause: keyward_store::RevocationSource::Explicit,
    }
}

/// The versions of the migration files of `backend` (`migrations/<backend>/NNNN_name.sql`), in
/// order: the store must have applied exactly these.
pub(crate) fn migration_versions(backend: &str) -> Vec<i64> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name[..4].parse().unwrap()
        })
        .collect();
    versions.sort_unstable();
    versions
}

// ----- the shared tests --------------------------------------------------------------------

/// Every refused request leaves the database exactly as it was (the dump is unchanged).
pub(crate) async fn bad_requests_change_nothing<B: Backend>(b: &B) {
    let store = b.store();
    let (tenant, binding, dek) = populate(store).await;
    let before = b.dump().await;

    // Duplicate tenant.
    assert!(
        store
            .create_tenant(&tenant, "again", &tenant_created)
            .await
            .is_err()
    );
    // Binding for an unknown tenant; binding reusing a tenant key id.
    let mut bad_binding = binding.clone();
    bad_binding.tenant = conformance::unique_tenant_id();
    bad_binding.tenant_key_id = KeyId::generate().unwrap();
    assert!(store.bind_kek(bad_binding, &binding_changed).await.is_err());
    assert!(
        store
            .bind_kek(binding.clone(), &binding_changed)
            .await
            .is_err()
    );
    // DEK under an unknown tenant key; duplicate DEK id.
    let mut bad_dek = dek.clone();
    bad_dek.id = KeyId::generate().unwrap();
    bad_dek.tenant_key_id = KeyId::generate().unwrap();
    assert!(store.insert_dek(bad_dek, &dek_events).await.is_err());
    assert!(store.insert_dek(dek.clone(), &dek_events).await.is_err());
    // Usage for an unknown DEK; state of an unknown binding.
    assert!(
        store
            .add_dek_usage(&tenant, &KeyId::generate().unwrap(), 1, 1)
            .await
            .is_err()
    );
    assert!(
        store
            .set_binding_state(revoke_fresh(-1), &state_changed)
            .await
            .is_err()
    );
    // A checkpoint over a hash that is not the chain's, or beyond its head.
    let key = keyward_audit::SigningKey::generate().unwrap();
    let head = store.audit_head().await.unwrap();
    for bad in [
        ChainHead {
            seq: head.seq,
            hash: [9; 32],
        },
        ChainHead {
            seq: head.seq + 1,
            hash: head.hash,
        },
    ] {
        let checkpoint = key.sign_checkpoint(&bad, 1).unwrap();
        assert!(store.insert_checkpoint(&checkpoint).await.is_err());
    }
    assert_eq!(b.dump().await, before);

    // A display name with a NUL: refused as invalid input where text cannot hold it (nothing
    // written), stored exactly where it can. (The API refuses control characters before the
    // store sees them.)
    let nul = conformance::unique_tenant_id();
    let result = store
        .create_tenant(&nul, "nul\0name", &tenant_created)
        .await;
    if B::REFUSES_NUL_TEXT {
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        assert_eq!(b.dump().await, before);
    } else {
        result.unwrap();
        assert_eq!(
            store.get_tenant(&nul).await.unwrap().unwrap().display_name,
            "nul\0name"
        );
    }
}

/// A checkpoint of the empty chain is the genesis head's; one over another hash, or past the
/// head, is invalid input.
pub(crate) async fn checkpoint_of_the_empty_chain<B: Backend>(b: &B) {
    let store = b.store();
    assert_eq!(store.audit_head().await.unwrap(), ChainHead::GENESIS);
    let key = keyward_audit::SigningKey::generate().unwrap();
    let bad = ChainHead {
        seq: 0,
        hash: [1; 32],
    };
    let err = store
        .insert_checkpoint(&key.sign_checkpoint(&bad, 5).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    let genesis = key.sign_checkpoint(&ChainHead::GENESIS, 5).unwrap();
    store.insert_checkpoint(&genesis).await.unwrap();
    assert_eq!(store.checkpoints(0, 0).await.unwrap(), vec![genesis]);
    let beyond = ChainHead {
        seq: 1,
        hash: [0; 32],
    };
    let err = store
        .insert_checkpoint(&key.sign_checkpoint(&beyond, 5).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
}

/// Audit records edited behind the store's back are reported as corrupt, naming the table, the
/// column and the record: the body (its hash no longer matches), and index columns that
/// disagree with the body (time, event type).
pub(crate) async fn tampered_audit_records_are_reported_as_corrupt<B: Backend>(b: &B) {
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

    // The body edited, hash kept: the hash no longer matches.
    let body = b
        .fetch_text("SELECT body FROM audit_records WHERE seq = $1", seq)
        .await;
    let edited = body.replace("conformance", "c0nformance");
    assert_ne!(edited, body);
    b.tamper(
        "UPDATE audit_records SET body = $1 WHERE seq = $2",
        vec![Arg::Text(edited), Arg::Int(seq)],
    )
    .await;
    corrupt(
        store.audit_records(&query).await.unwrap_err(),
        "audit_records.hash:",
    );
    b.tamper(
        "UPDATE audit_records SET body = $1 WHERE seq = $2",
        vec![Arg::Text(body), Arg::Int(seq)],
    )
    .await;
    assert_eq!(
        store.audit_records(&query).await.unwrap(),
        records,
        "restored"
    );

    // Index columns that disagree with the body.
    b.tamper(
        "UPDATE audit_records SET time_ms = time_ms + 1 WHERE seq = $1",
        vec![Arg::Int(seq)],
    )
    .await;
    corrupt(
        store.audit_records(&query).await.unwrap_err(),
        "audit_records.time_ms:",
    );
    b.tamper(
        "UPDATE audit_records SET time_ms = time_ms - 1 WHERE seq = $1",
        vec![Arg::Int(seq)],
    )
    .await;
    b.tamper(
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
pub(crate) async fn record_times_never_go_backwards<B: Backend>(b: &B) {
    let store = b.store();
    let tenant = conformance::unique_tenant_id();
    let future = i64::MAX / 2;
    let planted = Record::append(&ChainHead::GENESIS, future, usage_event(&tenant, 1)).unwrap();
    b.tamper(
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
