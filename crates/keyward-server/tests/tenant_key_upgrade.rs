//! The upgrade path of docs/adr/0007-tenant-key-mac.md: tenant keys stored before schema
//! version 5 have no tag and are refused until `keyward store authenticate-tenant-keys` (here
//! its library half, `authenticate_stored_tenant_keys`) tags them, audited; it never replaces a
//! tag, so a tenant key whose tag is wrong stays refused.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use common::{Counting, Fixture, IDENTIFIER_KEY, ctx, scope, tenant};
use keyward_audit::{AuditEvent, IdentifierHasher};
use keyward_kms::{KeyRef, ProviderKind};
use keyward_server::{Providers, keyring::authenticate_stored_tenant_keys};
use keyward_store::{AuditQuery, Store as _};

#[tokio::test]
async fn untagged_tenant_keys_serve_again_once_the_operator_authenticates_them() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Counting::open(&dir.path().join("kms"));
    let fx = Fixture::new(Providers::default().with(provider.clone())).await;
    let keyring = fx.keyring();
    let (old, tampered) = (tenant("old"), tenant("tampered"));
    let mut envelopes = Vec::new();
    let mut ids = Vec::new();
    for t in [&old, &tampered] {
        keyring
            .create_tenant(t, "", "test".to_owned())
            .await
            .unwrap();
        let binding = keyring
            .register_key(t, &KeyRef::new(ProviderKind::Local, "default"))
            .await
            .unwrap()
            .binding;
        let (envelope, _) = keyring
            .encrypt(t, &scope("s"), &ctx(), b"stored before the upgrade")
            .await
            .unwrap();
        envelopes.push(envelope);
        ids.push(binding.tenant_key_id);
    }
    // `old` as a pre-version-5 row; `tampered` has a wrong tag.
    fx.set_column(&ids[0], "mac", None).await;
    let mut mac = fx.column(&ids[1], "mac").await.unwrap();
    mac[5] ^= 0x80;
    fx.set_column(&ids[1], "mac", Some(mac.clone())).await;
    for (t, envelope) in [(&old, &envelopes[0]), (&tampered, &envelopes[1])] {
        let e = fx
            .keyring()
            .decrypt(t, envelope, &ctx())
            .await
            .map(drop)
            .unwrap_err();
        assert_eq!(e.reason(), "WRAPPED_KEY_REJECTED", "{e}");
    }

    let hasher = IdentifierHasher::new(IDENTIFIER_KEY);
    let head = fx.store.audit_head().await.unwrap();
    let done = authenticate_stored_tenant_keys(fx.store.as_ref(), &hasher, "ops@example.com")
        .await
        .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!((&done[0].tenant, done[0].tenant_key_id), (&old, ids[0]));

    let cold = fx.keyring();
    assert_eq!(
        cold.decrypt(&old, &envelopes[0], &ctx())
            .await
            .unwrap()
            .as_slice(),
        b"stored before the upgrade"
    );
    cold.encrypt(&old, &scope("new"), &ctx(), b"after")
        .await
        .unwrap();
    // A wrong tag is not "missing": the command leaves it, and the key stays refused.
    assert_eq!(fx.column(&ids[1], "mac").await, Some(mac));
    let e = cold
        .decrypt(&tampered, &envelopes[1], &ctx())
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.reason(), "WRAPPED_KEY_REJECTED", "{e}");

    // Audited: one admin_action naming the key and who vouched for it.
    let records = fx
        .store
        .audit_records(
            &AuditQuery::default()
                .with_after_seq(head.seq)
                .with_event_type("admin_action"),
        )
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    let AuditEvent::AdminAction {
        actor,
        action,
        detail,
    } = records[0].event()
    else {
        panic!("{:?}", records[0].event());
    };
    assert_eq!(
        (actor.as_str(), action.as_str()),
        ("ops@example.com", "authenticate_tenant_key")
    );
    assert!(
        detail.contains(&format!("tenant=old tenant_key_id={}", ids[0])),
        "{detail}"
    );

    // Idempotent: nothing left to tag.
    let again = authenticate_stored_tenant_keys(fx.store.as_ref(), &hasher, "ops@example.com")
        .await
        .unwrap();
    assert!(again.is_empty());
}
