//! Revocation through the key hierarchy with a real PKCS#11 token (SoftHSM2): what the customer
//! does on the HSM side registers as a refusal. Logging the token out revokes the tenant at the
//! monitor's next canary (audited, cached keys purged) and is lifted at the sweep after, once
//! Keyward has logged in again; destroying the key object revokes the tenant and it stays
//! revoked (recorded as `revoked`, not `destroyed`: PKCS#11 cannot tell a destroyed key object
//! from a removed one, which a token backup may bring back). Runs in a child process with a
//! private token (`SoftHsm::isolate`).
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use keyward_audit::{AuditEvent, KeyState as AuditKeyState, StateTransition};
use keyward_envelope::{EncryptionContext, TenantId};
use keyward_server::keyring::CheckOutcome;
use keyward_server::keyring::RotationPolicy;
use keyward_server::{CachePolicy, Keyring, Providers};
use keyward_store::{AuditQuery, KekState, Scope, Store as _, sqlite::SqliteStore};
use keyward_test_support::pkcs11::SoftHsm;

async fn state(keyring: &Keyring, t: &TenantId) -> KekState {
    keyring
        .tenant_state(t)
        .await
        .unwrap()
        .current()
        .unwrap()
        .state
}

#[tokio::test]
async fn hsm_logout_and_destroyed_key_register_as_refusals() {
    let Some(hsm) = SoftHsm::isolate("hsm_logout_and_destroyed_key_register_as_refusals") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
    let keyring = Keyring::new(
        store.clone(),
        Providers::default().with(Arc::new(hsm.provider().await)),
        CachePolicy {
            ttl: Duration::from_secs(300),
            max_tenant_keys: 1000,
            max_deks: 100_000,
        },
        RotationPolicy {
            max_age: Duration::from_secs(3600),
            max_messages: 1 << 20,
            max_bytes: 1 << 30,
        },
        Arc::new(keyward_audit::IdentifierHasher::new([7; 32])),
    );
    let t = TenantId::try_from("acme").unwrap();
    let kek = hsm.create_key("kek");
    keyring
        .create_tenant(&t, "Acme", "test".to_owned())
        .await
        .unwrap();
    keyring.register_key(&t, &kek).await.unwrap();
    let (c, s) = (EncryptionContext::empty(), Scope::default_scope());
    let (env, _) = keyring.encrypt(&t, &s, &c, b"secret").await.unwrap();
    let healthy = vec![(t.clone(), CheckOutcome::Healthy)];
    assert_eq!(keyring.check_all(1000).await.unwrap(), healthy);

    // The token logs Keyward out: the canary is refused and the tenant revoked, although its key
    // is cached for 300 s. The sweep after logs in again and restores it.
    hsm.logout();
    let revoked = vec![(t.clone(), CheckOutcome::Revoked)];
    assert_eq!(keyring.check_all(1000).await.unwrap(), revoked);
    assert_eq!(state(&keyring, &t).await, KekState::Revoked);
    let err = keyring.decrypt(&t, &env, &c).await.unwrap_err();
    assert_eq!(err.reason(), "KEY_REVOKED");
    let restored = vec![(t.clone(), CheckOutcome::Restored)];
    assert_eq!(keyring.check_all(1000).await.unwrap(), restored);
    assert_eq!(
        keyring.decrypt(&t, &env, &c).await.unwrap().as_slice(),
        b"secret"
    );

    // The key object is destroyed: revoked, and it stays revoked (not destroyed).
    hsm.destroy_key(&kek);
    assert_eq!(keyring.check_all(1000).await.unwrap(), revoked);
    assert_eq!(state(&keyring, &t).await, KekState::Revoked);
    let err = keyring.decrypt(&t, &env, &c).await.unwrap_err();
    assert_eq!(err.reason(), "KEY_REVOKED");
    keyring.check_all(1000).await.unwrap();
    assert_eq!(state(&keyring, &t).await, KekState::Revoked);

    // Each transition is in the audit log, with the provider's words as the reason.
    let records = store.audit_records(&AuditQuery::default()).await.unwrap();
    let revocations: Vec<&StateTransition> = records
        .iter()
        .filter_map(|r| match r.event() {
            AuditEvent::RevocationStateChanged(tr) if tr.to == AuditKeyState::Revoked => Some(tr),
            _ => None,
        })
        .collect();
    assert_eq!(revocations.len(), 2, "{revocations:#?}");
    assert!(
        revocations[0].reason.contains("logged Keyward out"),
        "{:?}",
        revocations[0]
    );
    assert!(
        revocations[1].reason.contains("destroyed or removed"),
        "{:?}",
        revocations[1]
    );
    assert!(
        records
            .iter()
            .any(|r| matches!(r.event(), AuditEvent::Restored(_))),
        "no restored record"
    );
}
