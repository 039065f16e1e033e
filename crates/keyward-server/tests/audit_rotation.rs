//! Rotating the audit signing key with several replicas (issue #16, item 7): replicas share one
//! store and one audit key directory, any of them may rotate, and every export must still
//! verify offline with the deployment's first key (trust flows forward through the recorded
//! rotation, `docs/audit-format.md` §5).
//!
//! A replica here is an [`Auditor`] with its own [`AuditKeys`] loaded from the shared
//! directory and its own store handle (a second SQLite connection pool, or a second PostgreSQL
//! pool), exactly what two server processes hold.
//!
//! The PostgreSQL test needs a server: `KEYWARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) must name a role that may `CREATE DATABASE`, as
//! for `keyward-store`'s `postgres_conformance` tests. It creates its own database
//! `kw_test_<hex>` and drops it when it passes.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failure must abort with a message"
)]

use std::path::Path;
use std::sync::Arc;

use keyward_audit::{AuditEvent, PublicKey, SigningKey, VerifyReport, verify_export};
use keyward_server::audit::{AuditKeys, Auditor};
use keyward_store::Store;
use keyward_store::sqlite::SqliteStore;

fn admin_actions(n: usize) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| AuditEvent::AdminAction {
            actor: "test".to_owned(),
            action: "noop".to_owned(),
            detail: i.to_string(),
        })
        .collect()
}

/// A replica: its own keys, loaded from the shared directory, over its own store handle.
fn replica(store: Arc<dyn Store>, keys_dir: &Path) -> Auditor {
    Auditor::new(store, AuditKeys::load_or_create(keys_dir).unwrap())
}

/// `auditor`'s export of the whole chain, verified offline trusting only `first_key`.
async fn export_and_verify(auditor: &Auditor, first_key: PublicKey) -> VerifyReport {
    let mut export = Vec::new();
    auditor.export_to(&mut export).await.unwrap();
    verify_export(export.as_slice(), &[first_key]).unwrap_or_else(|failure| {
        panic!(
            "the export does not verify: {failure}\n{}",
            String::from_utf8_lossy(&export)
        )
    })
}

/// The review's scenario: rotate on A, checkpoint on B, export from A.
async fn rotate_on_a_checkpoint_on_b_export_from_a(
    store_a: Arc<dyn Store>,
    store_b: Arc<dyn Store>,
    keys_dir: &Path,
) {
    let a = replica(Arc::clone(&store_a), keys_dir);
    let b = replica(store_b, keys_dir);
    let first_key = a.public_key();
    assert_eq!(b.public_key(), first_key, "one key directory, one key");

    store_a.append_audit(admin_actions(3)).await.unwrap();
    assert_eq!(b.checkpoint().await.unwrap(), Some(3));
    let new_key = a.rotate_signing_key("ops".to_owned()).await.unwrap();
    assert_ne!(new_key, first_key);

    // B appends and checkpoints after the rotation, never having restarted.
    store_a.append_audit(admin_actions(2)).await.unwrap();
    let head = store_a.audit_head().await.unwrap();
    assert_eq!(b.checkpoint().await.unwrap(), Some(head.seq));

    let report = export_and_verify(&a, first_key).await;
    assert_eq!(report.last_seq, head.seq);
    assert_eq!(report.signing_keys_seen, vec![first_key, new_key]);
    let stored = store_a.checkpoints(head.seq, head.seq).await.unwrap();
    assert_eq!(
        stored[0].key_id,
        new_key.key_id(),
        "B signs with the key A rotated to"
    );
}

#[tokio::test]
async fn sqlite_rotate_on_one_replica_checkpoint_on_another_export_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyward.db");
    let store_a = Arc::new(SqliteStore::open(&db).await.unwrap());
    let store_b = Arc::new(SqliteStore::open(&db).await.unwrap());
    rotate_on_a_checkpoint_on_b_export_from_a(store_a, store_b, &dir.path().join("audit")).await;
}

#[tokio::test]
async fn postgres_rotate_on_one_replica_checkpoint_on_another_export_verifies() {
    let db = TestDb::create().await;
    let store_a = Arc::new(db.store().await);
    let store_b = Arc::new(db.store().await);
    let dir = tempfile::tempdir().unwrap();
    rotate_on_a_checkpoint_on_b_export_from_a(store_a, store_b, &dir.path().join("audit")).await;
    db.finish().await;
}

/// The export's final checkpoint is signed on the spot, by the exporting replica: it must be
/// the new key there too.
#[tokio::test]
async fn an_export_from_a_replica_that_did_not_rotate_is_signed_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyward.db");
    let store_a: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let store_b: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let keys_dir = dir.path().join("audit");
    let a = replica(Arc::clone(&store_a), &keys_dir);
    let b = replica(store_b, &keys_dir);
    let first_key = a.public_key();

    store_a.append_audit(admin_actions(2)).await.unwrap();
    let new_key = a.rotate_signing_key("ops".to_owned()).await.unwrap();
    store_a.append_audit(admin_actions(2)).await.unwrap();

    let report = export_and_verify(&b, first_key).await;
    assert_eq!(report.signing_keys_seen, vec![first_key, new_key]);
    assert_eq!(b.public_key(), new_key);
}

/// A replica crashed after recording a rotation but before storing the checkpoint that
/// confirms it (the pending key file is in the shared directory, the record in the chain).
/// Another replica that checkpoints must not sign past the rotation with the old key (that
/// would confirm the rotation and then be rejected as a retired key at the next checkpoint):
/// it confirms the rotation over its record, with the old key, and signs later heads with the
/// new key. A replica started afterwards finishes the rotation on disk.
#[tokio::test]
async fn a_rotation_recorded_before_a_crash_is_confirmed_by_another_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyward.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let keys_dir = dir.path().join("audit");
    let b = replica(Arc::clone(&store), &keys_dir);
    let first_key = b.public_key();
    store.append_audit(admin_actions(2)).await.unwrap();

    // What `rotate_signing_key` on the crashed replica A did before the crash.
    let new = SigningKey::generate().unwrap();
    let new_key = new.public_key();
    std::fs::write(
        keys_dir.join("signing-key.pk8.new"),
        new.to_pkcs8().unwrap().as_slice(),
    )
    .unwrap();
    let rotated = store
        .append_audit(vec![AuditEvent::SigningKeyRotated {
            old_key_id: first_key.key_id(),
            new_key_id: new_key.key_id(),
            new_public_key: new_key,
        }])
        .await
        .unwrap();
    let rotation_seq = rotated[0].seq();
    store.append_audit(admin_actions(2)).await.unwrap();
    let head = store.audit_head().await.unwrap();

    assert_eq!(b.checkpoint().await.unwrap(), Some(head.seq));
    let stored = store.checkpoints(rotation_seq, head.seq).await.unwrap();
    let signed: Vec<(u64, String)> = stored.iter().map(|c| (c.seq, c.key_id.clone())).collect();
    assert_eq!(
        signed,
        vec![
            (rotation_seq, first_key.key_id()),
            (head.seq, new_key.key_id())
        ]
    );
    let report = export_and_verify(&b, first_key).await;
    assert_eq!(report.signing_keys_seen, vec![first_key, new_key]);

    // A replica (re)started now moves the pending key into place.
    let c = replica(Arc::clone(&store), &keys_dir);
    c.recover_rotation().await.unwrap();
    assert!(!keys_dir.join("signing-key.pk8.new").exists());
    assert_eq!(
        AuditKeys::load_or_create(&keys_dir).unwrap().public_key(),
        new_key
    );
    assert_eq!(c.public_key(), new_key);
}

/// A replica whose key directory lacks the key the chain rotated to (not shared, or copied
/// before the rotation) signs nothing rather than sign with the retired key, so the stored
/// checkpoints keep verifying.
#[tokio::test]
async fn a_replica_without_the_rotated_key_refuses_to_sign() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyward.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let shared = dir.path().join("audit");
    let a = replica(Arc::clone(&store), &shared);
    let first_key = a.public_key();
    // B's directory: a copy of A's made before the rotation.
    let copied = dir.path().join("audit-copy");
    std::fs::create_dir(&copied).unwrap();
    for file in ["signing-key.pk8", "identifier-key"] {
        std::fs::copy(shared.join(file), copied.join(file)).unwrap();
    }
    let b = replica(Arc::clone(&store), &copied);
    assert_eq!(b.public_key(), first_key);

    store.append_audit(admin_actions(2)).await.unwrap();
    a.rotate_signing_key("ops".to_owned()).await.unwrap();
    store.append_audit(admin_actions(2)).await.unwrap();
    let head = store.audit_head().await.unwrap();

    let refused = b.checkpoint().await;
    assert!(refused.is_err(), "B signed with a retired key: {refused:?}");
    assert!(
        store
            .checkpoints(head.seq, head.seq)
            .await
            .unwrap()
            .is_empty()
    );
    let mut export = Vec::new();
    assert!(
        b.export_to(&mut export).await.is_err(),
        "B exported with a retired key"
    );
    export_and_verify(&a, first_key).await;
}

// --- PostgreSQL: one database per test (the helper keyward-store's tests use) ---

#[path = "../../keyward-store/tests/common/test_db.rs"]
mod test_db;
use test_db::TestDb;
