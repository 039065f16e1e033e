//! The key-state monitor across replicas (issue #20; docs/revocation.md, "Monitor"): several
//! keyrings on one PostgreSQL database share one schedule, so each held key gets one canary per
//! interval whatever the replica count; a replica that stalls (or dies) mid-check hands the check
//! over when its lease lapses; a key disabled at the KMS is refused on every replica.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failure must abort with a message"
)]

use std::{sync::Arc, time::Duration};

use keyward_audit::IdentifierHasher;
use keyward_envelope::{EncryptionContext, TenantId};
use keyward_kms::{KeyRef, ProviderKind, controlled::Controlled, local::LocalProvider};
use keyward_server::{
    CachePolicy, Keyring, Providers,
    keyring::{CheckOutcome, MonitorPolicy, RotationPolicy},
};
use keyward_store::{KekState, Scope, Store};

#[path = "../../keyward-store/tests/common/test_db.rs"]
mod test_db;
use test_db::TestDb;

struct Fleet {
    db: TestDb,
    _kms: tempfile::TempDir,
    operator: LocalProvider,
    providers: Vec<Arc<Controlled<LocalProvider>>>,
    replicas: Vec<Arc<Keyring>>,
    stores: Vec<Arc<keyward_store::postgres::PostgresStore>>,
}

impl Fleet {
    /// `n` replicas, each with its own pool and its own KMS client on one key directory.
    async fn new(n: usize, policy: MonitorPolicy) -> Fleet {
        let db = TestDb::create().await;
        let kms = tempfile::tempdir().unwrap();
        let mut providers = Vec::new();
        let mut replicas = Vec::new();
        let mut stores = Vec::new();
        for r in 0..n {
            let store = Arc::new(db.store().await);
            let provider = Arc::new(Controlled::new(LocalProvider::open(kms.path()).unwrap()));
            let keyring = Keyring::new(
                store.clone(),
                Providers::default().with(provider.clone()),
                CachePolicy {
                    ttl: Duration::from_secs(300),
                    max_tenant_keys: 10_000,
                    max_deks: 10_000,
                },
                RotationPolicy {
                    max_age: Duration::from_secs(3600),
                    max_messages: 1 << 20,
                    max_bytes: 1 << 30,
                },
                Arc::new(IdentifierHasher::new([7; 32])),
            )
            .with_replica_id(format!("replica-{r}"))
            .with_monitor(Some(policy));
            providers.push(provider);
            replicas.push(Arc::new(keyring));
            stores.push(store);
        }
        Fleet {
            db,
            operator: LocalProvider::open(kms.path()).unwrap(),
            _kms: kms,
            providers,
            replicas,
            stores,
        }
    }

    fn canaries(&self) -> u64 {
        self.replicas.iter().map(|k| k.stats().canary_checks).sum()
    }

    async fn finish(self) {
        for store in &self.stores {
            store.close().await;
        }
        self.db.finish().await;
    }
}

fn tenant(i: usize) -> TenantId {
    TenantId::try_from(format!("fleet-{i}").as_str()).unwrap()
}

/// Registers tenant `i` on its own key through replica 0 and warms it on every replica (each
/// holds the tenant key); returns an envelope of it.
async fn warm(fleet: &Fleet, i: usize) -> Vec<u8> {
    let t = tenant(i);
    let key = format!("kek-{i}");
    fleet.operator.create_key(&key).unwrap();
    let first = &fleet.replicas[0];
    first
        .create_tenant(&t, "Fleet tenant", "test".to_owned())
        .await
        .unwrap();
    first
        .register_key(&t, &KeyRef::new(ProviderKind::Local, key))
        .await
        .unwrap();
    let c = EncryptionContext::empty();
    let (envelope, _) = first
        .encrypt(&t, &Scope::default_scope(), &c, b"x")
        .await
        .unwrap();
    for replica in &fleet.replicas[1..] {
        replica.decrypt(&t, &envelope, &c).await.unwrap();
    }
    envelope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_make_one_canary_per_held_key_per_interval() {
    let policy = MonitorPolicy::new(Duration::from_secs(1), 1000);
    let fleet = Fleet::new(3, policy).await;
    for i in 0..30 {
        warm(&fleet, i).await;
    }
    for _round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = fleet.canaries();
        // The three monitors pass over the schedule at the same moment.
        let passes: Vec<_> = fleet
            .replicas
            .iter()
            .map(|k| {
                let k = Arc::clone(k);
                tokio::spawn(async move { k.check_due(policy).await.unwrap().0 })
            })
            .collect();
        let mut outcomes = Vec::new();
        for pass in passes {
            outcomes.extend(pass.await.unwrap());
        }
        assert_eq!(
            outcomes.len(),
            30,
            "each held key checked once: {outcomes:?}"
        );
        assert!(outcomes.iter().all(|(_, o)| *o == CheckOutcome::Healthy));
        assert_eq!(
            fleet.canaries() - before,
            30,
            "one canary per key for the fleet"
        );
    }
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stalled_past_its_lease_hands_the_check_over_and_its_late_answer_changes_nothing()
{
    // Interval 1 s: a lease lasts 2 s (the minimum).
    let policy = MonitorPolicy::new(Duration::from_secs(1), 1000);
    let fleet = Fleet::new(2, policy).await;
    let envelope = warm(&fleet, 0).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Replica 0 claims the check and its canary stalls after the KMS answered "works".
    fleet.providers[0].hold_next_unwrap();
    let stalled = {
        let k = Arc::clone(&fleet.replicas[0]);
        tokio::spawn(async move { k.check_due(policy).await.unwrap().0 })
    };
    fleet.providers[0].held().await;
    // Meanwhile the customer disables the key; the claim is replica 0's until its lease lapses.
    fleet.operator.set_enabled("kek-0", false).unwrap();
    assert!(
        fleet.replicas[1]
            .check_due(policy)
            .await
            .unwrap()
            .0
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The lease lapsed: replica 1 takes the check over and revokes.
    let taken = fleet.replicas[1].check_due(policy).await.unwrap().0;
    assert_eq!(taken, vec![(tenant(0), CheckOutcome::Revoked)]);
    // Replica 0's stale "works" arrives: it is about the binding as replica 0 read it (active:
    // nothing to do), never applied to the newer state, so it cannot lift the revocation; and
    // its finish is refused (the check is no longer its claim).
    fleet.providers[0].release();
    let late = stalled.await.unwrap();
    assert!(
        !late.contains(&(tenant(0), CheckOutcome::Restored)),
        "a stale answer lifted a newer revocation: {late:?}"
    );
    let binding = fleet.stores[0]
        .active_binding(&tenant(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(binding.state, KekState::Revoked);
    let c = EncryptionContext::empty();
    for replica in &fleet.replicas {
        replica.reconcile().await.unwrap();
        assert_eq!(
            replica
                .decrypt(&tenant(0), &envelope, &c)
                .await
                .unwrap_err()
                .reason(),
            "KEY_REVOKED"
        );
    }
    fleet.finish().await;
}
