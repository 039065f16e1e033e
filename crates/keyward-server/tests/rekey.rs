//! Re-keying (issue #22, items 1 and 2) on the keyring against the real SQLite store and the
//! local KEK provider behind `Controlled` (which can hold an unwrap so that another step lands
//! exactly between the KMS's answer and its use): every older tenant key moves under the
//! current KEK, the older bindings retire, and everything written before stays readable with the
//! old keys disabled; a disabled old key or a revoked old binding changes nothing; a revocation
//! or a new key during the move wins; two replicas re-keying at once move each key once.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use std::sync::Arc;

use common::{Fixture, ctx, scope, tenant};
use keyward_audit::AuditEvent;
use keyward_envelope::{KeyId, TenantId};
use keyward_kms::{KeyRef, ProviderKind, controlled::Controlled, local::LocalProvider};
use keyward_server::{
    Keyring, Providers,
    error::ServiceError,
    keyring::{CheckOutcome, RevocationSource},
};
use keyward_store::{AuditQuery, KekState, StateUpdate, Store as _};

struct Setup {
    _dir: tempfile::TempDir,
    fx: Fixture,
    kms: Arc<Controlled<LocalProvider>>,
    keyring: Keyring,
    t: TenantId,
}

fn local(name: &str) -> KeyRef {
    KeyRef::new(ProviderKind::Local, name)
}

/// A tenant `acme` on the local key `k1`, with keys `k2`..`k5` created (not registered).
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(Controlled::new(
        LocalProvider::open(dir.path().join("kms")).unwrap(),
    ));
    for name in ["k1", "k2", "k3", "k4", "k5"] {
        kms.inner().create_key(name).unwrap();
    }
    let fx = Fixture::new(Providers::default().with(kms.clone())).await;
    let keyring = fx.keyring();
    let t = tenant("acme");
    keyring
        .create_tenant(&t, "Acme", "test".to_owned())
        .await
        .unwrap();
    keyring.register_key(&t, &local("k1")).await.unwrap();
    Setup {
        _dir: dir,
        fx,
        kms,
        keyring,
        t,
    }
}

impl Setup {
    async fn write(&self, scopes: &[&str]) -> Vec<Vec<u8>> {
        let mut envelopes = Vec::new();
        for s in scopes {
            let (envelope, _) = self
                .keyring
                .encrypt(&self.t, &scope(s), &ctx(), s.as_bytes())
                .await
                .unwrap();
            envelopes.push(envelope);
        }
        envelopes
    }

    /// Every envelope opens on a replica with cold caches, to its scope's name.
    async fn all_read(&self, envelopes: &[Vec<u8>], scopes: &[&str]) {
        let cold = self.fx.keyring();
        for (envelope, s) in envelopes.iter().zip(scopes) {
            let plaintext = cold.decrypt(&self.t, envelope, &ctx()).await.unwrap();
            assert_eq!(plaintext.as_slice(), s.as_bytes());
        }
    }

    /// Which binding's KEK wraps each tenant key, by id.
    async fn wrapping(&self) -> Vec<(KeyId, i64)> {
        let state = self.fx.store.rekey_state(&self.t).await.unwrap();
        state
            .tenant_keys
            .iter()
            .map(|k| (k.id, k.binding_id))
            .collect()
    }

    async fn records(&self, event_type: &str) -> Vec<AuditEvent> {
        self.fx
            .store
            .audit_records(
                &AuditQuery::default()
                    .with_tenant(self.t.clone())
                    .with_event_type(event_type.to_owned()),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event().clone())
            .collect()
    }

    async fn binding(&self, id: i64) -> keyward_store::KekBinding {
        self.fx
            .store
            .list_bindings(&self.t)
            .await
            .unwrap()
            .into_iter()
            .find(|b| b.id == id)
            .unwrap()
    }
}

const OLD: [&str; 3] = ["conv-1", "conv-2", "conv-3"];

#[tokio::test]
async fn a_rekey_moves_every_older_tenant_key_and_the_old_key_may_then_be_disabled() {
    let s = setup().await;
    let old = s.write(&OLD).await;
    let first = s.keyring.register_key(&s.t, &local("k2")).await.unwrap();
    let new = s.write(&["conv-4"]).await;

    let before = s.keyring.rekey_status(&s.t).await.unwrap();
    assert_eq!(before.target.id, first.binding.id);
    assert_eq!(
        (before.tenant_keys_current, before.tenant_keys_remaining),
        (1, 1)
    );
    assert_eq!(
        before.deks_remaining, 3,
        "the three scopes written under k1"
    );
    assert_eq!(before.pending.len(), 1);
    assert!(!before.done());

    let after = s.keyring.rekey(&s.t, None, "secops").await.unwrap();
    assert!(after.done(), "{after:?}");
    assert_eq!((after.rewrapped, after.retired_now), (1, 1));
    assert_eq!(
        (after.tenant_keys_current, after.tenant_keys_remaining),
        (2, 0)
    );
    assert_eq!(after.retired.len(), 1);
    assert_eq!(after.retired[0].state, KekState::Retired);
    assert!(
        s.wrapping()
            .await
            .iter()
            .all(|(_, b)| *b == first.binding.id),
        "every tenant key is wrapped by the current KEK"
    );

    // The customer disables (and may delete) the old key: everything written before reads.
    s.kms.inner().set_enabled("k1", false).unwrap();
    s.all_read(&old, &OLD).await;
    s.all_read(&new, &["conv-4"]).await;
    // The monitor does not revoke the tenant for the retired key (its KMS refuses now).
    let retired = s.binding(after.retired[0].id).await;
    assert_eq!(
        s.keyring.check_binding(&retired).await.unwrap(),
        CheckOutcome::Unchanged
    );
    assert_eq!(s.binding(retired.id).await.state, KekState::Retired);
    let (_, wait) = s
        .keyring
        .check_due(keyward_server::keyring::MonitorPolicy::default())
        .await
        .unwrap();
    assert!(wait.as_millis() > 0);
    assert_eq!(
        s.keyring
            .tenant_state(&s.t)
            .await
            .unwrap()
            .bindings
            .last()
            .unwrap()
            .state,
        KekState::Active
    );

    // The log: one tenant_key_rewrapped (k1's tenant key, binding 1 -> 2), one
    // kek_binding_retired with the counts.
    let moved = s.records("tenant_key_rewrapped").await;
    assert_eq!(moved.len(), 1);
    match &moved[0] {
        AuditEvent::TenantKeyRewrapped {
            from_binding_id,
            to_binding_id,
            actor,
            ..
        } => {
            assert_eq!(*from_binding_id, retired.id);
            assert_eq!(*to_binding_id, first.binding.id);
            assert_eq!(actor, "secops");
        }
        other => panic!("{other:?}"),
    }
    match &s.records("kek_binding_retired").await[..] {
        [
            AuditEvent::KekBindingRetired {
                binding_id,
                to_binding_id,
                tenant_keys,
                deks,
                key_ref,
                ..
            },
        ] => {
            assert_eq!(*binding_id, retired.id);
            assert_eq!(*to_binding_id, first.binding.id);
            assert_eq!((*tenant_keys, *deks), (2, 4));
            assert_eq!(key_ref, "k1");
        }
        other => panic!("{other:?}"),
    }

    // Nothing left: a second run changes and records nothing.
    let head = s.fx.store.audit_head().await.unwrap();
    let again = s.keyring.rekey(&s.t, None, "secops").await.unwrap();
    assert!(again.done());
    assert_eq!((again.rewrapped, again.retired_now), (0, 0));
    assert_eq!(s.fx.store.audit_head().await.unwrap(), head);
}

#[tokio::test]
async fn a_disabled_old_key_refuses_the_rekey_by_name_and_nothing_changes() {
    let s = setup().await;
    let old = s.write(&OLD).await;
    s.keyring.register_key(&s.t, &local("k2")).await.unwrap();
    s.kms.inner().set_enabled("k1", false).unwrap();
    let wrapping = s.wrapping().await;
    let head = s.fx.store.audit_head().await.unwrap();

    let err = s.keyring.rekey(&s.t, None, "secops").await.unwrap_err();
    assert_eq!(err.reason(), "KEY_REFUSED", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("old key local k1 (binding 1)"),
        "{message}"
    );
    assert!(message.contains("nothing was changed"), "{message}");
    let status = err.to_status();
    assert!(
        format!("{:?}", status.metadata()).contains("GetRekeyStatus")
            || status.message().contains("refused"),
        "{status:?}"
    );
    assert_eq!(s.wrapping().await, wrapping, "no tenant key moved");
    assert_eq!(
        s.fx.store.audit_head().await.unwrap(),
        head,
        "nothing recorded"
    );
    assert_eq!(
        s.binding(1).await.state,
        KekState::Active,
        "a re-key's refusal revokes nothing"
    );

    // Enabled again, the re-key goes through and the data reads with k1 disabled.
    s.kms.inner().set_enabled("k1", true).unwrap();
    assert!(s.keyring.rekey(&s.t, None, "secops").await.unwrap().done());
    s.kms.inner().set_enabled("k1", false).unwrap();
    s.all_read(&old, &OLD).await;
}

#[tokio::test]
async fn a_revoked_old_binding_blocks_the_rekey_until_it_is_restored() {
    let s = setup().await;
    let old = s.write(&OLD).await;
    s.keyring
        .revoke(
            &s.t,
            KekState::Revoked,
            RevocationSource::Explicit,
            Some("secops".into()),
            "compromise drill",
            0,
        )
        .await
        .unwrap();
    s.keyring.register_key(&s.t, &local("k2")).await.unwrap();
    let wrapping = s.wrapping().await;
    let head = s.fx.store.audit_head().await.unwrap();
    let unwraps = s.kms.unwraps();

    let err = s.keyring.rekey(&s.t, None, "secops").await.unwrap_err();
    assert_eq!(err.reason(), "REKEY_BLOCKED", "{err}");
    assert_eq!(err.to_status().code(), tonic::Code::FailedPrecondition);
    assert!(err.to_string().contains("binding 1"), "{err}");
    assert!(err.to_string().contains("restore it first"), "{err}");
    assert_eq!(
        s.kms.unwraps(),
        unwraps,
        "the revoked key is not even asked"
    );
    assert_eq!(s.wrapping().await, wrapping);
    assert_eq!(s.fx.store.audit_head().await.unwrap(), head);
    // Its data stays unreadable: revocation is a one-way door, a re-key no back door.
    let refused = s.fx.keyring().decrypt(&s.t, &old[0], &ctx()).await;
    assert_eq!(refused.unwrap_err().reason(), "KEY_REVOKED");

    s.keyring
        .restore_binding(
            &s.t,
            Some(1),
            RevocationSource::Explicit,
            Some("secops".into()),
            "drill over",
        )
        .await
        .unwrap();
    assert!(s.keyring.rekey(&s.t, None, "secops").await.unwrap().done());
    s.kms.inner().set_enabled("k1", false).unwrap();
    s.all_read(&old, &OLD).await;
}

#[tokio::test]
async fn a_rekey_in_batches_reports_exactly_what_is_left_and_resumes() {
    let s = setup().await;
    let mut envelopes = Vec::new();
    let mut scopes = Vec::new();
    let names = ["s1", "s2", "s3", "s4"];
    for (i, key) in ["k2", "k3", "k4"].into_iter().enumerate() {
        envelopes.extend(s.write(&names[i..=i]).await);
        scopes.push(names[i]);
        s.keyring.register_key(&s.t, &local(key)).await.unwrap();
    }
    // Three older tenant keys (k1, k2, k3), one DEK each.
    let status = s.keyring.rekey_status(&s.t).await.unwrap();
    assert_eq!(status.tenant_keys_remaining, 3);
    assert_eq!(status.deks_remaining, 3);
    assert_eq!(status.pending.len(), 3);

    // This replica counts what it moves and retires (docs/observability.md).
    let metrics = Arc::new(keyward_server::metrics::Metrics::new(10));
    let keyring = s.fx.keyring().with_metrics(Arc::clone(&metrics));
    let one = keyring.rekey(&s.t, Some(1), "secops").await.unwrap();
    assert_eq!(one.rewrapped, 1);
    assert_eq!(one.tenant_keys_remaining, 2);
    assert_eq!(one.retired_now, 0, "nothing is retired before the end");
    assert!(!one.done());
    // A fresh read (as after a restart) says the same.
    let read = s.fx.keyring().rekey_status(&s.t).await.unwrap();
    assert_eq!(read.tenant_keys_remaining, 2);
    assert_eq!(read.tenant_keys_current, 2);

    let rest = keyring.rekey(&s.t, None, "secops").await.unwrap();
    assert_eq!((rest.rewrapped, rest.retired_now), (2, 3));
    assert!(rest.done());
    let scraped = metrics.encode(&keyring.scrape_gauges()).unwrap();
    for line in [
        "keyward_tenant_keys_rewrapped_total 3\n",
        "keyward_kek_bindings_retired_total 3\n",
    ] {
        assert!(scraped.contains(line), "{line:?} missing:\n{scraped}");
    }
    for key in ["k1", "k2", "k3"] {
        s.kms.inner().set_enabled(key, false).unwrap();
    }
    s.all_read(&envelopes, &scopes).await;
    assert_eq!(s.records("tenant_key_rewrapped").await.len(), 3);
    assert_eq!(s.records("kek_binding_retired").await.len(), 3);
}

#[tokio::test]
async fn an_old_binding_revoked_while_its_key_is_moving_keeps_it() {
    let s = setup().await;
    let old = s.write(&OLD).await;
    s.keyring.register_key(&s.t, &local("k2")).await.unwrap();
    let wrapping = s.wrapping().await;

    // The re-key's unwrap of k1's tenant key has its answer; before it is used, another
    // replica's monitor records k1 revoked.
    s.kms.hold_next_unwrap();
    let rekey = {
        let keyring = s.fx.keyring();
        let t = s.t.clone();
        tokio::spawn(async move { keyring.rekey(&t, None, "secops").await })
    };
    s.kms.held().await;
    let b1 = s.binding(1).await;
    s.fx.store
        .set_binding_state(
            StateUpdate::of(&b1, KekState::Revoked, RevocationSource::Monitor),
            &|_| Vec::new(),
        )
        .await
        .unwrap();
    s.kms.release();

    let err = rekey.await.unwrap().unwrap_err();
    assert_eq!(err.reason(), "REKEY_BLOCKED", "{err}");
    assert_eq!(
        s.wrapping().await,
        wrapping,
        "the revocation won: k1's tenant key stays under k1"
    );
    assert!(s.records("tenant_key_rewrapped").await.is_empty());
    let refused = s.fx.keyring().decrypt(&s.t, &old[0], &ctx()).await;
    assert_eq!(refused.unwrap_err().reason(), "KEY_REVOKED");
}

#[tokio::test]
async fn a_key_registered_during_a_rekey_becomes_its_target() {
    let s = setup().await;
    let old = s.write(&OLD).await;
    s.keyring.register_key(&s.t, &local("k2")).await.unwrap();

    s.kms.hold_next_unwrap();
    let rekey = {
        let keyring = s.fx.keyring();
        let t = s.t.clone();
        tokio::spawn(async move { keyring.rekey(&t, None, "secops").await })
    };
    s.kms.held().await;
    let k3 = s.keyring.register_key(&s.t, &local("k3")).await.unwrap();
    s.kms.release();

    let status = rekey.await.unwrap().unwrap();
    assert!(status.done(), "{status:?}");
    assert_eq!(status.target.id, k3.binding.id);
    assert!(
        s.wrapping().await.iter().all(|(_, b)| *b == k3.binding.id),
        "{:?}",
        s.wrapping().await
    );
    for key in ["k1", "k2"] {
        s.kms.inner().set_enabled(key, false).unwrap();
    }
    s.all_read(&old, &OLD).await;
}

#[tokio::test]
async fn two_replicas_rekeying_at_once_move_each_key_once() {
    let s = setup().await;
    let mut envelopes = Vec::new();
    let names = ["s1", "s2", "s3"];
    for (i, key) in ["k2", "k3", "k4"].into_iter().enumerate() {
        envelopes.extend(s.write(&names[i..=i]).await);
        s.keyring.register_key(&s.t, &local(key)).await.unwrap();
    }
    let (a, b) = (s.fx.keyring(), s.fx.keyring());
    let (ra, rb) = tokio::join!(a.rekey(&s.t, None, "a"), b.rekey(&s.t, None, "b"));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.rewrapped + rb.rewrapped, 3, "{ra:?} {rb:?}");
    assert!(s.keyring.rekey_status(&s.t).await.unwrap().done());
    assert_eq!(s.records("tenant_key_rewrapped").await.len(), 3);
    assert_eq!(s.records("kek_binding_retired").await.len(), 3);
    for key in ["k1", "k2", "k3"] {
        s.kms.inner().set_enabled(key, false).unwrap();
    }
    s.all_read(&envelopes, &names).await;
}

#[tokio::test]
async fn a_second_rekey_of_a_tenant_on_one_replica_is_refused_while_the_first_runs() {
    let s = setup().await;
    s.write(&OLD).await;
    s.keyring.register_key(&s.t, &local("k2")).await.unwrap();
    let keyring = Arc::new(s.fx.keyring());
    s.kms.hold_next_unwrap();
    let first = {
        let (keyring, t) = (Arc::clone(&keyring), s.t.clone());
        tokio::spawn(async move { keyring.rekey(&t, None, "a").await })
    };
    s.kms.held().await;
    let second = keyring.rekey(&s.t, None, "b").await.unwrap_err();
    assert_eq!(second.reason(), "CONFLICT", "{second}");
    s.kms.release();
    assert!(first.await.unwrap().unwrap().done());
}

#[tokio::test]
async fn a_scheduled_rekey_moves_the_tenant_when_a_new_key_is_registered() {
    let s = setup().await;
    let old = s.write(&OLD).await;
    let policy = keyward_store::TenantPolicy {
        auto_rekey: true,
        decrypt_purposes: 0,
        ..Default::default()
    };
    s.keyring
        .set_tenant_policy(&s.t, policy, "secops".into())
        .await
        .unwrap();
    // Nothing to do yet.
    assert_eq!(s.keyring.run_scheduled_rekeys_once().await.unwrap(), 0);
    s.keyring.register_key(&s.t, &local("k2")).await.unwrap();

    // The old key unreachable: the pass stops, says why, and tries again later.
    s.kms.inner().set_enabled("k1", false).unwrap();
    assert_eq!(s.keyring.run_scheduled_rekeys_once().await.unwrap(), 0);
    let status = s.keyring.rekey_status(&s.t).await.unwrap();
    assert!(!status.done());
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("old key local k1")),
        "{status:?}"
    );
    s.kms.inner().set_enabled("k1", true).unwrap();
    assert_eq!(s.keyring.run_scheduled_rekeys_once().await.unwrap(), 1);
    let status = s.keyring.rekey_status(&s.t).await.unwrap();
    assert!(status.done());
    assert_eq!(status.last_error, None);
    match &s.records("tenant_key_rewrapped").await[..] {
        [AuditEvent::TenantKeyRewrapped { actor, .. }] => assert_eq!(actor, "scheduled-rekey"),
        other => panic!("{other:?}"),
    }
    s.kms.inner().set_enabled("k1", false).unwrap();
    s.all_read(&old, &OLD).await;
    // A tenant without the policy is left alone.
    let other = tenant("globex");
    s.keyring
        .create_tenant(&other, "Globex", "test".to_owned())
        .await
        .unwrap();
    s.keyring.register_key(&other, &local("k3")).await.unwrap();
    s.keyring.register_key(&other, &local("k4")).await.unwrap();
    assert_eq!(s.keyring.run_scheduled_rekeys_once().await.unwrap(), 0);
    assert!(!s.keyring.rekey_status(&other).await.unwrap().done());
}

#[tokio::test]
async fn restoring_or_revoking_a_retired_binding_is_refused_and_changes_nothing() {
    let s = setup().await;
    s.write(&OLD).await;
    s.keyring.register_key(&s.t, &local("k2")).await.unwrap();
    s.keyring.rekey(&s.t, None, "secops").await.unwrap();
    let retired = s.binding(1).await;
    assert_eq!(retired.state, KekState::Retired);
    let err = s
        .keyring
        .restore_binding(&s.t, Some(1), RevocationSource::Explicit, None, "x")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "INVALID_ARGUMENT", "{err}");
    let err =
        s.fx.store
            .set_binding_state(
                StateUpdate::of(&retired, KekState::Revoked, RevocationSource::Monitor),
                &|_| Vec::new(),
            )
            .await
            .unwrap_err();
    assert!(
        matches!(err, keyward_store::StoreError::InvalidInput(_)),
        "{err:?}"
    );
    assert_eq!(s.binding(1).await, retired);
    // A key event naming the retired key checks nothing.
    let (checked, revoked) = s
        .keyring
        .recheck_key(ProviderKind::Local, "k1")
        .await
        .unwrap();
    assert_eq!((checked, revoked), (0, 0));
}

#[tokio::test]
async fn an_unknown_tenant_or_one_without_a_key_has_no_rekey() {
    let s = setup().await;
    let unknown = s.keyring.rekey_status(&tenant("nope")).await.unwrap_err();
    assert_eq!(unknown.reason(), "TENANT_NOT_FOUND");
    let err = s
        .keyring
        .rekey(&tenant("nope"), None, "x")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "TENANT_NOT_FOUND");
    let bare = tenant("bare");
    s.keyring
        .create_tenant(&bare, "Bare", "test".to_owned())
        .await
        .unwrap();
    let err = s.keyring.rekey(&bare, None, "x").await.unwrap_err();
    assert!(matches!(err, ServiceError::NoKeyRegistered(_)), "{err}");
    // A tenant with one key has nothing to re-key.
    let status = s.keyring.rekey(&s.t, None, "x").await.unwrap();
    assert!(status.done());
    assert_eq!(status.rewrapped, 0);
}
