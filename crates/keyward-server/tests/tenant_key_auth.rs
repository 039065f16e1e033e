//! Issue #16, item 10, with the local provider: a wrapped tenant key changed in the database is
//! refused before use whatever the provider (docs/adr/0007-tenant-key-mac.md) — a different but
//! valid wrap, a changed tag, a removed tag — with WRAPPED_KEY_REJECTED, before the KMS is asked,
//! and without revoking the tenant. The Azure RSA attack itself is in `azure_tenant_key.rs`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use std::sync::Arc;

use common::{Counting, Fixture, assert_refused_without_revoking, ctx, scope, tenant};
use keyward_envelope::{KeyId, SecretKey, TenantId};
use keyward_kms::{KeyProvider as _, KeyRef, ProviderKind, Purpose, WrapContext};
use keyward_server::Providers;

/// A tenant registered on the local key, with one envelope; returns what the tests tamper with.
async fn registered(dir: &std::path::Path) -> (Fixture, Arc<Counting>, TenantId, KeyId, Vec<u8>) {
    let provider = Counting::open(&dir.join("kms"));
    let fx = Fixture::new(Providers::default().with(provider.clone())).await;
    let keyring = fx.keyring();
    let t = tenant("acme");
    keyring
        .create_tenant(&t, "Acme", "test".to_owned())
        .await
        .unwrap();
    let binding = keyring
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "default"))
        .await
        .unwrap()
        .binding;
    let (envelope, _) = keyring
        .encrypt(&t, &scope("s1"), &ctx(), b"before")
        .await
        .unwrap();
    // Untouched, a replica with cold caches reads it (so the refusals below are the tampering's).
    let cold = fx.keyring();
    assert_eq!(
        cold.decrypt(&t, &envelope, &ctx())
            .await
            .unwrap()
            .as_slice(),
        b"before"
    );
    (fx, provider, t, binding.tenant_key_id, envelope)
}

#[tokio::test]
async fn a_tenant_key_replaced_by_another_valid_wrap_is_refused_before_the_kms() {
    let dir = tempfile::tempdir().unwrap();
    let (fx, provider, t, id, envelope) = registered(dir.path()).await;
    // Someone who can write the database and wrap under the KEK (a KMS wrap permission, or any
    // asymmetric KEK) plants a tenant key of their choosing; the KMS would unwrap it.
    let chosen = SecretKey::generate().unwrap();
    let wctx = WrapContext::new(&t, &id, Purpose::TenantKey);
    let kek = KeyRef::new(ProviderKind::Local, "default");
    let planted = provider.inner.wrap(&kek, &chosen, &wctx).await.unwrap();
    let back = provider.inner.unwrap(&kek, &planted, &wctx).await.unwrap();
    assert_eq!(back.expose_secret(), chosen.expose_secret());
    fx.set_column(&id, "wrapped", Some(planted.as_bytes().to_vec()))
        .await;

    assert_refused_without_revoking(&fx, &t, &envelope, || provider.unwraps()).await;
}

#[tokio::test]
async fn a_changed_tenant_key_tag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (fx, provider, t, id, envelope) = registered(dir.path()).await;
    let mut mac = fx
        .column(&id, "mac")
        .await
        .expect("registration stores a tag");
    assert_eq!(mac.len(), 32);
    mac[0] ^= 1;
    fx.set_column(&id, "mac", Some(mac)).await;

    assert_refused_without_revoking(&fx, &t, &envelope, || provider.unwraps()).await;
}

#[tokio::test]
async fn a_removed_tenant_key_tag_is_refused_and_the_error_names_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let (fx, provider, t, id, envelope) = registered(dir.path()).await;
    // NULL is what rows from before schema version 5 hold: no way around the check.
    fx.set_column(&id, "mac", None).await;

    assert_refused_without_revoking(&fx, &t, &envelope, || provider.unwraps()).await;
    let e = fx
        .keyring()
        .decrypt(&t, &envelope, &ctx())
        .await
        .map(drop)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("keyward store authenticate-tenant-keys"),
        "{e}"
    );
}
