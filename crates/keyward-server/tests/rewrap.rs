//! Rewrap (issue #21, item 4) on the keyring against the real SQLite store and the local KEK
//! provider: the new envelope is under the target scope's active DEK (the envelope's own scope by
//! default) with the same context and the write suite; what Decrypt refuses (a wrong context, a
//! revoked tenant, an unknown DEK, another tenant's envelope) Rewrap refuses, writing nothing.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use std::collections::BTreeMap;

use common::{Counting, Fixture, ctx, scope, tenant};
use keyward_audit::AuditEvent;
use keyward_envelope::{EncryptionContext, KeyId, Suite, TenantId, parse};
use keyward_kms::{KeyRef, ProviderKind};
use keyward_server::{Keyring, Providers, error::ServiceError, keyring::RevocationSource};
use keyward_store::{AuditQuery, KekState, Store as _};

struct Setup {
    _dir: tempfile::TempDir,
    fx: Fixture,
    keyring: Keyring,
    t: TenantId,
}

/// A tenant `acme` on the local key `default` (and a second key `next`, not registered).
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let provider = Counting::open(&dir.path().join("kms"));
    provider.inner.create_key("next").unwrap();
    let fx = Fixture::new(Providers::default().with(provider)).await;
    let keyring = fx.keyring();
    let t = tenant("acme");
    keyring
        .create_tenant(&t, "Acme", "test".to_owned())
        .await
        .unwrap();
    keyring
        .register_key(&t, &KeyRef::new(ProviderKind::Local, "default"))
        .await
        .unwrap();
    Setup {
        _dir: dir,
        fx,
        keyring,
        t,
    }
}

fn other_ctx() -> EncryptionContext {
    let map: BTreeMap<String, String> = [("conversation".to_owned(), "43".to_owned())].into();
    EncryptionContext::try_from_map(map).unwrap()
}

fn dek_of(envelope: &[u8]) -> KeyId {
    *parse(envelope).unwrap().header().dek_id()
}

fn reason(e: &ServiceError) -> &'static str {
    e.reason()
}

#[tokio::test]
async fn a_rewrapped_envelope_is_under_the_target_scopes_active_dek_with_the_same_context() {
    let s = setup().await;
    let (envelope, source_dek) = s
        .keyring
        .encrypt(&s.t, &scope("conv-1"), &ctx(), b"the prompt")
        .await
        .unwrap();

    let (rewrapped, dek) = s
        .keyring
        .rewrap(&s.t, &envelope, &ctx(), Some(&scope("archive")))
        .await
        .unwrap();
    assert_eq!(
        dek_of(&rewrapped),
        dek,
        "the DEK id returned is the envelope's"
    );
    assert_ne!(dek, source_dek);
    // The target scope's active DEK: what an Encrypt in that scope uses.
    let (_, active) = s
        .keyring
        .encrypt(&s.t, &scope("archive"), &ctx(), b"new data")
        .await
        .unwrap();
    assert_eq!(
        dek, active,
        "the new envelope is under archive's active DEK"
    );
    let record = s.fx.store.get_dek(&s.t, &dek).await.unwrap().unwrap();
    assert_eq!(record.scope, scope("archive"));

    // Bound to the same context: it opens with it, and with no other.
    assert_eq!(
        s.keyring
            .decrypt(&s.t, &rewrapped, &ctx())
            .await
            .unwrap()
            .as_slice(),
        b"the prompt"
    );
    let e = s
        .keyring
        .decrypt(&s.t, &rewrapped, &other_ctx())
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DECRYPT_FAILED", "{e}");
    // The source envelope is untouched and still reads.
    assert_eq!(
        s.keyring
            .decrypt(&s.t, &envelope, &ctx())
            .await
            .unwrap()
            .as_slice(),
        b"the prompt"
    );
}

/// No target scope: the envelope's own DEK's scope, whose active DEK is a new one here because
/// the tenant registered another key since (the "move off an old binding" use).
#[tokio::test]
async fn without_a_target_the_envelope_stays_in_its_own_scope_under_its_current_dek() {
    let s = setup().await;
    let (envelope, old_dek) = s
        .keyring
        .encrypt(&s.t, &scope("conv-1"), &ctx(), b"before the new key")
        .await
        .unwrap();
    // Another scope's envelope, so that "the scope last used" would be the wrong answer.
    s.keyring
        .encrypt(&s.t, &scope("conv-2"), &ctx(), b"elsewhere")
        .await
        .unwrap();
    let next = s
        .keyring
        .register_key(&s.t, &KeyRef::new(ProviderKind::Local, "next"))
        .await
        .unwrap()
        .binding;

    let (rewrapped, dek) = s
        .keyring
        .rewrap(&s.t, &envelope, &ctx(), None)
        .await
        .unwrap();
    assert_ne!(dek, old_dek, "rotated onto the new binding");
    let record = s.fx.store.get_dek(&s.t, &dek).await.unwrap().unwrap();
    assert_eq!(record.scope, scope("conv-1"), "the envelope's own scope");
    assert_eq!(
        record.tenant_key_id, next.tenant_key_id,
        "under the new binding's tenant key"
    );
    let (_, active) = s
        .keyring
        .encrypt(&s.t, &scope("conv-1"), &ctx(), b"new data")
        .await
        .unwrap();
    assert_eq!(dek, active, "conv-1's active DEK");
    assert_eq!(
        s.keyring
            .decrypt(&s.t, &rewrapped, &ctx())
            .await
            .unwrap()
            .as_slice(),
        b"before the new key"
    );
}

#[tokio::test]
async fn a_wrong_context_is_refused_decrypt_failed_and_nothing_is_written() {
    let s = setup().await;
    let (envelope, _) = s
        .keyring
        .encrypt(&s.t, &scope("conv-1"), &ctx(), b"the prompt")
        .await
        .unwrap();
    let deks = s.fx.store.counts().await.unwrap().deks;
    for target in [Some(scope("fresh")), None] {
        let e = s
            .keyring
            .rewrap(&s.t, &envelope, &other_ctx(), target.as_ref())
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "DECRYPT_FAILED", "{e}");
    }
    assert_eq!(s.fx.store.counts().await.unwrap().deks, deks, "no DEK made");
    assert!(
        s.fx.store
            .active_dek(&s.t, &scope("fresh"))
            .await
            .unwrap()
            .is_none()
    );
}

/// The "upgrade old suites" use: an envelope a build writing suite 0x0001 sealed comes out of a
/// keyring with the default write suite in 0x0002; one still configured for 0x0001 keeps it.
#[tokio::test]
async fn a_suite_1_envelope_is_rewrapped_into_the_write_suite() {
    let s = setup().await;
    let old_build =
        s.fx.keyring()
            .with_write_suite(Suite::Aes256GcmHkdfSha512Committing);
    let (envelope, _) = old_build
        .encrypt(&s.t, &scope("conv-1"), &ctx(), b"sealed in 1")
        .await
        .unwrap();
    assert_eq!(parse(&envelope).unwrap().header().suite().id(), 0x0001);

    let (rewrapped, _) = s
        .keyring
        .rewrap(&s.t, &envelope, &ctx(), None)
        .await
        .unwrap();
    assert_eq!(parse(&rewrapped).unwrap().header().suite(), Suite::SEAL);
    assert_eq!(parse(&rewrapped).unwrap().header().suite().id(), 0x0002);
    assert_eq!(rewrapped.len(), envelope.len(), "every suite has one size");
    assert_eq!(
        s.keyring
            .decrypt(&s.t, &rewrapped, &ctx())
            .await
            .unwrap()
            .as_slice(),
        b"sealed in 1"
    );
    // The write suite decides, not the suite read.
    let (again, _) = old_build
        .rewrap(&s.t, &rewrapped, &ctx(), None)
        .await
        .unwrap();
    assert_eq!(parse(&again).unwrap().header().suite().id(), 0x0001);
}

#[tokio::test]
async fn a_revoked_tenant_is_refused_key_revoked_and_nothing_is_written() {
    let s = setup().await;
    let (envelope, _) = s
        .keyring
        .encrypt(&s.t, &scope("conv-1"), &ctx(), b"the prompt")
        .await
        .unwrap();
    s.keyring
        .revoke(
            &s.t,
            KekState::Revoked,
            RevocationSource::Explicit,
            Some("ciso".to_owned()),
            "incident",
            0,
        )
        .await
        .unwrap();
    let deks = s.fx.store.counts().await.unwrap().deks;
    for target in [Some(scope("fresh")), None] {
        let e = s
            .keyring
            .rewrap(&s.t, &envelope, &ctx(), target.as_ref())
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "KEY_REVOKED", "{e}");
    }
    // A replica with cold caches refuses it too.
    let e =
        s.fx.keyring()
            .rewrap(&s.t, &envelope, &ctx(), Some(&scope("fresh")))
            .await
            .unwrap_err();
    assert_eq!(reason(&e), "KEY_REVOKED", "{e}");
    assert_eq!(s.fx.store.counts().await.unwrap().deks, deks, "no DEK made");
}

/// A data key this store never had (or no longer has) and another tenant's envelope are
/// refused as Decrypt refuses them; a malformed envelope too.
#[tokio::test]
async fn unknown_data_keys_other_tenants_and_malformed_envelopes_are_refused() {
    let s = setup().await;
    let elsewhere = setup().await; // the same tenant id on another store
    let (foreign, _) = elsewhere
        .keyring
        .encrypt(&elsewhere.t, &scope("conv-1"), &ctx(), b"not here")
        .await
        .unwrap();
    let e = s
        .keyring
        .rewrap(&s.t, &foreign, &ctx(), Some(&scope("archive")))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DATA_KEY_NOT_FOUND", "{e}");

    let globex = tenant("globex");
    s.keyring
        .create_tenant(&globex, "Globex", "test".to_owned())
        .await
        .unwrap();
    s.keyring
        .register_key(&globex, &KeyRef::new(ProviderKind::Local, "default"))
        .await
        .unwrap();
    let (globex_envelope, _) = s
        .keyring
        .encrypt(&globex, &scope("conv-1"), &ctx(), b"globex's")
        .await
        .unwrap();
    let e = s
        .keyring
        .rewrap(&s.t, &globex_envelope, &ctx(), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "TENANT_MISMATCH", "{e}");

    let e = s
        .keyring
        .rewrap(&s.t, &globex_envelope[..30], &ctx(), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "MALFORMED_ENVELOPE", "{e}");
}

/// A rewrap counts as one Decrypt and one Encrypt in the tenant's `usage_summary` records.
#[tokio::test]
async fn a_rewrap_is_counted_as_a_decrypt_and_an_encrypt() {
    let s = setup().await;
    let (envelope, _) = s
        .keyring
        .encrypt(&s.t, &scope("conv-1"), &ctx(), b"12345")
        .await
        .unwrap();
    s.keyring
        .rewrap(&s.t, &envelope, &ctx(), Some(&scope("archive")))
        .await
        .unwrap();
    s.keyring
        .rewrap(&s.t, &envelope, &other_ctx(), Some(&scope("archive")))
        .await
        .unwrap_err();
    s.keyring.flush_all_denials().await.unwrap();
    let mut total = (0, 0, 0, 0, 0);
    for record in
        s.fx.store
            .audit_records(
                &AuditQuery::default()
                    .with_tenant(s.t.clone())
                    .with_event_type("usage_summary".to_owned()),
            )
            .await
            .unwrap()
    {
        if let AuditEvent::UsageSummary {
            encrypts,
            decrypts,
            bytes_in,
            bytes_out,
            errors,
            ..
        } = record.event().clone()
        {
            total.0 += encrypts;
            total.1 += decrypts;
            total.2 += bytes_in;
            total.3 += bytes_out;
            total.4 += errors;
        }
    }
    // The Encrypt, then the rewrap's decrypt and encrypt (5 bytes each way), then the refused
    // rewrap's decrypt: one error, nothing encrypted.
    assert_eq!(total, (2, 1, 10, 5, 1));
}
